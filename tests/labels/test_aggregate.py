"""Crowd soft labels (Wright & Augenstein, arXiv:2212.09409): reference, recovery, edges, errors."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.labels import (
    METHODS,
    DawidSkeneFit,
    aggregate_soft_labels,
    average_soft_labels,
    dawid_skene,
    glad,
    mace,
    softmax_soft_labels,
    standard_soft_labels,
    wawa,
    zero_based_skill,
)
from softmaxkit.labels.aggregate import _mace_init
from tests.reference import labels_ref as ref


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The EM loops run many small ops; on a shared 2-core machine thread hand-offs cost
    # far more than the ops themselves. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def crowd(
    n_items=500,
    n_annotators=30,
    k=4,
    observe=0.2,
    good=10,
    good_acc=0.85,
    bad_acc=0.3,
    seed=0,
):
    """Dawid-Skene crowd: ``good`` annotators of accuracy ``good_acc``, the rest ``bad_acc``;
    random off-diagonal confusion. Returns (annotations, truth, confusion[m, true, answer])."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(k, (n_items,), generator=g)
    acc = torch.full((n_annotators,), bad_acc, dtype=torch.float64)
    acc[:good] = good_acc
    off = (torch.rand(n_annotators, k, k, generator=g, dtype=torch.float64) + 0.2) * (
        1 - torch.eye(k, dtype=torch.float64)
    )
    off = off / off.sum(-1, keepdim=True) * (1 - acc).view(-1, 1, 1)
    confusion = off + torch.eye(k, dtype=torch.float64) * acc.view(-1, 1, 1)
    probs = confusion[:, truth, :].permute(1, 0, 2).reshape(-1, k)
    answers = torch.multinomial(probs, 1, generator=g).view(n_items, n_annotators)
    seen = torch.rand(n_items, n_annotators, generator=g) < observe
    return torch.where(seen, answers, -1), truth, confusion


def small_crowd(seed, k=3, n_items=40, n_annotators=7, observe=0.6):
    a, _, _ = crowd(n_items, n_annotators, k, observe, good=3, seed=seed)
    a[3] = -1  # an item nobody annotated
    a[:, 5] = -1  # an annotator who annotated nothing
    return a


@functools.cache
def method_outputs(seed):
    """Every method's soft labels on ``crowd(seed=seed)`` (computed once per seed)."""
    a, truth, _ = crowd(seed=seed)
    return a, truth, {name: fn(a, 4) for name, fn in METHODS.items()}


def accuracy(probs, truth):
    return float((probs.argmax(-1) == truth).double().mean())


REFERENCE = {
    "standard": (standard_soft_labels, ref.standard),
    "softmax": (softmax_soft_labels, ref.softmax),
    "ds": (dawid_skene, lambda a, k: ref.dawid_skene(a, k)[0]),
    "wawa": (wawa, ref.wawa),
    "zbs": (zero_based_skill, ref.zero_based_skill),
}


# ---- against the float64 transcriptions ------------------------------------------------


@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 5)])
def test_matches_reference(name, seed, k):
    fn, reference = REFERENCE[name]
    a = small_crowd(seed, k)
    got = fn(a, k, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), reference(a.numpy(), k), atol=1e-10, rtol=0)


def test_softmax_temperature_matches_reference():
    a = small_crowd(4, 3)
    got = softmax_soft_labels(a, 3, temperature=2.5, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), ref.softmax(a.numpy(), 3, 2.5), atol=1e-12)


