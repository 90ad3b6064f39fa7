import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.ldr import ALDRKLLoss, LDRKLLoss, aldr_kl_loss, ldr_kl_loss
from tests.helpers import HALF_DTYPES, np64
from tests.reference import ldr_ref as ref

NORMS = ["softplus_mean", "l1_mean", None]
gen = torch.Generator().manual_seed(5)


def case(n=6, c=5, scale=3.0, dtype=torch.float64):
    x = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


def soft(n=6, c=5, dtype=torch.float64):
    return torch.softmax(torch.randn(n, c, generator=gen, dtype=dtype) * 2, 1)


def official_ldr(y_pred, y_true, threshold, lam):
    """A torch transcription of LDRLoss_V1.forward (one-hot float labels, batch mean)."""
    y_pred = F.softplus(y_pred)
    y_pred = y_pred / y_pred.mean(1, keepdim=True)
    diff = threshold * (1 - y_true) + y_pred - (y_pred * y_true).sum(1, keepdim=True)
    diff = diff / lam
    top = diff.max(1, keepdim=True).values.detach()
    return (lam * ((diff - top).exp().mean(1, keepdim=True).log() + top)).mean()


def official_aldr(y_pred, y_true, lam_buf, ids, threshold, lam0, alpha, softplus=False):
    """A torch transcription of ALDRLoss_V1.forward (without .cuda()); updates lam_buf."""
    k = y_pred.shape[1]
    if softplus:
        y_pred = F.softplus(y_pred)
    y_pred = y_pred / (y_pred.abs().sum(1, keepdim=True) / k)
    p = torch.softmax(y_pred / lam_buf[ids], 1) + 1e-5
    p = p / p.sum(1, keepdim=True)
    kl = (p * torch.log(k * p)).sum(1, keepdim=True)
    log_k = math.log(k)
    lam_buf[ids] = (lam0 - lam0 * kl / (alpha * log_k)).detach()
    lam = lam_buf[ids]
    extra = -0.5 * alpha * log_k / lam0 * (lam - lam0) ** 2
    diff = threshold * (1 - y_true) + y_pred - (y_pred * y_true).sum(1, keepdim=True)
    diff = diff / lam
    top = diff.max(1, keepdim=True).values.detach()
    return (lam * ((diff - top).exp().mean(1, keepdim=True).log() + top) + extra).mean()


# --- values against the float64 reference ----------------------------------------------------


@pytest.mark.parametrize("normalize", NORMS)
@pytest.mark.parametrize("soft_target", [False, True])
@pytest.mark.parametrize("lam, margin", [(10.0, 0.1), (1.0, 2.0), (0.2, 0.5)])
def test_ldr_matches_reference_for_every_reduction(normalize, soft_target, lam, margin):
    x, t = case()
    if soft_target:
        t = soft()
    kw = dict(lam=lam, margin=margin, normalize=normalize)
    expected = ref.ldr_kl(np64(x), np64(t) if soft_target else t.numpy(), lam, margin, normalize)
    got = ldr_kl_loss(x, t, reduction="none", **kw)
    np.testing.assert_allclose(np64(got), expected, rtol=1e-12, atol=1e-12)
    assert math.isclose(
        ldr_kl_loss(x, t, reduction="sum", **kw).item(), expected.sum(), rel_tol=1e-12
    )
    assert math.isclose(ldr_kl_loss(x, t, **kw).item(), expected.mean(), rel_tol=1e-12)


@pytest.mark.parametrize("normalize", NORMS)
def test_ldr_is_the_dro_maximum(normalize):
    # the closed form equals max_p <p, m> - lam KL(p || 1/K) evaluated at its maximiser
    x, t = case()
    dual = ref.ldr_kl(np64(x), t.numpy(), 0.7, 0.3, normalize, dual=True)
    got = ldr_kl_loss(x, t, lam=0.7, margin=0.3, normalize=normalize, reduction="none")
    np.testing.assert_allclose(np64(got), dual, rtol=1e-10, atol=1e-12)


def test_ldr_matches_official_code_value_and_gradient():
    x, t = case(8, 7)
    x.requires_grad_()
    ours = ldr_kl_loss(x, t, lam=1.5, margin=2.0)
    theirs = official_ldr(x, F.one_hot(t, 7).double(), 2.0, 1.5)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0])


