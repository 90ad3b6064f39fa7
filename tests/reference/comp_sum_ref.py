"""Float64 NumPy transcriptions of the comp-sum losses of Mao, Mohri & Zhong (ICML 2023).

Written from the paper's definitions, one row at a time, sharing nothing with the
implementation: the comp-sum loss is Phi^tau applied to u = sum_{y' != y} exp(h_y' - h_y),
and the smooth adversarial term is the Euclidean norm of the change of the vector of
score differences Delta_h(x, y) = (h(x, y') - h(x, y))_{y' != y}. For a linear model the
sup of that term over a perturbation ball has a closed form (l2 ball) or a finite
search (l_inf ball: a convex function is maximised at a vertex of the box), which lets
tests check the PGD estimate against the exact value.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def phi(u: float, tau: float) -> float:
    """Phi^tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau), log(1 + u) at tau = 1."""
    if tau == 1.0:
        return math.log1p(u)
    # ((1 + u)^(1 - tau) - 1) / (1 - tau), written with expm1/log1p so small u keeps its digits
    return math.expm1((1.0 - tau) * math.log1p(u)) / (1.0 - tau)


def _u(row, y: int) -> float:
    return sum(math.exp(row[k] - row[y]) for k in range(len(row)) if k != y)


def comp_sum(x, target, tau: float) -> np.ndarray:
    """Per-row comp-sum loss for class-index targets, rows of x (N, C)."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([phi(_u(row, int(y)), tau) for row, y in zip(x, target)])


def comp_sum_soft(x, t, tau: float) -> np.ndarray:
    """Expected comp-sum loss sum_k t_k l(x, k) for probability targets t (N, C)."""
    x, t = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    out = []
    for row, weights in zip(x, t):
        out.append(sum(w * phi(_u(row, k), tau) for k, w in enumerate(weights) if w != 0))
    return np.array(out)


def softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def delta(row, y: int) -> np.ndarray:
    """Delta_h(x, y): the scores' differences h(x, y') - h(x, y) for y' != y."""
    return np.array([row[k] - row[y] for k in range(len(row)) if k != y])


def smoothing_term(z_adv, z, target) -> np.ndarray:
    """Per-row || Delta_h(x', y) - Delta_h(x, y) ||_2 at given scores of x' and x."""
    z_adv, z = np.asarray(z_adv, dtype=np.float64), np.asarray(z, dtype=np.float64)
    return np.array(
        [np.linalg.norm(delta(a, int(y)) - delta(b, int(y))) for a, b, y in zip(z_adv, z, target)]
    )


def smoothing_term_soft(z_adv, z, t) -> np.ndarray:
    z_adv, z = np.asarray(z_adv, dtype=np.float64), np.asarray(z, dtype=np.float64)
    out = []
    for a, b, weights in zip(z_adv, z, np.asarray(t, dtype=np.float64)):
        out.append(
            sum(w * np.linalg.norm(delta(a, k) - delta(b, k)) for k, w in enumerate(weights))
        )
    return np.array(out)


def _difference_map(weight, y: int) -> np.ndarray:
    """A with Delta_h(x + d, y) - Delta_h(x, y) = A d for h(x) = W x + b."""
    weight = np.asarray(weight, dtype=np.float64)
    return np.stack([weight[k] - weight[y] for k in range(weight.shape[0]) if k != y])


def linear_sup_l2(weight, y: int, radius: float) -> float:
    """sup over ||d||_2 <= radius of ||A d||_2 = radius * largest singular value of A."""
    return radius * float(np.linalg.svd(_difference_map(weight, y), compute_uv=False)[0])


def linear_sup_linf(weight, y: int, radius: float) -> float:
    """sup over ||d||_inf <= radius of ||A d||_2, attained at a vertex of the box."""
    a = _difference_map(weight, y)
    best = 0.0
    for signs in itertools.product((-1.0, 1.0), repeat=a.shape[1]):
        best = max(best, float(np.linalg.norm(a @ (radius * np.array(signs)))))
    return best
