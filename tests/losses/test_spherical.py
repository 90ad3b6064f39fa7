import math
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses import (
    LogSumExpPenalty,
    SphericalSoftmaxLoss,
    TaylorSoftmaxLoss,
    ZLoss,
    logsumexp_penalty,
    spherical_softmax,
    spherical_softmax_loss,
    taylor_softmax,
    taylor_softmax_loss,
    z_loss,
)
from tests.helpers import HALF_DTYPES, np64
from tests.reference import spherical_ref as ref

gen = torch.Generator().manual_seed(5)
A, B, EPS = 0.7, 1.5, 0.05

LOSSES = {
    "z": (partial(z_loss, a=A, b=B), partial(ref.z_loss, a=A, b=B)),
    "spherical": (
        partial(spherical_softmax_loss, eps=EPS),
        partial(ref.spherical_softmax_loss, eps=EPS),
    ),
    "taylor": (taylor_softmax_loss, ref.taylor_softmax_loss),
}
NAMES = list(LOSSES)


def case(n=6, c=5, scale=2.0, dtype=torch.float64):
    x = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


def probs(n=6, c=5):
    return torch.softmax(torch.randn(n, c, generator=gen, dtype=torch.float64) * 2, 1)


def smoothed(t, c, eps):
    return np.full((len(t), c), eps / c) + (1 - eps) * np.eye(c)[t.numpy()]


