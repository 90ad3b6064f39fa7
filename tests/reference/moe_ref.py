"""Float64 NumPy transcriptions of the MoE gates and layer, one token at a time.

- Top-K sparse softmax gate: G(x) = softmax(TopK(W x + b, K)), TopK keeping the K largest
  logits and setting the others to -inf (Nguyen, Akbarian, Yan, Ho, ICLR 2024,
  arXiv:2309.13850).
- Dense-to-sparse gate and activation gate (Nguyen, Akbarian, Ho, ICML 2024,
  arXiv:2401.13875): softmax(W x / tau + b) and softmax(sigma(W x) / tau + b) (bias as an
  additive log-weight), or with the bias inside: softmax((W x + b)/tau),
  softmax(sigma(W x + b)/tau).
- Switch load-balancing loss E * sum_i f_i P_i (arXiv:2101.03961) and the ST-MoE router
  z-loss mean_t logsumexp(logits_t)^2 (arXiv:2202.08906).
- The dense MoE: y_t = sum_i C_ti E_i(x_t), every expert on every token.

Shares nothing with the implementation.
"""

from __future__ import annotations

import math

import numpy as np


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def topk_gate(x, w, b, k):
    """(T, E) combine matrix of the top-K gate."""
    x, w, b = (np.asarray(a, dtype=np.float64) for a in (x, w, b))
    out = np.zeros((x.shape[0], w.shape[0]))
    for t in range(x.shape[0]):
        logits = [float(w[i] @ x[t] + b[i]) for i in range(w.shape[0])]
        chosen = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:k]
        probs = _softmax([logits[i] for i in chosen])
        for i, p in zip(chosen, probs):
            out[t, i] = p
    return out


def temperature_gate(x, w, b, tau, activation=None, inside=False):
    """(T, E) combine matrix of the dense-to-sparse (activation=None) or activation gate."""
    x, w, b = (np.asarray(a, dtype=np.float64) for a in (x, w, b))
    act = activation or (lambda v: v)
    out = np.zeros((x.shape[0], w.shape[0]))
    for t in range(x.shape[0]):
        if inside:
            scores = [act(float(w[i] @ x[t] + b[i])) / tau for i in range(w.shape[0])]
        else:
            scores = [act(float(w[i] @ x[t])) / tau + float(b[i]) for i in range(w.shape[0])]
        out[t] = _softmax(scores)
    return out


def load_balancing_loss(logits, chosen):
    """E * sum_i f_i P_i, f_i = share of the T*K assignments routed to i."""
    logits = np.asarray(logits, dtype=np.float64)
    tokens, experts = logits.shape
    probs = np.array([_softmax(list(r)) for r in logits])
    f = np.zeros(experts)
    for row in chosen:
        for i in row:
            f[i] += 1.0
    f /= tokens * len(chosen[0])
    return experts * float((f * probs.mean(0)).sum())


def router_z_loss(logits):
    logits = np.asarray(logits, dtype=np.float64)
    total = 0.0
    for r in logits:
        m = r.max()
        total += (m + math.log(np.exp(r - m).sum())) ** 2
    return total / logits.shape[0]


def dense_moe(x, combine, expert_weights):
    """y_t = sum_i C_ti W_i x_t for linear experts W_i (E, d_out, d_in)."""
    x, c, ws = (np.asarray(a, dtype=np.float64) for a in (x, combine, expert_weights))
    out = np.zeros((x.shape[0], ws.shape[1]))
    for t in range(x.shape[0]):
        for i in range(ws.shape[0]):
            out[t] += c[t, i] * (ws[i] @ x[t])
    return out
