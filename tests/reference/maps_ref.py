"""Float64 NumPy transcriptions of the papers' formulas for the maps and StableMax CE.

Written directly from the equations, one row at a time, sharing nothing with the
implementation. Each function takes and returns NumPy arrays with the class axis last.
"""

from __future__ import annotations

import math

import numpy as np


def _rows(fn, x: np.ndarray, *args) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = [fn(row, *args) for row in x.reshape(-1, x.shape[-1])]
    return np.stack(out).reshape(x.shape) if out else np.zeros_like(x)


def softmax_row(row, temperature=1.0, keep=None):
    """Softmax of one row over kept entries (Bridle 1990); nothing kept -> zeros."""
    keep = np.ones(row.shape, bool) if keep is None else keep
    kept = [i for i in range(len(row)) if keep[i] and row[i] != -math.inf]
    out = np.zeros(len(row))
    if not kept:
        return out
    top = max(row[i] / temperature for i in kept)
    denom = sum(math.exp(row[i] / temperature - top) for i in kept)
    for i in kept:
        out[i] = math.exp(row[i] / temperature - top) / denom
    return out


def softmax(x, temperature=1.0, keep=None):
    x = np.asarray(x, dtype=np.float64)
    if keep is None:
        return _rows(softmax_row, x, temperature)
    keep = np.broadcast_to(keep, x.shape).reshape(-1, x.shape[-1])
    rows = x.reshape(-1, x.shape[-1])
    return np.stack([softmax_row(r, temperature, k) for r, k in zip(rows, keep)]).reshape(x.shape)


def log_softmax(x, temperature=1.0, keep=None):
    with np.errstate(divide="ignore"):
        return np.log(softmax(x, temperature, keep))


def s(value: float) -> float:
    """Prieto et al. 2025, eq. for s: x + 1 if x >= 0 else 1 / (1 - x)."""
    return value + 1.0 if value >= 0 else 1.0 / (1.0 - value)


def stablemax_row(row):
    terms = [s(v) for v in row]
    total = sum(terms)
    return np.array([t / total for t in terms]) if total > 0 else np.zeros(len(row))


def stablemax(x):
    return _rows(stablemax_row, x)


def log_stablemax(x):
    with np.errstate(divide="ignore"):
        return np.log(stablemax(x))


def stablemax_cross_entropy(x, target):
    """-log StableMax(x)_y per row."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([-math.log(stablemax_row(row)[t]) for row, t in zip(x, target)])


def clipped_softmax(x, gamma, zeta):
    """Bondarenko et al. 2023: clip((zeta - gamma) softmax(x) + gamma, 0, 1)."""
    return np.clip((zeta - gamma) * softmax(x) + gamma, 0.0, 1.0)


def topk_softmax_row(row, k, mode):
    """Nguyen et al. 2024: softmax over the k largest (ties to the lower index)."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
    out = np.zeros(len(row))
    if mode == "topk_then_softmax":
        sub = softmax_row(np.array([row[i] for i in order]))
        for j, i in enumerate(order):
            out[i] = sub[j]
    else:
        full = softmax_row(row)
        for i in order:
            out[i] = full[i]
    return out


def topk_softmax(x, k, mode="topk_then_softmax"):
    return _rows(topk_softmax_row, x, k, mode)
