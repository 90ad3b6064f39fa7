"""Float64 transcriptions of sparsemax, 1.5-entmax and alpha-entmax, one row at a time.

Written from the papers with plain Python floats, sharing nothing with the
implementation (which never sorts a full row and uses Newton steps and a partial sort):

* sparsemax: Martins & Astudillo 2016 (arXiv:1602.02068), Algorithm 1: sort the row,
  the support size is the largest k with 1 + k z_(k) > sum_{j<=k} z_(j), then
  tau = (sum_{j<=k} z_(j) - 1) / k.
* alpha-entmax, any alpha > 1: Peters, Niculae & Martins 2019 (arXiv:1905.05702),
  p_i = [(alpha - 1) x_i - tau]_+^(1/(alpha - 1)); tau by bisection on sum_i p_i = 1,
  run until the bracket stops shrinking in float64. For alpha = 2 and alpha = 1.5 the
  threshold is then re-solved in closed form on the support the bisection found
  (linear and quadratic equations), so those two are exact.
* Jacobian: dp/dx = diag(w) - w w^T / sum(w), w_i = p_i^(2 - alpha) on the support.

Every function takes and returns NumPy arrays with the simplex axis last. ``-inf``
entries get 0; a row with no finite entry gives zeros.
"""

from __future__ import annotations

import math

import numpy as np


def _rows(fn, x, *args) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros_like(x)
    out = [fn([float(v) for v in row], *args) for row in x.reshape(-1, x.shape[-1])]
    return np.array(out, dtype=np.float64).reshape(x.shape)


def sparsemax_row(row: list[float]) -> list[float]:
    finite = [v for v in row if v != -math.inf]
    if not finite:
        return [0.0] * len(row)
    z = sorted(finite, reverse=True)
    running, k, k_sum = 0.0, 0, 0.0
    for j, zj in enumerate(z, start=1):
        running += zj
        if 1.0 + j * zj > running:
            k, k_sum = j, running
    tau = (k_sum - 1.0) / k
    return [max(v - tau, 0.0) if v != -math.inf else 0.0 for v in row]


def entmax_row(row: list[float], alpha: float) -> list[float]:
    finite = [v for v in row if v != -math.inf]
    if not finite:
        return [0.0] * len(row)
    b = alpha - 1.0
    top = max(finite)
    scaled = [b * (v - top) for v in finite]  # <= 0, with max 0

    def mass(tau: float) -> float:
        return sum(max(s - tau, 0.0) ** (1.0 / b) for s in scaled)

    lo, hi = -1.0, 0.0  # mass(-1) >= 1 (the top entry alone gives 1), mass(0) = 0
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if mass(mid) >= 1.0:
            lo = mid
        else:
            hi = mid
    tau = lo
    support = [s for s in scaled if s > tau]
    k = len(support)
    if alpha == 2.0:  # sum_S (s - tau) = 1
        tau = (sum(support) - 1.0) / k
    elif alpha == 1.5:  # sum_S (s - tau)^2 = 1, the smaller root
        mean = sum(support) / k
        spread = sum((s - mean) ** 2 for s in support)
        tau = mean - math.sqrt(max((1.0 - spread) / k, 0.0))
    out = []
    for v in row:
        if v == -math.inf:
            out.append(0.0)
        else:
            out.append(max(b * (v - top) - tau, 0.0) ** (1.0 / b))
    total = sum(out)
    return [o / total for o in out]


def sparsemax(x) -> np.ndarray:
    return _rows(sparsemax_row, x)


def entmax15(x) -> np.ndarray:
    return _rows(entmax_row, x, 1.5)


def entmax(x, alpha: float) -> np.ndarray:
    return _rows(entmax_row, x, float(alpha))


def jacobian(p, alpha: float) -> np.ndarray:
    """dp/dx for one output row p of alpha-entmax (alpha = 2: sparsemax)."""
    p = np.asarray(p, dtype=np.float64)
    w = np.array([pi ** (2.0 - alpha) if pi > 0 else 0.0 for pi in p])
    return np.diag(w) - np.outer(w, w) / w.sum()


def alpha_derivative(row, alpha: float, h: float = 1e-5) -> np.ndarray:
    """dp/dalpha of one row by a central difference of the reference map."""
    row = [float(v) for v in row]
    up = np.array(entmax_row(row, alpha + h))
    down = np.array(entmax_row(row, alpha - h))
    return (up - down) / (2 * h)


def tsallis_objective(p, x, alpha: float) -> float:
    """p.x + H_alpha(p), H_alpha(p) = sum_j (p_j - p_j^alpha) / (alpha (alpha - 1))."""
    p = np.asarray(p, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    entropy = float(np.sum(p - p**alpha)) / (alpha * (alpha - 1.0))
    return float(np.dot(p, x)) + entropy
