import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.divergence import FDivergence, f_divergence
from tests.helpers import HALF_DTYPES, loss_and_grads, np64, numeric_grad, spy_fallback
from tests.reference import divergence_ref as ref

gen = torch.Generator().manual_seed(11)

CASES = [
    ("kl", None),
    ("reverse_kl", None),
    ("js", None),
    ("tv", None),
    ("hellinger", None),
    ("alpha", 0.0),
    ("alpha", 0.3),
    ("alpha", 0.5),
    ("alpha", 1.0),
    ("alpha", 2.0),
    ("alpha", -1.0),
]
IDS = [k if a is None else f"alpha={a}" for k, a in CASES]


def pair(n=6, c=5, scale=2.0, dtype=torch.float64):
    p = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    q = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    return p, q


def expected(p, q, kind, alpha):
    return ref.divergence(np64(p), np64(q), kind, alpha)


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
def test_matches_reference_for_every_reduction(kind, alpha):
    p, q = pair()
    want = expected(p, q, kind, alpha)
    got = f_divergence(p, q, kind, alpha=alpha, reduction="none")
    np.testing.assert_allclose(np64(got), want, rtol=1e-10, atol=1e-12)
    total = f_divergence(p, q, kind, alpha=alpha, reduction="sum")
    assert math.isclose(total.item(), want.sum(), rel_tol=1e-10)
    mean = f_divergence(p, q, kind, alpha=alpha)
    assert math.isclose(mean.item(), want.mean(), rel_tol=1e-10)


def test_kl_is_kl_div_batchmean():
    p, q = pair()
    want = F.kl_div(F.log_softmax(q, 1), F.softmax(p, 1), reduction="batchmean")
    torch.testing.assert_close(f_divergence(p, q, "kl"), want)
    torch.testing.assert_close(f_divergence(q, p, "reverse_kl"), want)


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
def test_any_dim_and_layout(kind, alpha):
    p = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    q = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    got = f_divergence(p, q, kind, alpha=alpha, dim=1, reduction="none")
    assert got.shape == (2, 3)
    want = expected(p.movedim(1, -1), q.movedim(1, -1), kind, alpha)
    np.testing.assert_allclose(np64(got), want, rtol=1e-10, atol=1e-12)
    # a 1-D input is one distribution
    one = f_divergence(p[0, :, 0], q[0, :, 0], kind, alpha=alpha, reduction="none")
    assert one.shape == () and math.isclose(one.item(), want[0, 0], rel_tol=1e-10, abs_tol=1e-12)


