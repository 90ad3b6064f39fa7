r"""Sparse-CBM: a concept bottleneck layer trained with a Gumbel-softmax loss, and the
training-free Concept Matrix Search.

Paper: A. Semenov, V. Ivanov, A. Beznosikov, A. Gasnikov, "Sparse Concept Bottleneck Models:
Gumbel Tricks in Contrastive Learning", 2024, arXiv:2404.03323. Official code:
Andron00e/SparseCBM (``bottlenecks/cbm.py`` for the model and the losses,
``bottlenecks/setup.py`` for Concept Matrix Search).

Model (``BaseCBModel``): a frozen CLIP-like backbone gives image-to-concept logits
:math:`L_{img} \in \mathbb R^{B \times C}` (``logits_per_image``, CLIP's logit scale
included); the concept bottleneck layer (CBL) is ``Linear(C, C, bias=False)`` and the head
``Linear(C, K, bias=False)``; the model returns ``(cbl_out, head(cbl_out))``. The training
loss is ``F.cross_entropy(class_logits, y)`` plus the CBL loss of :meth:`concept_loss`.
In the official trainer the CBL loss is not divided by the gradient-accumulation factor
(only the cross-entropy is); the loss here is pure, so scale it in your loop if you
accumulate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit.functional import gumbel_softmax
from softmaxkit.losses import cosine_logits

__all__ = ["ConceptBottleneck", "concept_matrix_search"]

LOSSES = ("gumbel", "contrastive", "l1")
#: ``criterion_l1``'s default in the official trainer
DEFAULT_L1_LAMBDA = 1e-3


class ConceptBottleneck(nn.Module):
    r"""The Sparse-CBM concept bottleneck: ``cbl = Linear(C, C)``, ``head = Linear(C, K)``
    (no biases), and the CBL loss chosen by ``loss``.

    With :math:`L = \mathrm{cbl}(L_{img}) \in \mathbb R^{B \times C}` (official
    ``criterion_*`` in ``bottlenecks/cbm.py``):

    - ``"gumbel"`` (Sparse-CBM):
      :math:`\tfrac12\big(\overline{-\log \mathrm{GS}_\tau(L, \text{dim}=0)} +
      \overline{-\log \mathrm{GS}_\tau(L, \text{dim}=1)}\big)`, the bar a mean over **all**
      B x C entries, :math:`\mathrm{GS}_\tau` a Gumbel-softmax sample
      (:func:`softmaxkit.functional.gumbel_softmax`, soft, :math:`\tau = 1` by default);
    - ``"contrastive"`` (CLIP-style):
      :math:`\tfrac12\big(-\overline{\mathrm{diag}\,\log\mathrm{softmax}(L, 0)}
      - \overline{\mathrm{diag}\,\log\mathrm{softmax}(L, 1)}\big)`, the diagonal's
      :math:`\min(B, C)` entries (as ``torch.diag`` in the official code: it pairs row i
      with concept i);
    - ``"l1"``: :math:`\lambda \lVert W_{cbl} \rVert_1 / C`, :math:`\lambda = 10^{-3}`
      (the trainer divides ``criterion_l1`` by the number of concepts).

    Deliberate differences: the official ``hard`` Gumbel option is not offered (its one-hot
    gives :math:`\log 0 = -\infty`); the soft sample is clamped below at the dtype's
    smallest normal number before the log, so an underflowed probability gives a large
    finite loss instead of ``inf``. Half inputs are computed in float32 and the loss is
    float32.

    Args:
        num_concepts: C.
        num_classes: K.
        loss: ``"gumbel"`` | ``"contrastive"`` | ``"l1"``.
        tau: the Gumbel-softmax temperature (> 0), used by ``"gumbel"``.
        l1_lambda: :math:`\lambda` of ``"l1"`` (>= 0).

    Shape: ``forward(concept_logits)``: (B, C) -> ``(cbl_out (B, C), class_logits (B, K))``.

    Example:
        >>> import torch
        >>> from softmaxkit.heads import ConceptBottleneck
        >>> cbm = ConceptBottleneck(6, 3, loss="contrastive")
        >>> cbl_out, logits = cbm(torch.randn(4, 6))
        >>> y = torch.tensor([0, 1, 2, 0])
        >>> total = torch.nn.functional.cross_entropy(logits, y) + cbm.concept_loss(cbl_out)
        >>> total.shape
        torch.Size([])
    """

    def __init__(
        self,
        num_concepts: int,
        num_classes: int,
        *,
        loss: str = "gumbel",
        tau: float = 1.0,
        l1_lambda: float = DEFAULT_L1_LAMBDA,
    ) -> None:
        super().__init__()
        self.num_concepts = v.check_int("num_concepts", num_concepts, low=1)
        self.num_classes = v.check_int("num_classes", num_classes, low=1)
        self.loss = v.check_choice("loss", loss, LOSSES)
        self.tau = v.check_number("tau", tau, low=0.0, low_open=True)
        self.l1_lambda = v.check_number("l1_lambda", l1_lambda, low=0.0)
        self.cbl = nn.Linear(self.num_concepts, self.num_concepts, bias=False)
        self.head = nn.Linear(self.num_concepts, self.num_classes, bias=False)

    def forward(self, concept_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = v.check_floating("concept_logits", concept_logits)
        if x.ndim == 0 or x.shape[-1] != self.num_concepts:
            raise ValueError(
                f"concept_logits must have last dimension {self.num_concepts}, "
                f"got shape {tuple(x.shape)}"
            )
        cbl_out = self.cbl(x)
        return cbl_out, self.head(cbl_out)

    def concept_loss(
        self, cbl_out: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The CBL loss chosen at construction (see the class docstring) of the (B, C)
        ``cbl_out``; ``generator`` seeds the Gumbel noise. An empty batch gives 0."""
        if self.loss == "l1":
            w = self.cbl.weight
            return self.l1_lambda * w.abs().sum() / self.num_concepts
        x = v.check_floating("cbl_out", cbl_out)
        if x.ndim != 2 or x.shape[1] != self.num_concepts:
            raise ValueError(
                f"cbl_out must have shape (B, {self.num_concepts}), got {tuple(x.shape)}"
            )
        dtype = compute_dtype(x)
        x = x.to(dtype)
        if x.shape[0] == 0:
            return x.sum()
        if self.loss == "contrastive":
            return 0.5 * (
                -F.log_softmax(x, dim=0).diagonal().mean()
                - F.log_softmax(x, dim=1).diagonal().mean()
            )
        tiny = torch.finfo(dtype).tiny
        total = x.new_zeros(())
        for dim in (0, 1):
            p = gumbel_softmax(x, self.tau, dim=dim, generator=generator)
            total = total - p.clamp_min(tiny).log().mean()
        return 0.5 * total

    def extra_repr(self) -> str:
        return (
            f"num_concepts={self.num_concepts}, num_classes={self.num_classes}, "
            f"loss={self.loss!r}, tau={self.tau:g}"
        )


