"""Benchmark cases for ``softmaxkit.attention`` (run with ``softmaxkit bench -k attention``).

``scaled_dot_product_attention(softmax="clipped")`` (Bondarenko et al. 2023, gamma = -0.025,
zeta = 1) at issue 12's shape: batch 2, heads 8, L = S = 2048, E = 64, float32 inputs with
``requires_grad``, forward + backward:

* against the naive composition a user would write (scores ``q k^T / sqrt(E)``, the
  clipped softmax, the matmul with V; it builds and keeps several (2, 8, 2048, 2048)
  tensors, 256 MiB each): targets peak memory at most 0.3x and time at most 1.0x, equal
  outputs to 1e-5;
* against torch's own ``F.scaled_dot_product_attention`` with the vanilla softmax (a
  different function: outputs not compared): time at most 3x.

And L = S = 8192 forward only (no grad) against the naive composition, which needs a
4 GiB score matrix and as much again for the probabilities: no target in the issue; the
same 0.3x memory and 1.0x time as above are set as ours.

``--quick`` divides L and S by 8 (1/64 of the score entries).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softmaxkit.attention import scaled_dot_product_attention
from softmaxkit.cli.bench import Case
from softmaxkit.cli.bench_peers import map_and_loss_peers, with_peers

B, H, E = 2, 8, 64
LONG, VERY_LONG = 2048, 8192
GAMMA, ZETA = -0.025, 1.0  # the defaults: the paper's BERT run


def _qkv(length: int):
    def setup(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = length // 8 if quick else length
        g = torch.Generator().manual_seed(0)
        return tuple(torch.randn(B, H, n, E, generator=g).requires_grad_() for _ in range(3))

    return setup


def ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return scaled_dot_product_attention(q, k, v, softmax="clipped", gamma=GAMMA, zeta=ZETA)


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = torch.clamp((ZETA - GAMMA) * torch.softmax(scores, -1) + GAMMA, 0, 1)
    return probs @ v


def torch_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


SHAPE = f"{B}x{H}x{LONG}x{E}"
CASES = [
    Case(
        name=f"clipped_sdpa/{SHAPE}:naive",
        setup=_qkv(LONG),
        ours=ours,
        baseline=naive,
        baseline_name="naive composition (scores, clipped softmax, matmul)",
        targets={"time_fwdbwd": 1.0, "mem_fwdbwd": 0.3},
        atol=1e-5,
    ),
    Case(
        name=f"clipped_sdpa/{SHAPE}:torch_sdpa",
        setup=_qkv(LONG),
        ours=ours,
        baseline=torch_sdpa,
        baseline_name="F.scaled_dot_product_attention (vanilla softmax)",
        targets={"time_fwdbwd": 3.0},
        atol=None,
    ),
    Case(
        name=f"clipped_sdpa/{B}x{H}x{VERY_LONG}x{E}:naive",
        setup=_qkv(VERY_LONG),
        ours=ours,
        baseline=naive,
        baseline_name="naive composition (scores, clipped softmax, matmul)",
        backward=False,
        targets={"time_fwd": 1.0, "mem_fwd": 0.3},
        atol=1e-5,
    ),
]


# Peer columns (issue 15): torch.compile of the naive composition (for the 8192 forward
# the compiler may fuse what eager cannot) and ours under softmaxkit's compile backend.
CASES = with_peers(CASES, lambda case: map_and_loss_peers(case.ours, naive, 1e-5))
