"""The claims of the post-softmax quantizer papers, checked on softmax of seeded Gaussian
logits: a table of the mean-squared error of P and of the attention-output error
||P_q V - P V|| / ||P V|| for every quantizer at 3, 4, 6 and 8 bits.

P = softmax(t Q K^T / sqrt(d)) for seeded standard-normal Q, K, V (4 heads, 128 queries
and keys, d = 64); each quantizer is calibrated on P of seed 1 and evaluated on seed 0.
t = 1 gives flat rows (largest probability ~0.07), t = 4 peaky ones (~0.5).

Run: ``PYTHONPATH=src python examples/quant_claims.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import torch

from softmaxkit import quant as Q

BITS = (3, 4, 6, 8)
QUANTIZERS = {
    "uniform (min-max)": lambda b: Q.UniformQuantizer(b),
    "uniform (percentile)": lambda b: Q.UniformQuantizer(b, calibration="percentile"),
    "log2 (RepQuant)": lambda b: Q.Log2Quantizer(b),
    "log-sqrt2 (RepQ-ViT)": lambda b: Q.LogSqrt2Quantizer(b),
    "log-sqrt2, scale 1": lambda b: Q.LogSqrt2Quantizer(b, scale=1.0),
    "AdaLog (hardware)": lambda b: Q.AdaLogQuantizer(b),
    "FP ExMy (LLM-FP4)": lambda b: Q.FPQuantizer(b),
}


def attention(seed: int, temperature: float, heads: int = 4, length: int = 128, dim: int = 64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(heads, length, dim, generator=g, dtype=torch.float64) for _ in "qkv")
    return (temperature * q @ k.transpose(-1, -2) / dim**0.5).softmax(-1), v


def errors(quantizer: Q.Quantizer, temperature: float) -> tuple[float, float]:
    p, v = attention(0, temperature)
    calibration, _ = attention(1, temperature)
    Q.calibrate(quantizer, [calibration])
    pq = quantizer(p)
    out = p @ v
    return float(((pq - p) ** 2).mean()), float((pq @ v - out).norm() / out.norm())


def main() -> None:
    for temperature in (1.0, 4.0):
        p, _ = attention(0, temperature)
        largest = float(p.amax(-1).mean())
        print(f"\nt = {temperature:g} (mean largest probability {largest:.3f})")
        head = " | ".join(f"{b} bits: MSE / attn err" for b in BITS)
        print(f"| quantizer | {head} |")
        print("|---|" + "---|" * len(BITS))
        for name, factory in QUANTIZERS.items():
            cells = []
            for bits in BITS:
                mse, rel = errors(factory(bits), temperature)
                cells.append(f"{mse:.2e} / {rel:.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        mse, rel = errors(Q.SoftmaxBinarizer(), temperature)
        print(f"| BiViT binarizer (1 bit) | {mse:.2e} / {rel:.3f} (every column) |")


if __name__ == "__main__":
    main()