@pytest.mark.parametrize("normalize", NORMS)
@pytest.mark.parametrize("soft_target", [False, True])
def test_aldr_matches_reference(normalize, soft_target):
    x, t = case()
    if soft_target:
        t = soft()
    lam_prev = torch.rand(6, generator=gen, dtype=torch.float64) * 8 + 0.5
    losses, lam_new = aldr_kl_loss(
        x, t, lam_prev, lam0=3.0, alpha=1.5, margin=0.4, normalize=normalize, reduction="none"
    )
    tgt = np64(t) if soft_target else t.numpy()
    exp_losses, exp_lam = ref.aldr_kl(np64(x), tgt, np64(lam_prev), 3.0, 1.5, 0.4, normalize)
    np.testing.assert_allclose(np64(losses), exp_losses, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(np64(lam_new), exp_lam, rtol=1e-11)
    loss, _ = aldr_kl_loss(x, t, lam_prev, lam0=3.0, alpha=1.5, margin=0.4, normalize=normalize)
    assert math.isclose(loss.item(), exp_losses.mean(), rel_tol=1e-11)
    total, _ = aldr_kl_loss(
        x, t, lam_prev, lam0=3.0, alpha=1.5, margin=0.4, normalize=normalize, reduction="sum"
    )
    assert math.isclose(total.item(), exp_losses.sum(), rel_tol=1e-11)


@pytest.mark.parametrize("softplus", [False, True])
def test_aldr_matches_official_code_over_two_steps(softplus):
    # the official module called twice on the same ids: loss, gradient and lambda state
    x, t = case(8, 6)
    ids = torch.tensor([3, 0, 9, 4, 1, 7, 2, 5])
    official_buf = torch.full((10, 1), 10.0, dtype=torch.float64)
    crit = ALDRKLLoss(10, normalize="softplus_mean" if softplus else "l1_mean").double()
    for step in range(2):
        z = (x * (1 + step)).requires_grad_()
        ours = crit(z, t, ids)
        theirs = official_aldr(
            z, F.one_hot(t, 6).double(), official_buf, ids, 0.1, 10.0, 2.0, softplus
        )
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(
            torch.autograd.grad(ours, z)[0], torch.autograd.grad(theirs, z)[0]
        )
        torch.testing.assert_close(crit.lam, official_buf.squeeze(1))


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", NORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ldr_gradcheck(normalize, reduction):
    x, t = case()
    t[2] = -100
    x.requires_grad_()
    kw = dict(lam=0.8, margin=0.5, normalize=normalize, reduction=reduction)
    assert torch.autograd.gradcheck(lambda z: ldr_kl_loss(z, t, **kw), (x,))


@pytest.mark.parametrize("normalize", NORMS)
def test_ldr_gradcheck_soft_targets_smoothing_and_extra_dims(normalize):
    x, t = case()
    x.requires_grad_()
    kw = dict(lam=0.8, margin=0.5, normalize=normalize)
    probs = soft()
    assert torch.autograd.gradcheck(lambda z: ldr_kl_loss(z, probs, **kw), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda z: ldr_kl_loss(z, t, label_smoothing=0.2, **kw), (x,), fast_mode=True
    )
    x3 = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t3 = torch.randint(0, 4, (2, 3), generator=gen)
    t3[1, 0] = -100
    assert torch.autograd.gradcheck(lambda z: ldr_kl_loss(z, t3, **kw), (x3,), fast_mode=True)


@pytest.mark.parametrize("normalize", NORMS)
def test_aldr_gradient_is_ldr_gradient_at_the_detached_lambda(normalize):
    # lambda is detached: the gradient is LDR-KL's with each row's new lambda held fixed
    x, t = case()
    x.requires_grad_()
    lam_prev = torch.rand(6, generator=gen, dtype=torch.float64) * 5 + 1
    loss, lam = aldr_kl_loss(x, t, lam_prev, margin=0.3, normalize=normalize, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    for i in range(6):
        row = x[i : i + 1].detach().requires_grad_()
        ldr_kl_loss(
            row, t[i : i + 1], lam=lam[i].item(), margin=0.3, normalize=normalize
        ).backward()
        torch.testing.assert_close(grad[i], row.grad[0])


# --- the paper's properties --------------------------------------------------------------------


@pytest.mark.parametrize("normalize", NORMS)
def test_large_lambda_tends_to_the_uniform_average_small_to_the_max(normalize):
    x, t = case()
    m = np.stack(
        [ref.margins(np64(x)[i], ref.one_hot(int(t[i]), 5), 0.4, normalize) for i in range(6)]
    )
    big = ldr_kl_loss(x, t, lam=1e7, margin=0.4, normalize=normalize, reduction="none")
    small = ldr_kl_loss(x, t, lam=1e-4, margin=0.4, normalize=normalize, reduction="none")
    np.testing.assert_allclose(np64(big), m.mean(1), atol=1e-5)
    np.testing.assert_allclose(np64(small), m.max(1), atol=1e-3)  # within lam log K


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e3])
def test_l1_mean_normalisation_is_invariant_to_positive_rescaling(scale):
    x, t = case()
    base = ldr_kl_loss(x, t, normalize="l1_mean", reduction="none")
    torch.testing.assert_close(
        ldr_kl_loss(x * scale, t, normalize="l1_mean", reduction="none"), base
    )
    lam_prev = torch.full((6,), 4.0, dtype=torch.float64)
    a, lam_a = aldr_kl_loss(x, t, lam_prev)
    b, lam_b = aldr_kl_loss(x * scale, t, lam_prev)
    torch.testing.assert_close((a, lam_a), (b, lam_b))


