"""Probability -> possibility transforms (the link between a softmax and Π-NeSy's rules).

Baaj & Marquis, "Π-NeSy: A Possibilistic Neuro-Symbolic Approach", 2025,
arXiv:2504.07055. A neural network's softmax output ``p`` over the values of an
intermediate concept is turned into a possibility distribution ``π`` (``max π = 1``,
``π >= p``, the order of ``p`` kept) that feeds a possibilistic rule-based system.
The paper's official code (ibaaj/pi-nesy, ``possprob_transformations.py``) provides
two transforms and runs every experiment with both (``config.json``:
``"PiNeSy_probposs_transformation_methods": "1 2"``, i.e. Π-NeSy-1 and Π-NeSy-2):

1. the **antipignistic** transform ``π_i = Σ_j min(p_i, p_j)`` (method 1);
2. the transform "obeying the minimum specificity principle"
   ``π_i = Σ_{j: p_j <= p_i} p_j`` (method 2; in the possibility literature the
   order-preserving, most specific transform of Dubois, Prade & Sandri, 1993).

``utility_to_probability`` (Utility-Probability Duality, Bojun & Yuan, arXiv:2305.14859)
is **not** provided: the paper's utility -> probability equation could not be read
from the sources available when this module was written, and it is not implemented
from a guess.
"""

from __future__ import annotations

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import upcast

__all__ = ["POSSIBILITY_METHODS", "probability_to_possibility"]

#: the values ``probability_to_possibility`` accepts for ``method``.
POSSIBILITY_METHODS = ("antipignistic", "minimum_specificity", "max")


def _antipignistic(p: torch.Tensor) -> torch.Tensor:
    """π_i = Σ_j min(p_i, p_j) along the last axis.

    With p sorted decreasingly (s_1 >= ... >= s_n) the entry of rank r is
    (r - 1) s_r + Σ_{j >= r} s_j; equal values get equal results whatever their
    order in the sort, so ties need no special care.
    """
    s, order = torch.sort(p, dim=-1, descending=True)
    # suffix sums Σ_{j >= r} s_j, accumulated from the smallest entry (better rounding)
    tail = torch.flip(torch.cumsum(torch.flip(s, (-1,)), dim=-1), (-1,))
    rank = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)  # r - 1
    return torch.empty_like(p).scatter(-1, order, rank * s + tail)


def _minimum_specificity(p: torch.Tensor) -> torch.Tensor:
    """π_i = Σ_{j: p_j <= p_i} p_j along the last axis (ties: every equal p_j counts)."""
    p = p.contiguous()
    s, _ = torch.sort(p, dim=-1)
    s = s.contiguous()
    head = torch.cumsum(s, dim=-1)  # Σ of the r smallest entries
    # the last sorted position holding a value <= p_i (its whole tie group included)
    last = torch.searchsorted(s, p, right=True) - 1
    return head.gather(-1, last)


def _max_normalised(p: torch.Tensor) -> torch.Tensor:
    """π_i = p_i / max_j p_j; an all-zero row gives zeros (and zero gradient)."""
    top = p.amax(dim=-1, keepdim=True)
    alive = top > 0
    return torch.where(alive, p / torch.where(alive, top, torch.ones_like(top)), 0.0)


def probability_to_possibility(
    probs: torch.Tensor, *, method: str = "antipignistic", dim: int = -1
) -> torch.Tensor:
    r"""Turn probability distributions into possibility distributions, as Π-NeSy does.

    Baaj & Marquis, "Π-NeSy: A Possibilistic Neuro-Symbolic Approach", 2025,
    arXiv:2504.07055: the softmax output of the perception network is mapped to a
    possibility distribution before possibilistic inference. With ``p`` a row along
    ``dim``:

    * ``"antipignistic"`` (default; Π-NeSy's method 1):
      :math:`\pi_i = \sum_j \min(p_i, p_j)`. It is the possibility distribution whose
      pignistic probability is ``p`` (Dubois & Prade's transform). Equal ``p`` give
      equal ``π``.
    * ``"minimum_specificity"`` (Π-NeSy's method 2, named as in the official code):
      :math:`\pi_i = \sum_{j:\,p_j \le p_i} p_j`, the most specific order-preserving
      distribution consistent with ``p`` (Dubois, Prade & Sandri 1993). **Ties**: every
      ``p_j`` equal to ``p_i`` is included, so equal probabilities get equal
      possibilities. The official code sorts and sums only the entries *after* ``i``
      in the sort, so of tied entries only the first in sort order gets this value and
      the others get less (an order-dependent result); this function does not copy that.
    * ``"max"``: :math:`\pi_i = p_i / \max_j p_j` (simple max-normalisation; not one of
      Π-NeSy's transforms, provided for comparison).

    The default is method 1 because the paper runs both and neither is singled out in
    its code; the antipignistic transform is also continuous in ``p`` everywhere while
    ``"minimum_specificity"`` jumps where two probabilities cross.

    Properties (for rows summing to 1): ``max π = 1``; ``π >= p`` (consistency);
    ``p_i >= p_j`` implies ``π_i >= π_j``. ``"antipignistic" >= "minimum_specificity"``
    entrywise. The sums are not renormalised: a row summing to ``s`` gives
    ``max π = s`` for the two sum-based methods (the rows are not checked to sum to 1).

    Args:
        probs: floating tensor ``(..., C, ...)`` of probabilities in ``[0, 1]``, the
            classes on ``dim``. float16/bfloat16 are computed in float32 and returned in
            the input dtype.
        method: ``"antipignistic"`` | ``"minimum_specificity"`` | ``"max"``.
        dim: the class axis. Default ``-1``.

    Returns:
        Tensor of ``probs``' shape and dtype. Differentiable almost everywhere (the
        sort is piecewise constant). A row of zeros gives zeros (for ``"max"``, where
        ``0 / 0`` has no derivative, with zero gradient). An empty input gives an empty
        output.

    Raises:
        ValueError: on NaN, infinite, negative or > 1 entries (read on CPU tensors
            only), an unknown ``method`` or a 0-d ``probs``.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration.transforms import probability_to_possibility
        >>> p = torch.tensor([0.5, 0.3, 0.2])
        >>> probability_to_possibility(p)
        tensor([1.0000, 0.8000, 0.6000])
        >>> probability_to_possibility(p, method="minimum_specificity")
        tensor([1.0000, 0.5000, 0.2000])
        >>> probability_to_possibility(p, method="max")
        tensor([1.0000, 0.6000, 0.4000])
    """
    V.check_floating("probs", probs)
    if probs.ndim == 0:
        raise ValueError("probs must have at least 1 dimension (the class axis), got a 0-d tensor")
    V.check_choice("method", method, POSSIBILITY_METHODS)
    axis = V.check_dim("dim", dim, probs.ndim)
    V.check_tensor_values("probs", probs, low=0.0, high=1.0)
    if probs.numel() == 0:
        return probs.clone()
    p = upcast(probs)
    p = p.movedim(axis, -1)
    if method == "antipignistic":
        out = _antipignistic(p)
    elif method == "minimum_specificity":
        out = _minimum_specificity(p)
    else:
        out = _max_normalised(p)
    return out.movedim(-1, axis).to(probs.dtype)
