import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from softmaxkit.losses.distill import (
    KDLoss,
    NKDLoss,
    USKDLoss,
    kd_loss,
    nkd_loss,
    uskd_loss,
)
from tests.helpers import HALF_DTYPES, loss_and_grads, np64, numeric_grad, spy_fallback
from tests.reference import distill_ref as ref

gen = torch.Generator().manual_seed(5)
REDUCTIONS = ["mean", "sum", "none"]
MODES = ["official", "probs"]


def logits(n=6, c=5, scale=2.0, dtype=torch.float64, *extra):
    return torch.randn(n, c, *extra, generator=gen, dtype=dtype) * scale


def labels(n=6, c=5):
    return torch.randint(0, c, (n,), generator=gen)


def soft_labels(n=6, c=5):
    """mixup-like labels: two classes per row, one row one-hot."""
    t = torch.zeros(n, c, dtype=torch.float64)
    lam = torch.rand(n, generator=gen, dtype=torch.float64)
    a, b = labels(n, c), (labels(n, c - 1) + 1) % c
    b = torch.where(a == b, (a + 1) % c, b)
    t[torch.arange(n), a] += lam
    t[torch.arange(n), b] += 1 - lam
    t[0] = 0.0
    t[0, 2] = 1.0
    return t


def reduced(per_row, reduction, count=None):
    if reduction == "none":
        return per_row
    total = per_row.sum()
    return total / (count or len(per_row)) if reduction == "mean" else total


def check(actual, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np64(actual), expected, rtol=rtol, atol=atol)


def nkd_torch(s, t, y, tau, gamma):
    """NKD per row with plain autograd ops: T_y detached, teacher otherwise attached."""
    hide = F.one_hot(y, s.shape[1]).bool()
    s_y = F.log_softmax(s, 1).gather(1, y[:, None]).squeeze(1)
    t_y = F.softmax(t, 1).gather(1, y[:, None]).squeeze(1).detach()
    ns = F.log_softmax((s / tau).masked_fill(hide, -math.inf), 1).masked_fill(hide, 0.0)
    nt = F.softmax((t / tau).masked_fill(hide, -math.inf), 1)
    return -t_y * s_y - gamma * tau**2 * (nt * ns).sum(1)


def uskd_torch(z, w, y, alpha, beta, mu, rank_with):
    """USKD per row (index targets) with plain autograd ops and detached soft labels."""
    n, c = z.shape
    hide = F.one_hot(y, c).bool()
    log_s = F.log_softmax(z, 1)
    s_y = log_s.gather(1, y[:, None]).exp()
    p_t = (s_y**2 + 1 - (s_y**2).mean(0, keepdim=True)).detach()
    target_part = -(p_t * log_s.gather(1, y[:, None])).squeeze(1)
    weak_target = 0.9 * hide.double() + 0.1 / c
    weak_part = -mu * (weak_target * F.log_softmax(w, 1)).sum(1)
    with torch.no_grad():
        pw = F.softmax(w, 1)
        x = log_s if rank_with == "official" else log_s.exp()
        score = pw / (1 - pw.gather(1, y[:, None]) + 1e-6) + x / (
            1 - x.gather(1, y[:, None]) + 1e-6
        )
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        rank = torch.argsort(order, 1) + 1
        zipf = (1.0 / rank).masked_fill(hide, 0.0)
        nz = zipf / zipf.sum(1, keepdim=True)
    ns = F.log_softmax(z.masked_fill(hide, -math.inf), 1).masked_fill(hide, 0.0)
    return alpha * target_part - beta * (nz * ns).sum(1) + weak_part


# --- KD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("tau", [4.0, 1.5])
def test_kd_matches_reference_and_kl_div(reduction, tau):
    s, t = logits(), logits()
    check(
        kd_loss(s, t, temperature=tau, reduction=reduction),
        reduced(ref.kd(np64(s), np64(t), tau), reduction),
    )
    if reduction == "mean":
        want = tau**2 * F.kl_div(
            F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean"
        )
        torch.testing.assert_close(kd_loss(s, t, temperature=tau), want)


