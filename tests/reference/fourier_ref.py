"""Float64 reference of the Fourier Head (Gillman et al., ICLR 2025, arXiv 2410.22269),
transcribed from the paper's formulas and the official code's conventions, with plain loops
and complex arithmetic; it never imports softmaxkit."""

from __future__ import annotations

import cmath
import math

import numpy as np


def fourier_head_ref(x, weight, bias, num_bins, num_frequencies, eps=1e-5, gamma=1e-6):
    """x (B, D), weight (2(N+1), D), bias (2(N+1),) as numpy float64.

    Returns (P (B, m), log(P + eps) (B, m), regulariser (float), c (B, N+1) complex)."""
    x, weight, bias = (np.asarray(t, dtype=np.float64) for t in (x, weight, bias))
    n = num_frequencies
    edges = np.linspace(-1.0, 1.0, num_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    b = x.shape[0]
    probs = np.zeros((b, num_bins))
    coeffs = np.zeros((b, n + 1), dtype=np.complex128)
    reg_rows = []
    for r in range(b):
        h = weight @ x[r] + bias
        a = [complex(h[j], h[n + 1 + j]) for j in range(n + 1)]
        c = [sum(a[j + k] * a[j].conjugate() for j in range(n + 1 - k)) for k in range(n + 1)]
        coeffs[r] = c
        p = []
        for xm in centers:
            s = 0.5
            for k in range(1, n + 1):
                s += (c[k] / c[0].real * cmath.exp(1j * math.pi * k * xm)).real
            p.append(s)
        p = np.array(p)
        probs[r] = p / p.sum()
        reg_rows.append(sum(2 * math.pi**2 * k**2 * abs(c[k]) ** 2 for k in range(n + 1)))
    reg = gamma * 2 * float(np.mean(reg_rows)) if b else 0.0
    return probs, np.log(probs + eps), reg, coeffs


def pdf_from_a_ref(a, points):
    """The Fejér-Riesz form |sum_j a_j e^{i pi j x}|^2 / (2 c_0) at ``points``."""
    c0 = sum(abs(v) ** 2 for v in a)
    return np.array(
        [
            abs(sum(v * cmath.exp(1j * math.pi * j * t) for j, v in enumerate(a))) ** 2 / (2 * c0)
            for t in points
        ]
    )


def smoothness_ref(p, max_sigma=100):
    """The paper's smoothness metric (official ``smoothness_metric.py``): the sum over
    sigma = 1..100 of (6/pi^2)/sigma^2 * ||p - G_sigma * p||_2, with G_sigma the Gaussian
    filter of scipy's ``gaussian_filter1d(p, sigma, mode="wrap", radius=len(p) - 1)``."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    radius = m - 1
    offsets = np.arange(-radius, radius + 1)
    total = 0.0
    for sigma in range(1, max_sigma + 1):
        w = np.exp(-0.5 * (offsets / sigma) ** 2)
        w /= w.sum()
        filtered = np.zeros(m)
        for i in range(m):
            filtered[i] = sum(w[t] * p[(i + d) % m] for t, d in enumerate(offsets))
        total += 6 / math.pi**2 / sigma**2 * np.linalg.norm(p - filtered)
    return total


def smoothness_matrices(m, max_sigma=100):
    """(max_sigma, m, m) float64: the wrap-mode Gaussian filters of :func:`smoothness_ref` as
    circulant matrices (row i holds the weights of p[j] in the filtered p[i])."""
    offsets = np.arange(-(m - 1), m)
    mats = np.zeros((max_sigma, m, m))
    for s in range(1, max_sigma + 1):
        w = np.exp(-0.5 * (offsets / s) ** 2)
        w /= w.sum()
        for i in range(m):
            np.add.at(mats[s - 1, i], (i + offsets) % m, w)
    return mats


def smoothness_batch_ref(probs, mats):
    """:func:`smoothness_ref` of every row of ``probs`` (B, m) with precomputed ``mats``."""
    p = np.asarray(probs, dtype=np.float64)
    sig = np.arange(1, mats.shape[0] + 1)
    filtered = np.einsum("sij,bj->bsi", mats, p)
    dist = np.linalg.norm(p[:, None, :] - filtered, axis=-1)
    return (dist * (6 / math.pi**2) / sig**2).sum(-1)
