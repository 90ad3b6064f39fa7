import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.calibration.correctness import (
    CorrectnessAwareCalibrator,
    CorrectnessAwareLoss,
    correctness_aware_features,
    correctness_aware_loss,
)
from tests.helpers import HALF_DTYPES, np64
from tests.reference import correctness_ref as ref


def case(n=12, c=5, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=dtype) * scale
    t = torch.randint(0, c, (n,), generator=g)
    t[:3] = x[:3].argmax(1)  # at least three correct rows
    t[3] = (x[3].argmax() + 1) % c  # and one wrong
    return x, t


# ---------------------------------------------------------------- the loss


def test_matches_official_formula():
    x, t = case()
    out = correctness_aware_loss(x, t)
    assert math.isclose(out.item(), ref.ca_loss_official(np64(x), t.numpy()), rel_tol=1e-12)


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_ignore_index(balanced, reduction):
    x, t = case(n=15, seed=1)
    t[5] = -100
    kept = (t != -100).numpy()
    losses, correct = ref.ca_terms(np64(x)[kept], t.numpy()[kept])
    w = ref.ca_weights(correct) if balanced else np.ones_like(losses)
    per = np.zeros(15)
    per[kept] = w * losses
    out = correctness_aware_loss(x, t, balanced=balanced, reduction=reduction)
    module = CorrectnessAwareLoss(balanced=balanced, reduction=reduction)(x, t)
    torch.testing.assert_close(out, module, rtol=0, atol=0)
    if reduction == "none":
        np.testing.assert_allclose(np64(out), per, rtol=1e-12, atol=1e-15)
    elif reduction == "sum":
        assert math.isclose(out.item(), per.sum(), rel_tol=1e-12)
    else:
        assert math.isclose(out.item(), per.sum() / w.sum(), rel_tol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 20), c=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_balanced_is_the_mean_of_the_two_group_means(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, c, (n,), generator=g)
    losses, correct = ref.ca_terms(np64(x), t.numpy())
    out = correctness_aware_loss(x, t).item()
    assert 0.0 <= out <= 1.0
    if 0 < correct.sum() < n:
        halves = 0.5 * (losses[correct == 1].mean() + losses[correct == 0].mean())
        assert math.isclose(out, halves, rel_tol=1e-12, abs_tol=1e-15)
    else:  # one group only: every sample weighs 1 (the official code gives NaN)
        assert math.isnan(ref.ca_loss_official(np64(x), t.numpy()))
        assert math.isclose(out, losses.mean(), rel_tol=1e-12, abs_tol=1e-15)


def test_masked_classes_and_dead_rows():
    x, t = case(n=8, c=6, seed=2)
    masked = x.clone()
    masked[:, 5] = float("-inf")
    t = t.clamp_max(4)
    sliced = x[:, :5].clone().requires_grad_()
    full = masked.clone().requires_grad_()
    a = correctness_aware_loss(full, t)
    b = correctness_aware_loss(sliced, t)
    (ga,) = torch.autograd.grad(a, full)
    (gb,) = torch.autograd.grad(b, sliced)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ga[:, :5], gb, rtol=1e-12, atol=1e-15)
    assert (ga[:, 5] == 0).all()
    # a row with every class masked is ignored, with zero gradient and no NaN
    dead = masked.clone()
    dead[0] = float("-inf")
    dead.requires_grad_()
    out = correctness_aware_loss(dead, t, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), dead)
    assert out[0] == 0 and (g[0] == 0).all() and torch.isfinite(g).all()
    ref_rest = correctness_aware_loss(masked[1:], t[1:])
    torch.testing.assert_close(correctness_aware_loss(dead.detach(), t), ref_rest)


