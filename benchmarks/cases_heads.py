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
from softmaxkit.heads.linear_ce import default_chunk_size
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
# Half precision (issue 15, part 1): bfloat16 and float16 inputs, N = 2048, d = 1024, at
# V = 65536 and 131072, forward + backward, against the plain half path
# F.cross_entropy(F.linear(x, W), y) in that dtype. Targets: time <= 1.1x, peak memory
# <= 0.5x the plain path's (expected peak: the float32 grad_W accumulator, 4 bytes per
# weight entry, plus one float32 chunk of logits: ~256 + 64 MiB at V = 65536 against the
# plain path's three (N, V) half buffers, ~768 MiB; ~512 + 128 MiB against ~1536 MiB at
# V = 131072). On a CPU without AVX512-BF16/AMX (the AVX2 bench machine) torch's half
# matmuls are emulated, so the plain half path is slow there and ours runs float32
# matmuls against the weight upcast block by block; on CUDA ours runs native half
# matmuls. ``--quick`` divides N and V by 8. The losses agree to the half path's rounding.
# ---------------------------------------------------------------------------------------

HALF_N, HALF_D = 2048, 1024


def _half_setup(vocab: int, dtype: torch.dtype):
    def setup(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, v = (HALF_N // 8, vocab // 8) if quick else (HALF_N, vocab)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, HALF_D, generator=g).to(dtype).requires_grad_()
        w = (torch.randn(v, HALF_D, generator=g) / HALF_D**0.5).to(dtype).requires_grad_()
        return x, w, torch.randint(0, v, (n,), generator=g)

    return setup


for _dt, _tag in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
    for _v in (65536, 131072):
        CASES.append(
            Case(
                name=f"linear_cross_entropy/{_tag}/{HALF_N}x{HALF_D}x{_v}",
                setup=_half_setup(_v, _dt),
                ours=linear_cross_entropy,
                baseline=plain,
                baseline_name=f"F.cross_entropy(F.linear) in {_tag}",
                targets={"time_fwdbwd": 1.1, "mem_fwdbwd": 0.5},
                atol=5e-2 if _dt == torch.bfloat16 else 1e-2,
            )
        )


# ---------------------------------------------------------------------------------------
# Scaling (issue 15, part 3): the fused head, float32, N = 2048, d = 1024, at V = 16k, 32k,
# 64k, 128k, 256k. Time should grow linearly in V (read the ms across the five rows), and
# the peak memory stay at the weight gradient plus one chunk of logits (the chunk takes a
# quarter of the weight gradient's size, clamped to 16-256 MiB: ``default_chunk_size``).
# The baseline is that floor itself: one default chunk's logits, its log-sum-exp and
# backward into (x, W), which allocates the weight gradient and the chunk's logits and
# their gradient. Target: peak memory at most the floor's (ratio <= 1.0); expected peak
# V d 4 B + min(max(V d, 16 MiB), 256 MiB): 80, 160, 320, 640, 1280 MiB for the five V.
# (Before issue 15 the previous chunk's logits were still alive when the next chunk's were
# allocated: 1.5x the weight gradient at 128k.) The floor does one chunk's work, so the
# time ratio is not a comparison (no time target): read our ms across the five rows, which
# should double with V. ``--quick`` divides N and V by 8.
# ---------------------------------------------------------------------------------------

SCALE_N, SCALE_D = 2048, 1024


def _scale_setup(vocab: int):
    def setup(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, v = (SCALE_N // 8, vocab // 8) if quick else (SCALE_N, vocab)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, SCALE_D, generator=g).requires_grad_()
        w = (torch.randn(v, SCALE_D, generator=g) / SCALE_D**0.5).requires_grad_()
        return x, w, torch.randint(0, v, (n,), generator=g)

    return setup


def chunk_floor(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One default chunk of the fused head, unfused: its logits, lse, and grad into x, W."""
    rows = default_chunk_size(x.shape[0], w.shape[0], w.shape[1], w.dtype)
    return F.linear(x[:rows], w).logsumexp(-1).sum()


for _log2k in (4, 5, 6, 7, 8):
    _v = 2**_log2k * 1024
    CASES.append(
        Case(
            name=f"linear_cross_entropy/scaling/{SCALE_N}x{SCALE_D}x{2**_log2k}k",
            setup=_scale_setup(_v),
            ours=linear_cross_entropy,
            baseline=chunk_floor,
            baseline_name="floor: grad_W + one chunk of logits",
            targets={"mem_fwdbwd": 1.0},
        )
    )

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
# are: every fused linear + cross-entropy case (args x, w, y) but the scaling series against
# torch's chunked F.linear_cross_entropy and cut-cross-entropy's impl="torch_compile" path (a
# benchmark-only package: the column is skipped with a note where it is not installed).
# ---------------------------------------------------------------------------------------


def _head_peers(case: Case) -> dict | None:
    # the scaling series checks our own time and memory against the floor: no peers there
    named = case.name.startswith("linear_cross_entropy") and "/scaling/" not in case.name
    return fused_head_peers() if named else None


CASES = with_peers(CASES, _head_peers)
