"""vocab_parallel_linear_cross_entropy against a single-process linear + F.cross_entropy.

2 and 4 gloo CPU processes (started once each, bounded in time); each rank holds an uneven
slice of the output weight and bias; loss and the gradients of hidden (full, on every rank),
of the weight slice and of the bias slice are compared in float64 to 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softmaxkit.distributed import vocab_parallel_linear_cross_entropy
from softmaxkit.heads import linear_cross_entropy
from tests.distributed.launch import spawn

N, D, V = 9, 5, 13
SPLITS = {2: [5, 8], 4: [1, 5, 3, 4]}  # uneven: the default chunk sizes differ per rank
TARGET = [0, 12, 5, 6, 9, 3, 1, 7, 11]
IGNORED = [2, 5]
REDUCTIONS = ["mean", "sum", "none"]
TOL = {"atol": 1e-6, "rtol": 1e-6}


def _data():
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(N, D, generator=gen, dtype=torch.float64)
    W = torch.randn(V, D, generator=gen, dtype=torch.float64)
    b = torch.randn(V, generator=gen, dtype=torch.float64)
    cot = torch.randn(N, generator=gen, dtype=torch.float64)
    h3 = torch.randn(2, 3, D, generator=gen, dtype=torch.float64)
    t3 = torch.randint(0, V, (2, 3), generator=gen)
    return h, W, b, cot, h3, t3


def _target(ignore: bool) -> torch.Tensor:
    t = torch.tensor(TARGET)
    if ignore:
        t[IGNORED] = -100
    return t


def _cotangent(reduction, cot):
    return cot if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)


def _run(h, W, b, target, cot, **kw):
    """(loss, grad h, grad W, grad b) of a call on leaf copies."""
    h, W, b = (t.clone().requires_grad_(True) for t in (h, W, b))
    loss = vocab_parallel_linear_cross_entropy(h, W, target, local_bias=b, **kw)
    loss.backward(cot)
    return loss.detach(), h.grad, W.grad, b.grad


def _checks(rank: int, world: int) -> dict:
    start = sum(SPLITS[world][:rank])
    cols = slice(start, start + SPLITS[world][rank])
    h, W, b, cot, h3, t3 = _data()
    Wr, br = W[cols], b[cols]
    out: dict = {}
    for reduction in REDUCTIONS:
        for eps in (0.0, 0.2):
            for ignore in (False, True):
                out[(reduction, eps, ignore)] = _run(
                    h,
                    Wr,
                    br,
                    _target(ignore),
                    _cotangent(reduction, cot),
                    reduction=reduction,
                    label_smoothing=eps,
                    chunk_size=4,
                )
    opts = dict(label_smoothing=0.1, softcap=2.5, logsumexp_penalty=0.05)
    out["options"] = _run(h, Wr, br, _target(True), None, **opts)  # default chunk size
    out["options_none"] = _run(
        h, Wr, br, _target(True), cot, reduction="none", chunk_size=2, **opts
    )
    out["start"] = _run(h, Wr, br, _target(True), None, vocab_start_index=start, chunk_size=3)
    out["3d"] = _run(h3, Wr, br, t3, torch.ones(2, 3, dtype=torch.float64), reduction="none")
    hb, Wb = h.to(torch.bfloat16), Wr.to(torch.bfloat16)
    out["bf16"] = _run(hb, Wb, br.to(torch.bfloat16), _target(True), None)
    with torch.no_grad():
        out["no_grad"] = vocab_parallel_linear_cross_entropy(h, Wr, _target(False))
    # rank 0 claims to start at class 1: class 0 (row 0's target) lies in no rank's slice
    try:
        vocab_parallel_linear_cross_entropy(
            h, Wr, _target(False), vocab_start_index=start + (rank == 0)
        )
        out["err_target"] = None
    except ValueError as e:
        out["err_target"] = str(e)
    return out


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory):
    world = request.param
    return world, spawn(_checks, world, str(tmp_path_factory.mktemp(f"linear{world}")))


def _slices(world):
    starts = [sum(SPLITS[world][:r]) for r in range(world)]
    return [slice(s, s + w) for s, w in zip(starts, SPLITS[world], strict=True)]


def _reference(h, W, b, target, cot, reduction="mean", eps=0.0, softcap=None, penalty=0.0):
    h, W, b = (t.clone().requires_grad_(True) for t in (h, W, b))
    z = h @ W.T + b
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    flat_z, flat_t = z.reshape(-1, V), target.reshape(-1)
    rows = F.cross_entropy(flat_z, flat_t, label_smoothing=eps, reduction="none")
    kept = (flat_t != -100).to(z.dtype)
    rows = rows + penalty * torch.logsumexp(flat_z, 1) ** 2 * kept
    if reduction == "mean":
        loss = rows.sum() / kept.sum()
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows.reshape(target.shape)
    loss.backward(cot)
    return loss.detach(), h.grad, W.grad, b.grad


def _assert_matches(res, ref, cols, tol=TOL):
    loss, gh, gW, gb = res
    torch.testing.assert_close(loss, ref[0], **tol)
    torch.testing.assert_close(gh, ref[1], **tol)  # the full hidden gradient on every rank
    torch.testing.assert_close(gW, ref[2][cols], **tol)
    torch.testing.assert_close(gb, ref[3][cols], **tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore_index"])
def test_matches_single_process(ranks, reduction, eps, ignore):
    world, results = ranks
    h, W, b, cot, *_ = _data()
    ref = _reference(h, W, b, _target(ignore), _cotangent(reduction, cot), reduction, eps)
    for res, cols in zip(results, _slices(world), strict=True):
        _assert_matches(res[(reduction, eps, ignore)], ref, cols)
        if ignore and reduction == "none":
            assert torch.all(res[(reduction, eps, ignore)][1][IGNORED] == 0)


def test_softcap_penalty_and_default_chunks(ranks):
    world, results = ranks
    h, W, b, cot, *_ = _data()
    kw = dict(eps=0.1, softcap=2.5, penalty=0.05)
    ref = _reference(h, W, b, _target(True), None, **kw)
    ref_none = _reference(h, W, b, _target(True), cot, reduction="none", **kw)
    for res, cols in zip(results, _slices(world), strict=True):
        _assert_matches(res["options"], ref, cols)
        _assert_matches(res["options_none"], ref_none, cols)


def test_explicit_start_leading_dims_and_no_grad(ranks):
    world, results = ranks
    h, W, b, _, h3, t3 = _data()
    ref = _reference(h, W, b, _target(True), None)
    ref3 = _reference(h3, W, b, t3, torch.ones(2, 3, dtype=torch.float64), reduction="none")
    plain = F.cross_entropy(h @ W.T, _target(False))
    for res, cols in zip(results, _slices(world), strict=True):
        _assert_matches(res["start"], ref, cols)
        _assert_matches(res["3d"], ref3, cols)
        torch.testing.assert_close(res["no_grad"], plain, **TOL)


def test_bfloat16(ranks):
    world, results = ranks
    h, W, b, *_ = _data()
    hb, Wb, bb = (t.to(torch.bfloat16).double() for t in (h, W, b))
    ref = _reference(hb, Wb, bb, _target(True), None)
    for res, cols in zip(results, _slices(world), strict=True):
        assert all(t.dtype == torch.bfloat16 for t in res["bf16"])
        _assert_matches(
            tuple(t.double() for t in res["bf16"]),
            tuple(t.to(torch.bfloat16).double() for t in ref),
            cols,
            tol={"atol": 2e-2, "rtol": 2e-2},
        )


def test_unowned_target_raises_on_every_rank(ranks):
    _, results = ranks
    for res in results:
        assert "row 0" in res["err_target"]
        assert "slices instead of 1" in res["err_target"]


# --------------------------------------------------------------------------------------
# world size 1: equal to heads.linear_cross_entropy and to the plain computation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_world1_equals_linear_cross_entropy(reduction):
    h, W, b, cot, *_ = _data()
    kw = dict(reduction=reduction, label_smoothing=0.2, softcap=3.0, logsumexp_penalty=0.01)
    cotangent = _cotangent(reduction, cot)
    ours = _run(h, W, b, _target(True), cotangent, chunk_size=2, **kw)
    h2, W2, b2 = (t.clone().requires_grad_(True) for t in (h, W, b))
    ref = linear_cross_entropy(h2, W2, _target(True), linear_bias=b2, **kw)
    ref.backward(cotangent)
    _assert_matches(ours, (ref.detach(), h2.grad, W2.grad, b2.grad), slice(None), tol={})


def test_world1_gradcheck_none_reduction():
    h, W, b, *_ = _data()
    args = (h[:4].clone().requires_grad_(), W.clone().requires_grad_(), b.clone().requires_grad_())
    target = _target(True)[:4]
    assert torch.autograd.gradcheck(
        lambda x, w, c: vocab_parallel_linear_cross_entropy(
            x,
            w,
            target,
            local_bias=c,
            reduction="none",
            label_smoothing=0.3,
            softcap=2.0,
            logsumexp_penalty=0.1,
            chunk_size=3,
        ),
        args,
    )


def test_world1_empty_and_all_ignored():
    h, W, *_ = _data()
    x = h[:0].clone().requires_grad_(True)
    loss = vocab_parallel_linear_cross_entropy(x, W, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, D)
    x = h.clone().requires_grad_(True)
    loss = vocab_parallel_linear_cross_entropy(x, W, torch.full((N,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(W=torch.randn(V, D + 1, dtype=torch.float64)), ValueError, "last dimension must"),
        (dict(W=torch.randn(V, D)), TypeError, "local_weight must have hidden's dtype"),
        (dict(W=torch.randn(0, D, dtype=torch.float64)), ValueError, "with V >= 1"),
        (dict(target=torch.zeros(N)), TypeError, "target must hold class indices"),
        (dict(target=torch.zeros(N - 1, dtype=torch.long)), ValueError, "target must have shape"),
        (dict(target=torch.full((N,), V)), ValueError, r"indices in \[0, 12\]"),
        (dict(local_bias=torch.zeros(V + 1, dtype=torch.float64)), ValueError, "local_bias"),
        (dict(softcap=0.0), ValueError, "softcap must be"),
        (dict(chunk_size=0), ValueError, "chunk_size must be"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(vocab_start_index=2), ValueError, "vocab_start_index must be None or 0"),
    ],
)
def test_errors(kwargs, error, match):
    h, W, *_ = _data()
    W = kwargs.pop("W", W)
    target = kwargs.pop("target", _target(False))
    with pytest.raises(error, match=match):
        vocab_parallel_linear_cross_entropy(h, W, target, **kwargs)
