"""Float64 transcription of Softmax Collapse (Prieto et al. 2025, arXiv:2501.04697).

Definition 3 (Eq. 2): a row collapses when sum_k exp(z_k) == exp(z_y) in floating point,
i.e. every non-maximal term of S = sum_k exp(z_k - max z) is absorbed by rounding, which
happens in a precision with ``p`` significand bits when the exact sum of those terms is
below half an ulp of 1, 2**-p (Definition 1, absorption errors). The loss of a collapsed,
correctly classified row is then exactly 0 (Eq. 3).

Written from the paper with plain Python floats, one row at a time; it shares nothing
with the implementation. Rows whose small-term sum lies within a factor of two of the
threshold are reported as ``None`` (undecided): there the outcome depends on how the
terms are rounded and grouped, which the exact rule does not model.
"""

from __future__ import annotations

import math

import numpy as np

# significand bits p, including the implicit leading bit
SIGNIFICAND_BITS = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}


def gap_threshold(precision: str) -> float:
    """Gap to a single competitor beyond which the row collapses: ln(2**p)."""
    return SIGNIFICAND_BITS[precision] * math.log(2.0)


def collapsed_row(row, precision: str = "float32"):
    """True / False, or None when the row is within a factor 2 of the threshold."""
    finite = [v for v in row if v != -math.inf]
    if not finite:
        return False  # no softmax at all
    top = max(finite)
    if sum(1 for v in finite if v == top) > 1:
        return False  # a tie: S >= 2
    small = sum(math.exp(v - top) for v in finite if v != top)
    half_ulp = 2.0 ** -SIGNIFICAND_BITS[precision]
    if small < 0.5 * half_ulp:
        return True
    if small > 2.0 * half_ulp:
        return False
    return None


def collapsed(x, precision: str = "float32") -> np.ndarray:
    """Per-row decisions (object array of True/False/None), class axis last."""
    x = np.asarray(x, dtype=np.float64)
    rows = x.reshape(-1, x.shape[-1])
    out = np.array([collapsed_row(list(r), precision) for r in rows], dtype=object)
    return out.reshape(x.shape[:-1])


def zero_loss_row(row, target: int, precision: str = "float32"):
    """Eq. 3: the cross-entropy is exactly 0 iff the row collapsed onto the target class."""
    decision = collapsed_row(row, precision)
    if decision is None:
        return None
    return decision and row[target] == max(row)


def cross_entropy_row(row, target: int) -> float:
    """-log softmax(z)_y in float64 (Definition 2, Eq. 1)."""
    top = max(row)
    return -(row[target] - top - math.log(sum(math.exp(v - top) for v in row)))
