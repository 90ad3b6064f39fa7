"""Float64 NumPy transcription of MECO (Jiang et al., ICML 2023, arXiv:2306.07485).

Written from the algorithm, in the paper's linear space, sharing nothing with the
implementation. The model is p(x) = exp(f(x)) / Z, Z = E_{z~q}[exp(f(z)) / q(z)]:

    u_t = (1 - gamma) u_{t-1} + gamma * mean_j exp(f(z_j)) / q(z_j)      (u_1: the batch mean)
    grad = -mean_i grad f(x_i) + (1 / u_t) mean_j exp(f(z_j)) / q(z_j) grad f(z_j)

and the objective value -mean_i f(x_i) + log u_t.
"""

from __future__ import annotations

import math

import numpy as np


def meco_steps(batches, gamma: float):
    """Run the recursion over ``batches`` of (f_data, f_noise, log_q) arrays.

    Returns, per step, (u_t, value, dvalue/df_data, dvalue/df_noise) where the last two are
    the coefficients of grad f in the stochastic compositional gradient above.
    """
    out = []
    u = None
    for f_data, f_noise, log_q in batches:
        f_data = np.asarray(f_data, np.float64).ravel()
        f_noise = np.asarray(f_noise, np.float64).ravel()
        log_q = np.broadcast_to(np.asarray(log_q, np.float64), f_noise.shape).ravel()
        ratios = np.array([math.exp(f - lq) for f, lq in zip(f_noise, log_q)])
        batch = ratios.mean()
        u = batch if u is None else (1 - gamma) * u + gamma * batch
        value = -f_data.mean() + math.log(u)
        d_data = -np.ones_like(f_data) / f_data.size
        d_noise = ratios / (f_noise.size * u)
        out.append((u, value, d_data, d_noise))
    return out


def gaussian_log_z(sigma: float = 1.0) -> float:
    """log of the integral of exp(-(x - mu)^2 / (2 sigma^2)): log(sqrt(2 pi) sigma)."""
    return 0.5 * math.log(2 * math.pi) + math.log(sigma)


def gaussian_ratio_relative_variance(mu: float, s: float) -> float:
    """Var_q[w] / Z^2 for w = exp(f(z)) / q(z), f(z) = -(z - mu)^2 / 2, q = N(0, s^2).

    E_q[w^2] = int exp(-(z - mu)^2) sqrt(2 pi) s exp(z^2 / (2 s^2)) dz
             = sqrt(2 pi) s sqrt(pi / a) exp(mu^2 / a - mu^2),  a = 1 - 1 / (2 s^2) > 0.
    """
    a = 1 - 1 / (2 * s * s)
    second = math.sqrt(2 * math.pi) * s * math.sqrt(math.pi / a) * math.exp(mu * mu / a - mu * mu)
    z2 = 2 * math.pi
    return second / z2 - 1
