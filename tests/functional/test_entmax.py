import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softmaxkit.functional.entmax as entmax_module
from softmaxkit import (
    Entmax15,
    EntmaxBisect,
    Sparsemax,
    entmax15,
    entmax_bisect,
    softmax,
    sparsemax,
)
from tests.helpers import HALF_DTYPES, assert_matches, grad_of, np64
from tests.reference import entmax_ref as ref

gen = torch.Generator().manual_seed(11)
INF = math.inf

# (name, our map, alpha of the map, float64 reference taking a NumPy array, simplex axis last)
MAPS = [
    ("sparsemax", sparsemax, 2.0, ref.sparsemax),
    ("entmax15", entmax15, 1.5, ref.entmax15),
    ("bisect-1.5", lambda x, dim=-1: entmax_bisect(x, 1.5, dim), 1.5, ref.entmax15),
    ("bisect-2", lambda x, dim=-1: entmax_bisect(x, 2.0, dim), 2.0, ref.sparsemax),
    ("bisect-1.25", lambda x, dim=-1: entmax_bisect(x, 1.25, dim), 1.25, None),
    ("bisect-3", lambda x, dim=-1: entmax_bisect(x, 3.0, dim), 3.0, None),
]
MAP_IDS = [m[0] for m in MAPS]
EXACT = [m for m in MAPS if m[0] in ("sparsemax", "entmax15")]


def reference(alpha, ref_fn, x: np.ndarray) -> np.ndarray:
    return ref_fn(x) if ref_fn is not None else ref.entmax(x, alpha)