@pytest.mark.parametrize("seed,k", [(0, 3), (3, 4)])
def test_dawid_skene_parameters_match_reference(seed, k):
    a = small_crowd(seed, k)
    fit = dawid_skene(a, k, dtype=torch.float64, return_params=True)
    assert isinstance(fit, DawidSkeneFit)
    post, errors, priors, iterations = ref.dawid_skene(a.numpy(), k)
    np.testing.assert_allclose(fit.probs.numpy(), post, atol=1e-10)
    np.testing.assert_allclose(fit.confusion.numpy(), errors, atol=1e-10)
    np.testing.assert_allclose(fit.priors.numpy(), priors, atol=1e-10)
    assert fit.n_iter == iterations
    np.testing.assert_allclose(fit.confusion.sum(-1).numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("method", ["vb", "em"])
@pytest.mark.parametrize("seed,k", [(0, 3), (5, 4)])
def test_mace_matches_reference_from_same_starts(method, seed, k):
    a = small_crowd(seed, k, n_items=25)
    spam0, strategy0 = _mace_init(3, a.shape[1], k, 0.5, seed=11)
    got = mace(a, k, n_restarts=3, n_iter=15, method=method, seed=11, dtype=torch.float64)
    want = ref.mace(a.numpy(), k, spam0.numpy(), strategy0.numpy(), n_iter=15, method=method)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


def test_glad_matches_conjugate_gradient_reference():
    # The reference runs crowdkit's M-step (scipy CG, <= 25 iterations, gtol 1e-2); ours
    # runs L-BFGS under the same caps on the same objective. Both stop the M-step once
    # the gradient's largest entry is below 1e-2, so the parameters agree to about that
    # gradient tolerance and the posteriors (Lipschitz in them) to a few 1e-3.
    a = small_crowd(1, 3, n_items=30)
    got = glad(a, 3, dtype=torch.float64)
    want = ref.glad(a.numpy(), 3)
    np.testing.assert_allclose(got.numpy(), want, atol=5e-3)
    assert (got.argmax(-1).numpy() == want.argmax(-1)).all()


# ---- recovery on simulated crowds ------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["ds", "glad", "mace", "wawa", "zbs", "aggregate"])
def test_skill_aware_methods_beat_majority_vote(name, seed):
    # 10 reliable annotators (accuracy 0.85) among 20 poor ones (0.3, K = 4), ~6 labels
    # per item: majority vote is dragged down by the poor majority, every method that
    # weights annotators by estimated skill recovers clearly more. Margins seen over seeds
    # 0-2: +0.08 (Wawa) to +0.19; the test asks for +0.04, a fifth of a worst-case
    # binomial standard deviation of an accuracy on 500 items (0.5/sqrt(500) = 0.022)
    # below the smallest margin twice over.
    # (The aggregate is the plain average of the seven outputs, see
    # test_aggregate_is_the_average_of_the_methods.)
    _, truth, outputs = method_outputs(seed)
    mv = accuracy(outputs["standard"], truth)
    probs = average_soft_labels(list(outputs.values())) if name == "aggregate" else outputs[name]
    assert accuracy(probs, truth) >= mv + 0.04


@pytest.mark.parametrize("name", ["standard", "softmax"])
def test_count_based_methods_are_majority_vote(name):
    a, truth, _ = crowd(seed=3)
    counts = torch.nn.functional.one_hot(a.clamp_min(0), 4) * (a >= 0).unsqueeze(-1)
    mv = counts.sum(1).argmax(-1)
    assert torch.equal(METHODS[name](a, 4).argmax(-1), mv)


def test_dawid_skene_recovers_confusion_matrices():
    # Every one of 30 annotators labels all 500 items (K = 3), so row c of annotator m's
    # confusion matrix is estimated from the ~n_c = 167 items of class c. With posteriors
    # near one-hot the M-step is the empirical frequency, whose standard deviation is
    # sqrt(e (1 - e) / n_c) <= 0.039. Over the 270 entries a 5-sigma band is exceeded with
    # probability < 270 * 6e-7; 0.02 more covers the items DS mislabels (< 1 %).
    a, truth, confusion = crowd(500, 30, 3, observe=1.0, good=10, good_acc=0.8, bad_acc=0.5)
    fit = dawid_skene(a, 3, dtype=torch.float64, return_params=True)
    assert accuracy(fit.probs, truth) > 0.99
    n_c = torch.bincount(truth, minlength=3).double().view(1, 3, 1)
    band = 5 * torch.sqrt(confusion * (1 - confusion) / n_c) + 0.02
    assert ((fit.confusion - confusion).abs() <= band).all()
    true_prior = torch.bincount(truth, minlength=3).double() / 500
    assert torch.allclose(fit.priors, true_prior, atol=0.02)


def test_average_is_at_least_as_good_as_a_typical_method():
    # The paper's claim (aggregation gives consistently good soft labels) in the one form
    # checkable without training a model: the average's log-likelihood of the true labels
    # beats the mean of the methods' (strictly, by Jensen, unless they all agree), and its
    # accuracy is at least the median method's.
    _, truth, singles = method_outputs(1)
    singles = {name: p.double() for name, p in singles.items()}
    avg = average_soft_labels(list(singles.values()))
    nll = {
        n: -p.gather(1, truth.view(-1, 1)).clamp_min(1e-300).log().mean()
        for n, p in singles.items()
    }
    avg_nll = -avg.gather(1, truth.view(-1, 1)).log().mean()
    assert avg_nll < sum(nll.values()) / len(nll)
    accs = sorted(accuracy(p, truth) for p in singles.values())
    assert accuracy(avg, truth) >= accs[len(accs) // 2]


# ---- properties --------------------------------------------------------------------------

annotation_sets = st.integers(1, 4).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.integers(1, 8).flatmap(
            lambda n: st.integers(1, 5).flatmap(
                lambda m: st.lists(
                    st.lists(st.integers(-1, k - 1), min_size=m, max_size=m),
                    min_size=n,
                    max_size=n,
                )
            )
        ),
    )
)