def test_softplus_mean_is_scale_invariant_only_asymptotically():
    # softplus is not homogeneous: the official LDR normalisation depends on the logit scale,
    # and for large scales tends to the l1-mean normalisation of relu(z)
    x, t = case()
    kw = dict(normalize="softplus_mean", reduction="none")
    assert not torch.allclose(ldr_kl_loss(x, t, **kw), ldr_kl_loss(2 * x, t, **kw))
    limit = ldr_kl_loss(x.clamp(min=0), t, normalize="l1_mean", reduction="none")
    torch.testing.assert_close(ldr_kl_loss(1e6 * x, t, **kw), limit, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(0.01, 50.0),
    lam=st.floats(0.05, 20.0),
    margin=st.floats(0.0, 3.0),
    normalize=st.sampled_from(NORMS),
    seed=st.integers(0, 2**16),
)
def test_between_mean_and_max_margin_and_decreasing_in_lambda(scale, lam, margin, normalize, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, 6, (4,), generator=g)
    m = np.stack(
        [ref.margins(np64(x)[i], ref.one_hot(int(t[i]), 6), margin, normalize) for i in range(4)]
    )
    kw = dict(margin=margin, normalize=normalize, reduction="none")
    loss = np64(ldr_kl_loss(x, t, lam=lam, **kw))
    assert (loss >= m.mean(1) - 1e-9).all() and (loss <= m.max(1) + 1e-9).all()
    assert (np64(ldr_kl_loss(x, t, lam=2 * lam, **kw)) <= loss + 1e-9).all()


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(0.0, 1e4),
    lam_prev=st.floats(0.01, 100.0),
    alpha=st.floats(1.01, 10.0),
    num_classes=st.integers(1, 50),
    normalize=st.sampled_from(NORMS),
    seed=st.integers(0, 2**16),
)
def test_aldr_lambda_stays_above_its_bound(scale, lam_prev, alpha, num_classes, normalize, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, num_classes, generator=g) * scale
    t = torch.randint(0, num_classes, (5,), generator=g)
    loss, lam = aldr_kl_loss(x, t, lam_prev, lam0=2.0, alpha=alpha, normalize=normalize)
    assert (lam >= 2.0 * (1 - 1 / alpha) - 1e-5).all() and (lam <= 2.0 + 1e-5).all()
    assert torch.isfinite(loss)


def test_alpha_one_would_let_lambda_reach_zero():
    # near alpha = 1 a confident prediction drives lambda to lam0 (1 - KL / (alpha log K)) ~ 0;
    # alpha = 1 itself (the class default) is rejected
    x = torch.tensor([[200.0, 0.0, 0.0, 0.0]])
    _, lam = aldr_kl_loss(x, torch.tensor([0]), 0.01, lam0=1.0, alpha=1.0001)
    assert 0 < lam.item() < 1e-3
    with pytest.raises(ValueError, match=r"alpha must be in \(1, inf\]"):
        aldr_kl_loss(x, torch.tensor([0]), 0.01, lam0=1.0, alpha=1.0)