@pytest.mark.parametrize(("kind", "alpha"), [*CASES, ("alpha", 1e-12), ("alpha", 1 - 1e-12)])
def test_gradcheck_both_inputs(kind, alpha):
    p, q = pair(n=3, c=4)
    p.requires_grad_()
    q.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: f_divergence(x, y, kind, alpha=alpha, reduction="none"), (p, q)
    )
    x3 = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y3 = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y: f_divergence(x, y, kind, alpha=alpha, dim=1), (x3, y3)
    )


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(kind, alpha, dtype):
    p, q = pair(dtype=torch.float32)
    p, q = p.to(dtype).requires_grad_(), q.to(dtype).requires_grad_()
    loss = f_divergence(p, q, kind, alpha=alpha)
    assert loss.dtype == dtype
    full = f_divergence(p.detach().float(), q.detach().float(), kind, alpha=alpha)
    torch.testing.assert_close(loss.float(), full, atol=2e-2, rtol=2e-2)
    loss.backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_mixed_dtypes_promote():
    p, q = pair(dtype=torch.float32)
    out = f_divergence(p.half(), q, "kl")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, f_divergence(p.half().float(), q, "kl"))


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
def test_shared_minus_inf_classes_equal_slicing_them_off(kind, alpha):
    # a class impossible under both distributions changes nothing, forward or backward
    p, q = pair(n=4, c=6)
    p[:, [1, 4]] = -math.inf
    q[:, [1, 4]] = -math.inf
    p[0, 2] = q[0, 2] = -math.inf  # and one more in one row only
    keep = [0, 2, 3, 5]
    p.requires_grad_()
    q.requires_grad_()
    loss = f_divergence(p, q, kind, alpha=alpha, reduction="sum")
    gp, gq = torch.autograd.grad(loss, (p, q))
    ps, qs = p.detach()[:, keep].requires_grad_(), q.detach()[:, keep].requires_grad_()
    sliced = f_divergence(ps, qs, kind, alpha=alpha, reduction="sum")
    gps, gqs = torch.autograd.grad(sliced, (ps, qs))
    torch.testing.assert_close(loss, sliced)
    torch.testing.assert_close(gp[:, keep], gps)
    torch.testing.assert_close(gq[:, keep], gqs)
    assert (gp[:, [1, 4]] == 0).all() and (gq[:, [1, 4]] == 0).all()


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
def test_minus_inf_in_one_distribution_only(kind, alpha):
    # p > 0 = q in class 0 of row 0, q > 0 = p in class 1 of row 1
    p = torch.tensor([[0.5, 0.0, 1.0], [-math.inf, 0.2, 0.3]], dtype=torch.float64)
    q = torch.tensor([[-math.inf, 0.3, 0.1], [0.4, 0.1, -0.2]], dtype=torch.float64)
    got = f_divergence(p, q, kind, alpha=alpha, reduction="none")
    want = expected(p, q, kind, alpha)
    assert np.array_equal(np.isinf(np64(got)), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(np64(got)[finite], want[finite], rtol=1e-10)
    # KL = +inf exactly where p > 0 = q
    if kind == "kl" or (kind == "alpha" and alpha >= 1):
        assert got[0] == math.inf and math.isfinite(got[1])
    if kind == "reverse_kl" or (kind == "alpha" and alpha <= 0):
        assert got[1] == math.inf and math.isfinite(got[0])
    if finite.all():  # finite divergence: finite gradients
        p.requires_grad_()
        q.requires_grad_()
        gp, gq = torch.autograd.grad(f_divergence(p, q, kind, alpha=alpha), (p, q))
        assert torch.isfinite(gp).all() and torch.isfinite(gq).all()


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
def test_extreme_logits(kind, alpha):
    p, q = pair(scale=1e4, dtype=torch.float32)
    p.requires_grad_()
    q.requires_grad_()
    loss = f_divergence(p, q, kind, alpha=alpha, reduction="none")
    want = expected(p, q, kind, alpha)
    assert np.isfinite(want).all() == torch.isfinite(loss).all()
    np.testing.assert_allclose(np64(loss), want, rtol=1e-4, atol=1e-4)
    gp, gq = torch.autograd.grad(loss.sum(), (p, q))
    if torch.isfinite(loss).all():
        assert torch.isfinite(gp).all() and torch.isfinite(gq).all()


def test_all_minus_inf_row_is_not_nan():
    p = torch.tensor([[-math.inf] * 3, [0.0, 1.0, 2.0]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0, 2.0], [-math.inf] * 3], requires_grad=True)
    for kind, alpha in CASES:
        loss = f_divergence(p, q, kind, alpha=alpha, reduction="none")
        assert not torch.isnan(loss).any(), kind


def test_empty_and_zero_class_inputs():
    for shape in [(0, 4), (3, 0)]:
        p = torch.randn(shape, requires_grad=True)
        loss = f_divergence(p, torch.randn(shape), "js")
        loss.backward()
        assert loss.item() == 0.0 and p.grad.shape == shape
    assert f_divergence(torch.randn(0, 4), torch.randn(0, 4), "kl", reduction="none").shape == (0,)


# --- properties ------------------------------------------------------------------------------

logit = st.floats(-30, 30, allow_nan=False, allow_infinity=False)


def rows_pair(data, c):
    draw = lambda: data.draw(st.lists(logit, min_size=c, max_size=c))  # noqa: E731
    return (
        torch.tensor([draw()], dtype=torch.float64),
        torch.tensor([draw()], dtype=torch.float64),
    )


@settings(max_examples=25, deadline=None)
@given(c=st.integers(2, 7), shift=st.floats(-1e3, 1e3), data=st.data())
def test_nonnegative_and_zero_iff_equal(c, shift, data):
    p, q = rows_pair(data, c)
    for kind, alpha in CASES:
        d = f_divergence(p, q, kind, alpha=alpha).item()
        assert d >= 0, kind
        assert f_divergence(p, p + shift, kind, alpha=alpha).item() == pytest.approx(0, abs=1e-9)
        probs_differ = (p.softmax(1) - q.softmax(1)).abs().max().item() > 1e-6
        if probs_differ:
            assert d > 0, kind


