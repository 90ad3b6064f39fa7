import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softmaxkit.losses import StableMaxCrossEntropyLoss, stablemax_cross_entropy
from tests.helpers import HALF_DTYPES, np64
from tests.reference import maps_ref as ref

gen = torch.Generator().manual_seed(3)


def case(n=6, c=5, scale=3.0, dtype=torch.float64):
    x = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


def test_matches_reference_for_every_reduction():
    x, t = case()
    expected = ref.stablemax_cross_entropy(np64(x), t.numpy())
    torch.testing.assert_close(
        stablemax_cross_entropy(x, t, reduction="none"), torch.from_numpy(expected)
    )
    assert math.isclose(
        stablemax_cross_entropy(x, t, reduction="sum").item(), expected.sum(), rel_tol=1e-12
    )
    assert math.isclose(stablemax_cross_entropy(x, t).item(), expected.mean(), rel_tol=1e-12)


def expected_soft(x, probs):
    """sum_k t_k l(x, k) from the index reference."""
    n, c = probs.shape
    per_class = np.stack(
        [ref.stablemax_cross_entropy(np64(x), np.full(n, k)) for k in range(c)], axis=1
    )
    return (np64(probs) * per_class).sum(1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets_and_label_smoothing(reduction):
    x, t = case()
    probs = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), -1)
    per = expected_soft(x, probs)
    expected = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    got = stablemax_cross_entropy(x, probs, reduction=reduction)
    np.testing.assert_allclose(np64(got), expected, rtol=1e-12)
    # label smoothing == the smoothed probability target; ignored rows still give 0
    eps = 0.2
    t[1] = -100
    smooth = F.one_hot(t.clamp(min=0), 5).double() * (1 - eps) + eps / 5
    per = expected_soft(x, smooth)
    per[1] = 0.0
    got = stablemax_cross_entropy(x, t, reduction="none", label_smoothing=eps)
    np.testing.assert_allclose(np64(got), per, rtol=1e-12)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: stablemax_cross_entropy(z, probs, reduction=reduction, label_smoothing=0.1),
        (x,),
    )
    assert torch.autograd.gradcheck(
        lambda z: stablemax_cross_entropy(z, t, reduction=reduction, label_smoothing=eps), (x,)
    )


