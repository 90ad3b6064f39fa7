"""Benchmark cases for ``softmaxkit.moe`` (run with ``softmaxkit bench -k moe``).

``moe.MoE`` forward + backward with 8 experts (FFN d -> 4d -> d, GELU), a top-2
:class:`~softmaxkit.moe.TopKGate`, 8192 tokens of d = 512 (FFN 2048), float32, against:

- (a) the per-token Python loop a user might write (for each token, for each of its k
  experts, call the expert on that one token and accumulate): target ``MoE`` at least 3x
  faster (ratio ours / baseline <= 1/3). The loop takes minutes at 8192 tokens, so this
  case runs BOTH sides on the first 1024 tokens (256 with ``--quick``); the per-token cost
  of the loop is constant, MoE's falls with more tokens, so the ratio at 8192 tokens is
  at least as good as the one measured here.
- (b) the dense masked reference (every expert on every token, weighted by the gate's dense
  combine matrix, zeros for the experts not chosen): target ``MoE`` within 1.5x of it
  (ratio <= 1.5); with top-2 of 8 the grouped dispatch does 1/4 of the expert FLOPs.

Both share the same layer (gate + experts); the input is the leaf that gets a gradient
(the parameters get theirs too). ``--quick`` uses 1024 tokens, d = 128, FFN 512.
"""

from __future__ import annotations

import torch
from torch import nn

from softmaxkit.cli.bench import Case
from softmaxkit.moe import MoE, TopKGate

TOKENS, D, FFN, E, K = 8192, 512, 2048, 8, 2
QUICK = (1024, 128, 512)


LOOP_TOKENS = 1024


def _setup(quick: bool, tokens: int | None = None) -> tuple[torch.Tensor, MoE]:
    full, d, ffn = QUICK if quick else (TOKENS, D, FFN)
    tokens = full if tokens is None else tokens
    torch.manual_seed(0)
    layer = MoE(
        d,
        lambda i: nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d)),
        TopKGate(d, E, K),
    )
    x = torch.randn(tokens, d).requires_grad_()
    return x, layer


def ours(x: torch.Tensor, layer: MoE) -> torch.Tensor:
    return layer(x)[0]


def dense_masked(x: torch.Tensor, layer: MoE) -> torch.Tensor:
    combine = layer.gate(x).combine_matrix()
    out = torch.zeros_like(x)
    for i, expert in enumerate(layer.experts):
        out = out + combine[:, i : i + 1] * expert(x)
    return out


def per_token_loop(x: torch.Tensor, layer: MoE) -> torch.Tensor:
    g = layer.gate(x)
    rows = []
    for t in range(x.shape[0]):
        row = 0.0
        for j in range(g.expert_indices.shape[1]):
            e = int(g.expert_indices[t, j])
            row = row + g.combine_weights[t, j] * layer.experts[e](x[t : t + 1])
        rows.append(row)
    return torch.cat(rows)


def _loop_setup(quick: bool) -> tuple[torch.Tensor, MoE]:
    return _setup(quick, LOOP_TOKENS // 4 if quick else LOOP_TOKENS)


CASES = [
    Case(
        name=f"moe.MoE/{LOOP_TOKENS}x{D}:E{E}k{K}:per_token_loop",
        setup=_loop_setup,
        ours=ours,
        baseline=per_token_loop,
        baseline_name="per-token Python loop",
        targets={"time_fwdbwd": 1 / 3},
        atol=1e-4,
    ),
    Case(
        name=f"moe.MoE/{TOKENS}x{D}:E{E}k{K}:dense_masked",
        setup=_setup,
        ours=ours,
        baseline=dense_masked,
        baseline_name="dense masked reference (every expert on every token)",
        targets={"time_fwdbwd": 1.5},
        atol=1e-4,
    ),
]
