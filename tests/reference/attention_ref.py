"""Float64 NumPy transcriptions of attention with the clipped softmax and of gated multi-head
attention (Bondarenko, Nagel, Blankevoort, "Quantizable Transformers: Removing Outliers by
Helping Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929).

Written from the paper's formulas (the clipped softmax clip((zeta - gamma) softmax(x) +
gamma, 0, 1); gated attention, sigmoid(pi(x)) multiplying each head's output before the
output projection) and the official code's gate details (the per-head gate reads the head's
slice of the hidden state; the per-head gate pools its pre-activation over the tokens before
the sigmoid), one query row and one head at a time. Shares nothing with the implementation.
"""

from __future__ import annotations

import math

import numpy as np


def _row_probs(scores, keep, gamma, zeta, clipped):
    """One query row: softmax over the kept keys (nothing kept -> zeros), then the clip."""
    kept = [j for j in range(len(scores)) if keep[j] and scores[j] != -math.inf]
    p = np.zeros(len(scores))
    if kept:
        top = max(scores[j] for j in kept)
        denom = sum(math.exp(scores[j] - top) for j in kept)
        for j in kept:
            p[j] = math.exp(scores[j] - top) / denom
    if not clipped:
        return p
    # the clip; a masked key has p = 0, so (zeta - gamma) 0 + gamma = gamma <= 0 clips to 0
    return np.array([min(1.0, max(0.0, (zeta - gamma) * pj + gamma)) for pj in p])


def attention(
    q,
    k,
    v,
    mask=None,
    *,
    causal=False,
    scale=None,
    gamma=-0.025,
    zeta=1.0,
    clipped=True,
    quantizer=None,
):
    """softmax or clipped-softmax attention of (..., L, E), (..., S, E), (..., S, Ev) arrays.

    ``mask``: boolean (True = attend) or additive float, broadcastable to (..., L, S);
    ``causal``: query i attends keys j <= i; ``quantizer``: a NumPy function of the
    probability matrix of one head (element-wise)."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    q = np.broadcast_to(q, (*batch, L, E)).reshape(-1, L, E)
    k = np.broadcast_to(k, (*batch, S, E)).reshape(-1, S, E)
    v = np.broadcast_to(v, (*batch, S, v.shape[-1])).reshape(-1, S, v.shape[-1])
    if mask is None:
        keep = np.ones((q.shape[0], L, S), bool)
        bias = np.zeros((q.shape[0], L, S))
    else:
        mask = np.broadcast_to(np.asarray(mask), (*batch, L, S)).reshape(-1, L, S)
        keep = mask if mask.dtype == bool else np.ones(mask.shape, bool)
        bias = np.zeros(mask.shape) if mask.dtype == bool else mask.astype(np.float64)
    out = np.zeros((q.shape[0], L, v.shape[-1]))
    for b in range(q.shape[0]):
        probs = np.zeros((L, S))
        for i in range(L):
            scores = np.array([scale * float(q[b, i] @ k[b, j]) + bias[b, i, j] for j in range(S)])
            row_keep = keep[b, i].copy()
            if causal:
                row_keep &= np.arange(S) <= i
            probs[i] = _row_probs(scores, row_keep, gamma, zeta, clipped)
        if quantizer is not None:
            probs = quantizer(probs)
        out[b] = probs @ v[b]
    return out.reshape(*batch, L, v.shape[-1])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gated_mha(
    x,
    key,
    value,
    params,
    *,
    num_heads,
    gate=None,
    gate_input="head_slice",
    gate_scale=1.0,
    keep=None,
    gamma=-0.025,
    zeta=1.0,
    clipped=True,
):
    """Gated multi-head attention of batch-first (N, L, E) / (N, S, E) arrays.

    ``params``: in_proj_weight (3E, E), in_proj_bias (3E,), out_weight (E, E), out_bias (E,)
    and the gate's: ``logit`` (H,) (unconditional); per head ``w`` (H, d) and ``b`` (H,),
    with an optional hidden layer ``w1`` (H, m, d), ``b1`` (H, m) (head slices); or
    ``w`` (H, E), ``b`` (H,) for all features (hidden: ``w1`` (m, E), ``b1`` (m,), ``w`` (H, m)).
    ``keep``: boolean (N, L, S) keep-mask (True = attend). Returns (N, L, E)."""
    x, key, value = (np.asarray(t, dtype=np.float64) for t in (x, key, value))
    N, L, E = x.shape
    H = num_heads
    d = E // H
    W, B = params["in_proj_weight"], params["in_proj_bias"]
    Q = x @ W[:E].T + B[:E]
    K = key @ W[E : 2 * E].T + B[E : 2 * E]
    V = value @ W[2 * E :].T + B[2 * E :]
    ctx = np.zeros((N, L, E))
    for n in range(N):
        for h in range(H):
            cols = slice(h * d, (h + 1) * d)
            m = None if keep is None else keep[n]
            head = attention(
                Q[n, :, cols],
                K[n, :, cols],
                V[n, :, cols],
                m,
                gamma=gamma,
                zeta=zeta,
                clipped=clipped,
            )
            if gate is not None:
                head = head * gate_scale * _gate(x[n], h, params, gate, gate_input, d)
            ctx[n, :, cols] = head
    return ctx @ params["out_weight"].T + params["out_bias"]


def _gate(x, h, params, gate, gate_input, d):
    """Head h's gate for one sequence x (L, E): (L, 1) per token, (1, 1) per head."""
    if gate == "unconditional_per_head":
        return sigmoid(params["logit"][h])
    feats = x[:, h * d : (h + 1) * d] if gate_input == "head_slice" else x
    if "w1" in params:
        w1 = params["w1"][h] if gate_input == "head_slice" else params["w1"]
        b1 = params["b1"][h] if gate_input == "head_slice" else params["b1"]
        feats = np.maximum(feats @ w1.T + b1, 0.0)
    pre = feats @ params["w"][h] + params["b"][h]  # (L,)
    if gate == "conditional_per_head":
        pre = np.full_like(pre, pre.mean())  # pooled over tokens before the sigmoid
    return sigmoid(pre)[:, None]
