"""The shared contract, run over every registered public callable (see ``registry.py``).

Each test reads what applies from the :class:`Case` and skips with the case's reason where a
field says it does not apply: (a) float64 output equals the float64 reference; (b) every
dtype runs, keeps its dtype, and low precision stays close to float64 (no worse than torch's
own op where a baseline exists); (c) reductions agree; (d) ignore_index; (e) one-hot
probability targets equal class indices; (f) non-contiguous inputs and a non-last ``dim``;
(g) empty inputs; (h) ``torch.compile`` on CPU equals eager; (i) gradcheck; (j) bad
arguments raise and name the argument; (k) class indices of every integer dtype; (l)
extreme magnitudes; (m) a fully masked row.

Every test runs on CPU and, when ``torch.cuda.is_available()``, again on CUDA (test ids
ending in ``-cuda``): the sample tensors (and any module or generator among the arguments)
are moved there; the float64 references of (a) run on the CPU copy. A case whose op cannot
run on CUDA says why in ``skip["cuda"]``. The bad-argument checks (j) run on CPU only
(validation reads no data).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.contract.registry import FLOAT_DTYPES, Case, Sample, all_cases

CASES = all_cases()
IDS = [case.name for case in CASES]
IGNORE = -5  # a non-default ignore_index, so the keyword is seen to pass through

# |low precision - float64| allowed where a case sets no tolerance of its own
DEFAULT_TOL = {
    torch.float16: {"atol": 2e-3, "rtol": 1e-2},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 5e-2},
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
    torch.float64: {"atol": 1e-10, "rtol": 1e-8},
}
EXACT = {"atol": 1e-12, "rtol": 1e-10}  # float64 against float64: same math, other layout


DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def device_id(name: str, device: str) -> str:
    """The test id: the case name on CPU (as before devices), ``name-cuda`` elsewhere."""
    return name if device == "cpu" else f"{name}-{device}"


# Cases whose *test wrapper* (in tests/contract/cases_*.py) builds a module, tensor or
# generator on the CPU inside its op, so that the op cannot take CUDA inputs there although
# the library op can (found on an H200, torch 2.11, 2026-12-04). Each belongs in its case's
# skip["cuda"], or better, the wrapper builds on the input's device; until then, here.
_WRAPPER = "the contract wrapper builds {} on the CPU inside its op (tests/contract/{})"
CUDA_SKIPS = {
    "softmaxkit.attention.MultiheadAttention": _WRAPPER.format("the module", "cases_attention.py"),
    "softmaxkit.attention.local_band_mask": _WRAPPER.format("a tensor", "cases_rettention.py"),
    "softmaxkit.calibration.CorrectnessAwareCalibrator": _WRAPPER.format(
        "the module", "cases_after.py"
    ),
    "softmaxkit.calibration.MatrixScaling": _WRAPPER.format("the module", "cases_after.py"),
    "softmaxkit.calibration.VectorScaling": _WRAPPER.format("the module", "cases_after.py"),
    "softmaxkit.functional.GumbelSoftmax": _WRAPPER.format("a generator", "cases_maps.py"),
    "softmaxkit.functional.gumbel_softmax": _WRAPPER.format("a generator", "cases_maps.py"),
    "softmaxkit.heads.EquiangularHead": _WRAPPER.format("the module", "cases_heads_b.py"),
    "softmaxkit.heads.FourierHead": _WRAPPER.format("the module", "cases_fourier_tempnet.py"),
    "softmaxkit.heads.LinearCrossEntropy": _WRAPPER.format("the module", "cases_heads.py"),
    "softmaxkit.heads.TempNet": _WRAPPER.format("the module", "cases_fourier_tempnet.py"),
    "softmaxkit.heads.VQLogits": _WRAPPER.format("the module", "cases_heads.py"),
    "softmaxkit.losses.ALDRKLLoss": _WRAPPER.format("the module", "cases_losses.py"),
    "softmaxkit.losses.AdversarialCompSumLoss": _WRAPPER.format("a weight", "cases_losses.py"),
    "softmaxkit.losses.adversarial_comp_sum_loss": _WRAPPER.format("a weight", "cases_losses.py"),
    "softmaxkit.losses.NormalizedSoftmaxLoss": _WRAPPER.format("the module", "cases_losses.py"),
    "softmaxkit.losses.USKDLoss": _WRAPPER.format("the module", "cases_losses.py"),
    "softmaxkit.quant.AdaLogQuantizer": _WRAPPER.format("the module", "cases_quant.py"),
    "softmaxkit.quant.Log2Quantizer": _WRAPPER.format("the module", "cases_quant.py"),
    "softmaxkit.quant.LogSqrt2Quantizer": _WRAPPER.format("the module", "cases_quant.py"),
    "softmaxkit.quant.calibrate": _WRAPPER.format("the module", "cases_quant.py"),
    "softmaxkit.sparsity.NMMaskLearner": _WRAPPER.format("the layer", "cases_sparsity.py"),
    "softmaxkit.sparsity.apply_nm_masks": _WRAPPER.format("the layer", "cases_sparsity.py"),
    "softmaxkit.sparsity.nm_soft_mask": _WRAPPER.format("a generator", "cases_sparsity.py"),
}


def device_skip(case: Case, device: str) -> str | None:
    """Why ``case`` does not run on ``device`` (``None``: it does)."""
    if device == "cpu":
        return None
    return case.skip.get("cuda") or CUDA_SKIPS.get(case.name)


def cases(test: str, applies=lambda case: True, devices=DEVICES):
    """Parametrize over every case and device; those where ``test`` does not apply (or the
    op cannot run on the device) skip with a reason."""
    params = []
    for case in CASES:
        for device in devices:
            marks = []
            if test in case.skip:
                marks.append(pytest.mark.skip(reason=case.skip[test]))
            elif not applies(case):
                marks.append(pytest.mark.skip(reason=f"{test} does not apply to {case.name}"))
            elif device_skip(case, device):
                marks.append(pytest.mark.skip(reason=device_skip(case, device)))
            params.append(pytest.param(case, device, id=device_id(case.name, device), marks=marks))
    return pytest.mark.parametrize("case,device", params)


# ------------------------------------------------------------------------------- helpers


def tol(case: Case, dtype: torch.dtype) -> dict:
    return {**DEFAULT_TOL[dtype], **case.tol.get(dtype, {})}


def call(case: Case, sample: Sample, **overrides):
    return case.op(*sample.args, **{**sample.kwargs, **overrides})


def main_of(case: Case, out) -> torch.Tensor:
    if case.main is not None:
        return case.main(out)
    return out if isinstance(out, torch.Tensor) else out[0]


def flat(value) -> list:
    """The tensors / arrays / numbers of a (nested) output, in order."""
    if isinstance(value, (torch.Tensor, np.ndarray, int, float, np.floating)):
        return [value]
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in flat(item)]
    return []


def np64(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.to(torch.float64 if value.is_floating_point() else value.dtype).numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(actual, expected, atol: float, rtol: float, what: str = "") -> None:
    got, want = flat(actual), flat(expected)
    assert got, f"{what}: no output to compare"
    assert len(got) >= len(want), f"{what}: {len(got)} outputs, reference gives {len(want)}"
    for k, (a, b) in enumerate(zip(got, want)):
        a, b = np64(a), np64(b)
        assert a.shape == b.shape, f"{what} output {k}: shape {a.shape} != {b.shape}"
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=f"{what} output {k}")


def map_tensors(sample: Sample, fn) -> Sample:
    def one(value):
        return fn(value) if isinstance(value, torch.Tensor) else value

    return Sample(
        tuple(one(a) for a in sample.args),
        {k: one(v) for k, v in sample.kwargs.items()},
        sample.grad,
    )


def moved(value, device: str):
    """``value`` with its tensors and modules on ``device`` (nested in lists, tuples and
    dicts); unchanged on CPU. A ``torch.Generator`` stays as it is: some ops draw on the CPU
    with it by design (``kmeans``), others need one on the input's device (Gumbel)."""
    if device == "cpu":
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, torch.nn.Module):
        return value.to(device)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    return value


