"""Float64 transcription of ⊥Grad (Prieto et al. 2025, arXiv:2501.04697, Definition 7).

Eq. 12: grad_perp = grad - (theta . grad / theta . theta) theta, per parameter tensor
flattened; the official code then rescales grad_perp to the norm of grad. Plain NumPy,
shares nothing with the implementation.
"""

from __future__ import annotations

import numpy as np


def perpendicular(w, g, rescale: bool = True) -> np.ndarray:
    """The projected (and optionally rescaled) gradient, with the shape of ``g``."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    wf, gf = w.reshape(-1), g.reshape(-1)
    ww = float(wf @ wf)
    if ww == 0.0:
        return g.copy()  # no direction to remove
    out = gf - (float(wf @ gf) / ww) * wf
    if rescale:
        n_out = float(np.sqrt(out @ out))
        out = out * (float(np.sqrt(gf @ gf)) / n_out) if n_out > 0 else np.zeros_like(out)
    return out.reshape(g.shape)


def adamw_step(w, g, m, v, step, lr, betas, eps, weight_decay):
    """One AdamW update (Loshchilov & Hutter 2019, torch's bias-corrected form).

    Returns the new (w, m, v).
    """
    beta1, beta2 = betas
    w = w * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
