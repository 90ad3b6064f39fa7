"""Contract cases of ``softmaxkit.distributed`` at world size 1 (no process group): the
vocabulary is not split, so each op is its single-device counterpart."""

from __future__ import annotations

import torch

from softmaxkit import distributed as P
from tests.contract.inputs import labels, np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import contract_ref, maps_ref

N, D, V = 4, 3, 6
REDUCTIONS = ("mean", "sum", "none")
# Test (l) at 3e38 (float32, bfloat16) does not apply: the fused linear layer's logits
# h @ W themselves exceed float32's range there (only the average loss is finite), and the
# label-smoothing term of the shared cross-entropy rules carries the row's logit SUM, which
# overflows at 3e38 (softmaxkit/_ops/cross_entropy.py). beyond_max: test (l) runs them at
# 1e19, 1e30 and 6e4.
BEYOND_RANGE = (
    "at 3e38 the logits of the linear layer, or the smoothing term's logit sum, exceed "
    "float32's range"
)


def log_softmax_samples(dtype):
    return [
        Sample((randn(N, V, dtype=dtype),), grad=(0,)),
        Sample((randn(2, 3, V, dtype=dtype, seed=1),), grad=(0,)),
    ]


register(
    Case(
        name="softmaxkit.distributed.vocab_parallel_log_softmax",
        op=P.vocab_parallel_log_softmax,
        samples=log_softmax_samples,
        reference=lambda x, group=None: maps_ref.log_softmax(np64(x)),
        baseline=lambda x, group=None: torch.log_softmax(x, -1),
        empty=lambda: Sample((randn(0, V),), grad=(0,)),
        magnitude=(0,),
        masked_row="-inf",
        bad=[Bad({}, TypeError, "local_logits", args={0: [[1.0]]})],
    )
)


def ce_samples(dtype):
    return [
        Sample((randn(N, V, dtype=dtype), labels(N, classes=V)), grad=(0,)),
        Sample(
            (randn(2, 3, V, dtype=dtype, seed=1), labels(2, 3, classes=V, seed=2)),
            {"label_smoothing": 0.1, "reduction": "none"},
            grad=(0,),
        ),
    ]


def ce_reference(local_logits, target, *, group=None, vocab_start_index=None, **options):
    z = np64(local_logits).reshape(-1, V)
    t = np64(target).reshape(z.shape) if target.is_floating_point() else target.reshape(-1).numpy()
    loss = contract_ref.cross_entropy(z, t, **options)
    if options.get("reduction") == "none":
        loss = loss.reshape(local_logits.shape[:-1])
    return loss


def ce_baseline(local_logits, target, **options):
    if target.is_floating_point():
        return None
    logits = local_logits.reshape(-1, V)
    out = torch.nn.functional.cross_entropy(logits, target.reshape(-1), **options)
    return out.reshape(target.shape) if options.get("reduction") == "none" else out


register(
    Case(
        name="softmaxkit.distributed.vocab_parallel_cross_entropy",
        op=P.vocab_parallel_cross_entropy,
        samples=ce_samples,
        reference=ce_reference,
        baseline=ce_baseline,
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=1,
        labels={1: "target"},
        magnitude=(0,),
        beyond_max=BEYOND_RANGE,
        empty=lambda: Sample((randn(0, V), torch.zeros(0, dtype=torch.long)), grad=(0,)),
        bad=[
            Bad({}, TypeError, "local_logits", args={0: [[1.0]]}),
            Bad({"reduction": "avg"}, ValueError, "reduction"),
            Bad({"label_smoothing": 2.0}, ValueError, "label_smoothing"),
            Bad({}, ValueError, "target", args={1: torch.zeros(N + 1, dtype=torch.long)}),
        ],
    )
)


def lce_samples(dtype):
    x, w = randn(N, D, dtype=dtype), randn(V, D, dtype=dtype, seed=7)
    return [
        Sample((x, w, labels(N, classes=V)), {"reduction": "none", "chunk_size": 3}, grad=(0, 1)),
        Sample(
            (randn(2, 3, D, dtype=dtype, seed=1), w, labels(2, 3, classes=V, seed=2)),
            {
                "reduction": "none",
                "local_bias": randn(V, dtype=dtype, seed=3),
                "label_smoothing": 0.1,
                "softcap": 2.0,
                "logsumexp_penalty": 0.01,
            },
            grad=(0, 1),
        ),
        Sample((x, w, labels(N, classes=V, seed=5)), {"label_smoothing": 0.2}),
    ]


def lce_reference(
    hidden,
    local_weight,
    target,
    *,
    local_bias=None,
    group=None,
    vocab_start_index=None,
    chunk_size=None,
    **options,
):
    z = np64(hidden).reshape(-1, D) @ np64(local_weight).T
    if local_bias is not None:
        z = z + np64(local_bias)
    loss = contract_ref.cross_entropy(z, target.reshape(-1).numpy(), **options)
    if options.get("reduction") == "none":
        loss = loss.reshape(target.shape)
    return loss


register(
    Case(
        name="softmaxkit.distributed.vocab_parallel_linear_cross_entropy",
        op=P.vocab_parallel_linear_cross_entropy,
        samples=lce_samples,
        reference=lce_reference,
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=2,
        labels={2: "target"},
        magnitude=(0,),
        beyond_max=BEYOND_RANGE,
        empty=lambda: Sample(
            (randn(0, D), randn(V, D), torch.zeros(0, dtype=torch.long)), grad=(0, 1)
        ),
        bad=[
            Bad({}, TypeError, "hidden", args={0: [[1.0]]}),
            Bad({}, ValueError, "local_weight", args={1: randn(V, D + 1)}),
            Bad({"reduction": "avg"}, ValueError, "reduction"),
            Bad({"softcap": -1.0}, ValueError, "softcap"),
        ],
    )
)
