"""Bad input on ONE rank of a vocab-parallel call: every rank raises the same error and no
rank is left blocked in a collective.

2 and 4 gloo CPU processes run every scenario in turn under a 10 s process-group timeout
(a rank blocked in a collective would raise a timeout error, recorded and failed here).
Each scenario records on each rank the error's type and message (or the loss); the tests
compare them across ranks. After the faults, a correct call on the same group still gives
the single-process result: the ranks stayed in step.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from softmaxkit.distributed import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
    vocab_parallel_log_softmax,
)
from tests.distributed.launch import spawn

N, D, V = 6, 4, 11
TIMEOUT_S = 10.0


def _data():
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(N, V, generator=gen, dtype=torch.float64)
    h = torch.randn(N, D, generator=gen, dtype=torch.float64)
    W = torch.randn(V, D, generator=gen, dtype=torch.float64)
    target = torch.randint(0, V, (N,), generator=gen)
    return full, h, W, target


def _slice(rank: int, world: int) -> slice:
    sizes = [len(c) for c in torch.arange(V).tensor_split(world)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _scenarios(rank: int, world: int):
    """(name, call) pairs; ``last`` is the one rank with the bad input."""
    full, h, W, target = _data()
    cols = _slice(rank, world)
    x, w = full[:, cols], W[cols]
    last = rank == world - 1

    def one(bad, good):  # the bad value on the last rank only
        return bad if last else good

    wrong_target = target.clone()
    wrong_target[0] = V + 3
    ce, lce = vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy
    return [
        ("lsm_rows", lambda: vocab_parallel_log_softmax(one(x[:-1], x))),
        ("lsm_dtype", lambda: vocab_parallel_log_softmax(one(x.long(), x))),
        ("ce_rows", lambda: ce(one(x[:-1], x), target)),
        ("ce_target_shape", lambda: ce(x, one(target[:-1], target))),
        ("ce_target_range", lambda: ce(x, one(wrong_target, target))),
        ("ce_target_all_ranks", lambda: ce(x, wrong_target)),
        ("ce_target_dtype", lambda: ce(x, one(target.double(), target))),
        ("ce_target_differs", lambda: ce(x, one(target.roll(1), target))),
        ("ce_smoothing", lambda: ce(x, target, label_smoothing=one(0.1, 0.0))),
        ("ce_reduction", lambda: ce(x, target, reduction=one("sum", "mean"))),
        ("ce_bad_option", lambda: ce(x, target, label_smoothing=one(2.0, 0.0))),
        ("ce_start", lambda: ce(x, target, vocab_start_index=one(None, cols.start))),
        ("lce_chunk", lambda: lce(h, w, target, chunk_size=one(3, 2))),
        ("lce_weight", lambda: lce(h, one(w[:, :-1], w), target)),
        ("lce_rows", lambda: lce(one(h[:-1], h), w, one(target[:-1], target))),
        ("lce_target_range", lambda: lce(h, w, one(wrong_target, target))),
    ]


def _checks(rank: int, world: int) -> dict:
    out: dict = {}
    for name, call in _scenarios(rank, world):
        try:
            out[name] = ("ok", call().detach())
        except (TypeError, ValueError) as e:
            out[name] = (type(e).__name__, str(e))
        except Exception as e:  # a collective timed out: the ranks fell out of step
            out[name] = ("broken", repr(e))
    full, h, W, target = _data()
    x = full.clone()
    x[2, :] = torch.nan if rank == 0 else x[2, :]  # NaN is not forbidden: it propagates
    out["nan"] = vocab_parallel_cross_entropy(x[:, _slice(rank, world)], target, reduction="none")
    out["after"] = vocab_parallel_cross_entropy(full[:, _slice(rank, world)], target)
    dist.barrier()
    return out


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory):
    world = request.param
    outdir = str(tmp_path_factory.mktemp(f"faults{world}"))
    return world, spawn(_checks, world, outdir, timeout_s=TIMEOUT_S)


EXPECTED = {
    "lsm_rows": ("ValueError", "local_logits must have the same number of rows on every rank"),
    "lsm_dtype": ("TypeError", "local_logits must be a floating-point tensor"),
    "ce_rows": ("ValueError", "target must have shape"),
    "ce_target_shape": ("ValueError", "target must have shape"),
    "ce_target_range": ("ValueError", f"target must hold class indices in [0, {V - 1}]"),
    "ce_target_all_ranks": ("ValueError", f"target must hold class indices in [0, {V - 1}]"),
    "ce_target_dtype": ("TypeError", "target must hold class indices (an integer dtype)"),
    "ce_target_differs": ("ValueError", "target must be identical on every rank"),
    "ce_smoothing": ("ValueError", "label_smoothing must be the same on every rank"),
    "ce_reduction": ("ValueError", "reduction must be the same on every rank"),
    "ce_bad_option": ("ValueError", "label_smoothing must be in"),
    "ce_start": ("ValueError", "vocab_start_index must be given on every rank or on none"),
    "lce_chunk": ("ValueError", "chunk_size must be the same on every rank"),
    "lce_weight": ("ValueError", "hidden's last dimension must equal local_weight's d"),
    "lce_rows": ("ValueError", "hidden must have the same number of rows on every rank"),
    "lce_target_range": ("ValueError", f"target must hold class indices in [0, {V - 1}]"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_on_one_rank_raises_the_same_error_on_every_rank(ranks, name):
    world, results = ranks
    kind, text = EXPECTED[name]
    got = [res[name] for res in results]
    assert all(g == got[0] for g in got), f"ranks disagree: {got}"
    assert got[0][0] == kind, got[0]
    assert text in got[0][1], got[0][1]


def test_the_failing_rank_is_named(ranks):
    world, results = ranks
    assert f"on rank {world - 1} of {world}" in results[0]["lsm_dtype"][1]
    assert f"on rank {world - 1}" in results[0]["ce_target_range"][1]


def test_nan_on_one_rank_propagates_to_every_rank(ranks):
    _, results = ranks
    for res in results:
        assert torch.isnan(res["nan"][2]) and torch.isfinite(res["nan"][[0, 1, 3, 4, 5]]).all()


def test_ranks_stay_in_step_after_the_errors(ranks):
    _, results = ranks
    full, _, _, target = _data()
    for res in results:
        torch.testing.assert_close(res["after"], F.cross_entropy(full, target))
