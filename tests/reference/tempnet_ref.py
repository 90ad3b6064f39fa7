"""Float64 references of TempNet and its DRO loss (Qiu et al., ICML 2024), transcribed from
the paper's KL-DRO dual and the official code (zhqiu/TempNet); never imports softmaxkit."""

from __future__ import annotations

import math

import numpy as np


def tempnet_dro_ref(logits, target, tau, rho, ignore_index=-100, reduction="mean"):
    """Per token: tau * log( (1/V) sum_j exp((z_j - z_y)/tau) ) + rho * tau (the DRO dual)."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(tau, dtype=np.float64).reshape(-1)
    out, kept = [], 0
    for i, y in enumerate(np.asarray(target).tolist()):
        if y == ignore_index:
            out.append(0.0)
            continue
        kept += 1
        d = (z[i] - z[i, y]) / t[i]
        mx = d.max()
        lse = mx + math.log(np.exp(d - mx).sum())
        out.append(t[i] * (lse - math.log(z.shape[1])) + rho * t[i])
    out = np.array(out)
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    return out.sum() / max(kept, 1)


def tempnet_ref(x, w1, b1, w2, b2, scaler, u, c, tau_min, tau_max):
    """Eval-mode TempNet on one batch x (B, V), parameters as numpy float64."""
    x = np.asarray(x, dtype=np.float64)
    taus = []
    for row in x:
        r = row / max(np.linalg.norm(row), 1e-12)
        h = 1 / (1 + np.exp(-(w1 @ r + b1)))
        h = w2 @ h + b2
        e = np.exp(h / math.exp(scaler) - (h / math.exp(scaler)).max())
        w = e / e.sum()
        diff = float(u @ ((w - 1 / len(h)) * h) + c)
        taus.append((tau_max - tau_min) / (1 + math.exp(-diff)) + tau_min)
    return np.array(taus)[:, None]
