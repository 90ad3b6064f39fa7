"""Float64 transcriptions of documented formulas the other reference files do not cover.

Used by the contract harness (tests/contract/); each follows the public docstring's formula,
one row at a time with plain Python floats, sharing nothing with the implementation.
"""

from __future__ import annotations

import math

import numpy as np

from tests.reference import maps_ref


def _rows(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]) if x.size else x.reshape(0, max(x.shape[-1:] or (0,)))


def stablemax(x, keep=None) -> np.ndarray:
    """StableMax over the kept entries: s(x_i) / sum_kept s(x_j); dropped entries (and a row
    with nothing kept) give 0 (Prieto et al. 2025, with the package's mask convention)."""
    x = np.asarray(x, dtype=np.float64)
    keep = np.ones(x.shape, bool) if keep is None else np.broadcast_to(keep, x.shape)
    out = []
    for row, k in zip(_rows(x), keep.reshape(-1, x.shape[-1])):
        terms = [maps_ref.s(float(v)) if kk else 0.0 for v, kk in zip(row, k)]
        total = sum(terms)
        out.append([t / total if total > 0 else 0.0 for t in terms])
    return np.array(out, dtype=np.float64).reshape(x.shape)


def log_stablemax(x, keep=None) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(stablemax(x, keep))


def gumbel_noise(shape, seed: int) -> np.ndarray:
    """g = -log E, E ~ Exp(1) drawn in float64 from ``torch.Generator().manual_seed(seed)``
    in row-major order (the documented noise of ``gumbel_softmax`` with that generator)."""
    import torch

    e = torch.empty(tuple(shape), dtype=torch.float64)
    e.exponential_(generator=torch.Generator().manual_seed(seed))
    return np.array([-math.log(float(v)) for v in e.reshape(-1)]).reshape(shape)


def gumbel_softmax(logits, tau: float, seed: int, hard: bool = False) -> np.ndarray:
    """softmax((logits + g) / tau); ``hard``: the one-hot of its argmax (lowest index on
    ties)."""
    z = np.asarray(logits, dtype=np.float64)
    y = maps_ref.softmax((z + gumbel_noise(z.shape, seed)) / tau)
    if not hard:
        return y
    out = np.zeros_like(y).reshape(-1, z.shape[-1])
    for i, row in enumerate(y.reshape(-1, z.shape[-1])):
        out[i, int(np.argmax(row))] = 1.0
    return out.reshape(z.shape)


def topk_indices(x, k: int) -> np.ndarray:
    """The k largest entries' indices per row, largest first (ties to the lower index)."""
    return np.array(
        [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in _rows(x)]
    ).reshape(*np.shape(x)[:-1], k)


def cross_entropy(
    logits,
    target,
    *,
    weight=None,
    reduction="mean",
    ignore_index=-100,
    label_smoothing=0.0,
    softcap=None,
    logsumexp_penalty=0.0,
):
    """``torch.nn.functional.cross_entropy`` of (N, V) logits as ``linear_cross_entropy``
    documents it, with the Gemma 2 soft cap ``s = softcap tanh(z / softcap)`` and PaLM's
    penalty ``c lse^2``: a kept row with class ``y`` gives
    ``(1 - eps) w_y (lse - s_y) + (eps / V) sum_k w_k (lse - s_k) + c lse^2``; a
    probability row ``t`` gives ``sum_k w_k t'_k (lse - s_k) + c lse^2``,
    ``t' = (1 - eps) t + eps / V``. "mean" divides the cross-entropy part by sum w_y over
    kept rows (rows for probability targets) and the penalty by the kept rows; 0 when none
    is kept. Returns the (N,) losses for "none", else a float."""
    z = np.asarray(logits, dtype=np.float64)
    n, v = z.shape
    target = np.asarray(target)
    w = np.ones(v) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = label_smoothing
    ce, pen = np.zeros(n), np.zeros(n)
    denominator, kept = 0.0, 0
    for i in range(n):
        s = [softcap * math.tanh(x / softcap) if softcap else float(x) for x in z[i]]
        top = max(s)
        lse = top + math.log(sum(math.exp(x - top) for x in s))
        if target.dtype.kind == "f":
            t = [(1 - eps) * float(p) + eps / v for p in target[i]]
            ce[i] = sum(w[k] * t[k] * (lse - s[k]) for k in range(v))
            denominator += 1.0
        else:
            y = int(target[i])
            if y == ignore_index:
                continue
            ce[i] = (1 - eps) * w[y] * (lse - s[y]) + eps / v * sum(
                w[k] * (lse - s[k]) for k in range(v)
            )
            denominator += w[y]
        pen[i] = logsumexp_penalty * lse * lse
        kept += 1
    if reduction == "none":
        return ce + pen
    if reduction == "sum":
        return float(ce.sum() + pen.sum())
    mean_ce = ce.sum() / denominator if denominator else 0.0
    return float(mean_ce + (pen.sum() / kept if kept else 0.0))


def knnlm_log_probs(
    queries, lm_logits, keys, values, vocab_size, k, temperature, lambda_, metric="l2"
):
    """Khandelwal et al. 2020: log(lambda p_kNN + (1 - lambda) softmax(lm_logits)), p_kNN
    the softmax of -d / T over the k nearest keys (squared L2 distance, or -q.key for
    "ip"), summed per value; one query at a time."""
    q = np.asarray(queries, dtype=np.float64)
    keys = np.asarray(keys, dtype=np.float64)
    out = []
    for i, row in enumerate(q):
        if metric == "l2":
            d = [sum((a - b) ** 2 for a, b in zip(row, key)) for key in keys]
        else:
            d = [-sum(a * b for a, b in zip(row, key)) for key in keys]
        order = sorted(range(len(d)), key=lambda j: (d[j], j))[:k]
        weights = maps_ref.softmax_row(np.array([-d[j] / temperature for j in order]))
        p_knn = np.zeros(vocab_size)
        for wj, j in zip(weights, order):
            p_knn[int(values[j])] += wj
        p_lm = maps_ref.softmax_row(np.asarray(lm_logits[i], dtype=np.float64))
        with np.errstate(divide="ignore"):
            out.append(np.log(lambda_ * p_knn + (1 - lambda_) * p_lm))
    return np.array(out)
