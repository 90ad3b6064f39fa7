"""Vocab-parallel log-softmax / cross-entropy against single-process torch.

The multi-process tests start 2 and 4 CPU processes once each (gloo backend, a free port,
a 60 s bound), run every check inside, save each rank's results to a tmp dir, and compare
them here with ``F.cross_entropy`` / ``torch.log_softmax`` over the concatenated vocabulary
in float64 to 1e-6 (in practice to rounding).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from softmaxkit.distributed import vocab_parallel_cross_entropy, vocab_parallel_log_softmax
from tests.distributed.launch import spawn
from tests.helpers import HALF_DTYPES

N, V = 7, 13
SPLITS = {2: [5, 8], 4: [1, 5, 3, 4]}  # uneven on purpose; rank 0 of 4 holds one class
TARGET = [0, 12, 5, 6, 9, 3, 1]  # classes on every rank
IGNORED = [2, 5]
REDUCTIONS = ["mean", "sum", "none"]
SMOOTHINGS = [0.0, 0.2, 1.0]
TOL = {"atol": 1e-6, "rtol": 1e-6}


def _data():
    gen = torch.Generator().manual_seed(11)
    full = torch.randn(N, V, generator=gen, dtype=torch.float64) * 3
    cot_rows = torch.randn(N, generator=gen, dtype=torch.float64)
    cot_full = torch.randn(N, V, generator=gen, dtype=torch.float64)
    full3 = torch.randn(2, 3, V, generator=gen, dtype=torch.float64)
    target3 = torch.randint(0, V, (2, 3), generator=gen)
    return full, cot_rows, cot_full, full3, target3


def _sub_slices(size: int) -> list[slice]:
    sizes = [len(c) for c in torch.arange(V).tensor_split(size)]
    starts = [sum(sizes[:i]) for i in range(size)]
    return [slice(a, a + w) for a, w in zip(starts, sizes, strict=True)]


def _masked(full: torch.Tensor) -> torch.Tensor:
    full = full.clone()
    full[4, :6] = -torch.inf  # all of rank 0's slice (and rank 1's at world size 4)
    return full


def _target(ignore: bool) -> torch.Tensor:
    t = torch.tensor(TARGET)
    if ignore:
        t[IGNORED] = -100
    return t


def _cotangent(reduction: str, cot_rows: torch.Tensor) -> torch.Tensor:
    return cot_rows if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)


def _megatron_style(local: torch.Tensor, target: torch.Tensor, eps: float, start: int):
    """Megatron's smoothing, for the record: local V_r, local mean log-probability."""
    m = local.amax(1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    s = (local - m[:, None]).exp().sum(1)
    dist.all_reduce(s)
    width = local.shape[1]
    own = (target >= start) & (target < start + width)
    zt = torch.where(own, local.gather(1, (target - start).clamp(0, width - 1)[:, None])[:, 0], 0)
    dist.all_reduce(zt)
    lse = m + s.log()
    if width == 1:  # Megatron divides by V_r - 1 = 0 here
        return float("nan")
    smoothing = eps * width / (width - 1)
    log_p = local - lse[:, None]
    return ((1 - smoothing) * (lse - zt) - smoothing * log_p.mean(1)).mean().item()


def _checks(rank: int, world: int) -> dict:
    splits = SPLITS[world]
    start = sum(splits[:rank])
    cols = slice(start, start + splits[rank])
    full, cot_rows, cot_full, full3, target3 = _data()
    local = full[:, cols].clone()
    out: dict = {}
    for reduction in REDUCTIONS:
        for eps in SMOOTHINGS:
            for ignore in (False, True):
                x = local.clone().requires_grad_(True)
                loss = vocab_parallel_cross_entropy(
                    x, _target(ignore), label_smoothing=eps, reduction=reduction
                )
                loss.backward(_cotangent(reduction, cot_rows))
                out[("ce", reduction, eps, ignore)] = (loss.detach(), x.grad)
    # an explicit vocab_start_index (skips the all_gather; V all-reduced for smoothing)
    x = local.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(
        x, _target(True), vocab_start_index=start, label_smoothing=0.2
    )
    loss.backward()
    out["ce_start"] = (loss.detach(), x.grad)
    # log_softmax: values and the backward all-reduce, with a random cotangent
    x = local.clone().requires_grad_(True)
    y = vocab_parallel_log_softmax(x)
    y.backward(cot_full[:, cols])
    out["lsm"] = (y.detach(), x.grad)
    # a row that is all -inf on some ranks (a masked part of the vocabulary)
    x = _masked(full)[:, cols].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, _target(False), reduction="none")
    loss.backward(cot_rows)
    out["masked"] = (loss.detach(), x.grad)
    # log_softmax of a row that is all -inf on every rank: -inf, zero gradient (not NaN)
    full_masked = _masked(full)
    full_masked[1] = -torch.inf
    x = full_masked[:, cols].clone().requires_grad_(True)
    y = vocab_parallel_log_softmax(x)
    y.backward(cot_full[:, cols])
    out["lsm_masked"] = (y.detach(), x.grad)
    # leading dimensions (S, B, V_local), Megatron's layout
    x = full3[..., cols].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target3, label_smoothing=0.1, reduction="none")
    loss.sum().backward()
    out["ce3d"] = (loss.detach(), x.grad)
    # bfloat16 logits: computed in float32, returned in bfloat16
    x = local.to(torch.bfloat16).requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, _target(True), label_smoothing=0.2)
    loss.backward()
    out["bf16"] = (loss.detach(), x.grad)
    # a subgroup: ranks 1.. (at world size 2 a group of one rank), vocabulary split anew
    members = list(range(1, world))
    sub = dist.new_group(members)
    if rank in members:
        sub_cols = _sub_slices(len(members))[members.index(rank)]
        x = full[:, sub_cols].clone().requires_grad_(True)
        loss = vocab_parallel_cross_entropy(x, _target(True), group=sub, label_smoothing=0.2)
        loss.backward()
        y = vocab_parallel_log_softmax(full[:, sub_cols], group=sub)
        out["sub"] = (loss.detach(), x.grad, y)
    else:
        try:
            vocab_parallel_cross_entropy(local, _target(False), group=sub)
            out["err_group"] = None
        except ValueError as e:
            out["err_group"] = str(e)
    # the caller's logits are never modified (Megatron mutates fp32 logits in place)
    x = local.clone()
    vocab_parallel_cross_entropy(x, _target(False), label_smoothing=0.2)
    vocab_parallel_log_softmax(x)
    out["unmodified"] = bool(torch.equal(x, local))
    out["megatron"] = _megatron_style(local, _target(False), 0.2, start)
    # errors, raised on every rank alike (no rank is left waiting in a collective)
    # rank 0 claims to start at class 1: class 0 (row 0's target) lies in no rank's slice
    try:
        vocab_parallel_cross_entropy(local, _target(False), vocab_start_index=start + (rank == 0))
        out["err_target"] = None
    except ValueError as e:
        out["err_target"] = str(e)
    rows = N - (rank == world - 1)
    try:
        vocab_parallel_cross_entropy(local[:rows], _target(False)[:rows])
        out["err_rows"] = None
    except ValueError as e:
        out["err_rows"] = str(e)
    return out


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory):
    world = request.param
    return world, spawn(_checks, world, str(tmp_path_factory.mktemp(f"world{world}")))


