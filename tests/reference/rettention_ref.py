"""Float64 NumPy transcription of Re-ttention (Chen et al., NeurIPS 2025, arXiv:2505.22918).

Written from the paper's equations and the official processors' step logic
(``cccrrrccc/Re-ttention``, ``module/*_processor.py``), one query row at a time with dense
(S, S) scores, sharing nothing with the implementation:

* full attention :math:`A_{ij} = e^{s_{ij}} / \\sum_t e^{s_{it}}` over the kept keys;
* the sparse set :math:`S_i = \\{j : |i - j| \\le \\lfloor w/2 \\rfloor\\}` (official
  ``create_local_attention_mask``) intersected with the kept keys;
* the cached ratio :math:`\\rho_i = \\sum_{j \\in S_i} e^{s_{ij}} / \\sum_j e^{s_{ij}}` (official
  ``get_attention_scores_and_ratio``: masked denominator over full denominator);
* the reshaped sparse attention :math:`\\rho_i e^{s_{ij}} / \\sum_{t \\in S_i} e^{s_{it}}`
  (official ``get_attention_scores_with_denominator_ratio``: denominator divided by rho);
* refresh: residual = full output - reshaped sparse output; sparse step: reshaped sparse
  output + residual, then rho += drift (official ``cached_ratio += 0.04``).
"""

from __future__ import annotations

import math

import numpy as np


def band(size: int, window: int) -> np.ndarray:
    """The official band |i - j| <= window // 2 as a dense (S, S) boolean array."""
    half = window // 2
    out = np.zeros((size, size), dtype=bool)
    for i in range(size):
        for j in range(size):
            out[i, j] = abs(i - j) <= half
    return out


def cog_mask(seq_length: int, always_attended: int, frames: int, window: int) -> np.ndarray:
    """The official CogVideoX mask (``generate_sliding_window_attention_mask``), loop by
    loop: the first ``always_attended`` rows and columns are all kept; a token at in-frame
    offset i keeps offsets max(0, i - w // 2) .. min(F, i + w // 2 + 1) - 1 of its own frame
    and of every other frame."""
    frame_size = (seq_length - always_attended) // frames
    mask = np.zeros((seq_length, seq_length), dtype=bool)
    mask[:always_attended, :] = True
    mask[:, :always_attended] = True
    half = window // 2
    for j in range(frames):
        frame_start = always_attended + j * frame_size
        for i in range(frame_size):
            token = frame_start + i
            start, end = max(0, i - half), min(frame_size, i + half + 1)
            for other in range(frames):
                other_start = always_attended + other * frame_size
                mask[token, other_start + start : other_start + end] = True
    return mask


def _row_terms(scores: np.ndarray, keep: np.ndarray):
    """exp(s_j - max) over the kept entries of one row (zeros elsewhere), and the max."""
    kept = [j for j in range(len(scores)) if keep[j]]
    e = np.zeros(len(scores))
    if not kept:
        return e
    top = max(scores[j] for j in kept)
    for j in kept:
        e[j] = math.exp(scores[j] - top)
    return e


def _scores(q, k, scale):
    return (q @ k.T) * scale


def full_attention(q, k, v, key_keep=None, scale=None):
    """Softmax attention of one head: q, k (S, E), v (S, Ev); key_keep (S,) bool or None.
    A row with no kept key gives zeros."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep = np.ones(k.shape[0], bool) if key_keep is None else np.asarray(key_keep, bool)
    s = _scores(q, k, scale)
    out = np.zeros((q.shape[0], v.shape[-1]))
    for i in range(q.shape[0]):
        e = _row_terms(s[i], keep)
        if e.sum() > 0:
            out[i] = (e / e.sum()) @ v
    return out


def in_mask_ratio(q, k, sparse, key_keep=None, scale=None):
    """rho_i = (sum over the sparse set of e^{s_ij}) / (sum over all kept keys of e^{s_ij});
    0 for a row with no kept key. ``sparse``: (S, S) boolean."""
    q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep = np.ones(k.shape[0], bool) if key_keep is None else np.asarray(key_keep, bool)
    s = _scores(q, k, scale)
    ratio = np.zeros(q.shape[0])
    for i in range(q.shape[0]):
        e = _row_terms(s[i], keep)
        total = e.sum()
        if total > 0:
            ratio[i] = sum(e[j] for j in range(len(e)) if sparse[i, j]) / total
    return ratio


def reshaped_sparse_attention(q, k, v, sparse, ratio, key_keep=None, scale=None):
    """rho_i * softmax over the sparse set (and kept keys) of row i, times v; zeros for a
    row whose sparse set has no kept key."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep = np.ones(k.shape[0], bool) if key_keep is None else np.asarray(key_keep, bool)
    s = _scores(q, k, scale)
    out = np.zeros((q.shape[0], v.shape[-1]))
    for i in range(q.shape[0]):
        e = _row_terms(s[i], keep & sparse[i])
        if e.sum() > 0:
            out[i] = ratio[i] * (e / e.sum()) @ v
    return out


def step_kind(step: int, full_steps: int, refresh_every=None, refresh_steps=()) -> str:
    """Official schedule: stepi < full -> full; refresh list or period -> refresh; else
    sparse (the period counted from full_steps, as softmaxkit documents)."""
    if step < full_steps:
        return "full"
    if step in refresh_steps or (refresh_every and (step - full_steps) % refresh_every == 0):
        return "refresh"
    return "sparse"


def run(
    qs,
    ks,
    vs,
    window: int,
    full_steps: int,
    refresh_every=None,
    refresh_steps=(),
    drift: float = 0.04,
    key_keep=None,
    clamp=False,
    use_ratio=True,
    sparse=None,
):
    """Outputs of a whole denoising loop: qs, ks (T, B, H, S, E), vs (T, B, H, S, Ev);
    key_keep (B, S) bool or None. ``use_ratio=False`` is the official processors' mode
    without the reshape (the band softmax with weight 1); ``sparse`` (S, S) replaces the
    band (e.g. :func:`cog_mask`). Returns (T, B, H, S, Ev)."""
    qs, ks, vs = (np.asarray(a, dtype=np.float64) for a in (qs, ks, vs))
    steps, batch, heads, size, _ = qs.shape
    sparse = band(size, window) if sparse is None else np.asarray(sparse, bool)
    ratio = np.zeros((batch, heads, size))
    residual = np.zeros((batch, heads, size, vs.shape[-1]))
    outs = np.zeros(vs.shape)
    for t in range(steps):
        kind = step_kind(t, full_steps, refresh_every, refresh_steps)
        for b in range(batch):
            keep = None if key_keep is None else np.asarray(key_keep)[b]
            for h in range(heads):
                q, k, v = qs[t, b, h], ks[t, b, h], vs[t, b, h]
                if kind == "full":
                    outs[t, b, h] = full_attention(q, k, v, keep)
                elif kind == "refresh":
                    full = full_attention(q, k, v, keep)
                    ratio[b, h] = in_mask_ratio(q, k, sparse, keep)
                    weight = ratio[b, h] if use_ratio else np.ones(size)
                    residual[b, h] = full - reshaped_sparse_attention(q, k, v, sparse, weight, keep)
                    outs[t, b, h] = full
                else:
                    weight = ratio[b, h] if use_ratio else np.ones(size)
                    outs[t, b, h] = (
                        reshaped_sparse_attention(q, k, v, sparse, weight, keep) + residual[b, h]
                    )
        if kind == "sparse":
            ratio = ratio + drift
            if clamp:
                ratio = np.minimum(ratio, 1.0)
    return outs
