"""Benchmark cases for ``softmaxkit.heads`` (run with ``softmaxkit bench -k heads``).

Three groups: the fused linear + cross-entropy (below), the spherical exact-gradient layer
and VQ-Logits (further down, each with its own note).

The fused linear + cross-entropy at the shape of issue 4: N = 4096 rows of d = 1024 over a
V = 131072 vocabulary, float32, forward + backward (gradients for the input and the
weight), against the plain ``F.cross_entropy(F.linear(x, W), y)`` (which builds the
4096 x 131072 logits and their gradient: ~5.6 GB) and against torch 2.13's own chunked
path ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``. Targets: time at
most the plain path's, peak memory at most the chunked path's. Each full-size run takes
tens of seconds: run it with ``--repeats 3``. ``--quick`` divides N and V by 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softmaxkit.cli.bench import Case
from softmaxkit.cli.bench_peers import fused_head_peers, with_peers
from softmaxkit.heads import SphericalOutputLayer, VQLogits, linear_cross_entropy
from softmaxkit.losses import z_loss

N, D, V = 4096, 1024, 131072
QUICK = (N // 8, D, V // 8)


def _inputs(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d, v = QUICK if quick else (N, D, V)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) / d**0.5).requires_grad_()
    return x, w, torch.randint(0, v, (n,), generator=g)


def plain(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(x, w), y)


def torch_chunked(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.linear_cross_entropy(x, w, y, options=torch.nn.LinearCrossEntropyOptions())


CASES = [
    Case(
        name=f"linear_cross_entropy/{N}x{D}x{V}",
        setup=_inputs,
        ours=linear_cross_entropy,
        baseline=plain,
        baseline_name="F.cross_entropy(F.linear)",
        targets={"time_fwdbwd": 1.0},
        atol=1e-4,
    ),
    Case(
        name=f"linear_cross_entropy/{N}x{D}x{V}:torch_chunked",
        setup=_inputs,
        ours=linear_cross_entropy,
        baseline=torch_chunked,
        baseline_name="F.linear_cross_entropy(chunked options)",
        targets={"mem_fwdbwd": 1.0},
        atol=1e-4,
    ),
]


# ---------------------------------------------------------------------------------------
# The spherical exact-gradient layer (Vincent et al. 2015): one plain-SGD step (forward,
# gradient to h, weight update) of SphericalOutputLayer against nn.Linear + z_loss +
# SGD, d = 256, batch 128, float32, at V = 2^13, 2^15, 2^17 to show how the ratio grows
# with V (the layer's step is O(B d^2), flat in V; the naive step is O(B d V)). Target at
# V = 2^17: at least 20x faster (time ratio <= 0.05). Both start from the same weights,
# so the first step's losses agree (atol); each timed call takes one more step.
# ---------------------------------------------------------------------------------------

SPH_D, SPH_B, SPH_LR = 256, 128, 0.01


def _spherical_setup(vocab: int):
    def setup(quick: bool):
        v = vocab // 8 if quick else vocab
        g = torch.Generator().manual_seed(0)
        w = (torch.rand(v, SPH_D, generator=g) * 2 - 1) / SPH_D**0.5
        layer = SphericalOutputLayer(SPH_D, v, loss="z_loss", lr=SPH_LR, dtype=torch.float32)
        layer.set_weight(w)
        naive = w.clone().requires_grad_()
        h = torch.randn(SPH_B, SPH_D, generator=g)
        return layer, naive, h, torch.randint(0, v, (SPH_B,), generator=g)

    return setup


def spherical_step(layer, naive, h, y) -> torch.Tensor:
    with torch.enable_grad():
        loss = layer(h.requires_grad_(), y)
        loss.backward()
    layer.step()
    return loss.detach()


def naive_spherical_step(layer, naive, h, y) -> torch.Tensor:
    with torch.enable_grad():
        loss = z_loss(F.linear(h, naive), y, a=1.0, b=0.0)
        loss.backward()
    with torch.no_grad():
        naive.sub_(SPH_LR * naive.grad)
        naive.grad = None
    return loss.detach()


for _log2v in (13, 15, 17):
    CASES.append(
        Case(
            name=f"SphericalOutputLayer.step/V=2^{_log2v},d={SPH_D},B={SPH_B}",
            setup=_spherical_setup(2**_log2v),
            ours=spherical_step,
            baseline=naive_spherical_step,
            baseline_name="nn.Linear + z_loss + SGD step",
            backward=False,
            targets={"time_fwd": 0.05} if _log2v == 17 else {},
            atol=1e-4,
        )
    )


# ---------------------------------------------------------------------------------------
# VQ-Logits (Shao et al. 2025) at the shape V = 50257, K = 1024, d = 768: logit
# computation for 1024 hidden states (K code logits gathered to V) against nn.Linear(d, V),
# and the lean cross-entropy over the K codes against F.cross_entropy(nn.Linear), fwd+bwd.
# Parameters: K d = 786,432 against V d = 38,597,376 (97.96 % fewer; VQLogits.num_parameters).
# Different functions: outputs are not compared.
# ---------------------------------------------------------------------------------------

VQ_V, VQ_K, VQ_D, VQ_N = 50257, 1024, 768, 1024


def _vq_setup(quick: bool):
    n = VQ_N // 8 if quick else VQ_N
    g = torch.Generator().manual_seed(0)
    head = VQLogits(VQ_D, VQ_V, VQ_K, generator=g)
    linear = torch.nn.Linear(VQ_D, VQ_V, bias=False)
    h = torch.randn(n, VQ_D, generator=g).requires_grad_()
    return head, linear, h, torch.randint(0, VQ_V, (n,), generator=g)


CASES += [
    Case(
        name=f"VQLogits.forward/V={VQ_V},K={VQ_K},d={VQ_D}",
        setup=_vq_setup,
        ours=lambda head, linear, h, y: head(h),
        baseline=lambda head, linear, h, y: linear(h),
        baseline_name="nn.Linear(d, V)",
        backward=False,
    ),
    Case(
        name=f"VQLogits.cross_entropy/V={VQ_V},K={VQ_K},d={VQ_D}",
        setup=_vq_setup,
        ours=lambda head, linear, h, y: head.cross_entropy(h, y),
        baseline=lambda head, linear, h, y: F.cross_entropy(linear(h), y),
        baseline_name="F.cross_entropy(nn.Linear(d, V))",
    ),
]


# ---------------------------------------------------------------------------------------
# Peer columns (issue 15), attached by name so that the case definitions above stay as they
# are: every fused linear + cross-entropy case (args x, w, y) against torch's chunked
# F.linear_cross_entropy and cut-cross-entropy's impl="torch_compile" path (a benchmark-only
# package: the column is skipped with a note where it is not installed).
# ---------------------------------------------------------------------------------------


def _head_peers(case: Case) -> dict | None:
    return fused_head_peers() if case.name.startswith("linear_cross_entropy") else None


CASES = with_peers(CASES, _head_peers)