def test_no_kept_sample_and_extremes():
    x, t = case(n=4)
    assert correctness_aware_loss(x, torch.full((4,), -100)).item() == 0.0
    assert correctness_aware_loss(x, torch.full((4,), -100), reduction="sum").item() == 0.0
    # +-1e4 logits: confidences are exactly 1; right and sure costs 0, wrong and sure
    # costs 1, times its weight acc = 2/3
    z = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [1e4, -1e4]], requires_grad=True)
    t = torch.tensor([0, 0, 0])
    out = correctness_aware_loss(z, t, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), z)
    np.testing.assert_allclose(np64(out), [0.0, 2.0 / 3.0, 0.0], atol=1e-7)
    assert torch.isfinite(g).all()


def test_gradcheck():
    x, t = case(n=7, c=4, seed=3, scale=1.0)
    x.requires_grad_()
    for reduction, balanced in [("mean", True), ("sum", True), ("none", False)]:

        def fn(z, reduction=reduction, balanced=balanced):
            return correctness_aware_loss(z, t, reduction=reduction, balanced=balanced)

        assert torch.autograd.gradcheck(fn, (x,))


def test_spatial_and_single_sample_shapes():
    x, t = case(n=12, c=5, seed=4)
    spatial = x.reshape(3, 4, 5).permute(0, 2, 1)  # (N=3, C=5, d=4)
    ts = t.reshape(3, 4)
    torch.testing.assert_close(correctness_aware_loss(spatial, ts), correctness_aware_loss(x, t))
    per = correctness_aware_loss(spatial, ts, reduction="none")
    assert per.shape == (3, 4)
    one = correctness_aware_loss(x[0], t[0], balanced=False)
    assert one.shape == () and math.isclose(
        one.item(), ref.ca_terms(np64(x[:1]), t[:1].numpy())[0][0], rel_tol=1e-12
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float32,))
def test_low_precision(dtype):
    x, t = case(n=40, c=7, seed=5)
    low = x.to(dtype)
    out = correctness_aware_loss(low, t)
    assert out.dtype == dtype
    exact = ref.ca_loss_official(np64(low), t.numpy())
    # the float32 computation of the rounded input, then one rounding to the dtype
    assert abs(out.double().item() - exact) <= 4 * torch.finfo(dtype).eps * max(exact, 1e-3) + 1e-6


def test_loss_errors():
    x, t = case()
    with pytest.raises(ValueError, match=r"logits must have all values in \[-inf, inf\), got nan"):
        correctness_aware_loss(x.masked_fill(x > 1, float("nan")), t)
    with pytest.raises(ValueError, match=r"logits must have all values in \[-inf, inf\), got inf"):
        correctness_aware_loss(x.masked_fill(x > 1, float("inf")), t)
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        correctness_aware_loss(t, t)
    with pytest.raises(TypeError, match="target must hold class indices"):
        correctness_aware_loss(x, x)
    with pytest.raises(ValueError, match=r"target must have shape \(12,\)"):
        correctness_aware_loss(x, t[:5])
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\]"):
        correctness_aware_loss(x, torch.full((12,), 7))
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none'"):
        correctness_aware_loss(x, t, reduction="avg")
    with pytest.raises(TypeError, match="balanced must be a bool"):
        correctness_aware_loss(x, t, balanced=1)
    with pytest.raises(ValueError, match="at least one class"):
        correctness_aware_loss(torch.empty(3, 0), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="reduction must be one of|balanced must be a bool"):
        CorrectnessAwareLoss(balanced="yes")


# ------------------------------------------------------------ the features


def views_case(n=9, v=4, c=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, c, generator=g, dtype=dtype) * 2


@pytest.mark.parametrize(("v", "k"), [(4, 4), (2, 1), (3, 7)])
def test_features_match_official(v, k):
    views = views_case(v=v)
    feats = correctness_aware_features(views, top_k=k)
    assert feats.shape == (9, (v - 1) * k)
    np.testing.assert_allclose(np64(feats), ref.view_features(np64(views), k), rtol=1e-12)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_features_half_inputs(dtype):
    views = views_case(dtype=torch.float32).to(dtype)
    feats = correctness_aware_features(views)
    assert feats.dtype == torch.float32
    np.testing.assert_allclose(np64(feats), ref.view_features(np64(views), 4), rtol=1e-6, atol=1e-7)


