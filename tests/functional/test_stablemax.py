import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from softmaxkit import LogStableMax, StableMax, log_stablemax, stablemax
from tests.helpers import FLOAT_DTYPES, HALF_DTYPES, assert_matches, grad_of, np64
from tests.reference import maps_ref as ref

gen = torch.Generator().manual_seed(2)
MAPS = [stablemax, log_stablemax]


def randn(*shape, scale=3.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


@pytest.mark.parametrize("fn", MAPS)
@pytest.mark.parametrize("shape, dim", [((7,), 0), ((4, 9), -1), ((3, 5, 2), 1), ((3, 2000), -1)])
def test_matches_reference(fn, shape, dim):
    x = randn(*shape)
    expected = getattr(ref, fn.__name__)(np64(x.movedim(dim, -1)))
    assert_matches(fn(x, dim).movedim(dim, -1), expected, atol=1e-13)


def test_log_map_is_exact_where_the_ratio_rounds():
    # the probability 1e-60 underflows float32 (the log of the ratio is -inf); the
    # difference of logs is exact
    x = torch.tensor([-1e30, 1e30])
    expected = math.log(ref.s(-1e30)) - math.log(ref.s(-1e30) + ref.s(1e30))
    assert stablemax(x)[0] == 0
    assert abs(log_stablemax(x)[0].item() - expected) < 1e-6 * abs(expected)


@pytest.mark.parametrize("fn", MAPS)
def test_gradcheck(fn):
    x = randn(3, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, 0), (x,))
    keep = torch.tensor([True, True, False, True, False, True])
    assert torch.autograd.gradcheck(lambda t: fn(t, mask=keep)[:, keep], (x,))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("fn", MAPS)
def test_no_nan_gradient_at_the_branch_points(fn, dtype):
    # the authors' torch.where gives a NaN gradient at exactly x = 1 in float32/float16
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=dtype)
    g = grad_of(fn, x)
    assert torch.isfinite(g).all()
    expected = grad_of(fn, x.double())
    torch.testing.assert_close(
        g.double(), expected, atol=1e-2 if dtype in HALF_DTYPES else 1e-6, rtol=0
    )


@pytest.mark.parametrize("fn", MAPS)
def test_neg_inf_equals_slicing_and_has_zero_gradient(fn):
    # the authors' code gives NaN gradients for the whole row when one logit is -inf
    x = randn(4, 5)
    padded = torch.cat([x, torch.full((4, 2), -math.inf, dtype=x.dtype)], 1)
    torch.testing.assert_close(fn(padded)[:, :5], fn(x))
    g = grad_of(lambda t: fn(t)[:, :5], padded, torch.ones(4, 5, dtype=x.dtype))
    torch.testing.assert_close(g[:, :5], grad_of(fn, x, torch.ones(4, 5, dtype=x.dtype)))
    assert (g[:, 5:] == 0).all()


@pytest.mark.parametrize("fn, fill", [(stablemax, 0.0), (log_stablemax, -math.inf)])
def test_fully_masked_rows(fn, fill):
    x = randn(3, 4)
    keep = torch.tensor([[True] * 4, [False] * 4, [True, False, True, True]])
    y = fn(x, mask=keep)
    assert (y[1] == fill).all() and (y[2, 1] == fill)
    torch.testing.assert_close(y[2, keep[2]], fn(x[2, keep[2]]))
    g = grad_of(lambda t: fn(t, mask=keep).masked_fill(~keep, 0.0), x)
    assert not g.isnan().any() and (g[1] == 0).all() and g[2, 1] == 0
    dead = torch.full((2, 3), -math.inf)
    assert (fn(dead) == fill).all() and (
        grad_of(lambda t: fn(t).nan_to_num(neginf=0.0), dead) == 0
    ).all()


@pytest.mark.parametrize("scale", [1e4, -1e4, 1e30])
def test_extreme_inputs_finite(scale):
    x = torch.randn(4, 6, generator=gen) * scale
    assert torch.isfinite(stablemax(x)).all() and torch.isfinite(log_stablemax(x)).all()
    assert torch.isfinite(grad_of(stablemax, x)).all()


@pytest.mark.parametrize("fn", MAPS)
def test_empty_and_non_last_dim(fn):
    assert fn(torch.randn(0, 3)).shape == (0, 3)
    assert fn(torch.randn(3, 0)).shape == (3, 0)
    x = randn(2, 3, 4)
    torch.testing.assert_close(fn(x, 1), fn(x.transpose(1, 2)).transpose(1, 2))


def test_not_shift_invariant():
    x = torch.tensor([0.0, 1.0, 2.0])
    assert not torch.allclose(stablemax(x), stablemax(x + 5))


rows = arrays(
    np.float64, st.tuples(st.integers(1, 3), st.integers(1, 10)), elements=st.floats(-1e6, 1e6)
)


@settings(max_examples=60, deadline=None)
@given(x=rows)
def test_properties(x):
    t = torch.from_numpy(x)
    y = stablemax(t)
    assert (y > 0).all()  # s > 0 everywhere: nothing is absorbed to an exact zero
    torch.testing.assert_close(y.sum(-1), torch.ones(t.shape[0], dtype=t.dtype))
    # monotone: a larger logit never gets a smaller probability
    order = t.argsort(-1)
    assert (y.gather(-1, order).diff(dim=-1) >= -1e-15).all()
    torch.testing.assert_close(log_stablemax(t).exp(), y)


def test_module_twins():
    x = randn(3, 4)
    assert torch.equal(StableMax(0)(x), stablemax(x, 0))
    assert torch.equal(LogStableMax()(x), log_stablemax(x))
    assert repr(StableMax(1)) == "StableMax(dim=1)"


@pytest.mark.parametrize("fn", MAPS)
def test_errors(fn):
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fn(torch.arange(3))
    with pytest.raises(ValueError, match="dim must be in"):
        fn(torch.randn(3), dim=1)
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        fn(torch.randn(3), mask=torch.ones(3))
    with pytest.raises(ValueError, match="mask must be broadcastable"):
        fn(torch.randn(3), mask=torch.ones(2, dtype=torch.bool))
