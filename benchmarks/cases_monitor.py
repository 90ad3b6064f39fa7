"""Benchmark case for the Softmax Collapse monitor: the cost of watching a training loop.

One full training step of a 2-layer MLP classifier (input 256, hidden 512, 1000 classes,
batch 512; ``--quick``: batch 64): forward, cross-entropy, backward, SGD step. Ours runs it
with a :class:`softmaxkit.dynamics.CollapseMonitor` hooked on the output layer, measuring
every step (``every=1``) with the targets (collapse and zero-loss fractions); the baseline
is the same step on an identical network without the monitor. Target: at most 1.05x the
time of the unmonitored step. A second case measures every 10th step (``every=10``), the
setting for long runs: the measurement itself (``softmax_collapse`` with the targets: a
few elementwise passes and a cross-entropy over the 512 x 1000 logits) is several percent
of this small network's step. Each step runs under ``torch.enable_grad()`` (the harness
times a forward-only case under ``no_grad``); the two networks start from the same seed
but are stepped a different number of times, so their losses are not compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit.cli.bench import Case
from softmaxkit.dynamics import CollapseMonitor

IN, HIDDEN, CLASSES = 256, 512, 1000


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def _setup(quick: bool, every: int = 1):
    batch = 64 if quick else 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN, generator=g)
    y = torch.randint(CLASSES, (batch,), generator=g)
    watched, plain = _net(), _net()
    monitor = CollapseMonitor(watched, every=every, max_history=16)
    opts = (
        torch.optim.SGD(watched.parameters(), lr=0.01),
        torch.optim.SGD(plain.parameters(), lr=0.01),
    )
    return x, y, watched, plain, monitor, opts


def _step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    with torch.enable_grad():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return loss.detach()


def monitored_step(x, y, watched, plain, monitor, opts) -> torch.Tensor:
    monitor.set_target(y)
    return _step(watched, opts[0], x, y)


def plain_step(x, y, watched, plain, monitor, opts) -> torch.Tensor:
    return _step(plain, opts[1], x, y)


def _setup_every10(quick: bool):
    return _setup(quick, every=10)


CASES = [
    Case(
        name="CollapseMonitor training step/MLP 256-512-1000,B=512",
        setup=_setup,
        ours=monitored_step,
        baseline=plain_step,
        baseline_name="the same training step without the monitor",
        backward=False,
        targets={"time_fwd": 1.05},
        atol=None,
    ),
    Case(
        name="CollapseMonitor(every=10) training step/MLP 256-512-1000,B=512",
        setup=_setup_every10,
        ours=monitored_step,
        baseline=plain_step,
        baseline_name="the same training step without the monitor",
        backward=False,
        targets={"time_fwd": 1.05},
        atol=None,
    ),
]
