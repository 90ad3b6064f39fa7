"""Float64 NumPy transcriptions of DEXML's retrieval losses (Gupta et al., ICLR 2024,
arXiv:2310.10636), one row and one positive at a time, sharing nothing with softmaxkit.

``scores`` is (N, L) with labels last, ``positives`` a boolean (N, L) array, ``weights`` an
optional (N, L) array of relevance values. Every function returns the per-row losses
(0 for a row without positives). ``-inf`` scores are labels taken out of the row.
"""

from __future__ import annotations

import math

import numpy as np


def _log_sum_exp(values) -> float:
    values = [x for x in values if x != -math.inf]
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(x - top) for x in values))


def _weight(weights, i, p) -> float:
    return 1.0 if weights is None else float(weights[i][p])


def decoupled_softmax(scores, positives, weights=None) -> np.ndarray:
    """-(1/|P_i|) sum_p w_ip log(e^{s_ip} / (e^{s_ip} + sum_{j not in P_i} e^{s_ij}))."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(scores.shape[0])
    for i, row in enumerate(scores):
        pos = [j for j in range(len(row)) if positives[i][j]]
        negatives = [row[j] for j in range(len(row)) if not positives[i][j]]
        total = 0.0
        for p in pos:
            log_denominator = _log_sum_exp([row[p], *negatives])
            if log_denominator == -math.inf:  # nothing left in the row: no loss
                continue
            total += -_weight(weights, i, p) * (row[p] - log_denominator)
        out[i] = total / len(pos) if pos else 0.0
    return out


def multi_positive_softmax(scores, positives, weights=None, normalize=False) -> np.ndarray:
    """-c_i sum_p w_ip log softmax(s_i)_p, c_i = 1 (official) or 1 / |P_i|."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(scores.shape[0])
    for i, row in enumerate(scores):
        pos = [j for j in range(len(row)) if positives[i][j]]
        log_denominator = _log_sum_exp(list(row))
        if not pos or log_denominator == -math.inf:
            continue
        total = sum(-_weight(weights, i, p) * (row[p] - log_denominator) for p in pos)
        out[i] = total / len(pos) if normalize else total
    return out


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _log_sigmoid(x: float) -> float:
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def soft_topk_threshold_row(row, k, alpha) -> float:
    """The t with sum_j sigmoid(alpha (s_j + t)) = k over the finite s_j.

    The sum increases with t, so the root is bracketed by growing an interval around
    -s_(k) (the k-th largest score), then located by bisection to the last bit and
    polished by Newton steps.
    """
    finite = sorted((x for x in row if x != -math.inf), reverse=True)

    def excess(t):
        return sum(_sigmoid(alpha * (x + t)) for x in finite) - k

    lo = hi = -finite[k - 1]
    step = 1.0
    while excess(lo) > 0:
        lo -= step
        step *= 2
    step = 1.0
    while excess(hi) < 0:
        hi += step
        step *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    for _ in range(3):
        slope = sum(alpha * _sigmoid(alpha * (x + t)) * _sigmoid(-alpha * (x + t)) for x in finite)
        if slope > 0:
            t -= excess(t) / slope
    return t


def soft_topk_memberships(scores, k, alpha) -> np.ndarray:
    """sigmoid(alpha (s_ij + t_i)) for each row, k an int or one per row."""
    scores = np.asarray(scores, dtype=np.float64)
    ks = np.broadcast_to(np.asarray(k), scores.shape[:1])
    out = np.zeros_like(scores)
    for i, row in enumerate(scores):
        t = soft_topk_threshold_row(list(row), int(ks[i]), alpha)
        out[i] = [_sigmoid(alpha * (x + t)) if x != -math.inf else 0.0 for x in row]
    return out


def soft_topk(scores, positives, k, alpha=2.0, weights=None) -> np.ndarray:
    """-(1/|P_i|) sum_p w_ip log sigmoid(alpha (s_ip + t_i)), sum_j sigmoid(...) = k_i."""
    scores = np.asarray(scores, dtype=np.float64)
    ks = np.broadcast_to(np.asarray(k), scores.shape[:1])
    out = np.zeros(scores.shape[0])
    for i, row in enumerate(scores):
        pos = [j for j in range(len(row)) if positives[i][j]]
        if not pos:
            continue
        t = soft_topk_threshold_row(list(row), int(ks[i]), alpha)
        total = sum(-_weight(weights, i, p) * _log_sigmoid(alpha * (row[p] + t)) for p in pos)
        out[i] = total / len(pos)
    return out