def test_kd_default_temperature_and_layout():
    s, t = logits(2, 4, 2.0, torch.float64, 3), logits(2, 4, 2.0, torch.float64, 3)
    flat = kd_loss(
        s.movedim(1, -1).reshape(-1, 4), t.movedim(1, -1).reshape(-1, 4), reduction="none"
    )
    torch.testing.assert_close(kd_loss(s, t, reduction="none"), flat.view(2, 3))
    torch.testing.assert_close(kd_loss(s, t), flat.mean())
    assert math.isclose(kd_loss(s, t).item(), kd_loss(s, t, temperature=4.0).item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kd_gradcheck_and_detach(reduction):
    s, t = logits(3, 4), logits(3, 4)
    s.requires_grad_()
    t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: kd_loss(a, b, temperature=2.0, reduction=reduction, detach_teacher=False),
        (s, t),
    )
    loss = kd_loss(s, t, temperature=2.0)
    g, g_t = torch.autograd.grad(loss, (s, t), allow_unused=True)
    assert g_t is None  # the teacher is not even part of the graph
    # d loss / d s = tau (softmax(s / tau) - softmax(t / tau)) / N
    torch.testing.assert_close(g, 2.0 * (F.softmax(s / 2, 1) - F.softmax(t / 2, 1)) / 3)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_kd_half_dtypes(dtype):
    s, t = logits(dtype=torch.float32), logits(dtype=torch.float32)
    s = s.to(dtype).requires_grad_()
    loss = kd_loss(s, t.to(dtype))
    assert loss.dtype == dtype
    torch.testing.assert_close(
        loss.float(), kd_loss(s.detach().float(), t.to(dtype).float()), atol=2e-2, rtol=2e-2
    )
    loss.backward()
    assert s.grad.dtype == dtype and torch.isfinite(s.grad).all()
    # a half teacher with a float32 student: computed and returned in float32
    assert kd_loss(s.detach().float(), t.to(dtype)).dtype == torch.float32


def test_kd_extreme_and_impossible_classes():
    s, t = logits(scale=1e4, dtype=torch.float32), logits(scale=1e4, dtype=torch.float32)
    s.requires_grad_()
    loss = kd_loss(s, t, reduction="none")
    check(loss, ref.kd(np64(s), np64(t), 4.0), rtol=1e-4, atol=1e-3)
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()
    # a class impossible for the teacher contributes nothing; for both: as if sliced off
    s, t = logits(), logits()
    t[:, 1] = -math.inf
    check(kd_loss(s, t, reduction="none"), ref.kd(np64(s), np64(t), 4.0))
    s[:, 1] = -math.inf
    s.requires_grad_()
    loss = kd_loss(s, t, reduction="sum")
    loss.backward()
    keep = [0, 2, 3, 4]
    torch.testing.assert_close(loss, kd_loss(s.detach()[:, keep], t[:, keep], reduction="sum"))
    assert (s.grad[:, 1] == 0).all() and torch.isfinite(s.grad).all()
    # the student ruling out a class the teacher allows: +inf
    assert kd_loss(torch.tensor([[0.0, -math.inf]]), torch.tensor([[0.0, 0.0]])).item() == math.inf