def _reference_ce(full, target, eps, reduction, cot):
    x = full.clone().requires_grad_(True)
    loss = F.cross_entropy(x, target, label_smoothing=eps, reduction=reduction)
    loss.backward(cot)
    return loss.detach(), x.grad


def _slices(world):
    starts = [sum(SPLITS[world][:r]) for r in range(world)]
    return [slice(s, s + w) for s, w in zip(starts, SPLITS[world], strict=True)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore_index"])
def test_cross_entropy_matches_single_process(ranks, reduction, eps, ignore):
    world, results = ranks
    full, cot_rows, *_ = _data()
    ref_loss, ref_grad = _reference_ce(
        full, _target(ignore), eps, reduction, _cotangent(reduction, cot_rows)
    )
    for res, cols in zip(results, _slices(world), strict=True):
        loss, grad = res[("ce", reduction, eps, ignore)]
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad[:, cols], **TOL)
        if ignore:
            assert torch.all(grad[IGNORED] == 0)


def test_explicit_vocab_start_index(ranks):
    world, results = ranks
    full, *_ = _data()
    ref_loss, ref_grad = _reference_ce(full, _target(True), 0.2, "mean", None)
    for res, cols in zip(results, _slices(world), strict=True):
        torch.testing.assert_close(res["ce_start"][0], ref_loss, **TOL)
        torch.testing.assert_close(res["ce_start"][1], ref_grad[:, cols], **TOL)


def test_log_softmax_values_and_gradient(ranks):
    world, results = ranks
    full, _, cot_full, *_ = _data()
    x = full.clone().requires_grad_(True)
    y = torch.log_softmax(x, 1)
    y.backward(cot_full)
    for res, cols in zip(results, _slices(world), strict=True):
        torch.testing.assert_close(res["lsm"][0], y.detach()[:, cols], **TOL)
        torch.testing.assert_close(res["lsm"][1], x.grad[:, cols], **TOL)


