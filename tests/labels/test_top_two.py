"""Top-two answers and confusion (Jeong & Chung, ICML 2023, arXiv:2301.00006)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.labels import (
    TopTwoResult,
    standard_soft_labels,
    top_two_answers,
    top_two_soft_labels,
)
from tests.reference import labels_ref as ref


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def top_two_crowd(n_items, n_workers, k, p, q, seed, observe=1.0):
    """The top-two model (Generate_TopTwo_Dataset.m) with a seeded torch.Generator."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(k, (n_items,), generator=g)
    confusing = torch.randint(k - 1, (n_items,), generator=g)
    confusing = torch.where(confusing >= truth, confusing + 1, confusing)
    probs = ((1 - p) / k).view(1, -1, 1).expand(n_items, n_workers, k).clone()
    index = truth.view(-1, 1, 1).expand(n_items, n_workers, 1)
    probs.scatter_add_(2, index, (p.view(1, -1) * q.view(-1, 1)).unsqueeze(-1))
    index = confusing.view(-1, 1, 1).expand(n_items, n_workers, 1)
    probs.scatter_add_(2, index, (p.view(1, -1) * (1 - q).view(-1, 1)).unsqueeze(-1))
    answers = torch.multinomial(probs.view(-1, k), 1, generator=g).view(n_items, n_workers)
    seen = torch.rand(n_items, n_workers, generator=g) < observe
    return torch.where(seen, answers, -1), truth, confusing


def parameters(n_items, n_workers, p_range, q_range, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    p = p_range[0] + (p_range[1] - p_range[0]) * torch.rand(
        n_workers, generator=g, dtype=torch.float64
    )
    q = q_range[0] + (q_range[1] - q_range[0]) * torch.rand(
        n_items, generator=g, dtype=torch.float64
    )
    return p, q


def pair_accuracy(top1, top2, truth, confusing):
    return float(((top1 == truth) & (top2 == confusing)).double().mean())


def majority_top_two(a, k):
    order = torch.sort(standard_soft_labels(a, k), dim=-1, descending=True, stable=True).indices
    return order[:, 0], order[:, 1]


# ---- against the transcription of the official code ---------------------------------------


@pytest.mark.parametrize("seed,k,observe", [(0, 3, 1.0), (1, 4, 0.6), (2, 5, 0.4)])
def test_matches_reference(seed, k, observe):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, 15)
    q = rng.uniform(0.55, 0.95, 60)
    ann, _, _ = ref.simulate_top_two(60, 15, k, p, q, rng, observe=observe)
    r = top_two_answers(torch.tensor(ann), k, dtype=torch.float64)
    g, h, q_hat, p_hat = ref.top_two(ann, k)
    np.testing.assert_array_equal(r.top1.numpy(), g)
    np.testing.assert_array_equal(r.top2.numpy(), h)
    np.testing.assert_allclose(r.confusion.numpy(), q_hat, atol=1e-10)
    np.testing.assert_allclose(r.reliability.numpy(), p_hat, atol=1e-10)


def test_oracle_parameters_match_reference():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.05, 0.95, 12)
    q = rng.uniform(0.55, 0.95, 50)
    ann, _, _ = ref.simulate_top_two(50, 12, 4, p, q, rng, observe=0.8)
    r = top_two_answers(
        torch.tensor(ann),
        4,
        reliability=torch.tensor(p),
        confusion=torch.tensor(q),
        dtype=torch.float64,
    )
    g, h, _, _ = ref.top_two(ann, 4, p_known=p, q_known=q)
    np.testing.assert_array_equal(r.top1.numpy(), g)
    np.testing.assert_array_equal(r.top2.numpy(), h)
    np.testing.assert_allclose(r.confusion.numpy(), q)
    np.testing.assert_allclose(r.reliability.numpy(), p)