@settings(max_examples=15, deadline=None)
@given(annotation_sets)
def test_every_method_gives_distributions(case):
    k, rows = case
    a = torch.tensor(rows)
    unannotated = (a == -1).all(1)
    for name, fn in METHODS.items():
        extra = {"n_restarts": 2, "n_iter": 5} if name == "mace" else {}
        p = fn(a, k, **extra)
        assert p.shape == (a.shape[0], k) and p.dtype == torch.float32, name
        assert torch.isfinite(p).all() and (p >= 0).all(), name
        torch.testing.assert_close(p.sum(-1), torch.ones(a.shape[0]), atol=1e-5, rtol=0)
        if unannotated.any():
            torch.testing.assert_close(p[unannotated], torch.full_like(p[unannotated], 1 / k))


@settings(max_examples=12, deadline=None)
@given(annotation_sets, st.randoms(use_true_random=False))
def test_relabelling_classes_permutes_columns(case, rnd):
    k, rows = case
    a = torch.tensor(rows)
    perm = list(range(k))
    rnd.shuffle(perm)
    perm_t = torch.tensor(perm)
    relabelled = torch.where(a >= 0, perm_t[a.clamp_min(0)], a)
    for fn in (standard_soft_labels, softmax_soft_labels, dawid_skene, glad):
        p = fn(a, k, dtype=torch.float64)
        q = fn(relabelled, k, dtype=torch.float64)
        torch.testing.assert_close(q[:, perm_t], p, atol=1e-6, rtol=0)


