"""Float64 NumPy transcriptions of the OOD scores and metrics (no softmaxkit import).

Written from the papers' formulas, one row / one threshold / one pair at a time:

- MSP (Hendrycks & Gimpel 2017), max logit, energy ``T log sum exp(z / T)`` (Liu et al.
  2020, arXiv:2010.03759), with the +-inf rules of ``softmaxkit.ood.scores``.
- AUROC as the pairwise Mann-Whitney count, AP and FPR@TPR by scanning thresholds.
- Mahalanobis (Lee et al. 2018, arXiv:1807.03888, Eq. 2), the direct quadratic form per
  class, with the tied MLE covariance and ``np.linalg.pinv``.
- k-NN (Sun et al. 2022, arXiv:2204.06507): the full distance matrix, sorted.
- PALM (Lu et al. 2024, arXiv:2402.02653): the SSD+ score of the official
  ``eval_maha`` and the prototype-mixture score.
"""

from __future__ import annotations

import math

import numpy as np


# ---------------------------------------------------------------- logit scores
def msp_row(row) -> float:
    row = [float(v) for v in row]
    n_inf = sum(1 for v in row if v == math.inf)
    if n_inf:
        return 1.0 / n_inf
    if all(v == -math.inf for v in row):
        return 0.0
    top = max(row)
    return 1.0 / sum(math.exp(v - top) for v in row)


def max_logit_row(row) -> float:
    return max(float(v) for v in row)


def energy_row(row, temperature: float = 1.0) -> float:
    row = [float(v) for v in row]
    if any(v == math.inf for v in row):
        return math.inf
    if all(v == -math.inf for v in row):
        return -math.inf
    top = max(row) / temperature
    return temperature * (top + math.log(sum(math.exp(v / temperature - top) for v in row)))


def rows(fn, x: np.ndarray, **kw) -> np.ndarray:
    """Apply a row reference over the last axis of ``x``."""
    flat = x.reshape(-1, x.shape[-1])
    return np.array([fn(r, **kw) for r in flat]).reshape(x.shape[:-1])


# --------------------------------------------------------------------- metrics
def auroc(s_in, s_out) -> float:
    s_in, s_out = np.asarray(s_in, float), np.asarray(s_out, float)
    wins = 0.0
    for a in s_in:
        wins += np.sum(a > s_out) + 0.5 * np.sum(a == s_out)
    return wins / (len(s_in) * len(s_out))


def average_precision(pos, neg) -> float:
    """Step-wise AP, ``sum (R_t - R_prev) P_t`` over distinct thresholds, high to low."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(pos.tolist()) | set(neg.tolist()), reverse=True):
        tp, fp = np.sum(pos >= t), np.sum(neg >= t)
        recall = tp / len(pos)
        total += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return total


def fpr_at_tpr(s_in, s_out, tpr: float = 0.95) -> float:
    s_in, s_out = np.asarray(s_in, float), np.asarray(s_out, float)
    for t in sorted(set(s_in.tolist()) | set(s_out.tolist()), reverse=True):
        if np.sum(s_in >= t) / len(s_in) >= tpr:
            return float(np.sum(s_out >= t) / len(s_out))
    raise AssertionError("unreachable: the lowest threshold accepts every ID score")


# ----------------------------------------------------------------- Ledoit-Wolf
def ledoit_wolf(centred) -> np.ndarray:
    """Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance
    matrices", Lemma 3.2 / Theorem 3.1 with the norm ``||A||^2 = tr(A A^T) / p``:
    ``S = 1/n sum_k x_k x_k^T``, ``m = <S, I>``, ``d^2 = ||S - m I||^2``,
    ``b^2 = min(1/n^2 sum_k ||x_k x_k^T - S||^2, d^2)``, ``a^2 = d^2 - b^2``, and
    ``Sigma = (b^2 / d^2) m I + (a^2 / d^2) S``; one sample at a time."""
    x = np.asarray(centred, float)
    n, p = x.shape
    eye = np.eye(p)

    def sq_norm(a):
        return float(np.trace(a @ a.T)) / p

    s = sum(np.outer(v, v) for v in x) / n
    m = float(np.trace(s)) / p
    d2 = sq_norm(s - m * eye)
    if d2 == 0.0:
        return s
    b2 = min(sum(sq_norm(np.outer(v, v) - s) for v in x) / n**2, d2)
    return (b2 / d2) * m * eye + ((d2 - b2) / d2) * s


# ----------------------------------------------------------------- Mahalanobis
def mahalanobis_fit(features, labels, num_classes, eps=0.0, ledoit_wolf_shrinkage=False):
    f = np.asarray(features, float)
    labels = np.asarray(labels)
    means = np.stack([f[labels == c].mean(0) for c in range(num_classes)])
    centred = np.stack([f[i] - means[labels[i]] for i in range(len(f))])
    if ledoit_wolf_shrinkage:
        cov = ledoit_wolf(centred)
    else:
        cov = np.zeros((f.shape[1], f.shape[1]))
        for d in centred:
            cov += np.outer(d, d)
        cov /= len(f)
    cov += eps * np.eye(f.shape[1])
    return means, cov, np.linalg.pinv(cov, hermitian=True)


def mahalanobis_class_scores(features, means, precision) -> np.ndarray:
    f = np.asarray(features, float)
    out = np.empty((len(f), len(means)))
    for i in range(len(f)):
        for c, mu in enumerate(means):
            d = f[i] - mu
            out[i, c] = -d @ precision @ d
    return out


def mahalanobis_score(features, means, precision) -> np.ndarray:
    return mahalanobis_class_scores(features, means, precision).max(1)


# ------------------------------------------------------------------------- kNN
def knn_score(train, query, k) -> np.ndarray:
    def unit(x):
        x = np.asarray(x, float)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    tr, q = unit(train), unit(query)
    dist = np.sqrt(((q[:, None, :] - tr[None, :, :]) ** 2).sum(-1))
    return -np.sort(dist, axis=1)[:, k - 1]


# ------------------------------------------------------------------------ PALM
def ssd_score(train, query, official_centering=False, ledoit_wolf_shrinkage=False) -> np.ndarray:
    """The official ``eval_maha`` (SSD+), transcribed; ``official_centering`` keeps its
    second subtraction of the raw mean; ``ledoit_wolf_shrinkage`` replaces the biased
    covariance by :func:`ledoit_wolf` (not in the official code)."""

    def unit(x):
        x = np.asarray(x, float)
        return x / (np.linalg.norm(x, ord=2, axis=-1, keepdims=True) + 1e-10)

    ftrain, fq = unit(train), unit(query)
    mean, std = ftrain.mean(0), ftrain.std(0)
    ztrain = (ftrain - mean) / (std + 1e-10)
    zq = (fq - mean) / (std + 1e-10)
    if official_centering:
        zq = zq - mean
    if ledoit_wolf_shrinkage:
        inv = np.linalg.pinv(ledoit_wolf(ztrain - ztrain.mean(0)))
    else:
        inv = np.linalg.pinv(np.cov(ztrain.T, bias=True))
    return np.array([-(z @ inv @ z) for z in zq])


def prototype_score(prototypes, labels, query, temperature) -> np.ndarray:
    p = np.asarray(prototypes, float)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    labels = np.asarray(labels)
    out = []
    for z in np.asarray(query, float):
        z = z / np.linalg.norm(z)
        best = -math.inf
        for c in np.unique(labels):
            terms = [math.exp(float(pk @ z) / temperature) for pk in p[labels == c]]
            best = max(best, math.log(sum(terms) / len(terms)))
        out.append(best)
    return np.array(out)
