"""Softmax Collapse (SC): rows whose softmax is exactly one-hot in floating point.

Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability",
ICLR 2025, arXiv:2501.04697 (Definition 3, Sec. 3.1). A row collapses when every
non-maximal term of the softmax denominator is absorbed by rounding,

    S = sum_j exp(z_j - max_k z_k)  ==  1   (evaluated in floating point),

so the softmax is exactly one-hot, the cross-entropy of a correctly classified row is
exactly 0 and its gradient with respect to the correct logit vanishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from softmaxkit import _validation as V

__all__ = ["SoftmaxCollapse", "softmax_collapse", "softmax_collapse_fraction"]

IGNORE_INDEX = -100


class SoftmaxCollapse(NamedTuple):
    """Result of :func:`softmax_collapse` (an immutable named tuple).

    Attributes:
        fraction: 0-d float32 tensor, the fraction of rows that collapsed.
        collapsed: boolean tensor of the logits' shape without the class axis ``dim``;
            ``True`` where ``S == 1`` exactly.
        zero_loss_fraction: 0-d float32 tensor, the fraction of samples whose
            per-sample loss is exactly 0, or ``None`` when no target was given.
    """

    fraction: torch.Tensor
    collapsed: torch.Tensor
    zero_loss_fraction: torch.Tensor | None


def _collapsed_rows(logits: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask of collapsed rows (class axis ``dim`` reduced away)."""
    x = logits.detach().to(dtype)
    if x.shape[dim] == 0:  # a row with no classes has S = 0
        return torch.zeros(x.shape[:dim] + x.shape[dim + 1 :], dtype=torch.bool, device=x.device)
    row_max = x.amax(dim=dim, keepdim=True)
    # A row whose max is not finite (all -inf, or holding +inf or NaN) is shifted by +inf:
    # its terms are exp(-inf) = 0 or NaN, so S is 0 or NaN and the row is not collapsed
    # (a per-row shift: no second full-size tensor). Masked (-inf) entries of other rows
    # give 0.
    shift = torch.where(torch.isfinite(row_max), row_max, float("inf"))
    total = torch.sum(torch.exp(x - shift), dim=dim)
    return total == 1


def _row_fraction(mask: torch.Tensor) -> torch.Tensor:
    if mask.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=mask.device)
    return mask.to(torch.float32).mean()


def _check_logits(logits: object, dim: object, dtype: object) -> tuple[torch.Tensor, int]:
    V.check_floating("logits", logits)
    assert isinstance(logits, torch.Tensor)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis), got a 0-d tensor")
    class_dim = V.check_dim("dim", dim, logits.ndim)
    V.check_floating_dtype("dtype", dtype)
    return logits, class_dim


