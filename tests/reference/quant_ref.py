"""Float64 numpy oracles for ``softmaxkit.quant``, transcribed from the papers' formulas and
the official codes' rules (never importing the implementation).

* RepQ-ViT (arXiv 2212.08254; zkkli/RepQ-ViT ``quant/quantizer.py``): the uniform
  quantizer and the log-sqrt2 quantizer in its odd/even (log2 + shift) form, with the
  percentile-candidate search by mean-squared error.
* log2 (RepQuant arXiv 2402.05628; AdaLog's ``Log2Quantizer``).
* AdaLog (arXiv 2407.12951; GoatWu/AdaLog): codes round(-log2(x) r / q), the two lookup
  tables of the eval mode, the plain 2^(-c q / r) of the training mode, the base grid
  q = 10 .. 10 + eq_n - 1.
* LLM-FP4 (arXiv 2310.16836; nbasyl/LLM-FP4 ``fp_linear.py::get_scale``): clamp to the
  format's largest value, exponent floor(log2|x| + bias) clamped at 1, round to the step
  2^(e - M - bias); the bias grid and the format search.
* BiViT (arXiv 2211.07091; ThisisBillhe/BiViT ``SoftmaxBinaryQuantizer``): 1 where
  p >= 0.25 max_row(p).
"""

from __future__ import annotations

import math

import numpy as np

REPQ_PERCENTILES = (0.999, 0.9999, 0.99999)