def on(sample: Sample, device: str) -> Sample:
    """``sample`` on ``device``."""
    if device == "cpu":
        return sample
    return Sample(moved(sample.args, device), moved(sample.kwargs, device), sample.grad)


def samples_on(case: Case, dtype: torch.dtype, device: str) -> list[Sample]:
    return [on(s, device) for s in case.samples(dtype)]


def as_float64(sample: Sample) -> Sample:
    return map_tensors(
        sample, lambda t: t.detach().to(torch.float64) if t.is_floating_point() else t
    )


def with_leaves(sample: Sample) -> tuple[Sample, list[torch.Tensor]]:
    """A copy whose ``grad`` positions are fresh leaves that require grad."""
    args = list(sample.args)
    leaves = []
    for i in sample.grad:
        args[i] = args[i].detach().clone().requires_grad_(True)
        leaves.append(args[i])
    return Sample(tuple(args), dict(sample.kwargs), sample.grad), leaves


def grads(output: torch.Tensor, leaves, seed: int = 7) -> list[torch.Tensor]:
    """Gradients of <output, fixed random cotangent> w.r.t. ``leaves`` (zeros if unused)."""
    if not leaves or not output.requires_grad:
        return [torch.zeros_like(leaf) for leaf in leaves]
    cot = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed))
    cot = cot.to(dtype=output.dtype, device=output.device)
    got = torch.autograd.grad(output, leaves, cot, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, got)]


