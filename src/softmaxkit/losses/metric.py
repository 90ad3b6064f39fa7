"""Normalized softmax (cosine-classifier) loss: Zhai & Wu 2019, NormFace (Wang et al. 2017)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops import dtensor
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, compute_dtype
from softmaxkit._ops.row_loss import LossModule, class_loss
from softmaxkit.losses.comp_sum import _CompSum

#: Zhai & Wu's temperature; the official code's ``NormSoftmaxLoss`` default (scale 1/0.05 = 20).
DEFAULT_TEMPERATURE = 0.05


def _unit_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.normalize(x, dim=1, eps=eps)`` without overflow: each row is divided by its largest
    magnitude first (a constant for autograd; the map is invariant to it above ``eps``), so
    float32 rows of norm beyond 1.8e19 stay finite."""
    scale = x.detach().abs().amax(1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = x / scale
    return y / torch.maximum(torch.linalg.vector_norm(y, dim=1, keepdim=True), eps / scale)


def _check_scales(temperature: float, eps: float) -> tuple[float, float]:
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    return temperature, v.check_number("eps", eps, low=0.0, low_open=True)


def _check_pair(embeddings: torch.Tensor, class_weights: torch.Tensor) -> None:
    v.check_floating("embeddings", embeddings)
    v.check_floating("class_weights", class_weights)
    if embeddings.ndim < 2:
        raise ValueError(
            f"embeddings must have shape (N, D) or (N, D, d1, ...), "
            f"got shape {tuple(embeddings.shape)}"
        )
    if class_weights.ndim != 2:
        raise ValueError(
            f"class_weights must have shape (C, D), got shape {tuple(class_weights.shape)}"
        )
    if embeddings.shape[1] == 0:
        raise ValueError("embeddings must have a nonzero feature dimension D (dim 1), got 0")
    if class_weights.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"class_weights must have the embeddings' dimension D={embeddings.shape[1]} "
            f"(embeddings dim 1) as its dim 1, got shape {tuple(class_weights.shape)}"
        )