def np64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def round_half_even(x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even, as torch.round does


# ---------------------------------------------------------------------------- uniform
def uniform(x, scale: float, bits: int) -> np.ndarray:
    """x_q = clamp(round(x / scale), 0, 2^b - 1) * scale (zero point 0)."""
    x = np64(x)
    return np.clip(round_half_even(x / scale), 0, 2**bits - 1) * scale


def uniform_percentile_high(sample, bits: int, percentiles=REPQ_PERCENTILES) -> float:
    """RepQ-ViT's search: the quantile candidate of smallest MSE (lower end fixed at 0)."""
    sample = np64(sample).ravel()
    best, best_score = None, math.inf
    for p in percentiles:
        high = float(np.quantile(sample, p))
        high = high if high > 0 else 1.0
        score = float(np.mean((uniform(sample, high / (2**bits - 1), bits) - sample) ** 2))
        if score < best_score:
            best, best_score = high, score
    return best


# -------------------------------------------------------------------------------- log
def log_sqrt2_repq(x, delta: float, bits: int) -> np.ndarray:
    """RepQ-ViT's LogSqrt2Quantizer.quantize: x_int = round(-2 log2(x / delta)), flagged
    out of range at >= 2^b (output 0), clamped, dequantized by the odd/even form
    2^(-ceil(q/2)) (1 + (q mod 2)(sqrt2 - 1)) delta."""
    x = np64(x)
    with np.errstate(divide="ignore"):
        x_int = round_half_even(-2.0 * np.log2(x / delta))
    mask = x_int >= 2**bits
    q = np.clip(x_int, 0, 2**bits - 1)
    odd = (q % 2) * (math.sqrt(2) - 1) + 1
    out = 2.0 ** (-np.ceil(q / 2)) * odd * delta
    return np.where(mask, 0.0, out)


def log_sqrt2_direct(x, delta: float, bits: int) -> np.ndarray:
    """The same grid written delta 2^(-q/2)."""
    x = np64(x)
    with np.errstate(divide="ignore"):
        x_int = round_half_even(-2.0 * np.log2(x / delta))
    q = np.clip(x_int, 0, 2**bits - 1)
    return np.where(x_int >= 2**bits, 0.0, delta * 2.0 ** (-q / 2))


def log2_quant(x, delta: float, bits: int) -> np.ndarray:
    """q = round(-log2(x / delta)); 0 where q >= 2^b; else delta 2^(-clamp(q, 0, 2^b - 1))."""
    x = np64(x)
    with np.errstate(divide="ignore"):
        x_int = round_half_even(-np.log2(x / delta))
    q = np.clip(x_int, 0, 2**bits - 1)
    return np.where(x_int >= 2**bits, 0.0, delta * 2.0 ** (-q))


def log_scale_search(sample, bits: int, quantizer, percentiles=REPQ_PERCENTILES) -> float:
    """RepQ-ViT's init_quantization_scale: the quantile candidate of smallest MSE."""
    sample = np64(sample).ravel()
    best, best_score = float(sample.max()), math.inf
    for p in percentiles:
        delta = float(np.quantile(sample, p))
        if not delta > 0:
            continue
        score = float(np.mean((quantizer(sample, delta, bits) - sample) ** 2))
        if score < best_score:
            best, best_score = delta, score
    return best


# ----------------------------------------------------------------------------- AdaLog
ADALOG_R = 37.0


def adalog(x, q: int, bits: int, mode: str = "hardware") -> np.ndarray:
    """AdaLogQuantizer.forward with scale 1: c = round(-log2(x) r / q), masked at
    c >= 2^b, clamped; hardware: 2^(-table1[c]) table2[c] with table1[i] = floor(i q / r),
    table2[i] = round(2^(-((q i) mod r) / r) (4n - 2)) / (4n - 2), n = 2^(b-1);
    simulated: 2^(-c q / r)."""
    x = np64(x)
    n_levels = 2 ** (bits - 1)
    with np.errstate(divide="ignore"):
        c = round_half_even(-np.log2(x) * ADALOG_R / q)
    mask = c >= 2 * n_levels
    c = np.clip(c, 0, 2 * n_levels - 1).astype(np.int64)
    if mode == "simulated":
        out = 2.0 ** (-c * q / ADALOG_R)
    else:
        i = np.arange(2 * n_levels)
        table1 = np.floor(i * q / ADALOG_R)
        table2 = np.array(
            [
                round(2 ** (-((q * k) % ADALOG_R) / ADALOG_R) * (4 * n_levels - 2))
                / (4 * n_levels - 2)
                for k in i
            ]
        )
        out = 2.0 ** (-table1[c]) * table2[c]
    return np.where(mask, 0.0, out)


def adalog_search(sample, bits: int, eq_n: int = 128, mode: str = "hardware") -> int:
    """The base grid q = 10 .. 10 + eq_n - 1, smallest MSE first."""
    sample = np64(sample).ravel()
    scores = [np.mean((adalog(sample, q, bits, mode) - sample) ** 2) for q in range(10, 10 + eq_n)]
    return 10 + int(np.argmin(scores))


def adalog_output_search(a, v, bits: int, eq_n: int = 128, mode: str = "hardware") -> int:
    """_search_best_A_log_base with V unquantized: argmin_q mean((A V - A_q V)^2)."""
    a, v = np64(a), np64(v)
    raw = a @ v
    scores = [np.mean((raw - adalog(a, q, bits, mode) @ v) ** 2) for q in range(10, 10 + eq_n)]
    return 10 + int(np.argmin(scores))


# ---------------------------------------------------------------------------- LLM-FP4
def fp_quant(x, bits: int, mantissa: int, bias: float) -> np.ndarray:
    """get_scale + round: maxval = (2 - 2^-M) 2^(2^E - 1 - bias), clamp, e = clamp(
    floor(log2|x| + bias), 1), scale = 2^(e - M - bias), round(x / scale) scale."""
    x = np64(x)
    e_bits = bits - 1 - mantissa
    maxval = (2 - 2.0**-mantissa) * 2.0 ** (2**e_bits - 1 - bias)
    xc = np.clip(x, -maxval, maxval)
    with np.errstate(divide="ignore"):
        e = np.maximum(np.floor(np.log2(np.abs(xc)) + bias), 1.0)
    scale = 2.0 ** (e - mantissa - bias)
    return round_half_even(xc / scale) * scale


def fp_mantissas(bits: int) -> list[int]:
    return list(range(2, 7)) if bits == 8 else list(range(bits - 1))


def fp_search(
    sample, bits: int, max_value: float, eq_n: int = 100, alpha: float = 0.01, beta: float = 1.2
) -> tuple[int, float]:
    """The official bias grid b0 (alpha + i (beta - alpha) / eq_n), i < eq_n, per format,
    with b0 = 2^E - log2(max) + log2(2 - 2^-M) - 1; the (format, bias) of smallest MSE."""
    sample = np64(sample).ravel()
    best = (math.inf, None, None)
    for m in fp_mantissas(bits):
        e_bits = bits - 1 - m
        b0 = 2**e_bits - math.log2(max_value) + math.log2(2 - 2.0**-m) - 1
        for i in range(eq_n):
            bias = b0 * (alpha + i * (beta - alpha) / eq_n)
            score = float(np.mean((fp_quant(sample, bits, m, bias) - sample) ** 2))
            if score < best[0]:
                best = (score, m, bias)
    return best[1], best[2]


# ------------------------------------------------------------------------------ BiViT
def bivit(p, ratio: float = 0.25, axis: int = -1) -> np.ndarray:
    """1[p >= ratio max_row(p)], with zero probabilities kept at 0."""
    p = np64(p)
    threshold = ratio * p.max(axis=axis, keepdims=True)
    return ((p >= threshold) & (p > 0)).astype(np.float64)


def bivit_tensor(p, threshold: float) -> np.ndarray:
    p = np64(p)
    return ((p >= threshold) & (p > 0)).astype(np.float64)
