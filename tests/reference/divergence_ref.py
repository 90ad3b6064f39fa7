"""Float64 NumPy transcriptions of the f-divergences between two softmax distributions.

Written from the textbook definitions, one row at a time, with the conventions
0 log 0 = 0 and p log(p / 0) = +inf for p > 0; shares nothing with the implementation.
Each function takes logits with the class axis last and returns one value per row.
"""

from __future__ import annotations

import math

import numpy as np


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def log_softmax_row(row) -> np.ndarray:
    """z_k - log sum_j exp(z_j), exactly in log space; a row of only -inf is the zero
    measure (-inf everywhere)."""
    row = [float(z) for z in row]
    finite = [z for z in row if z != -math.inf]
    if not finite:
        return np.full(len(row), -math.inf)
    top = max(finite)
    lse = top + math.log(sum(math.exp(z - top) for z in finite))
    return np.array([z - lse for z in row])


def softmax_row(row) -> np.ndarray:
    return np.exp(log_softmax_row(row))


def kl_logs(lp, lq) -> float:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) from log-probabilities."""
    total = 0.0
    for a, b in zip(lp, lq):
        if a == -math.inf:
            continue
        if b == -math.inf:
            return math.inf
        total += math.exp(a) * (a - b)
    return total


def js_logs(lp, lq) -> float:
    lm = [np.logaddexp(a, b) - math.log(2) for a, b in zip(lp, lq)]
    return 0.5 * kl_logs(lp, lm) + 0.5 * kl_logs(lq, lm)


def tv_logs(lp, lq) -> float:
    return 0.5 * sum(abs(math.exp(a) - math.exp(b)) for a, b in zip(lp, lq))


def hellinger_logs(lp, lq) -> float:
    """Squared Hellinger distance, 1/2 sum (sqrt p - sqrt q)^2."""
    return 0.5 * sum((math.exp(a / 2) - math.exp(b / 2)) ** 2 for a, b in zip(lp, lq))


def alpha_logs(lp, lq, alpha: float) -> float:
    """Amari alpha-divergence (Cichocki & Amari 2010), 1/(a(a-1)) (sum p^a q^(1-a) - 1);
    KL(p||q) at a = 1 and KL(q||p) at a = 0."""
    if alpha == 1:
        return kl_logs(lp, lq)
    if alpha == 0:
        return kl_logs(lq, lp)
    total = 0.0
    for a, b in zip(lp, lq):
        if a == -math.inf and b == -math.inf:
            continue
        if a == -math.inf:
            if alpha < 0:
                return math.inf
            continue
        if b == -math.inf:
            if alpha > 1:
                return math.inf
            continue
        total += _exp(alpha * a + (1 - alpha) * b)
    return (total - 1) / (alpha * (alpha - 1))


KINDS = {
    "kl": kl_logs,
    "reverse_kl": lambda lp, lq: kl_logs(lq, lp),
    "js": js_logs,
    "tv": tv_logs,
    "hellinger": hellinger_logs,
}


def divergence(p_logits, q_logits, kind: str, alpha: float | None = None) -> np.ndarray:
    """Per-row divergence of softmax(p_logits) from softmax(q_logits) (class axis last)."""
    x = np.asarray(p_logits, dtype=np.float64)
    y = np.asarray(q_logits, dtype=np.float64)
    rows_p = x.reshape(-1, x.shape[-1])
    rows_q = y.reshape(-1, y.shape[-1])
    out = []
    for rp, rq in zip(rows_p, rows_q):
        lp, lq = log_softmax_row(rp), log_softmax_row(rq)
        out.append(alpha_logs(lp, lq, alpha) if kind == "alpha" else KINDS[kind](lp, lq))
    return np.array(out).reshape(x.shape[:-1])
