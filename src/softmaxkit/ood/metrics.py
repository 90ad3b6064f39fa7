"""OOD detection metrics: AUROC, AUPR-In, AUPR-Out and FPR at a TPR.

Conventions (every function here):

- Inputs are two tensors of scores, ``score_in`` for in-distribution (ID) samples and
  ``score_out`` for out-of-distribution (OOD) samples, of any shapes (flattened), any
  floating dtype (compared in float64, so exactly). **Higher score = more ID**, the sign
  of every score in :mod:`softmaxkit.ood` (pytorch-ood's outlier scores must be negated).
- ID is the positive class, except in :func:`aupr_out` (OOD positive, scores negated).
- Ties are exact: the scores are sorted once and tied scores form one threshold (one
  ROC/PR point), as scikit-learn's ``roc_curve`` / ``average_precision_score`` do, so a
  tied ID/OOD pair gets half credit in the AUROC.
- ``+-inf`` scores are ordinary (extreme, possibly tied) values; NaN is rejected (checked
  on CPU tensors); empty inputs are rejected.
- Results are 0-d float64 tensors on the inputs' device (no host synchronisation beyond
  the sort's tie grouping).
"""

from __future__ import annotations

import torch

from softmaxkit import _validation as V

__all__ = ["auroc", "aupr_in", "aupr_out", "fpr_at_tpr"]


def _check_scores(score_in: object, score_out: object) -> tuple[torch.Tensor, torch.Tensor]:
    pair = []
    for name, s in (("score_in", score_in), ("score_out", score_out)):
        s = V.check_floating(name, s)
        V.check_nonempty(name, s, "score")
        V.check_no_nan(name, s)
        pair.append(s.detach().reshape(-1).to(torch.float64))
    if pair[0].device != pair[1].device:
        raise ValueError(
            f"score_in and score_out must be on the same device, got {pair[0].device} "
            f"and {pair[1].device}"
        )
    return pair[0], pair[1]


