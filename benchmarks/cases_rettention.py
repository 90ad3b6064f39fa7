"""Benchmark cases for Re-ttention, ``softmaxkit.attention.Rettention`` (run with
``softmaxkit bench -k rettention``).

The sparse step of a Re-ttention layer (inference, forward only) at batch 1, 8 heads,
S = 4096 tokens, E = 64, float32, with the official band ``int(S * 0.03125)`` = 128, i.e.
129 keys per query (3.1% of the keys; 96.9% sparsity). The layer is primed by one refresh
step in ``setup`` (schedule: refresh at step 0, every later step sparse) and built with
``ratio_drift=0`` so that every timed call computes the same output (the drift is one
addition on the (B, H, S, 1) ratio, which does not change the cost).

* against the dense full-attention step, ``F.scaled_dot_product_attention(q, k, v)`` (what
  the step would cost without Re-ttention): target at least 5x faster (issue 12, time ratio
  at most 0.2). Different functions; outputs not compared.
* ``:official`` against the official processors' sparse step written in plain torch
  (``cccrrrccc/Re-ttention``, ``get_attention_scores_with_denominator_ratio``): the dense
  scores plus an additive -1e5 band mask (the (S, S) mask is built once in setup, which
  favours the baseline), softmax, times the cached ratio, times V, plus the cached residual.
  Same function: outputs equal to 1e-4; target also at least 5x faster.

``--quick`` uses S = 1024 (band 33 keys); the full size is what the target is about.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softmaxkit.attention import Rettention, RettentionSchedule, local_band_mask
from softmaxkit.cli.bench import Case

B, H, S, E = 1, 8, 4096, 64
S_QUICK = 1024
DENSITY = 0.03125


def _setup(quick: bool) -> tuple:
    size = S_QUICK if quick else S
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, size, E, generator=g) for _ in range(3))
    schedule = RettentionSchedule(full_steps=0, refresh_steps=(0,))
    rett = Rettention(density=DENSITY, schedule=schedule, ratio_drift=0.0)
    with torch.no_grad():
        rett(q, k, v)  # the refresh step: caches the ratio and the residual
        # the next steps' inputs drift a little from the refresh step's
        q, k, v = (t + 0.05 * torch.randn(t.shape, generator=g) for t in (q, k, v))
    additive = torch.zeros(size, size).masked_fill_(
        ~local_band_mask(size, int(size * DENSITY)), -1e5
    )
    return q, k, v, rett, additive


def sparse_step(q, k, v, rett, additive) -> torch.Tensor:
    return rett(q, k, v)


def dense_full_step(q, k, v, rett, additive) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def official_sparse_step(q, k, v, rett, additive) -> torch.Tensor:
    """The official window path in plain torch: dense scores + -1e5 mask, the softmax
    denominator divided by the cached ratio, then the cached residual."""
    scores = torch.baddbmm(
        additive.expand(B * H, -1, -1),
        q.flatten(0, 1),
        k.flatten(0, 1).transpose(-1, -2),
        alpha=1.0 / math.sqrt(E),
    )
    top = scores.amax(-1, keepdim=True)
    weights = (scores - top).exp_()
    denominator = weights.sum(-1, keepdim=True) / rett.ratio.flatten(0, 1)
    out = torch.bmm(weights / denominator, v.flatten(0, 1)).unflatten(0, (B, H))
    return out + rett.residual


NAME = f"Rettention.sparse_step/{B}x{H}x{S}x{E},3.1%"

CASES = [
    Case(
        name=NAME,
        setup=_setup,
        ours=sparse_step,
        baseline=dense_full_step,
        baseline_name="F.scaled_dot_product_attention (dense full step)",
        backward=False,
        targets={"time_fwd": 0.2},
        atol=None,
    ),
    Case(
        name=f"{NAME}:official",
        setup=_setup,
        ours=sparse_step,
        baseline=official_sparse_step,
        baseline_name="official sparse step (dense scores, -1e5 mask, ratio, residual)",
        backward=False,
        targets={"time_fwd": 0.2},
        atol=1e-4,
    ),
]
