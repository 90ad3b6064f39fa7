"""Float64 NumPy transcriptions of KD (Hinton et al. 2015), NKD and USKD (Yang et al. 2023).

Written from the papers' equations (NKD's non-target probabilities as p_k / (1 - p_t), the
renormalisation the paper describes) and, for USKD's details, the official cls_KD code,
one row at a time; shares nothing with the implementation. Logits are (N, C).
"""

from __future__ import annotations

import math

import numpy as np

from tests.reference.divergence_ref import kl_logs, log_softmax_row, softmax_row


def kd(s, t, temperature: float) -> np.ndarray:
    """tau^2 KL(softmax(t / tau) || softmax(s / tau)) per row."""
    return np.array(
        [
            temperature**2
            * kl_logs(log_softmax_row(tr / temperature), log_softmax_row(sr / temperature))
            for sr, tr in zip(np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64))
        ]
    )


def renormalised_logs(log_probs, excluded) -> list[float]:
    """log(p_k / sum_(j not excluded) p_j) for the classes not excluded (-inf for the
    excluded ones), from log-probabilities so that it holds when 1 - p_t rounds to 0."""
    rest = [a for k, a in enumerate(log_probs) if k not in excluded and a != -math.inf]
    if not rest:
        return [-math.inf] * len(log_probs)
    top = max(rest)
    log_mass = top + math.log(sum(math.exp(a - top) for a in rest))
    return [-math.inf if k in excluded else a - log_mass for k, a in enumerate(log_probs)]


def nkd(s, t, y, temperature: float, gamma: float) -> np.ndarray:
    """-T_y log S_y - gamma tau^2 sum_(k != y) T_k/(1 - T_y) log(S_k/(1 - S_y)), the
    non-target probabilities taken at temperature tau (1 - T_y as the non-target mass)."""
    out = []
    for sr, tr, c in zip(np.asarray(s, np.float64), np.asarray(t, np.float64), y):
        big_s, big_t = log_softmax_row(sr), softmax_row(tr)
        loss = -big_t[c] * big_s[c] if big_t[c] > 0 else 0.0
        s_hat = renormalised_logs(log_softmax_row(sr / temperature), {c})
        t_hat = renormalised_logs(log_softmax_row(tr / temperature), {c})
        cross = 0.0
        for k in range(len(sr)):
            if k == c or t_hat[k] == -math.inf:
                continue
            cross += math.exp(t_hat[k]) * s_hat[k]
        out.append(loss - gamma * temperature**2 * cross)
    return np.array(out)


def zipf_labels(score, excluded, impossible=()) -> np.ndarray:
    """Zipf's law over a descending stable ranking of ``score``: the class at rank n
    (1-based, excluded classes ranked too) gets 1/n; excluded and impossible classes get 0;
    the rest is renormalised to sum to 1."""
    order = sorted(range(len(score)), key=lambda k: -score[k])  # sorted() is stable
    labels = np.zeros(len(score))
    for n, k in enumerate(order, start=1):
        if k not in excluded and k not in impossible:
            labels[k] = 1.0 / n
    total = labels.sum()
    return labels / total if total > 0 else labels


def uskd(z, w, target, alpha, beta, mu, rank_with="official") -> np.ndarray:
    """USKD per row for a batch: index targets (N,) or probability targets (N, C)."""
    z = np.asarray(z, np.float64)
    w = np.asarray(w, np.float64)
    n, c = z.shape
    target = np.asarray(target)
    if target.ndim == 1:
        labels = [[int(y)] for y in target]
        values = [[1.0] for _ in target]
        dense = np.zeros((n, c))
        dense[np.arange(n), target] = 1.0
    else:
        labels, values = [], []
        for row in target:
            order = sorted(range(c), key=lambda k: -row[k])[:2]
            labels.append(order)
            values.append([float(row[k]) for k in order])
        dense = target.astype(np.float64)
    probs = [softmax_row(row) for row in z]
    squared = np.array([[probs[i][k] ** 2 for k in labels[i]] for i in range(n)])
    mean = squared.mean(0)
    out = []
    for i in range(n):
        s, ls = probs[i], log_softmax_row(z[i])
        ws, lws = softmax_row(w[i]), log_softmax_row(w[i])
        soft = [
            0.0 if values[i][j] == 0 else squared[i][j] + values[i][j] - mean[j]
            for j in range(len(labels[i]))
        ]
        target_part = -sum(p * ls[k] for p, k in zip(soft, labels[i]) if p != 0)
        weak_target = 0.9 * dense[i] + 0.1 / c
        weak_part = -mu * sum(weak_target[k] * lws[k] for k in range(c))
        x = list(ls) if rank_with == "official" else list(s)
        w_t = sum(ws[k] for k in labels[i])
        x_t = sum(x[k] for k in labels[i])
        score = [ws[k] / (1 - w_t + 1e-6) + x[k] / (1 - x_t + 1e-6) for k in range(c)]
        impossible = {k for k in range(c) if z[i][k] == -math.inf}
        nz = zipf_labels(score, set(labels[i]), impossible)
        rest = [k for k in range(c) if k not in labels[i] and k not in impossible]
        s_hat = renormalised_logs(log_softmax_row(z[i]), set(labels[i]))
        non_target = -sum(nz[k] * s_hat[k] for k in rest)
        out.append(alpha * target_part + beta * non_target + weak_part)
    return np.array(out)
