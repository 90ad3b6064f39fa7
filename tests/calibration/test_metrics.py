"""Calibration metrics: float64 reference, scikit-learn, properties, dtypes, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, log_loss

from softmaxkit.calibration import (
    ReliabilityCurve,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from tests.reference import calibration_ref as ref

NORMS = ("l1", "l2", "max")
BINNINGS = ("uniform", "adaptive")


def _data(n=500, c=7, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    # labels drawn from a softened model: a mis-calibrated but informative classifier
    target = torch.multinomial(torch.softmax(logits / 2, -1), 1, generator=g).squeeze(1)
    return logits.to(dtype), target


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize("binning", BINNINGS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_ece_matches_reference(norm, binning, from_logits):
    z, y = _data()
    p = torch.softmax(z, -1)
    x = z if from_logits else p
    got = expected_calibration_error(x, y, norm=norm, binning=binning, from_logits=from_logits)
    want = ref.ece(p.numpy(), y.numpy(), 15, norm, binning)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(want, abs=1e-12)
    assert want > 0.01  # the data are mis-calibrated, so the test can fail


@pytest.mark.parametrize("binning", BINNINGS)
@pytest.mark.parametrize("norm", NORMS)
def test_classwise_matches_reference(norm, binning):
    z, y = _data(n=300, c=5, seed=1)
    got = classwise_calibration_error(z, y, n_bins=10, norm=norm, binning=binning)
    want = ref.classwise_ece(torch.softmax(z, -1).numpy(), y.numpy(), 10, norm, binning)
    assert got.item() == pytest.approx(want, abs=1e-12)
    assert want > 0.01


@pytest.mark.parametrize("binning", BINNINGS)
@pytest.mark.parametrize("n_bins", [1, 4, 15, 40])
def test_reliability_curve_matches_reference_and_gives_the_ece(binning, n_bins):
    z, y = _data(n=257, seed=2)
    curve = reliability_curve(z, y, n_bins=n_bins, binning=binning)
    assert isinstance(curve, ReliabilityCurve)
    conf, acc, count = ref.curve(torch.softmax(z, -1).numpy(), y.numpy(), n_bins, binning)
    np.testing.assert_array_equal(curve.count.numpy(), count)
    assert curve.count.dtype == torch.int64 and int(curve.count.sum()) == 257
    np.testing.assert_allclose(curve.confidence.numpy(), conf, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(curve.accuracy.numpy(), acc, atol=1e-12, equal_nan=True)
    assert curve.bin_edges.shape == (n_bins + 1,)
    assert curve.bin_edges[0] == 0 and curve.bin_edges[-1] == 1
    assert bool((curve.bin_edges.diff() >= 0).all())
    full = curve.count > 0
    gaps = (curve.accuracy[full] - curve.confidence[full]).abs()
    weights = curve.count[full].double() / 257
    for norm, value in {
        "l1": (weights * gaps).sum(),
        "l2": (weights * gaps**2).sum().sqrt(),
        "max": gaps.max(),
    }.items():
        ece = expected_calibration_error(z, y, n_bins=n_bins, binning=binning, norm=norm)
        assert ece.item() == pytest.approx(value.item(), abs=1e-14)


def test_reliability_curve_empty_bins_are_nan():
    p = torch.tensor([[0.95, 0.05], [0.55, 0.45]], dtype=torch.float64)
    curve = reliability_curve(p, torch.tensor([0, 1]), n_bins=10, from_logits=False)
    assert curve.count.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    empty = curve.count == 0
    assert bool(curve.confidence[empty].isnan().all()) and bool(curve.accuracy[empty].isnan().all())
    assert curve.accuracy[5].item() == 0.0 and curve.accuracy[9].item() == 1.0


def test_adaptive_edges_separate_the_bins():
    z, y = _data(n=100, seed=3)
    curve = reliability_curve(z, y, n_bins=7, binning="adaptive")
    conf = torch.softmax(z, -1).amax(-1)
    sorted_conf = conf.sort().values
    starts = [math.ceil(b * 100 / 7) for b in range(1, 7)]
    for b, start in enumerate(starts, 1):
        assert sorted_conf[start - 1] <= curve.bin_edges[b] <= sorted_conf[start]


# ------------------------------------------------------------- torchmetrics' convention


def test_uniform_bins_follow_torchmetrics_away_from_confidence_one():
    z, y = _data(n=2000, c=10, seed=4, dtype=torch.float32)
    p = torch.softmax(z, -1)
    assert bool((p.amax(-1) < 1).all())
    for norm in NORMS:
        got = expected_calibration_error(z, y, norm=norm)
        want = ref.ece_torchmetrics_convention(p.double().numpy(), y.numpy(), 15, norm)
        assert got.item() == pytest.approx(want, abs=1e-5)


def test_confidence_one_joins_the_last_bin_not_an_extra_bin():
    """The documented difference from torchmetrics: c == 1 is in bin n_bins - 1 here."""
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.95, 0.05], [0.95, 0.05]])
    y = torch.tensor([0, 1, 1, 1])
    got = expected_calibration_error(p, y, n_bins=10, from_logits=False)
    # one bin [0.9, 1]: accuracy 1/4, confidence 0.975
    assert got.item() == pytest.approx(0.725, abs=1e-6)
    assert ref.ece(p.double().numpy(), y.numpy(), 10) == pytest.approx(0.725, abs=1e-6)
    # torchmetrics: {1.0, 1.0} (acc 1/2) and {0.95, 0.95} (acc 0) separately
    tm = ref.ece_torchmetrics_convention(p.double().numpy(), y.numpy(), 10)
    assert tm == pytest.approx(0.5 * 0.5 + 0.5 * 0.95, abs=1e-6)


# ----------------------------------------------------------------------- Brier and NLL


@pytest.mark.parametrize("from_logits", [True, False])
def test_brier_matches_reference_and_sklearn(from_logits):
    z, y = _data(n=200, c=4, seed=5)
    p = torch.softmax(z, -1)
    x = z if from_logits else p
    per = brier_score(x, y, from_logits=from_logits, reduction="none")
    np.testing.assert_allclose(per.numpy(), ref.brier(p.numpy(), y.numpy()), atol=1e-13)
    mean = brier_score(x, y, from_logits=from_logits)
    skl = brier_score_loss(y.numpy(), p.numpy(), labels=list(range(4)), scale_by_half=False)
    assert mean.item() == pytest.approx(skl, abs=1e-13)
    total = brier_score(x, y, from_logits=from_logits, reduction="sum")
    assert total.item() == pytest.approx(per.sum().item(), abs=1e-12)


def test_brier_keeps_precision_near_one_hot():
    z = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)
    got = brier_score(z, torch.tensor([0])).item()
    q = math.exp(-30.0) / (1 + 2 * math.exp(-30.0))
    assert got == pytest.approx(2 * q * q + (2 * q) ** 2, rel=1e-10)


@pytest.mark.parametrize("from_logits", [True, False])
def test_nll_matches_reference_sklearn_and_cross_entropy(from_logits):
    z, y = _data(n=200, c=6, seed=6)
    p = torch.softmax(z, -1)
    x = z if from_logits else p
    per = negative_log_likelihood(x, y, from_logits=from_logits, reduction="none")
    np.testing.assert_allclose(per.numpy(), ref.nll_from_logits(z.numpy(), y.numpy()), rtol=1e-10)
    mean = negative_log_likelihood(x, y, from_logits=from_logits)
    assert mean.item() == pytest.approx(log_loss(y.numpy(), p.numpy(), labels=range(6)), rel=1e-10)
    assert mean.item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-12)


def test_nll_stable_for_extreme_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype=torch.float32)
    y = torch.tensor([1, 1])
    got = negative_log_likelihood(z, y, reduction="none")
    want = ref.nll_from_logits(z.double().numpy(), y.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert got[0].item() == pytest.approx(2e4) and got[1].item() == 0.0
    assert bool(torch.isfinite(expected_calibration_error(z, y)))


def test_nll_from_probabilities_clamps_at_tiny():
    p = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    got = negative_log_likelihood(p, torch.tensor([1]), from_logits=False)
    assert got.item() == pytest.approx(-math.log(torch.finfo(torch.float64).tiny))
    p32 = p.float()
    got32 = negative_log_likelihood(p32, torch.tensor([1]), from_logits=False)
    assert got32.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-6)


def test_masked_logits_equal_zero_probabilities():
    z, y = _data(n=120, c=5, seed=7)
    z[:, 4] = -math.inf
    y = y.clamp(max=3)
    p = torch.softmax(z, -1)
    assert bool((p[:, 4] == 0).all())
    for fn in (expected_calibration_error, classwise_calibration_error, brier_score):
        assert fn(z, y).item() == pytest.approx(fn(p, y, from_logits=False).item(), abs=1e-12)
    assert negative_log_likelihood(z, y).item() == pytest.approx(
        negative_log_likelihood(p, y, from_logits=False).item(), rel=1e-12
    )


# ------------------------------------------------------------------ hypothesis properties


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    c=st.integers(1, 6),
    n_bins=st.integers(1, 20),
    scale=st.floats(0.0, 20.0),
    binning=st.sampled_from(BINNINGS),
    seed=st.integers(0, 2**16),
)
def test_ece_bounds_and_norm_order(n, c, n_bins, scale, binning, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    values = {
        norm: expected_calibration_error(z, y, n_bins=n_bins, norm=norm, binning=binning).item()
        for norm in NORMS
    }
    assert 0.0 <= values["l1"] <= values["l2"] + 1e-12 <= values["max"] + 2e-12 <= 1.0 + 2e-12
    cw = classwise_calibration_error(z, y, n_bins=n_bins, binning=binning).item()
    assert 0.0 <= cw <= 1.0
    counts = reliability_curve(z, y, n_bins=n_bins, binning=binning).count
    assert int(counts.sum()) == n
    if binning == "adaptive":
        assert set(counts.tolist()) <= {n // n_bins, -(-n // n_bins)}


@settings(max_examples=20, deadline=None)
@given(
    groups=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 12)), min_size=1, max_size=6),
    n_bins=st.integers(1, 25),
)
def test_ece_is_zero_for_a_perfectly_calibrated_construction(groups, n_bins):
    """Samples sharing confidence c = a / m with exactly a of m correct: acc_b = conf_b."""
    probs, target = [], []
    for m, extra in groups:
        m = m + extra  # m samples, a correct with a / m > 1/2 (no argmax tie)
        a = m // 2 + 1
        c = a / m
        probs += [[c, 1 - c]] * m
        target += [0] * a + [1] * (m - a)
    p = torch.tensor(probs, dtype=torch.float64)
    y = torch.tensor(target)
    for norm in NORMS:
        got = expected_calibration_error(p, y, n_bins=n_bins, norm=norm, from_logits=False)
        assert got.item() == pytest.approx(0.0, abs=1e-12)


def test_adaptive_ece_is_zero_when_each_bin_is_calibrated():
    probs, target = [], []
    for a in (6, 7, 8, 9, 10):  # 5 bins of 10 samples, confidence a/10, a correct
        probs += [[a / 10, 1 - a / 10]] * 10
        target += [0] * a + [1] * (10 - a)
    p, y = torch.tensor(probs, dtype=torch.float64), torch.tensor(target)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    got = expected_calibration_error(
        p[perm], y[perm], n_bins=5, binning="adaptive", from_logits=False
    )
    assert got.item() == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), shift=st.floats(-50, 50), binning=st.sampled_from(BINNINGS))
def test_invariances(seed, shift, binning):
    z, y = _data(n=80, c=4, seed=seed)
    base = expected_calibration_error(z, y, binning=binning).item()
    cw = classwise_calibration_error(z, y, binning=binning).item()
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(80, generator=g)
    cols = torch.randperm(4, generator=g)
    inverse = torch.argsort(cols)
    # sample order, class relabelling, a constant added to every logit
    assert expected_calibration_error(z[rows], y[rows], binning=binning).item() == pytest.approx(
        base, abs=1e-12
    )
    assert expected_calibration_error(z[:, cols], inverse[y], binning=binning).item() == (
        pytest.approx(base, abs=1e-12)
    )
    assert classwise_calibration_error(z[:, cols], inverse[y], binning=binning).item() == (
        pytest.approx(cw, abs=1e-12)
    )
    assert expected_calibration_error(z + shift, y, binning=binning).item() == pytest.approx(
        base, abs=1e-9
    )
    p = torch.softmax(z, -1)
    assert expected_calibration_error(p, y, binning=binning, from_logits=False).item() == (
        pytest.approx(base, abs=1e-12)
    )


# ---------------------------------------------------------------------- dtypes and edges


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_computed_in_float32(dtype):
    z, y = _data(n=2000, c=10, seed=8, dtype=dtype)
    for fn in (
        expected_calibration_error,
        classwise_calibration_error,
        brier_score,
        negative_log_likelihood,
    ):
        got = fn(z, y)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(fn(z.float(), y).item(), abs=1e-6)
        assert got.item() == pytest.approx(fn(z.double(), y).item(), abs=2e-3)
    curve = reliability_curve(z, y)
    assert curve.confidence.dtype == torch.float32 and curve.bin_edges.dtype == torch.float32


def test_float64_stays_float64():
    z, y = _data(n=50)
    assert brier_score(z, y, reduction="none").dtype == torch.float64
    assert negative_log_likelihood(z, y).dtype == torch.float64


def test_empty_input():
    z = torch.zeros(0, 3)
    y = torch.zeros(0, dtype=torch.long)
    assert math.isnan(expected_calibration_error(z, y).item())
    assert math.isnan(classwise_calibration_error(z, y, binning="adaptive").item())
    assert math.isnan(brier_score(z, y).item()) and brier_score(z, y, reduction="sum").item() == 0
    assert negative_log_likelihood(z, y, reduction="none").shape == (0,)
    curve = reliability_curve(z, y, n_bins=4, binning="adaptive")
    assert curve.count.tolist() == [0] * 4 and curve.bin_edges.shape == (5,)


def test_single_class():
    z = torch.randn(10, 1)
    y = torch.zeros(10, dtype=torch.long)
    assert expected_calibration_error(z, y).item() == 0.0
    assert classwise_calibration_error(z, y).item() == 0.0
    assert brier_score(z, y).item() == 0.0 and negative_log_likelihood(z, y).item() == 0.0


def test_metrics_ignore_autograd():
    z, y = _data(n=30)
    z.requires_grad_(True)
    for fn in (
        expected_calibration_error,
        classwise_calibration_error,
        brier_score,
        negative_log_likelihood,
    ):
        assert not fn(z, y).requires_grad


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "fn",
    [
        expected_calibration_error,
        classwise_calibration_error,
        brier_score,
        negative_log_likelihood,
        reliability_curve,
    ],
)
def test_input_errors(fn):
    z, y = _data(n=10, c=3, dtype=torch.float32)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        fn(y.view(10, 1).expand(10, 3), y)
    with pytest.raises(ValueError, match=r"input must have shape \(N, C\)"):
        fn(z[0], y)
    with pytest.raises(ValueError, match="C >= 1"):
        fn(torch.zeros(10, 0), y)
    with pytest.raises(ValueError, match=r"target must have shape \(10,\)"):
        fn(z, y[:5])
    with pytest.raises(TypeError, match="target must hold class indices"):
        fn(z, y.float())
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 2\], got 3"):
        fn(z, torch.full((10,), 3))
    with pytest.raises(ValueError, match=r"got -1"):
        fn(z, torch.full((10,), -1))
    bad = z.clone()
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match="input must not contain NaN"):
        fn(bad, y)
    bad[2, 1] = math.inf
    with pytest.raises(ValueError, match=r"must not contain \+inf"):
        fn(bad, y)
    bad[2] = -math.inf
    with pytest.raises(ValueError, match="finite entry in every row"):
        fn(bad, y)
    with pytest.raises(TypeError, match="from_logits must be a bool"):
        fn(z, y, from_logits=1)


@pytest.mark.parametrize(
    "fn",
    [
        expected_calibration_error,
        classwise_calibration_error,
        brier_score,
        negative_log_likelihood,
        reliability_curve,
    ],
)
def test_probability_errors(fn):
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"rows summing to 1 \(within"):
        fn(p * 0.9, y, from_logits=False)
    with pytest.raises(ValueError, match=r"input must have all values in \[0, 1\], got 1.2"):
        fn(torch.tensor([[1.2, -0.2], [0.2, 0.8]]), y, from_logits=False)
    with pytest.raises(ValueError, match=r"input must have all values in \[0, 1\], got nan"):
        fn(torch.tensor([[math.nan, 0.5], [0.2, 0.8]]), y, from_logits=False)
    # bf16 rounding is tolerated: sqrt(eps) of the input dtype
    out = fn(torch.softmax(torch.randn(2, 300), -1).bfloat16(), y, from_logits=False)
    counts = out.count if isinstance(out, ReliabilityCurve) else None
    assert (int(counts.sum()) == 2) if counts is not None else bool(torch.isfinite(out))


def test_option_errors():
    z, y = _data(n=10, c=3)
    with pytest.raises(ValueError, match="norm must be one of 'l1', 'l2', 'max', got 'l3'"):
        expected_calibration_error(z, y, norm="l3")
    with pytest.raises(ValueError, match="binning must be one of 'uniform', 'adaptive'"):
        classwise_calibration_error(z, y, binning="quantile")
    with pytest.raises(ValueError, match=r"n_bins must be in \[1, inf\], got 0"):
        reliability_curve(z, y, n_bins=0)
    with pytest.raises(TypeError, match="n_bins must be an int"):
        expected_calibration_error(z, y, n_bins=2.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        brier_score(z, y, reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        negative_log_likelihood(z, y, reduction="batchmean")


@pytest.mark.parametrize("from_logits", [True, False])
def test_row_blocks_give_the_same_result(monkeypatch, from_logits):
    """Results do not depend on the row-block size (blocks of 3 rows vs one block)."""
    import softmaxkit.calibration.metrics as M

    z, y = _data(n=101, c=7, seed=9)
    x = z if from_logits else torch.softmax(z, -1)
    calls = {
        "ece": lambda: expected_calibration_error(x, y, from_logits=from_logits),
        "cw": lambda: classwise_calibration_error(x, y, from_logits=from_logits),
        "brier": lambda: brier_score(x, y, from_logits=from_logits, reduction="none"),
        "nll": lambda: negative_log_likelihood(x, y, from_logits=from_logits, reduction="none"),
    }
    whole = {k: f() for k, f in calls.items()}
    monkeypatch.setattr(M, "_BLOCK", 21)
    for k, f in calls.items():
        torch.testing.assert_close(f(), whole[k], rtol=1e-13, atol=1e-14)
    assert torch.equal(x, z if from_logits else torch.softmax(z, -1))  # input untouched


def test_compiles():
    z, y = _data(n=300, c=7, seed=10, dtype=torch.float32)
    for fn in (expected_calibration_error, brier_score, negative_log_likelihood):
        torch.testing.assert_close(torch.compile(fn)(z, y), fn(z, y))


# ------------------------------------------------------------ issue 11: edges of the input

METRICS = {
    "ece": expected_calibration_error,
    "ece_adaptive_l2": lambda x, y, **kw: expected_calibration_error(
        x, y, binning="adaptive", norm="l2", **kw
    ),
    "classwise": classwise_calibration_error,
    "classwise_adaptive": lambda x, y, **kw: classwise_calibration_error(
        x, y, binning="adaptive", **kw
    ),
    "brier": lambda x, y, **kw: brier_score(x, y, reduction="none", **kw),
    "nll": lambda x, y, **kw: negative_log_likelihood(x, y, reduction="none", **kw),
    "curve": lambda x, y, **kw: reliability_curve(x, y, **kw).confidence,
}


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_integer_labels_of_every_dtype(name, dtype):
    """int32 labels (torch.from_numpy of an int32 array) crashed nll and uint8 brier."""
    fn = METRICS[name]
    z, y = _data(n=60, c=5, seed=12)
    for from_logits in (True, False):
        x = z if from_logits else torch.softmax(z, -1)
        expected = fn(x, y, from_logits=from_logits)
        got = fn(x, y.to(dtype), from_logits=from_logits)
        torch.testing.assert_close(got, expected, equal_nan=True)
    with pytest.raises(TypeError, match="target must hold class indices"):
        fn(z, y == 1)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_probabilities_passed_as_logits_warn(name):
    fn = METRICS[name]
    z, y = _data(n=40, c=4, seed=13, dtype=torch.float32)
    p = torch.softmax(z, -1)
    with pytest.warns(UserWarning, match="from_logits=False") as record:
        fn(p, y)
    assert record[0].filename == __file__  # the user's call site, not the library's
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.warns(UserWarning, match="looks like probabilities"):
            fn(p.to(dtype), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(z, y)  # ordinary logits
        fn(p, y, from_logits=False)  # probabilities, said so
        fn(0.5 * p, y)  # in [0, 1], rows summing to 0.5: logits that happen to be small
        fn(torch.rand(40, 4, generator=torch.Generator().manual_seed(0)), y)  # in [0, 1]
        fn(torch.ones(40, 1), torch.zeros(40, dtype=torch.long))  # C = 1: no difference


def test_probabilities_warning_once_per_call_site():
    """Python's default filter shows the warning once per call site (line of user code)."""
    z, y = _data(n=40, c=4, seed=14, dtype=torch.float32)
    p = torch.softmax(z, -1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for _ in range(3):
            expected_calibration_error(p, y)  # one call site, called three times
        brier_score(p, y)  # another call site
    assert len(record) == 2
    assert {r.lineno for r in record} == {
        test_probabilities_warning_once_per_call_site.__code__.co_firstlineno + 7,
        test_probabilities_warning_once_per_call_site.__code__.co_firstlineno + 8,
    }


@pytest.mark.parametrize(
    "dtype,magnitude",
    [
        (torch.float32, 1e19),
        (torch.float32, 1e30),
        (torch.float32, 3e38),
        (torch.float16, 6e4),
        (torch.bfloat16, 3e38),
    ],
)
@pytest.mark.parametrize("name", sorted(METRICS))
def test_logits_anywhere_in_the_float_range(name, dtype, magnitude):
    """As the contract's extreme-magnitude test (which the metric cases cannot take: their
    probability samples cannot be scaled): the result from logits near the dtype's
    maximum is finite and matches float64 on the same (rounded) logits."""
    fn = METRICS[name]
    z, y = _data(n=48, c=5, seed=15)
    x = (z * (magnitude / z.abs().max())).to(dtype)
    got, expected = fn(x, y).double(), fn(x.double(), y)
    shown = torch.isfinite(expected) & (expected.abs() <= torch.finfo(dtype).max)
    assert torch.isfinite(got[shown]).all()
    torch.testing.assert_close(got[shown], expected[shown], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("binning", BINNINGS)
@pytest.mark.parametrize("from_logits", [True, False])
def test_noncontiguous_input_gives_no_performance_warning(binning, from_logits):
    """A strided input is made contiguous once before torch.bucketize (which would copy it
    itself, with a "non-contiguous" performance warning) and gives the same result."""
    z, y = _data(n=50, c=4, seed=16)
    x = z if from_logits else torch.softmax(z, -1)
    strided = torch.stack([x, torch.zeros_like(x)], -1)[..., 0]
    assert not strided.is_contiguous()
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch shows the bucketize warning once per process
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for fn in (classwise_calibration_error, expected_calibration_error):
                got = fn(strided, y, from_logits=from_logits, binning=binning)
                assert got == fn(x, y, from_logits=from_logits, binning=binning)
    finally:
        torch.set_warn_always(warn_always)
