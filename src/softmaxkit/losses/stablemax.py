"""StableMax cross-entropy (Prieto et al. 2025)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit.functional._common import (
    as_rows,
    block_target,
    compute_dtype,
    in_dtype,
    row_blocks,
    store,
    workspace,
)
from softmaxkit.functional.stablemax import r_map, s_derivative_over, s_map, stablemax_sums


class _StableMaxNLL(torch.autograd.Function):
    """Per-row ``log sum_j s(x_j) - log s(x_y)`` of a (rows, C) input; never builds an N x C output
    in forward. Ignored rows have target -1 here and give 0."""

    @staticmethod
    def forward(ctx, x2, target, dtype):
        total = stablemax_sums(x2, dtype).squeeze(-1)
        kept = target >= 0
        safe_target = target.clamp(min=0)
        picked = x2.gather(1, safe_target.unsqueeze(1)).squeeze(1).to(dtype)
        loss = (total.log() - s_map(picked).log()).masked_fill_(~kept, 0.0)
        ctx.save_for_backward(x2, safe_target, kept, total, picked)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x2, target, kept, total, picked = ctx.saved_tensors
        g = g.masked_fill(~kept, 0.0)
        grad = torch.empty_like(x2)
        dtype = total.dtype
        work = workspace(x2, dtype, 3)
        for b in row_blocks(*x2.shape):
            # d/dx_j = g (s'_j / S - [j = y] / (1 + |x_y|))
            s_buf, add_buf, x_buf = (w[: b.stop - b.start] for w in work)
            s = s_map(in_dtype(x2[b], x_buf), block_target(grad[b], dtype, s_buf), add_buf)
            store(grad[b], s_derivative_over(s, total[b].unsqueeze(1)).mul_(g[b].unsqueeze(1)))
        own = g * r_map(picked)
        grad.scatter_add_(1, target.unsqueeze(1), (-own).unsqueeze(1).to(grad.dtype))
        return grad, None, None


def stablemax_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Cross-entropy with StableMax in place of softmax.

    .. math:: \ell(x, y) = -\log \frac{s(x_y)}{\sum_j s(x_j)}
              = \log \sum_j s(x_j) - \operatorname{sign}(x_y) \log(1 + |x_y|)

    with :math:`s` as in :func:`softmaxkit.stablemax`. The gradient
    :math:`\partial \ell / \partial x_j = s'(x_j) / \sum_k s(x_k) - [j = y] / (1 + |x_y|)`
    is computed in row blocks from the saved logits, so the forward pass allocates
    nothing of size N x C and backward allocates only the gradient.

    Paper: L. Prieto, M. Barsbey, P. Mediano, T. Birdal, "Grokking at the Edge of
    Numerical Stability", ICLR 2025, arXiv:2501.04697. The authors' code always
    computes in float64 and returns float64, and returns the per-sample vector for any
    ``reduction`` other than "mean" (including "sum"); here ``reduction`` follows
    ``torch.nn.functional.cross_entropy`` and ``dtype=torch.float64`` reproduces their
    precision.

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1, like ``cross_entropy``.
        target: class indices of shape (N,) or (N, d1, ...).
        reduction: "mean" (over non-ignored targets; 0 when all are ignored), "sum" or
            "none".
        ignore_index: target value that contributes nothing.
        dtype: compute dtype; ``None`` is float32 for half logits and the logits' dtype
            otherwise. The result is returned in ``dtype`` when given, else in the
            logits' dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import stablemax_cross_entropy
        >>> stablemax_cross_entropy(torch.tensor([[-1.0, 0.0, 1.0]]), torch.tensor([2]))
        tensor(0.5596)
    """
    v.check_floating("logits", logits)
    if logits.ndim < 2:
        raise ValueError(
            f"logits must have shape (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}"
        )
    v.check_reduction(reduction)
    v.check_int("ignore_index", ignore_index)
    v.check_class_target(target, logits, 1, ignore_index)
    if dtype is not None:
        v.check_floating_dtype("dtype", dtype)
    compute = dtype or compute_dtype(logits)
    out_dtype = dtype or logits.dtype
    flat_target = target.reshape(-1)
    kept = flat_target != ignore_index
    if logits.shape[1] == 0 or logits.numel() == 0:
        losses = logits.new_zeros(flat_target.shape, dtype=compute)
    else:
        x2 = as_rows(logits, 1)
        losses = _StableMaxNLL.apply(x2, torch.where(kept, flat_target, -1), compute)
    if reduction == "none":
        return losses.reshape(target.shape).to(out_dtype)
    total = losses.sum()
    if reduction == "mean":
        total = total / kept.sum().clamp(min=1)
    return total.to(out_dtype)


class StableMaxCrossEntropyLoss(nn.Module):
    """Module twin of :func:`stablemax_cross_entropy`."""

    def __init__(
        self, *, reduction: str = "mean", ignore_index: int = -100, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        v.check_reduction(reduction)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.dtype = dtype

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return stablemax_cross_entropy(
            logits,
            target,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            dtype=self.dtype,
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