def test_row_all_minus_inf_on_some_ranks(ranks):
    world, results = ranks
    full, cot_rows, *_ = _data()
    ref_loss, ref_grad = _reference_ce(_masked(full), _target(False), 0.0, "none", cot_rows)
    for res, cols in zip(results, _slices(world), strict=True):
        torch.testing.assert_close(res["masked"][0], ref_loss, **TOL)
        torch.testing.assert_close(res["masked"][1], ref_grad[:, cols], **TOL)


def test_leading_dimensions(ranks):
    world, results = ranks
    *_, full3, target3 = _data()
    x = full3.clone().requires_grad_(True)
    ref = F.cross_entropy(
        x.reshape(-1, V), target3.reshape(-1), label_smoothing=0.1, reduction="none"
    )
    ref.sum().backward()
    for res, cols in zip(results, _slices(world), strict=True):
        torch.testing.assert_close(res["ce3d"][0], ref.detach().reshape(2, 3), **TOL)
        torch.testing.assert_close(res["ce3d"][1], x.grad[..., cols], **TOL)


def test_label_smoothing_exact_where_megatron_is_not(ranks):
    world, results = ranks
    full, *_ = _data()
    ref = F.cross_entropy(full, _target(False), label_smoothing=0.2).item()
    for res in results:
        assert res[("ce", "mean", 0.2, False)][0].item() == pytest.approx(ref, abs=1e-9)
        # local V_r and the local mean: wrong (a division by zero where V_r = 1)
        assert not abs(res["megatron"] - ref) < 1e-4  # it would fail our 1e-6 check


def test_bfloat16_logits(ranks):
    world, results = ranks
    full, *_ = _data()
    x = full.to(torch.bfloat16).float().requires_grad_(True)
    ref = F.cross_entropy(x, _target(True), label_smoothing=0.2)
    ref.backward()
    for res, cols in zip(results, _slices(world), strict=True):
        loss, grad = res["bf16"]
        assert loss.dtype == grad.dtype == torch.bfloat16
        torch.testing.assert_close(loss, ref.detach().to(torch.bfloat16))
        torch.testing.assert_close(grad, x.grad[:, cols].to(torch.bfloat16))


def test_subgroup(ranks):
    world, results = ranks
    full, *_ = _data()
    ref_loss, ref_grad = _reference_ce(full, _target(True), 0.2, "mean", None)
    ref_lsm = torch.log_softmax(full, 1)
    assert "group must contain this process" in results[0]["err_group"]
    for res, cols in zip(results[1:], _sub_slices(world - 1), strict=True):
        loss, grad, y = res["sub"]
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(grad, ref_grad[:, cols], **TOL)
        torch.testing.assert_close(y, ref_lsm[:, cols], **TOL)


def test_log_softmax_of_a_fully_masked_row_is_minus_inf(ranks):
    """Row 1 is -inf over the whole vocabulary: -inf out, zero gradient (the library's
    convention, as softmaxkit.log_softmax); row 4 is -inf on some ranks only: torch's."""
    world, results = ranks
    full, _, cot_full, *_ = _data()
    x = _masked(full)
    x[1] = -torch.inf
    x.requires_grad_(True)
    rest = [0, 2, 3, 4, 5, 6]
    ref = torch.log_softmax(x, -1)
    ref[rest].backward(cot_full[rest])
    for res, cols in zip(results, _slices(world), strict=True):
        y, grad = res["lsm_masked"]
        assert torch.all(y[1] == -torch.inf)
        assert torch.all(grad[1] == 0)
        torch.testing.assert_close(y[rest], ref[rest][:, cols].detach(), **TOL)
        torch.testing.assert_close(grad[rest], x.grad[rest][:, cols], **TOL)


def test_logits_not_modified(ranks):
    _, results = ranks
    assert all(res["unmodified"] for res in results)


def test_errors_are_raised_on_every_rank(ranks):
    _, results = ranks
    for res in results:
        assert res["err_target"] is not None
        assert "row 0" in res["err_target"]
        assert res["err_rows"] is not None
        assert "same number of rows on every rank" in res["err_rows"]


# --------------------------------------------------------------------------------------
# world size 1: no process group, exactly F.cross_entropy / log_softmax
# --------------------------------------------------------------------------------------

gen = torch.Generator().manual_seed(3)