def test_kd_empty_and_module():
    s = torch.randn(0, 4, requires_grad=True)
    loss = kd_loss(s, torch.randn(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and s.grad.shape == (0, 4)
    a, b = logits(), logits()
    torch.testing.assert_close(
        KDLoss(temperature=2.0, reduction="sum")(a, b),
        kd_loss(a, b, temperature=2.0, reduction="sum"),
    )
    assert repr(KDLoss()) == "KDLoss(temperature=4.0, reduction='mean')"


# --- NKD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("tau", "gamma"), [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_reference(reduction, tau, gamma):
    s, t, y = logits(), logits(), labels()
    want = ref.nkd(np64(s), np64(t), y.numpy(), tau, gamma)
    got = nkd_loss(s, t, y, temperature=tau, gamma=gamma, reduction=reduction)
    check(got, reduced(want, reduction))


def test_nkd_gradients_match_autograd_of_the_formula():
    s, t, y = logits(4, 5), logits(4, 5), labels(4, 5)
    s.requires_grad_()
    t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: nkd_loss(a, t, y, temperature=2.0, reduction="none"), (s,)
    )
    got = torch.autograd.grad(nkd_loss(s, t, y, temperature=2.0, detach_teacher=False), (s, t))
    want = torch.autograd.grad(nkd_torch(s, t, y, 2.0, 1.5).mean(), (s, t))
    torch.testing.assert_close(got, want)
    # detach_teacher=True: no gradient to the teacher at all
    _, g_t = torch.autograd.grad(nkd_loss(s, t, y), (s, t), allow_unused=True)
    assert g_t is None


def test_nkd_gamma_zero_is_the_target_term():
    s, t, y = logits(), logits(), labels()
    t_y = F.softmax(t, 1).gather(1, y[:, None]).squeeze(1)
    s_y = F.log_softmax(s, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(nkd_loss(s, t, y, gamma=0.0, reduction="none"), -t_y * s_y)


def test_nkd_student_equal_to_teacher():
    # Yang et al.: normalising the non-target probabilities makes the non-target term
    # minimal exactly when the student's non-target distribution is the teacher's, so a
    # student equal to its teacher gets only the target term's push, -T_y (e_y - S)
    t, y = logits(), labels()
    s = t.clone().requires_grad_()
    loss = nkd_loss(s, t, y, temperature=2.0, reduction="sum")
    (g,) = torch.autograd.grad(loss, s)
    p = F.softmax(t, 1)
    t_y = p.gather(1, y[:, None])
    torch.testing.assert_close(g, t_y * (p - F.one_hot(y, 5)))
    # the value is -T_y log T_y + gamma tau^2 H(T-hat): the entropy, not 0 (CE form)
    hide = F.one_hot(y, 5).bool()
    nt = F.softmax((t / 2).masked_fill(hide, -math.inf), 1)
    entropy = -(nt * nt.log().masked_fill(hide, 0.0)).sum(1)
    want = (-t_y.squeeze(1) * t_y.squeeze(1).log() + 1.5 * 4 * entropy).sum()
    torch.testing.assert_close(loss, want)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(3, 7), shift=st.floats(-5, 5), target_logit=st.floats(-10, 10), data=st.data())
def test_nkd_non_target_term_ignores_the_target_probability(c, shift, target_logit, data):
    # NKD's normalised non-target term is stationary whenever the student's non-target
    # logits agree with the teacher's up to a shift, whatever the target logit
    row = data.draw(st.lists(st.floats(-10, 10), min_size=c, max_size=c))
    y = torch.tensor([data.draw(st.integers(0, c - 1))])
    t = torch.tensor([row], dtype=torch.float64)
    s = (t + shift).clone()
    s[0, y] = target_logit
    s.requires_grad_()
    full = nkd_loss(s, t, y, temperature=1.5)
    target_only = nkd_loss(s, t, y, temperature=1.5, gamma=0.0)
    (g,) = torch.autograd.grad(full - target_only, s)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(3, 7), data=st.data())
def test_kd_decomposes_into_nkd_terms(c, data):
    # Yang et al. Sec. 3: the KD cross-entropy -sum_k T_k log S_k splits into
    # -T_y log S_y - (1 - T_y) log(1 - S_y) + (1 - T_y) CE(T-hat, S-hat): its non-target
    # part is weighted by 1 - T_y; NKD keeps the target term and drops that weight
    draw = lambda: data.draw(st.lists(st.floats(-10, 10), min_size=c, max_size=c))  # noqa: E731
    s, t = torch.tensor([draw()], dtype=torch.float64), torch.tensor([draw()], dtype=torch.float64)
    y = torch.tensor([data.draw(st.integers(0, c - 1))])
    t_y, s_y = F.softmax(t, 1)[0, y], F.softmax(s, 1)[0, y]
    normalised_ce = nkd_loss(s, t, y, gamma=1.0) - nkd_loss(s, t, y, gamma=0.0)
    kd_ce = -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum()
    want = nkd_loss(s, t, y, gamma=1.0) - t_y * normalised_ce - (1 - t_y) * torch.log1p(-s_y)
    torch.testing.assert_close(kd_ce, want.squeeze(), atol=1e-9, rtol=1e-9)


def test_nkd_probability_targets_reduce_to_argmax():
    s, t, probs = logits(), logits(), soft_labels()
    torch.testing.assert_close(
        nkd_loss(s, t, probs, reduction="none"), nkd_loss(s, t, probs.argmax(1), reduction="none")
    )
    assert math.isclose(nkd_loss(s, t, probs).item(), nkd_loss(s, t, probs.argmax(1)).item())


