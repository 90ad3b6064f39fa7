"""The one-vs-rest squared hinge (L2-SVM) loss of Agarap 2017's CNN-SVM."""

from __future__ import annotations

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.row_loss import LossModule, RowLoss, class_loss


def _rowdot(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-row sum of t * h, (b,), with 0 * inf = 0 (a class of zero weight costs nothing
    even where its squared hinge overflows), overwriting the temporary ``h``."""
    return h.mul_(t).masked_fill_(t == 0, 0.0).sum(1)


def _finite_bound(dtype: torch.dtype) -> float:
    """The dtype's largest finite value: clamping o to it maps +-inf to a finite hinge (so
    a zero weight times it is 0, not NaN) and changes no finite o."""
    return torch.finfo(dtype).max


def _below(z: torch.Tensor, margin: float, big: float) -> torch.Tensor:
    """max(0, margin - o), computed from o clamped to >= -big (finite for o = -inf)."""
    return z.clamp(-big, margin).neg_().add_(margin)


def _above(z: torch.Tensor, margin: float, big: float) -> torch.Tensor:
    """max(0, margin + o), computed from o clamped to <= big (finite for o = +inf)."""
    return z.clamp(-margin, big).add_(margin)


class _SquaredHinge(RowLoss):
    # per class k: y_k = +1 for the target, -1 otherwise; h = max(0, margin - y_k o_k)^2.
    # A probability target t gives the expected loss: t_k h(+o_k) + (T - t_k) h(-o_k), T = sum t
    # (each weighted sum is a row dot product; no subtraction of large terms).
    def __init__(self, margin: float) -> None:
        self.margin = margin

    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, C = self.margin, z.shape[1]
        if t.dtype.is_floating_point:
            big = _finite_bound(z.dtype)
            pos = _below(z, m, big).square_()
            neg = _above(z, m, big).square_()
            return (_rowdot(t, pos) + _rowdot(torch.sub(t.sum(1, keepdim=True), t), neg)) / C
        index = t.unsqueeze(1)
        neg = (m + z).clamp_min_(0).square_().scatter_(1, index, 0.0)
        own = (m - z.gather(1, index)).clamp_min_(0).square_()
        return (neg.sum(1) + own.squeeze(1)) / C

    def grad(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        m, scale = self.margin, (2 / z.shape[1]) * g.unsqueeze(1)
        if t.dtype.is_floating_point:
            # (T - t_k) max(0, m + o_k) - t_k max(0, m - o_k)
            big = _finite_bound(z.dtype)
            rest = torch.sub(t.sum(1, keepdim=True), t)
            return _above(z, m, big).mul_(rest).sub_(_below(z, m, big).mul_(t)).mul_(scale)
        index = t.unsqueeze(1)
        own = (m - z.gather(1, index)).clamp_min_(0)
        return (m + z).clamp_min_(0).mul_(scale).scatter_(1, index, -own * scale)


@backend_op
def squared_hinge_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 1.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""One-vs-rest squared hinge (L2-SVM) loss, averaged over the classes of each sample.

    With :math:`y_k = +1` for the target class and :math:`-1` for every other class:

    .. math::
        \ell(o, c) = \frac{1}{C} \sum_{k=1}^{C} \max(0,\ m - y_k\, o_k)^2 .

    ``reduction="mean"`` therefore averages over both the batch and the classes, exactly
    as the official code's ``reduce_mean(square(maximum(0, 1 - y * output)))`` with labels
    one-hot with the 0s replaced by -1. The loss is 0 when every margin is met (target
    output >= m, all others <= -m). A ``-inf`` logit of a non-target class costs nothing
    (it is "impossible"), one of the target class costs ``inf``.

    A probability target :math:`t` (or label smoothing) gives the expected loss over the
    label, :math:`\sum_j t_j\,\ell(o, j)`, which per class is
    :math:`t_k \max(0, m - o_k)^2 + (\sum_j t_j - t_k) \max(0, m + o_k)^2`: each class is a
    binary squared hinge weighted by how likely it is to be positive. It equals the loss
    above for a one-hot :math:`t`. (Plugging :math:`y = 2t - 1` into the formula instead is
    not an expectation over labels and gives a class with :math:`t_k = 1/2` a constant
    loss with no gradient, so it is not used.)

    The paper's objective also has a weight penalty, which is not a function of the logits
    and so is not part of this loss. The official total loss is
    ``mean(W**2) + penalty_parameter * squared_hinge_loss(o, y)`` with ``W`` the readout
    weights (bias excluded) and ``penalty_parameter`` (the SVM's C) = 1 in the README;
    the paper writes the L2-SVM objective as
    :math:`\frac{1}{2}\lVert w\rVert_2^2 + C \sum_i \max(0, 1 - y_i\, w^\top x_i)^2`. Add
    the penalty yourself (``W.square().mean()``) or use weight decay. The official code
    predicts ``argmax(sign(o))``, which breaks ties among several positive (or all
    negative) outputs towards the first index; predict with ``o.argmax(1)``.

    The Crammer-Singer / Weston-Watkins multi-class margin (target score against every
    other score, squared for ``p=2``) is ``torch.nn.functional.multi_margin_loss``; it
    is a different loss and is not duplicated here.

    Paper: A. F. Agarap, "An Architecture Combining Convolutional Neural Network (CNN)
    and Support Vector Machine (SVM) for Image Classification", 2017, arXiv:1712.03541;
    official code ``AFAgarap/cnn-svm``, ``model/cnn_svm.py`` (the L2-SVM after Tang 2013,
    "Deep Learning using Linear Support Vector Machines", arXiv:1306.0239).

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1, like ``cross_entropy``.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        margin: :math:`m`, >= 0 (default 1, the paper's and the official code's).
        reduction: "mean" (over non-ignored targets; 0 when all are ignored), "sum" or
            "none".
        ignore_index: target value that contributes nothing (index targets only).
        label_smoothing: in [0, 1], as in ``cross_entropy``.

    Returns:
        The loss in the logits' dtype: a scalar, or per sample for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses.hinge import squared_hinge_loss
        >>> x = torch.tensor([[2.0, -1.5, 0.5], [0.0, -3.0, 1.0]])
        >>> squared_hinge_loss(x, torch.tensor([0, 2]), reduction="none")
        tensor([0.7500, 0.3333])
    """
    v.check_number("margin", margin, low=0.0)
    return class_loss(
        _SquaredHinge(float(margin)),
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


class SquaredHingeLoss(LossModule):
    """Module twin of :func:`squared_hinge_loss`."""

    def __init__(
        self,
        margin: float = 1.0,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.margin = float(v.check_number("margin", margin, low=0.0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return squared_hinge_loss(logits, target, margin=self.margin, **self.options())

    def extra_repr(self) -> str:
        return f"margin={self.margin}, " + super().extra_repr()
