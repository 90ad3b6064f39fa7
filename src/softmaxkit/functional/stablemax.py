"""StableMax and log-StableMax (Prieto et al. 2025)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit.functional._common import as_rows, compute_dtype, from_rows, row_blocks


def s_map(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0, as ``1/(1 - min(x, 0)) + max(x, 0)``.

    Branch-free, so no unused branch is ever evaluated where it blows up (the official
    code's NaN gradient at x = 1); ``s(-inf) = 0``. Returns a new tensor.
    """
    s = torch.clamp(x, max=0).neg_().add_(1).reciprocal_()
    return s.add_(torch.clamp(x, min=0))


def log_s_map(x: torch.Tensor) -> torch.Tensor:
    """log s(x) = sign(x) log(1 + |x|), exact for every x (``log s(-inf) = -inf``)."""
    return torch.log1p(x.abs()).copysign_(x)


def s_derivative_over(s: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """s'(x) / total, in place on ``s``; s'(x) = 1 (x >= 0) or s(x)^2 (x < 0) = min(1, s^2)."""
    return s.square_().clamp_(max=1).div_(total)


def _block_s(xb: torch.Tensor, keep: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    s = s_map(xb.to(dtype))
    if keep is not None:
        s.masked_fill_(~keep, 0.0)
    return s


def stablemax_sums(
    x2: torch.Tensor, keep2: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Per-row sums of s over (rows, n) ``x2`` (masked entries excluded), shape (rows, 1)."""
    total = torch.empty(x2.shape[0], 1, dtype=dtype, device=x2.device)
    for b in row_blocks(*x2.shape):
        keep = None if keep2 is None else keep2[b]
        total[b] = _block_s(x2[b], keep, dtype).sum(-1, keepdim=True)
    return total


class _StableMax(torch.autograd.Function):
    """StableMax along the last axis of a 2-D (rows, n) input, in row blocks.

    Saves only the input and the per-row sums; backward recomputes s block by block,
    so peak memory is the output plus one block of temporaries.
    """

    @staticmethod
    def forward(ctx, x2, keep2, log):
        dtype = compute_dtype(x2)
        total = stablemax_sums(x2, keep2, dtype)
        dead = total == 0  # nothing kept: zeros (or -inf), not 0/0
        total.masked_fill_(dead, 1.0)
        log_total = total.log()
        out = torch.empty_like(x2)
        for b in row_blocks(*x2.shape):
            xb = x2[b].to(dtype)
            if log:
                yb = log_s_map(xb).sub_(log_total[b])
                if keep2 is not None:
                    yb.masked_fill_(~keep2[b], -torch.inf)
            else:
                yb = _block_s(xb, None if keep2 is None else keep2[b], dtype).div_(total[b])
            out[b] = yb
        ctx.log = log
        ctx.save_for_backward(x2, keep2, total)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g2):
        x2, keep2, total = ctx.saved_tensors
        dtype = total.dtype
        grad = torch.empty_like(x2)
        for b in row_blocks(*x2.shape):
            s = _block_s(x2[b], None if keep2 is None else keep2[b], dtype)
            gb = g2[b].to(dtype)
            S = total[b]
            if ctx.log:
                # d/dx_j = g_j s'_j / s_j - (sum_i g_i) s'_j / S, with s'/s = min(s, 1/s);
                # an entry with s = 0 (masked or -inf) is the constant -inf: its g is dropped
                gb = gb.masked_fill(s == 0, 0.0)
                gsum = gb.sum(-1, keepdim=True)
                own = torch.minimum(s, s.reciprocal()).mul_(gb)
                grad[b] = own.sub_(s_derivative_over(s, S).mul_(gsum))
            else:
                # d/dx_j = s'_j / S (g_j - sum_i g_i y_i)
                dot = torch.linalg.vecdot(gb, s, dim=-1).unsqueeze(-1).div_(S)
                grad[b] = s_derivative_over(s, S).mul_(gb - dot)
        return grad, None, None


def _stablemax(x, dim, mask, log):
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    keep2 = None
    if mask is not None:
        v.check_mask(mask, x)
        keep2 = as_rows(mask.expand(x.shape), dim)
    if x.numel() == 0:
        return x.clone()
    out2 = _StableMax.apply(as_rows(x, dim), keep2, log)
    return from_rows(out2, x, dim)


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


def log_stablemax(
    x: torch.Tensor, dim: int = -1, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""log StableMax, computed as :math:`\log s(x_i) - \log \sum_j s(x_j)`.

    :math:`\log s(x) = \operatorname{sign}(x) \log(1 + |x|)` is exact for every
    :math:`x`, so the log map keeps full relative precision where the ratio
    :math:`s(x_i) / \sum_j s(x_j)` would round (the authors' code takes the log of the
    ratio; the values agree, ours is more precise). Masked and ``-inf`` entries give
    ``-inf`` with zero gradient; a row with nothing kept gives ``-inf`` everywhere.
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
