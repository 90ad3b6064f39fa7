"""Float64 NumPy transcriptions of the calibration metrics and of temperature scaling.

Written from the definitions, one bin / one class / one sample at a time, sharing
nothing with softmaxkit:

* top-label ECE / RMSCE / MCE (Naeini et al. 2015; Guo et al. 2017, arXiv:1706.04599),
  equal-width bins ``edge_b <= c < edge_{b+1}`` on ``linspace(0, 1, n_bins + 1)`` with
  ``c == 1`` in the last bin, or equal-mass bins (rank r of a stable sort -> bin
  ``floor(r * n_bins / N)``);
* torchmetrics' convention for comparison (``multiclass_calibration_error``): the same
  bins in float32, but ``c == 1`` forms an extra bin of its own;
* class-wise ECE (Kull et al. 2019, arXiv:1910.12656): mean over classes of the binned
  calibration error of ``p_k`` against ``1[y == k]``;
* Brier score summed over classes (Brier 1950), NLL, and a grid search for the
  temperature minimising the NLL of ``softmax(z / T)``.
"""

from __future__ import annotations

import math

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def uniform_bin_of(value: float, n_bins: int, edges: np.ndarray) -> int:
    """The b with edges[b] <= value < edges[b+1]; value >= edges[n_bins] -> last bin."""
    for b in range(n_bins):
        if edges[b] <= value < edges[b + 1]:
            return b
    return n_bins - 1


def adaptive_bins_of(values: np.ndarray, n_bins: int) -> np.ndarray:
    n = len(values)
    order = np.argsort(values, kind="stable")
    out = np.empty(n, dtype=np.int64)
    for rank, i in enumerate(order):
        out[i] = math.floor(rank * n_bins / n)
    return out


def binned_error(values, hits, bins, n_bins, norm):
    """Calibration error of ``values`` against 0/1 ``hits`` given each sample's bin."""
    n = len(values)
    if n == 0:
        return math.nan
    total_l1, total_sq, worst = 0.0, 0.0, 0.0
    for b in range(n_bins):
        members = [i for i in range(n) if bins[i] == b]
        if not members:
            continue
        acc = sum(float(hits[i]) for i in members) / len(members)
        conf = sum(float(values[i]) for i in members) / len(members)
        gap = abs(acc - conf)
        total_l1 += len(members) / n * gap
        total_sq += len(members) / n * gap * gap
        worst = max(worst, gap)
    return {"l1": total_l1, "l2": math.sqrt(total_sq), "max": worst}[norm]


def top_label(probs: np.ndarray):
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), probs.argmax(axis=1)


def bins_for(values: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    if binning == "adaptive":
        return adaptive_bins_of(values, n_bins)
    edges = np.array([b / n_bins for b in range(n_bins + 1)])
    return np.array([uniform_bin_of(v, n_bins, edges) for v in values], dtype=np.int64)


def ece(probs, target, n_bins=15, norm="l1", binning="uniform") -> float:
    conf, pred = top_label(probs)
    hits = pred == np.asarray(target)
    return binned_error(conf, hits, bins_for(conf, n_bins, binning), n_bins, norm)


def curve(probs, target, n_bins=15, binning="uniform"):
    """(confidence, accuracy, count) per bin; NaN confidence/accuracy for empty bins."""
    conf, pred = top_label(probs)
    hits = pred == np.asarray(target)
    bins = bins_for(conf, n_bins, binning)
    mean_conf = np.full(n_bins, np.nan)
    mean_acc = np.full(n_bins, np.nan)
    count = np.zeros(n_bins, dtype=np.int64)
    for b in range(n_bins):
        members = bins == b
        count[b] = members.sum()
        if count[b]:
            mean_conf[b] = conf[members].mean()
            mean_acc[b] = hits[members].mean()
    return mean_conf, mean_acc, count


def ece_torchmetrics_convention(probs, target, n_bins=15, norm="l1") -> float:
    """torchmetrics' binning: float32 confidences and edges, ``c == 1`` in an extra bin."""
    conf, pred = top_label(probs)
    conf = conf.astype(np.float32)
    hits = pred == np.asarray(target)
    edges = np.linspace(0, 1, n_bins + 1).astype(np.float32)
    bins = []
    for v in conf:
        b = n_bins  # the extra bin, reached only by v >= 1
        for k in range(n_bins):
            if edges[k] <= v < edges[k + 1]:
                b = k
                break
        bins.append(b)
    return binned_error(conf.astype(np.float64), hits, np.array(bins), n_bins + 1, norm)


def classwise_ece(probs, target, n_bins=15, norm="l1", binning="uniform") -> float:
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target)
    per_class = []
    for k in range(probs.shape[1]):
        values = probs[:, k]
        hits = target == k
        per_class.append(
            binned_error(values, hits, bins_for(values, n_bins, binning), n_bins, norm)
        )
    return float(np.mean(per_class))


def brier(probs, target) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    out = np.zeros(len(probs))
    for i, row in enumerate(probs):
        for k, p in enumerate(row):
            indicator = 1.0 if k == target[i] else 0.0
            out[i] += (p - indicator) ** 2
    return out


def nll_from_logits(z, target) -> np.ndarray:
    logp = log_softmax(z)
    return np.array([-logp[i, t] for i, t in enumerate(target)])


def mean_nll_at_temperature(z, target, temperature: float) -> float:
    logp = log_softmax(np.asarray(z, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(target)), np.asarray(target)].mean())


def grid_search_temperature(z, target, lo=0.05, hi=20.0) -> float:
    """Minimiser of the mean NLL over T: a log-spaced grid, then two finer linear grids."""
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 400))
    best = grid[int(np.argmin([mean_nll_at_temperature(z, target, t) for t in grid]))]
    width = best * (grid[1] / grid[0] - 1.0)
    for _ in range(2):
        fine = np.linspace(best - width, best + width, 201)
        fine = fine[fine > 0]
        best = fine[int(np.argmin([mean_nll_at_temperature(z, target, t) for t in fine]))]
        width = fine[1] - fine[0]
    return float(best)
