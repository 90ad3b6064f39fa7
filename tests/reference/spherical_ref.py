"""Float64 transcriptions of the spherical-family losses and the PaLM penalty, one row at a time.

Written from the papers' equations with plain Python floats, sharing nothing with the
implementation (which works on whole blocks from sum(o) and sum(o^2) and has analytic
gradients):

* Z-loss, de Brébisson & Vincent 2016 (arXiv:1604.08859): mu = mean(o),
  sigma^2 = mean(o^2) - mu^2 (population variance; here as mean((o - mu)^2)),
  z_c = (o_c - mu) / (sigma + eps), loss = (1/a) log(1 + exp(a (b - z_c))).
* spherical softmax, Vincent et al. 2015 / de Brébisson & Vincent 2016
  (arXiv:1511.05042): p_i = (o_i^2 + eps) / sum_k (o_k^2 + eps).
* Taylor softmax, de Brébisson & Vincent 2016: p_i = f(o_i) / sum_k f(o_k),
  f(o) = 1 + o + o^2 / 2.
* PaLM "z-loss", Chowdhery et al. 2022 (arXiv:2204.02311): w * (log sum_k exp(o_k))^2.

Losses take (N, C) logits and either class indices (N,) or probabilities (N, C); a
probability target gives sum_k t_k loss(o, k). They return the (N,) per-row losses.
"""

from __future__ import annotations

import math

import numpy as np


def _per_row(row_loss, x, target) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    target = np.asarray(target)
    out = []
    for i, row in enumerate(x):
        row = [float(v) for v in row]
        if target.dtype.kind == "f":
            out.append(sum(float(t) * row_loss(row, k) for k, t in enumerate(target[i]) if t))
        else:
            out.append(row_loss(row, int(target[i])))
    return np.array(out, dtype=np.float64)


def softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def z_loss_row(row: list[float], c: int, a: float, b: float, eps: float) -> float:
    n = len(row)
    mu = sum(row) / n
    sigma = math.sqrt(sum((o - mu) ** 2 for o in row) / n)
    z = (row[c] - mu) / (sigma + eps) if sigma + eps > 0 else 0.0
    return softplus(a * (b - z)) / a


def z_loss(x, target, a: float, b: float, eps: float = 1e-12) -> np.ndarray:
    return _per_row(lambda row, c: z_loss_row(row, c, a, b, eps), x, target)


def spherical_softmax_row(row: list[float], eps: float) -> list[float]:
    terms = [o * o + eps for o in row]
    total = sum(terms)
    return [t / total for t in terms]


def spherical_softmax(x, eps: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    rows = x.reshape(-1, x.shape[-1])
    return np.array([spherical_softmax_row(list(r), eps) for r in rows]).reshape(x.shape)


def spherical_softmax_loss(x, target, eps: float) -> np.ndarray:
    return _per_row(lambda row, c: -math.log(spherical_softmax_row(row, eps)[c]), x, target)


def taylor_softmax_row(row: list[float]) -> list[float]:
    terms = [1.0 + o + o * o / 2.0 for o in row]
    total = sum(terms)
    return [t / total for t in terms]


def taylor_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    rows = x.reshape(-1, x.shape[-1])
    return np.array([taylor_softmax_row(list(r)) for r in rows]).reshape(x.shape)


def taylor_softmax_loss(x, target) -> np.ndarray:
    return _per_row(lambda row, c: -math.log(taylor_softmax_row(row)[c]), x, target)


def logsumexp_penalty(x, weight: float = 1e-4) -> np.ndarray:
    """Per row of the (rows, C) x."""
    out = []
    for row in np.asarray(x, dtype=np.float64):
        top = max(row)
        lse = top + math.log(sum(math.exp(o - top) for o in row))
        out.append(weight * lse * lse)
    return np.array(out, dtype=np.float64)