def test_nkd_ignore_index_layout_and_empty():
    s, t, y = logits(), logits(), labels()
    y[[1, 4]] = 9
    s.requires_grad_()
    per = nkd_loss(s, t, y, ignore_index=9, reduction="none")
    assert per[1] == 0 and per[4] == 0
    kept = torch.tensor([0, 2, 3, 5])
    loss = nkd_loss(s, t, y, ignore_index=9)
    torch.testing.assert_close(loss, per[kept].mean())
    (g,) = torch.autograd.grad(loss, s)
    assert (g[[1, 4]] == 0).all()
    s0 = s.detach().requires_grad_()
    zero = nkd_loss(s0, t, torch.full((6,), -100))
    zero.backward()
    assert zero.item() == 0.0 and (s0.grad == 0).all()
    # (N, C, d1)
    s3, t3 = logits(2, 4, 2.0, torch.float64, 3), logits(2, 4, 2.0, torch.float64, 3)
    y3 = torch.randint(0, 4, (2, 3), generator=gen)
    flat = nkd_loss(
        s3.movedim(1, -1).reshape(-1, 4),
        t3.movedim(1, -1).reshape(-1, 4),
        y3.reshape(-1),
        reduction="none",
    )
    torch.testing.assert_close(nkd_loss(s3, t3, y3, reduction="none"), flat.view(2, 3))
    s3.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: nkd_loss(a, t3, y3), (s3,))
    # empty batch, index and probability targets
    e = torch.randn(0, 4, requires_grad=True)
    assert nkd_loss(e, torch.randn(0, 4), torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert nkd_loss(e, torch.randn(0, 4), torch.zeros(0, 4)).item() == 0.0


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_nkd_half_dtypes(dtype):
    s, t, y = logits(dtype=torch.float32), logits(dtype=torch.float32), labels()
    s = s.to(dtype).requires_grad_()
    loss = nkd_loss(s, t.to(dtype), y, temperature=2.0)
    assert loss.dtype == dtype
    want = nkd_loss(s.detach().float(), t.to(dtype).float(), y, temperature=2.0)
    torch.testing.assert_close(loss.float(), want, atol=2e-2, rtol=2e-2)
    loss.backward()
    assert s.grad.dtype == dtype and torch.isfinite(s.grad).all()


def test_nkd_extreme_and_impossible_classes():
    s, t, y = (
        logits(scale=1e4, dtype=torch.float32),
        logits(scale=1e4, dtype=torch.float32),
        labels(),
    )
    s.requires_grad_()
    loss = nkd_loss(s, t, y, reduction="none")
    assert torch.isfinite(loss).all()
    check(loss, ref.nkd(np64(s), np64(t), y.numpy(), 1.0, 1.5), rtol=1e-4, atol=2e-3)
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()
    # a non-target class impossible for both models: as if sliced off
    s, t = logits(), logits()
    y = torch.tensor([0, 2, 3, 4, 0, 2])
    s[:, 1] = t[:, 1] = -math.inf
    s.requires_grad_()
    loss = nkd_loss(s, t, y, temperature=2.0, reduction="sum")
    loss.backward()
    keep = [0, 2, 3, 4]
    sliced = nkd_loss(
        s.detach()[:, keep],
        t[:, keep],
        torch.tensor([0, 1, 2, 3, 0, 1]),
        temperature=2.0,
        reduction="sum",
    )
    torch.testing.assert_close(loss, sliced)
    assert (s.grad[:, 1] == 0).all() and torch.isfinite(s.grad).all()


def test_nkd_module():
    s, t, y = logits(), logits(), labels()
    module = NKDLoss(temperature=2.0, gamma=1.0, reduction="sum")
    torch.testing.assert_close(
        module(s, t, y), nkd_loss(s, t, y, temperature=2.0, gamma=1.0, reduction="sum")
    )
    assert repr(NKDLoss()) == "NKDLoss(temperature=1.0, gamma=1.5, reduction='mean')"


# --- USKD ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_uskd_matches_reference(reduction, mode, target_kind):
    z, w = logits(), logits()
    target = labels() if target_kind == "index" else soft_labels()
    want = ref.uskd(np64(z), np64(w), target.numpy(), 1.0, 0.1, 0.005, mode)
    check(uskd_loss(z, w, target, rank_with=mode, reduction=reduction), reduced(want, reduction))
    # CIFAR-100 weights
    want = ref.uskd(np64(z), np64(w), target.numpy(), 0.1, 0.1, 0.1, mode)
    check(
        uskd_loss(z, w, target, alpha=0.1, beta=0.1, mu=0.1, rank_with=mode, reduction=reduction),
        reduced(want, reduction),
    )


def test_uskd_rank_modes_differ_where_the_quirk_matters():
    # log-probabilities and probabilities order the student's part of the score alike, but
    # not the sum with the weak head's part: one row where the two rankings disagree
    z = torch.tensor([[4.0, 2.0, 1.9, 0.0, -3.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, -2.0, 0.5, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    official = uskd_loss(z, w, y, rank_with="official")
    probs = uskd_loss(z, w, y, rank_with="probs")
    assert not math.isclose(official.item(), probs.item())
    for mode, got in [("official", official), ("probs", probs)]:
        assert math.isclose(
            got.item(),
            ref.uskd(np64(z), np64(w), y.numpy(), 1.0, 0.1, 0.005, mode)[0],
            rel_tol=1e-12,
        )


@pytest.mark.parametrize("mode", MODES)
def test_uskd_gradients(mode):
    z, w, y = logits(4, 5), logits(4, 5), labels(4, 5)
    z.requires_grad_()
    w.requires_grad_()
    # the weak logits only enter the weak term (the rank is piecewise constant)
    assert torch.autograd.gradcheck(
        lambda b: uskd_loss(z, b, y, rank_with=mode, mu=0.3, reduction="none"), (w,)
    )
    # the student: p_t and the Zipf labels are detached, so compare with autograd of the formula
    got = torch.autograd.grad(uskd_loss(z, w, y, rank_with=mode, mu=0.3), (z, w))
    want = torch.autograd.grad(uskd_torch(z, w, y, 1.0, 0.1, 0.3, mode).mean(), (z, w))
    torch.testing.assert_close(got, want)
    # with p_t constant (a single row has mean(S_y^2) = S_y^2, p_t = 1) numerical
    # differentiation applies directly
    assert torch.autograd.gradcheck(
        lambda a: uskd_loss(a, w[:1], y[:1], rank_with=mode),
        (z[:1].detach().clone().requires_grad_(),),
    )


@settings(max_examples=25, deadline=None)
@given(c=st.integers(3, 9), mode=st.sampled_from(MODES), data=st.data())
def test_uskd_non_target_labels_follow_zipf(c, mode, data):
    # alpha = mu = 0, beta = 1 leaves -sum nz log S-hat, whose gradient is S-hat - nz
    row = lambda: data.draw(st.lists(st.floats(-8, 8), min_size=c, max_size=c, unique=True))  # noqa: E731
    z = torch.tensor([row()], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([row()], dtype=torch.float64)
    y = data.draw(st.integers(0, c - 1))
    loss = uskd_loss(z, w, torch.tensor([y]), alpha=0.0, beta=1.0, mu=0.0, rank_with=mode)
    (g,) = torch.autograd.grad(loss, z)
    hide = torch.zeros(c, dtype=torch.bool)
    hide[y] = True
    s_hat = F.softmax(z.detach()[0].masked_fill(hide, -math.inf), 0)
    nz = (s_hat - g[0]).masked_fill(hide, 0.0)
    # the score, ranked (target included), 1 / rank, renormalised over the non-targets
    pw, ls = F.softmax(w[0], 0), F.log_softmax(z.detach()[0], 0)
    x = ls if mode == "official" else ls.exp()
    score = pw / (1 - pw[y] + 1e-6) + x / (1 - x[y] + 1e-6)
    assume(score.sort().values.diff().min() > 1e-9)  # (near-)ties may round either way
    rank = torch.empty(c, dtype=torch.float64)
    rank[torch.argsort(score, descending=True, stable=True)] = torch.arange(
        1, c + 1, dtype=torch.float64
    )
    zipf = (1 / rank).masked_fill(hide, 0.0)
    torch.testing.assert_close(nz, zipf / zipf.sum())
    assert nz.sum().item() == pytest.approx(1.0)


def test_uskd_ignore_index_and_layout():
    z, w, y = logits(), logits(), labels()
    y[[1, 4]] = -100
    z.requires_grad_()
    w.requires_grad_()
    per = uskd_loss(z, w, y, reduction="none")
    assert per[1] == 0 and per[4] == 0
    kept = torch.tensor([0, 2, 3, 5])
    # ignored rows are out of the batch mean of S_y^2 too: the same as dropping them
    torch.testing.assert_close(per[kept], uskd_loss(z[kept], w[kept], y[kept], reduction="none"))
    loss = uskd_loss(z, w, y)
    torch.testing.assert_close(loss, per[kept].mean())
    g_z, g_w = torch.autograd.grad(loss, (z, w))
    assert (g_z[[1, 4]] == 0).all() and (g_w[[1, 4]] == 0).all()
    zero = uskd_loss(z, w, torch.full((6,), -100))
    assert zero.item() == 0.0
    g_z, g_w = torch.autograd.grad(zero, (z, w))
    assert (g_z == 0).all() and (g_w == 0).all()
    # (N, C, d1)
    z3, w3 = logits(2, 4, 2.0, torch.float64, 3), logits(2, 4, 2.0, torch.float64, 3)
    y3 = torch.randint(0, 4, (2, 3), generator=gen)
    flat = uskd_loss(
        z3.movedim(1, -1).reshape(-1, 4),
        w3.movedim(1, -1).reshape(-1, 4),
        y3.reshape(-1),
        reduction="none",
    )
    torch.testing.assert_close(uskd_loss(z3, w3, y3, reduction="none"), flat.view(2, 3))
    # empty batch
    e = torch.randn(0, 4, requires_grad=True)
    assert uskd_loss(e, torch.randn(0, 4), torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert uskd_loss(e, torch.randn(0, 4), torch.zeros(0, 4)).item() == 0.0


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_uskd_half_dtypes(dtype):
    z, w, y = logits(dtype=torch.float32), logits(dtype=torch.float32), labels()
    z, w = z.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    loss = uskd_loss(z, w, y)
    assert loss.dtype == dtype
    torch.testing.assert_close(
        loss.float(), uskd_loss(z.detach().float(), w.detach().float(), y), atol=2e-2, rtol=2e-2
    )
    loss.backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("mode", MODES)
def test_uskd_extreme_and_impossible_classes(mode):
    z, w, y = (
        logits(scale=1e4, dtype=torch.float32),
        logits(scale=10, dtype=torch.float32),
        labels(),
    )
    z.requires_grad_()
    w.requires_grad_()
    loss = uskd_loss(z, w, y, rank_with=mode, reduction="none")
    assert torch.isfinite(loss).all()
    check(loss, ref.uskd(np64(z), np64(w), y.numpy(), 1.0, 0.1, 0.005, mode), rtol=1e-4, atol=2e-3)
    loss.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()
    # a class the student rules out gets no Zipf label: finite, and as the reference says
    z, w = logits(), logits()
    y = torch.tensor([0, 2, 3, 4, 0, 2])
    z[:, 1] = -math.inf
    z.requires_grad_()
    loss = uskd_loss(z, w, y, rank_with=mode, reduction="none")
    check(loss, ref.uskd(np64(z), np64(w), y.numpy(), 1.0, 0.1, 0.005, mode))
    loss.sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad[:, 1] == 0).all()


def test_uskd_module_owns_the_weak_head():
    torch.manual_seed(0)
    module = USKDLoss(8, 5, rank_with="probs", reduction="sum").double()
    z, feats, y = logits(4, 5), torch.randn(4, 8, dtype=torch.float64), labels(4, 5)
    z.requires_grad_()
    loss = module(z, feats, y)
    torch.testing.assert_close(
        loss, uskd_loss(z, module.fc(feats), y, rank_with="probs", reduction="sum")
    )
    loss.backward()
    assert module.fc.weight.grad is not None and module.fc.weight.grad.abs().sum() > 0
    assert [name for name, _ in module.named_parameters()] == ["fc.weight", "fc.bias"]
    assert repr(module).startswith("USKDLoss(\n  alpha=1.0, beta=0.1, mu=0.005, rank_with='probs'")
    # (N, channel, d1) features with (N, C, d1) logits
    z3, f3 = logits(2, 5, 2.0, torch.float64, 3), torch.randn(2, 8, 3, dtype=torch.float64)
    y3 = torch.randint(0, 5, (2, 3), generator=gen)
    weak = module.fc(f3.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(
        module(z3, f3, y3), uskd_loss(z3, weak, y3, rank_with="probs", reduction="sum")
    )
    with pytest.raises(ValueError, match=r"mid_features must have shape \(N, 8\)"):
        module(z, torch.randn(4, 7, dtype=torch.float64), y)


def test_runs_under_torch_compile():
    def total(s, t, w, y):
        return kd_loss(s, t) + nkd_loss(s, t, y) + uskd_loss(s, w, y)

    s, t, w, y = (
        logits(dtype=torch.float32),
        logits(dtype=torch.float32),
        logits(dtype=torch.float32),
        labels(),
    )
    s.requires_grad_()
    compiled = torch.compile(total)(s, t, w, y)
    (grad,) = torch.autograd.grad(compiled, s)
    eager = total(s, t, w, y)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad, torch.autograd.grad(eager, s)[0])


# --- errors --------------------------------------------------------------------------------------

X, Y = torch.randn(3, 4), torch.tensor([0, 1, 2])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: kd_loss(X, torch.randn(3, 5)), ValueError, "teacher_logits must have the shape"),
        (
            lambda: kd_loss(torch.randn(4), torch.randn(4)),
            ValueError,
            "student_logits must have shape",
        ),
        (
            lambda: kd_loss(X, X, temperature=0.0),
            ValueError,
            r"temperature must be in \(0, inf\], got 0",
        ),
        (lambda: kd_loss(X, X, detach_teacher=1), TypeError, "detach_teacher must be a bool"),
        (lambda: kd_loss(X, X.long()), TypeError, "teacher_logits must be a floating-point"),
        (lambda: kd_loss(X, X, reduction="batchmean"), ValueError, "reduction must be one of"),
        (
            lambda: nkd_loss(X, X, torch.tensor([0, 1, 4])),
            ValueError,
            r"target must hold class indices in \[0, 3\]",
        ),
        (
            lambda: nkd_loss(X, X, torch.tensor([0, 1])),
            ValueError,
            r"target must have shape \(3,\)",
        ),
        (
            lambda: nkd_loss(X, X, torch.rand(3, 5)),
            ValueError,
            r"target must hold class indices .* or probabilities of the logits' shape",
        ),
        (
            lambda: nkd_loss(X, X, torch.tensor([True, False, True])),
            TypeError,
            "target must hold class indices",
        ),
        (lambda: nkd_loss(X, X, -torch.rand(3, 4)), ValueError, "target must have all values in"),
        (lambda: nkd_loss(X, X, Y, gamma=-1.0), ValueError, r"gamma must be in \[0, inf\]"),
        (lambda: nkd_loss(X, X, Y, temperature=-1.0), ValueError, "temperature must be in"),
        (lambda: nkd_loss(X, X[:, :3], Y), ValueError, "teacher_logits must have the shape"),
        (
            lambda: uskd_loss(X, X, Y, rank_with="logprobs"),
            ValueError,
            "rank_with must be one of 'official', 'probs'",
        ),
        (lambda: uskd_loss(X, X, Y, mu=-0.1), ValueError, r"mu must be in \[0, inf\]"),
        (lambda: uskd_loss(X, X[:2], Y), ValueError, "weak_logits must have the shape"),
        (lambda: uskd_loss(X, X, Y.float()), TypeError, r"class indices \(an integer dtype\)"),
        (lambda: USKDLoss(0, 4), ValueError, r"channel must be in \[1, inf\]"),
        (lambda: USKDLoss(8, 4, alpha=math.nan), ValueError, "alpha must be finite"),
        (lambda: NKDLoss(gamma="1"), TypeError, "gamma must be a real number"),
        (lambda: KDLoss(temperature=0), ValueError, "temperature must be in"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- fast kernels and their exact fallback ---------------------------------------------------

from softmaxkit.losses import distill as distill_module  # noqa: E402
from softmaxkit.losses import divergence as divergence_module  # noqa: E402


def mixed_block(n=10, c=6):
    """Student and teacher rows: finite (one at +-1e4) mixed with rows holding -inf."""
    s, t = logits(n, c), logits(n, c)
    s[1] *= 5e3
    t[1] *= 5e3
    t[2, 3] = -math.inf  # a class the teacher rules out
    s[3, 0] = -math.inf  # ... the student rules out (KD: +inf)
    s[4, [1, 4]] = t[4, [1, 4]] = -math.inf  # both
    t[5] = -math.inf  # the teacher is the zero measure
    s[6] = -math.inf
    s[7] = t[7] = -math.inf
    s[8, [0, 2]] = t[8, [2, 5]] = -math.inf
    return s, t


@pytest.mark.parametrize("tau", [4.0, 1.0])
def test_kd_fast_path_falls_back_on_exactly_the_non_finite_rows(tau, monkeypatch):
    s, t = mixed_block()
    want = ref.kd(np64(s), np64(t), tau)
    flagged = spy_fallback(monkeypatch, divergence_module)
    w = torch.rand(10, generator=gen, dtype=torch.float64) + 0.5

    def run(a, b):
        return kd_loss(a, b, temperature=tau, reduction="none", detach_teacher=False)

    loss, (gs, gt) = loss_and_grads(run, w, s, t)
    check(loss, want, rtol=1e-10, atol=1e-10)  # inf where the reference is
    assert torch.equal(flagged[0], ~torch.isfinite(s + t).all(1)) and len(flagged) == 2
    # the exact kernel's values and gradients on every row, student only or both
    _, (only_s,) = loss_and_grads(lambda a: kd_loss(a, t, temperature=tau, reduction="none"), w, s)
    monkeypatch.setattr(divergence_module, "fast_ok", lambda z: False)
    exact_loss, (es, et) = loss_and_grads(run, w, s, t)
    torch.testing.assert_close(loss, exact_loss, rtol=1e-10, atol=1e-12)
    finite = np.isfinite(want)
    torch.testing.assert_close(gs[finite], es[finite], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(only_s[finite], es[finite], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gt[finite], et[finite], rtol=1e-9, atol=1e-12)
    # and the reference's derivative (not on zero-measure rows, where the gradient is not a
    # derivative of the constant loss)
    np_s, np_t = np64(s), np64(t)
    for i in [i for i in np.flatnonzero(finite) if i not in (5, 6, 7)]:

        def kd_row(a, b):
            return ref.kd(a[None], b[None], tau)[0]

        num_s = numeric_grad(lambda r, i=i: kd_row(r, np_t[i]), np_s[i])
        num_t = numeric_grad(lambda r, i=i: kd_row(np_s[i], r), np_t[i])
        check(gs[i], w[i].item() * num_s, rtol=1e-5, atol=1e-5)
        check(gt[i], w[i].item() * num_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_nkd_fast_path_falls_back_on_exactly_the_non_finite_rows(tau, monkeypatch):
    s, t = mixed_block()
    y = torch.tensor([0, 1, 2, 0, 3, 1, 2, 5, 0, 4])  # row 3: the student rules out y
    t[9, [0, 1, 2, 3, 5]] = -math.inf  # the teacher puts everything on y
    want = ref.nkd(np64(s), np64(t), y.numpy(), tau, 1.5)
    flagged = spy_fallback(monkeypatch, distill_module)
    w = torch.rand(10, generator=gen, dtype=torch.float64) + 0.5

    def run(a, b):
        return nkd_loss(a, b, y, temperature=tau, reduction="none", detach_teacher=False)

    loss, (gs, gt) = loss_and_grads(run, w, s, t)
    check(loss, want, rtol=1e-10, atol=1e-10)
    # forward: rows 3-9 go to the exact kernel; row 2 (a non-target class only the teacher
    # rules out) is exact on the fast path, and so are the finite rows 0, 1
    assert flagged[0].tolist() == [False] * 3 + [True] * 7 and len(flagged) == 2
    _, (only_s,) = loss_and_grads(
        lambda a: nkd_loss(a, t, y, temperature=tau, reduction="none"), w, s
    )
    monkeypatch.setattr(distill_module, "fast_ok", lambda z: False)
    exact_loss, (es, et) = loss_and_grads(run, w, s, t)
    torch.testing.assert_close(loss, exact_loss, rtol=1e-10, atol=1e-12)
    finite = np.isfinite(want)
    torch.testing.assert_close(gs[finite], es[finite], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(only_s[finite], es[finite], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gt[finite], et[finite], rtol=1e-9, atol=1e-12)
    # the student's gradient is the reference's derivative (T_y is a constant there)
    np_s, np_t = np64(s), np64(t)
    for i in [i for i in np.flatnonzero(finite) if i not in (5, 6, 7)]:

        def nkd_row(r, i=i):
            return ref.nkd(r[None], np_t[i][None], y[i : i + 1].numpy(), tau, 1.5)[0]

        num_s = numeric_grad(nkd_row, np_s[i])
        check(gs[i], w[i].item() * num_s, rtol=1e-5, atol=1e-5)