def test_features_errors():
    views = views_case()
    with pytest.raises(ValueError, match=r"view_logits must have shape \(N, V, C\)"):
        correctness_aware_features(views[0])
    with pytest.raises(ValueError, match="at least 2 views"):
        correctness_aware_features(views[:, :1])
    with pytest.raises(ValueError, match="top_k must be at most the number of classes 7, got 8"):
        correctness_aware_features(views, top_k=8)
    with pytest.raises(ValueError, match="top_k must be in"):
        correctness_aware_features(views, top_k=0)
    with pytest.raises(ValueError, match=r"view_logits must have all values in \(-inf, inf\)"):
        correctness_aware_features(views.masked_fill(views > 2, float("-inf")))
    with pytest.raises(
        ValueError, match=r"view_logits must have all values in \(-inf, inf\), got nan"
    ):
        correctness_aware_features(views.masked_fill(views > 2, float("nan")))
    with pytest.raises(TypeError, match="view_logits must be a floating-point tensor"):
        correctness_aware_features(views.long())


# ---------------------------------------------------------- the calibrator


def make_views(n, seed, c=10, v=4, overconfidence=4.0):
    """A miscalibrated model: every view sees the true class with the sample's clarity
    plus independent noise, so views agree on clear samples and disagree on hard ones;
    the logits are scaled up (overconfidence > 1) or down (< 1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    clarity = 4.5 * torch.rand(n, 1, generator=g)
    onehot = torch.nn.functional.one_hot(y, c).to(torch.float32)
    views = [overconfidence * (clarity * onehot + torch.randn(n, c, generator=g)) for _ in range(v)]
    return torch.stack(views, 1), y


def probs(z):
    return torch.softmax(z.double(), -1).numpy()


def fit_and_score(overconfidence, seed):
    train, y_train = make_views(1000, seed, overconfidence=overconfidence)
    test, y_test = make_views(2000, seed + 1, overconfidence=overconfidence)
    # official defaults are lr 1e-4 for 10 epochs of ImageNet-val (50 000 samples, 500
    # Adam steps); with 1 000 samples that would be 10 steps, so train harder here
    cal = CorrectnessAwareCalibrator().fit(train, y_train, lr=5e-2, epochs=20, batch_size=500)
    with torch.no_grad():
        calibrated, temps = cal(test), cal.temperature(test)
    return test, y_test, calibrated, temps


def test_fit_fixes_overconfidence_and_separates_right_from_wrong():
    test, y_test, calibrated, temps = fit_and_score(4.0, 1)
    before = ref.ece_l1(probs(test[:, 0]), y_test.numpy())
    after = ref.ece_l1(probs(calibrated), y_test.numpy())
    assert before > 0.15 and after < 0.5 * before  # held-out ECE, 15 equal-width bins
    assert temps.mean() > 1.5  # over-confident logits are cooled
    # the paper's point: reading the transformed views makes the confidence aware of
    # correctness; its AUROC for telling right from wrong predictions rises well above
    # the raw confidence's (a single temperature barely changes that ranking)
    right = (test[:, 0].argmax(1) == y_test).numpy()
    raw = ref.auroc(probs(test[:, 0]).max(1), right)
    assert ref.auroc(probs(calibrated).max(1), right) > raw + 0.05


def test_fit_fixes_underconfidence():
    test, y_test, calibrated, temps = fit_and_score(0.4, 5)
    before = ref.ece_l1(probs(test[:, 0]), y_test.numpy())
    after = ref.ece_l1(probs(calibrated), y_test.numpy())
    assert before > 0.15 and after < 0.5 * before
    assert temps.mean() < 0.7  # under-confident logits are sharpened


def test_forward_matches_reference_network():
    views = views_case(n=20, seed=6, dtype=torch.float32)
    target = torch.randint(0, 7, (20,), generator=torch.Generator().manual_seed(0))
    cal = CorrectnessAwareCalibrator(t_min=0.5, t_max=3.0).fit(
        views, target, lr=0.1, epochs=5, batch_size=7
    )
    w1, b1 = np64(cal.embed.weight), np64(cal.embed.bias)
    w2, b2 = np64(cal.head.weight), np64(cal.head.bias)
    feats = ref.view_features(np64(views), 4)
    temps = ref.temperature(feats, w1, b1, w2, b2, 0.5, 3.0)
    with torch.no_grad():
        np.testing.assert_allclose(np64(cal.temperature(views)), temps, rtol=1e-5)
        out = cal(views)
    np.testing.assert_allclose(np64(out), np64(views[:, 0]) / temps[:, None], rtol=1e-5)
    assert (out.argmax(1) == views[:, 0].argmax(1)).all()
    assert ((temps >= 0.5) & (temps <= 3.0)).all()


def test_starts_at_identity_and_unfitted_raises():
    views = views_case(n=6)
    cal = CorrectnessAwareCalibrator()
    with pytest.raises(RuntimeError, match="not fitted: call fit"):
        cal(views)
    with pytest.raises(RuntimeError, match="not fitted"):
        cal.temperature(views)
    cal.fit(views, torch.zeros(6, dtype=torch.long), epochs=0)  # no step: T = 1
    torch.testing.assert_close(cal(views), views[:, 0].float().double())


def test_state_dict_round_trip_keeps_fitted():
    views = views_case(n=30, seed=7, dtype=torch.float32)
    target = torch.randint(0, 7, (30,), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # the hidden layer's initialisation
    cal = CorrectnessAwareCalibrator().fit(views, target, lr=0.05, epochs=3)
    fresh = CorrectnessAwareCalibrator()
    fresh.load_state_dict(cal.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(views), cal(views))
    # the same initialisation and seed give the same fit
    torch.manual_seed(0)
    again = CorrectnessAwareCalibrator().fit(views, target, lr=0.05, epochs=3)
    torch.testing.assert_close(again.head.weight, cal.head.weight)


@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float64,))
def test_calibrator_dtypes(dtype):
    views = views_case(n=16, seed=8, dtype=torch.float32)
    target = torch.randint(0, 7, (16,), generator=torch.Generator().manual_seed(2))
    cal = CorrectnessAwareCalibrator().fit(views, target, lr=0.05, epochs=2)
    with torch.no_grad():
        out = cal(views.to(dtype))
        exact = cal(views.to(dtype).float())
    assert out.dtype == dtype and out.shape == (16, 7)
    tol = 4 * torch.finfo(dtype).eps if dtype in HALF_DTYPES else 1e-6
    assert ((out.double() - exact.double()).abs() <= tol * exact.double().abs() + tol).all()


def test_calibrator_errors():
    views = views_case(n=6)
    target = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="num_views must be in"):
        CorrectnessAwareCalibrator(num_views=1)
    with pytest.raises(ValueError, match="t_min must be in"):
        CorrectnessAwareCalibrator(t_min=0.0)
    with pytest.raises(ValueError, match=r"t_max must be in \(0.5, inf\]"):
        CorrectnessAwareCalibrator(t_min=0.5, t_max=0.2)
    cal = CorrectnessAwareCalibrator(num_views=3)
    with pytest.raises(ValueError, match="num_views=3 views on axis 1, got 4"):
        cal.fit(views, target)
    cal = CorrectnessAwareCalibrator()
    with pytest.raises(ValueError, match=r"target must have shape \(6,\)"):
        cal.fit(views, target[:3])
    with pytest.raises(ValueError, match="lr must be in"):
        cal.fit(views, target, lr=0.0)
    with pytest.raises(ValueError, match="batch_size must be in"):
        cal.fit(views, target, batch_size=0)
    with pytest.raises(TypeError, match="epochs must be an int"):
        cal.fit(views, target, epochs=1.5)