def _case(shape=(6, 9), dtype=torch.float64):
    x = torch.randn(*shape, generator=gen, dtype=dtype) * 2
    t = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return x, t


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 4])
def test_world1_matches_cross_entropy(reduction, eps, ignore_index):
    assert not dist.is_initialized()
    x, t = _case()
    t[1] = ignore_index
    t[3] = ignore_index
    cot = torch.randn(6, generator=gen, dtype=torch.float64) if reduction == "none" else None
    kw = dict(ignore_index=ignore_index, label_smoothing=eps, reduction=reduction)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ours, ref = vocab_parallel_cross_entropy(a, t, **kw), F.cross_entropy(b, t, **kw)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    ours.backward(cot)
    ref.backward(cot)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=1e-12)
    assert torch.all(a.grad[[1, 3]] == 0)


def test_world1_leading_dims_and_log_softmax():
    x, t = _case((2, 3, 9))
    ref = F.cross_entropy(x.reshape(-1, 9), t.reshape(-1), reduction="none").reshape(2, 3)
    torch.testing.assert_close(vocab_parallel_cross_entropy(x, t, reduction="none"), ref)
    torch.testing.assert_close(vocab_parallel_log_softmax(x), torch.log_softmax(x, -1))


def test_world1_minus_inf_logits():
    x, t = _case()
    x[:, 0] = -torch.inf
    t[t == 0] = 1
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours, ref = vocab_parallel_cross_entropy(a, t), F.cross_entropy(b, t)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_world1_all_ignored_gives_zero_mean_and_zero_grad():
    x, _ = _case()
    x.requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, torch.full((6,), -100), label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(x.grad == 0)


def test_world1_gradcheck():
    x, t = _case((3, 5))
    t[1] = -100
    x.requires_grad_(True)
    for eps in (0.0, 0.25):
        for reduction in REDUCTIONS:
            assert torch.autograd.gradcheck(
                lambda z, e=eps, r=reduction: vocab_parallel_cross_entropy(
                    z, t, label_smoothing=e, reduction=r
                ),
                (x,),
            )
    assert torch.autograd.gradcheck(vocab_parallel_log_softmax, (x,))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_world1_half_dtypes_computed_in_float32(dtype):
    x, t = _case(dtype=torch.float32)
    xh = x.to(dtype).requires_grad_(True)
    ref_in = xh.detach().float().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(xh, t, label_smoothing=0.1)
    ref = F.cross_entropy(ref_in, t, label_smoothing=0.1)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float(), ref.to(dtype).float())
    loss.backward()
    ref.backward()
    assert xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.float(), ref_in.grad.to(dtype).float())
    y = vocab_parallel_log_softmax(xh)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), torch.log_softmax(ref_in.detach(), -1).to(dtype).float())


def test_world1_does_not_modify_logits():
    x, t = _case()
    before = x.clone()
    vocab_parallel_cross_entropy(x, t, label_smoothing=0.2)
    vocab_parallel_log_softmax(x)
    assert torch.equal(x, before)


def test_world1_under_torch_compile():
    x, t = _case()
    fn = torch.compile(
        lambda z: vocab_parallel_cross_entropy(z, t, label_smoothing=0.1), backend="eager"
    )
    torch.testing.assert_close(fn(x), F.cross_entropy(x, t, label_smoothing=0.1))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda x, t: vocab_parallel_cross_entropy(x.long(), t),
            TypeError,
            "local_logits must be a floating",
        ),
        (lambda x, t: vocab_parallel_cross_entropy(x[:, :0], t), ValueError, "V_local >= 1"),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t.double()),
            TypeError,
            "target must hold class indices",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t[:3]),
            ValueError,
            r"target must have shape \(6,\)",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t + 9),
            ValueError,
            r"indices in \[0, 8\].*got",
        ),
        (lambda x, t: vocab_parallel_cross_entropy(x, t - 9), ValueError, "got -"),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t, label_smoothing=1.5),
            ValueError,
            "label_smoothing must be in",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t, reduction="avg"),
            ValueError,
            "reduction must be one of",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t, ignore_index=1.0),
            TypeError,
            "ignore_index must be an int",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t, vocab_start_index=3),
            ValueError,
            "vocab_start_index must be None or 0",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t, vocab_start_index=-1),
            ValueError,
            "vocab_start_index must be in",
        ),
        (
            lambda x, t: vocab_parallel_cross_entropy(x, t, group=object()),
            ValueError,
            "group must be None when no",
        ),
        (
            lambda x, t: vocab_parallel_log_softmax(x, group=object()),
            ValueError,
            "group must be None when no",
        ),
        (
            lambda x, t: vocab_parallel_log_softmax([1.0]),
            TypeError,
            "local_logits must be a torch.Tensor",
        ),
    ],
)
def test_errors(call, error, match):
    x, t = _case()
    with pytest.raises(error, match=match):
        call(x, t)


def test_world1_double_backward_is_refused():
    x, t = _case()
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(vocab_parallel_cross_entropy(x, t), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        g.sum().backward()