@settings(max_examples=12, deadline=None)
@given(annotation_sets, st.randoms(use_true_random=False))
def test_annotator_order_does_not_matter(case, rnd):
    k, rows = case
    a = torch.tensor(rows)
    order = list(range(a.shape[1]))
    rnd.shuffle(order)
    for fn in (standard_soft_labels, dawid_skene, wawa, zero_based_skill, glad):
        torch.testing.assert_close(
            fn(a[:, order], k, dtype=torch.float64),
            fn(a, k, dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )


def test_softmax_is_not_scale_invariant():
    a = torch.tensor([[0, 0, 1]])
    doubled = torch.cat([a, a], dim=1)  # same fractions, twice the votes
    torch.testing.assert_close(standard_soft_labels(doubled, 2), standard_soft_labels(a, 2))
    sharp, soft = softmax_soft_labels(doubled, 2), softmax_soft_labels(a, 2)
    assert sharp[0, 0] > soft[0, 0]
    torch.testing.assert_close(soft, torch.tensor([[1 / (1 + math.exp(-1)), 1 / (1 + math.e)]]))
    # T = number of annotators: softmax of the vote fractions, the same for both
    torch.testing.assert_close(
        softmax_soft_labels(doubled, 2, temperature=6.0), softmax_soft_labels(a, 2, temperature=3.0)
    )


def test_runs_under_torch_compile():
    # Compiling takes tens of seconds on a loaded CPU, hence slow. The EM loops graph-break
    # at their once-per-iteration convergence read; the results must not change.
    a = small_crowd(0, 3)

    def everything(a):
        return (
            standard_soft_labels(a, 3),
            softmax_soft_labels(a, 3, temperature=2.0),
            wawa(a, 3),
            dawid_skene(a, 3),
            zero_based_skill(a, 3, n_iter=5),
        )

    for got, want in zip(torch.compile(everything)(a), everything(a)):
        torch.testing.assert_close(got, want)


# ---- edges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_nothing_annotated_gives_uniform(name):
    a = torch.full((4, 3), -1)
    p = METHODS[name](a, 3)
    torch.testing.assert_close(p, torch.full((4, 3), 1 / 3))


@pytest.mark.parametrize("name", list(METHODS))
def test_empty_inputs(name):
    assert METHODS[name](torch.empty(0, 3, dtype=torch.long), 4).shape == (0, 4)
    torch.testing.assert_close(
        METHODS[name](torch.empty(2, 0, dtype=torch.long), 4), torch.full((2, 4), 0.25)
    )


@pytest.mark.parametrize("name", ["standard", "ds", "glad", "mace", "wawa", "zbs"])
def test_single_annotator_is_followed(name):
    a = torch.tensor([[0], [2], [1], [2], [-1]])
    p = METHODS[name](a, 3)
    assert torch.equal(p[:4].argmax(-1), torch.tensor([0, 2, 1, 2]))
    torch.testing.assert_close(p[4], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("name", list(METHODS))
def test_one_class(name):
    a = torch.tensor([[0, -1], [0, 0]])
    torch.testing.assert_close(METHODS[name](a, 1), torch.ones(2, 1))


def test_thousands_of_annotators_stay_finite():
    # Products of thousands of likelihood terms underflow in probability space; every
    # method works in log space (or with counts) and the softmax of counts ~2000 is exact.
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 3, (4, 2000), generator=g)
    a[0] = 0
    a[1, :1400] = 1
    for name, fn in METHODS.items():
        extra = {"n_restarts": 2} if name == "mace" else {}
        p = fn(a, 3, **extra)
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(p[0], torch.tensor([1.0, 0.0, 0.0]), msg=name)
        assert int(p[1].argmax()) == 1, name


@pytest.mark.parametrize("name", ["ds", "glad", "mace", "wawa", "zbs"])
def test_two_classes_recover_truth(name):
    a, truth, _ = crowd(300, 20, 2, observe=0.4, good=8, good_acc=0.9, bad_acc=0.55, seed=2)
    assert accuracy(METHODS[name](a, 2), truth) > 0.9


def test_custom_missing_marker():
    a = small_crowd(0, 3)
    b = torch.where(a == -1, 99, a)
    for name, fn in METHODS.items():
        torch.testing.assert_close(fn(b, 3, missing=99), fn(a, 3), msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list(METHODS))
def test_dtypes(name, dtype):
    a = small_crowd(2, 3)
    extra = {"n_restarts": 2} if name == "mace" else {}
    p = METHODS[name](a, 3, dtype=dtype, **extra)
    assert p.dtype == dtype
    p32 = METHODS[name](a, 3, **extra)
    # half types: the float32 computation rounded once. float64 is computed in float64:
    # the EM fixed points agree to 1e-5, except GLAD whose M-step optimiser stops at a
    # gradient tolerance of 1e-2, so float32 and float64 runs stop at iterates ~1e-4 apart.
    if dtype == torch.float64:
        atol = 1e-3 if name == "glad" else 1e-5
    else:
        atol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(p.float(), p32, atol=atol, rtol=0)


def test_mace_seed_is_reproducible_and_matters():
    a, _, _ = crowd(120, 12, 3, observe=0.3, seed=4)
    torch.testing.assert_close(mace(a, 3, seed=3, n_iter=10), mace(a, 3, seed=3, n_iter=10))
    s0, _ = _mace_init(2, 12, 3, 0.5, seed=3)
    s1, _ = _mace_init(2, 12, 3, 0.5, seed=4)
    assert not torch.equal(s0, s1)
    assert not torch.equal(s0[0], s0[1])  # restarts are distinct draws


# ---- average_soft_labels -------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(1, 4),
    st.lists(st.floats(0.0, 10.0), min_size=5, max_size=5),
    st.integers(0, 2**16),
)
def test_average_matches_numpy_average(n_dist, rows, k, w, seed):
    g = torch.Generator().manual_seed(seed)
    dists = [
        torch.softmax(torch.randn(rows, k, generator=g, dtype=torch.float64), -1)
        for _ in range(n_dist)
    ]
    weights = w[:n_dist]
    np_dists = np.stack([d.numpy() for d in dists])
    np.testing.assert_allclose(average_soft_labels(dists).numpy(), np_dists.mean(0), atol=1e-12)
    if sum(weights) > 0:
        got = average_soft_labels(dists, weights=weights)
        np.testing.assert_allclose(
            got.numpy(), np.average(np_dists, axis=0, weights=weights), atol=1e-12
        )
        np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-12)
        got_t = average_soft_labels(dists, weights=torch.tensor(weights, dtype=torch.float64))
        np.testing.assert_allclose(got_t.numpy(), got.numpy(), atol=1e-15)


