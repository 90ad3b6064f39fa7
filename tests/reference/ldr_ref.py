"""Float64 NumPy transcriptions of the LDR-KL and ALDR-KL losses (Zhu, Ying & Yang, ICML 2023).

Written from the paper's definitions and the official ``loss.py`` (``LDRLoss_V1``,
``ALDRLoss_V1``) one row at a time, sharing nothing with the implementation. Rows have the
class axis last; a target is a probability (or one-hot) vector ``t``; the margin vector is
``m_k = c (1 - t_k) + z~_k - <t, z~>`` (the authors' ``threshold * (1 - y_true) +
get_diff_logits(y_pred, y_true)`` with ``y_true`` a float label vector).
"""

from __future__ import annotations

import math

import numpy as np


def one_hot(index: int, num_classes: int) -> np.ndarray:
    out = np.zeros(num_classes)
    out[index] = 1.0
    return out


def softplus(x: float) -> float:
    """log(1 + e^x), computed without overflow."""
    if x == -math.inf:
        return 0.0
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def normalize_row(z: np.ndarray, how: str | None) -> np.ndarray:
    """The official logit normalisations.

    "softplus_mean": softplus(z) / mean_k softplus(z_k) (``LDRLoss_V1``; ALDR with
    ``softplus=True``); "l1_mean": z / (||z||_1 / K) (``ALDRLoss_V1`` default), the norm over
    the finite entries (a -inf logit stays -inf), an all-zero row left as is; None: z.
    """
    z = np.asarray(z, dtype=np.float64)
    k = len(z)
    if how is None:
        return z.copy()
    if how == "softplus_mean":
        s = np.array([softplus(v) for v in z])
        return s / (sum(s) / k)
    if how == "l1_mean":
        scale = sum(abs(v) for v in z if math.isfinite(v)) / k
        return z / scale if scale > 0 else z.copy()
    raise ValueError(how)


def _dot(t: np.ndarray, x: np.ndarray) -> float:
    # 0 * (-inf) counts as 0: a class with no target mass contributes nothing
    return sum(a * b for a, b in zip(t, x) if a != 0)


def margins(z, t, margin, how):
    zt = normalize_row(z, how)
    return margin * (1.0 - t) + zt - _dot(t, zt)


def ldr_kl_row(z, t, lam, margin, how) -> float:
    """lam * log((1/K) sum_k exp(m_k / lam)), the paper's LDR-KL loss (primal form)."""
    m = margins(z, t, margin, how) / lam
    top = max(m)
    return lam * (top + math.log(sum(math.exp(v - top) for v in m) / len(m)))


def ldr_kl_dual_row(z, t, lam, margin, how) -> float:
    """The same loss as its DRO definition max_p sum_k p_k m_k - lam KL(p || uniform),
    evaluated at the maximiser p = softmax(m / lam)."""
    m = margins(z, t, margin, how)
    k = len(m)
    top = max(m / lam)
    w = np.array([math.exp(v / lam - top) for v in m])
    p = w / w.sum()
    kl = sum(pk * math.log(k * pk) for pk in p if pk > 0)
    return float(_dot(p, m) - lam * kl)


def aldr_kl_row(z, t, lam_prev, lam0, alpha, margin, how) -> tuple[float, float]:
    """One ALDR-KL evaluation as ``ALDRLoss_V1.forward`` computes it: returns (loss, new lambda).

    p = softmax(z~ / lam_prev) + 1e-5 renormalised to sum 1; KL = sum_k p_k log(K p_k);
    lam = lam0 - lam0 KL / (alpha log K); loss = LDR-KL with lam plus
    -(alpha log K / (2 lam0)) (lam - lam0)^2.
    """
    zt = normalize_row(z, how)
    k = len(zt)
    if k == 1:
        return ldr_kl_row(z, t, lam0, margin, how), lam0
    v = zt / lam_prev
    top = max(v)
    e = np.array([math.exp(x - top) for x in v])
    p = e / e.sum() + 1e-5
    p = p / p.sum()
    kl = sum(pk * math.log(k * pk) for pk in p)
    log_k = math.log(k)
    lam = lam0 - lam0 * kl / (alpha * log_k)
    extra = -0.5 * alpha * log_k / lam0 * (lam - lam0) ** 2
    return ldr_kl_row(z, t, lam, margin, how) + extra, lam


def ldr_kl(z, target, lam, margin, how, dual=False) -> np.ndarray:
    """Per-row losses of (N, C) logits; ``target`` is (N,) indices or (N, C) probabilities."""
    z = np.asarray(z, dtype=np.float64)
    row = ldr_kl_dual_row if dual else ldr_kl_row
    out = []
    for i, zi in enumerate(z):
        ti = target[i] if np.ndim(target) == 2 else one_hot(int(target[i]), z.shape[1])
        out.append(row(zi, np.asarray(ti, dtype=np.float64), lam, margin, how))
    return np.array(out)


def aldr_kl(z, target, lam_prev, lam0, alpha, margin, how) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (losses, new lambdas) of (N, C) logits with per-row previous lambdas."""
    z = np.asarray(z, dtype=np.float64)
    losses, lams = [], []
    for i, zi in enumerate(z):
        ti = target[i] if np.ndim(target) == 2 else one_hot(int(target[i]), z.shape[1])
        loss, lam = aldr_kl_row(
            zi, np.asarray(ti, dtype=np.float64), float(lam_prev[i]), lam0, alpha, margin, how
        )
        losses.append(loss)
        lams.append(lam)
    return np.array(losses), np.array(lams)
