"""Benchmark cases for ``softmaxkit.heads`` (run with ``softmaxkit bench -k heads``).

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
from softmaxkit.heads import linear_cross_entropy

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