def index_target(case: Case, sample: Sample) -> torch.Tensor | None:
    if case.target_arg is None:
        return None
    target = sample.args[case.target_arg]
    return None if target.is_floating_point() else target


def replace_arg(sample: Sample, position: int, value) -> Sample:
    args = list(sample.args)
    args[position] = value
    return Sample(tuple(args), dict(sample.kwargs), sample.grad)


# ---------------------------------------------------------------- (a) float64 reference


@cases("reference", lambda c: c.reference is not None)
def test_reference(case: Case, device: str):
    for k, sample in enumerate(case.samples(torch.float64)):
        out = call(case, on(sample, device))
        expected = case.reference(*sample.args, **sample.kwargs)
        assert_close(out, expected, **tol(case, torch.float64), what=f"sample {k}")


# ------------------------------------------------------------------------- (b) dtypes


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@cases("dtypes")
def test_dtypes(case: Case, device: str, dtype: torch.dtype):
    if dtype not in case.dtypes:
        pytest.skip(f"{case.name} does not take {dtype}")
    for k, sample in enumerate(samples_on(case, dtype, device)):
        run, leaves = with_leaves(sample)
        out = call(case, run)
        if case.keeps_dtype and isinstance(out, (torch.Tensor, tuple, list)):
            got = main_of(case, out).dtype
            assert got == dtype, f"sample {k}: {dtype} in, {got} out"
        # gradients come back in each input's dtype, finite
        for leaf, g in zip(leaves, grads(main_of(case, out), leaves) if leaves else ()):
            assert g.dtype == leaf.dtype, f"sample {k}: {leaf.dtype} input, {g.dtype} gradient"
            assert torch.isfinite(g).all(), f"sample {k}: non-finite gradient in {dtype}"
        if dtype == torch.float64:
            continue
        wide = as_float64(sample)
        expected = main_of(case, call(case, wide)).detach()
        got = main_of(case, out).detach().to(torch.float64)
        finite = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(got), finite), f"sample {k}: inf/NaN pattern differs"
        err = (got - expected)[finite].abs()
        base = None if case.baseline is None else case.baseline(*sample.args, **sample.kwargs)
        if base is not None:
            base = base.detach().to(torch.float64)
            base_err = (base - expected)[finite].abs()
            ulp = torch.finfo(dtype).eps * expected[finite].abs()
            bound = 2 * base_err.max() + ulp.max() if err.numel() else 0.0
            assert err.numel() == 0 or err.max() <= bound, (
                f"sample {k}: error {err.max():.3g} in {dtype}, torch's own {base_err.max():.3g}"
            )
        else:
            t = tol(case, dtype)
            limit = t["atol"] + t["rtol"] * expected[finite].abs()
            assert bool((err <= limit).all()), (
                f"sample {k}: error {err.max():.3g} in {dtype} beyond {t}"
            )