# ---- recovery (the paper's synthetic setting: 50 workers, 500 tasks, K = 5) -----------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("observe", [1.0, 0.5])
def test_recovers_top_two_near_the_oracle(seed, observe):
    # Paper (OpenReview abstract): the two-stage algorithm performs near the oracle MLE
    # that knows p and q, and beats the other methods. Here: p ~ U(0.001, 0.999) (the
    # official SyntheticExperiment.m range), q ~ U(0.6, 0.9). Seen over seeds 0-2: pair
    # accuracy 0.73-0.91 against the oracle's 0.73-0.91 (gap <= 0.01) and majority vote's
    # 0.62-0.81. A 0.03 gap allows ~1.3 binomial standard deviations of a pair accuracy
    # on 500 items (sqrt(0.25 / 500) = 0.022); the margin over majority vote (>= 0.08
    # seen) is asked to be 0.05.
    n, m, k = 500, 50, 5
    p, q = parameters(n, m, (0.001, 0.999), (0.6, 0.9), seed)
    a, truth, confusing = top_two_crowd(n, m, k, p, q, seed, observe)
    r = top_two_answers(a, k, dtype=torch.float64)
    oracle = top_two_answers(a, k, reliability=p, confusion=q, dtype=torch.float64)
    ours = pair_accuracy(r.top1, r.top2, truth, confusing)
    assert ours >= pair_accuracy(oracle.top1, oracle.top2, truth, confusing) - 0.03
    assert ours >= pair_accuracy(*majority_top_two(a, k), truth, confusing) + 0.05
    top1 = float((r.top1 == truth).double().mean())
    assert top1 >= float((oracle.top1 == truth).double().mean()) - 0.03
    assert (r.top1 != r.top2).all()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("observe", [1.0, 0.5])
def test_confusion_and_reliability_errors(seed, observe):
    # q_hat_j = 1/K - Delta_{j g} / ||p||, and Delta_{j g} is a u-weighted sum of the
    # indicators [Y_ij = g] / s (||u|| = 1), so its variance is at most 1 / (4 s) and the
    # error of q_hat is at most 1 / (2 sqrt(s) ||p||) in RMS (clipping onto
    # [0.501, 0.999], which holds q, only shrinks it); the mean absolute error is below
    # the RMS. Seen: 0.075-0.135 against bounds 0.123-0.179.
    # p_hat_i is an affine map (slope 1 / (1 - 2/K)) of a fraction of ~n s answers, so its
    # RMS error is at most 1 / (2 sqrt(n s) (1 - 2/K)) plus the bias of answers counted
    # against a wrong top-two pair, at most the pair error rate times that slope.
    n, m, k = 500, 50, 5
    p, q = parameters(n, m, (0.001, 0.999), (0.6, 0.9), seed)
    a, truth, confusing = top_two_crowd(n, m, k, p, q, seed, observe)
    r = top_two_answers(a, k, dtype=torch.float64)
    q_bound = 1 / (2 * math.sqrt(observe) * float(torch.linalg.vector_norm(p)))
    assert float((r.confusion - q).abs().mean()) <= q_bound
    pair_error = 1 - pair_accuracy(r.top1, r.top2, truth, confusing)
    slope = 1 / (1 - 2 / k)
    p_bound = slope / (2 * math.sqrt(n * observe)) + pair_error * slope
    assert float((r.reliability - p).abs().mean()) <= p_bound


def test_confusion_error_shrinks_with_more_workers():
    # The error bound 1 / (2 sqrt(s) ||p||) falls like 1 / sqrt(workers): four times the
    # workers should roughly halve the error (asked: at most 0.7 of it).
    errors = []
    for m in (25, 100):
        p, q = parameters(400, m, (0.3, 0.999), (0.6, 0.9), 3)
        a, _, _ = top_two_crowd(400, m, 4, p, q, seed=3)
        errors.append(float((top_two_answers(a, 4).confusion.double() - q).abs().mean()))
    assert errors[1] <= 0.7 * errors[0]


# ---- properties and edges -------------------------------------------------------------------

crowds = st.integers(3, 5).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.integers(1, 8).flatmap(
            lambda n: st.integers(1, 6).flatmap(
                lambda m: st.lists(
                    st.lists(st.integers(-1, k - 1), min_size=m, max_size=m),
                    min_size=n,
                    max_size=n,
                )
            )
        ),
    )
)


