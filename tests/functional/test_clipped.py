import math

import pytest
import torch

from softmaxkit import ClippedSoftmax, clipped_softmax, clipped_softmax_gamma
from tests.helpers import assert_matches, grad_of, np64
from tests.reference import maps_ref as ref

gen = torch.Generator().manual_seed(4)


def naive(x, gamma, zeta, dim=-1):
    return torch.clamp((zeta - gamma) * torch.softmax(x, dim) + gamma, 0, 1)


@pytest.mark.parametrize("gamma, zeta", [(-0.025, 1.0), (-0.1, 1.1), (0.0, 1.0), (-0.003, 1.005)])
@pytest.mark.parametrize("shape, dim", [((9,), 0), ((4, 16), -1), ((3, 5, 2), 1)])
def test_matches_reference(shape, dim, gamma, zeta):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3
    expected = ref.clipped_softmax(np64(x.movedim(dim, -1)), gamma, zeta)
    assert_matches(clipped_softmax(x, dim, gamma=gamma, zeta=zeta).movedim(dim, -1), expected)


def test_gradient_matches_clamp_semantics():
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64) * 4
    for gamma, zeta in [(-0.1, 1.1), (-0.025, 1.0)]:
        ours = grad_of(lambda t, g=gamma, z=zeta: clipped_softmax(t, gamma=g, zeta=z), x)
        torch.testing.assert_close(ours, grad_of(lambda t, g=gamma, z=zeta: naive(t, g, z), x))


def test_gradcheck():
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: clipped_softmax(t, gamma=-0.1, zeta=1.1), (x,))
    keep = torch.tensor([True, False, True])[:, None]
    assert torch.autograd.gradcheck(lambda t: clipped_softmax(t, 0, gamma=-0.1, mask=keep), (x,))


def test_gradient_is_inclusive_at_the_bounds():
    # gamma = -1, zeta = 1: u = 2p - 1 is exactly 0 for two equal logits and exactly 1
    # for a single one; torch.clamp passes the gradient at the bounds
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    y = clipped_softmax(x, gamma=-1.0)
    assert (y == 0).all()
    cot = torch.tensor([[1.0, 3.0], [2.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        grad_of(lambda t: clipped_softmax(t, gamma=-1.0), x, cot),
        grad_of(lambda t: naive(t, -1.0, 1.0), x, cot),
    )
    assert (grad_of(lambda t: clipped_softmax(t, gamma=-1.0), x, cot) != 0).all()


def test_paper_claim_exact_zeros_and_ones_from_finite_logits():
    x = torch.tensor([[6.0, 0.0, -1.0, 0.5]])
    assert (torch.softmax(x, -1) > 0).all()  # plain softmax never reaches 0
    y = clipped_softmax(x, gamma=-0.025)
    assert (y[0, 1:] == 0).all() and 0 < y[0, 0] < 1
    assert clipped_softmax(x, gamma=-0.025, zeta=1.05)[0, 0] == 1.0
    # entries clipped strictly outside [0, 1] pass no gradient through their own output
    g = grad_of(lambda t: clipped_softmax(t, gamma=-0.025), x, torch.tensor([[0.0, 1.0, 1.0, 1.0]]))
    assert (g == 0).all()


def test_masked_and_dead_rows():
    x = torch.randn(3, 4, generator=gen)
    keep = torch.tensor([[True] * 4, [False] * 4, [True, True, False, False]])
    y = clipped_softmax(x, mask=keep, gamma=-0.1, zeta=1.1)
    assert (y[1] == 0).all() and (y[2, 2:] == 0).all()
    torch.testing.assert_close(y[2, :2], clipped_softmax(x[2, :2], gamma=-0.1, zeta=1.1))
    g = grad_of(lambda t: clipped_softmax(t, mask=keep, gamma=-0.1, zeta=1.1), x)
    assert not g.isnan().any() and (g[1] == 0).all() and (g[2, 2:] == 0).all()
    assert (clipped_softmax(torch.full((2, 3), -math.inf)) == 0).all()


def test_extreme_and_empty():
    x = torch.randn(4, 8, generator=gen) * 1e4
    assert (
        torch.isfinite(clipped_softmax(x)).all()
        and torch.isfinite(grad_of(clipped_softmax, x)).all()
    )
    assert clipped_softmax(torch.randn(0, 4)).shape == (0, 4)
    assert clipped_softmax(torch.randn(4, 0)).shape == (4, 0)


def test_gamma_rule_and_module():
    assert clipped_softmax_gamma(12, 512) == -12 / 512
    m = ClippedSoftmax(gamma=-0.1, zeta=1.1)
    x = torch.randn(2, 5, generator=gen)
    assert torch.equal(m(x), clipped_softmax(x, gamma=-0.1, zeta=1.1))
    assert "gamma=-0.1" in repr(m)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"gamma": 0.1}, ValueError, r"gamma must be in \[-inf, 0\]"),
        ({"zeta": 0.9}, ValueError, r"zeta must be in \[1, inf\]"),
        ({"gamma": "a"}, TypeError, "gamma must be a real number"),
        ({"dim": 3}, ValueError, "dim must be in"),
        ({"mask": torch.ones(5)}, TypeError, "mask must be a boolean"),
    ],
)
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        clipped_softmax(torch.randn(2, 5), **kwargs)
    with pytest.raises(ValueError, match=r"seq_len must be in \[1, inf\]"):
        clipped_softmax_gamma(1.0, 0)
