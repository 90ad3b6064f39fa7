"""Float64 transcription of the probability -> possibility transforms of Π-NeSy.

Baaj & Marquis, "Π-NeSy: A Possibilistic Neuro-Symbolic Approach", arXiv:2504.07055;
official code ibaaj/pi-nesy, ``possprob_transformations.py``:

* ``antipignistic_transformation``: pi_i = sum_j min(p_i, p_j);
* ``minimum_specificity_principle_transformation``: sort keys by decreasing p (Python's
  stable sort), then pi of the key at sorted position i = sum over positions >= i of
  min(p_k, p_i). ``official_minimum_specificity`` is that loop, ties included as the
  official code treats them; ``minimum_specificity`` is the tie-consistent definition
  pi_i = sum_{j: p_j <= p_i} p_j.

Also the pignistic transform of a possibility distribution (Dubois & Prade), whose
inverse the antipignistic transform is. Plain loops; shares nothing with the
implementation.
"""

from __future__ import annotations

import numpy as np


def antipignistic(p) -> np.ndarray:
    p = [float(v) for v in p]
    return np.array([sum(min(pi, pj) for pj in p) for pi in p])


def minimum_specificity(p) -> np.ndarray:
    p = [float(v) for v in p]
    return np.array([sum(pj for pj in p if pj <= pi) for pi in p])


def official_minimum_specificity(p) -> np.ndarray:
    p = [float(v) for v in p]
    order = sorted(range(len(p)), key=lambda i: p[i], reverse=True)
    out = np.zeros(len(p))
    for pos, i in enumerate(order):
        out[i] = sum(min(p[k], p[i]) for k in order[pos:])
    return out


def max_normalised(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    top = p.max() if p.size else 0.0
    return p / top if top > 0 else np.zeros_like(p)


def pignistic(pi) -> np.ndarray:
    """p_(i) = sum_{j >= i} (pi_(j) - pi_(j+1)) / j over pi sorted decreasingly (pi_(n+1) = 0)."""
    pi = np.asarray(pi, dtype=np.float64)
    order = np.argsort(-pi, kind="stable")
    s = list(pi[order]) + [0.0]
    n = len(pi)
    sorted_p = [sum((s[j] - s[j + 1]) / (j + 1) for j in range(i, n)) for i in range(n)]
    out = np.zeros(n)
    out[order] = sorted_p
    return out


def rows(fn, probs) -> np.ndarray:
    """Apply a row transform to every row of a 2-D array."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.array([fn(r) for r in probs]).reshape(probs.shape)
