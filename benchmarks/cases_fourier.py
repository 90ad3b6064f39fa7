"""Benchmark cases for ``heads.FourierHead`` (run with ``softmaxkit bench -k FourierHead``).

FourierHead forward + backward at the issue's shape: (8192, 512) -> 256 bins, 32
frequencies, float32, against the plain head a user would otherwise write,
``nn.Linear(512, 256)`` + ``log_softmax``. Target (issue 13): time within 2x of the plain
head. The two compute different functions, so the outputs are not compared. ``--quick``
divides the batch by 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softmaxkit.cli.bench import Case
from softmaxkit.heads import FourierHead

B, D, BINS, FREQS = 8192, 512, 256, 32


def _setup(quick: bool) -> tuple:
    n = B // 8 if quick else B
    torch.manual_seed(0)
    head = FourierHead(D, BINS, FREQS)
    linear = torch.nn.Linear(D, BINS)
    x = torch.randn(n, D).requires_grad_()
    return head, linear, x


def fourier(head: FourierHead, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return head(x)


def plain(head: FourierHead, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(linear(x), dim=-1)


CASES = [
    Case(
        name=f"FourierHead/{B}x{D}->{BINS},N={FREQS}",
        setup=_setup,
        ours=fourier,
        baseline=plain,
        baseline_name="log_softmax(nn.Linear(512, 256))",
        targets={"time_fwdbwd": 2.0},
    ),
]