@settings(max_examples=25, deadline=None)
@given(crowds)
def test_outputs_in_range(case):
    k, rows = case
    a = torch.tensor(rows)
    if (a == -1).all():
        a[0, 0] = 0
    r = top_two_answers(a, k)
    assert isinstance(r, TopTwoResult)
    assert r.top1.shape == r.top2.shape == r.confusion.shape == (a.shape[0],)
    assert r.reliability.shape == (a.shape[1],)
    assert (r.top1 != r.top2).all() and (r.top1 >= 0).all() and (r.top2 < k).all()
    annotated = (a != -1).any(1)
    assert (
        (r.confusion[annotated] >= 0.501 - 1e-6) & (r.confusion[annotated] <= 0.999 + 1e-6)
    ).all()
    assert (r.confusion[~annotated] == 0.5).all()
    assert ((r.reliability >= 0.001 - 1e-6) & (r.reliability <= 0.999 + 1e-6)).all()
    soft = top_two_soft_labels(r, k)
    torch.testing.assert_close(soft.sum(-1), torch.ones(a.shape[0]))


def test_unanimous_item_and_silent_annotator():
    a = torch.tensor([[1, 1, 1, -1], [0, 0, 2, -1], [2, 2, 0, -1], [-1, -1, -1, -1]])
    r = top_two_answers(a, 3)
    assert int(r.top1[0]) == 1 and int(r.top1[1]) == 0 and int(r.top2[1]) == 2
    assert float(r.confusion[3]) == 0.5  # nobody annotated item 3
    assert float(r.reliability[3]) == pytest.approx(0.001)  # annotator 3 said nothing


def test_single_annotator():
    a = torch.tensor([[0], [2], [1]])
    r = top_two_answers(a, 3)
    assert torch.equal(r.top1, torch.tensor([0, 2, 1]))


def test_custom_missing_and_dtypes():
    p, q = parameters(80, 10, (0.3, 0.99), (0.6, 0.9), 0)
    a, _, _ = top_two_crowd(80, 10, 4, p, q, seed=0, observe=0.7)
    base = top_two_answers(a, 4)
    other = top_two_answers(torch.where(a == -1, 7, a), 4, missing=7)
    assert torch.equal(base.top1, other.top1) and torch.equal(base.top2, other.top2)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        r = top_two_answers(a, 4, dtype=dtype)
        assert r.confusion.dtype == r.reliability.dtype == dtype
        tol = 1e-4 if dtype == torch.float64 else torch.finfo(dtype).eps
        torch.testing.assert_close(r.confusion.float(), base.confusion, atol=tol, rtol=0)


def test_runs_under_torch_compile():
    p, q = parameters(60, 8, (0.3, 0.99), (0.6, 0.9), 1)
    a, _, _ = top_two_crowd(60, 8, 4, p, q, seed=1, observe=0.8)
    got, want = torch.compile(top_two_answers)(a, 4), top_two_answers(a, 4)
    assert torch.equal(got.top1, want.top1) and torch.equal(got.top2, want.top2)
    torch.testing.assert_close(got.confusion, want.confusion)


def test_soft_labels():
    r = TopTwoResult(
        torch.tensor([2, 0]), torch.tensor([0, 1]), torch.tensor([0.75, 0.6]), torch.tensor([0.9])
    )
    torch.testing.assert_close(
        top_two_soft_labels(r, 3), torch.tensor([[0.25, 0.0, 0.75], [0.6, 0.4, 0.0]])
    )


# ---- errors -----------------------------------------------------------------------------------