def test_module_state_update_and_call_order():
    x, t = case(4, 5)
    crit = ALDRKLLoss(20, lam0=5.0, alpha=3.0, margin=0.2).double()
    ids = torch.tensor([11, 2, 19, 0])
    first = crit(x, t, ids)
    l1, lam1 = ref.aldr_kl(np64(x), t.numpy(), np.full(4, 5.0), 5.0, 3.0, 0.2, "l1_mean")
    assert math.isclose(first.item(), l1.mean(), rel_tol=1e-12)
    np.testing.assert_allclose(np64(crit.lam[ids]), lam1, rtol=1e-12)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[ids] = False
    assert (crit.lam[untouched] == 5.0).all()
    # the second call on the same ids starts from the stored lambdas: a different result
    second = crit(x, t, ids)
    l2, lam2 = ref.aldr_kl(np64(x), t.numpy(), lam1, 5.0, 3.0, 0.2, "l1_mean")
    assert math.isclose(second.item(), l2.mean(), rel_tol=1e-12) and second != first
    np.testing.assert_allclose(np64(crit.lam[ids]), lam2, rtol=1e-12)
    # eval mode reads the state without writing it
    crit.eval()
    before = crit.lam.clone()
    crit(x, t, ids)
    assert torch.equal(crit.lam, before)
    crit.train()
    crit.reset()
    assert (crit.lam == 5.0).all()


def test_module_ignored_positions_keep_their_lambda():
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 5, (2, 3), generator=gen)
    t[1, 2] = -100
    ids = torch.arange(6).view(2, 3)
    crit = ALDRKLLoss(6).double()
    loss = crit(x, t, ids)
    assert crit.lam[5] == 10.0 and (crit.lam[:5] != 10.0).all()
    flat_x, flat_t = x.movedim(1, -1).reshape(6, 5), t.reshape(6)
    losses, lam = ref.aldr_kl(
        np64(flat_x)[:5], flat_t[:5].numpy(), np.full(5, 10.0), 10.0, 2.0, 0.1, "l1_mean"
    )
    assert math.isclose(loss.item(), losses.mean(), rel_tol=1e-12)
    np.testing.assert_allclose(np64(crit.lam[:5]), lam, rtol=1e-12)


def test_lambda_buffer_follows_dtype_and_device():
    crit = ALDRKLLoss(7, lam0=0.5)
    assert crit.lam.dtype == torch.float32 and "lam" in crit.state_dict()
    crit.to(torch.float64)
    assert crit.lam.dtype == torch.float64
    x = torch.tensor([[3.0, -1.0, 0.5, 0.0], [0.0, 2.0, -2.0, 1.0], [1.0, 1.0, -3.0, 0.2]])
    t = torch.tensor([0, 1, 3])
    crit(x, t, torch.tensor([0, 1, 2]))
    assert crit.lam.dtype == torch.float64 and (crit.lam[:3] < 0.5).all()
    crit.half()
    crit(x, t, torch.tensor([4, 5, 6]))
    assert crit.lam.dtype == torch.float16 and (crit.lam[4:] < 0.5).all()
    assert crit.to("meta").lam.device.type == "meta"


# --- dtypes, shapes, ignore_index, extremes ----------------------------------------------------


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("normalize", NORMS)
def test_half_dtypes(dtype, normalize):
    x, t = case(dtype=torch.float32)
    x = x.to(dtype).requires_grad_()
    loss = ldr_kl_loss(x, t, normalize=normalize, lam=1.0, margin=1.0)
    assert loss.dtype == dtype
    ref32 = ldr_kl_loss(x.detach().float(), t, normalize=normalize, lam=1.0, margin=1.0)
    torch.testing.assert_close(loss.float(), ref32, atol=1e-2, rtol=1e-2)
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    aloss, lam = aldr_kl_loss(x, t, torch.full((6,), 10.0, dtype=dtype), normalize=normalize)
    assert aloss.dtype == dtype and lam.dtype == dtype