# --------------------------------------------------------------------- (c) reductions


@cases("reductions", lambda c: bool(c.reductions))
def test_reductions(case: Case, device: str):
    for k, sample in enumerate(samples_on(case, torch.float64, device)):
        out = {r: main_of(case, call(case, sample, reduction=r)) for r in case.reductions}
        if "none" not in out:
            continue
        none = out["none"]
        if "sum" in out:
            torch.testing.assert_close(out["sum"], none.sum(), **EXACT, msg=f"sample {k} sum")
        if "mean" in out and sample.kwargs.get("weight") is None:
            # (with class weights "mean" divides by the kept weight: the reference checks it)
            target = index_target(case, sample)
            if case.ignore_index and target is not None:
                ignore = sample.kwargs.get("ignore_index", -100)
                kept = int((target != ignore).sum())
            else:
                kept = none.numel()
            expected = none.sum() / kept if kept else none.sum() * 0
            torch.testing.assert_close(out["mean"], expected, **EXACT, msg=f"sample {k} mean")


# ------------------------------------------------------------------- (d) ignore_index


def row_leaves(leaves, target: torch.Tensor):
    """The leaves whose leading dimensions are the target's (one row per target entry)."""
    return [(i, leaf) for i, leaf in enumerate(leaves) if leaf.shape[: target.ndim] == target.shape]


@cases("ignore_index", lambda c: c.ignore_index and c.target_arg is not None)
def test_ignore_index(case: Case, device: str):
    samples = [
        s for s in samples_on(case, torch.float64, device) if index_target(case, s) is not None
    ]
    assert samples, "ignore_index needs a sample with a class-index target"
    sample = samples[0]
    reduction = {"reduction": "none"} if "none" in case.reductions else {}
    target = index_target(case, sample).clone()
    reference = main_of(case, call(case, sample, **reduction)).detach()
    target.view(-1)[0] = IGNORE
    ignored = replace_arg(sample, case.target_arg, target)

    # one ignored row: 0 in "none", the others unchanged, left out of "mean", no gradient
    run, leaves = with_leaves(ignored)
    out = main_of(case, call(case, run, ignore_index=IGNORE, **reduction))
    if reduction:
        assert out.reshape(-1)[0] == 0, "an ignored row must give 0 with reduction='none'"
        torch.testing.assert_close(out.reshape(-1)[1:], reference.reshape(-1)[1:], **EXACT)
        if "mean" in case.reductions:
            mean = main_of(case, call(case, ignored, ignore_index=IGNORE, reduction="mean"))
            torch.testing.assert_close(mean, out.sum() / (target.numel() - 1), **EXACT)
    for i, g in row_leaves(grads(out, leaves), target):
        assert torch.all(g.reshape(target.numel(), -1)[0] == 0), f"leaf {i}: ignored row has grad"

    # every row ignored: 0 (not NaN) with every reduction, and zero gradient
    everything = replace_arg(sample, case.target_arg, torch.full_like(target, IGNORE))
    for r in case.reductions or (None,):
        run, leaves = with_leaves(everything)
        extra = {} if r is None else {"reduction": r}
        out = main_of(case, call(case, run, ignore_index=IGNORE, **extra))
        assert not torch.isnan(out).any(), f"reduction={r}: NaN for an all-ignored batch"
        assert torch.all(out == 0), f"reduction={r}: an all-ignored batch must give 0"
        for i, g in enumerate(grads(out, leaves)):
            assert torch.all(g == 0), f"reduction={r}, leaf {i}: all-ignored batch has grad"


