"""Every public map and loss traces under ``torch.compile`` without a graph break.

For every contract case (``tests/contract/registry.py``) naming a function of
``softmaxkit.functional.__all__`` or ``softmaxkit.losses.__all__``, ``torch._dynamo.explain``
runs the case's callable on its first float32 sample (the differentiable inputs requiring
grad, so the autograd path is traced too) and must report no graph break (and at
least one graph, so the call was traced at all). A break means the compiler splits the user's
model there and cannot fuse across it (DESIGN.md: every public op runs under
``torch.compile``). The only exemptions are in :data:`EXEMPT`, each with its reason. The
module twins call these functions and add no Python of their own to trace.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from softmaxkit import functional, losses
from tests.contract.registry import Case, all_cases

#: case name -> why it may break the graph (checked: every key is a case of this test)
EXEMPT = {
    "softmaxkit.functional.clipped_softmax_gamma": "pure Python arithmetic on two numbers: "
    "there is no tensor op to trace",
    "softmaxkit.losses.adversarial_comp_sum_loss": "runs a PGD attack on the model inside "
    "the loss (torch.autograd.grad in a loop), which dynamo does not trace "
    "(torch._dynamo.config.trace_autograd_ops is off by default)",
    "softmaxkit.losses.decoupled_softmax_loss": "gathers the positives with nonzero (a "
    "data-dependent shape); a dense compile path is not written yet",
    "softmaxkit.losses.multi_positive_softmax_loss": "gathers the positives with nonzero (a "
    "data-dependent shape); a dense compile path is not written yet",
    "softmaxkit.losses.soft_topk_loss": "gathers the positives with nonzero (a "
    "data-dependent shape); a dense compile path is not written yet",
}


def public_functions() -> set[str]:
    names = set()
    for package in (functional, losses):
        for name in package.__all__:
            if inspect.isfunction(getattr(package, name)):
                names.add(f"{package.__name__}.{name}")
    return names


CASES = [case for case in all_cases() if case.name in public_functions()]


def gumbel_without_generator(case: Case):
    """The contract's gumbel case seeds a fresh ``torch.Generator`` per call; dynamo cannot
    put a Generator object in a graph (in torch 2.13 ``exponential_(generator=g)`` breaks),
    so the map is traced as a model calls it, on the global generator."""
    return lambda logits, tau=1.0, *, hard=False, dim=-1, seed=0: functional.gumbel_softmax(
        logits, tau, hard=hard, dim=dim
    )


OPS = {"softmaxkit.functional.gumbel_softmax": gumbel_without_generator}


def test_every_public_function_is_covered():
    assert {case.name for case in CASES} == public_functions()
    assert set(EXEMPT) <= public_functions()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_no_graph_break(case: Case):
    if case.name in EXEMPT:
        pytest.skip(EXEMPT[case.name])
    op = OPS[case.name](case) if case.name in OPS else case.op
    sample = case.samples(torch.float32)[0]
    args = list(sample.args)
    for i in sample.grad:  # trace what training traces: the inputs require grad
        args[i] = args[i].detach().clone().requires_grad_(True)
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(op)(*args, **sample.kwargs)
    finally:
        torch._dynamo.reset()
    reasons = [str(b.reason).strip().splitlines()[0] for b in explained.break_reasons]
    stacks = [
        f"{frame.filename.rpartition('/')[2]}:{frame.lineno}"
        for b in explained.break_reasons
        for frame in b.user_stack[-1:]
    ]
    assert explained.graph_break_count == 0, f"graph breaks: {reasons} at {stacks}"
    assert explained.graph_count >= 1
