"""Contract cases of issue 14's dynamics additions: ``key_space_report`` with its result
types, and ``CollapseMonitor`` with its record type.

``key_space_report`` is checked against the float64 transcription of
``tests/reference/key_space_ref.py``; the monitor, registered through a small ``op`` that
hooks an ``nn.Identity`` fed the logits, against the Softmax Collapse oracle of
``contract_after_ref`` on the samples of ``cases_after`` (rows far from every precision's
threshold). Both are detached diagnostics: no gradient, no compile.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from softmaxkit import dynamics as D
from tests.contract.cases_after import PRECISION, collapse_logits
from tests.contract.inputs import np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import contract_after_ref as after_ref
from tests.reference import key_space_ref as ks_ref

NOT_COMPILED = "not compiled: a detached diagnostic (topk, sort, Python-side blocks)"
NO_GRAD = "a detached diagnostic under no_grad: not differentiable by contract"
CONTAINER = "result container: built and checked field by field through {}"


# ======================================================================= key_space_report
def key_space_samples(dtype):
    keys = randn(300, 12, dtype=dtype, seed=1400)
    queries = randn(8, 12, dtype=dtype, seed=1401, scale=2.0)
    return [
        Sample((keys, queries)),
        Sample((keys, queries), {"top": 3, "window": 20, "neighbours": 7, "mass_ranks": 30}),
        Sample((keys, queries.reshape(2, 4, 12)), {"top": 1, "window": 500, "neighbours": 299}),
    ]


def key_space_ref(output_weight, queries, **kwargs):
    kwargs.pop("quantiles", None)
    q = np64(queries)
    lead = q.shape[:-1]
    top1, rho, share, chance = ks_ref.report(np64(output_weight), q.reshape(-1, 12), **kwargs)
    return np.asarray(top1).reshape(lead), rho.reshape(lead), share.reshape(lead), chance


def key_space_main(report):
    return torch.stack([report.spearman.reshape(-1), report.neighbour_share.reshape(-1)])


def summary_ref(output_weight, queries, **kwargs):
    """The spearman summary: NaN-ignoring mean, linear quantiles and count, in float64."""
    _, rho, _, _ = key_space_ref(output_weight, queries, **kwargs)
    rho = rho.reshape(-1)
    levels = kwargs.get("quantiles", (0.1, 0.25, 0.5, 0.75, 0.9))
    defined = rho[~np.isnan(rho)]
    return float(defined.mean()), np.quantile(defined, levels), int(defined.size)


BAD_KEY_SPACE = [
    Bad({}, TypeError, "output_weight", args={0: torch.zeros(300, 12, dtype=torch.long)}),
    Bad({}, ValueError, "output_weight", args={0: torch.zeros(300)}),
    Bad({}, ValueError, "queries", args={1: torch.zeros(8, 5)}),
    Bad({}, TypeError, "queries", args={1: [0.0] * 12}),
    Bad({"top": 0}, ValueError, "top"),
    Bad({"window": 1}, ValueError, "window"),
    Bad({"neighbours": 300}, ValueError, "neighbours"),
    Bad({"mass_ranks": True}, TypeError, "mass_ranks"),
    Bad({"quantiles": (2.0,)}, ValueError, "quantiles[0]"),
]
KEY_SPACE_SKIP = {
    "compile": NOT_COMPILED,
    "gradcheck": NO_GRAD,
    "empty": "documented: the batch summaries of no queries are NaN (as torch.mean of "
    "nothing); the per-query tensors are empty (tested in tests/dynamics/test_key_space.py)",
}
KEY_SPACE = Case(
    name="softmaxkit.dynamics.key_space_report",
    op=D.key_space_report,
    samples=key_space_samples,
    reference=key_space_ref,
    compile=False,
    gradcheck=False,
    main=key_space_main,
    keeps_dtype=False,  # documented: float32 results for float16/bfloat16/float32 inputs
    bad=BAD_KEY_SPACE,
    tol={torch.float32: {"atol": 1e-4, "rtol": 1e-3}},
    skip=KEY_SPACE_SKIP,
)


def container(name: str, source: Case, op, main, reference) -> Case:
    reason = CONTAINER.format(source.name)
    tests = ("dtypes", "reductions", "ignore_index", "prob_targets")
    tests += ("noncontiguous", "dim", "empty", "compile", "gradcheck", "bad")
    return Case(
        name=name,
        op=op,
        samples=source.samples,
        reference=reference,
        compile=False,
        gradcheck=False,
        main=main,
        keeps_dtype=False,
        skip={test: reason for test in tests},
    )


def spearman_summary_op(output_weight, queries, **kwargs):
    return D.key_space_report(output_weight, queries, **kwargs).spearman_summary


# ======================================================================== CollapseMonitor
def monitor_op(logits, target=None, *, every=1, dtype=torch.float32, dim=-1, calls=1):
    """``calls`` forward calls of an ``nn.Identity`` fed ``logits`` under a monitor (the
    target set before each); returns the latest record."""
    identity = nn.Identity()
    with D.CollapseMonitor(identity, find=False, every=every, dtype=dtype, dim=dim) as monitor:
        for _ in range(calls):
            monitor.set_target(target)
            identity(logits)
    return monitor.latest


def monitor_ref(logits, target=None, *, every=1, dtype=torch.float32, dim=-1, calls=1):
    x = np.moveaxis(np64(logits), dim, -1)
    t = None if target is None else target.detach().numpy()
    fraction, _, zero = after_ref.softmax_collapse(x, t, precision=PRECISION[dtype])
    last = (calls - 1) // every * every
    return (last, fraction) if zero is None else (last, fraction, zero)


def monitor_samples(dtype):
    x = collapse_logits(dtype)
    mixed = torch.zeros(8, dtype=torch.long)
    mixed[[1, 3]] = 2
    mixed[5] = -100
    x3 = torch.stack([x, x.flip(0)]).transpose(1, 2).contiguous()  # (2, 5, 8), classes dim 1
    return [
        Sample((x, mixed)),
        Sample((x,), {"dtype": torch.float64}),
        Sample((x, mixed), {"every": 2, "calls": 5, "dtype": torch.bfloat16}),
        Sample((x3,), {"dim": 1, "dtype": torch.float16}),
    ]


def record_main(record):
    if record.zero_loss_fraction is None:
        return record.fraction
    return torch.stack([record.fraction, record.zero_loss_fraction])


MONITOR = Case(
    name="softmaxkit.dynamics.CollapseMonitor",
    op=monitor_op,
    samples=monitor_samples,
    reference=monitor_ref,
    compile=False,
    gradcheck=False,
    dim=True,
    main=record_main,
    keeps_dtype=False,  # documented: float32 fractions, as softmax_collapse
    bad=[
        Bad({"every": 0}, ValueError, "every"),
        Bad({"dtype": torch.int32}, ValueError, "dtype"),
        Bad({"dim": 1.0}, TypeError, "dim"),
        Bad({}, TypeError, "target", args={1: [0] * 8}),
    ],
    labels={1: "target"},
    skip={
        "compile": "a forward hook recording Python objects: not traced by contract",
        "gradcheck": NO_GRAD,
        "empty": "tested in tests/dynamics/test_monitor.py through softmax_collapse (an empty "
        "batch records a fraction of 0)",
    },
)

register(
    KEY_SPACE,
    container(
        "softmaxkit.dynamics.KeySpaceReport",
        KEY_SPACE,
        D.key_space_report,
        key_space_main,
        key_space_ref,
    ),
    container(
        "softmaxkit.dynamics.KeySpaceSummary",
        KEY_SPACE,
        spearman_summary_op,
        lambda summary: summary.mean,
        summary_ref,
    ),
    MONITOR,
    container("softmaxkit.dynamics.CollapseRecord", MONITOR, monitor_op, record_main, monitor_ref),
)
