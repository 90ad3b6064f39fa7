"""StableMax and log-StableMax (Prieto et al. 2025)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import (
    as_rows,
    block_target,
    compute_dtype,
    from_rows,
    in_dtype,
    row_blocks,
    store,
    workspace,
)
from softmaxkit._ops.stablemax import r_map, s_derivative_over, s_map, scaled_total


class _StableMax(torch.autograd.Function):
    """StableMax / log-StableMax along the last axis of a 2-D (rows, n) input, in row blocks.

    Masked entries arrive as ``-inf`` (s = 0). Block results are written straight into
    the output and all temporaries live in a reused one-block workspace, so peak memory
    is the output plus a few blocks. With y = s / S and r = 1 / (1 + |x|) = s'/s:
    d StableMax . g = s'/S (g - <g, y>)  (from the saved output) and
    d logStableMax . g = r (g - y sum(g))  (recomputing s and r from the saved input;
    the g of ``-inf`` outputs, which are constants, is left out of the sum). A row whose
    sum S overflows (terms near the float maximum) is divided by its largest term first
    and S kept as scale * total (``_ops.stablemax.scaled_total``).
    """

    @staticmethod
    def forward(ctx: Any, x2: torch.Tensor, log: bool) -> torch.Tensor:
        dtype = compute_dtype(x2)
        out = torch.empty_like(x2)
        total = torch.empty(x2.shape[0], 1, dtype=dtype, device=x2.device)
        scale = None  # (rows, 1) per-row scales, only once some row sum overflows
        work = workspace(x2, dtype, 3)
        for b in row_blocks(*x2.shape):
            s_buf, add_buf, x_buf = (w[: b.stop - b.start] for w in work)
            s = s_map(in_dtype(x2[b], x_buf), block_target(out[b], dtype, s_buf), add_buf)
            # S = scale * tb; scale is the row's largest term where S overflows, else 1
            tb, sb = scaled_total(s, s.sum(-1, keepdim=True))
            tb.masked_fill_(tb == 0, 1.0)  # nothing kept: zeros (or -inf), not 0/0
            total[b] = tb
            if sb is not None:
                if scale is None:
                    scale = torch.ones_like(total)
                scale[b] = sb
                s.div_(sb)
            # log s - log S: the log of each term, never of the (underflowing) ratio
            store(out[b], s.log_().sub_(tb.log()) if log else s.div_(tb))
        ctx.log = log
        ctx.save_for_backward(x2 if log else None, out, total, scale)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g2: torch.Tensor) -> tuple[torch.Tensor, None]:
        x2, out, total, scale = ctx.saved_tensors
        dtype = total.dtype
        grad = torch.empty_like(out)
        work = workspace(out, dtype, 4)
        for b in row_blocks(*out.shape):
            res_buf, tmp, g_buf, in_buf = (w[: b.stop - b.start] for w in work)
            gb = in_dtype(g2[b], g_buf)
            S = total[b]
            sc = None if scale is None else scale[b]  # the row sum is sc * S
            res = block_target(grad[b], dtype, res_buf)
            if ctx.log:
                xb = in_dtype(x2[b], in_buf)
                r = r_map(xb, out=res)
                # sum of g over entries with r > 0 (ceil(r) is that indicator)
                g_sum = torch.mul(torch.ceil(r, out=tmp), gb, out=tmp).sum(-1, keepdim=True)
                y = torch.maximum(r, torch.add(xb, 1, out=tmp), out=tmp).div_(S)
                if sc is not None:
                    y.div_(sc)
                r.mul_(y.mul_(g_sum).neg_().add_(gb))
            else:
                yb = in_dtype(out[b], in_buf)
                dot = torch.mul(gb, yb, out=tmp).sum(-1, keepdim=True)
                s = torch.mul(yb, S, out=res)  # s / sc
                s = s_derivative_over(s if sc is None else s.mul_(sc), S, sc)
                s.mul_(torch.sub(gb, dot, out=tmp))
            store(grad[b], res)
        return grad, None


def _stablemax(x: torch.Tensor, dim: int, mask: torch.Tensor | None, log: bool) -> torch.Tensor:
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    if mask is not None:
        v.check_mask(mask, x)
        x = x.masked_fill(~mask, -torch.inf)
    if x.numel() == 0:
        return x.clone()
    # torch leaves Function.apply unannotated
    out2: torch.Tensor = _StableMax.apply(as_rows(x, dim), log)  # type: ignore[no-untyped-call]
    return from_rows(out2, x, dim)


@backend_op
def stablemax(x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""StableMax: a softmax replacement whose terms grow linearly, not exponentially.

    .. math:: \mathrm{StableMax}(x)_i = \frac{s(x_i)}{\sum_j s(x_j)}, \qquad
              s(x) = \begin{cases} x + 1 & x \ge 0 \\ \frac{1}{1 - x} & x < 0 \end{cases}

    :math:`s` is positive and C\ :sup:`1` at 0, so no term ever overflows or
    underflows to an absorbed zero: this is what keeps training out of Softmax
    Collapse. StableMax is **not** shift-invariant (no max is subtracted: that would
    change the result) and has no temperature.

    Paper: L. Prieto, M. Barsbey, P. Mediano, T. Birdal, "Grokking at the Edge of
    Numerical Stability", ICLR 2025, arXiv:2501.04697. Differences from the authors'
    ``utils.py``: ``s`` is evaluated branch-free (their ``torch.where`` gives a NaN
    gradient at exactly ``x = 1`` in float32/float16 and their ``1e-30`` epsilon is
    dropped, since ``1 - x >= 1`` on that branch), ``-inf`` entries and masked entries
    get weight 0 and zero gradient (theirs give NaN gradients for the whole row), and
    half inputs are computed in float32.

    A row whose sum :math:`\sum_j s(x_j)` overflows (e.g. ``[2e38, 2e38]`` in float32) is
    normalised by its largest term first: the result is exact (``[0.5, 0.5]``) for any
    finite input; other rows pay one check of their sums.

    Args:
        x: input of any shape, any floating dtype (float16/bfloat16 computed in
            float32, returned in the input dtype).
        dim: the axis to normalise.
        mask: boolean keep-mask broadcastable to ``x``. A row with nothing kept gives
            zeros and zero gradient.

    Example:
        >>> import torch
        >>> from softmaxkit import stablemax
        >>> stablemax(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([0.1429, 0.2857, 0.5714])
    """
    return _stablemax(x, dim, mask, log=False)


@backend_op
def log_stablemax(
    x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""log StableMax, computed as :math:`\log s(x_i) - \log \sum_j s(x_j)`.

    The log of each term never underflows (:math:`s(x) \ge 1 / (1 + |x|)`), so the log
    map stays finite and precise where the ratio :math:`s(x_i) / \sum_j s(x_j)` rounds
    to 0 (the authors' code takes the log of the ratio; the values agree elsewhere).
    Masked and ``-inf`` entries give ``-inf`` with zero gradient; a row with nothing
    kept gives ``-inf`` everywhere.
    Paper and arguments as :func:`stablemax`.

    Example:
        >>> import torch
        >>> from softmaxkit import log_stablemax
        >>> log_stablemax(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([-1.9459, -1.2528, -0.5596])
    """
    return _stablemax(x, dim, mask, log=True)


class StableMax(nn.Module):
    """Module twin of :func:`stablemax`: ``StableMax(dim)(x, mask=None)``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return stablemax(x, self.dim, mask=mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogStableMax(StableMax):
    """Module twin of :func:`log_stablemax`: ``LogStableMax(dim)(x, mask=None)``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return log_stablemax(x, self.dim, mask=mask)