@settings(max_examples=25, deadline=None)
@given(c=st.integers(2, 7), data=st.data())
def test_bounds_and_symmetries(c, data):
    p, q = rows_pair(data, c)
    pp, qq = p.softmax(1), q.softmax(1)
    js = f_divergence(p, q, "js")
    torch.testing.assert_close(js, f_divergence(q, p, "js"))
    assert 0 <= js.item() <= math.log(2) + 1e-12
    tv = f_divergence(p, q, "tv")
    assert 0 <= tv.item() <= 1
    torch.testing.assert_close(tv, 0.5 * (pp - qq).abs().sum())
    h = f_divergence(p, q, "hellinger")
    assert 0 <= h.item() <= 1
    torch.testing.assert_close(h, 0.5 * (pp.sqrt() - qq.sqrt()).square().sum())
    torch.testing.assert_close(h, 1 - (pp * qq).sqrt().sum())
    # Le Cam: H^2 <= TV <= sqrt(2) H sqrt(1 - H^2 / 2) (with this H^2 = 1 - BC convention)
    assert h.item() <= tv.item() + 1e-12
    assert tv.item() <= math.sqrt(h.item() * (2 - h.item())) + 1e-12
    # alpha-divergence: D_a(p||q) = D_(1-a)(q||p); D_(1/2) = 4 H^2
    alpha = data.draw(st.floats(-2, 3))
    torch.testing.assert_close(
        f_divergence(p, q, "alpha", alpha=alpha), f_divergence(q, p, "alpha", alpha=1 - alpha)
    )
    torch.testing.assert_close(f_divergence(p, q, "alpha", alpha=0.5), 4 * h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alpha_approaches_both_kls_continuously(dtype):
    # no cancellation near the limits, even in float32
    p, q = pair(dtype=dtype)
    kl = f_divergence(p, q, "kl", reduction="none")
    rkl = f_divergence(p, q, "reverse_kl", reduction="none")
    for eps in [1e-3, 1e-6, 1e-9, 1e-15, 1e-30]:
        tol = 10 * eps * (1 + kl.abs().max().item()) + 10 * torch.finfo(dtype).eps
        for sign in (1, -1):
            near1 = f_divergence(p, q, "alpha", alpha=1 + sign * eps, reduction="none")
            near0 = f_divergence(p, q, "alpha", alpha=sign * eps, reduction="none")
            torch.testing.assert_close(near1, kl, atol=tol, rtol=tol)
            torch.testing.assert_close(near0, rkl, atol=tol, rtol=tol)
    # and the gradient too
    p.requires_grad_()
    (g_kl,) = torch.autograd.grad(f_divergence(p, q, "kl"), p)
    (g_near,) = torch.autograd.grad(f_divergence(p, q, "alpha", alpha=1 - 1e-9), p)
    torch.testing.assert_close(g_near, g_kl)


def test_gradients_reach_both_inputs_and_distillation_direction():
    teacher, student = pair()
    teacher.requires_grad_()
    student.requires_grad_()
    loss = f_divergence(teacher, student, "kl")
    g_t, g_s = torch.autograd.grad(loss, (teacher, student))
    assert g_t.abs().sum() > 0 and g_s.abs().sum() > 0
    # d KL(p||q) / d q_logits = (q - p) / N: the forward-KL distillation gradient
    torch.testing.assert_close(g_s, (student.softmax(1) - teacher.softmax(1)) / 6)


def test_module_and_compile():
    p, q = pair(dtype=torch.float32)
    module = FDivergence("alpha", alpha=0.7, reduction="sum")
    torch.testing.assert_close(
        module(p, q), f_divergence(p, q, "alpha", alpha=0.7, reduction="sum")
    )
    assert repr(module) == "FDivergence(kind='alpha', alpha=0.7, dim=-1, reduction='sum')"
    assert "alpha" not in repr(FDivergence("js"))

    def all_kinds(x, y):
        return sum(f_divergence(x, y, kind, alpha=alpha) for kind, alpha in CASES[:6])

    x = p.clone().requires_grad_()
    compiled = torch.compile(all_kinds)(x, q)
    (grad,) = torch.autograd.grad(compiled, x)
    eager = all_kinds(x, q)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad, torch.autograd.grad(eager, x)[0])


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (
            (torch.randn(2, 3), torch.randn(2, 4), "kl"),
            {},
            ValueError,
            "q_logits must have the shape",
        ),
        ((torch.randn(2, 3), torch.randn(2, 3), "kld"), {}, ValueError, "kind must be one of"),
        ((torch.randn(2, 3), torch.randn(2, 3), "alpha"), {}, ValueError, "alpha must be given"),
        (
            (torch.randn(2, 3), torch.randn(2, 3), "kl"),
            {"alpha": 0.5},
            ValueError,
            'alpha is only used with kind="alpha"',
        ),
        (
            (torch.randn(2, 3), torch.randn(2, 3), "alpha"),
            {"alpha": math.inf},
            ValueError,
            "alpha must be finite",
        ),
        (
            (torch.randn(2, 3), torch.randn(2, 3), "alpha"),
            {"alpha": "1"},
            TypeError,
            "alpha must be a real number",
        ),
        ((torch.randn(2, 3), torch.randn(2, 3), "kl"), {"dim": 2}, ValueError, "dim must be in"),
        (
            (torch.randn(2, 3), torch.randn(2, 3), "kl"),
            {"reduction": "batchmean"},
            ValueError,
            "reduction must be one of",
        ),
        (
            (torch.arange(6).view(2, 3), torch.randn(2, 3), "kl"),
            {},
            TypeError,
            "p_logits must be a floating-point",
        ),
        (([[0.0, 1.0]], torch.randn(1, 2), "kl"), {}, TypeError, "p_logits must be a torch.Tensor"),
    ],
)
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        f_divergence(*args, **kwargs)
    if "alpha" in kwargs or args[2] in ("kld", "alpha"):
        with pytest.raises(error, match=match):
            FDivergence(args[2], **kwargs)


