"""StableMax cross-entropy (Prieto et al. 2025)."""

from __future__ import annotations

from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.row_loss import BufferedRowLoss, LossModule, class_loss
from softmaxkit._ops.stablemax import r_map, s_derivative_over, s_map, scaled_total


def _log_s(x: torch.Tensor) -> torch.Tensor:
    """log s(x) = sign(x) log(1 + |x|), exact where s itself would round."""
    return torch.sign(x) * torch.log1p(x.abs())


class _StableMaxNLL(BufferedRowLoss):
    """-log stablemax(z)_y per row (the expected value under a probability target).

    ``s`` and its scratch live in two reused block buffers: a fresh block-sized temporary
    per block is page-faulted in again every block (a third of the eager time at
    (8192, 32000) before they were reused)."""

    buffers = 2

    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = s_map(z, *self.block_work(z))
        total, scale = scaled_total(s, s.sum(-1, keepdim=True))  # S = scale * total
        log_total = total.log() if scale is None else total.log() + scale.log()
        log_total = log_total.squeeze(-1)
        if t.dtype.is_floating_point:  # sum_k t_k (log S - log s_k); 0 log 0 = 0
            xlogy: torch.Tensor = torch.special.xlogy(t, s)
            return t.sum(-1) * log_total - xlogy.sum(-1)
        return log_total - _log_s(z.gather(1, t.unsqueeze(1)).squeeze(1))

    def grad(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # d/dz_j = s'(z_j) / S - t_j / (1 + |z_j|), since d log s / dz = r(z) = 1 / (1 + |z|)
        s = s_map(z, *self.block_work(z))  # returned in its buffer: the engine copies it
        total, scale = scaled_total(s, s.sum(-1, keepdim=True))
        g = g.unsqueeze(1)
        if t.dtype.is_floating_point:
            over = s_derivative_over(s, total, scale).mul_(t.sum(-1, keepdim=True))
            return over.sub_(t * r_map(z)).mul_(g)
        grad = s_derivative_over(s, total, scale).mul_(g)
        own = r_map(z.gather(1, t.unsqueeze(1))).mul_(g)
        return grad.scatter_add_(1, t.unsqueeze(1), own.neg_())


@backend_op
def stablemax_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Cross-entropy with StableMax in place of softmax.

    .. math:: \ell(x, y) = -\log \frac{s(x_y)}{\sum_j s(x_j)}
              = \log \sum_j s(x_j) - \operatorname{sign}(x_y) \log(1 + |x_y|)

    with :math:`s` as in :func:`softmaxkit.stablemax`. The gradient
    :math:`\partial \ell / \partial x_j = s'(x_j) / \sum_k s(x_k) - [j = y] / (1 + |x_y|)`
    is computed in row blocks from the saved logits, so the forward pass allocates
    nothing of size N x C and backward allocates only the gradient. A probability
    target :math:`t` (or label smoothing, which makes one) gives
    :math:`\sum_k t_k \ell(x, k)`, as ``cross_entropy`` does for softmax. A row whose sum
    :math:`\sum_j s(x_j)` overflows (logits near the float maximum) is summed as
    :math:`m \sum_j s(x_j) / m` with :math:`m` its largest term, so the loss stays finite
    and exact.

    Paper: L. Prieto, M. Barsbey, P. Mediano, T. Birdal, "Grokking at the Edge of
    Numerical Stability", ICLR 2025, arXiv:2501.04697. The authors' code always
    computes in float64 and returns float64, and returns the per-sample vector for any
    ``reduction`` other than "mean" (including "sum"); here ``reduction`` follows
    ``torch.nn.functional.cross_entropy`` and ``dtype=torch.float64`` reproduces their
    precision.

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1, like ``cross_entropy``.
        target: class indices of shape (N,) or (N, d1, ...), or class probabilities
            with the logits' shape (treated as constants).
        reduction: "mean" (over non-ignored targets, or over samples for probability
            targets; 0 when all are ignored), "sum" or "none".
        ignore_index: target value that contributes nothing.
        label_smoothing: in [0, 1]; the target becomes ``(1 - eps) e_y + eps / C``.
        dtype: compute dtype; ``None`` is float32 for half logits and the logits' dtype
            otherwise. The result is returned in ``dtype`` when given, else in the
            logits' dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import stablemax_cross_entropy
        >>> stablemax_cross_entropy(torch.tensor([[-1.0, 0.0, 1.0]]), torch.tensor([2]))
        tensor(0.5596)
    """
    if dtype is not None:
        v.check_floating_dtype("dtype", dtype)
    return class_loss(
        _StableMaxNLL(),
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        dtype=dtype,
        out_dtype=dtype,
    )


class StableMaxCrossEntropyLoss(LossModule):
    """Module twin of :func:`stablemax_cross_entropy`."""

    def __init__(
        self,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.dtype = dtype

    def hyperparameters(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return stablemax_cross_entropy(logits, target, **self.hyperparameters(), **self.options())
