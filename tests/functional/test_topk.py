import math

import numpy as np
import pytest
import torch

from softmaxkit import TopKSoftmax, softmax, topk_softmax
from tests.helpers import assert_matches, grad_of, np64
from tests.reference import maps_ref as ref

gen = torch.Generator().manual_seed(5)
MODES = ["topk_then_softmax", "softmax_then_topk"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("shape, dim", [((8,), 0), ((5, 8), -1), ((3, 8, 2), 1)])
def test_matches_reference(shape, dim, k, mode):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    expected = ref.topk_softmax(np64(x.movedim(dim, -1)), k, mode)
    assert_matches(topk_softmax(x, k, dim, normalize=mode).movedim(dim, -1), expected)


def test_equivalences():
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    # renormalised softmax-then-topk equals the paper's softmax over the top k
    kept = topk_softmax(x, 3, normalize="softmax_then_topk")
    torch.testing.assert_close(kept / kept.sum(-1, keepdim=True), topk_softmax(x, 3))
    torch.testing.assert_close(topk_softmax(x, 10), softmax(x))  # k = n is the softmax


def test_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    y, idx = topk_softmax(x, 2, return_indices=True)
    assert idx.tolist() == [[1, 2], [0, 1]]
    expected = np.array([[0, 0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0, 0]])
    assert_matches(y, expected)
    assert_matches(y, ref.topk_softmax(np64(x), 2))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_and_gradient_support(mode):
    x = torch.randn(3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: topk_softmax(t, 3, normalize=mode), (x,))
    assert torch.autograd.gradcheck(lambda t: topk_softmax(t, 2, 0, normalize=mode), (x,))
    g = grad_of(lambda t: topk_softmax(t, 3, normalize=mode), x)
    outside = topk_softmax(x, 3) == 0
    if mode == "topk_then_softmax":  # only the selected logits receive gradient
        assert (g[outside] == 0).all()
    else:  # the full normaliser reaches every logit
        assert (g[outside] != 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_neg_inf_and_dead_rows(mode):
    x = torch.tensor([[-math.inf] * 4, [0.0, -math.inf, 1.0, -math.inf]])
    y = topk_softmax(x, 3, normalize=mode)
    assert (y[0] == 0).all()
    torch.testing.assert_close(y[1], torch.tensor([0.2689414, 0.0, 0.7310586, 0.0]))
    g = grad_of(lambda t: topk_softmax(t, 3, normalize=mode), x)
    assert not g.isnan().any() and (g[0] == 0).all()


def test_return_indices_with_non_last_dim():
    x = torch.randn(6, 2, 3, generator=gen)
    y, idx = topk_softmax(x, 2, 0, return_indices=True)
    assert idx.shape == (2, 2, 3)
    torch.testing.assert_close(y.gather(0, idx).sum(0), torch.ones(2, 3))
    assert (y.gather(0, idx)[0] >= y.gather(0, idx)[1]).all()


def test_empty_and_extreme():
    assert topk_softmax(torch.randn(0, 5), 2).shape == (0, 5)
    y, idx = topk_softmax(torch.randn(3, 0), 1, return_indices=True)
    assert y.shape == (3, 0) and idx.shape == (3, 0)
    x = torch.randn(3, 9, generator=gen) * 1e4
    assert torch.isfinite(topk_softmax(x, 3)).all()


def test_module_twin():
    x = torch.randn(3, 6, generator=gen)
    assert torch.equal(TopKSoftmax(2)(x), topk_softmax(x, 2))
    assert "k=2" in repr(TopKSoftmax(2))


@pytest.mark.parametrize(
    "k, kwargs, error, match",
    [
        (0, {}, ValueError, r"k must be in \[1, 5\]"),
        (6, {}, ValueError, r"k must be in \[1, 5\]"),
        (2.0, {}, TypeError, "k must be an int"),
        (2, {"normalize": "renorm"}, ValueError, "normalize must be one of"),
        (2, {"dim": 2}, ValueError, "dim must be in"),
    ],
)
def test_errors(k, kwargs, error, match):
    with pytest.raises(error, match=match):
        topk_softmax(torch.randn(3, 5), k, **kwargs)
