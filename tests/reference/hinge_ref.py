"""Float64 transcription of the CNN-SVM squared hinge (Agarap 2017, arXiv:1712.03541).

The official code (AFAgarap/cnn-svm, model/cnn_svm.py) turns one-hot labels into
y in {-1, +1}^C (0 -> -1) and takes reduce_mean(square(maximum(0, 1 - y * output)))
over the batch and the classes. ``official_hinge`` is that line; ``squared_hinge_rows``
is the per-sample mean over classes, with a probability target t giving the expected
loss sum_j t_j loss(o, j). Shares nothing with the implementation.
"""

from __future__ import annotations

import numpy as np


def official_hinge(output, labels, margin: float = 1.0) -> float:
    """mean over batch and classes of max(0, margin - y * output)^2, y from one-hot labels."""
    output = np.asarray(output, dtype=np.float64)
    n, c = output.shape
    y = -np.ones((n, c))
    y[np.arange(n), np.asarray(labels)] = 1.0
    return float(np.mean(np.square(np.maximum(np.zeros((n, c)), margin - y * output))))


def squared_hinge_row(row, label: int, margin: float = 1.0) -> float:
    total = 0.0
    for k, o in enumerate(row):
        y = 1.0 if k == label else -1.0
        total += max(0.0, margin - y * float(o)) ** 2
    return total / len(row)


def squared_hinge_rows(output, target, margin: float = 1.0) -> np.ndarray:
    output = np.asarray(output, dtype=np.float64)
    target = np.asarray(target)
    out = []
    for i, row in enumerate(output):
        if target.dtype.kind == "f":
            out.append(
                sum(float(t) * squared_hinge_row(row, j, margin) for j, t in enumerate(target[i]))
            )
        else:
            out.append(squared_hinge_row(row, int(target[i]), margin))
    return np.array(out, dtype=np.float64)
