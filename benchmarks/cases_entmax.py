"""Benchmark cases for sparsemax, 1.5-entmax and alpha-entmax (run with ``softmaxkit bench``).

Baseline: the ``entmax`` package (deep-spin/entmax, ``pip install entmax --no-deps``; never a
dependency of softmaxkit), whose exact maps sort every row in full and whose bisection runs
all 50 halvings on full rows. Cases are skipped when it is not installed.

Inputs: float32 logits ``torch.randn(shape) * scale`` from a seeded generator, with
``requires_grad``. Shapes: a (1024, 32768) batch (a 32k vocabulary) and a (4096, 1024)
batch (many short rows, where a full sort is cheap and per-op overheads weigh more);
``--quick`` keeps the row length and takes 1/64 of the rows.

Scale 1 (standard-normal logits) gives realistic, not one-hot, supports; nonzeros per row,
mean (max) over the rows, for the two shapes:

* sparsemax: 5.0 (12) and 4.1 (10);
* 1.5-entmax: 30.5 (61) and 18.5 (44);
* alpha = 1.3 bisection: 307 (461) and 112 (180).

Targets: 1.5x faster than the package, forward and forward + backward, with outputs equal
to 1e-5, and no more peak memory (ours keeps one scratch block and a partial sort where the
package keeps a full sort's values and int64 indices). The ``:dense`` cases (scale 0.3:
supports of 10-30 for sparsemax and 110-260 for 1.5-entmax, so several times more
candidates above the first bound) guard the slow path of the partial sort: no slower
than the package.
"""

from __future__ import annotations

import dataclasses

import torch

from softmaxkit.cli.bench import Case
from softmaxkit.cli.bench_peers import COMPILE_NAIVE, map_and_loss_peers, with_peers
from softmaxkit.functional import entmax15, entmax_bisect, sparsemax

SHAPES = ((1024, 32768), (4096, 1024))
QUICK_ROWS = 64  # --quick: 1/64 of the rows, same row length
NO_MORE_MEMORY = {"mem_fwd": 1.0, "mem_fwdbwd": 1.0}
FASTER = {"time_fwd": 1 / 1.5, "time_fwdbwd": 1 / 1.5, **NO_MORE_MEMORY}
NO_SLOWER = {"time_fwd": 1.0, "time_fwdbwd": 1.0, **NO_MORE_MEMORY}


def _logits(shape: tuple[int, int], scale: float):
    def setup(quick: bool) -> tuple[torch.Tensor]:
        rows, n = shape
        g = torch.Generator().manual_seed(0)
        size = (max(1, rows // QUICK_ROWS), n) if quick else shape
        x = torch.randn(size, generator=g, dtype=torch.float32) * scale
        return (x.requires_grad_(),)

    return setup


# The baselines import the package lazily: this file is imported even when it is absent.


def _their_sparsemax(x: torch.Tensor) -> torch.Tensor:
    import entmax

    return entmax.sparsemax(x, -1)


def _their_entmax15(x: torch.Tensor) -> torch.Tensor:
    import entmax

    return entmax.entmax15(x, -1)


def _their_bisect(alpha: float):
    def baseline(x: torch.Tensor) -> torch.Tensor:
        import entmax

        return entmax.entmax_bisect(x, alpha, -1)

    return baseline


def _ours_bisect(alpha: float):
    return lambda x: entmax_bisect(x, alpha, -1)


def _cases() -> list[Case]:
    ops = [
        ("sparsemax", lambda x: sparsemax(x, -1), _their_sparsemax, "entmax.sparsemax"),
        ("entmax15", lambda x: entmax15(x, -1), _their_entmax15, "entmax.entmax15"),
        ("entmax_bisect[alpha=1.5]", _ours_bisect(1.5), _their_bisect(1.5), "entmax.entmax_bisect"),
        ("entmax_bisect[alpha=1.3]", _ours_bisect(1.3), _their_bisect(1.3), "entmax.entmax_bisect"),
    ]
    # (ops, logit scale, targets, name suffix): realistic supports, then the dense guard
    variants = [(ops, 1.0, FASTER, ""), (ops[:2], 0.3, NO_SLOWER, ":dense")]
    cases = []
    for selected, scale, targets, suffix in variants:
        for op, ours, baseline, baseline_name in selected:
            for shape in SHAPES:
                cases.append(
                    Case(
                        name=f"{op}/{shape[0]}x{shape[1]}{suffix}",
                        setup=_logits(shape, scale),
                        ours=ours,
                        baseline=baseline,
                        baseline_name=baseline_name,
                        targets=targets,
                        atol=1e-5,
                        requires=("entmax",),
                    )
                )
    return cases


def _peers(case: Case) -> dict:
    """Peer columns (issue 15): ``torch.compile`` of the package's formula (the baseline;
    its sort-based maps are the "naive" exact algorithm) and ours under softmaxkit's
    compile backend."""
    peers = map_and_loss_peers(case.ours, case.baseline, 1e-5)
    peers[COMPILE_NAIVE] = dataclasses.replace(peers[COMPILE_NAIVE], requires=("entmax",))
    return peers


CASES = with_peers(_cases(), _peers)
