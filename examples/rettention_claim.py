"""Re-ttention claim (a): at 96.9% sparsity, rho-reshaped sparse attention is closer to full
attention than plain sparse attention (the paper's Eq. 7 vs Eq. 9 argument).

Chen et al., "Re-ttention: Ultra Sparse Visual Generation via Attention Statistical
Reshape", NeurIPS 2025, arXiv:2505.22918.

A seeded synthetic denoising loop stands in for a diffusion transformer's self-attention:
tokens on a ``side x side`` grid, flattened row-major like DiT patch tokens; queries and keys
carry a 2-D positional term (random Fourier features of an RBF kernel of length ``ell``,
weight ``beta``: peaky rows concentrated on grid neighbours, some of which, the vertical
ones, lie outside the 1-D band) plus a content term from hidden states; values come from
the hidden states. The hidden states drift slowly from step to step (``x <- sqrt(1 - eps) x
+ sqrt(eps) noise``), as features do between denoising steps. The layer runs the official
PixArt schedule (20 steps: full 0-4, refresh 5, 10, 15) with the official band
``int(S * 0.03125)``.

At every sparse step each method is compared with full attention of the same step, as the
relative error ||out - full|| / ||full|| over the whole output:

* plain sparse (Eq. 7): softmax over the band only (rows sum to 1);
* rho-reshaped (Eq. 9): the band softmax times rho cached at the last refresh step;
* Re-ttention: ``softmaxkit.attention.Rettention`` (rho with the official drift 0.04, plus
  the residual cached at the last refresh step);
* the same with ``clamp_ratio=True`` (not official: rho stops drifting at 1), and with
  ``ratio_drift=0`` (the paper's lambda = 0 ablation).

Run: ``PYTHONPATH=src python examples/rettention_claim.py`` (``--quick`` for S = 1024).
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from softmaxkit.attention import Rettention, RettentionSchedule, local_band_mask

DENSITY = 0.03125  # the official kept fraction (96.9% sparsity)


def _smooth_field(side: int, width: int, smooth: float, g: torch.Generator) -> torch.Tensor:
    """(side * side, width) hidden states: a spatially smooth part and white noise."""
    z = torch.randn(1, width, side, side, generator=g, dtype=torch.float64)
    k = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    kernel = (k[:, None] * k[None, :])[None, None].repeat(width, 1, 1, 1)
    for _ in range(3):
        z = F.conv2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), kernel, groups=width)
    z = z / z.std()
    noise = torch.randn(1, width, side, side, generator=g, dtype=torch.float64)
    mixed = smooth * z + math.sqrt(1 - smooth**2) * noise
    return mixed.flatten(2)[0].T


def synthetic_denoising_loop(
    *,
    side: int = 64,
    heads: int = 4,
    features: int = 32,
    width: int = 64,
    steps: int = 20,
    beta: float = 24.0,
    ell: float = 1.5,
    eps: float = 0.02,
    value_mean: float = 0.0,
    smooth: float = 0.5,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-step float32 (1, heads, side**2, features) queries, keys, values (see the module
    docstring); ``value_mean`` adds a shared offset to every value."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).to(torch.float64)
    omega = torch.randn(heads, 2, features, generator=g, dtype=torch.float64) / ell
    phase = 2 * math.pi * torch.rand(heads, 1, features, generator=g, dtype=torch.float64)
    # phi_i . phi_j ~ exp(-|p_i - p_j|^2 / (2 ell^2)); scaled so the score term is beta times it
    phi = math.sqrt(2.0 / features) * torch.cos(pos @ omega + phase)
    positional = math.sqrt(beta) * features**0.25 * phi
    wq, wk, wv = (
        torch.randn(heads, width, features, generator=g, dtype=torch.float64) / math.sqrt(width)
        for _ in range(3)
    )
    x = _smooth_field(side, width, smooth, g)
    loop = []
    for _ in range(steps):
        q = positional + x @ wq
        k = positional + x @ wk
        v = x @ wv + value_mean
        loop.append(tuple(t[None].to(torch.float32) for t in (q, k, v)))
        x = math.sqrt(1 - eps) * x + math.sqrt(eps) * _smooth_field(side, width, smooth, g)
    return loop


def claim_errors(
    loop, schedule: RettentionSchedule | None = None, *, variants: bool = True
) -> dict:
    """Relative errors against full attention at every sparse step, averaged (and the
    worst), with the mean in-band mass rho and the sparsity of the band; ``variants``
    adds the clamped and drift-free Re-ttention."""
    schedule = RettentionSchedule.pixart() if schedule is None else schedule
    rett = Rettention(density=DENSITY, schedule=schedule)
    clamped = Rettention(density=DENSITY, schedule=schedule, clamp_ratio=True)
    no_drift = Rettention(density=DENSITY, schedule=schedule, ratio_drift=0.0)
    size = loop[0][0].shape[2]
    band = local_band_mask(size, int(size * DENSITY))
    errors = {"plain": [], "rho": [], "rettention": [], "clamped": [], "no_drift": []}
    masses = []
    cached = None
    with torch.no_grad():
        for step, (q, k, v) in enumerate(loop):
            out = rett(q, k, v)
            if variants:
                out_clamped, out_no_drift = clamped(q, k, v), no_drift(q, k, v)
            kind = schedule.kind(step)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            probs = torch.softmax(scores, -1)
            mass = (probs * band).sum(-1, keepdim=True)
            if kind == "refresh":
                cached = mass
            if kind != "sparse":
                continue
            full = probs @ v
            sparse = torch.softmax(scores.masked_fill(~band, -math.inf), -1) @ v
            norm = full.norm()
            errors["plain"].append(float((sparse - full).norm() / norm))
            errors["rho"].append(float((cached * sparse - full).norm() / norm))
            errors["rettention"].append(float((out - full).norm() / norm))
            if variants:
                errors["clamped"].append(float((out_clamped - full).norm() / norm))
                errors["no_drift"].append(float((out_no_drift - full).norm() / norm))
            masses.append(float(mass.mean()))
    errors = {name: e for name, e in errors.items() if e}
    result = {name: statistics.mean(e) for name, e in errors.items()}
    result.update({f"{name}_max": max(e) for name, e in errors.items()})
    result["mass"] = statistics.mean(masses)
    result["sparsity"] = 1.0 - float(band.sum()) / size**2
    result["sparse_steps"] = len(masses)
    return result


SCENARIOS = {
    "peaky rows (beta 24)": {},
    "peakier rows (beta 48)": {"beta": 48.0},
    "values with a shared offset (+1)": {"value_mean": 1.0},
}


def table(side: int) -> str:
    lines = [
        f"S = {side * side} tokens ({side}x{side} grid), PixArt schedule (20 steps, 12 sparse)",
        "",
        "| scenario | sparsity | mean rho | plain sparse (Eq. 7) | rho-reshaped (Eq. 9) "
        "| Re-ttention (rho + drift + residual) | Re-ttention, rho clamped at 1 "
        "| Re-ttention, drift 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, options in SCENARIOS.items():
        r = claim_errors(synthetic_denoising_loop(side=side, **options))
        lines.append(
            f"| {name} | {100 * r['sparsity']:.1f}% | {r['mass']:.3f} "
            f"| {r['plain']:.3f} (max {r['plain_max']:.3f}) "
            f"| {r['rho']:.3f} (max {r['rho_max']:.3f}) "
            f"| {r['rettention']:.3f} (max {r['rettention_max']:.3f}) "
            f"| {r['clamped']:.3f} (max {r['clamped_max']:.3f}) "
            f"| {r['no_drift']:.3f} (max {r['no_drift_max']:.3f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S = 1024 instead of 4096")
    args = parser.parse_args()
    print(table(32 if args.quick else 64))


if __name__ == "__main__":
    main()