# --- agreement with the float64 transcriptions -------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference_index_targets(name, reduction):
    fn, ref_fn = LOSSES[name]
    x, t = case()
    t[3] = -100
    kept = t != -100
    expected = np.zeros(6)
    expected[kept.numpy()] = ref_fn(np64(x)[kept.numpy()], t[kept].numpy())
    out = fn(x, t, reduction=reduction)
    if reduction == "none":
        np.testing.assert_allclose(np64(out), expected, rtol=1e-12, atol=1e-12)
    else:
        total = expected.sum() / (kept.sum().item() if reduction == "mean" else 1)
        assert math.isclose(out.item(), total, rel_tol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_reference_probability_targets_and_smoothing(name, reduction):
    fn, ref_fn = LOSSES[name]
    x, t = case()
    p = probs()
    expected = ref_fn(np64(x), p.numpy())
    out = fn(x, p, reduction=reduction)
    np.testing.assert_allclose(np64(out), expected if reduction == "none" else expected.mean())
    # label smoothing = the expected loss under the smoothed target
    expected = ref_fn(np64(x), smoothed(t, 5, 0.3))
    out = fn(x, t, reduction=reduction, label_smoothing=0.3)
    np.testing.assert_allclose(np64(out), expected if reduction == "none" else expected.mean())
    # a one-hot probability target is the index target
    one_hot = torch.nn.functional.one_hot(t, 5).double()
    torch.testing.assert_close(fn(x, one_hot, reduction="none"), fn(x, t, reduction="none"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["index", "probs", "smoothing"])
def test_gradcheck(name, kind):
    fn = LOSSES[name][0]
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    if kind == "probs":
        t = torch.softmax(torch.randn(3, 4, 2, generator=gen, dtype=torch.float64), 1)
    else:
        t = torch.randint(0, 4, (3, 2), generator=gen)
        t[1, 0] = -100
    smoothing = 0.2 if kind == "smoothing" else 0.0
    assert torch.autograd.gradcheck(
        lambda z: fn(z, t, reduction="none", label_smoothing=smoothing), (x,)
    )


@pytest.mark.parametrize("name", NAMES)
def test_class_dim_one_with_extra_dims(name):
    fn = LOSSES[name][0]
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 4, (2, 3), generator=gen)
    flat = fn(x.movedim(1, -1).reshape(-1, 4), t.reshape(-1), reduction="none")
    torch.testing.assert_close(fn(x, t, reduction="none"), flat.view(2, 3))


# --- dtypes, ignored rows, empty batches, extreme logits -------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(name, dtype):
    fn = LOSSES[name][0]
    x, t = case(dtype=torch.float32)
    h = x.to(dtype).requires_grad_()
    loss = fn(h, t)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float(), fn(h.detach().float(), t), atol=1e-2, rtol=1e-2)
    loss.backward()
    assert h.grad.dtype == dtype and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_ignore_index(name):
    fn = LOSSES[name][0]
    x, t = case()
    t[[1, 4]] = 7
    per = fn(x, t, reduction="none", ignore_index=7)
    assert per[1] == 0 and per[4] == 0
    keep = torch.tensor([0, 2, 3, 5])
    torch.testing.assert_close(fn(x, t, ignore_index=7), per[keep].mean())
    x.requires_grad_()
    fn(x, t, ignore_index=7).backward()
    assert (x.grad[[1, 4]] == 0).all()
    x.grad = None
    loss = fn(x, torch.full((6,), -100))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch(name):
    fn = LOSSES[name][0]
    x = torch.randn(0, 3, requires_grad=True)
    loss = fn(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 3)
    assert fn(x, torch.zeros(0, dtype=torch.long), reduction="none").shape == (0,)


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_finite(name):
    fn = LOSSES[name][0]
    x, t = case(n=8, c=7, dtype=torch.float32)
    x = (x.sign() * 1e4).requires_grad_()
    loss = fn(x, t) + fn(x, t, label_smoothing=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# --- the papers' properties --------------------------------------------------------------------

# two decimals: a non-constant row has a spread far above the rounding of the transforms below
finite = st.integers(-5000, 5000).map(lambda i: i / 100)


def spread(x: torch.Tensor) -> float:
    return (x.max() - x.min()).item()


@settings(max_examples=25, deadline=None)
@given(
    row=st.lists(finite, min_size=3, max_size=8),
    shift=st.floats(-1e3, 1e3),
    scale=st.floats(1e-3, 1e3),
    data=st.data(),
)
def test_z_loss_is_shift_and_scale_invariant(row, shift, scale, data):
    # exactly so for the paper's formula (eps = 0); eps = 1e-12 changes nothing visible
    x = torch.tensor([row], dtype=torch.float64)
    if spread(x) == 0:
        return
    t = torch.tensor([data.draw(st.integers(0, len(row) - 1))])
    base = z_loss(x, t, a=A, b=B, eps=0.0)
    for y in (x + shift, x * scale):
        torch.testing.assert_close(z_loss(y, t, a=A, b=B, eps=0.0), base, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(z_loss(y, t, a=A, b=B), base, rtol=1e-6, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(row=st.lists(finite, min_size=3, max_size=8), data=st.data())
def test_depends_only_on_sum_sum_of_squares_and_target(row, data):
    # permuting the non-target outputs, or reflecting them across a hyperplane that
    # contains the all-ones direction, keeps sum(o), sum(o^2) and o_c: no loss may change
    C = len(row)
    c = data.draw(st.integers(0, C - 1))
    x = torch.tensor([row], dtype=torch.float64)
    others = [k for k in range(C) if k != c]
    perm = data.draw(st.permutations(others))
    y = x.clone()
    y[0, others] = x[0, perm]
    u = torch.tensor(data.draw(st.lists(finite, min_size=C - 1, max_size=C - 1)), dtype=x.dtype)
    u = u - u.mean()
    w = x.clone()
    if u.norm() > 1e-3:
        rest = x[0, others]
        w[0, others] = rest - 2 * (rest @ u) / (u @ u) * u
    t = torch.tensor([c])
    for name in NAMES:
        if name == "z" and spread(x) == 0:
            continue  # constant row: the reflection's rounding noise is all the z-scores see
        fn = LOSSES[name][0]
        base = fn(x, t)
        torch.testing.assert_close(fn(y, t), base, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(fn(w, t), base, rtol=1e-7, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(row=st.lists(finite, min_size=2, max_size=8), data=st.data())
def test_spherical_softmax_ignores_the_sign_and_taylor_needs_no_eps(row, data):
    x = torch.tensor([row], dtype=torch.float64)
    t = torch.tensor([data.draw(st.integers(0, len(row) - 1))])
    torch.testing.assert_close(
        spherical_softmax_loss(-x, t, eps=EPS), spherical_softmax_loss(x, t, eps=EPS)
    )
    torch.testing.assert_close(spherical_softmax(-x, eps=EPS), spherical_softmax(x, eps=EPS))
    bound = math.log(len(row) + x.square().sum().item() / EPS)  # eps bounds the loss
    assert spherical_softmax_loss(x, t, eps=EPS).item() <= bound + 1e-12
    p = taylor_softmax(x)
    total = len(row) + x.sum() + x.square().sum() / 2
    assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-12)
    assert (p * total >= 0.5 - 1e-9).all()  # every term 1 + o + o^2/2 >= 1/2
    assert torch.isfinite(taylor_softmax_loss(x, t))


def test_taylor_softmax_is_not_sign_symmetric():
    x = torch.tensor([[2.0, -2.0, 0.0]], dtype=torch.float64)
    assert taylor_softmax(x)[0, 0] > 2 * taylor_softmax(x)[0, 1]
    assert spherical_softmax(x, eps=EPS)[0, 0] == spherical_softmax(x, eps=EPS)[0, 1]
    # at o = -1 the Taylor term is at its minimum 1/2, not 0
    y = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(taylor_softmax(y), torch.tensor([[1 / 3, 2 / 3]], dtype=y.dtype))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_has_the_spherical_form(name):
    # grad = f1 o + f2 1 + (a term on the target only): off the target it is affine in o
    fn = LOSSES[name][0]
    x, t = case(n=1, c=9)
    x.requires_grad_()
    fn(x, t).backward()
    off = torch.arange(9) != t[0]
    design = torch.stack([x.detach()[0, off], torch.ones(8, dtype=x.dtype)], 1)
    coef = torch.linalg.lstsq(design, x.grad[0, off, None]).solution
    torch.testing.assert_close(design @ coef, x.grad[0, off, None], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_z_loss_constant_rows_are_finite(dtype):
    # sigma = 0: every z-score is 0, so the loss is softplus(a b) / a; the gradient is the
    # exact one of (o_c - mu) / (sigma + eps) there, g f'(0) (delta_kc - 1/C) / eps
    # (0 taken from the subdifferential of sigma), finite for any eps > 0
    x = torch.full((3, 5), 2.5, dtype=dtype)
    x[1] = 0.0
    x[2] = -1e4
    t = torch.tensor([0, 3, 4])
    expected = ref.softplus(A * B) / A
    for eps in (1e-12, 1e-3):
        xr = x.clone().requires_grad_()
        loss = z_loss(xr, t, a=A, b=B, eps=eps, reduction="none")
        loss.sum().backward()
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(
            loss.double(), torch.full((3,), expected, dtype=torch.float64), rtol=tol, atol=0
        )
        assert torch.isfinite(xr.grad).all()
        slope = -1 / (1 + math.exp(-A * B))  # f'(0) = -sigmoid(a b)
        grad = (torch.eye(5)[t] - 1 / 5) * slope / eps
        torch.testing.assert_close(xr.grad.double(), grad.double(), rtol=1e-2, atol=0)
    assert torch.isfinite(z_loss(x, t, a=A, b=B, eps=0.0))  # the paper's exact formula


def test_z_loss_margin_b_sets_where_the_target_stops_being_pushed():
    # far above the margin (z_c >> b) the loss vanishes; far below it grows like (b - z_c)
    x = torch.tensor([[10.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # z_0 = 2
    assert z_loss(x, torch.tensor([0]), a=20.0, b=1.0).item() < 1e-8
    assert math.isclose(
        z_loss(x, torch.tensor([0]), a=20.0, b=3.0).item(), 1.0, rel_tol=1e-6
    )  # (b - z_0) = 1


# --- the maps ------------------------------------------------------------------------------------


def test_maps_match_reference_on_any_dim():
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(
        np64(spherical_softmax(x, eps=EPS, dim=1)),
        np.moveaxis(ref.spherical_softmax(np.moveaxis(np64(x), 1, -1), EPS), -1, 1),
    )
    np.testing.assert_allclose(np64(taylor_softmax(x)), ref.taylor_softmax(np64(x)))
    assert torch.autograd.gradcheck(
        lambda z: spherical_softmax(z, eps=EPS), (x[0].clone().requires_grad_(),)
    )
    assert torch.autograd.gradcheck(taylor_softmax, (x[0].clone().requires_grad_(),))
    # the loss is -log of the map
    t = torch.randint(0, 5, (3,), generator=gen)
    torch.testing.assert_close(
        taylor_softmax_loss(x[:, 0], t, reduction="none"),
        -taylor_softmax(x[:, 0]).gather(1, t[:, None]).log().squeeze(1),
    )
    for dtype in HALF_DTYPES:
        assert taylor_softmax(x.to(dtype)).dtype == dtype
        assert spherical_softmax(x.to(dtype), eps=EPS).dtype == dtype


# --- PaLM's log-partition penalty --------------------------------------------------------------


def test_logsumexp_penalty_matches_reference_and_mask():
    x = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64) * 3
    rows = np64(x).transpose(0, 2, 1).reshape(-1, 6)
    expected = ref.logsumexp_penalty(rows, 1e-4).reshape(2, 3)
    np.testing.assert_allclose(np64(logsumexp_penalty(x, reduction="none")), expected)
    assert math.isclose(logsumexp_penalty(x).item(), expected.mean(), rel_tol=1e-12)
    assert math.isclose(
        logsumexp_penalty(x, weight=0.5, reduction="sum").item(),
        expected.sum() / 1e-4 * 0.5,
        rel_tol=1e-12,
    )
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert math.isclose(
        logsumexp_penalty(x, mask=mask).item(), expected[mask.numpy()].mean(), rel_tol=1e-12
    )
    assert logsumexp_penalty(x, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0
    torch.testing.assert_close(
        logsumexp_penalty(x.movedim(1, -1), dim=-1, reduction="none"),
        logsumexp_penalty(x, reduction="none"),
    )
    xr = x.clone().requires_grad_()
    logsumexp_penalty(xr, mask=mask).backward()
    assert (xr.grad.movedim(1, -1)[~mask] == 0).all()
    assert torch.autograd.gradcheck(
        lambda z: logsumexp_penalty(z, weight=0.3, reduction="none"),
        (xr.detach()[:1].requires_grad_(),),
    )


def test_logsumexp_penalty_vanishes_on_normalised_log_probabilities():
    # the point of the penalty: it is 0 exactly when log Z = 0
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 4
    assert logsumexp_penalty(torch.log_softmax(x, 1), weight=1.0).item() < 1e-25
    assert logsumexp_penalty(x + 10, weight=1.0).item() > 1.0


def test_logsumexp_penalty_edge_cases_and_module():
    x = torch.tensor([[-math.inf, -math.inf], [1e4, -1e4], [-math.inf, 0.0]], requires_grad=True)
    loss = logsumexp_penalty(x, reduction="none")
    loss.sum().backward()
    assert loss[0] == 0 and torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    assert (x.grad[0] == 0).all() and x.grad[2, 0] == 0
    for dtype in HALF_DTYPES:
        h = (torch.randn(4, 9, generator=gen) * 5).to(dtype).requires_grad_()
        out = logsumexp_penalty(h)
        out.backward()
        assert out.dtype == dtype and h.grad.dtype == dtype
        torch.testing.assert_close(
            out.float(), logsumexp_penalty(h.detach().float()), rtol=1e-2, atol=1e-6
        )
    assert logsumexp_penalty(torch.randn(0, 4)).item() == 0.0
    one = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)  # a 1-D row: log Z = log 4
    torch.testing.assert_close(
        logsumexp_penalty(one, dim=0, weight=1.0, reduction="none"),
        torch.tensor(math.log(4.0) ** 2, dtype=torch.float64),
    )
    module = LogSumExpPenalty(2e-4, dim=-1, reduction="sum")
    y = torch.randn(3, 4, generator=gen)
    assert torch.equal(module(y), logsumexp_penalty(y, weight=2e-4, dim=-1, reduction="sum"))
    assert "weight=0.0002" in repr(module)


# --- modules, errors, torch.compile ------------------------------------------------------------


def test_modules():
    x, t = case()
    assert torch.equal(ZLoss(A, B, reduction="sum")(x, t), z_loss(x, t, a=A, b=B, reduction="sum"))
    assert torch.equal(
        SphericalSoftmaxLoss(EPS, label_smoothing=0.1)(x, t),
        spherical_softmax_loss(x, t, eps=EPS, label_smoothing=0.1),
    )
    assert torch.equal(
        TaylorSoftmaxLoss(ignore_index=2)(x, t), taylor_softmax_loss(x, t, ignore_index=2)
    )
    assert "a=0.7, b=1.5" in repr(ZLoss(A, B)) and "eps=0.05" in repr(SphericalSoftmaxLoss(EPS))
    assert "reduction='mean'" in repr(TaylorSoftmaxLoss())


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, t: z_loss(x, t, a=0.0, b=1.0), ValueError, r"a must be in \(0, inf\]"),
        (lambda x, t: z_loss(x, t, a=1.0, b=math.nan), ValueError, "b must be finite"),
        (lambda x, t: z_loss(x, t, a=1.0, b=1.0, eps=-1.0), ValueError, "eps must be in"),
        (lambda x, t: z_loss(x[:, :1], t * 0, a=1.0, b=1.0), ValueError, "at least 2 classes"),
        (lambda x, t: z_loss(x, t), TypeError, "missing 2 required keyword"),
        (lambda x, t: spherical_softmax_loss(x, t, eps=0.0), ValueError, "eps must be in"),
        (lambda x, t: taylor_softmax_loss(x, t, reduction="avg"), ValueError, "reduction must"),
        (lambda x, t: taylor_softmax_loss(x, t + 9), ValueError, r"class indices in \[0, 3\]"),
        (lambda x, t: taylor_softmax_loss(x, t.float()), TypeError, "target must hold class"),
        (lambda x, t: taylor_softmax_loss(x, t[:2]), ValueError, r"target must have shape \(3,\)"),
        (lambda x, t: taylor_softmax_loss(x, -x), ValueError, "target must have all values"),
        (lambda x, t: taylor_softmax_loss(x.long(), t), TypeError, "logits must be a floating"),
        (lambda x, t: taylor_softmax_loss(x, t, label_smoothing=2), ValueError, "label_smoothing"),
        (lambda x, t: logsumexp_penalty(x, weight=-1.0), ValueError, "weight must be in"),
        (lambda x, t: logsumexp_penalty(x, dim=2), ValueError, r"dim must be in \[-2, 1\]"),
        (lambda x, t: logsumexp_penalty(x, mask=t), TypeError, "mask must be a boolean"),
        (lambda x, t: logsumexp_penalty(x, mask=t[:2] > 0), ValueError, "mask must be broadcast"),
        (lambda x, t: spherical_softmax(x, eps=1e-3, dim=3), ValueError, "dim must be in"),
    ],
)
def test_errors(call, error, match):
    x = torch.randn(3, 4, generator=gen)
    t = torch.tensor([0, 1, 3])
    with pytest.raises(error, match=match):
        call(x, t)


def test_runs_under_torch_compile():
    def total(x, t, p):
        return (
            z_loss(x, t, a=A, b=B)
            + spherical_softmax_loss(x, p, eps=EPS)
            + taylor_softmax_loss(x, t, label_smoothing=0.1)
            + logsumexp_penalty(x)
        )

    x, t = case(dtype=torch.float32)
    p = probs().float()
    x.requires_grad_()
    compiled = torch.compile(total)(x, t, p)
    (grad,) = torch.autograd.grad(compiled, x)
    eager = total(x, t, p)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad, torch.autograd.grad(eager, x)[0])
