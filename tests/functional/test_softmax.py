import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from softmaxkit import LogSoftmax, Softmax, log_softmax, softmax
from softmaxkit.functional import two_pass
from tests.helpers import HALF_DTYPES, assert_matches, grad_of, np64
from tests.reference import maps_ref as ref

gen = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float64, scale=3.0):
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale


@pytest.mark.parametrize("temperature", [1.0, 0.3, 4.0])
@pytest.mark.parametrize("shape", [(7,), (4, 9), (2, 3, 5)])
def test_matches_reference(shape, temperature):
    x = randn(*shape)
    assert_matches(softmax(x, temperature=temperature), ref.softmax(np64(x), temperature))
    assert_matches(log_softmax(x, temperature=temperature), ref.log_softmax(np64(x), temperature))


def test_mask_matches_reference_and_broadcasts():
    x = randn(3, 4, 6)
    keep = torch.rand(4, 6, generator=gen) > 0.4
    keep[0] = False  # a fully masked row in every batch entry
    expected = ref.softmax(np64(x), 1.0, keep.numpy())
    assert_matches(softmax(x, mask=keep), expected)
    with np.errstate(divide="ignore"):
        assert_matches(log_softmax(x, mask=keep), np.log(expected))


@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_non_last_dim(fn):
    x = randn(5, 4, 3)
    expected = fn(x.transpose(0, 2), -1).transpose(0, 2)
    torch.testing.assert_close(fn(x, 0), fn(x.movedim(0, -1)).movedim(-1, 0))
    torch.testing.assert_close(fn(x, dim=-3), expected.transpose(0, 2).transpose(0, 2))


@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_gradcheck(fn):
    x = randn(3, 5).requires_grad_()
    keep = torch.tensor([True, True, False, True, True])
    assert torch.autograd.gradcheck(lambda t: fn(t, temperature=0.7), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, 0), (x,))
    if fn is softmax:
        assert torch.autograd.gradcheck(lambda t: fn(t, mask=keep), (x,))
    else:  # masked outputs are the constant -inf; check the finite ones
        assert torch.autograd.gradcheck(lambda t: fn(t, mask=keep)[:, keep], (x,))


@pytest.mark.parametrize("fn, fill", [(softmax, 0.0), (log_softmax, -math.inf)])
def test_fully_masked_rows_give_fill_and_zero_gradient(fn, fill):
    x = randn(3, 4)
    keep = torch.tensor([[True] * 4, [False] * 4, [True, False, True, False]])
    for inputs, mask in [(x, keep), (x.masked_fill(~keep, -math.inf), None)]:
        y = fn(inputs, mask=mask)
        assert not y.isnan().any()
        assert (y[1] == fill).all()
        g = grad_of(lambda t, m=mask: fn(t, mask=m).masked_fill(~keep, 0.0), inputs)
        assert not g.isnan().any()
        assert (g[1] == 0).all() and (g[2, 1] == 0) and (g[2, 3] == 0)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_neg_inf_padding_equals_slicing(fn):
    x = randn(4, 5)
    padded = torch.cat([x, torch.full((4, 3), -math.inf, dtype=x.dtype)], 1)
    y = fn(padded)
    torch.testing.assert_close(y[:, :5], fn(x))
    g = grad_of(lambda t: fn(t)[:, :5], padded, torch.ones(4, 5, dtype=x.dtype))
    torch.testing.assert_close(g[:, :5], grad_of(fn, x, torch.ones(4, 5, dtype=x.dtype)))
    assert (g[:, 5:] == 0).all()


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_inputs_stay_finite(scale):
    x = randn(4, 6, dtype=torch.float32) * scale
    assert torch.isfinite(softmax(x)).all()
    assert torch.isfinite(log_softmax(x)).all()
    assert_matches(softmax(x), ref.softmax(np64(x)), atol=1e-6)


def test_nan_and_pos_inf_propagate_like_torch():
    x = torch.tensor([[0.0, math.nan, 1.0], [0.0, math.inf, 1.0]])
    assert softmax(x).isnan().all()
    assert log_softmax(x).isnan().all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_half_dtypes_no_worse_than_torch(fn, dtype):
    x = randn(8, 33, dtype=torch.float32).to(dtype)
    y = fn(x)
    assert y.dtype == dtype
    truth = getattr(torch, fn.__name__)(x.double(), -1)
    ours = (y.double() - truth).abs().nan_to_num(0).max()
    torch_err = (getattr(torch, fn.__name__)(x, -1).double() - truth).abs().nan_to_num(0).max()
    assert ours <= torch_err * 1.01 + 1e-6
    g = grad_of(fn, x)
    assert g.dtype == dtype and torch.isfinite(g).all()


