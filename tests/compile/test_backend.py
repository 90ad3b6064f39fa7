"""The opt-in compiled backend: ``softmaxkit.set_backend`` / ``get_backend`` /
``use_backend``.

* the switch: default, set, restore, per-thread ``use_backend``, bad names;
* every map and loss under ``use_backend("compile")`` equals eager within the contract's
  float32 tolerance, values and gradients (one float32 sample per contract case; inductor
  compiles each function, 10-20 s each on 2 cores, so the full sweep is marked ``slow`` and
  a fast subset runs by default);
* the fallback: a compiler that fails leaves the function eager with one warning; a bad
  argument raises as in eager and does not count as a compiler failure.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
import torch._inductor.config

import softmaxkit
from softmaxkit._ops import backend
from tests.compile.test_graph_breaks import CASES, OPS
from tests.contract.registry import Case

F32 = {"atol": 1e-5, "rtol": 1e-4}  # the contract's float32 tolerance (test_contract.py)
FAST = {"softmaxkit.functional.stablemax", "softmaxkit.losses.stablemax_cross_entropy"}
# the full sweep (-m slow) took 19 min on the 2 shared cores (load 14), about 30 s a function
# exempt from the graph-break test because they take no tensor or run a nested autograd
# loop: nothing (or no single graph) to compile
NOT_COMPILED = {
    "softmaxkit.functional.clipped_softmax_gamma",
    "softmaxkit.losses.adversarial_comp_sum_loss",
}


@pytest.fixture(autouse=True)
def eager_after():
    yield
    softmaxkit.set_backend("eager")


def test_switch():
    assert softmaxkit.get_backend() == "eager"
    softmaxkit.set_backend("compile")
    assert softmaxkit.get_backend() == "compile"
    with softmaxkit.use_backend("eager"):
        assert softmaxkit.get_backend() == "eager"
    assert softmaxkit.get_backend() == "compile"
    softmaxkit.set_backend("eager")
    with pytest.raises(RuntimeError), softmaxkit.use_backend("compile"):
        raise RuntimeError
    assert softmaxkit.get_backend() == "eager"  # restored on an exception too


def test_use_backend_is_per_thread():
    seen = []
    with softmaxkit.use_backend("compile"):
        worker = threading.Thread(target=lambda: seen.append(softmaxkit.get_backend()))
        worker.start()
        worker.join()
    assert seen == ["eager"]


@pytest.mark.parametrize(("name", "error"), [("inductor", ValueError), (None, TypeError)])
def test_bad_name(name, error):
    with pytest.raises(error, match="name"):
        softmaxkit.set_backend(name)
    with pytest.raises(error, match="name"), softmaxkit.use_backend(name):
        pass
    assert softmaxkit.get_backend() == "eager"


def test_wrapper_keeps_the_function():
    assert softmaxkit.stablemax.__name__ == "stablemax"
    assert softmaxkit.stablemax.__doc__.startswith("StableMax")
    assert softmaxkit.stablemax.__wrapped__.__module__ == "softmaxkit.functional.stablemax"


def run(case: Case, op):
    """Output and gradients (of <output, fixed cotangent>) of the first float32 sample."""
    sample = case.samples(torch.float32)[0]
    args = list(sample.args)
    leaves = []
    for i in sample.grad:
        args[i] = args[i].detach().clone().requires_grad_(True)
        leaves.append(args[i])
    out = op(*args, **sample.kwargs)
    main = out if isinstance(out, torch.Tensor) else out[0]
    if case.main is not None:
        main = case.main(out)
    grads = []
    if leaves and main.requires_grad:
        cot = torch.randn(main.shape, generator=torch.Generator().manual_seed(7))
        grads = torch.autograd.grad(main, leaves, cot.to(main.dtype), allow_unused=True)
    return main, grads


def compiled_cases(names=None) -> list:
    """The cases compiled under the backend (``names``: only those, in the default run)."""
    return [
        pytest.param(case, id=case.name, marks=[] if names else [pytest.mark.slow])
        for case in CASES
        if case.name not in NOT_COMPILED and (names is None or case.name in names)
    ]


def check_compile_equals_eager(case: Case) -> None:
    op = OPS[case.name](case) if case.name in OPS else case.op
    torch._dynamo.reset()
    torch.manual_seed(0)
    want, want_grads = run(case, op)
    torch.manual_seed(0)
    # inductor draws random numbers with its own generator unless told to call torch's:
    # gumbel_softmax's noise is then another (equally distributed) sample
    with warnings.catch_warnings(), torch._inductor.config.patch(fallback_random=True):
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide a failure
        with softmaxkit.use_backend("compile"):
            got, got_grads = run(case, op)
    torch.testing.assert_close(got, want, **F32)
    assert len(got_grads) == len(want_grads)
    for g, h in zip(got_grads, want_grads):
        assert (g is None) == (h is None), "a gradient reaches one side only"
        if g is not None:
            torch.testing.assert_close(g, h, **F32)


@pytest.mark.parametrize("case", compiled_cases(FAST))
def test_compile_equals_eager_fast(case: Case):
    check_compile_equals_eager(case)


@pytest.mark.parametrize("case", compiled_cases())
def test_compile_equals_eager(case: Case):
    """Every map and loss (slow: 10-20 minutes of inductor compilation on 2 cores)."""
    check_compile_equals_eager(case)


def test_fallback_warns_once(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler (simulated)")

        return call

    monkeypatch.setattr(backend, "_compiled", {})
    monkeypatch.setattr(backend, "_failed", set())
    monkeypatch.setattr(backend, "_warned", [False])
    monkeypatch.setattr(torch, "compile", broken)
    x = torch.randn(3, 5)
    with softmaxkit.use_backend("compile"):
        with pytest.warns(RuntimeWarning, match="falls back|eagerly") as record:
            got = softmaxkit.stablemax(x)
            softmaxkit.log_stablemax(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            softmaxkit.stablemax(x)  # stays eager, no second warning
    assert len(record) == 1
    torch.testing.assert_close(got, softmaxkit.stablemax(x), atol=0, rtol=0)


def test_bad_argument_raises_as_eager(monkeypatch):
    monkeypatch.setattr(backend, "_failed", set())
    monkeypatch.setattr(backend, "_warned", [False])
    with softmaxkit.use_backend("compile"), warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="dim"):
            softmaxkit.stablemax(torch.randn(3, 5), dim=4)
    assert not backend._failed
