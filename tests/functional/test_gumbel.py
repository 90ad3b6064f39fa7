import math

import pytest
import torch

from softmaxkit import GumbelSoftmax, gumbel_softmax, softmax
from tests.helpers import HALF_DTYPES


def sample(logits, seed=0, **kwargs):
    return gumbel_softmax(logits, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_reproducible_with_a_generator():
    x = torch.randn(4, 6)
    torch.testing.assert_close(sample(x, 3), sample(x, 3))
    assert not torch.equal(sample(x, 3), sample(x, 4))


def test_soft_sample_is_a_tempered_softmax_of_perturbed_logits():
    x = torch.randn(3, 5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    noise = -torch.empty_like(x).exponential_(generator=gen).log()
    torch.testing.assert_close(sample(x, 1, tau=0.5), softmax((x + noise) / 0.5))


def test_hard_is_one_hot_with_straight_through_gradient():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = sample(x, 2, hard=True, tau=0.7)
    assert ((y == 0) | (y == 1)).all() and (y.sum(-1) == 1).all()
    soft = sample(x, 2, tau=0.7)
    assert torch.equal(y.argmax(-1), soft.argmax(-1))
    cot = torch.randn(5, 7, dtype=torch.float64)
    (g_hard,) = torch.autograd.grad(y, x, cot)
    (g_soft,) = torch.autograd.grad(soft, x, cot)
    torch.testing.assert_close(g_hard, g_soft)


def test_argmax_frequencies_follow_the_categorical():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0]).log_softmax(0)
    n = 40_000
    y = sample(logits.expand(n, 4), 5, hard=True)
    freq = y.mean(0)
    p = logits.exp()
    # 5 standard errors of a binomial proportion
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all()


def test_low_temperature_approaches_one_hot_and_gradcheck():
    x = torch.randn(3, 4, dtype=torch.float64)
    y = sample(x, 6, tau=1e-4)
    assert torch.allclose(y.max(-1).values, torch.ones(3, dtype=torch.float64))
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sample(t, 7, tau=0.8), (xg,))


def test_neg_inf_is_never_sampled_and_dead_rows_are_zero():
    x = torch.tensor([[0.0, -math.inf, 0.0], [-math.inf] * 3])
    for hard in (False, True):
        y = sample(x.expand(2000, 2, 3), 8, hard=hard)
        assert (y[:, 0, 1] == 0).all() and (y[:, 1] == 0).all() and not y.isnan().any()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes_and_non_last_dim(dtype):
    x = torch.randn(6, 3).to(dtype)
    y = sample(x, 9, dim=0, hard=True)
    assert y.dtype == dtype and (y.sum(0) == 1).all()
    assert gumbel_softmax(torch.randn(0, 3)).shape == (0, 3)


def test_module_twin():
    m = GumbelSoftmax(0.5, hard=True)
    x = torch.randn(2, 4)
    assert torch.equal(m(x, torch.Generator().manual_seed(1)), sample(x, 1, tau=0.5, hard=True))
    assert "tau=0.5" in repr(m)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tau": 0.0}, ValueError, r"tau must be in \(0, inf\]"),
        ({"hard": 1}, TypeError, "hard must be a bool"),
        ({"dim": 5}, ValueError, "dim must be in"),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        gumbel_softmax(torch.randn(2, 3), **kwargs)
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        gumbel_softmax(torch.arange(3))
