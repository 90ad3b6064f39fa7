"""Benchmark cases for the maps of ``softmaxkit.functional`` (run with ``softmaxkit bench``).

All inputs are float32 standard-normal logits with ``requires_grad``. Full sizes: one row
of 2^26 elements, and a (1024, 32768) batch (a 32k vocabulary); ``--quick`` sizes have
1/64 of the elements.

* ``two_pass_softmax`` against ``torch.softmax``: the two-pass algorithm of Dukhan &
  Ablavatski should be 2x faster on one huge row and no slower on a batch.
* ``stablemax``, ``log_stablemax``, ``clipped_softmax``, ``topk_softmax`` (k = 32) against
  ``torch.softmax`` (``torch.log_softmax`` for the log map): a replacement map may cost at
  most 2x the time and 1.25x the memory of the softmax it replaces (forward + backward).
  These are different functions, so outputs are not compared.
* The same four against the torch composition a user would write for the same formula
  (name suffix ``:naive``): no slower, and equal outputs to 1e-5.

k = 32 for top-k: a typical top-k/top-p sampling or sparse-attention budget, small
against 32768 so that the sparse output is the point, large enough that ``topk`` is
not trivial.
"""

from __future__ import annotations

import dataclasses

import torch

import softmaxkit.functional as F
from softmaxkit.cli.bench import Case
from softmaxkit.cli.bench_peers import BACKEND_COMPILE, map_and_loss_peers, with_peers

BATCH = (1024, 32768)
BATCH_QUICK = (128, 4096)  # 1/64 of the elements
ROW = (1, 2**26)
ROW_QUICK = (1, 2**20)  # 1/64 of the elements
TOPK = 32
CLIP_GAMMA, CLIP_ZETA = -0.025, 1.0  # clipped_softmax's defaults


def _shape_name(shape: tuple[int, int]) -> str:
    return "1x2^26" if shape == ROW else f"{shape[0]}x{shape[1]}"


def _logits(full: tuple[int, int], quick_shape: tuple[int, int]):
    def setup(quick: bool) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(quick_shape if quick else full, generator=g, dtype=torch.float32)
        return (x.requires_grad_(),)

    return setup


# The naive compositions, written as a user would (the authors' code for log_stablemax).


def naive_softmax(x: torch.Tensor) -> torch.Tensor:
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def naive_stablemax(x: torch.Tensor) -> torch.Tensor:
    s = torch.where(x >= 0, x + 1, 1 / (1 - x))
    return s / s.sum(-1, keepdim=True)


def naive_log_stablemax(x: torch.Tensor) -> torch.Tensor:
    s = torch.where(x >= 0, x + 1, 1 / (1 - x))
    return torch.log(s / s.sum(-1, keepdim=True))


def naive_clipped_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((CLIP_ZETA - CLIP_GAMMA) * torch.softmax(x, -1) + CLIP_GAMMA, 0, 1)


def naive_topk_softmax(x: torch.Tensor) -> torch.Tensor:
    v, i = x.topk(TOPK)
    return torch.zeros_like(x).scatter(-1, i, torch.softmax(v, -1))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, -1)


def _replacement_cases(op: str, ours, naive, baseline, baseline_name: str) -> list[Case]:
    setup = _logits(BATCH, BATCH_QUICK)
    name = f"{op}/{_shape_name(BATCH)}"
    return [
        Case(
            name=name,
            setup=setup,
            ours=ours,
            baseline=baseline,
            baseline_name=baseline_name,
            targets={"time_fwdbwd": 2.0, "mem_fwdbwd": 1.25},
            atol=None,
        ),
        Case(
            name=f"{name}:naive",
            setup=setup,
            ours=ours,
            baseline=naive,
            baseline_name="naive torch composition",
            targets={"time_fwdbwd": 1.0},
            atol=1e-5,
        ),
    ]


CASES = [
    # The reference row of the floor column: torch's own softmax ("ours" here) against the
    # naive formula; no target.
    Case(
        name=f"torch.softmax[reference]/{_shape_name(BATCH)}",
        setup=_logits(BATCH, BATCH_QUICK),
        ours=_softmax,
        baseline=naive_softmax,
        baseline_name="naive softmax (exp(x - max) / sum)",
        atol=1e-6,
    ),
    Case(
        name=f"two_pass_softmax/{_shape_name(ROW)}",
        setup=_logits(ROW, ROW_QUICK),
        ours=lambda x: F.two_pass_softmax(x, -1),
        baseline=_softmax,
        baseline_name="torch.softmax",
        targets={"time_fwd": 0.5},
        atol=1e-5,
    ),
    Case(
        name=f"two_pass_softmax/{_shape_name(BATCH)}",
        setup=_logits(BATCH, BATCH_QUICK),
        ours=lambda x: F.two_pass_softmax(x, -1),
        baseline=_softmax,
        baseline_name="torch.softmax",
        targets={"time_fwd": 1.1, "time_fwdbwd": 1.1},
        atol=1e-5,
    ),
    *_replacement_cases(
        "stablemax",
        lambda x: F.stablemax(x, -1),
        naive_stablemax,
        _softmax,
        "torch.softmax",
    ),
    *_replacement_cases(
        "log_stablemax",
        lambda x: F.log_stablemax(x, -1),
        naive_log_stablemax,
        _log_softmax,
        "torch.log_softmax",
    ),
    *_replacement_cases(
        "clipped_softmax",
        lambda x: F.clipped_softmax(x, -1, gamma=CLIP_GAMMA, zeta=CLIP_ZETA),
        naive_clipped_softmax,
        _softmax,
        "torch.softmax",
    ),
    *_replacement_cases(
        f"topk_softmax[k={TOPK}]",
        lambda x: F.topk_softmax(x, TOPK, -1),
        naive_topk_softmax,
        _softmax,
        "torch.softmax",
    ),
]


# ---------------------------------------------------------------------------------------
# Peer and floor columns (issue 15). Every case is put against torch.compile of the naive
# formula of ours (naive_softmax for the two-pass softmax; for the ":naive" cases this is
# the baseline compiled), compiled once per case with dynamic=False and compared with ours
# to 1e-5, and ours under softmaxkit's compile backend. Every map here also times the
# allocation-and-copy floor of its output in the forward ("x floor": ours' forward time
# as a multiple of torch.empty_like(out).copy_(x)); the reference row gives torch.softmax's.
# ---------------------------------------------------------------------------------------

NAIVE_OF = {
    "torch.softmax[reference]": naive_softmax,
    "two_pass_softmax": naive_softmax,
    "stablemax": naive_stablemax,
    "log_stablemax": naive_log_stablemax,
    "clipped_softmax": naive_clipped_softmax,
    f"topk_softmax[k={TOPK}]": naive_topk_softmax,
}


def _peers(case: Case) -> dict:
    op = case.name.partition("/")[0]
    peers = map_and_loss_peers(case.ours, NAIVE_OF[op], 1e-5)
    if op == "torch.softmax[reference]":  # "ours" is torch's op: no softmaxkit backend
        peers = {k: v for k, v in peers.items() if k != BACKEND_COMPILE}
    return peers


CASES = [dataclasses.replace(case, floor=True) for case in with_peers(CASES, _peers)]
