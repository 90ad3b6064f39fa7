"""Benchmark cases for the EBV generator and the cosine head (``softmaxkit bench -k equiangular``).

- ``equiangular_basis(1000, 512)`` (issue 13: "time stated"): our batched generator (one
  1000 x 1000 Gram matrix per step, the gradient written out) against the official
  ``Generate_EBV.py`` loop in plain torch (row slices of 130 through autograd, SGD lr 1e-3),
  both from the same seeded start and stopping at the same rule; the threshold is 0.05 (the
  Welch bound for 1000 vectors in 512 dimensions is 0.031, so the official 0.002 is out of
  reach at d = 512). No target: the time is stated. ``--quick``: 200 x 128, threshold 0.1.
- ``CosineHead`` forward + backward at (4096, 512) -> 1000 classes against the plain
  ``F.normalize(x) @ F.normalize(W).T / t`` a user would write (no target; ``--quick``
  divides N by 8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softmaxkit.cli.bench import Case
from softmaxkit.heads import CosineHead, equiangular_basis

EBV_FULL, EBV_QUICK = (1000, 512, 0.05), (200, 128, 0.1)


def _ebv_setup(quick: bool) -> tuple:
    return EBV_QUICK if quick else EBV_FULL


def ebv_ours(n: int, d: int, threshold: float) -> torch.Tensor:
    return equiangular_basis(n, d, threshold=threshold, max_steps=20000)


def ebv_official_loop(n: int, d: int, threshold: float) -> torch.Tensor:
    """The official generator's loop (row slices, autograd, SGD), seeded like ours."""
    with torch.enable_grad():  # the harness times forward-only cases under no_grad
        return _official_loop(n, d, threshold)


def _official_loop(n: int, d: int, threshold: float) -> torch.Tensor:
    init = torch.randn(n, d, generator=torch.Generator().manual_seed(42))
    basis = torch.nn.Parameter(F.normalize(init, dim=1))
    opt = torch.optim.SGD([basis], lr=1e-3)
    slice_size = 130
    for _ in range(20000):
        basis.data.copy_(F.normalize(basis.data, dim=1))
        worst = threshold
        for i in range(math.ceil(n / slice_size)):
            start, end = slice_size * i, min(n, slice_size * (i + 1))
            e = F.one_hot(torch.arange(start, end), n)
            m = (basis[start:end] @ basis.T).abs() - e
            worst = max(worst, m.max().item())
            F.relu(m - threshold).sum().backward()
        if worst <= threshold + 1e-4:
            break
        opt.step()
        opt.zero_grad()
    return basis.data


N, D, C = 4096, 512, 1000
_HEAD = CosineHead(D, C, temperature=0.05)


def _head_setup(quick: bool) -> tuple:
    n = N // 8 if quick else N
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g).requires_grad_()
    w = torch.randn(C, D, generator=g).requires_grad_()
    return x, w


def head_ours(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(_HEAD, {"weight": w}, (x,))


def head_plain(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1) @ F.normalize(w, dim=1).T / 0.05


CASES = [
    Case(
        name="equiangular_basis/1000x512",
        setup=_ebv_setup,
        ours=ebv_ours,
        baseline=ebv_official_loop,
        baseline_name="official Generate_EBV loop (slices of 130, autograd)",
        backward=False,
        atol=1e-2,  # float32: slices and the whole Gram round differently over many steps
    ),
    Case(
        name=f"CosineHead/{N}x{D}x{C}",
        setup=_head_setup,
        ours=head_ours,
        baseline=head_plain,
        baseline_name="F.normalize(x) @ F.normalize(W).T / t",
        atol=1e-3,
    ),
]
