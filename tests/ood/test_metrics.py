"""OOD metrics against a float64 reference and scikit-learn, with ties, +-inf, errors."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from softmaxkit.ood import aupr_in, aupr_out, auroc, fpr_at_tpr
from tests.reference import ood_ref as ref

INF = math.inf


def _sk(s_in, s_out):
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    return y, s


def _sk_fpr(s_in, s_out, tpr):
    y, s = _sk(s_in, s_out)
    fpr, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.searchsorted(tprs, tpr, side="left")]


def _tied(seed, n_in, n_out, levels):
    r = np.random.default_rng(seed)
    return (
        r.integers(0, levels, n_in).astype(float),
        r.integers(0, levels, n_out).astype(float) - 1,
    )


@pytest.mark.parametrize(("seed", "levels"), [(0, 3), (1, 12), (2, 1000)])
def test_against_sklearn_and_reference_with_ties(seed, levels):
    a, b = _tied(seed, 300, 217, levels)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    y, s = _sk(a, b)
    assert auroc(ta, tb).item() == pytest.approx(roc_auc_score(y, s), abs=1e-14)
    assert auroc(ta, tb).item() == pytest.approx(ref.auroc(a, b), abs=1e-14)
    assert aupr_in(ta, tb).item() == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr_in(ta, tb).item() == pytest.approx(ref.average_precision(a, b), abs=1e-12)
    assert aupr_out(ta, tb).item() == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert aupr_out(ta, tb).item() == pytest.approx(ref.average_precision(-b, -a), abs=1e-12)
    for tpr in (0.95, 0.5, 0.8, 1.0, 1e-3):
        want = ref.fpr_at_tpr(a, b, tpr)
        assert fpr_at_tpr(ta, tb, tpr).item() == pytest.approx(want, abs=1e-15)
        assert want == pytest.approx(_sk_fpr(a, b, tpr), abs=1e-15)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([-INF, -2.0, -1.0, 0.0, 0.5, 1.0, INF]), min_size=1, max_size=25),
    st.lists(st.sampled_from([-INF, -2.0, -1.0, 0.0, 0.5, 1.0, INF]), min_size=1, max_size=25),
    st.sampled_from([0.95, 0.5, 1.0, 0.1]),
)
def test_reference_property_with_infinities(a, b, tpr):
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    assert auroc(ta, tb).item() == pytest.approx(ref.auroc(a, b), abs=1e-12)
    assert aupr_in(ta, tb).item() == pytest.approx(ref.average_precision(a, b), abs=1e-12)
    neg_b, neg_a = [-v for v in b], [-v for v in a]
    assert aupr_out(ta, tb).item() == pytest.approx(ref.average_precision(neg_b, neg_a), abs=1e-12)
    assert fpr_at_tpr(ta, tb, tpr).item() == pytest.approx(ref.fpr_at_tpr(a, b, tpr), abs=1e-15)
    # symmetry: swapping roles and negating keeps AUROC
    assert auroc(-tb, -ta).item() == pytest.approx(auroc(ta, tb).item(), abs=1e-12)


def test_known_values_and_bounds():
    a, b = torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])
    assert auroc(a, b).item() == 1.0 and auroc(b, a).item() == 0.0
    assert aupr_in(a, b).item() == 1.0 and aupr_out(a, b).item() == 1.0
    assert fpr_at_tpr(a, b).item() == 0.0 and fpr_at_tpr(b, a).item() == 1.0
    same = torch.zeros(5)
    assert auroc(same, torch.zeros(3)).item() == 0.5  # all tied: half credit
    assert aupr_in(same, torch.zeros(3)).item() == pytest.approx(5 / 8)
    assert fpr_at_tpr(same, torch.zeros(3)).item() == 1.0
    out = auroc(a, b)
    assert out.dtype == torch.float64 and out.shape == ()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_shapes(dtype):
    a, b = _tied(5, 60, 40, 7)
    ta, tb = torch.from_numpy(a).to(dtype).view(6, 10), torch.from_numpy(b).to(dtype)
    y, s = _sk(a, b)
    assert auroc(ta, tb).item() == pytest.approx(roc_auc_score(y, s), abs=1e-14)
    assert aupr_in(ta, tb).item() == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_extreme_values_are_exact():
    a = torch.tensor([1e30, 1e-30, -1e4, 1e4 + 1], dtype=torch.float64)
    b = torch.tensor([1e4, 0.0, -1e30], dtype=torch.float64)
    assert auroc(a, b).item() == pytest.approx(ref.auroc(a.numpy(), b.numpy()), abs=0)


def test_large_input_is_fast():
    g = torch.Generator().manual_seed(0)
    a = torch.round(torch.randn(5 * 10**5, generator=g) * 50) / 50  # many ties; 10^6 in all
    b = torch.round((torch.randn(5 * 10**5, generator=g) - 1) * 50) / 50
    start = time.perf_counter()
    got = [auroc(a, b), aupr_in(a, b), aupr_out(a, b), fpr_at_tpr(a, b)]
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0  # well under 1 s on a loaded 2-core CPU for all four
    # cheap exact checks at this size: AUROC from the per-level histogram
    levels, inv = torch.unique(torch.cat([a, b]), return_inverse=True)
    h_in = torch.bincount(inv[: a.numel()], minlength=levels.numel()).double()
    h_out = torch.bincount(inv[a.numel() :], minlength=levels.numel()).double()
    below = torch.cumsum(h_out, 0) - h_out
    want = ((h_in * (below + 0.5 * h_out)).sum() / (a.numel() * b.numel())).item()
    assert got[0].item() == pytest.approx(want, abs=1e-12)
    assert all(0 < v.item() < 1 for v in got)


def test_gaussian_auroc_closed_form():
    """AUROC of N(d, 1) vs N(0, 1) is Phi(d / sqrt 2)."""
    g = torch.Generator().manual_seed(1)
    d = 1.0
    a = torch.randn(200_000, generator=g, dtype=torch.float64) + d
    b = torch.randn(200_000, generator=g, dtype=torch.float64)
    want = 0.5 * (1 + math.erf(d / 2))
    assert auroc(a, b).item() == pytest.approx(want, abs=3e-3)


def test_errors():
    ok = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="score_in must hold at least one score"):
        auroc(torch.tensor([]), ok)
    with pytest.raises(ValueError, match="score_out must hold at least one score"):
        fpr_at_tpr(ok, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="score_out must not contain NaN, got 1 NaN"):
        aupr_in(ok, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="score_in must not contain NaN"):
        aupr_out(torch.tensor([float("nan")]), ok)
    with pytest.raises(TypeError, match="score_in must be a floating-point tensor"):
        auroc(torch.tensor([1, 2]), ok)
    with pytest.raises(TypeError, match="score_out must be a torch.Tensor"):
        auroc(ok, [1.0])
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]"):
        fpr_at_tpr(ok, ok, 0.0)
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]"):
        fpr_at_tpr(ok, ok, 1.5)
