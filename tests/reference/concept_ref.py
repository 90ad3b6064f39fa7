"""Float64 transcriptions for Sparse-CBM (Semenov et al. 2024, arXiv:2404.03323): the CBL
losses of the official ``bottlenecks/cbm.py`` and Concept Matrix Search of
``bottlenecks/setup.py`` (its per-image, per-class loops), sharing nothing with the
implementation."""

from __future__ import annotations

import numpy as np


def _log_softmax(x, axis):
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


def contrastive(cbl_out) -> float:
    """1/2 (-mean diag log_softmax(L, 0) - mean diag log_softmax(L, 1))."""
    L = np.asarray(cbl_out, np.float64)
    k = min(L.shape)
    a = np.mean([_log_softmax(L, 0)[i, i] for i in range(k)])
    b = np.mean([_log_softmax(L, 1)[i, i] for i in range(k)])
    return -0.5 * (a + b)


def gumbel(cbl_out, tau: float, noise0, noise1) -> float:
    """1/2 (mean -log softmax((L + g0)/tau, 0) + mean -log softmax((L + g1)/tau, 1)) with the
    given Gumbel noises g0, g1 (one per direction, as two gumbel_softmax calls)."""
    L = np.asarray(cbl_out, np.float64)
    a = -_log_softmax((L + noise0) / tau, 0).mean()
    b = -_log_softmax((L + noise1) / tau, 1).mean()
    return 0.5 * (a + b)


def l1(weight, l1_lambda: float) -> float:
    w = np.asarray(weight, np.float64)
    return l1_lambda * np.abs(w).sum() / w.shape[0]


def _dot_prods(a, b, eps, normalize):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            m[i, j] = a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
    axis = 1 if normalize == "row" else 0
    return m / (m.sum(axis, keepdims=True) + eps)


def cms_scores(images, concepts, classes, mode="similarity", normalize="row", eps=1e-8):
    V = _dot_prods(images, concepts, eps, normalize)
    T = _dot_prods(classes, concepts, eps, normalize)
    out = np.zeros((len(V), len(T)))
    for i, v_row in enumerate(V):
        for k, t_row in enumerate(T):
            if mode == "similarity":
                out[i, k] = v_row @ t_row / (np.linalg.norm(v_row) * np.linalg.norm(t_row))
            else:
                out[i, k] = T[k, int(np.argmax(v_row))]
    return out
