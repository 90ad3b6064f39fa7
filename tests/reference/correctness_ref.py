"""Float64 transcription of correctness-aware calibration (Liu et al. 2024, arXiv:2404.13016).

Transcribed from the official code (liuyvchi/Correctness-aware-calibration):

* ``src/cal_metrics/temperature_scaling_CA.py::Temperature_adaptive.set_temperature``:
  ``correctness = argmax(logits) == labels``; ``weight_correct = mean(correctness)``;
  correct samples get weight ``1 - weight_correct``, wrong ones ``weight_correct``;
  ``loss = sum(weights * (max softmax(outputs) - correctness)^2) / sum(weights)``;
* ``Temperature_adaptive.temperature_scale``: ``T = clamp(Linear(ReLU(Linear(a))), 0.1, 10)``;
* ``src/run_cal.py``: ``temp_args = cat([p2topk1, p3topk1, p4topk1])`` where ``pvtopk1`` is
  the softmax of view v gathered at ``topk(output1_1, k=4)`` of the original view.

Plain loops over samples; shares nothing with the implementation.
"""

from __future__ import annotations

import numpy as np


def softmax_row(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - np.max(z))
    return e / e.sum()


def ca_terms(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample squared error (conf - correct)^2 and the 0/1 correctness."""
    losses, correct = [], []
    for z, y in zip(np.asarray(logits, dtype=np.float64), np.asarray(labels)):
        p = softmax_row(z)
        ok = float(int(np.argmax(z)) == int(y))
        losses.append((float(np.max(p)) - ok) ** 2)
        correct.append(ok)
    return np.array(losses), np.array(correct)


def ca_weights(correct) -> np.ndarray:
    acc = float(np.mean(correct))
    return np.array([1.0 - acc if c == 1.0 else acc for c in correct])


def ca_loss_official(logits, labels) -> float:
    """The official line: sum(w * l) / sum(w) (NaN when every sample is right or wrong)."""
    losses, correct = ca_terms(logits, labels)
    w = ca_weights(correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(w * losses) / np.sum(w))


def view_features(view_logits, k: int = 4) -> np.ndarray:
    """[p^(1)[K], ..., p^(V-1)[K]] with K the top-k classes of view 0 (decreasing)."""
    view_logits = np.asarray(view_logits, dtype=np.float64)
    rows = []
    for sample in view_logits:
        top = np.argsort(-sample[0], kind="stable")[:k]
        feats = []
        for v in range(1, sample.shape[0]):
            p = softmax_row(sample[v])
            feats.extend(float(p[j]) for j in top)
        rows.append(feats)
    return np.array(rows, dtype=np.float64)


def temperature(features, w1, b1, w2, b2, t_min: float = 0.1, t_max: float = 10.0) -> np.ndarray:
    """clamp(w2 @ relu(w1 @ a + b1) + b2, t_min, t_max) for each feature row a."""
    out = []
    for a in np.asarray(features, dtype=np.float64):
        h = np.maximum(np.asarray(w1) @ a + np.asarray(b1), 0.0)
        t = float((np.asarray(w2) @ h + np.asarray(b2))[0])
        out.append(min(max(t, t_min), t_max))
    return np.array(out)


def ece_l1(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins (lo, hi]."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    acc = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - acc[inside].mean())
    return total


def auroc(score, positive) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).sum()
    equal = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * equal) / (len(pos) * len(neg)))