def test_ignore_index_and_all_ignored():
    x, t = case()
    t[[1, 4]] = 7
    for fn in (ldr_kl_loss, lambda *a, **k: aldr_kl_loss(*a[:2], 10.0, **k)[0]):
        per = fn(x, t, reduction="none", ignore_index=7)
        assert per[1] == 0 and per[4] == 0
        kept = torch.tensor([0, 2, 3, 5])
        torch.testing.assert_close(fn(x, t, ignore_index=7), per[kept].mean())
        z = x.clone().requires_grad_()
        fn(z, t, ignore_index=7).backward()
        assert (z.grad[[1, 4]] == 0).all() and (z.grad[kept] != 0).any()
        z.grad = None
        loss = fn(z, torch.full((6,), -100))
        loss.backward()
        assert loss.item() == 0.0 and (z.grad == 0).all()
    lam_prev = torch.arange(1.0, 7.0, dtype=torch.float64)
    _, lam = aldr_kl_loss(x, t, lam_prev, ignore_index=7)
    assert lam[1] == 2.0 and lam[4] == 5.0 and (lam[kept] != lam_prev[kept]).all()


def test_class_dim_one_with_extra_dims():
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 4, (2, 3), generator=gen)
    flat_x, flat_t = x.movedim(1, -1).reshape(-1, 4), t.reshape(-1)
    flat = ldr_kl_loss(flat_x, flat_t, reduction="none")
    torch.testing.assert_close(ldr_kl_loss(x, t, reduction="none"), flat.view(2, 3))
    lam_prev = torch.rand(2, 3, generator=gen, dtype=torch.float64) + 1
    per, lam = aldr_kl_loss(x, t, lam_prev, reduction="none")
    flat_per, flat_lam = aldr_kl_loss(flat_x, flat_t, lam_prev.reshape(-1), reduction="none")
    torch.testing.assert_close((per, lam), (flat_per.view(2, 3), flat_lam.view(2, 3)))


def test_empty_batch():
    x = torch.randn(0, 3, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    loss = ldr_kl_loss(x, t)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 3)
    aloss, lam = aldr_kl_loss(x, t, 1.0)
    assert aloss.item() == 0.0 and lam.shape == (0,)


@pytest.mark.parametrize("normalize", NORMS)
def test_extreme_logits_keep_loss_and_gradient_finite(normalize):
    x, t = case(dtype=torch.float32, scale=1e4)
    x[0] = -1e4  # every softplus underflows to 0 (official: 0 / 0)
    x[1] = 0.0  # zero row (official l1 normalisation: 0 / 0)
    x[2, (t[2] + 1) % 5] = -math.inf  # an impossible class
    for fn in (ldr_kl_loss, lambda *a, **k: aldr_kl_loss(*a, 10.0, **k)[0]):
        z = x.clone().requires_grad_()
        loss = fn(z, t, normalize=normalize, reduction="none")
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("normalize", NORMS)
def test_minus_infinity_matches_the_reference(normalize):
    # -inf: softplus 0 under softplus_mean; outside the norm and weightless otherwise
    x, t = case()
    x[0, (t[0] + 2) % 5] = -math.inf
    x[3, (t[3] + 1) % 5] = -math.inf
    got = ldr_kl_loss(x, t, normalize=normalize, lam=0.5, margin=1.0, reduction="none")
    expected = ref.ldr_kl(np64(x), t.numpy(), 0.5, 1.0, normalize)
    np.testing.assert_allclose(np64(got), expected, rtol=1e-12)
    z = x.clone().requires_grad_()
    ldr_kl_loss(z, t, normalize=normalize, lam=0.5, margin=1.0).backward()
    assert z.grad[0, (t[0] + 2) % 5] == 0 and torch.isfinite(z.grad).all()
    if normalize is None:  # as if sliced off, up to the 1/K inside the log: lam log(4/5)
        j = int((t[0] + 2) % 5)
        keep = torch.arange(5) != j
        y = t[0:1] - (t[0:1] > j).long()
        sliced = ldr_kl_loss(x[0:1, keep], y, lam=0.5, margin=1.0, normalize=None)
        assert math.isclose(got[0].item(), sliced.item() + 0.5 * math.log(4 / 5), rel_tol=1e-12)


