"""Float64 transcriptions for Equiangular Basis Vectors (Shen et al., CVPR 2023,
arXiv:2303.11637) and the cosine classifier (Zhai & Wu 2019, arXiv:1811.12649).

Written from the official ``Generate_EBV/Generate_EBV.py`` loop (row slices, autograd of
sum relu(|B_s B^T| - I_s - t), SGD) and the paper's logits, sharing nothing with the
implementation (which forms the whole Gram matrix and writes the gradient out).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def ebv_official_steps(
    init: torch.Tensor, threshold: float, lr: float, steps: int, slice_size: int = 3
) -> torch.Tensor:
    """``steps`` iterations of the official generator from ``init`` (N, d), in float64, with
    the official row slices; returns the basis normalised as the loop would next see it."""
    basis = torch.nn.Parameter(torch.nn.functional.normalize(init.double(), dim=1))
    opt = torch.optim.SGD([basis], lr=lr)
    n = basis.shape[0]
    for _ in range(steps):
        basis.data.copy_(torch.nn.functional.normalize(basis.data, dim=1))
        for i in range(math.ceil(n / slice_size)):
            start, end = slice_size * i, min(n, slice_size * (i + 1))
            e = torch.nn.functional.one_hot(torch.arange(start, end), n).double()
            m = (basis[start:end] @ basis.T).abs() - e
            torch.relu(m - threshold).sum().backward()
        opt.step()
        opt.zero_grad()
    return torch.nn.functional.normalize(basis.data, dim=1)


def max_abs_cos(basis) -> float:
    """max over i != j of |cos(b_i, b_j)|, one pair at a time."""
    b = np.asarray(basis, dtype=np.float64)
    worst = 0.0
    for i in range(len(b)):
        for j in range(len(b)):
            if i != j:
                c = b[i] @ b[j] / (np.linalg.norm(b[i]) * np.linalg.norm(b[j]))
                worst = max(worst, abs(c))
    return worst


def cosine_logits(f, proxies, temperature: float) -> np.ndarray:
    """z[n, c] = cos(f_n, w_c) / temperature, one entry at a time."""
    f, w = np.asarray(f, np.float64), np.asarray(proxies, np.float64)
    out = np.zeros((len(f), len(w)))
    for n in range(len(f)):
        for c in range(len(w)):
            out[n, c] = f[n] @ w[c] / (np.linalg.norm(f[n]) * np.linalg.norm(w[c]))
    return out / temperature


def cross_entropy(z, y) -> float:
    z = np.asarray(z, np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    return float(np.mean(lse - z[np.arange(len(z)), np.asarray(y)]))