def test_soft_target_with_minus_inf_logit_is_finite():
    x = torch.tensor([[-math.inf, 0.5, 2.0]], requires_grad=True)
    probs = torch.tensor([[0.0, 0.3, 0.7]])
    loss = stablemax_cross_entropy(x, probs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and x.grad[0, 0] == 0


def test_class_dim_one_with_extra_dims():
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 4, (2, 3), generator=gen)
    flat = stablemax_cross_entropy(x.movedim(1, -1).reshape(-1, 4), t.reshape(-1), reduction="none")
    torch.testing.assert_close(stablemax_cross_entropy(x, t, reduction="none"), flat.view(2, 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(reduction):
    x, t = case()
    t[2] = -100
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: stablemax_cross_entropy(z, t, reduction=reduction), (x,)
    )
    x3 = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t3 = torch.randint(0, 4, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(
        lambda z: stablemax_cross_entropy(z, t3, reduction=reduction), (x3,)
    )


def test_ignore_index():
    x, t = case()
    t[[1, 4]] = 7
    per = stablemax_cross_entropy(x, t, reduction="none", ignore_index=7)
    assert per[1] == 0 and per[4] == 0
    kept = torch.tensor([0, 2, 3, 5])
    torch.testing.assert_close(stablemax_cross_entropy(x, t, ignore_index=7), per[kept].mean())
    x.requires_grad_()
    stablemax_cross_entropy(x, t, ignore_index=7).backward()
    assert (x.grad[[1, 4]] == 0).all()
    all_ignored = torch.full((6,), -100)
    assert stablemax_cross_entropy(x, all_ignored).item() == 0.0


def test_official_nan_traps_are_fixed():
    # -inf logit: loss 0.4055 (as the official forward) and finite gradients (theirs: NaN)
    x = torch.tensor([[-math.inf, 0.5, 2.0]], requires_grad=True)
    loss = stablemax_cross_entropy(x, torch.tensor([2]))
    loss.backward()
    assert math.isclose(loss.item(), 0.4054651, rel_tol=1e-6)
    assert torch.isfinite(x.grad).all() and x.grad[0, 0] == 0
    # a float32 logit of exactly 1.0
    x = torch.tensor([[1.0, -1.0, 0.0]], requires_grad=True)
    stablemax_cross_entropy(x, torch.tensor([0])).backward()
    assert torch.isfinite(x.grad).all()


def test_dtype_argument_reproduces_official_float64():
    x, t = case(dtype=torch.float32)
    out = stablemax_cross_entropy(x, t, dtype=torch.float64)
    assert out.dtype == torch.float64
    assert math.isclose(
        out.item(), ref.stablemax_cross_entropy(np64(x), t.numpy()).mean(), rel_tol=1e-12
    )
    assert stablemax_cross_entropy(x, t).dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(dtype):
    x, t = case(dtype=torch.float32)
    x = x.to(dtype).requires_grad_()
    loss = stablemax_cross_entropy(x, t)
    assert loss.dtype == dtype
    torch.testing.assert_close(
        loss.float(), stablemax_cross_entropy(x.detach().float(), t), atol=1e-2, rtol=1e-2
    )
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_extreme_logits_finite():
    x, t = case(scale=1e4, dtype=torch.float32)
    x.requires_grad_()
    loss = stablemax_cross_entropy(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_gradient_survives_where_softmax_cross_entropy_collapses():
    # Prieto et al.: once the correct logit leads by enough, float32 softmax CE has an
    # exactly zero gradient (Softmax Collapse); StableMax CE keeps learning
    x = torch.zeros(4, 10)
    t = torch.arange(4)
    x[torch.arange(4), t] = 120.0
    x.requires_grad_()
    F.cross_entropy(x, t).backward()
    assert (x.grad == 0).all()
    x.grad = None
    stablemax_cross_entropy(x, t).backward()
    assert (x.grad != 0).all()


def test_empty_batch_and_module():
    assert (
        stablemax_cross_entropy(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0
    )
    x, t = case()
    assert torch.equal(
        StableMaxCrossEntropyLoss(reduction="sum")(x, t),
        stablemax_cross_entropy(x, t, reduction="sum"),
    )
    assert "reduction='sum'" in repr(StableMaxCrossEntropyLoss(reduction="sum"))


@pytest.mark.parametrize(
    "logits, target, kwargs, error, match",
    [
        (
            torch.randn(3, 4),
            torch.tensor([0, 1, 4]),
            {},
            ValueError,
            r"target must hold class indices in \[0, 3\]",
        ),
        (torch.randn(3, 4), torch.tensor([0, -1, 2]), {}, ValueError, "got -1"),
        (
            torch.randn(3, 4),
            torch.tensor([0.0, 1.0, 2.0]),
            {},
            TypeError,
            r"target must hold class indices \(an integer dtype\), got torch.float32",
        ),
        (
            torch.randn(3, 4),
            torch.tensor([0, 1, 2]),
            {"label_smoothing": 1.5},
            ValueError,
            r"label_smoothing must be in \[0, 1\], got 1.5",
        ),
        (
            torch.randn(3, 4),
            -torch.rand(3, 4),
            {},
            ValueError,
            "target must have all values in",
        ),
        (torch.randn(3, 4), torch.tensor([0, 1]), {}, ValueError, r"target must have shape \(3,\)"),
        (torch.randn(4), torch.tensor(0), {}, ValueError, "logits must have shape"),
        (
            torch.arange(12).view(3, 4),
            torch.tensor([0, 1, 2]),
            {},
            TypeError,
            "logits must be a floating-point",
        ),
        (
            torch.randn(3, 4),
            torch.tensor([0, 1, 2]),
            {"reduction": "avg"},
            ValueError,
            "reduction must be one of",
        ),
        (
            torch.randn(3, 4),
            torch.tensor([0, 1, 2]),
            {"dtype": torch.int32},
            ValueError,
            "dtype must be one of",
        ),
    ],
)
def test_errors(logits, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        stablemax_cross_entropy(logits, target, **kwargs)