def _curve(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative (true positives, false positives) at each distinct threshold, descending.

    Entry g counts the samples whose score is >= the g-th largest distinct score, so the
    last entry is (len(pos), len(neg)). One sort of the pooled scores; int64 counts.
    """
    scores = torch.cat([pos, neg])
    is_pos = torch.zeros(scores.shape, dtype=torch.int64, device=scores.device)
    is_pos[: pos.numel()] = 1
    ordered, order = torch.sort(scores, descending=True)
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1  # last index of each tie group
    tp = torch.cumsum(is_pos[order], 0)[ends]
    fp = ends + 1 - tp
    return tp, fp


def _increments(cum: torch.Tensor) -> torch.Tensor:
    return torch.diff(cum, prepend=cum.new_zeros(1))


def _average_precision(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    tp, fp = _curve(pos, neg)
    precision = tp.to(torch.float64) / (tp + fp).to(torch.float64)
    return (_increments(tp).to(torch.float64) * precision).sum() / pos.numel()


def auroc(score_in: torch.Tensor, score_out: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve, ID positive: ``P(s_in > s_out) + P(s_in = s_out) / 2``.

    The Mann-Whitney statistic over all (ID, OOD) pairs, equal to the trapezoidal area
    under the ROC curve through one point per distinct threshold (scikit-learn's
    ``roc_auc_score``). Counted exactly in int64 from one sort:
    ``AUROC = sum_g pos_g (2 neg_below_g + neg_g) / (2 n_in n_out)`` over tie groups g.

    Args:
        score_in: ID scores (higher = more ID), any shape, floating.
        score_out: OOD scores, any shape, floating.

    Returns:
        0-d float64 tensor in [0, 1]; 1 when every ID score exceeds every OOD score.

    Example:
        >>> import torch
        >>> auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 0.0]))
        tensor(0.9167, dtype=torch.float64)
    """
    s_in, s_out = _check_scores(score_in, score_out)
    tp, fp = _curve(s_in, s_out)
    n_out = s_out.numel()
    neg_below = n_out - fp  # OOD strictly below the group (groups run high to low)
    twice_u = (_increments(tp) * (2 * neg_below + _increments(fp))).sum()
    return twice_u.to(torch.float64) / (2.0 * s_in.numel() * n_out)


def aupr_in(score_in: torch.Tensor, score_out: torch.Tensor) -> torch.Tensor:
    """Area under the precision-recall curve with ID as the positive class.

    Step-wise average precision, as scikit-learn's ``average_precision_score``:
    ``AP = sum_g (R_g - R_{g-1}) P_g`` over the distinct thresholds g, high to low, where
    ``P_g``/``R_g`` are the precision/recall of "score >= threshold g" (no interpolation).

    Args:
        score_in: ID scores (higher = more ID), any shape, floating.
        score_out: OOD scores, any shape, floating.

    Returns:
        0-d float64 tensor in (0, 1].

    Example:
        >>> import torch
        >>> aupr_in(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0]))
        tensor(0.8333, dtype=torch.float64)
    """
    s_in, s_out = _check_scores(score_in, score_out)
    return _average_precision(s_in, s_out)


def aupr_out(score_in: torch.Tensor, score_out: torch.Tensor) -> torch.Tensor:
    """Area under the precision-recall curve with OOD as the positive class.

    :func:`aupr_in` with the roles swapped and the scores negated (an OOD sample should
    score low): ``aupr_out(s_in, s_out) = aupr_in(-s_out, -s_in)``. Arguments as
    :func:`aupr_in` (higher = more ID); the result is a 0-d float64 tensor in (0, 1], 1
    when every OOD score is below every ID score.

    Example:
        >>> import torch
        >>> s_in, s_out = torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.5, 0.0])
        >>> aupr_out(s_in, s_out), aupr_in(s_in, s_out)
        (tensor(0.7500, dtype=torch.float64), tensor(0.8056, dtype=torch.float64))
    """
    s_in, s_out = _check_scores(score_in, score_out)
    return _average_precision(-s_out, -s_in)


def fpr_at_tpr(score_in: torch.Tensor, score_out: torch.Tensor, tpr: float = 0.95) -> torch.Tensor:
    """False positive rate of OOD samples when the TPR of ID samples first reaches ``tpr``.

    A sample is accepted as ID when its score is >= a threshold. Going through the
    distinct scores from high to low, the threshold is the first one at which the fraction
    of ID scores accepted is >= ``tpr``; the result is the fraction of OOD scores accepted
    there. This is the first ROC point with TPR >= ``tpr`` (torchmetrics' ``binary_roc``
    + ``searchsorted``, as pytorch-ood's ``fpr_at_tpr`` does), with **ID positive** as in
    the ODIN / Mahalanobis / KNN papers' "FPR at 95% TPR". Note: pytorch-ood's
    ``OODMetrics`` "FPR95TPR" takes OOD as the positive class instead; it equals
    ``fpr_at_tpr(-score_out, -score_in)`` here.

    Args:
        score_in: ID scores (higher = more ID), any shape, floating.
        score_out: OOD scores, any shape, floating.
        tpr: target true positive rate in (0, 1] (default 0.95, the usual FPR@95).

    Returns:
        0-d float64 tensor in [0, 1]; lower is better.

    Example:
        >>> import torch
        >>> s_in = torch.arange(100.0)
        >>> fpr_at_tpr(s_in, torch.tensor([2.0, 4.0, 50.0, -1.0]))
        tensor(0.2500, dtype=torch.float64)
    """
    target = V.check_number("tpr", tpr, low=0.0, high=1.0, low_open=True)
    s_in, s_out = _check_scores(score_in, score_out)
    tp, fp = _curve(s_in, s_out)
    tpr_curve = tp.to(torch.float64) / s_in.numel()
    wanted = torch.tensor([target], dtype=torch.float64, device=tp.device)
    first = torch.searchsorted(tpr_curve, wanted).clamp(max=tp.numel() - 1)
    return (fp[first].to(torch.float64) / s_out.numel()).reshape(())
