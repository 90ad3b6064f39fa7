import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.hinge import SquaredHingeLoss, squared_hinge_loss
from tests.helpers import np64
from tests.reference import hinge_ref as ref

gen = torch.Generator().manual_seed(9)


def case(n=6, c=5, scale=1.5, dtype=torch.float64):
    x = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_matches_reference(reduction, margin):
    x, t = case()
    t[2] = -100
    kept = (t != -100).numpy()
    expected = np.zeros(6)
    expected[kept] = ref.squared_hinge_rows(np64(x)[kept], t.numpy()[kept], margin)
    out = squared_hinge_loss(x, t, margin=margin, reduction=reduction)
    if reduction == "none":
        np.testing.assert_allclose(np64(out), expected, rtol=1e-12, atol=1e-15)
    else:
        total = expected.sum() / (kept.sum() if reduction == "mean" else 1)
        assert math.isclose(out.item(), total, rel_tol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 7), seed=st.integers(0, 2**16))
def test_mean_is_the_official_formula(n, c, seed):
    # AFAgarap/cnn-svm: reduce_mean(square(maximum(0, 1 - y * output))), y = one-hot with 0 -> -1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, c, (n,), generator=g)
    official = ref.official_hinge(np64(x), t.numpy())
    assert math.isclose(squared_hinge_loss(x, t).item(), official, rel_tol=1e-12, abs_tol=1e-15)
    # and as the official total loss with the C penalty times the hinge
    assert math.isclose(
        (3.0 * squared_hinge_loss(x, t)).item(), 3.0 * official, rel_tol=1e-12, abs_tol=1e-15
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(2, 6),
    margin=st.floats(0.0, 3.0),
    slack=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_zero_when_every_margin_is_met(n, c, margin, slack, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, c, (n,), generator=g)
    x = -(margin + slack * torch.rand(n, c, generator=g, dtype=torch.float64))
    x[torch.arange(n), t] = margin + slack * torch.rand(n, generator=g, dtype=torch.float64)
    x.requires_grad_()
    loss = squared_hinge_loss(x, t, margin=margin, reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    # one violated margin makes it positive
    y = x.detach().clone()
    y[0, t[0]] = margin - 0.5
    assert squared_hinge_loss(y, t, margin=margin).item() > 0


def test_probability_targets_are_the_expected_loss():
    x, t = case()
    p = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), 1)
    np.testing.assert_allclose(
        np64(squared_hinge_loss(x, p, reduction="none")), ref.squared_hinge_rows(np64(x), p.numpy())
    )
    # one-hot probabilities = index targets (y = 2 t - 1 agrees there)
    one_hot = torch.nn.functional.one_hot(t, 5).double()
    torch.testing.assert_close(
        squared_hinge_loss(x, one_hot, reduction="none"), squared_hinge_loss(x, t, reduction="none")
    )
    # label smoothing = the smoothed dense target; unnormalised targets scale linearly
    dense = 0.25 / 5 + 0.75 * one_hot
    torch.testing.assert_close(
        squared_hinge_loss(x, t, label_smoothing=0.25), squared_hinge_loss(x, dense)
    )
    torch.testing.assert_close(
        squared_hinge_loss(x, 2 * p, reduction="none"),
        2 * squared_hinge_loss(x, p, reduction="none"),
    )
    # large logits in float32: the probability path sums weighted terms, it does not
    # cancel them, so it keeps the index path's accuracy
    big = (x * 1e3).float().requires_grad_()
    soft = squared_hinge_loss(big, one_hot.float(), reduction="none")
    torch.testing.assert_close(soft, squared_hinge_loss(big, t, reduction="none"))
    grads = [torch.autograd.grad(squared_hinge_loss(big, y), big)[0] for y in (one_hot.float(), t)]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("kind", ["index", "probs", "smoothing"])
def test_gradcheck(kind):
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    if kind == "probs":
        t = torch.softmax(torch.randn(3, 4, 2, generator=gen, dtype=torch.float64), 1)
    else:
        t = torch.randint(0, 4, (3, 2), generator=gen)
        t[2, 1] = -100
    smoothing = 0.2 if kind == "smoothing" else 0.0
    assert torch.autograd.gradcheck(
        lambda z: squared_hinge_loss(z, t, reduction="none", label_smoothing=smoothing, margin=0.8),
        (x,),
    )


