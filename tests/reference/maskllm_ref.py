"""Float64 transcription of MaskLLM's mask sampling, prior initialisation, schedules and
regulariser, from the paper (Fang et al., "MaskLLM: Learnable Semi-Structured Sparsity for
Large Language Models", NeurIPS 2024, arXiv:2409.17481, eqs. 3-6) and the official code
(NVlabs/MaskLLM ``learnable_sparsity/differentiable_mask.py``, ``pretrain_maskllm.py``).

Plain Python loops over groups and candidates, sharing nothing with the implementation:

* candidates: every 0/1 vector of length M with N ones, in the official order
  (2:4: 1100, 1010, 1001, 0110, 0101, 0011);
* a sample: y_c = exp((k pi_c + g_c) / tau) / sum_j exp((k pi_j + g_j) / tau),
  g_c = -log E_c (E_c ~ Exp(1), given), mask = sum_c y_c S_c;
* eval mask: S_{argmax pi};
* prior: pi_c += (overlap(S_c, prior) - 1) * std(pi) * strength (std with Bessel's correction,
  torch's default, as the official ``gate.std()``);
* schedules: v = v0 + (v1 - v0) * t / T;
* regulariser (added to the loss): -lam * (1 - t / T) * sum_layers sum (W * mask)^2.
"""

from __future__ import annotations

import math

import numpy as np

OFFICIAL_2_4 = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]]
OFFICIAL_1_4 = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def candidates(n: int, m: int) -> np.ndarray:
    table = {(2, 4): OFFICIAL_2_4, (1, 4): OFFICIAL_1_4}
    return np.array(table[(n, m)], dtype=np.float64)


def soft_mask(logits, noise, n: int, m: int, scale: float, tau: float) -> np.ndarray:
    """logits, noise: (G, C) -> (G, M)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, math.comb(m, n))
    noise = np.asarray(noise, dtype=np.float64).reshape(logits.shape)
    cands = candidates(n, m)
    out = np.zeros((logits.shape[0], m))
    for g in range(logits.shape[0]):
        z = [(scale * float(logits[g, c]) + float(noise[g, c])) / tau for c in range(len(cands))]
        top = max(z)
        e = [math.exp(zc - top) for zc in z]
        total = sum(e)
        for c, ec in enumerate(e):
            for k in range(m):
                out[g, k] += ec / total * cands[c, k]
    return out


def hard_mask(logits, n: int, m: int) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, math.comb(m, n))
    cands = candidates(n, m)
    return np.array([cands[int(np.argmax(row))] for row in logits])


def gumbel_noise(exponentials) -> np.ndarray:
    return -np.log(np.asarray(exponentials, dtype=np.float64))


def prior_init(gate, prior_mask, n: int, m: int, strength: float) -> np.ndarray:
    gate = np.asarray(gate, dtype=np.float64)
    prior = np.asarray(prior_mask, dtype=np.float64).reshape(-1, m)
    cands = candidates(n, m)
    std = float(np.std(gate, ddof=1))
    out = gate.copy()
    for g in range(gate.shape[0]):
        for c in range(len(cands)):
            overlap = sum(cands[c, k] * prior[g, k] for k in range(m))
            out[g, c] += (overlap - 1.0) * std * strength
    return out


def magnitude_mask(weight, n: int, m: int) -> np.ndarray:
    w = np.abs(np.asarray(weight, dtype=np.float64)).reshape(-1, m)
    keep = np.zeros(w.shape, dtype=bool)
    for g in range(w.shape[0]):
        # stable: the earlier of equal magnitudes wins
        order = sorted(range(m), key=lambda k: (-w[g, k], k))
        for k in order[:n]:
            keep[g, k] = True
    return keep.reshape(np.shape(weight))


def linear(start: float, end: float, t: int, total: int) -> float:
    return start + (end - start) * t / total


def regularizer(weights, masks, lam: float, t: int, total: int) -> float:
    norm = sum(
        float(np.sum((np.asarray(w) * np.asarray(mk)) ** 2)) for w, mk in zip(weights, masks)
    )
    return -lam * (1.0 - t / total) * norm