def softmax_collapse_fraction(
    logits: torch.Tensor, *, dim: int = -1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""Fraction of rows in Softmax Collapse: :math:`\sum_j e^{z_j - \max z}` rounds to 1.

    Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025,
    arXiv:2501.04697, Definition 3 (Eq. 2). This is the measurement of the authors'
    code (``MetricsLogger.compute_softmax_collapse``): cast the logits to the softmax
    precision, subtract the row max, ``S = torch.sum(torch.exp(.))`` in that precision,
    and report ``mean(S == 1)``.

    Args:
        logits: floating tensor of any shape ``(..., C, ...)`` with the classes on ``dim``.
            Detached; no gradient flows.
        dim: the class axis. Default ``-1``.
        dtype: precision of the softmax whose collapse is measured (``torch.float16``,
            ``torch.bfloat16``, ``torch.float32`` or ``torch.float64``). Default
            ``torch.float32``, the official code's default ``--softmax_precision 32``.

    Returns:
        0-d float32 tensor on the logits' device: collapsed rows / rows. An input with
        no rows gives 0 (not NaN).

    Notes:
        * **Precision.** With a single competitor at gap ``g`` below the max, the row
          collapses once ``exp(-g)`` is at most half an ulp of 1, i.e.
          ``g >= ln 2 * (mantissa bits + 1)``: about 5.5 (bfloat16), 7.6 (float16),
          16.6 (float32) and 36.7 (float64). Many competitors add up: a row with
          ``C - 1`` competitors at the same gap needs a gap larger by up to
          ``ln(C - 1)``; how much exactly depends on the summation order (below).
        * **Order.** Which small terms survive depends on how ``torch.sum`` groups the
          additions (vectorised / pairwise on CPU, tree reductions on GPU; float16 and
          bfloat16 sums are accumulated in float32 and rounded once), so rows at the
          edge can flip between devices or library versions.
        * **Ties never collapse**: two entries equal to the max give ``S >= 2``.
        * A row with a single class (or a single entry that is not ``-inf``) always has
          ``S == 1`` and counts as collapsed.
        * ``-inf`` entries (masked classes) contribute ``exp(-inf) = 0``. A row that is
          entirely ``-inf`` has no softmax and is **not** counted as collapsed; neither
          is a row whose maximum is NaN or ``+inf``.

    Example:
        >>> import torch
        >>> from softmaxkit.dynamics import softmax_collapse_fraction
        >>> z = torch.tensor([[20.0, 0.0], [10.0, 0.0], [3.0, 3.0]])
        >>> softmax_collapse_fraction(z)  # only the gap-20 row collapses in float32
        tensor(0.3333)
        >>> softmax_collapse_fraction(z, dtype=torch.float64)  # float64 needs a gap of ~37
        tensor(0.)
    """
    logits, class_dim = _check_logits(logits, dim, dtype)
    with torch.no_grad():
        return _row_fraction(_collapsed_rows(logits, class_dim, dtype))


def softmax_collapse(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    dim: int = -1,
    dtype: torch.dtype = torch.float32,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> SoftmaxCollapse:
    r"""Softmax Collapse per row, its fraction, and the fraction of exactly-zero losses.

    Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025,
    arXiv:2501.04697 (Definition 3, Eqs. 2-4). The two metrics of the authors' logger:

    * ``fraction`` / ``collapsed``: rows whose :math:`S = \sum_j e^{z_j - \max z}`,
      computed in ``dtype``, equals 1 exactly (see :func:`softmax_collapse_fraction`
      for the precision, order, tie and ``-inf`` rules);
    * ``zero_loss_fraction``: fraction of samples whose per-sample loss is exactly 0
      (the code's ``compute_zero_terms``), with
      ``loss_fn(logits, target, reduction="none")``.

    Args:
        logits: floating tensor ``(..., C, ...)``, classes on ``dim``. Detached.
        target: optional. For the default loss, class indices of any integer dtype with
            the logits' shape minus ``dim`` (entries equal to -100 are ignored: excluded
            from ``zero_loss_fraction``; a floating or bool tensor of that shape is a
            ``TypeError``), or class probabilities with the logits' shape (the loss is
            :math:`-\sum_k t_k \log p_k` with :math:`0 \cdot \log p_k = 0`, so a masked
            ``-inf`` class of probability 0 adds nothing). With a custom ``loss_fn`` it is
            passed through unchecked.
        dim: the class axis. Default ``-1``.
        dtype: softmax precision, default ``torch.float32`` (official default).
        loss_fn: per-sample loss called as ``loss_fn(logits, target, reduction="none")``
            with the logits exactly as given (it must handle ``dim`` and its own
            precision, like the official ``stablemax_cross_entropy``); it must return one
            value per row. Default: ``torch.nn.functional.cross_entropy`` computed in
            ``dtype`` on the class axis ``dim``.

    Returns:
        :class:`SoftmaxCollapse` ``(fraction, collapsed, zero_loss_fraction)``;
        ``zero_loss_fraction`` is ``None`` when ``target`` is ``None``.

    Example:
        >>> import torch
        >>> from softmaxkit.dynamics import softmax_collapse
        >>> z = torch.tensor([[0.0, 20.0], [0.0, 10.0], [3.0, 3.0]])
        >>> r = softmax_collapse(z, torch.tensor([1, 1, 0]))
        >>> r.fraction, r.collapsed.tolist(), r.zero_loss_fraction
        (tensor(0.3333), [True, False, False], tensor(0.3333))
    """
    logits, class_dim = _check_logits(logits, dim, dtype)
    if loss_fn is not None:
        V.check_callable("loss_fn", loss_fn)
    with torch.no_grad():
        collapsed = _collapsed_rows(logits, class_dim, dtype)
        fraction = _row_fraction(collapsed)
        if target is None:
            return SoftmaxCollapse(fraction, collapsed, None)
        V.check_tensor("target", target)
        if loss_fn is None:
            losses, keep = _default_losses(logits, target, class_dim, dtype)
        else:
            losses = V.check_tensor("loss_fn's result", loss_fn(logits, target, reduction="none"))
            if losses.numel() != collapsed.numel():
                raise ValueError(
                    f"loss_fn(logits, target, reduction='none') must return one loss per row "
                    f"({collapsed.numel()} values for logits of shape {tuple(logits.shape)} "
                    f"and dim={class_dim}), got shape {tuple(losses.shape)}"
                )
            keep = None
        zero = losses.detach().reshape(-1) == 0
        if keep is not None:
            zero = zero[keep.reshape(-1)]
        return SoftmaxCollapse(fraction, collapsed, _row_fraction(zero))


def _default_losses(
    logits: torch.Tensor, target: torch.Tensor, class_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row cross-entropy in ``dtype`` and the mask of rows that count."""
    index_shape = logits.shape[:class_dim] + logits.shape[class_dim + 1 :]
    if target.is_floating_point() and target.shape == index_shape:
        raise TypeError(
            f"target must hold class indices (an integer dtype) of shape {tuple(index_shape)} "
            f"or class probabilities of the logits' shape {tuple(logits.shape)}, got "
            f"{target.dtype} of the class-index shape"
        )
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"target must have the logits' shape {tuple(logits.shape)} when it holds "
                f"class probabilities (a floating dtype), got shape {tuple(target.shape)}"
            )
        keep = None
    else:
        target = V.check_class_target(target, logits, class_dim, IGNORE_INDEX)
        keep = target != IGNORE_INDEX
    x = logits.detach().to(dtype)
    if x.shape[class_dim] == 0 or x.numel() == 0:
        losses = torch.zeros(
            x.shape[:class_dim] + x.shape[class_dim + 1 :], dtype=dtype, device=x.device
        )
        return losses, keep
    if x.ndim > 1:
        x = x.movedim(class_dim, 1)
        tgt = target.movedim(class_dim, 1) if target.is_floating_point() else target
    else:
        tgt = target
    if tgt.is_floating_point():
        # -sum_k t_k log p_k with 0 * log p_k = 0 (a masked class of probability 0 adds
        # nothing; F.cross_entropy would give 0 * -inf = NaN there)
        tgt = tgt.to(dtype)
        log_p = torch.log_softmax(x, dim=1 if x.ndim > 1 else 0)
        terms = torch.where(tgt != 0, tgt * log_p, torch.zeros((), dtype=dtype, device=x.device))
        return -terms.sum(dim=1 if x.ndim > 1 else 0), keep
    losses = F.cross_entropy(x, tgt, reduction="none", ignore_index=IGNORE_INDEX)
    return losses, keep
