"""The maps over the whole floating range: finite, exact results where the true result is
finite (issue 11, part 2). The contract harness scales every map's samples to 1e19, 1e30,
3e38 and the half maxima; these are the issue's own inputs, where the plain computation
overflowed."""

import math

import pytest
import torch

from softmaxkit import (
    gumbel_softmax,
    log_softmax,
    log_stablemax,
    softmax,
    spherical_softmax,
    stablemax,
    taylor_softmax,
)

F32_DTYPES = (torch.float32, torch.bfloat16)


def finite_grad(fn, x):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y.dtype))
    assert not torch.isnan(x.grad).any()
    return y.detach()


@pytest.mark.parametrize("dtype", F32_DTYPES)
def test_spherical_softmax_beyond_the_square_root_of_the_maximum(dtype):
    x = torch.tensor([[1e20, 0.0, 1.0], [3e38, -3e38, 1e38]], dtype=dtype)
    y = finite_grad(lambda t: spherical_softmax(t, eps=1e-6), x)
    expected = spherical_softmax(x.double(), eps=1e-6)
    torch.testing.assert_close(y.double(), expected, atol=1e-2, rtol=1e-2)
    assert y[0, 0] == 1 and y[0, 1] == 0  # the issue's [1e20, 0, 1]: [1, 0, 0]


def test_spherical_softmax_keeps_eps_below_the_square_root_of_the_minimum():
    # x^2 underflows; the answer is x_i^2 / sum x^2 + (negligible eps)
    x = torch.tensor([[1e-30, 2e-30]])
    torch.testing.assert_close(spherical_softmax(x, eps=1e-70), torch.tensor([[0.2, 0.8]]))
    # eps comparable to x^2 (both below float32's range when squared): kept exactly
    torch.testing.assert_close(spherical_softmax(x, eps=3e-60), torch.tensor([[4 / 11, 7 / 11]]))


@pytest.mark.parametrize("dtype", F32_DTYPES)
def test_taylor_softmax_at_huge_logits(dtype):
    x = torch.tensor([[1e30, -1e30, 0.0], [3e38, 2e38, -3e38]], dtype=dtype)
    y = finite_grad(taylor_softmax, x)
    torch.testing.assert_close(y.double(), taylor_softmax(x.double()), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(y[0, :2].float(), torch.tensor([0.5, 0.5]))


def test_spherical_and_taylor_rows_in_range_are_unchanged():
    """The scaled path runs only for the rows that need it, and gives the same values at
    ordinary magnitudes."""
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    big = torch.cat([x, torch.full((1, 7), 1e30)])
    torch.testing.assert_close(spherical_softmax(big, eps=0.1)[:4], spherical_softmax(x, eps=0.1))
    torch.testing.assert_close(taylor_softmax(big)[:4], taylor_softmax(x))


@pytest.mark.parametrize("dtype", F32_DTYPES)
def test_stablemax_when_the_row_sum_overflows(dtype):
    x = torch.tensor([[2e38, 2e38], [3e38, 0.0]], dtype=dtype)
    y = finite_grad(stablemax, x)
    torch.testing.assert_close(y[0].float(), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(y.double(), stablemax(x.double()), atol=1e-2, rtol=1e-2)
    log_y = finite_grad(log_stablemax, x)
    assert torch.isfinite(log_y[0]).all()
    torch.testing.assert_close(log_y.double(), log_stablemax(x.double()), atol=1e-2, rtol=1e-2)


def test_stablemax_gradient_when_the_row_sum_overflows_matches_float64():
    x = torch.tensor([[2e38, 2e38, -1.0], [1.0, 2.0, 3.0]])
    for fn in (stablemax, log_stablemax):
        xs = x.clone().requires_grad_()
        xd = x.double().requires_grad_()
        g = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]])
        fn(xs).backward(g)
        fn(xd).backward(g.double())
        torch.testing.assert_close(xs.grad.double(), xd.grad, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("temperature", [1e-40, 1e-50, 1e-300])
def test_temperature_towards_zero_is_the_argmax(log, temperature):
    fn = log_softmax if log else softmax
    x = torch.tensor([[1.0, 3.0, 2.0], [-1e38, -2e38, -3e38], [5.0, 5.0, -1.0]])
    y = (
        finite_grad(lambda t: fn(t, temperature=temperature), x)
        if not log
        else fn(x, temperature=temperature)
    )
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(y.exp() if log else y, one_hot)


@pytest.mark.parametrize("dtype", F32_DTYPES)
def test_small_temperature_with_huge_logits(dtype):
    x = torch.tensor([[3e38, 2.9e38, -3e38], [1e38, -1e38, 0.0]], dtype=dtype)
    for fn in (softmax, log_softmax):
        y = finite_grad(lambda t, fn=fn: fn(t, temperature=0.5), x)
        expected = fn(x.double(), temperature=0.5)
        shown = expected.abs() <= torch.finfo(dtype).max
        assert torch.isfinite(y.double()[shown]).all()
        torch.testing.assert_close(y.double()[shown], expected[shown], rtol=1e-2, atol=1e-2)


def test_gumbel_softmax_small_tau_with_huge_logits():
    x = torch.tensor([[3e38, 2e38, -3e38]])
    g = torch.Generator().manual_seed(0)
    y = finite_grad(lambda t: gumbel_softmax(t, 0.5, generator=g), x)
    torch.testing.assert_close(y, torch.tensor([[1.0, 0.0, 0.0]]))


def test_temperature_above_one_is_a_plain_division():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(softmax(x, temperature=2.5), torch.softmax(x / 2.5, -1))
    assert math.isfinite(float(log_softmax(torch.tensor([-3e38, 3e38]), temperature=4.0)[0]))