def test_probability_targets_and_label_smoothing():
    x, t = case()
    one_hot = F.one_hot(t, 5).double()
    for normalize in NORMS:
        torch.testing.assert_close(
            ldr_kl_loss(x, one_hot, normalize=normalize), ldr_kl_loss(x, t, normalize=normalize)
        )
        smooth = one_hot * 0.7 + 0.3 / 5
        torch.testing.assert_close(
            ldr_kl_loss(x, t, label_smoothing=0.3, normalize=normalize),
            ldr_kl_loss(x, smooth, normalize=normalize),
        )
    lam_prev = torch.full((6,), 3.0, dtype=torch.float64)
    torch.testing.assert_close(aldr_kl_loss(x, one_hot, lam_prev), aldr_kl_loss(x, t, lam_prev))


def test_module_twins_and_repr():
    x, t = case()
    assert torch.equal(
        LDRKLLoss(lam=2.0, reduction="sum")(x, t), ldr_kl_loss(x, t, lam=2.0, reduction="sum")
    )
    assert "normalize='softplus_mean'" in repr(LDRKLLoss())
    assert "num_samples=3" in repr(ALDRKLLoss(3))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lam": 0.0}, ValueError, r"lam must be in \(0, inf\]"),
        ({"lam": "1"}, TypeError, "lam must be a real number"),
        ({"margin": -0.1}, ValueError, r"margin must be in \[0, inf\]"),
        ({"normalize": "softplus"}, ValueError, "normalize must be one of"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing must be in"),
    ],
)
def test_ldr_bad_hyperparameters(kwargs, error, match):
    x, t = case()
    with pytest.raises(error, match=match):
        ldr_kl_loss(x, t, **kwargs)
    with pytest.raises(error, match=match):
        LDRKLLoss(**kwargs)(x, t)


@pytest.mark.parametrize(
    "target, error, match",
    [
        (torch.tensor([0, 1, 4]), ValueError, r"target must hold class indices in \[0, 3\]"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, r"class indices \(an integer dtype\)"),
        (torch.zeros(3, 2), ValueError, "or probabilities of the logits. shape"),
        (torch.tensor([0, 1]), ValueError, r"target must have shape \(3,\)"),
        (torch.full((3, 4), -0.5), ValueError, "target must have all values in"),
    ],
)
def test_bad_targets(target, error, match):
    x = torch.randn(3, 4)
    with pytest.raises(error, match=match):
        ldr_kl_loss(x, target)
    with pytest.raises(error, match=match):
        aldr_kl_loss(x, target, 1.0)


@pytest.mark.parametrize(
    "lam_prev, kwargs, error, match",
    [
        (1.0, {"alpha": 1.0}, ValueError, r"alpha must be in \(1, inf\]"),
        (1.0, {"lam0": -1.0}, ValueError, r"lam0 must be in \(0, inf\]"),
        (torch.tensor([1.0, 0.0, 1.0]), {}, ValueError, r"lam_prev must have all values in \(0"),
        (torch.ones(4), {}, ValueError, "lam_prev must be broadcastable to the sample shape"),
        (torch.ones(3, dtype=torch.long), {}, TypeError, "lam_prev must be a floating-point"),
        (0.0, {}, ValueError, r"lam_prev must be in \(0, inf\]"),
    ],
)
def test_aldr_bad_arguments(lam_prev, kwargs, error, match):
    with pytest.raises(error, match=match):
        aldr_kl_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), lam_prev, **kwargs)


def test_module_bad_arguments():
    crit = ALDRKLLoss(5)
    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"index must hold sample ids in \[0, 4\], got 5"):
        crit(x, t, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match=r"index must have the per-sample shape \(3,\)"):
        crit(x, t, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="index must hold sample ids"):
        crit(x, t, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"alpha must be in \(1, inf\]"):
        ALDRKLLoss(5, alpha=0.5)
    with pytest.raises(ValueError, match=r"num_samples must be in \[0, inf\]"):
        ALDRKLLoss(-1)


def test_compiles():
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    t = torch.tensor([0, 1, -100, 5])
    loss = torch.compile(lambda x, t: ldr_kl_loss(x, t, normalize="l1_mean"))(x, t)
    loss.backward()
    z = x.detach().requires_grad_()
    expected = ldr_kl_loss(z, t, normalize="l1_mean")
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, z.grad)