# -------------------------------------------------------------- (e) probability targets


@cases("prob_targets", lambda c: c.prob_targets and c.target_arg is not None)
def test_one_hot_probability_target_equals_index_target(case: Case, device: str):
    samples = [
        s
        for s in samples_on(case, torch.float64, device)
        if index_target(case, s) is not None and bool((index_target(case, s) >= 0).all())
    ]
    assert samples, "needs a sample with a class-index target and no ignored entry"
    reduction = {"reduction": "none"} if "none" in case.reductions else {}
    for k, sample in enumerate(samples):
        target = index_target(case, sample)
        if case.num_classes is not None:
            classes = case.num_classes(sample)
        else:  # the class axis of (N, C, d1, ...) logits with (N, d1, ...) targets, else last
            x = sample.args[0]
            classes = x.shape[1] if x.ndim == target.ndim + 1 and x.ndim > 1 else x.shape[-1]
        one_hot = F.one_hot(target, classes).to(torch.float64)  # on the target's device
        if target.ndim > 0:  # losses take the class axis at 1: (N, C, d1, ...)
            one_hot = one_hot.movedim(-1, case.prob_axis)
        run, leaves = with_leaves(sample)
        index_out = main_of(case, call(case, run, **reduction))
        index_grads = grads(index_out, leaves)
        run, leaves = with_leaves(replace_arg(sample, case.target_arg, one_hot))
        prob_out = main_of(case, call(case, run, **reduction))
        torch.testing.assert_close(prob_out, index_out, **EXACT, msg=f"sample {k}")
        for g, h in zip(grads(prob_out, leaves), index_grads):
            torch.testing.assert_close(g, h, **EXACT, msg=f"sample {k} gradient")


