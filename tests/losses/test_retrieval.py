"""DEXML retrieval losses: decoupled softmax, the plain multi-positive softmax, soft top-k."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.retrieval import (
    DecoupledSoftmaxLoss,
    MultiPositiveSoftmaxLoss,
    SoftTopKLoss,
    decoupled_softmax_loss,
    multi_positive_softmax_loss,
    soft_topk_loss,
)
from tests.helpers import HALF_DTYPES, np64
from tests.reference import retrieval_ref as ref

gen = torch.Generator().manual_seed(5)
INF = math.inf


def case(n=6, labels=9, rate=0.3, scale=3.0, dtype=torch.float64, seed=None):
    g = gen if seed is None else torch.Generator().manual_seed(seed)
    x = torch.randn(n, labels, generator=g, dtype=dtype) * scale
    mask = torch.rand(n, labels, generator=g) < rate
    mask[0, 0] = True
    mask[0, -1] = True  # a positive at the last label index (the official filter drops it)
    if n > 1:
        mask[1] = False  # a row without positives
    return x, mask


def topk(x, mask, k=3, **kw):
    return soft_topk_loss(x, mask, k, n_iter=kw.pop("n_iter", 64), **kw)


# every loss as (function, float64 reference) for the shared tests
LOSSES = {
    "decoupled": (decoupled_softmax_loss, ref.decoupled_softmax),
    "softmax": (multi_positive_softmax_loss, ref.multi_positive_softmax),
    "topk": (topk, lambda x, m, w=None: ref.soft_topk(x, m, 3, 2.0, w)),
}


def grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x, *args, **kw), x)
    return g


# --- against the float64 reference ----------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference_for_every_reduction(name, weighted):
    fn, reference = LOSSES[name]
    x, mask = case()
    x[2, 3] = -INF  # a masked label
    mask[2, 3] = False
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 if weighted else None
    expected = reference(np64(x), mask.numpy(), None if w is None else np64(w))
    torch.testing.assert_close(
        fn(x, mask, weights=w, reduction="none"), torch.from_numpy(expected), rtol=1e-10, atol=0
    )
    assert math.isclose(fn(x, mask, weights=w, reduction="sum").item(), expected.sum())
    with_positive = mask.any(1).numpy()
    assert math.isclose(fn(x, mask, weights=w).item(), expected[with_positive].mean())


def test_plain_softmax_is_not_normalised_unless_asked():
    x, mask = case()
    counts = mask.sum(1).clamp(min=1)
    plain = multi_positive_softmax_loss(x, mask, reduction="none")
    torch.testing.assert_close(
        multi_positive_softmax_loss(x, mask, normalize=True, reduction="none"), plain / counts
    )
    expected = ref.multi_positive_softmax(np64(x), mask.numpy(), normalize=True)
    torch.testing.assert_close(
        multi_positive_softmax_loss(x, mask, normalize=True, reduction="none"),
        torch.from_numpy(expected),
    )


@pytest.mark.parametrize("k", [1, 4, 8])
def test_soft_topk_matches_reference_for_each_k(k):
    x, mask = case(n=5, labels=9)
    expected = ref.soft_topk(np64(x), mask.numpy(), k, 1.5)
    got = soft_topk_loss(x, mask, k, alpha=1.5, n_iter=64, reduction="none")
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-10, atol=1e-12)


def test_soft_topk_float32_with_official_iterations_is_close():
    x, mask = case(n=8, labels=200, rate=0.05, scale=8.0, dtype=torch.float32)
    expected = ref.soft_topk(np64(x), mask.numpy(), 5, 2.0)
    got = soft_topk_loss(x, mask, 5, reduction="none")  # n_iter=32 in float32
    np.testing.assert_allclose(np64(got), expected, rtol=1e-4, atol=1e-5)


# --- the paper's properties -----------------------------------------------------------------


def test_single_positive_equals_cross_entropy():
    x, _ = case(n=7, labels=6)
    target = torch.randint(0, 6, (7,), generator=gen)
    mask = F.one_hot(target, 6).bool()
    for fn in (decoupled_softmax_loss, multi_positive_softmax_loss):
        for reduction in ("mean", "sum", "none"):
            torch.testing.assert_close(
                fn(x, mask, reduction=reduction), F.cross_entropy(x, target, reduction=reduction)
            )
        torch.testing.assert_close(grad(fn, x, mask), grad(lambda z: F.cross_entropy(z, target), x))


def test_decoupled_is_the_mean_of_single_positive_cross_entropies_without_the_others():
    # each positive competes only with the negatives: delete the other positives' columns
    x, mask = case(n=4, labels=8, rate=0.5)
    per_row = decoupled_softmax_loss(x, mask, reduction="none")
    for i in range(4):
        pos = mask[i].nonzero().flatten().tolist()
        terms = []
        for p in pos:
            keep = [j for j in range(8) if j == p or not mask[i, j]]
            terms.append(F.cross_entropy(x[i, keep][None], torch.tensor([keep.index(p)])))
        expected = torch.stack(terms).mean() if terms else torch.tensor(0.0, dtype=x.dtype)
        torch.testing.assert_close(per_row[i], expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), raise_by=st.floats(0.1, 30.0))
def test_raising_a_positive_never_raises_the_other_positives_losses(seed, raise_by):
    x, mask = case(n=3, labels=7, rate=0.5, seed=seed)
    mask[:, :2] = True
    bumped = x.clone()
    bumped[:, 0] += raise_by
    # the other positives' part of the row loss: the total minus positive 0's own term
    own = F.cross_entropy  # positive 0 alone against the negatives

    def others(z):
        total = decoupled_softmax_loss(z, mask, reduction="none") * mask.sum(1)
        negatives = torch.where(mask, -INF, z)
        negatives[:, 0] = z[:, 0]
        return total - own(negatives, torch.zeros(3, dtype=torch.long), reduction="none")

    torch.testing.assert_close(others(bumped), others(x), rtol=1e-9, atol=1e-9)
    assert (
        decoupled_softmax_loss(bumped, mask, reduction="none")
        <= decoupled_softmax_loss(x, mask, reduction="none") + 1e-12
    ).all()


def test_plain_softmax_penalises_a_confident_positive_decoupled_does_not():
    # two positives; once positive 0 holds more than half the mass, the plain softmax loss
    # pushes it down (positive gradient), the decoupled loss still pushes it up
    x = torch.tensor([[4.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False]])
    assert grad(multi_positive_softmax_loss, x, mask)[0, 0] > 0
    assert grad(decoupled_softmax_loss, x, mask)[0, 0] < 0
    assert (grad(decoupled_softmax_loss, x, mask)[0, :2] < 0).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), shift=st.floats(-50.0, 50.0))
def test_adding_a_constant_to_a_row_changes_nothing(seed, shift):
    x, mask = case(n=4, labels=8, seed=seed)
    shifts = torch.tensor([shift, 0.0, -shift, 2 * shift], dtype=x.dtype)[:, None]
    for fn in (decoupled_softmax_loss, multi_positive_softmax_loss, topk):
        torch.testing.assert_close(
            fn(x + shifts, mask, reduction="none"),
            fn(x, mask, reduction="none"),
            rtol=1e-9,
            atol=1e-9,
        )


def memberships(x, k, alpha=2.0, n_iter=64):
    """sigmoid(alpha (s_ij + t_i)) read off the public loss: one single-positive row per label."""
    n, labels = x.shape
    rows = x.repeat_interleave(labels, 0)
    mask = torch.eye(labels, dtype=torch.bool).repeat(n, 1)
    if isinstance(k, torch.Tensor):
        k = k.repeat_interleave(labels)
    loss = soft_topk_loss(rows, mask, k, alpha=alpha, n_iter=n_iter, reduction="none")
    return torch.exp(-loss).view(n, labels)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 9), alpha=st.floats(0.1, 20.0))
def test_soft_topk_threshold_satisfies_the_sum_constraint(seed, k, alpha):
    x, _ = case(n=3, labels=10, scale=5.0, seed=seed)
    x[0, 0] = -INF  # takes no mass
    ks = torch.tensor([min(k, 8), k, k])  # row 0 has 9 finite scores
    member = memberships(x, ks, alpha)
    torch.testing.assert_close(member.sum(1), ks.to(x.dtype))
    assert member[0, 0] == 0
    # float32 with the official 32 steps: the constraint holds to float32 rounding
    member32 = memberships(x.float(), 3, alpha, n_iter=32)
    torch.testing.assert_close(member32.sum(1), torch.full((3,), 3.0), rtol=0, atol=2e-4)


def test_soft_topk_approaches_hard_topk_as_alpha_grows():
    x = torch.randperm(12, generator=gen).to(torch.float64).view(2, 6) / 4  # gaps of 0.25
    k = 2
    hard = torch.zeros_like(x).scatter_(1, x.topk(k, 1).indices, 1.0)
    errors = [(memberships(x, k, alpha) - hard).abs().max().item() for alpha in (1, 10, 200)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6
    assert errors[0] > 0.1


def test_soft_topk_gradient_is_the_implicit_one():
    # autograd through the bisection itself only reaches the bounds' argmax/argmin; the
    # implicit gradient is autograd through one Newton step from the (detached) root
    x, mask = case(n=4, labels=7, rate=0.4)
    alpha, k = 2.0, 3
    counts = mask.sum(1).clamp(min=1)

    def unrolled(z):
        with torch.no_grad():
            lo = -z.amax(1) - 10 / alpha
            hi = -z.amin(1) + 10 / alpha
            for _ in range(80):
                mid = (lo + hi) / 2
                below = torch.sigmoid(alpha * (z + mid[:, None])).sum(1) < k
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            t0 = (lo + hi) / 2
        sig = torch.sigmoid(alpha * (z + t0[:, None]))
        slope = (alpha * sig * (1 - sig)).sum(1)
        t = t0 - (sig.sum(1) - k) / slope  # one differentiable Newton step
        log_member = F.logsigmoid(alpha * (z + t[:, None]))
        return -(torch.where(mask, log_member, 0.0).sum(1) / counts).sum()

    ours = grad(lambda z: soft_topk_loss(z, mask, k, alpha=alpha, n_iter=64, reduction="sum"), x)
    torch.testing.assert_close(ours, grad(unrolled, x), rtol=1e-8, atol=1e-10)


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(name, reduction):
    fn = LOSSES[name][0]
    x, mask = case(n=4, labels=6, rate=0.4)
    x[2, 5] = -INF
    mask[2, 5] = False
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64) + 0.5
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fn(z, mask, weights=w, reduction=reduction), (x,))
    x3 = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask3 = torch.rand(2, 6, 3, generator=gen) < 0.4
    assert torch.autograd.gradcheck(lambda z: fn(z, mask3, reduction=reduction), (x3,))


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_with_sampling(name):
    fn = LOSSES[name][0]
    x, mask = case(n=4, labels=8, rate=0.6)
    mask[:, 4:] = False  # at most 4 positives: soft top-k keeps k=3 < the labels left
    x.requires_grad_()

    def sampled(z):
        g = torch.Generator().manual_seed(0)  # the same draw at every evaluation
        return fn(z, mask, num_sampled_positives=1, generator=g, reduction="sum")

    assert torch.autograd.gradcheck(sampled, (x,))


# --- masking, extremes, dtypes, shapes ------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_neg_inf_scores_equal_slicing_the_labels_off(name):
    fn = LOSSES[name][0]
    x, mask = case(n=4, labels=8, rate=0.4)
    mask[:, 6:] = False
    masked = x.clone()
    masked[:, 6:] = -INF
    full = fn(masked, mask, reduction="none")
    torch.testing.assert_close(full, fn(x[:, :6], mask[:, :6], reduction="none"))
    g = grad(fn, masked, mask)
    assert torch.isfinite(g).all() and (g[:, 6:] == 0).all()
    torch.testing.assert_close(g[:, :6], grad(fn, x[:, :6], mask[:, :6]))


@pytest.mark.parametrize("fn", [decoupled_softmax_loss, multi_positive_softmax_loss])
def test_fully_masked_rows_give_zero_and_zero_gradient(fn):
    x, mask = case(n=3, labels=5)
    x[0] = -INF  # a row with positives and nothing left
    x[2, ~mask[2]] = -INF  # decoupled: no negatives left
    out = fn(x, mask, reduction="none")
    g = grad(fn, x, mask)
    assert out[0] == 0 and torch.isfinite(g).all() and (g[0] == 0).all()
    if fn is decoupled_softmax_loss and mask[2].any():
        assert out[2] == 0 and (g[2] == 0).all()


def test_rows_without_positives_and_all_empty_batch():
    x, mask = case()
    for fn in (decoupled_softmax_loss, multi_positive_softmax_loss, topk):
        per_row = fn(x, mask, reduction="none")
        assert per_row[1] == 0
        torch.testing.assert_close(fn(x, mask), per_row[mask.any(1)].mean())
        none = torch.zeros_like(mask)
        z = x.clone().requires_grad_()
        out = fn(z, none)
        out.backward()
        assert out.item() == 0.0 and (z.grad == 0).all()


@pytest.mark.parametrize("name", LOSSES)
def test_extreme_scores_keep_loss_and_gradient_finite(name):
    fn = LOSSES[name][0]
    x, mask = case(n=5, labels=12, scale=1e4, dtype=torch.float32)
    x[3, 4] = -INF
    mask[3, 4] = False
    x.requires_grad_()
    out = fn(x, mask, num_sampled_positives=None)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


def test_a_neg_inf_positive_has_infinite_loss_and_finite_gradient():
    x, mask = case(n=3, labels=5)
    x[0, 0] = -INF
    for fn in (decoupled_softmax_loss, multi_positive_softmax_loss, topk):
        assert fn(x, mask, reduction="none")[0] == INF
        assert torch.isfinite(grad(fn, x, mask)).all()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(name, dtype):
    fn = LOSSES[name][0]
    x, mask = case(n=5, labels=10, dtype=torch.float32)
    xh = x.to(dtype).requires_grad_()
    out = fn(xh, mask, n_iter=32) if name == "topk" else fn(xh, mask)
    assert out.dtype == dtype
    expected = fn(xh.detach().float(), mask)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    out.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()
    g32 = grad(fn, xh.detach().float(), mask)
    torch.testing.assert_close(xh.grad.float(), g32, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", LOSSES)
def test_extra_dims_layout(name):
    fn = LOSSES[name][0]
    x = torch.randn(3, 7, 2, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 7, 2, generator=gen) < 0.4
    flat = fn(x.movedim(1, -1).reshape(6, 7), mask.movedim(1, -1).reshape(6, 7), reduction="none")
    torch.testing.assert_close(fn(x, mask, reduction="none"), flat.view(3, 2))
    torch.testing.assert_close(fn(x, mask), flat[mask.movedim(1, -1).reshape(6, 7).any(1)].mean())


def test_empty_batch():
    for fn in (decoupled_softmax_loss, multi_positive_softmax_loss, topk):
        x = torch.randn(0, 6, requires_grad=True)
        mask = torch.zeros(0, 6, dtype=torch.bool)
        assert fn(x, mask).item() == 0.0
        assert fn(x, mask, reduction="none").shape == (0,)
        fn(x, mask, reduction="sum").backward()
    assert decoupled_softmax_loss(torch.randn(3, 0), torch.zeros(3, 0, dtype=torch.bool)) == 0


def test_many_rows_and_labels_across_blocks():
    # rows longer than one block holds and more rows than a block: against autograd
    x = torch.randn(300, 5000, generator=gen)
    mask = torch.rand(300, 5000, generator=gen) < 0.003
    rows, cols = mask.nonzero(as_tuple=True)

    def naive(z):
        lse = torch.logsumexp(z.masked_fill(mask, -INF), 1)[rows]
        sp = z[rows, cols]
        return (torch.logaddexp(lse, sp) - sp).div(mask.sum(1)[rows]).sum()

    torch.testing.assert_close(decoupled_softmax_loss(x, mask, reduction="sum"), naive(x))
    torch.testing.assert_close(
        grad(decoupled_softmax_loss, x, mask, reduction="sum"), grad(naive, x), atol=1e-6, rtol=1e-4
    )


def test_soft_topk_across_blocks_matches_full_tensor_bisection():
    # the official algorithm on whole tensors, the gradient by one Newton step (see above)
    x = torch.randn(300, 5000, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(300, 5000, generator=gen) < 0.003
    k, alpha = 7, 2.0

    def full(z):
        with torch.no_grad():
            lo, hi = -z.amax(1) - 10 / alpha, -z.amin(1) + 10 / alpha
            for _ in range(64):
                mid = (lo + hi) / 2
                below = torch.sigmoid(alpha * (z + mid[:, None])).sum(1) < k
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            t0 = (lo + hi) / 2
        sig = torch.sigmoid(alpha * (z + t0[:, None]))
        t = t0 - (sig.sum(1) - k) / (alpha * sig * (1 - sig)).sum(1)
        log_member = F.logsigmoid(alpha * (z + t[:, None]))
        return -(torch.where(mask, log_member, 0.0).sum(1) / mask.sum(1).clamp(min=1)).sum()

    ours = lambda z: soft_topk_loss(z, mask, k, n_iter=64, reduction="sum")  # noqa: E731
    torch.testing.assert_close(ours(x), full(x))
    torch.testing.assert_close(grad(ours, x), grad(full, x), rtol=1e-7, atol=1e-12)


# --- options --------------------------------------------------------------------------------


def test_k_per_row_and_num_positives():
    x, mask = case(n=5, labels=9)
    ks = torch.tensor([1, 2, 3, 4, 8])
    per_row = soft_topk_loss(x, mask, ks, n_iter=64, reduction="none")
    for i in range(5):
        torch.testing.assert_close(
            per_row[i], soft_topk_loss(x[i : i + 1], mask[i : i + 1], int(ks[i]), n_iter=64)
        )
    counts = mask.sum(1).clamp(min=1)
    torch.testing.assert_close(
        soft_topk_loss(x, mask, "num_positives", n_iter=64, reduction="none"),
        soft_topk_loss(x, mask, counts, n_iter=64, reduction="none"),
    )
    x3 = torch.randn(2, 6, 3, generator=gen)
    mask3 = torch.rand(2, 6, 3, generator=gen) < 0.4
    k3 = torch.randint(1, 6, (2, 3), generator=gen)
    flat = soft_topk_loss(
        x3.movedim(1, -1).reshape(6, 6),
        mask3.movedim(1, -1).reshape(6, 6),
        k3.reshape(6),
        reduction="none",
    )
    torch.testing.assert_close(soft_topk_loss(x3, mask3, k3, reduction="none"), flat.view(2, 3))


def test_sampling_is_reproducible_and_keeps_small_rows():
    x, mask = case(n=6, labels=10, rate=0.5)
    one = lambda seed: decoupled_softmax_loss(  # noqa: E731
        x,
        mask,
        num_sampled_positives=1,
        generator=torch.Generator().manual_seed(seed),
        reduction="none",
    )
    torch.testing.assert_close(one(3), one(3))
    # drawing at least as many positives as a row has keeps them all
    for fn in (decoupled_softmax_loss, multi_positive_softmax_loss, topk):
        torch.testing.assert_close(
            fn(x, mask, num_sampled_positives=10, reduction="none"), fn(x, mask, reduction="none")
        )


@pytest.mark.parametrize("weighted", [False, True])
def test_sampling_draws_in_proportion_and_excludes_the_rest(weighted):
    # every row: positives 0 and 1; which one was drawn shows in the row's loss
    n = 4000
    x = torch.tensor([[2.0, -1.0, 0.5, 0.0, -0.5]], dtype=torch.float64).repeat(n, 1)
    mask = torch.zeros(n, 5, dtype=torch.bool)
    mask[:, :2] = True
    w = torch.tensor([[1.0, 3.0, 0.0, 0.0, 0.0]], dtype=torch.float64).repeat(n, 1)
    w = w if weighted else None
    g = torch.Generator().manual_seed(1)
    for fn, alone in (
        (decoupled_softmax_loss, lambda p: F.cross_entropy(x[:1, [p, 2, 3, 4]], torch.tensor([0]))),
        (
            lambda *a, **kw: topk(*a, k=2, **kw),
            lambda p: topk(x[:1, [p, 2, 3, 4]], torch.tensor([[True, False, False, False]]), k=2),
        ),
    ):
        out = fn(x, mask, weights=w, num_sampled_positives=1, generator=g, reduction="none")
        scale = (1.0, 3.0) if weighted else (1.0, 1.0)
        first, second = scale[0] * alone(0), scale[1] * alone(1)
        is_first = torch.isclose(out, first.expand(n))
        assert (is_first | torch.isclose(out, second.expand(n))).all()
        share = is_first.double().mean().item()
        assert abs(share - (0.25 if weighted else 0.5)) < 0.04


def test_plain_softmax_sampling_keeps_unsampled_positives_in_the_denominator():
    x = torch.tensor([[2.0, -1.0, 0.5, 0.0]], dtype=torch.float64).repeat(200, 1)
    mask = torch.tensor([[True, True, False, False]]).repeat(200, 1)
    out = multi_positive_softmax_loss(
        x,
        mask,
        num_sampled_positives=1,
        generator=torch.Generator().manual_seed(2),
        reduction="none",
    )
    expected = -torch.log_softmax(x[0], 0)[:2]
    assert torch.isclose(out[:, None], expected[None]).any(1).all()


def test_zero_weight_positives_are_never_drawn():
    x, mask = case(n=5, labels=8, rate=0.5)
    mask[:, :2] = True
    w = torch.zeros_like(x)
    w[:, 0] = 1.0
    sampled = decoupled_softmax_loss(
        x,
        mask,
        weights=w,
        num_sampled_positives=1,
        generator=torch.Generator().manual_seed(0),
        reduction="none",
    )
    negatives = torch.where(mask, -INF, x)
    negatives[:, 0] = x[:, 0]
    torch.testing.assert_close(
        sampled, F.cross_entropy(negatives, torch.zeros(5, dtype=torch.long), reduction="none")
    )


def test_modules():
    x, mask = case()
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    assert torch.equal(
        DecoupledSoftmaxLoss(reduction="sum")(x, mask, w),
        decoupled_softmax_loss(x, mask, weights=w, reduction="sum"),
    )
    assert torch.equal(
        MultiPositiveSoftmaxLoss(normalize=True)(x, mask),
        multi_positive_softmax_loss(x, mask, normalize=True),
    )
    assert torch.equal(
        SoftTopKLoss(3, alpha=1.0, n_iter=40)(x, mask),
        soft_topk_loss(x, mask, 3, alpha=1.0, n_iter=40),
    )
    assert repr(DecoupledSoftmaxLoss()) == (
        "DecoupledSoftmaxLoss(num_sampled_positives=None, reduction='mean')"
    )
    assert "k=3, alpha=1.0, n_iter=40" in repr(SoftTopKLoss(3, alpha=1.0, n_iter=40))
    assert "normalize=True" in repr(MultiPositiveSoftmaxLoss(normalize=True))


def test_runs_under_torch_compile():
    x, mask = case(n=4, labels=9, dtype=torch.float32)

    def all_three(z):
        return (
            decoupled_softmax_loss(z, mask)
            + multi_positive_softmax_loss(z, mask)
            + soft_topk_loss(z, mask, 3)
        )

    z = x.clone().requires_grad_()
    out = torch.compile(all_three, backend="aot_eager")(z)
    (g,) = torch.autograd.grad(out, z)
    torch.testing.assert_close(out, all_three(x))
    torch.testing.assert_close(g, grad(all_three, x))


# --- errors ---------------------------------------------------------------------------------


S, M = torch.randn(3, 5), torch.rand(3, 5) < 0.4


@pytest.mark.parametrize(
    "fn, args, kwargs, error, match",
    [
        (decoupled_softmax_loss, (S, M.float()), {}, TypeError, "positives_mask must be a boolean"),
        (decoupled_softmax_loss, (S, M[:, :4]), {}, ValueError, r"positives_mask must have the "),
        (decoupled_softmax_loss, (S.long(), M), {}, TypeError, "scores must be a floating-point"),
        (decoupled_softmax_loss, (S[0], M[0]), {}, ValueError, r"scores must have shape \(N, C\)"),
        (decoupled_softmax_loss, (S, M), {"reduction": "avg"}, ValueError, "reduction must be"),
        (decoupled_softmax_loss, (S, M), {"weights": -S.abs()}, ValueError, "weights must have"),
        (decoupled_softmax_loss, (S, M), {"weights": S[:2]}, ValueError, "weights must have the"),
        (decoupled_softmax_loss, (S, M), {"weights": M}, TypeError, "weights must be a floating"),
        (
            decoupled_softmax_loss,
            (S, M),
            {"num_sampled_positives": 0},
            ValueError,
            "num_sampled_positives must be in",
        ),
        (decoupled_softmax_loss, (S, M), {"generator": 3}, TypeError, "generator must be"),
        (multi_positive_softmax_loss, (S, M), {"normalize": 1}, TypeError, "normalize must be"),
        (soft_topk_loss, (S, M, 0), {}, ValueError, r"k must be in \[1, 4\], got 0"),
        (soft_topk_loss, (S, M, 5), {}, ValueError, r"k must be in \[1, 4\], got 5"),
        (soft_topk_loss, (S, M, 2.0), {}, TypeError, "k must be an int"),
        (soft_topk_loss, (S, M, "num_pos"), {}, ValueError, "k must be one of 'num_positives'"),
        (soft_topk_loss, (S, M, torch.tensor([1, 2])), {}, ValueError, r"shape \(3,\)"),
        (soft_topk_loss, (S, M, torch.tensor([1.0, 2, 3])), {}, TypeError, "integer tensor"),
        (soft_topk_loss, (S, M, torch.tensor([1, 2, 5])), {}, ValueError, "k must have all"),
        (soft_topk_loss, (S, M, 2), {"alpha": 0.0}, ValueError, r"alpha must be in \(0, inf"),
        (soft_topk_loss, (S, M, 2), {"n_iter": 0}, ValueError, "n_iter must be in"),
        (
            soft_topk_loss,
            (S, torch.ones(3, 5, dtype=torch.bool), "num_positives"),
            {},
            ValueError,
            "needs fewer positives than labels",
        ),
        (
            soft_topk_loss,
            (
                torch.tensor([[0.0, 1.0, -INF, -INF]]),
                torch.tensor([[True, False, False, False]]),
                2,
            ),
            {},
            ValueError,
            "smaller than the number of labels with a finite score",
        ),
    ],
)
def test_errors(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)
