"""Logit-based OOD scores: maximum softmax probability, maximum logit and energy.

Sign convention (the whole of :mod:`softmaxkit.ood`): **a higher score means more
in-distribution**. pytorch-ood's detectors return *outlier* scores (higher = more OOD),
the negation of these.

Each score reduces the class axis ``dim`` of ``logits`` (any shape, any floating dtype;
float16/bfloat16 are computed in float32 and returned in the input dtype) and is a plain
differentiable torch expression. Infinite logits have a defined score: a row with ``m``
entries equal to ``+inf`` has MSP ``1/m`` and maximum logit and energy ``+inf``; a row of
only ``-inf`` (nothing kept) has MSP 0 and maximum logit and energy ``-inf``. MSP and
energy give such rows a zero gradient (never NaN); ``-inf`` entries of other rows get a
zero gradient from every score.
"""

from __future__ import annotations

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import upcast

__all__ = ["msp_score", "max_logit_score", "energy_score"]


def _prepare(logits: object, dim: object) -> tuple[torch.Tensor, int]:
    logits = V.check_floating("logits", logits)
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis), got 0-d")
    d = V.check_dim("dim", dim, logits.ndim)
    if logits.shape[d] == 0:
        raise ValueError(
            f"logits must have at least one class along dim={dim}, got shape {tuple(logits.shape)}"
        )
    V.check_no_nan("logits", logits)
    x = upcast(logits)
    return x, d


def _split_infinite(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The +inf count per row, the all-(-inf) rows, and ``x`` with those rows set to 0.

    Filling the special rows with a constant keeps their (unused) finite-path values and
    gradients finite, so ``torch.where`` does not leak a NaN gradient.
    """
    n_posinf = (x == float("inf")).sum(d)
    all_neginf = (x == float("-inf")).all(d)
    special = ((n_posinf > 0) | all_neginf).unsqueeze(d)
    return n_posinf, all_neginf, x.masked_fill(special, 0.0)


def msp_score(logits: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Maximum softmax probability, ``max_k softmax(z)_k = 1 / sum_k exp(z_k - max_j z_j)``.

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks", ICLR 2017, arXiv:1610.02136. Higher = more in-distribution.

    Args:
        logits: floating tensor of any shape with classes along ``dim``.
        dim: the class axis (default -1).

    Returns:
        The score, ``logits``' shape without ``dim``, in ``logits``' dtype, in ``[0, 1]``.

    Example:
        >>> import torch
        >>> msp_score(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        tensor([0.7870, 0.3333])
    """
    x, d = _prepare(logits, dim)
    n_posinf, all_neginf, safe = _split_infinite(x, d)
    top = safe.amax(d, keepdim=True)  # max_j z_j (part of the function, not detached)
    score = 1.0 / torch.exp(safe - top).sum(d)  # the sum is >= 1: no cancellation
    score = torch.where(n_posinf > 0, 1.0 / n_posinf.clamp(min=1).to(score.dtype), score)
    score = torch.where(all_neginf, torch.zeros_like(score), score)
    return score.to(logits.dtype)


def max_logit_score(logits: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Maximum logit, ``max_k z_k``.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
    ICML 2022, arXiv:1911.11132. Higher = more in-distribution. The gradient is shared
    equally among tied maxima (``torch.amax``).

    Args:
        logits: floating tensor of any shape with classes along ``dim``.
        dim: the class axis (default -1).

    Returns:
        The score, ``logits``' shape without ``dim``, in ``logits``' dtype.

    Example:
        >>> import torch
        >>> max_logit_score(torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]]))
        tensor([2., 3.])
    """
    x, d = _prepare(logits, dim)
    return x.amax(d).to(logits.dtype)


def energy_score(logits: torch.Tensor, temperature: float = 1.0, *, dim: int = -1) -> torch.Tensor:
    """Negative free energy, ``-E(x; f) = T * logsumexp_k(z_k / T)``.

    Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020,
    arXiv:2010.03759 (E(x; f) = -T log sum_k exp(f_k(x) / T); the paper scores with -E
    and T = 1). Higher = more in-distribution.

    For T < 1 the row maximum m is taken out first, ``m + T logsumexp((z - m) / T)``,
    so that ``z / T`` cannot overflow where the score is finite.

    Args:
        logits: floating tensor of any shape with classes along ``dim``.
        temperature: T > 0 (default 1.0, the paper's).
        dim: the class axis (default -1).

    Returns:
        The score, ``logits``' shape without ``dim``, in ``logits``' dtype.

    Example:
        >>> import torch
        >>> energy_score(torch.tensor([[0.0, 0.0], [10.0, -10.0]]))
        tensor([ 0.6931, 10.0000])
    """
    t = V.check_number("temperature", temperature, low=0.0, low_open=True)
    x, d = _prepare(logits, dim)
    n_posinf, all_neginf, safe = _split_infinite(x, d)
    if t >= 1.0:
        score = torch.logsumexp(safe / t, d) * t
    else:  # z / T could overflow: m + T logsumexp((z - m) / T), m the (detached) row max
        top = safe.detach().amax(d, keepdim=True)
        score = torch.logsumexp((safe - top) / t, d) * t + top.squeeze(d)
    score = torch.where(n_posinf > 0, torch.full_like(score, float("inf")), score)
    score = torch.where(all_neginf, torch.full_like(score, float("-inf")), score)
    return score.to(logits.dtype)