# ------------------------------------------------------- (f) non-contiguous, other dim


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous tensor (every other element of a wider one)."""
    if t.numel() < 2:
        return t
    wide = torch.stack([t.detach(), torch.zeros_like(t)], -1)[..., 0]
    assert not wide.is_contiguous()
    return wide.requires_grad_(t.requires_grad) if t.is_floating_point() else wide


@cases("noncontiguous", lambda c: c.noncontiguous)
def test_noncontiguous_equals_contiguous(case: Case, device: str):
    for k, sample in enumerate(samples_on(case, torch.float64, device)):
        run, leaves = with_leaves(sample)
        expected = call(case, run)
        expected_grads = grads(main_of(case, expected), leaves)
        run, leaves = with_leaves(map_tensors(sample, strided))
        got = call(case, run)
        assert_close(got, expected, **EXACT, what=f"sample {k}")
        for g, h in zip(grads(main_of(case, got), leaves), expected_grads):
            torch.testing.assert_close(g, h, **EXACT, msg=f"sample {k} gradient")


@cases("dim", lambda c: c.dim)
def test_other_dim_equals_movedim(case: Case, device: str):
    tested = 0
    for k, sample in enumerate(samples_on(case, torch.float64, device)):
        x = sample.args[0]
        if x.ndim < 2:
            continue
        axis = sample.kwargs.get("dim", -1) % x.ndim
        to = 0 if axis != 0 else x.ndim - 1

        def move(t, shape=x.shape, axis=axis, to=to):
            return t.movedim(axis, to) if t.shape == shape else t

        moved = map_tensors(sample, move)
        expected, got = call(case, sample), call(case, moved, dim=to)
        # outputs of the input's rank carry the moved axis; reduced ones do not
        back = [
            t.movedim(to, axis) if isinstance(t, torch.Tensor) and t.ndim == x.ndim else t
            for t in flat(got)
        ]
        assert_close(back, expected, **EXACT, what=f"sample {k}, dim={to}")
        tested += 1
    assert tested, "dim needs a sample with at least two dimensions"


# ------------------------------------------------------------------------- (g) empty


@cases("empty", lambda c: c.empty is not None)
def test_empty_input(case: Case, device: str):
    run, leaves = with_leaves(on(case.empty(), device))
    out = call(case, run)
    for t in flat(out):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            assert not torch.isnan(t).any(), "NaN from an empty input"
    main = main_of(case, out)
    if main.numel() == 1:
        assert main.item() == 0, "a reduced loss over no rows must be 0"
    for leaf, g in zip(leaves, grads(main, leaves)):
        assert g.shape == leaf.shape and torch.all(g == 0)


# ----------------------------------------------------------------------- (h) compile


def compile_groups() -> dict[str, list[Case]]:
    groups = defaultdict(list)
    for case in CASES:
        if case.compile and "compile" not in case.skip:
            groups[case.name.split(".")[1]].append(case)
    return dict(groups)


GROUPS = compile_groups()


# inductor (the default backend) costs minutes of C++ codegen for every package on a 2-core
# machine; "aot_eager" runs the same Dynamo capture and AOTAutograd graphs (where graph
# breaks, guards and traced autograd.Functions fail) and is set by default here. Set
# SOFTMAXKIT_CONTRACT_COMPILE=inductor to run the full compiler.
BACKEND = os.environ.get("SOFTMAXKIT_CONTRACT_COMPILE", "aot_eager")


@pytest.mark.parametrize(
    "group,device",
    [pytest.param(g, d, id=device_id(g, d)) for g in sorted(GROUPS) for d in DEVICES],
)
def test_compile_equals_eager(group: str, device: str):
    """One float32 sample per function, all of a package in one compiled function (the
    compile cost is paid once per package instead of once per function)."""
    members = [case for case in GROUPS[group] if device_skip(case, device) is None]
    if not members:
        pytest.skip(f"no case of {group} runs on {device}")
    samples = [samples_on(case, torch.float32, device)[0] for case in members]

    def run_all(arg_lists, kwarg_lists):
        return [
            main_of(case, case.op(*args, **kwargs))
            for case, args, kwargs in zip(members, arg_lists, kwarg_lists)
        ]

    def run(fn):
        runs = [with_leaves(s) for s in samples]
        outs = fn([list(r.args) for r, _ in runs], [r.kwargs for r, _ in runs])
        leaves = [leaf for _, case_leaves in runs for leaf in case_leaves]
        # one backward for all: <outputs, fixed cotangents> (the leaves are per case)
        total = sum(
            (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out)).sum()
            for out in outs
            if out.requires_grad
        )
        got = torch.autograd.grad(total, leaves, allow_unused=True) if leaves else ()
        sizes = [len(case_leaves) for _, case_leaves in runs]
        per_case, start = [], 0
        for n in sizes:
            per_case.append(got[start : start + n])
            start += n
        return outs, per_case

    torch._dynamo.reset()
    eager, eager_grads = run(run_all)
    compiled, compiled_grads = run(torch.compile(run_all, backend=BACKEND))
    for case, e, c, ge, gc in zip(members, eager, compiled, eager_grads, compiled_grads):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-4, msg=lambda m, n=case.name: n + m)
        for g, h in zip(gc, ge):
            if g is None or h is None:
                assert g is None and h is None, f"{case.name}: gradient reaches one side only"
                continue
            torch.testing.assert_close(
                g, h, atol=1e-5, rtol=1e-4, msg=lambda m, n=case.name: f"{n} gradient: {m}"
            )


def test_compile_skips_have_reasons():
    for case in CASES:
        if not case.compile:
            assert case.skip.get("compile"), f"{case.name}: compile=False needs a reason"


# --------------------------------------------------------------------- (i) gradcheck


@cases("gradcheck", lambda c: c.gradcheck)
def test_gradcheck(case: Case, device: str):
    checked = 0
    for sample in samples_on(case, torch.float64, device):
        if not sample.grad:
            continue
        run, leaves = with_leaves(sample)

        def fn(*xs, run=run):
            args = list(run.args)
            for i, x in zip(run.grad, xs):
                args[i] = x
            return main_of(case, case.op(*args, **run.kwargs))

        assert torch.autograd.gradcheck(
            fn, tuple(leaves), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
        )
        checked += 1
    assert checked, "gradcheck needs a sample with grad positions"


# ------------------------------------------------------------------- (j) bad arguments


@cases("bad", lambda c: bool(c.bad), devices=("cpu",))
def test_bad_arguments_name_the_argument(case: Case, device: str):
    sample = case.samples(torch.float32)[0]
    for bad in case.bad:
        args = list(sample.args)
        for i, value in bad.args.items():
            args[i] = value
        with pytest.raises(bad.error, match=re.escape(bad.name)):
            case.op(*args, **{**sample.kwargs, **bad.kwargs})


# ------------------------------------------------------- (k) integer dtypes of labels

INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@cases("labels", lambda c: bool(c.labels))
def test_integer_label_dtypes(case: Case, device: str):
    """Class indices of any integer dtype give the int64 result; bool and float a TypeError
    naming the argument."""
    sample = samples_on(case, torch.float32, device)[0]
    expected = call(case, sample)
    tested = []
    for dtype in INDEX_DTYPES:
        info, run = torch.iinfo(dtype), sample
        for i in case.labels:
            t = sample.args[i]
            assert not t.is_floating_point() and t.dtype != torch.bool, f"args[{i}] not indices"
            if t.numel() and (int(t.min()) < info.min or int(t.max()) > info.max):
                break  # the values do not fit this dtype (e.g. a negative ignore_index)
            run = replace_arg(run, i, t.to(dtype))
        else:
            assert_close(call(case, run), expected, **EXACT, what=f"labels as {dtype}")
            tested.append(dtype)
    assert torch.int32 in tested, "int32 labels must be tested"
    for i, name in case.labels.items():
        t = sample.args[i]
        for wrong in (t.to(torch.float32), t != 0):
            with pytest.raises(TypeError, match=re.escape(name)):
                call(case, replace_arg(sample, i, wrong))


# --------------------------------------------------------- (l) extreme magnitudes

EXTREMES = (
    (torch.float32, 1e19),
    (torch.float32, 1e30),
    (torch.float32, 3e38),
    (torch.float16, 6e4),
    (torch.bfloat16, 3e38),
)


def scaled_to(sample: Sample, positions, magnitude: float, dtype: torch.dtype) -> Sample:
    """``sample`` with the floating args at ``positions`` scaled so that their largest entry
    has absolute value ``magnitude`` (scaled in float64, then rounded to ``dtype``)."""
    args = list(sample.args)
    for i in positions:
        x = args[i].detach().to(torch.float64)
        finite = x[torch.isfinite(x)].abs()
        if finite.numel() and finite.max() > 0:
            args[i] = (x * (magnitude / finite.max())).to(dtype)
    return Sample(tuple(args), dict(sample.kwargs), sample.grad)


@pytest.mark.parametrize(
    "dtype,magnitude", EXTREMES, ids=[f"{d}-{m:g}".replace("torch.", "") for d, m in EXTREMES]
)
@cases("magnitude", lambda c: bool(c.magnitude))
def test_extreme_magnitudes(case: Case, device: str, dtype: torch.dtype, magnitude: float):
    """Finite inputs anywhere in the dtype's range: the output is finite and close to float64
    wherever float64's is finite and representable in ``dtype``, and no gradient is NaN where
    float64's is finite."""
    if dtype not in case.dtypes:
        pytest.skip(f"{case.name} does not take {dtype}")
    if case.beyond_max and magnitude > 1e38:
        pytest.skip(case.beyond_max)
    top = torch.finfo(dtype).max
    for k, sample in enumerate(samples_on(case, dtype, device)):
        if sample.kwargs.get("from_logits") is False:
            continue  # probabilities, not logits: they have no magnitude to scale
        run, leaves = with_leaves(scaled_to(sample, case.magnitude, magnitude, dtype))
        got = main_of(case, call(case, run))
        got_grads = grads(got, leaves)
        wide, wide_leaves = with_leaves(as_float64(run))
        expected = main_of(case, call(case, wide))
        expected_grads = grads(expected, wide_leaves)
        got, expected = got.detach().to(torch.float64), expected.detach()
        shown = torch.isfinite(expected) & (expected.abs() <= top)
        assert torch.isfinite(got[shown]).all(), f"sample {k}: inf/NaN where float64 is finite"
        t = tol(case, dtype)
        err = (got - expected)[shown].abs()
        limit = t["atol"] + t["rtol"] * expected[shown].abs()
        assert bool((err <= limit).all()), f"sample {k}: error {err.max():.3g} beyond {t}"
        for g, h in zip(got_grads, expected_grads):
            assert not torch.isnan(g[torch.isfinite(h)]).any(), f"sample {k}: NaN gradient"


