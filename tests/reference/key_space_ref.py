"""Float64 transcription of the key-space diagnostics (Peng, An & Shang, ICLR 2025,
arXiv:2410.02284), one query at a time with numpy and scipy.

For a query q and keys k_v: z_v = q . k_v, p = softmax(z); the tokens ranked by p (a stable
descending sort: equal logits keep the vocabulary order); t = the top-1 token and
c_v = cos(k_v, k_t) (0 for a zero-norm key).

* rho: ``scipy.stats.spearmanr`` of (p_v, c_v) over ranks top+1 .. top+window (cut at V);
  NaN where it is undefined.
* share: sum of p_v over ranks 2 .. r whose token is one of the k highest c_v (v != t, ties
  by vocabulary order), divided by the sum of p_v over ranks 2 .. r.
* chance: k / (V - 1).

It shares nothing with the implementation (which ranks with topk, correlates average ranks
it computes itself and works from log-sum-exps in blocks of queries).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats


def _cosines(keys: np.ndarray, t: int) -> np.ndarray:
    norms = np.linalg.norm(keys, axis=1)
    out = np.zeros(keys.shape[0])
    if norms[t] == 0:
        return out
    for v in range(keys.shape[0]):
        if norms[v] > 0:
            out[v] = float(keys[v] @ keys[t]) / (norms[v] * norms[t])
    return out


def one_query(keys, q, *, top=10, window=90, neighbours=None, mass_ranks=100):
    """(top1, rho, share) of one query against float64 keys (V, d)."""
    keys = np.asarray(keys, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    n_vocab = keys.shape[0]
    k = math.ceil(n_vocab / 1024) if neighbours is None else neighbours
    z = keys @ q
    p = np.exp(z - z.max())
    p = p / p.sum()
    order = np.argsort(-z, kind="stable")
    t = int(order[0])
    c = _cosines(keys, t)
    win = order[top : min(top + window, n_vocab)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(stats.spearmanr(p[win], c[win]).statistic)
    others = [v for v in np.argsort(-c, kind="stable") if v != t]
    near = set(int(v) for v in others[:k])
    ranked = order[1 : min(mass_ranks, n_vocab)]
    total = sum(p[v] for v in ranked)
    inside = sum(p[v] for v in ranked if int(v) in near)
    return t, rho, inside / total


def report(keys, queries, **kwargs):
    """(top1 list, rho array, share array, chance) over the rows of ``queries`` (n, d)."""
    keys = np.asarray(keys, dtype=np.float64)
    out = [one_query(keys, q, **kwargs) for q in np.asarray(queries, dtype=np.float64)]
    n_vocab = keys.shape[0]
    k = kwargs.get("neighbours") or math.ceil(n_vocab / 1024)
    top1 = [o[0] for o in out]
    rho = np.array([o[1] for o in out])
    share = np.array([o[2] for o in out])
    return top1, rho, share, k / (n_vocab - 1)