def test_average_dtypes():
    p = torch.tensor([[1.0, 0.0]], dtype=torch.float16)
    q = torch.tensor([[0.5, 0.5]], dtype=torch.bfloat16)
    assert average_soft_labels([p, p]).dtype == torch.float16
    assert average_soft_labels([p, q]).dtype == torch.float32  # promoted
    assert average_soft_labels([p.double(), q]).dtype == torch.float64
    torch.testing.assert_close(average_soft_labels([p, q]), torch.tensor([[0.75, 0.25]]))


def test_aggregate_is_the_average_of_the_methods():
    a = small_crowd(1, 3)
    names = ("ds", "wawa", "softmax")
    want = torch.stack([METHODS[n](a, 3) for n in names]).mean(0)
    torch.testing.assert_close(aggregate_soft_labels(a, 3, methods=names), want)
    weighted = aggregate_soft_labels(a, 3, methods=names, weights=[2.0, 1.0, 1.0])
    want_w = (2 * METHODS["ds"](a, 3) + METHODS["wawa"](a, 3) + METHODS["softmax"](a, 3)) / 4
    torch.testing.assert_close(weighted, want_w)


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_annotations(name):
    fn = METHODS[name]
    with pytest.raises(TypeError, match="annotations must be a torch.Tensor"):
        fn([[0, 1]], 2)
    with pytest.raises(TypeError, match="integer dtype.*float32"):
        fn(torch.tensor([[0.0, 1.0]]), 2)
    with pytest.raises(TypeError, match="integer dtype"):
        fn(torch.tensor([[True]]), 2)
    with pytest.raises(ValueError, match=r"2-D \(items, annotators\).*\(3,\)"):
        fn(torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\].*got 2"):
        fn(torch.tensor([[0, 2]]), 2)
    with pytest.raises(ValueError, match=r"got -3"):
        fn(torch.tensor([[0, -3]]), 2)
    with pytest.raises(ValueError, match="missing must lie outside"):
        fn(torch.tensor([[0, 1]]), 2, missing=1)
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, inf\], got 0"):
        fn(torch.tensor([[0]]), 0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        fn(torch.tensor([[0]]), 2.0)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        fn(torch.tensor([[0]]), 2, dtype="float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        fn(torch.tensor([[0]]), 2, dtype=torch.int64)


def test_bad_options():
    a = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match=r"temperature must be in \(0, inf\], got 0"):
        softmax_soft_labels(a, 2, temperature=0.0)
    with pytest.raises(ValueError, match="n_iter must be in"):
        dawid_skene(a, 2, n_iter=0)
    with pytest.raises(ValueError, match="tol must be in"):
        glad(a, 2, tol=-1.0)
    with pytest.raises(ValueError, match="method must be one of 'vb', 'em', got 'map'"):
        mace(a, 2, method="map")
    with pytest.raises(TypeError, match="seed must be an int"):
        mace(a, 2, seed=1.5)
    with pytest.raises(ValueError, match="lr_reduce_factor must be in"):
        zero_based_skill(a, 2, lr_reduce_factor=2.0)
    with pytest.raises(TypeError, match="return_params must be a bool"):
        dawid_skene(a, 2, return_params=1)
    with pytest.raises(ValueError, match="methods must be one of .*got 'bayes'"):
        aggregate_soft_labels(a, 2, methods=("ds", "bayes"))
    with pytest.raises(ValueError, match="methods must be a non-empty sequence"):
        aggregate_soft_labels(a, 2, methods=())
    with pytest.raises(ValueError, match="methods must be a non-empty sequence"):
        aggregate_soft_labels(a, 2, methods="ds")


def test_average_errors():
    p = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="at least one tensor"):
        average_soft_labels([])
    with pytest.raises(TypeError, match="sequence .* of tensors, got Tensor"):
        average_soft_labels(p)
    with pytest.raises(TypeError, match=r"distributions\[1\] must be a floating-point tensor"):
        average_soft_labels([p, torch.tensor([[1, 0]])])
    with pytest.raises(
        ValueError, match=r"distributions\[1\] must have the shape .*\(1, 2\).*\(2,\)"
    ):
        average_soft_labels([p, torch.tensor([1.0, 0.0])])
    with pytest.raises(ValueError, match=r"distributions\[0\] must be finite.*nan"):
        average_soft_labels([torch.tensor([[math.nan, 1.0]]), p])
    with pytest.raises(ValueError, match=r"one weight per distribution \(2\), got shape \(3,\)"):
        average_soft_labels([p, p], weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights\[1\] must be in \[0, inf\]"):
        average_soft_labels([p, p], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights must not all be zero"):
        average_soft_labels([p, p], weights=[0.0, 0.0])
    with pytest.raises(ValueError, match=r"weights must have all values in \[0, inf\)"):
        average_soft_labels([p, p], weights=torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="weights\\[0\\] must be finite"):
        average_soft_labels([p, p], weights=[math.inf, 1.0])


def test_average_rejects_inf_as_it_rejects_nan():
    p = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"distributions\[1\] must be finite.*inf"):
        average_soft_labels([p, torch.tensor([[math.inf, 0.0]])])
    with pytest.raises(ValueError, match=r"distributions\[0\] must be finite.*-inf"):
        average_soft_labels([torch.tensor([[-math.inf, 1.0]]), p], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights must have all values in \[0, inf\)"):
        average_soft_labels([p, p], weights=torch.tensor([1.0, math.inf]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_average_does_not_overflow(dtype):
    """The mean of values near the dtype's maximum is finite (the sum would overflow)."""
    top = torch.finfo(dtype).max
    p = torch.tensor([[0.9 * top, 0.5, -0.8 * top]], dtype=dtype)
    q = torch.tensor([[0.7 * top, 0.25, -0.9 * top]], dtype=dtype)
    for weights in (None, [1.0, 3.0, 0.0], torch.tensor([2.0, 2.0, 1.0])):
        got = average_soft_labels([p, q, p], weights)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        want = np.average(np.stack([p.double(), q.double(), p.double()]), axis=0, weights=w)
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-2)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32])
def test_annotations_of_every_integer_dtype(name, dtype):
    a = torch.tensor([[0, 0, 1, -1], [1, 1, 1, 2], [2, -1, 2, 2], [0, 1, 0, 0]])
    options = {"n_restarts": 2, "n_iter": 5} if name == "mace" else {}
    expected = METHODS[name](a, 3, **options)
    torch.testing.assert_close(METHODS[name](a.to(dtype), 3, **options), expected)
    unsigned = torch.where(a < 0, 255, a).to(torch.uint8)  # uint8 with missing=255
    expected = METHODS[name](torch.where(a < 0, 255, a), 3, missing=255, **options)
    torch.testing.assert_close(METHODS[name](unsigned, 3, missing=255, **options), expected)
    with pytest.raises(TypeError, match="annotations must hold class indices"):
        METHODS[name](a >= 0, 3, **options)
    if name != "mace":  # aggregate_soft_labels validates and converts once, then each method
        got = aggregate_soft_labels(a.to(dtype), 3, methods=(name, "standard"))
        torch.testing.assert_close(got, aggregate_soft_labels(a, 3, methods=(name, "standard")))
