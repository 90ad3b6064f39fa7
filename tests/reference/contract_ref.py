"""Float64 transcriptions of documented formulas the other reference files do not cover.

Used by the contract harness (tests/contract/); each follows the public docstring's formula,
one row at a time with plain Python floats, sharing nothing with the implementation.
"""

from __future__ import annotations

import math

import numpy as np

from tests.reference import maps_ref


def _rows(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]) if x.size else x.reshape(0, max(x.shape[-1:] or (0,)))


def stablemax(x, keep=None) -> np.ndarray:
    """StableMax over the kept entries: s(x_i) / sum_kept s(x_j); dropped entries (and a row
    with nothing kept) give 0 (Prieto et al. 2025, with the package's mask convention)."""
    x = np.asarray(x, dtype=np.float64)
    keep = np.ones(x.shape, bool) if keep is None else np.broadcast_to(keep, x.shape)
    out = []
    for row, k in zip(_rows(x), keep.reshape(-1, x.shape[-1])):
        terms = [maps_ref.s(float(v)) if kk else 0.0 for v, kk in zip(row, k)]
        total = sum(terms)
        out.append([t / total if total > 0 else 0.0 for t in terms])
    return np.array(out, dtype=np.float64).reshape(x.shape)


def log_stablemax(x, keep=None) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(stablemax(x, keep))


def gumbel_noise(shape, seed: int) -> np.ndarray:
    """g = -log E, E ~ Exp(1) drawn in float64 from ``torch.Generator().manual_seed(seed)``
    in row-major order (the documented noise of ``gumbel_softmax`` with that generator)."""
    import torch

    e = torch.empty(tuple(shape), dtype=torch.float64)
    e.exponential_(generator=torch.Generator().manual_seed(seed))
    return np.array([-math.log(float(v)) for v in e.reshape(-1)]).reshape(shape)


def gumbel_softmax(logits, tau: float, seed: int, hard: bool = False) -> np.ndarray:
    """softmax((logits + g) / tau); ``hard``: the one-hot of its argmax (lowest index on
    ties)."""
    z = np.asarray(logits, dtype=np.float64)
    y = maps_ref.softmax((z + gumbel_noise(z.shape, seed)) / tau)
    if not hard:
        return y
    out = np.zeros_like(y).reshape(-1, z.shape[-1])
    for i, row in enumerate(y.reshape(-1, z.shape[-1])):
        out[i, int(np.argmax(row))] = 1.0
    return out.reshape(z.shape)


def topk_indices(x, k: int) -> np.ndarray:
    """The k largest entries' indices per row, largest first (ties to the lower index)."""
    return np.array(
        [sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in _rows(x)]
    ).reshape(*np.shape(x)[:-1], k)
