"""The element-wise pieces of StableMax, shared by the map and its cross-entropy.

With ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0`` (Prieto et al.,
"Grokking at the Edge of Numerical Stability", ICLR 2025, arXiv:2501.04697):
:func:`s_map` evaluates ``s``, :func:`r_map` its log-derivative ``r = s' / s`` and
:func:`s_derivative_over` ``s' / S`` from ``s``, :func:`scaled_total` the row sum ``S`` as
``scale * total`` where ``S`` itself overflows. Each may write into preallocated buffers,
so the blocked kernels of :mod:`softmaxkit.functional.stablemax` and
:mod:`softmaxkit.losses.stablemax` allocate nothing per block.
"""

from __future__ import annotations

import math

import torch

from softmaxkit._ops.blocks import maybe_any


def r_map(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """r(x) = 1 / (1 + |x|) = s'(x) / s(x); ``r(+-inf) = 0``. Written into ``out`` when given."""
    return torch.abs(x, out=out).add_(1).reciprocal_()


def s_map(
    x: torch.Tensor, out: torch.Tensor | None = None, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0, as ``max(x + 1, 1 / (1 + |x|))``.

    (For x < 0, (1 + x)(1 - x) < 1 so the reciprocal is the larger; for x >= 0, 1 + x >= 1.)
    Branch-free: no branch is evaluated where it blows up (the official code's
    ``torch.where`` gives a NaN gradient at x = 1), and ``s(-inf) = 0``. The result
    goes to ``out`` and ``scratch`` holds ``x + 1``, when given.
    """
    s = r_map(x, out)
    return torch.maximum(s, torch.add(x, 1, out=scratch), out=s)


def s_derivative_over(
    s: torch.Tensor, total: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """s'(x) / (scale * total), in place on ``s``; s'(x) = 1 (x >= 0) or s(x)^2 (x < 0) =
    min(1, s^2). ``scale`` (per row, see :func:`scaled_total`) divides separately, so a
    total that only fits as ``scale * total`` never has to be formed."""
    out = s.square_().clamp_(max=1).div_(total)
    return out if scale is None else out.div_(scale)


def scaled_total(s: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(total', scale)`` with ``sum_k s_k = scale * total'`` per row of a (rows, n) block.

    ``total`` is the plain row sum ``s.sum(-1, keepdim=True)``. Where it overflowed (terms
    ``x + 1`` of logits near the float maximum, e.g. [2e38, 2e38] in float32), the row's
    ``scale`` is its largest term and ``total'`` the sum of ``s / scale`` (at most n);
    elsewhere the scale is 1 and ``total`` is kept. ``scale`` is None when no row overflowed
    (the plain path: one check of the (rows, 1) totals)."""
    bad = ~(total <= torch.finfo(total.dtype).max)
    if not maybe_any(bad):
        return total, None
    top = s.amax(-1, keepdim=True)
    scale = torch.where(bad & (top > 0) & (top < math.inf), top, torch.ones_like(top))
    return torch.where(bad, (s / scale).sum(-1, keepdim=True), total), scale
