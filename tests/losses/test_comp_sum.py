import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.adversarial import AdversarialCompSumLoss, adversarial_comp_sum_loss
from softmaxkit.losses.comp_sum import (
    CompSumLoss,
    GeneralizedCrossEntropyLoss,
    MAELoss,
    SumExpLoss,
    comp_sum_loss,
    generalized_cross_entropy,
    mae_loss,
    sum_exp_loss,
)
from tests.helpers import HALF_DTYPES, np64
from tests.reference import comp_sum_ref as ref

gen = torch.Generator().manual_seed(5)
TAUS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
REDUCTIONS = ["mean", "sum", "none"]


def case(n=6, c=5, scale=2.0, dtype=torch.float64):
    x = torch.randn(n, c, generator=gen, dtype=dtype) * scale
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


def soft_target(n=6, c=5, dtype=torch.float64):
    return torch.softmax(torch.randn(n, c, generator=gen, dtype=dtype) * 2, 1)


def grad(fn, x, cot=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    cot = torch.ones_like(out) if cot is None else cot
    return torch.autograd.grad(out, x, cot)[0]


# --------------------------------------------------------------------------------------
# the comp-sum family against the paper's definition
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", TAUS)
def test_matches_reference_for_every_reduction(tau):
    x, t = case()
    t[3] = -100
    kept = t != -100
    expected = np.zeros(6)
    expected[kept.numpy()] = ref.comp_sum(np64(x[kept]), t[kept].numpy(), tau)
    torch.testing.assert_close(
        comp_sum_loss(x, t, tau, reduction="none"), torch.from_numpy(expected)
    )
    assert math.isclose(comp_sum_loss(x, t, tau, reduction="sum").item(), expected.sum())
    assert math.isclose(comp_sum_loss(x, t, tau).item(), expected.sum() / 5, rel_tol=1e-12)


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_and_label_smoothing_match_reference(tau, reduction):
    x, t = case()
    p = soft_target()
    expected = ref.comp_sum_soft(np64(x), np64(p), tau)
    agg = {"none": lambda a: a, "sum": np.sum, "mean": np.mean}[reduction]
    got = comp_sum_loss(x, p, tau, reduction=reduction)
    np.testing.assert_allclose(np64(got), agg(expected), rtol=1e-12)
    eps = 0.2
    smooth = (1 - eps) * F.one_hot(t, 5).double() + eps / 5
    expected = ref.comp_sum_soft(np64(x), np64(smooth), tau)
    got = comp_sum_loss(x, t, tau, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(np64(got), agg(expected), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "probs", "smoothing", "probs+smoothing"])
def test_tau_one_is_torch_cross_entropy(reduction, kind):
    # values and gradients, in the (N, C, d1) layout, with an ignored position
    x = torch.randn(5, 4, 3, generator=gen, dtype=torch.float64)
    if kind.startswith("probs"):
        target = torch.softmax(torch.randn(5, 4, 3, generator=gen, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, 4, (5, 3), generator=gen)
        target[1, 2] = -100
    eps = 0.3 if "smoothing" in kind else 0.0

    def ours(z):
        return comp_sum_loss(z, target, 1.0, reduction=reduction, label_smoothing=eps)

    def theirs(z):
        return F.cross_entropy(z, target, reduction=reduction, label_smoothing=eps)

    torch.testing.assert_close(ours(x), theirs(x))
    cot = torch.randn(theirs(x).shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(grad(ours, x, cot), grad(theirs, x, cot))


def test_tau_two_is_one_minus_p_y_and_mae_normalisation():
    x, t = case()
    p = torch.softmax(x, 1)
    p_y = p.gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(comp_sum_loss(x, t, 2.0, reduction="none"), 1 - p_y)
    torch.testing.assert_close(mae_loss(x, t, reduction="none"), 1 - p_y)
    l1 = (F.one_hot(t, 5).double() - p).abs().sum(1)
    torch.testing.assert_close(2 * mae_loss(x, t, reduction="none"), l1)


def test_named_members():
    x, t = case()
    p_y = torch.softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    z_y = x.gather(1, t[:, None])
    sum_exp = (torch.exp(x - z_y).sum(1) - 1).detach()
    torch.testing.assert_close(sum_exp_loss(x, t, reduction="none"), sum_exp)
    torch.testing.assert_close(sum_exp_loss(x, t, reduction="none"), 1 / p_y - 1)
    for q in (0.1, 0.7, 1.0):
        expected = (1 - p_y**q) / q
        torch.testing.assert_close(generalized_cross_entropy(x, t, q=q, reduction="none"), expected)
        torch.testing.assert_close(
            generalized_cross_entropy(x, t, q=q), comp_sum_loss(x, t, 1 + q), rtol=0, atol=0
        )
    # the default is Zhang & Sabuncu's q = 0.7
    torch.testing.assert_close(generalized_cross_entropy(x, t), comp_sum_loss(x, t, 1.7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuity_at_tau_one(dtype):
    x, t = case(scale=4.0, dtype=dtype)
    at_one = comp_sum_loss(x, t, 1.0, reduction="none")
    g_one = grad(lambda z: comp_sum_loss(z, t, 1.0, reduction="sum"), x)
    for tau in (1 - 1e-7, 1 + 1e-7):
        near = comp_sum_loss(x, t, tau, reduction="none")
        # the true change is O(|tau - 1| |log p_y|), about 1e-6 here: no jump at tau = 1
        torch.testing.assert_close(near, at_one, rtol=1e-5, atol=1e-6)
        g_near = grad(lambda z, tau=tau: comp_sum_loss(z, t, tau, reduction="sum"), x)
        torch.testing.assert_close(g_near, g_one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_gradient_is_cross_entropy_gradient_reweighted(tau):
    x, t = case()
    per_row = grad(lambda z: F.cross_entropy(z, t, reduction="sum"), x)
    p_y = torch.softmax(x, 1).gather(1, t[:, None])
    got = grad(lambda z: comp_sum_loss(z, t, tau, reduction="sum"), x)
    torch.testing.assert_close(got, per_row * p_y ** (tau - 1))


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.7, 2.0, 2.5])
def test_gradcheck(tau):
    x, t = case(n=4, c=3)
    t[1] = -100
    x.requires_grad_()
    p = soft_target(4, 3)
    x3 = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t3 = torch.randint(0, 3, (2, 2), generator=gen)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda z, reduction=reduction: comp_sum_loss(z, t, tau, reduction=reduction), (x,)
        )
    assert torch.autograd.gradcheck(lambda z: comp_sum_loss(z, p, tau, reduction="none"), (x,))
    assert torch.autograd.gradcheck(
        lambda z: comp_sum_loss(z, t, tau, label_smoothing=0.25, reduction="none"), (x,)
    )
    assert torch.autograd.gradcheck(lambda z: comp_sum_loss(z, t3, tau, reduction="none"), (x3,))


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(tau, dtype):
    x, t = case(dtype=torch.float32)
    h = x.to(dtype).requires_grad_()
    loss = comp_sum_loss(h, t, tau)
    assert loss.dtype == dtype
    torch.testing.assert_close(
        loss.float(), comp_sum_loss(h.detach().float(), t, tau), atol=1e-2, rtol=1e-2
    )
    loss.backward()
    assert h.grad.dtype == dtype
    expected = grad(lambda z: comp_sum_loss(z, t, tau), h.detach().float())
    torch.testing.assert_close(h.grad.float(), expected, atol=1e-2, rtol=1e-2)


def test_ignore_index_and_all_ignored():
    x, t = case()
    t[[1, 4]] = 7
    for tau in (0.0, 1.5):
        per = comp_sum_loss(x, t, tau, reduction="none", ignore_index=7)
        assert per[1] == 0 and per[4] == 0
        torch.testing.assert_close(comp_sum_loss(x, t, tau, ignore_index=7), per.sum() / 4)
        g = grad(lambda z, tau=tau: comp_sum_loss(z, t, tau, ignore_index=7), x)
        assert (g[[1, 4]] == 0).all()
        none = torch.full((6,), -100)
        z = x.clone().requires_grad_()
        loss = comp_sum_loss(z, none, tau)
        loss.backward()
        assert loss.item() == 0.0 and not loss.isnan() and (z.grad == 0).all()


def test_empty_batch():
    x = torch.randn(0, 4, requires_grad=True)
    loss = comp_sum_loss(x, torch.zeros(0, dtype=torch.long), 1.5)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 4)
    assert comp_sum_loss(x, torch.zeros(0, dtype=torch.long), 0.0, reduction="none").shape == (0,)


@pytest.mark.parametrize("tau", [1.0, 1.5, 2.0, 3.0])
def test_extreme_logits_keep_loss_and_gradient_finite(tau):
    x, t = case(scale=1e4, dtype=torch.float32)
    x[0, t[0]] = -1e4  # the label trails by 2e4
    for target in (t, soft_target(dtype=torch.float32)):
        z = x.clone().requires_grad_()
        loss = comp_sum_loss(z, target, tau)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("tau", TAUS)
def test_minus_inf_marks_impossible_classes(tau):
    x, t = case(dtype=torch.float32)
    impossible = torch.zeros_like(x, dtype=torch.bool)
    impossible[:, 0] = True
    t = t.clamp(min=1)
    x = x.masked_fill(impossible, -math.inf)
    p = soft_target(dtype=torch.float32).masked_fill(impossible, 0.0)
    p = p / p.sum(1, keepdim=True)
    finite = x[:, 1:]
    for target, same in ((t, t - 1), (p, p[:, 1:])):
        z = x.clone().requires_grad_()
        loss = comp_sum_loss(z, target, tau, reduction="none")
        loss.sum().backward()
        assert torch.isfinite(z.grad).all() and (z.grad[:, 0] == 0).all()
        # an impossible class is the same as no class at all
        torch.testing.assert_close(loss, comp_sum_loss(finite, same, tau, reduction="none"))


def test_small_tau_overflows_only_where_the_loss_does():
    # tau < 1 grows like p_y^-(1 - tau): a label trailing by 2e4 has a loss beyond float range
    x = torch.tensor([[1e4, -1e4], [3.0, 0.0]])
    loss = comp_sum_loss(x, torch.tensor([1, 1]), 0.5, reduction="none")
    assert loss[0] == math.inf and math.isclose(
        loss[1].item(), 2 * (math.sqrt(1 + math.exp(3.0)) - 1), rel_tol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tau": -0.5}, ValueError, r"tau must be in \[0, inf\], got -0.5"),
        ({"tau": math.nan}, ValueError, "tau must be finite"),
        ({"tau": math.inf}, ValueError, "tau must be finite"),
        ({"tau": "1"}, TypeError, "tau must be a real number"),
        ({"tau": 1.0, "reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"tau": 1.0, "label_smoothing": 1.5}, ValueError, "label_smoothing must be in"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    x, t = case()
    tau = kwargs.pop("tau")
    with pytest.raises(error, match=match):
        comp_sum_loss(x, t, tau, **kwargs)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_bad_q(q):
    x, t = case()
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\]"):
        generalized_cross_entropy(x, t, q=q)
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\]"):
        GeneralizedCrossEntropyLoss(q)


@pytest.mark.parametrize(
    "logits, target, error, match",
    [
        (torch.randn(3, 4), torch.tensor([0, 1, 4]), ValueError, r"class indices in \[0, 3\]"),
        (torch.randn(3, 4), torch.tensor([0, -1, 2]), ValueError, "got -1"),
        (torch.randn(3, 4), torch.tensor([0, 1]), ValueError, r"target must have shape \(3,\)"),
        (torch.randn(3, 4), torch.rand(3, 5), ValueError, r"logits' shape \(3, 4\)"),
        (torch.randn(3, 4), -torch.rand(3, 4), ValueError, "target must have all values in"),
        (torch.randn(3, 4), torch.tensor([True, False, True]), TypeError, "class indices"),
        (torch.randn(4), torch.tensor(0), ValueError, "logits must have shape"),
        (torch.arange(12).view(3, 4), torch.tensor([0, 1, 2]), TypeError, "floating-point"),
    ],
)
def test_bad_targets_and_logits(logits, target, error, match):
    with pytest.raises(error, match=match):
        comp_sum_loss(logits, target, 1.5)


def test_module_twins():
    x, t = case()
    assert torch.equal(
        CompSumLoss(0.5, reduction="sum")(x, t), comp_sum_loss(x, t, 0.5, reduction="sum")
    )
    assert torch.equal(SumExpLoss()(x, t), sum_exp_loss(x, t))
    assert torch.equal(GeneralizedCrossEntropyLoss()(x, t), generalized_cross_entropy(x, t))
    assert torch.equal(GeneralizedCrossEntropyLoss(0.3)(x, t), comp_sum_loss(x, t, 1.3))
    assert torch.equal(
        MAELoss(ignore_index=2, label_smoothing=0.1)(x, t),
        mae_loss(x, t, ignore_index=2, label_smoothing=0.1),
    )
    assert "tau=0.5" in repr(CompSumLoss(0.5)) and "q=0.7" in repr(GeneralizedCrossEntropyLoss())
    with pytest.raises(ValueError, match="tau must be in"):
        CompSumLoss(-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        MAELoss(reduction="avg")


def test_compiles():
    x = torch.randn(4, 6, requires_grad=True)
    t = torch.tensor([0, 1, -100, 5])
    loss = torch.compile(lambda z, y: comp_sum_loss(z, y, 1.5))(x, t)
    loss.backward()
    torch.testing.assert_close(loss, comp_sum_loss(x.detach(), t, 1.5))
    torch.testing.assert_close(x.grad, grad(lambda z: comp_sum_loss(z, t, 1.5), x))


# --------------------------------------------------------------------------------------
# properties (hypothesis)
# --------------------------------------------------------------------------------------

rows_st = st.lists(st.floats(-30, 30, width=64), min_size=2, max_size=8)


@settings(max_examples=25, deadline=None)
@given(values=rows_st, label=st.integers(0, 7), tau=st.floats(0.0, 4.0))
def test_matches_reference_on_random_rows(values, label, tau):
    x = torch.tensor([values], dtype=torch.float64)
    y = torch.tensor([label % len(values)])
    expected = ref.comp_sum(np64(x), y.numpy(), tau)
    # absolute error ~ eps * |logits| from log p_y = z_y - logsumexp(z), as in cross_entropy
    got = comp_sum_loss(x, y, tau, reduction="none")
    np.testing.assert_allclose(np64(got), expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(values=rows_st, label=st.integers(0, 7), tau=st.floats(1.0, 5.0, exclude_min=True),
       scale=st.floats(1.0, 1e4))  # fmt: skip
def test_bounded_by_one_over_tau_minus_one(values, label, tau, scale):
    x = torch.tensor([values], dtype=torch.float32) * scale
    y = torch.tensor([label % len(values)])
    loss = comp_sum_loss(x, y, tau).item()
    assert 0.0 <= loss <= 1.0 / (tau - 1.0) * (1 + 1e-6)


@settings(max_examples=25, deadline=None)
@given(values=rows_st, label=st.integers(0, 7), taus=st.tuples(st.floats(0, 4), st.floats(0, 4)),
       shift=st.floats(-100, 100))  # fmt: skip
def test_decreasing_in_tau_and_shift_invariant(values, label, taus, shift):
    x = torch.tensor([values], dtype=torch.float64)
    y = torch.tensor([label % len(values)])
    low, high = sorted(taus)
    assert comp_sum_loss(x, y, low) >= comp_sum_loss(x, y, high) * (1 - 1e-12)
    torch.testing.assert_close(comp_sum_loss(x + shift, y, low), comp_sum_loss(x, y, low))


# --------------------------------------------------------------------------------------
# smooth adversarial comp-sum loss (Section 6)
# --------------------------------------------------------------------------------------


def linear_model(n_in=3, n_out=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out).double()


def inputs_and_labels(n=5, n_in=3, n_out=4):
    x = torch.randn(n, n_in, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, n_out, (n,), generator=gen)


def test_nu_zero_is_the_plain_comp_sum_loss():
    model = linear_model()
    x, y = inputs_and_labels()
    calls = []

    def counting(inp):
        calls.append(inp)
        return model(inp)

    for tau in (0.0, 1.0, 1.5):
        loss = adversarial_comp_sum_loss(counting, x, y, tau, nu=0.0)
        assert torch.equal(loss, comp_sum_loss(model(x), y, tau))
    assert len(calls) == 3  # one clean forward each: no attack is run


def test_smoothing_term_is_nonnegative_and_matches_reference_at_the_attack_point():
    model = linear_model()
    x, y = inputs_and_labels()
    y[2] = -100
    x_adv = x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    loss = adversarial_comp_sum_loss(
        model, x, y, 1.5, nu=2.0, attack=lambda inp, tgt: x_adv, reduction="none"
    )
    clean = comp_sum_loss(model(x), y, 1.5, reduction="none")
    kept = (y != -100).numpy()
    term = np.zeros(5)
    term[kept] = ref.smoothing_term(np64(model(x_adv))[kept], np64(model(x))[kept], y[kept])
    np.testing.assert_allclose(np64(loss - clean), 2.0 * term, rtol=1e-10, atol=1e-12)
    assert (term >= 0).all() and (term[kept] > 0).all() and loss[2] == 0


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("soft", [False, True])
def test_probability_targets_and_label_smoothing_take_the_expected_term(soft, eps):
    model = linear_model()
    x, y = inputs_and_labels()
    p = soft_target(5, 4)
    target = p if soft else y
    dense = p if soft else F.one_hot(y, 4).double()
    dense = dense * (1 - eps) + eps / 4
    x_adv = x + 0.1
    loss = adversarial_comp_sum_loss(
        model,
        x,
        target,
        1.0,
        nu=1.0,
        attack=lambda inp, tgt: x_adv,
        reduction="none",
        label_smoothing=eps,
    )
    expected = ref.comp_sum_soft(np64(model(x)), np64(dense), 1.0) + ref.smoothing_term_soft(
        np64(model(x_adv)), np64(model(x)), np64(dense)
    )
    np.testing.assert_allclose(np64(loss), expected, rtol=1e-10)


def test_zero_for_models_whose_score_differences_do_not_move():
    x, y = inputs_and_labels()
    scores = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    direction = torch.randn(3, generator=gen, dtype=torch.float64)

    def constant(inp):
        return scores + 0.0 * inp.sum()

    def shifted(inp):  # the same input-dependent shift on every class
        return scores + (inp @ direction)[:, None]

    for model in (constant, shifted):
        torch.manual_seed(1)
        loss = adversarial_comp_sum_loss(model, x, y, 1.0, nu=5.0, radius=0.5, norm="l2")
        torch.testing.assert_close(loss, comp_sum_loss(model(x), y, 1.0), rtol=1e-12, atol=1e-12)


def test_zero_radius_gives_zero_term():
    model = linear_model()
    x, y = inputs_and_labels()
    loss = adversarial_comp_sum_loss(model, x, y, 1.0, nu=3.0, radius=0.0)
    torch.testing.assert_close(loss, comp_sum_loss(model(x), y, 1.0))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_raises_the_term_towards_the_exact_sup_of_a_linear_model(norm):
    model = linear_model(seed=3)
    x, y = inputs_and_labels()
    radius = 0.1
    exact = ref.linear_sup_l2 if norm == "l2" else ref.linear_sup_linf
    w = np64(model.weight)
    sup = np.array([exact(w, int(label), radius) for label in y])
    clean = comp_sum_loss(model(x), y, 1.0, reduction="none")

    def term(**kwargs):
        torch.manual_seed(0)
        out = adversarial_comp_sum_loss(
            model, x, y, 1.0, nu=1.0, radius=radius, norm=norm, reduction="none", **kwargs
        )
        return np64(out - clean)

    at_start = term(steps=0)
    found = term(steps=30)
    assert (found > 0).all() and (found >= at_start - 1e-12).all()  # above the clean point's 0
    assert (found <= sup + 1e-9).all()  # an attack gives a lower bound of the sup
    if norm == "l2":  # normalised ascent on ||A d|| is a power iteration: it reaches the sup
        np.testing.assert_allclose(found, sup, rtol=1e-3)
    else:
        assert (found >= 0.5 * sup).all()


def test_attack_stays_in_the_ball_and_the_input_range():
    model = linear_model()
    x, y = inputs_and_labels()
    x = x.clamp(-0.5, 0.5)
    seen = []

    def spy(inp):
        seen.append(inp.detach().clone())
        return model(inp)

    torch.manual_seed(0)
    adversarial_comp_sum_loss(spy, x, y, 1.0, nu=1.0, radius=0.2, input_range=(-0.5, 0.5))
    assert len(seen) == 1 + 1 + 10 + 1  # clean, attack's clean, 10 steps, outer adversarial
    for inp in seen:
        assert ((inp - x).abs() <= 0.2 + 1e-12).all()
        assert (inp.abs() <= 0.5).all()
    torch.manual_seed(0)
    seen.clear()
    adversarial_comp_sum_loss(spy, x, y, 1.0, nu=1.0, radius=0.2, norm="l2")
    for inp in seen:
        assert ((inp - x).norm(dim=1) <= 0.2 + 1e-12).all()


class Recorder(torch.nn.Module):
    """A small network with batch norm and dropout that records its mode at each call."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.1)
        )
        self.head = torch.nn.Linear(8, 4)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.head(self.body(x))


def test_model_mode_is_restored_and_no_gradient_leaks():
    torch.manual_seed(0)
    model = Recorder().double()
    x, y = inputs_and_labels()
    model.train()
    model.body[2].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    loss = adversarial_comp_sum_loss(model, x, y, 1.0, nu=1.0, steps=3)
    assert {name: m.training for name, m in model.named_modules()} == before
    # clean forward in train mode, attack in eval mode, adversarial forward in train mode
    assert model.modes == [True, False, False, False, False, True]
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # eval stays eval, and the attack can also run in the model's own mode
    model.eval()
    model.modes.clear()
    adversarial_comp_sum_loss(model, x, y, 1.0, nu=1.0, steps=1)
    assert not model.training and model.modes == [False] * 4
    model.train()
    model.modes.clear()
    adversarial_comp_sum_loss(model, x, y, 1.0, nu=1.0, steps=1, eval_during_attack=False)
    assert model.training and model.modes == [True] * 4


def test_mode_is_restored_when_the_attack_fails():
    model = Recorder().double().train()
    x, y = inputs_and_labels()

    def broken(inp, tgt):
        raise RuntimeError("attack failed")

    with pytest.raises(RuntimeError, match="attack failed"):
        adversarial_comp_sum_loss(model, x, y, 1.0, nu=1.0, attack=broken)
    assert all(m.training for m in model.modules())


def test_gradient_is_clean_loss_plus_term_at_the_fixed_attack_point():
    model = linear_model()
    x, y = inputs_and_labels()
    x_adv = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    loss = adversarial_comp_sum_loss(model, x, y, 0.5, nu=0.7, attack=lambda i, t: x_adv)
    got = torch.autograd.grad(loss, list(model.parameters()))
    z, z_adv = model(x), model(x_adv)
    d = z_adv - z
    diff = d - d.gather(1, y[:, None])
    manual = comp_sum_loss(z, y, 0.5) + 0.7 * diff.norm(dim=1).mean()
    for a, b in zip(got, torch.autograd.grad(manual, list(model.parameters()))):
        torch.testing.assert_close(a, b)


def test_gradcheck_through_the_model_parameters():
    x, y = inputs_and_labels(n=3)
    x_adv = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    p = soft_target(3, 4)
    for target in (y, p):
        assert torch.autograd.gradcheck(
            lambda w, target=target: adversarial_comp_sum_loss(
                lambda inp: inp @ w.T, x, target, 1.5, nu=0.5, attack=lambda i, t: x_adv
            ),
            (weight,),
        )


def test_half_precision_model():
    model = linear_model().to(torch.bfloat16)
    x, y = inputs_and_labels()
    x = x.to(torch.bfloat16)
    torch.manual_seed(0)
    loss = adversarial_comp_sum_loss(model, x, y, 1.0, nu=1.0, radius=0.1)
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()


def test_module_twin_and_all_ignored():
    model = linear_model()
    x, y = inputs_and_labels()
    twin = AdversarialCompSumLoss(1.5, nu=0.5, radius=0.1, norm="l2", steps=5)
    torch.manual_seed(0)
    a = twin(model, x, y)
    torch.manual_seed(0)
    b = adversarial_comp_sum_loss(model, x, y, 1.5, nu=0.5, radius=0.1, norm="l2", steps=5)
    assert torch.equal(a, b)
    assert "nu=0.5" in repr(twin) and "norm='l2'" in repr(twin)
    assert not list(twin.parameters())  # the model is not stored
    none = torch.full((5,), -100)
    loss = adversarial_comp_sum_loss(model, x, none, 1.0, nu=1.0)
    loss.backward()
    assert loss.item() == 0.0 and all((p.grad == 0).all() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"nu": -1.0}, ValueError, r"nu must be in \[0, inf\]"),
        ({"nu": 1.0, "radius": -0.1}, ValueError, "radius must be in"),
        ({"nu": 1.0, "norm": "l1"}, ValueError, "norm must be one of 'linf', 'l2'"),
        ({"nu": 1.0, "steps": -1}, ValueError, "steps must be in"),
        ({"nu": 1.0, "step_size": -1.0}, ValueError, "step_size must be in"),
        ({"nu": 1.0, "random_start": 1}, TypeError, "random_start must be a bool"),
        ({"nu": 1.0, "input_range": [0, 1]}, TypeError, "input_range must be a"),
        ({"nu": 1.0, "input_range": (1.0, 0.0)}, ValueError, r"input_range\[1\] must be in"),
        ({"nu": 1.0, "attack": 3}, TypeError, "attack must be callable"),
        ({"nu": 1.0, "attack": lambda i, t: i[:2]}, ValueError, "attack must return perturbed"),
        ({"nu": 1.0, "tau": -1.0}, ValueError, "tau must be in"),
    ],
)
def test_adversarial_errors(kwargs, error, match):
    model = linear_model()
    x, y = inputs_and_labels()
    tau = kwargs.pop("tau", 1.0)
    with pytest.raises(error, match=match):
        adversarial_comp_sum_loss(model, x, y, tau, **kwargs)


def test_adversarial_bad_model_and_inputs():
    x, y = inputs_and_labels()
    with pytest.raises(TypeError, match="model must be callable"):
        adversarial_comp_sum_loss("model", x, y, 1.0, nu=1.0)
    with pytest.raises(TypeError, match="inputs must be a floating-point"):
        adversarial_comp_sum_loss(
            linear_model(), torch.ones(5, 3, dtype=torch.long), y, 1.0, nu=1.0
        )
    with pytest.raises(ValueError, match="class indices"):
        adversarial_comp_sum_loss(linear_model(), x, y + 4, 1.0, nu=1.0)
    with pytest.raises(TypeError, match="nu"):
        adversarial_comp_sum_loss(linear_model(), x, y, 1.0)


# --- issue 11: the empty batch of the l2 attack, bool flags, norms near the maximum -------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversarial_empty_batch_gives_zero_for_every_norm(norm):
    w = torch.randn(3, 5, dtype=torch.float64)
    x = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = adversarial_comp_sum_loss(
            lambda z: z @ w, x, torch.zeros(0, dtype=torch.long), 0.5, nu=1.0, norm=norm,
            reduction=reduction,
        )  # fmt: skip
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, x, allow_unused=True)
        assert g is None or g.shape == x.shape


@pytest.mark.parametrize("flag", ["random_start", "eval_during_attack"])
def test_adversarial_module_rejects_a_non_bool_flag_at_construction(flag):
    with pytest.raises(TypeError, match=flag):
        AdversarialCompSumLoss(0.5, nu=1.0, **{flag: 1})


def test_l2_attack_norm_is_finite_near_the_float32_maximum():
    from softmaxkit.losses.adversarial import _per_sample_norm

    x = torch.tensor([[2e38, -2e38, 1.0], [0.0, 0.0, 0.0]])  # the norm 2.83e38 is finite
    got = _per_sample_norm(x, 2).squeeze(1).double()
    want = torch.linalg.vector_norm(x.double(), 2, dim=1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