def _check_features(name: str, value: torch.Tensor, dim: int | None) -> torch.Tensor:
    value = v.check_floating(name, value)
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(value.shape)}")
    if dim is not None and value.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} features, got {value.shape[1]}")
    return value


def concept_matrix_search(
    image_features: torch.Tensor,
    concept_features: torch.Tensor,
    class_features: torch.Tensor,
    *,
    mode: str = "similarity",
    normalize: str = "row",
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""Concept Matrix Search (training-free classification through concepts): class
    scores of each image, predict with ``argmax(-1)``.

    .. math:: V = \mathcal N\big(\cos(\text{image}_i, \text{concept}_c)\big) \in
              \mathbb R^{N \times C}, \qquad
              T = \mathcal N\big(\cos(\text{class}_k, \text{concept}_c)\big) \in
              \mathbb R^{K \times C}

    with :math:`\mathcal N` dividing each row by its sum plus ``eps``
    (``normalize="row"``, the packaged ``get_dot_prods_matrix``) or each column
    (``"column"``, the variant of the evaluation notebook). Scores (official
    ``bottlenecks/setup.py``):

    - ``mode="similarity"``: :math:`s_{ik} = \cos(V_i, T_k)` (the "similarity score");
    - ``mode="max"``: :math:`s_{ik} = T_{k, c^*_i}` with :math:`c^*_i = \arg\max_c V_{ic}`
      (the "max score": the class that holds the image's top concept most strongly).

    Paper: A. Semenov et al., "Sparse Concept Bottleneck Models: Gumbel Tricks in
    Contrastive Learning", 2024, arXiv:2404.03323. The official code loops over images and
    classes in Python and scores accuracies per class slice; this function returns the
    (N, K) score matrix in one batched computation. The cosine is
    :func:`softmaxkit.losses.cosine_logits` at temperature 1 with ``eps`` (the official code
    divides by the product of norms and gives NaN for a zero vector).

    Args:
        image_features: (N, D) image embeddings.
        concept_features: (C, D) concept text embeddings.
        class_features: (K, D) class-name text embeddings.
        mode: ``"similarity"`` | ``"max"``.
        normalize: ``"row"`` | ``"column"``.
        eps: added to the sums (and the norm floor of the cosine), > 0.

    Returns:
        (N, K) scores in the compute dtype (float32 for half inputs).

    Example:
        >>> import torch
        >>> from softmaxkit.heads import concept_matrix_search
        >>> concepts = torch.eye(3)
        >>> classes = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.1, 1.0]])
        >>> images = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.2, 0.8]])
        >>> concept_matrix_search(images, concepts, classes).argmax(-1)
        tensor([0, 1])
    """
    image_features = _check_features("image_features", image_features, None)
    d = image_features.shape[1]
    concept_features = _check_features("concept_features", concept_features, d)
    class_features = _check_features("class_features", class_features, d)
    mode = v.check_choice("mode", mode, ("similarity", "max"))
    normalize = v.check_choice("normalize", normalize, ("row", "column"))
    eps = v.check_number("eps", eps, low=0.0, low_open=True)
    dtype = compute_dtype(image_features, concept_features, class_features)
    axis = 1 if normalize == "row" else 0

    def matrix(a: torch.Tensor) -> torch.Tensor:
        m = cosine_logits(a.to(dtype), concept_features.to(dtype), temperature=1.0, eps=eps)
        return m / (m.sum(axis, keepdim=True) + eps)

    V, T = matrix(image_features), matrix(class_features)
    if mode == "similarity":
        return cosine_logits(V, T, temperature=1.0, eps=eps)
    if V.shape[1] == 0 or V.shape[0] == 0:
        return V.new_zeros(V.shape[0], T.shape[0])
    top = V.argmax(1)
    return T[:, top].T