# --------------------------------------------------------- (m) a fully masked row


@cases("masked_row", lambda c: c.masked_row is not None)
def test_fully_masked_row(case: Case, device: str):
    """A row of all -inf gives zeros (a probability map) or -inf (a log map); the other rows
    are unchanged and no gradient is NaN (the masked row's is zero)."""
    fill = {"zeros": 0.0, "-inf": -float("inf")}[case.masked_row]
    for dtype in (torch.float64, torch.float32):
        sample = next(
            s
            for s in samples_on(case, dtype, device)
            if s.args[0].ndim >= 2 and s.kwargs.get("dim", -1) in (-1, s.args[0].ndim - 1)
        )
        x = sample.args[0].detach().clone()
        x.reshape(-1, x.shape[-1])[0] = -float("inf")
        expected = main_of(case, call(case, sample)).detach()
        run, leaves = with_leaves(replace_arg(sample, 0, x))
        out = main_of(case, call(case, run))
        rows = out.detach().reshape(-1, out.shape[-1])
        assert torch.all(rows[0] == fill), f"{dtype}: the masked row gives {rows[0]}"
        torch.testing.assert_close(rows[1:], expected.reshape(-1, out.shape[-1])[1:], **EXACT)
        for position, g in zip(sample.grad, grads(out, leaves)):
            assert not torch.isnan(g).any(), f"{dtype}: NaN gradient"
            if position == 0:
                assert torch.all(g.reshape(-1, x.shape[-1])[0] == 0), "masked row has grad"


def test_cuda_skips_name_registered_cases():
    names = {case.name for case in CASES}
    assert not set(CUDA_SKIPS) - names, f"stale CUDA_SKIPS: {set(CUDA_SKIPS) - names}"
    for case in CASES:
        if "cuda" in case.skip:
            assert case.skip["cuda"].strip(), f"{case.name}: skip['cuda'] needs a reason"


def test_samples_move_to_the_device():
    """What the CUDA runs do to a sample, shown on the "meta" device: tensors (nested) and
    modules move, generators and other values stay; CPU leaves the sample as it is."""
    g = torch.Generator()
    layer = torch.nn.Linear(2, 2)
    kwargs = {"generator": g, "w": torch.ones(1)}
    sample = Sample((torch.ones(2), [torch.zeros(1)], layer, 3), kwargs)
    assert on(sample, "cpu") is sample
    meta = on(sample, "meta")
    assert meta.args[0].is_meta and meta.args[1][0].is_meta and layer.weight.is_meta
    assert meta.args[3] == 3 and meta.kwargs["generator"] is g and meta.kwargs["w"].is_meta
    assert device_id("x", "cpu") == "x" and device_id("x", "cuda") == "x-cuda"