# --- fast kernels and their exact fallback ---------------------------------------------------

from softmaxkit.losses import divergence as divergence_module  # noqa: E402


def mixed_block():
    """Finite rows (one at +-1e4) mixed with the rows the fast kernels hand to the exact
    ones: -inf in p only, in q only, in both, all -inf rows."""
    p, q = pair(n=10, c=6)
    p[1] *= 5e3
    q[1] *= 5e3
    p[2, 3] = -math.inf  # p = 0 at one class
    q[3, 0] = -math.inf  # q = 0 at one class
    p[4, [1, 4]] = q[4, [1, 4]] = -math.inf  # impossible under both
    p[5] = -math.inf  # p is the zero measure
    q[6] = -math.inf
    p[7] = q[7] = -math.inf
    p[8, [0, 2]] = q[8, [2, 5]] = -math.inf
    return p, q


@pytest.mark.parametrize(("kind", "alpha"), CASES, ids=IDS)
def test_fast_path_falls_back_on_exactly_the_non_finite_rows(kind, alpha, monkeypatch):
    p, q = mixed_block()
    want = expected(p, q, kind, alpha)
    flagged = spy_fallback(monkeypatch, divergence_module)

    def run(x, y):
        return f_divergence(x, y, kind, alpha=alpha, reduction="none")

    w = torch.rand(10, generator=gen, dtype=torch.float64) + 0.5
    loss, (gp, gq) = loss_and_grads(run, w, p, q)
    # the reference's value (inf where it is inf); for "alpha" not on the zero-measure rows,
    # where the reference keeps the -1 of a normalised p^alpha q^(1 - alpha) sum and the
    # exact kernel does not (left as it is: compared with the exact kernel below)
    rows = [0, 1, 2, 3, 4, 8, 9] if kind == "alpha" else list(range(10))
    np.testing.assert_allclose(np64(loss)[rows], want[rows], rtol=1e-10, atol=1e-10)
    # forward and backward ran the fast kernels, which kept the moderate finite rows
    assert len(flagged) == 2 and not flagged[0][[0, 9]].any()
    if kind in ("kl", "reverse_kl", "js"):  # every row with a -inf logit, no other
        assert torch.equal(flagged[0], ~torch.isfinite(p + q).all(1))
    if kind in ("tv", "hellinger"):  # zero measures only: a -inf logit is an exact 0 there
        assert flagged[0].tolist() == [False] * 5 + [True] * 3 + [False] * 2
    # the same values and gradients as the exact kernel on every row
    monkeypatch.setattr(divergence_module, "fast_ok", lambda z: False)
    exact_loss, (ep, eq) = loss_and_grads(run, w, p, q)
    torch.testing.assert_close(loss, exact_loss, rtol=1e-10, atol=1e-12)
    finite = np.isfinite(want)
    torch.testing.assert_close(gp[finite], ep[finite], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gq[finite], eq[finite], rtol=1e-9, atol=1e-12)
    # and the reference's derivative (rows of a zero measure excepted: there the exact
    # kernel's gradient is not a derivative of the constant loss)
    live = [i for i in np.flatnonzero(finite) if i not in (5, 6, 7)]
    np_p, np_q = np64(p), np64(q)
    for i in live:
        num_p = numeric_grad(lambda r, i=i: ref.divergence(r, np_q[i], kind, alpha), np_p[i])
        num_q = numeric_grad(lambda r, i=i: ref.divergence(np_p[i], r, kind, alpha), np_q[i])
        np.testing.assert_allclose(np64(gp[i]), w[i].item() * num_p, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np64(gq[i]), w[i].item() * num_q, rtol=1e-5, atol=1e-5)
