"""Benchmark cases for ``softmaxkit.sparsity`` (run with ``softmaxkit bench``).

One training step's worth of a MaskLLM-masked linear layer (forward + backward to the
candidate logits and the input): a (2048, 2048) weight with 2:4 logits (1024 * 2048 / 4
groups x 6 candidates) and a batch of 2048 rows; ``--quick`` has 1/8 of each size.

* ``nm_soft_mask`` + ``F.linear`` against what a user would write from the official code:
  ``F.gumbel_softmax(kappa * gate, tau) @ options`` reshaped to the weight, then
  ``F.linear``. The issue sets no target; ours should cost no more (the time is the
  matmul's plus a few elementwise passes over the weight). The noise differs, so outputs
  are not compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softmaxkit.cli.bench import Case
from softmaxkit.sparsity import nm_candidates, nm_soft_mask

N, OUT, IN = 2048, 2048, 2048
SCALE, TAU = 1e2, 4.0  # the shipped scripts' start values
OPTIONS = nm_candidates(2, 4)


def _inputs(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, out, d = (N // 8, OUT // 8, IN // 8) if quick else (N, OUT, IN)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).requires_grad_()
    w = torch.randn(out, d, generator=g) / d**0.5  # frozen, as MaskLLM
    gate = (0.01 * torch.randn(out * d // 4, 6, generator=g)).requires_grad_()
    return x, w, gate


def ours(x: torch.Tensor, w: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    mask = nm_soft_mask(gate, 2, 4, scale=SCALE, tau=TAU).reshape(w.shape)
    return F.linear(x, w * mask)


def official_style(x: torch.Tensor, w: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    choices = F.gumbel_softmax(gate * SCALE, tau=TAU, hard=False)
    mask = (choices.unsqueeze(1) @ OPTIONS).squeeze(1).reshape(w.shape)
    return F.linear(x, w * mask)


CASES = [
    Case(
        name=f"nm_soft_mask+linear/{N}x{IN}->{OUT}",
        setup=_inputs,
        ours=ours,
        baseline=official_style,
        baseline_name="F.gumbel_softmax(kappa*gate) @ options, F.linear",
        targets={"time_fwdbwd": 1.2},
    ),
]
