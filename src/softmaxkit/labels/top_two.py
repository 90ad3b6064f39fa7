"""Top-two answers and confusion probability from multi-choice crowd annotations.

Jeong & Chung, "Recovering Top-Two Answers and Confusion Probability in Multi-Choice
Crowdsourcing", ICML 2023, arXiv:2301.00006. Official code: Hyeonsu-Jeong/TopTwo
(MATLAB; ``helper_functions/run_TopTwo1.m`` is the first stage, ``run_TopTwo2.m`` the
second, ``functions/Generate_TopTwo_Dataset.m`` the model).

Model. Item ``j`` has a ground truth :math:`g_j` and a most confusing answer
:math:`h_j \\ne g_j`, and a confusion parameter :math:`q_j \\in (1/2, 1]`; annotator
``i`` has a reliability :math:`p_i \\in [0, 1]`. Each annotation is observed with
probability ``s`` and then equals :math:`g_j` with probability
:math:`p_i q_j + (1 - p_i)/K`, :math:`h_j` with probability
:math:`p_i (1 - q_j) + (1 - p_i)/K`, and any other class with probability
:math:`(1 - p_i)/K` (a reliable annotator picks between the top two, a spammer guesses
uniformly).

Provenance. Only the paper's abstract and introduction could be read here; its
algorithm boxes could not. The algorithm below is transcribed from the authors'
official code (which is the reference for the paper's experiments), with one change:
the code's estimate of :math:`q_j` reads the ground truth :math:`g_j` of the
simulation (an evaluation shortcut), here the first-stage estimate :math:`\\hat g_j`
is used, as an estimator must. Whether the paper's Algorithm 1 also splits samples
(as its analysis may need) could not be verified; the official code does not.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from softmaxkit import _validation as V
from softmaxkit.labels._votes import votes

__all__ = ["TopTwoResult", "top_two_answers", "top_two_soft_labels"]

# Clipping ranges of the official code (run_TopTwo1.m).
P_RANGE = (0.001, 0.999)
Q_RANGE = (0.501, 0.999)


class TopTwoResult(NamedTuple):
    """Result of :func:`top_two_answers` (an immutable named tuple).

    Attributes:
        top1: ``(items,)`` int64, the estimated ground truth :math:`\\hat g_j`.
        top2: ``(items,)`` int64, the estimated most confusing answer :math:`\\hat h_j`.
        confusion: ``(items,)`` float, :math:`\\hat q_j` in ``[0.501, 0.999]``: the
            probability that a reliable annotator picks ``top1`` rather than ``top2``
            (``1 - q`` is the probability of the confusing answer). Items without any
            annotation get 0.5 (no evidence).
        reliability: ``(annotators,)`` float, :math:`\\hat p_i` in ``[0.001, 0.999]``:
            the probability that annotator ``i`` answers from the top two rather
            than guessing.
    """

    top1: torch.Tensor
    top2: torch.Tensor
    confusion: torch.Tensor
    reliability: torch.Tensor


def _known(name: str, value: object, size: tuple[int, str], *, open_: bool) -> torch.Tensor:
    """A given ``(n,)`` parameter, one per ``what`` for ``size = (n, what)``, in ``[0, 1]``
    (``(0, 1)`` when ``open_``)."""
    n, what = size
    V.check_floating(name, value)
    assert isinstance(value, torch.Tensor)
    if value.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) (one per {what}), got {tuple(value.shape)}"
        )
    return V.check_tensor_values(name, value, low=0.0, high=1.0, low_open=open_, high_open=open_)


def top_two_answers(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    missing: int = -1,
    reliability: torch.Tensor | None = None,
    confusion: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> TopTwoResult:
    r"""Two-stage inference of the top-two answers, confusion and reliabilities.

    Stage 1 (spectral initial estimate; ``run_TopTwo1.m``). With ``s`` the observed
    fraction of the (annotators x items) matrix ``Y``, for ``k = 1..K-1`` build
    :math:`B^{(k)}_{ij} = \pm 1` (``-1`` when class :math:`Y_{ij} < k`, ``+1``
    otherwise, 0 when missing) minus :math:`s (K - 2k)/K`, so that
    :math:`\mathbb E B^{(k)} = s\, p\, v^{(k)\top}` is rank one. Average the leading left
    singular vectors (sign: positive sum), clip to ``[0, 1]``: :math:`u \approx p/\|p\|`.
    Then :math:`w^{(k)} = B^{(k)\top} u / (2s)` (with :math:`w^{(0)} = w^{(K)} = 0`) and
    :math:`\Delta_{jc} = w^{(c+1)}_j - w^{(c)}_j \approx \|p\| (1/K - q_j [c = g_j] -
    (1 - q_j)[c = h_j])`; :math:`(\hat g_j, \hat h_j)` are the two smallest entries of
    :math:`\Delta_j` (ties to the smaller class). Reliabilities:
    :math:`\hat p_i = (\text{fraction of } i\text{'s answers in } \{\hat g, \hat h\} -
    2/K) / (1 - 2/K)` clipped to ``[0.001, 0.999]``; confusion:
    :math:`\hat q_j = 1/K - \Delta_{j \hat g_j} / \|\hat p\|` clipped to
    ``[0.501, 0.999]``.

    Stage 2 (plug-in maximum likelihood; ``run_TopTwo2.m``):

    .. math::
        (\hat g_j, \hat h_j) = \arg\max_{a \ne b} \sum_{i: Y_{ij} = a}
        \log\Big(\frac{K \hat q_j \hat p_i}{1 - \hat p_i} + 1\Big) +
        \sum_{i: Y_{ij} = b} \log\Big(\frac{K (1 - \hat q_j) \hat p_i}{1 - \hat p_i} + 1\Big),

    ties to the first pair in row-major order. The returned ``confusion`` and
    ``reliability`` are the stage-1 estimates (the official code re-estimates neither).
    Passing ``reliability`` and ``confusion`` skips stage 1's estimates of them (the
    paper's "oracle" when they are the true values); stage 2 then uses them.

    Args:
        annotations: ``(items, annotators)`` integer class indices, ``missing`` where absent.
        num_classes: ``K >= 3`` (with two classes every answer is among the top two and
            ``p`` is not identifiable).
        missing: the missing marker (outside ``[0, K)``).
        reliability: optional known ``(annotators,)`` reliabilities in ``(0, 1)``.
        confusion: optional known ``(items,)`` confusion values in ``[0, 1]``.
        dtype: floating dtype of ``confusion`` and ``reliability`` (computed in float32
            for half types, float64 for float64).

    Returns:
        A :class:`TopTwoResult`.

    Example:
        >>> a = torch.tensor([[0, 0, 1, 0, 1], [2, 2, 2, 1, 1], [1, 1, 0, 1, 0], [2, 0, 2, 2, 0]])
        >>> r = top_two_answers(a, 3)
        >>> r.top1, r.top2
        (tensor([0, 2, 1, 2]), tensor([1, 1, 0, 0]))
    """
    onehot, observed, work, safe = votes(annotations, num_classes, missing, dtype, min_classes=3)
    if annotations.numel() == 0 or not bool(observed.any()):
        raise ValueError(
            "annotations must hold at least one observed annotation, got none "
            f"(shape {tuple(annotations.shape)})"
        )
    n_items, n_annotators = annotations.shape
    k = num_classes
    device = annotations.device
    obs = observed.to(work)
    s = obs.mean()

    # ---- stage 1: spectral estimate ------------------------------------------------
    thresholds = torch.arange(1, k, device=device)  # k = 1..K-1
    below = safe.unsqueeze(0) < thresholds.view(-1, 1, 1)  # (K-1, N, M)
    signs = torch.where(below, -1.0, 1.0).to(work) * obs
    shift = s * (k - 2 * thresholds.to(work)) / k
    b = (signs - shift.view(-1, 1, 1)).transpose(1, 2)  # (K-1, M annotators, N items)
    u_all = torch.linalg.svd(b, full_matrices=False)[0][..., 0]  # (K-1, M)
    u_all = torch.where(u_all.sum(-1, keepdim=True) > 0, u_all, -u_all)
    u = u_all.mean(0).clamp(0.0, 1.0)
    w_inner = torch.einsum("kmn,m->nk", b, u) / (2 * s)  # (N, K-1)
    zeros = torch.zeros(n_items, 1, dtype=work, device=device)
    w = torch.cat([zeros, w_inner, zeros], dim=1)  # (N, K+1)
    delta = w[:, 1:] - w[:, :-1]  # (N, K)
    order = torch.sort(delta, dim=-1, stable=True).indices
    g1, h1 = order[:, 0], order[:, 1]

    if reliability is None:
        in_top = onehot.gather(2, g1.view(-1, 1, 1).expand(-1, n_annotators, 1)).squeeze(-1)
        in_top = in_top + onehot.gather(2, h1.view(-1, 1, 1).expand(-1, n_annotators, 1)).squeeze(
            -1
        )
        degree = obs.sum(0)
        frac = in_top.sum(0) / degree.clamp_min(1.0)
        p = ((frac - 2.0 / k) / (1.0 - 2.0 / k)).clamp(*P_RANGE)
        p = torch.where(degree > 0, p, torch.full_like(p, P_RANGE[0]))
    else:
        p = _known("reliability", reliability, (n_annotators, "annotator"), open_=True)
        p = p.to(device=device, dtype=work)
    if confusion is None:
        norm_p = torch.linalg.vector_norm(p)
        q = (1.0 / k - delta.gather(1, g1.unsqueeze(1)).squeeze(1) / norm_p).clamp(*Q_RANGE)
    else:
        q = _known("confusion", confusion, (n_items, "item"), open_=False)
        q = q.to(device=device, dtype=work)

    # ---- stage 2: plug-in MLE ------------------------------------------------------
    odds = k * p / (1.0 - p)  # (M,)
    coef_g = torch.log1p(q.unsqueeze(1) * odds.unsqueeze(0))  # (N, M)
    coef_h = torch.log1p((1.0 - q).unsqueeze(1) * odds.unsqueeze(0))
    sum_g = torch.einsum("nmc,nm->nc", onehot, coef_g)
    sum_h = torch.einsum("nmc,nm->nc", onehot, coef_h)
    pair = sum_g.unsqueeze(2) + sum_h.unsqueeze(1)  # (N, a, b)
    eye = torch.eye(k, dtype=torch.bool, device=device)
    pair = pair.masked_fill(eye, -math.inf)
    best = pair.flatten(1).argmax(dim=1)
    top1, top2 = best // k, best % k

    annotated = observed.any(dim=1)
    q_out = torch.where(annotated, q, torch.full_like(q, 0.5)) if confusion is None else q
    return TopTwoResult(top1, top2, q_out.to(dtype), p.to(dtype))


def top_two_soft_labels(result: TopTwoResult, num_classes: int) -> torch.Tensor:
    r"""The top-two soft label of each item: ``confusion`` on ``top1``, the rest on ``top2``.

    :math:`y_{j} = \hat q_j e_{\hat g_j} + (1 - \hat q_j) e_{\hat h_j}`, the answer
    distribution of a reliable annotator under the top-two model (Jeong & Chung 2023,
    arXiv:2301.00006, who train networks on "top-two soft labels"; their exact training
    targets could not be checked here).

    Args:
        result: a :class:`TopTwoResult`; its fields are checked: ``confusion`` a floating
            ``(items,)`` tensor in [0, 1], ``top1`` and ``top2`` class indices of any
            integer dtype and the same shape, in ``[0, K)`` (``TypeError`` for floating or
            bool indices, ``ValueError`` naming the field otherwise; values are read on CPU
            tensors outside ``torch.compile``). ``reliability`` is not read.
        num_classes: number of classes ``K`` (more than the largest index in ``result``).

    Returns:
        ``(items, K)`` soft labels in ``result.confusion``'s dtype.

    Example:
        >>> r = TopTwoResult(torch.tensor([2]), torch.tensor([0]), torch.tensor([0.75]),
        ...                  torch.tensor([0.9]))
        >>> top_two_soft_labels(r, 3)
        tensor([[0.2500, 0.0000, 0.7500]])
    """
    if not isinstance(result, TopTwoResult):
        raise TypeError(f"result must be a TopTwoResult, got {type(result).__name__}")
    V.check_int("num_classes", num_classes, low=2)
    q, top1, top2 = _check_result(result, num_classes)
    n = q.shape[0]
    out = torch.zeros(n, num_classes, dtype=q.dtype, device=q.device)
    out.scatter_(1, top1.view(-1, 1), q.view(-1, 1))
    out.scatter_add_(1, top2.view(-1, 1), (1 - q).view(-1, 1))
    return out


def _check_result(
    result: TopTwoResult, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fields :func:`top_two_soft_labels` reads: ``confusion`` floating ``(n,)`` in
    [0, 1]; ``top1`` and ``top2`` class indices of any integer dtype (returned as int64),
    shape ``(n,)``, in ``[0, num_classes)``; values read on CPU outside ``torch.compile``."""
    q = V.check_floating("result.confusion", result.confusion)
    if q.ndim != 1:
        raise ValueError(f"result.confusion must have shape (items,), got shape {tuple(q.shape)}")
    V.check_tensor_values("result.confusion", q, low=0.0, high=1.0)
    picked = []
    for field in ("top1", "top2"):
        name = f"result.{field}"
        index = V.check_index_dtype(name, getattr(result, field))
        if index.shape != q.shape:
            raise ValueError(
                f"{name} must have result.confusion's shape {tuple(q.shape)} (one class per "
                f"item), got shape {tuple(index.shape)}"
            )
        if index.device != q.device:
            raise ValueError(
                f"{name} must be on result.confusion's device {q.device}, got {index.device}"
            )
        if V.readable(index):
            lo, hi = (int(v) for v in torch.aminmax(index))
            if lo < 0:
                raise ValueError(f"{name} must hold class indices >= 0, got {lo}")
            if hi >= num_classes:
                raise ValueError(
                    f"num_classes must exceed the largest class index in {name} ({hi}), "
                    f"got num_classes={num_classes}"
                )
        picked.append(index)
    return q, picked[0], picked[1]