@pytest.mark.parametrize("shape, dim", [((0, 5), -1), ((3, 0), -1), ((0,), 0), ((), 0)])
def test_empty_and_scalar(shape, dim):
    x = torch.randn(shape)
    y = softmax(x, dim)
    assert y.shape == x.shape
    if x.numel():
        assert torch.equal(y, torch.ones(()))
    assert log_softmax(x, dim).shape == x.shape


def test_long_rows_dispatch_to_two_pass(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # one row, idle cores
    x = torch.randn(1, two_pass.AUTO_MIN_ROW + 5, generator=gen)
    assert two_pass.auto_chunk(x, 1) == two_pass.DEFAULT_CHUNK
    assert two_pass.auto_chunk(torch.randn(64, 100), 1) is None
    # float32 sums of 8M terms in another order than torch's: both are ~1e-5 relative off
    # the float64 truth (the order, hence the rounding, depends on the thread count), so
    # the claim is: no worse than torch's own float32 softmax
    truth = torch.softmax(x.double(), -1)
    ours = ((softmax(x).double() - truth).abs() / truth).max()
    theirs = ((torch.softmax(x, -1).double() - truth).abs() / truth).max()
    assert ours <= 2 * theirs + 1e-6, (float(ours), float(theirs))


finite_rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(1, 12)),
    elements=st.floats(-50, 50, allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(x=finite_rows, shift=st.floats(-100, 100), temperature=st.floats(0.05, 20))
def test_properties_normalised_and_shift_invariant(x, shift, temperature):
    t = torch.from_numpy(x)
    y = softmax(t, temperature=temperature)
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(t.shape[0], dtype=t.dtype))
    torch.testing.assert_close(
        softmax(t + shift, temperature=temperature), y, atol=1e-10, rtol=1e-7
    )


@settings(max_examples=40, deadline=None)
@given(x=finite_rows)
def test_property_temperature_limits(x):
    t = torch.from_numpy(x)
    uniform = torch.full_like(t, 1.0 / t.shape[1])
    torch.testing.assert_close(softmax(t, temperature=1e9), uniform, atol=1e-6, rtol=0)
    cold = softmax(t, temperature=1e-6)
    top = t == t.amax(-1, keepdim=True)
    ordered = t.sort(-1, descending=True).values
    gap = ordered[:, 0] - ordered[:, 1] if t.shape[1] > 1 else torch.full((t.shape[0],), math.inf)
    clear = gap > 1e-3  # a unique maximum clearly above the rest: gap / T >> log(n)
    expected = top.to(t.dtype)
    torch.testing.assert_close(cold[clear], expected[clear], atol=1e-6, rtol=0)


def test_module_twins():
    x = randn(3, 4)
    keep = torch.tensor([True, False, True, True])
    assert torch.equal(Softmax(0, temperature=2.0)(x), softmax(x, 0, temperature=2.0))
    assert torch.equal(LogSoftmax()(x, mask=keep), log_softmax(x, mask=keep))
    assert "temperature=2.0" in repr(Softmax(temperature=2.0))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": torch.arange(3)}, TypeError, "x must be a floating-point tensor"),
        ({"x": [1.0, 2.0]}, TypeError, "x must be a torch.Tensor"),
        ({"dim": 2}, ValueError, r"dim must be in \[-2, 1\]"),
        ({"dim": 1.0}, TypeError, "dim must be an int"),
        ({"temperature": 0.0}, ValueError, r"temperature must be in \(0, inf\]"),
        ({"temperature": float("nan")}, ValueError, "temperature must be finite"),
        ({"mask": torch.ones(2, 3)}, TypeError, "mask must be a boolean tensor"),
        ({"mask": torch.ones(4, dtype=torch.bool)}, ValueError, "mask must be broadcastable"),
    ],
)
@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_errors(fn, kwargs, error, match):
    args = {"x": torch.randn(2, 3), **kwargs}
    x = args.pop("x")
    with pytest.raises(error, match=match):
        fn(x, **args)