def test_class_dim_one_with_extra_dims():
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 4, (2, 3), generator=gen)
    flat = squared_hinge_loss(x.movedim(1, -1).reshape(-1, 4), t.reshape(-1), reduction="none")
    torch.testing.assert_close(squared_hinge_loss(x, t, reduction="none"), flat.view(2, 3))


def test_ignore_index_and_empty_batch():
    x, t = case()
    t[[0, 5]] = 3
    t[[1, 2]] = -1
    per = squared_hinge_loss(x, t, reduction="none", ignore_index=-1)
    assert per[1] == 0 and per[2] == 0
    torch.testing.assert_close(
        squared_hinge_loss(x, t, ignore_index=-1), per[torch.tensor([0, 3, 4, 5])].mean()
    )
    x.requires_grad_()
    squared_hinge_loss(x, t, ignore_index=-1).backward()
    assert (x.grad[[1, 2]] == 0).all() and (x.grad[[0, 3]] != 0).any()
    x.grad = None
    loss = squared_hinge_loss(x, torch.full((6,), -100))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    empty = torch.randn(0, 4, requires_grad=True)
    loss = squared_hinge_loss(empty, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 4)


def test_extreme_and_impossible_logits():
    x, t = case(n=8, c=7, dtype=torch.float32)
    x = (x.sign() * 1e4).requires_grad_()
    loss = squared_hinge_loss(x, t) + squared_hinge_loss(x, t, label_smoothing=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # -inf for a non-target class: that class is out of the way, cost 0 and gradient 0
    y = torch.tensor([[-math.inf, 2.0, -3.0]], requires_grad=True)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    for target in (torch.tensor([1]), one_hot):
        y.grad = None
        loss = squared_hinge_loss(y, target)
        loss.backward()
        assert loss.item() == 0.0 and (y.grad == 0).all()
    # ... and for the target class it costs infinitely much
    assert squared_hinge_loss(y.detach(), torch.tensor([0])).item() == math.inf


def test_module():
    x, t = case()
    module = SquaredHingeLoss(0.5, reduction="sum", label_smoothing=0.1)
    assert torch.equal(
        module(x, t), squared_hinge_loss(x, t, margin=0.5, reduction="sum", label_smoothing=0.1)
    )
    assert "margin=0.5, reduction='sum'" in repr(module)


@pytest.mark.parametrize(
    "kwargs, target, error, match",
    [
        ({"margin": -1.0}, None, ValueError, r"margin must be in \[0, inf\]"),
        ({"margin": "1"}, None, TypeError, "margin must be a real number"),
        ({"reduction": "avg"}, None, ValueError, "reduction must be one of"),
        ({"label_smoothing": 1.5}, None, ValueError, "label_smoothing must be in"),
        ({}, torch.tensor([0, 1, 4]), ValueError, r"class indices in \[0, 3\]"),
        ({}, torch.tensor([0, 1]), ValueError, r"target must have shape \(3,\)"),
        ({}, torch.tensor([0.0, 1.0, 2.0]), TypeError, "target must hold class indices"),
        ({}, -torch.ones(3, 4), ValueError, "target must have all values in"),
    ],
)
def test_errors(kwargs, target, error, match):
    x = torch.randn(3, 4, generator=gen)
    target = torch.tensor([0, 1, 2]) if target is None else target
    with pytest.raises(error, match=match):
        squared_hinge_loss(x, target, **kwargs)
    with pytest.raises(TypeError, match="logits must be a floating"):
        squared_hinge_loss(torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]))


def test_runs_under_torch_compile():
    x, t = case(dtype=torch.float32)
    x.requires_grad_()
    compiled = torch.compile(lambda z, y: squared_hinge_loss(z, y, label_smoothing=0.1))(x, t)
    (grad,) = torch.autograd.grad(compiled, x)
    eager = squared_hinge_loss(x, t, label_smoothing=0.1)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad, torch.autograd.grad(eager, x)[0])