def test_errors():
    a = torch.tensor([[0, 1], [2, 0]])
    with pytest.raises(ValueError, match=r"num_classes must be in \[3, inf\], got 2"):
        top_two_answers(torch.tensor([[0, 1]]), 2)
    with pytest.raises(ValueError, match=r"num_classes must be in \[3, inf\], got 1"):
        top_two_answers(torch.tensor([[0]]), 1)
    with pytest.raises(TypeError, match="integer dtype"):
        top_two_answers(a.float(), 3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\].*got 3"):
        top_two_answers(torch.tensor([[0, 3]]), 3)
    with pytest.raises(ValueError, match="at least one observed annotation"):
        top_two_answers(torch.full((2, 2), -1), 3)
    with pytest.raises(ValueError, match="at least one observed annotation"):
        top_two_answers(torch.empty(0, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"reliability must have shape \(2,\).*\(3,\)"):
        top_two_answers(a, 3, reliability=torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"reliability must have all values in \(0, 1\)"):
        top_two_answers(a, 3, reliability=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"reliability must have all values in \(0, 1\), got nan"):
        top_two_answers(a, 3, reliability=torch.tensor([0.5, math.nan]))
    with pytest.raises(ValueError, match=r"confusion must have shape \(2,\)"):
        top_two_answers(a, 3, confusion=torch.full((1,), 0.7))
    with pytest.raises(TypeError, match="confusion must be a floating-point tensor"):
        top_two_answers(a, 3, confusion=torch.tensor([1, 1]))
    r = top_two_answers(a, 3)
    with pytest.raises(TypeError, match="result must be a TopTwoResult"):
        top_two_soft_labels((r.top1, r.top2), 3)
    with pytest.raises(ValueError, match="num_classes must exceed the largest class index"):
        top_two_soft_labels(
            TopTwoResult(torch.tensor([2]), torch.tensor([0]), torch.tensor([0.6]), r.reliability),
            2,
        )


def _result(top1, top2, confusion):
    return TopTwoResult(top1, top2, confusion, torch.full((2,), 0.9))


def test_soft_labels_check_the_result_fields():
    """A hand-built TopTwoResult is checked field by field (no raw scatter errors, nothing
    accepted silently)."""
    top1, top2, q = torch.tensor([2, 0, 1]), torch.tensor([0, 1, 2]), torch.tensor([0.6, 0.7, 0.9])
    with pytest.raises(TypeError, match=r"result.top1 must hold class indices \(an integer"):
        top_two_soft_labels(_result(top1.float(), top2, q), 3)
    with pytest.raises(TypeError, match="result.top2 must hold class indices"):
        top_two_soft_labels(_result(top1, top2 > 0, q), 3)
    with pytest.raises(ValueError, match="result.top1 must hold class indices >= 0, got -1"):
        top_two_soft_labels(_result(torch.tensor([2, -1, 1]), top2, q), 3)
    with pytest.raises(ValueError, match=r"result.top2 must have result.confusion's shape"):
        top_two_soft_labels(_result(top1, top2[:2], q), 3)
    with pytest.raises(ValueError, match=r"result.top1 must have result.confusion's shape"):
        top_two_soft_labels(_result(torch.tensor([2, 0, 1, 1]), top2, q), 3)
    with pytest.raises(ValueError, match=r"result.confusion must have shape \(items,\)"):
        top_two_soft_labels(_result(top1, top2, q.view(3, 1)), 3)
    with pytest.raises(ValueError, match=r"result.confusion must have all values in \[0, 1\]"):
        top_two_soft_labels(_result(top1, top2, torch.tensor([0.6, 1.5, 0.9])), 3)
    with pytest.raises(ValueError, match=r"num_classes must exceed .* result.top2 \(3\)"):
        top_two_soft_labels(_result(top1, torch.tensor([0, 3, 2]), q), 3)
    expected = top_two_soft_labels(_result(top1, top2, q), 3)
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        got = top_two_soft_labels(_result(top1.to(dtype), top2.to(dtype), q), 3)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32])
def test_annotations_of_every_integer_dtype(dtype):
    a = torch.tensor([[0, 0, 1, 0, 1], [2, 2, 2, 1, 1], [1, 1, 0, 1, -1], [2, 0, 2, 2, 0]])
    expected = top_two_answers(a, 3)
    got = top_two_answers(a.to(dtype), 3)
    for field, want in zip(got, expected):
        assert torch.equal(field, want)