@backend_op
def cosine_logits(
    embeddings: torch.Tensor,
    class_weights: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""The normalized-softmax logits :math:`\cos(x, w_c) / \sigma`, classes on dim 1.

    .. math:: z_c = \frac{1}{\sigma}\,
              \frac{x}{\max(\lVert x \rVert, \epsilon)} \cdot
              \frac{w_c}{\max(\lVert w_c \rVert, \epsilon)}

    (``torch.nn.functional.normalize``'s map with an explicit ``eps``, so a zero vector
    gives zero logits and a finite gradient, never NaN; each row is first divided by its
    largest entry, so huge rows do not overflow the norm). Half-precision inputs are
    normalised and multiplied in float32 and the logits come back in float32 (an ``eps``
    of 1e-12 is 0 in float16).

    Args:
        embeddings: (N, D) or (N, D, d1, ...) with the feature dimension on dim 1.
        class_weights: (C, D) class proxies (no bias).
        temperature: :math:`\sigma > 0`; NormFace's scale is :math:`s = 1 / \sigma`.
        eps: the norm floor of the normalisation.

    Returns:
        (N, C) or (N, C, d1, ...) logits in the promoted dtype of the inputs (float32
        for half inputs).

    A DTensor ``class_weights`` (an FSDP2-sharded parameter used outside its module's
    forward) is all-gathered, its gradient averaged over the mesh as FSDP reduces it (see
    :func:`softmaxkit.heads.linear_cross_entropy`); a DTensor ``embeddings`` raises a
    TypeError naming the fix.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import cosine_logits
        >>> x, w = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> cosine_logits(x, w, temperature=0.5)
        tensor([[1.2000, 1.6000]])
    """
    dtensor.refuse("embeddings", embeddings)  # FSDP2: a sharded weight is all-gathered
    class_weights = dtensor.full_weight("class_weights", class_weights)
    _check_pair(embeddings, class_weights)
    temperature, eps = _check_scales(temperature, eps)
    dtype = compute_dtype(embeddings, class_weights)
    x2 = as_rows(embeddings, 1).to(dtype)
    w_hat = _unit_rows(class_weights.to(dtype), eps)
    # 1 / sigma folded into the (rows, D) side: no N x C temporary besides the logits
    z2 = (_unit_rows(x2, eps) * (1.0 / temperature)) @ w_hat.t()
    if embeddings.ndim == 2:
        return z2
    rows_shape = embeddings.shape[:1] + embeddings.shape[2:] + class_weights.shape[:1]
    return z2.view(rows_shape).movedim(-1, 1)


@backend_op
def normalized_softmax_loss(
    embeddings: torch.Tensor,
    class_weights: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    eps: float = 1e-12,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Normalized softmax loss: cross-entropy over cosine similarities to class proxies.

    .. math:: \ell(x, y) = -\log \frac{\exp(\hat x \cdot \hat w_y / \sigma)}
              {\sum_c \exp(\hat x \cdot \hat w_c / \sigma)},
              \qquad \hat x = \frac{x}{\lVert x \rVert},\ \hat w_c = \frac{w_c}{\lVert w_c \rVert}

    with no bias. The logits are :func:`cosine_logits`; the cross-entropy over them runs
    on the shared row engine with its analytic gradient
    :math:`\partial \ell / \partial z = \mathrm{softmax}(z) - e_y`, so the N x C logits
    are the only N x C tensor kept for backward (``F.cross_entropy`` also keeps its
    log-softmax). Gradients reach both ``embeddings`` and ``class_weights`` through the
    normalisation, whose Jacobian is :math:`(I - \hat x \hat x^\top) / \lVert x \rVert`;
    a vector of norm below ``eps`` is mapped to :math:`x / \epsilon` (a zero vector
    gives zero logits and a finite gradient, of order :math:`1/\epsilon`). The loss is
    invariant to positive rescaling of every embedding and every class proxy.

    Papers: A. Zhai, H.-Y. Wu, "Classification is a Strong Baseline for Deep Metric
    Learning", BMVC 2019, arXiv:1811.12649 (fixed temperature :math:`\sigma = 0.05`, the
    default of ``NormSoftmaxLoss`` in the official code, azgo14/classification_metric_learning,
    ``metric_learning/modules/losses.py``; the reproduction commands do not override it).
    F. Wang, X. Xiang, J. Cheng, A. L. Yuille, "NormFace: L2 Hypersphere Embedding for Face
    Verification", ACM MM 2017, arXiv:1704.06369, write the same loss with a scale
    :math:`s = 1/\sigma` (learned, or fixed around 16-30+).

    Zhai & Wu also put a LayerNorm without affine parameters before the normalisation and
    use class-balanced sampling; in the official code the LayerNorm sits in the
    embedding network (``featurizer.py``), not in the loss, so it is a model choice and
    not built in here: put ``nn.LayerNorm(D, elementwise_affine=False)`` at the end of
    your embedding network. At test time they use :math:`\hat x` as the embedding.

    Args:
        embeddings: (N, D), or (N, D, d1, ...) with the feature dimension on dim 1 (one
            embedding per position, like ``cross_entropy``'s layout).
        class_weights: (C, D) class proxies.
        target: class indices of shape (N,) or (N, d1, ...), or class probabilities of
            the logits' shape (N, C) or (N, C, d1, ...) (treated as constants).
        temperature: :math:`\sigma > 0` (Zhai & Wu: 0.05).
        eps: norm floor of the normalisation (that of ``F.normalize``).
        reduction: "mean" (over non-ignored targets, or over samples for probability
            targets; 0 when all are ignored), "sum" or "none".
        ignore_index: target value that contributes nothing.
        label_smoothing: in [0, 1]; the target becomes ``(1 - eps) e_y + eps / C``.

    Returns:
        The loss in the promoted dtype of ``embeddings`` and ``class_weights`` (computed
        in float32 for half inputs); per-sample shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import normalized_softmax_loss
        >>> x = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> normalized_softmax_loss(x, w, torch.tensor([1, 0]), temperature=0.5)
        tensor(0.3200)
    """
    v.check_reduction(reduction)
    logits = cosine_logits(embeddings, class_weights, temperature=temperature, eps=eps)
    return class_loss(
        _CompSum(1.0),  # tau = 1: cross-entropy, blocked with its analytic gradient
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        out_dtype=torch.promote_types(embeddings.dtype, class_weights.dtype),
    )


class NormalizedSoftmaxLoss(LossModule):
    """Module twin of :func:`normalized_softmax_loss` that owns the class proxies.

    ``weight`` is a (num_classes, embedding_dim) Parameter initialised as in the
    official code (azgo14/classification_metric_learning), which copies ``nn.Linear``'s
    PyTorch 1.0 initialisation: uniform on :math:`[-1/\\sqrt{D}, 1/\\sqrt{D}]`. Only the
    directions of the rows matter to the loss.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import NormalizedSoftmaxLoss
        >>> _ = torch.manual_seed(0)
        >>> head = NormalizedSoftmaxLoss(8, 3)
        >>> x = torch.randn(4, 8)
        >>> head.logits(x).shape
        torch.Size([4, 3])
        >>> head(x, torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        eps: float = 1e-12,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.embedding_dim = v.check_int("embedding_dim", embedding_dim, low=1)
        self.num_classes = v.check_int("num_classes", num_classes, low=1)
        temperature, eps = _check_scales(temperature, eps)
        self.temperature, self.eps = float(temperature), float(eps)
        if dtype is not None:
            v.check_floating_dtype("dtype", dtype)
        self.weight = nn.Parameter(
            torch.empty(num_classes, embedding_dim, device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.embedding_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The cosine logits :math:`\\cos(x, w_c) / \\sigma` of ``embeddings`` (N, D, ...)."""
        return cosine_logits(embeddings, self.weight, temperature=self.temperature, eps=self.eps)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "eps": self.eps,
        }

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return normalized_softmax_loss(
            embeddings,
            self.weight,
            target,
            temperature=self.temperature,
            eps=self.eps,
            **self.options(),
        )