def randn(*shape, scale=1.0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale


# --- against the float64 reference ------------------------------------------------------


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("shape, dim", [((7,), 0), ((5, 9), -1), ((3, 6, 4), 1), ((6, 5), 0)])
@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_matches_reference(name, fn, alpha, ref_fn, shape, dim, scale):
    x = randn(*shape, scale=scale)
    expected = reference(alpha, ref_fn, np64(x.movedim(dim, -1)))
    assert_matches(fn(x, dim=dim).movedim(dim, -1), expected, atol=1e-12)
    # float32 computes natively and stays close to the float64 truth
    y32 = fn(x.float(), dim=dim)
    assert y32.dtype == torch.float32
    assert_matches(y32.movedim(dim, -1), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_long_rows_sparse_and_dense(name, fn, alpha, ref_fn):
    # rows of 3000 with supports from a handful (scale 3) to most of the row (scale 0.01),
    # and a row half -inf: exercises the candidate steps, the partial sort and the pruning
    x = torch.cat([randn(2, 3000, scale=s) for s in (0.01, 0.2, 1.0, 3.0)])
    x[0, :1500] = -INF
    expected = reference(alpha, ref_fn, np64(x))
    assert_matches(fn(x), expected, atol=1e-12)
    assert_matches(fn(x.float()), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("knobs", [
    {"_STEP_ABOVE": 0.0},  # step as long as the candidates halve
    {"_STEP_ABOVE": 2.0},  # never step: partial sort straight from the bound -1
    {"_STEP_ABOVE": 0.0, "_SHRINK": 1.0, "_MAX_STEPS": 3},  # a fixed number of steps
    {"_BLOCK": 500, "_COMPACT": 1.0},  # many row blocks; bisection compacts at once
    {"_COMPACT": 0.0},  # bisection never compacts
])  # fmt: skip
@pytest.mark.parametrize(
    "name, fn, alpha, ref_fn", MAPS[:3] + MAPS[4:5], ids=MAP_IDS[:3] + MAP_IDS[4:5]
)
def test_every_schedule_gives_the_same_result(monkeypatch, knobs, name, fn, alpha, ref_fn):
    for key, value in knobs.items():
        monkeypatch.setattr(entmax_module, key, value)
    x = torch.cat([randn(3, 400, scale=s) for s in (0.02, 0.5, 2.0)])
    assert_matches(fn(x), reference(alpha, ref_fn, np64(x)), atol=1e-12)


def test_docstring_examples():
    result = doctest.testmod(entmax_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


# --- gradients ----------------------------------------------------------------------------


def margin(x: torch.Tensor, p: torch.Tensor, alpha: float) -> float:
    """Smallest distance of (alpha - 1) x_i - tau to 0 over the last axis: how far every
    entry is from entering or leaving the support (gradcheck needs this away from 0)."""
    b = alpha - 1
    z = b * x
    j = p.argmax(-1, keepdim=True)
    tau = z.gather(-1, j) - p.gather(-1, j) ** b
    return float((z - tau).abs().min())


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_gradcheck(name, fn, alpha, ref_fn):
    x = randn(4, 6, scale=1.5)
    assert margin(x, fn(x), alpha) > 1e-3
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradcheck(lambda t: fn(t, dim=0), (x,))


def test_gradcheck_tensor_alpha():
    x = randn(3, 7, scale=1.5)
    alpha = torch.tensor([[1.3], [1.6], [2.4]], dtype=torch.float64)
    for row in range(3):
        a = float(alpha[row])
        assert margin(x[row], entmax_bisect(x[row], a), a) > 1e-3
    x.requires_grad_(True)
    alpha.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, a: entmax_bisect(t, a), (x, alpha))
    # alpha broadcast from a scalar tensor, and along a non-last dim
    a0 = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: entmax_bisect(t, a), (x, a0))
    a1 = torch.tensor([[1.3, 1.5, 1.7, 1.9, 2.1, 2.3, 2.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t, a: entmax_bisect(t, a, dim=0), (x, a1.requires_grad_())
    )


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_jacobian_matches_reference(name, fn, alpha, ref_fn):
    for scale in (0.5, 2.0):
        x = randn(8, scale=scale)
        jac = torch.autograd.functional.jacobian(fn, x)
        p = np.array(reference(alpha, ref_fn, np64(x)))
        np.testing.assert_allclose(np64(jac), ref.jacobian(p, alpha), atol=1e-9)


def test_alpha_gradient_matches_finite_difference_of_reference():
    x = randn(3, 9, scale=1.5)
    alpha = torch.tensor([[1.2], [1.5], [2.6]], dtype=torch.float64, requires_grad=True)
    g = randn(3, 9)
    (ga,) = torch.autograd.grad((entmax_bisect(x, alpha) * g).sum(), alpha)
    for row in range(3):
        dp = ref.alpha_derivative(np64(x[row]), float(alpha[row].detach()))
        np.testing.assert_allclose(float(ga[row]), float(np.dot(dp, np64(g[row]))), rtol=1e-6)


def test_alpha_without_grad_gets_none():
    x = randn(2, 5).requires_grad_()
    alpha = torch.tensor([[1.5], [1.7]], dtype=torch.float64)
    entmax_bisect(x, alpha).sum().backward()
    assert alpha.grad is None and x.grad is not None


# --- properties (hypothesis) ---------------------------------------------------------------

finite = st.floats(-20, 20, allow_nan=False, allow_infinity=False, width=64)
vectors = st.lists(finite, min_size=1, max_size=12)
alphas = st.floats(1.1, 4.0)
SETTINGS = settings(max_examples=40, deadline=None)


def all_maps(alpha):
    return [sparsemax, entmax15, lambda t: entmax_bisect(t, alpha)]


@SETTINGS
@given(values=vectors, alpha=alphas)
def test_outputs_are_on_the_simplex_and_keep_the_order(values, alpha):
    x = torch.tensor(values, dtype=torch.float64)
    for fn in all_maps(alpha):
        p = fn(x)
        assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-12
        order = torch.argsort(x)
        assert (p[order].diff() >= -1e-15).all()  # larger logit, larger probability


@SETTINGS
@given(values=vectors, alpha=alphas, shift=st.floats(-1e3, 1e3))
def test_shift_invariance_and_permutation_equivariance(values, alpha, shift):
    x = torch.tensor(values, dtype=torch.float64)
    perm = torch.randperm(len(values), generator=gen)
    for fn in all_maps(alpha):
        p = fn(x)
        torch.testing.assert_close(fn(x + shift), p, atol=1e-9, rtol=0)
        torch.testing.assert_close(fn(x[perm]), p[perm], atol=1e-12, rtol=0)


@SETTINGS
@given(values=vectors, alpha=alphas)
def test_matches_reference_on_random_vectors(values, alpha):
    x = torch.tensor(values, dtype=torch.float64)
    assert_matches(sparsemax(x), ref.sparsemax(np64(x)), atol=1e-12)
    assert_matches(entmax15(x), ref.entmax15(np64(x)), atol=1e-12)
    assert_matches(entmax_bisect(x, alpha), ref.entmax(np64(x), alpha), atol=1e-9)


@SETTINGS
@given(values=vectors)
def test_bisection_at_two_and_three_halves_is_sparsemax_and_entmax15(values):
    x = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(entmax_bisect(x, 2.0), sparsemax(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(entmax_bisect(x, 1.5), entmax15(x), atol=1e-12, rtol=0)


@SETTINGS
@given(values=st.lists(st.floats(-5, 0, width=64), min_size=1, max_size=10), alpha=alphas,
       extra=st.floats(0, 10), where=st.integers(0, 10))  # fmt: skip
def test_a_big_gap_gives_one_hot(values, alpha, extra, where):
    where = where % (len(values) + 1)
    for fn, a in ((sparsemax, 2.0), (entmax15, 1.5), (lambda t: entmax_bisect(t, alpha), alpha)):
        top = max(values) + 1 / (a - 1) + extra  # (a - 1) (top - next) >= 1: nothing else fits
        x = torch.tensor(values[:where] + [top] + values[where:], dtype=torch.float64)
        expected = torch.zeros_like(x)
        expected[where] = 1
        torch.testing.assert_close(fn(x), expected, atol=1e-12, rtol=0)


@SETTINGS
@given(values=vectors, alpha=alphas)
def test_spread_out_inputs_are_sparse(values, alpha):
    # the threshold satisfies (a - 1) x_max - tau <= 1, so every entry at least 1 / (a - 1)
    # below the top gets exactly 0
    x = torch.tensor(values, dtype=torch.float64)
    for fn, a in ((sparsemax, 2.0), (entmax15, 1.5), (lambda t: entmax_bisect(t, alpha), alpha)):
        far = x <= x.max() - 1 / (a - 1)
        assert (fn(x)[far] == 0).all()


def test_spread_out_rows_have_small_supports():
    x = randn(64, 1000, scale=2.0)
    for fn in (sparsemax, entmax15, lambda t: entmax_bisect(t, 1.3)):
        assert ((fn(x) > 0).sum(-1) < 1000).all()
    assert ((sparsemax(x) > 0).sum(-1) <= 20).all()


# --- the papers' claims ----------------------------------------------------------------------


def test_sparsemax_is_the_euclidean_projection_onto_the_simplex():
    # Martins & Astudillo 2016, eq. (2): sparsemax(z) = argmin_{p in simplex} ||p - z||^2
    x = randn(6, 10)
    p = sparsemax(x)
    q = torch.distributions.Dirichlet(torch.ones(10, dtype=torch.float64)).sample((6, 2000))
    dist_p = ((p - x) ** 2).sum(-1)
    dist_q = ((q - x.unsqueeze(1)) ** 2).sum(-1)
    assert (dist_p.unsqueeze(1) <= dist_q + 1e-12).all()


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 3.0])
def test_entmax_maximises_the_tsallis_regularised_score(alpha):
    # Peters et al. 2019, eq. (6): alpha-entmax(z) = argmax_p p.z + H^T_alpha(p)
    x = randn(4, 8, scale=2.0)
    p = entmax_bisect(x, alpha)
    for row in range(4):
        best = ref.tsallis_objective(np64(p[row]), np64(x[row]), alpha)
        q = torch.distributions.Dirichlet(torch.ones(8, dtype=torch.float64)).sample((500,))
        near = (p[row] + 0.05 * (q - p[row])).numpy()  # small moves inside the simplex
        for cand in list(q.numpy()) + list(near):
            assert ref.tsallis_objective(cand, np64(x[row]), alpha) <= best + 1e-12


def test_alpha_to_one_tends_to_softmax():
    # Peters et al. 2019: alpha -> 1 recovers softmax (Shannon entropy)
    x = randn(3, 6)
    alphas = (1.3, 1.1, 1.01, 1.001)
    gaps = [float((entmax_bisect(x, a) - softmax(x)).abs().max()) for a in alphas]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3


# --- -inf, dead rows, dtypes, shapes ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_neg_inf_padding_equals_slicing(name, fn, alpha, ref_fn, dtype):
    x = randn(5, 6, dtype=dtype)
    padded = torch.cat([x, torch.full((5, 3), -INF, dtype=dtype)], dim=1)
    tol = {"atol": 1e-6 if dtype == torch.float32 else 1e-12, "rtol": 0}
    y = fn(padded)
    torch.testing.assert_close(y[:, :6], fn(x), **tol)
    assert (y[:, 6:] == 0).all()
    g = randn(5, 9, dtype=dtype)
    g_pad = grad_of(fn, padded, g)
    torch.testing.assert_close(g_pad[:, :6], grad_of(fn, x, g[:, :6]), **tol)
    assert (g_pad[:, 6:] == 0).all()
    # scattered -inf in a non-last dim: same as dropping those entries
    xt = padded.T[torch.randperm(9, generator=gen)]
    yt = fn(xt, dim=0)
    for col in range(5):
        keep = xt[:, col] > -INF
        torch.testing.assert_close(yt[keep, col], fn(xt[keep, col]), **tol)


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_rows_of_neg_inf_give_zeros_and_zero_gradient(name, fn, alpha, ref_fn):
    x = randn(3, 5, dtype=torch.float32)
    x[1] = -INF
    y = fn(x)
    assert (y[1] == 0).all() and torch.isfinite(y).all()
    torch.testing.assert_close(y[[0, 2]].sum(-1), torch.ones(2))
    g = grad_of(fn, x)
    assert (g[1] == 0).all() and torch.isfinite(g).all()
    assert (fn(torch.full((2, 4), -INF)) == 0).all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_half_dtypes_compute_in_float32(name, fn, alpha, ref_fn, dtype):
    x = randn(4, 33, scale=2.0, dtype=dtype)
    y = fn(x)
    assert y.dtype == dtype
    atol = 1e-3 if dtype == torch.float16 else 8e-3
    torch.testing.assert_close(y.float(), fn(x.float()), atol=atol, rtol=0)
    cotangent = randn(4, 33, dtype=dtype)
    g = grad_of(fn, x, cotangent)
    assert g.dtype == dtype and torch.isfinite(g).all()
    g32 = grad_of(fn, x.float(), cotangent.float())
    torch.testing.assert_close(g.float(), g32, atol=20 * atol, rtol=0)


@pytest.mark.parametrize(
    "shape, dim", [((0, 5), -1), ((5, 0), -1), ((2, 0, 3), 1), ((2, 0, 3), 0), ((0,), 0)]
)
@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS[:3], ids=MAP_IDS[:3])
def test_empty_tensors(name, fn, alpha, ref_fn, shape, dim):
    x = torch.zeros(shape, requires_grad=True)
    y = fn(x, dim=dim)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    a = torch.full((1,) * len(shape), 1.5)
    assert entmax_bisect(x.detach(), a, dim=dim).shape == x.shape


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_any_dim_equals_moving_it_last(name, fn, alpha, ref_fn):
    x = randn(3, 5, 4)
    for dim in (0, 1, -2):
        torch.testing.assert_close(fn(x, dim=dim), fn(x.movedim(dim, -1)).movedim(-1, dim))
        g = randn(3, 5, 4)
        torch.testing.assert_close(
            grad_of(lambda t, d=dim: fn(t, dim=d), x, g),
            grad_of(lambda t, d=dim: fn(t.movedim(d, -1)).movedim(-1, d), x, g),
        )
    assert float(fn(torch.tensor(3.0))) == 1.0  # a 0-d tensor is a one-entry simplex


@pytest.mark.parametrize("name, fn, alpha, ref_fn", MAPS, ids=MAP_IDS)
def test_large_inputs_stay_finite_and_exact(name, fn, alpha, ref_fn):
    x = torch.cat(
        [1e4 + randn(2, 50, dtype=torch.float32), -1e4 + randn(2, 50, dtype=torch.float32)]
    )
    y = fn(x)
    assert torch.isfinite(y).all()
    assert_matches(y, reference(alpha, ref_fn, np64(x)), atol=2e-6, rtol=1e-5)
    wide = torch.tensor([[1e4, -1e4, 0.0, 1e4 - 0.25]])
    assert torch.isfinite(fn(wide)).all() and torch.isfinite(grad_of(fn, wide)).all()


def test_nan_gives_nan_in_its_row_only():
    x = randn(3, 6, dtype=torch.float32)
    x[1, 2] = math.nan
    for fn in (sparsemax, entmax15, lambda t: entmax_bisect(t, 1.3)):
        y = fn(x)
        assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


# --- torch.compile, modules, errors -----------------------------------------------------------


def test_compiles_on_cpu():
    def three(x, a):
        return sparsemax(x) + entmax15(x, dim=0) + entmax_bisect(x, a, n_iter=12)

    x = randn(3, 5, dtype=torch.float32).requires_grad_()
    a = torch.tensor([[1.3], [1.6], [2.2]], requires_grad=True)
    g = randn(3, 5, dtype=torch.float32)
    out = torch.compile(three)(x, a)
    grads = torch.autograd.grad(out, (x, a), g)
    expected = three(x, a)
    expected_grads = torch.autograd.grad(expected, (x, a), g)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_modules():
    x = randn(2, 3, 4)
    assert repr(Sparsemax(1)) == "Sparsemax(dim=1)"
    assert repr(Entmax15()) == "Entmax15(dim=-1)"
    assert repr(EntmaxBisect(1.3, 0, 30)) == "EntmaxBisect(alpha=1.3, dim=0, n_iter=30)"
    torch.testing.assert_close(Sparsemax(1)(x), sparsemax(x, 1))
    torch.testing.assert_close(Entmax15(0)(x), entmax15(x, 0))
    torch.testing.assert_close(EntmaxBisect(1.3, 0, 30)(x), entmax_bisect(x, 1.3, 0, 30))
    assert EntmaxBisect().alpha == 1.5 and EntmaxBisect().n_iter == 50  # the paper's/official


X = torch.zeros(2, 3)
BAD_CALLS = [
    (lambda: sparsemax([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (lambda: entmax15(torch.tensor([1, 2])), TypeError, "x must be a floating-point tensor"),
    (lambda: entmax_bisect(torch.tensor([1, 2])), TypeError, "x must be a floating-point"),
    (lambda: sparsemax(X, dim=2), ValueError, r"dim must be in \[-2, 1\].*got 2"),
    (lambda: entmax15(X, dim=1.0), TypeError, "dim must be an int"),
    (lambda: entmax_bisect(X, dim=-3), ValueError, "dim must be in"),
    (lambda: entmax_bisect(X, alpha=1.0), ValueError, r"alpha must be in \(1, inf\], got 1"),
    (lambda: entmax_bisect(X, alpha=0.5), ValueError, r"alpha must be in \(1, inf\]"),
    (lambda: entmax_bisect(X, alpha=math.inf), ValueError, "alpha must be finite"),
    (lambda: entmax_bisect(X, alpha="1.5"), TypeError, "alpha must be a real number"),
    (lambda: entmax_bisect(X, alpha=torch.tensor([2, 3])), TypeError, "alpha must be a floating"),
    (lambda: entmax_bisect(X, alpha=torch.full((3,), 1.5)), ValueError,
     r"alpha must be broadcastable to the input's shape with dim \(2, 1\), got shape \(3,\)"),
    (lambda: entmax_bisect(X, alpha=torch.tensor([[1.5], [0.9]])), ValueError,
     r"alpha must have all values in \(1, inf\], got 0.9"),
    (lambda: entmax_bisect(X, alpha=torch.tensor([[1.5], [math.nan]])), ValueError,
     "alpha must have all values in"),
    (lambda: entmax_bisect(X, n_iter=0), ValueError, r"n_iter must be in \[1, inf\], got 0"),
    (lambda: entmax_bisect(X, n_iter=10.0), TypeError, "n_iter must be an int"),
    (lambda: Sparsemax(dim="1"), TypeError, "dim must be an int"),
    (lambda: Entmax15(dim=None), TypeError, "dim must be an int"),
    (lambda: EntmaxBisect(alpha=1), ValueError, r"alpha must be in \(1, inf\]"),
    (lambda: EntmaxBisect(n_iter=-1), ValueError, "n_iter must be in"),
    (lambda: Sparsemax(5)(X), ValueError, "dim must be in"),
]  # fmt: skip


@pytest.mark.parametrize("call, exc, match", BAD_CALLS)
def test_bad_arguments_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- against the entmax package (deep-spin/entmax), when installed --------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_the_entmax_package(dtype):
    em = pytest.importorskip("entmax", reason="the entmax package is not installed")
    for scale, shape, dim in ((0.2, (16, 300), -1), (1.0, (16, 300), -1), (3.0, (5, 7, 9), 1)):
        x = randn(*shape, scale=scale, dtype=dtype)
        g = randn(*shape, dtype=dtype)
        atol = 1e-6 if dtype == torch.float32 else 1e-12
        pairs = [
            (sparsemax, lambda t, d=dim: em.sparsemax(t, d)),
            (entmax15, lambda t, d=dim: em.entmax15(t, d)),
            (
                lambda t, d=dim: entmax_bisect(t, 1.3, d),
                lambda t, d=dim: em.entmax_bisect(t, 1.3, d),
            ),
        ]
        for ours, theirs in pairs:
            ours_dim = (
                (lambda t, f=ours, d=dim: f(t, dim=d)) if ours in (sparsemax, entmax15) else ours
            )
            torch.testing.assert_close(ours_dim(x), theirs(x), atol=atol, rtol=0)
            torch.testing.assert_close(
                grad_of(ours_dim, x, g), grad_of(theirs, x, g), atol=10 * atol, rtol=0
            )
    # per-row alpha, gradient with respect to alpha included
    x = randn(4, 20, dtype=dtype)
    alpha = torch.tensor([[1.2], [1.5], [2.0], [2.7]], dtype=dtype, requires_grad=True)
    ours = torch.autograd.grad((entmax_bisect(x, alpha) ** 2).sum(), alpha)[0]
    theirs = torch.autograd.grad((em.entmax_bisect(x, alpha) ** 2).sum(), alpha)[0]
    torch.testing.assert_close(
        ours, theirs, atol=1e-5 if dtype == torch.float32 else 1e-10, rtol=1e-4
    )
