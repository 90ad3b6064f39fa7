"""Float64 NumPy transcription of the normalized softmax loss (Zhai & Wu 2019; NormFace 2017).

Written from the equations, one sample at a time, sharing nothing with the implementation:
logits z_c = <x / |x|, w_c / |w_c|> / sigma, loss = -sum_k t_k log softmax(z)_k, and the
gradients through the normalisation, whose Jacobian is (I - x_hat x_hat^T) / |x| (as derived
in NormFace, Wang et al. 2017).
"""

from __future__ import annotations

import math

import numpy as np


def unit(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """v / max(|v|, eps)."""
    v = np.asarray(v, dtype=np.float64)
    return v / max(math.sqrt(float(v @ v)), eps)


def cosine_logits(x, w, temperature, eps=1e-12) -> np.ndarray:
    """(N, C) logits of embeddings x (N, D) against class proxies w (C, D)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    out = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        xi = unit(x[i], eps)
        for c in range(w.shape[0]):
            out[i, c] = float(xi @ unit(w[c], eps)) / temperature
    return out


def dense_target(target, num_classes, label_smoothing=0.0) -> np.ndarray:
    """Index targets (N,) -> (N, C) probabilities (1 - eps) e_y + eps / C; probabilities pass."""
    target = np.asarray(target)
    if target.ndim == 2:
        t = target.astype(np.float64)
    else:
        t = np.zeros((target.shape[0], num_classes))
        t[np.arange(target.shape[0]), target] = 1.0
    return t * (1 - label_smoothing) + label_smoothing / num_classes


def per_sample(x, w, target, temperature, label_smoothing=0.0, eps=1e-12) -> np.ndarray:
    """-sum_k t_k log softmax(z)_k for each sample."""
    z = cosine_logits(x, w, temperature, eps)
    t = dense_target(target, w.shape[0], label_smoothing)
    out = np.zeros(z.shape[0])
    for i in range(z.shape[0]):
        top = z[i].max()
        lse = top + math.log(sum(math.exp(v - top) for v in z[i]))
        out[i] = sum(t[i, k] * (lse - z[i, k]) for k in range(z.shape[1]))
    return out


def gradients(x, w, target, temperature, cotangent, label_smoothing=0.0):
    """Gradients of sum_i g_i loss_i w.r.t. x (N, D) and w (C, D), for nonzero vectors.

    dL/dz_ic = g_i (p_ic sum_k t_ik - t_ic); dz_ic/dx_i = (I - x^ x^T) w^_c / (sigma |x_i|);
    dz_ic/dw_c = (I - w^ w^T) x^_i / (sigma |w_c|).
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    z = cosine_logits(x, w, temperature)
    t = dense_target(target, w.shape[0], label_smoothing)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p * t.sum(1, keepdims=True) - t) * np.asarray(cotangent, np.float64)[:, None]
    xh = np.stack([unit(r) for r in x])
    wh = np.stack([unit(r) for r in w])
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for i in range(x.shape[0]):
        proj = (np.eye(x.shape[1]) - np.outer(xh[i], xh[i])) / (temperature * np.linalg.norm(x[i]))
        gx[i] = proj @ (dz[i] @ wh)
    for c in range(w.shape[0]):
        proj = (np.eye(w.shape[1]) - np.outer(wh[c], wh[c])) / (temperature * np.linalg.norm(w[c]))
        gw[c] = proj @ (dz[:, c] @ xh)
    return gx, gw


def normface_lower_bound(num_classes: int, temperature: float) -> float:
    """NormFace's (Wang et al. 2017) lower bound: with unit features and weights and the same
    number of samples per class, the mean softmax loss is at least
    log(1 + (n - 1) exp(-s n / (n - 1))), s = 1 / sigma, n = number of classes."""
    n, s = num_classes, 1.0 / temperature
    return math.log(1 + (n - 1) * math.exp(-s * n / (n - 1)))
