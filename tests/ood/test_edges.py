"""Issue 11 at the edges of the OOD detectors: integer labels of every dtype, degenerate
and shrunk covariance fits, features far from 1 in magnitude, a large common offset in
float32, and the argument checks of the ensemble's regression and of the logistic fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from softmaxkit.ood import (
    KNNScore,
    Mahalanobis,
    MahalanobisEnsemble,
    PrototypeScore,
    SSDScore,
    logistic_regression,
)
from tests.reference import ood_ref as ref

INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _clusters(n=300, d=6, classes=3, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    f = torch.randn(n, d, generator=g, dtype=torch.float64) + 3 * torch.eye(classes, d)[y]
    return f + offset, y


def _queries(n=40, d=6, seed=1, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + offset


# ------------------------------------------------------------ 1. integer label dtypes
@pytest.mark.parametrize("dtype", INDEX_DTYPES)
def test_mahalanobis_takes_every_integer_label_dtype(dtype):
    f, y = _clusters()
    q = _queries()
    want = Mahalanobis().fit(f, y).score(q)
    for num_classes in (None, 3):
        det = Mahalanobis().fit(f, y.to(dtype), num_classes=num_classes)
        torch.testing.assert_close(det.score(q), want, rtol=0, atol=0)
    ens = MahalanobisEnsemble().fit([f, f[:, :4]], y.to(dtype))
    assert len(ens.detectors) == 2


def test_prototype_labels_of_any_integer_dtype():
    protos = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    q = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    want = PrototypeScore(protos, prototype_labels=labels).score(q)
    for dtype in INDEX_DTYPES:
        got = PrototypeScore(protos, prototype_labels=labels.to(dtype)).score(q)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.float32, torch.bool])
def test_float_and_bool_labels_are_type_errors(bad):
    f, y = _clusters()
    with pytest.raises(TypeError, match="target"):
        Mahalanobis().fit(f, y.to(bad))


def test_logistic_regression_labels_are_zero_or_one():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(4))
    y = torch.arange(20) % 2
    want = logistic_regression(x, y)
    for dtype in (torch.uint8, torch.int32, torch.float32, torch.bool):
        got = logistic_regression(x, y.to(dtype))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for value in (0.5, 2.0, -1.0, float("nan")):
        wrong = y.to(torch.float32)
        wrong[3] = value
        with pytest.raises(ValueError, match="y must hold the labels 0 and 1"):
            logistic_regression(x, wrong)


# ---------------------------------------------------------- 4. degenerate covariances
def test_one_sample_per_class_raises_with_the_samples_needed():
    f, y = _clusters(n=3)  # one sample per class: every centred feature is 0
    with pytest.raises(ValueError, match=r"covariance of the features is zero.*9 samples"):
        Mahalanobis().fit(f, y)
    with pytest.raises(ValueError, match="covariance of the features is zero"):
        Mahalanobis(covariance="ledoit_wolf").fit(f, y)  # shrinks towards 0 * I
    det = Mahalanobis(eps=0.5).fit(f, y)  # a ridge alone: squared Euclidean / eps
    q = _queries()
    want = -((q[:, None, :] - f[None]) ** 2).sum(-1).amin(1) / 0.5
    torch.testing.assert_close(det.score(q), want)


def test_rank_deficient_covariance_warns_and_shrinkage_does_not():
    f, y = _clusters(n=8, d=10, classes=2)  # rank <= 8 - 2 = 6 of 10
    with pytest.warns(UserWarning, match=r"singular \(rank 6 of 10.*12 samples"):
        det = Mahalanobis().fit(f, y)
    assert torch.isfinite(det.score(_queries(d=10))).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Mahalanobis(covariance="ledoit_wolf").fit(f, y)
        Mahalanobis(eps=1e-3).fit(f, y)
    dead = torch.cat([_clusters()[0], torch.zeros(300, 1, dtype=torch.float64)], 1)
    with pytest.warns(UserWarning, match=r"rank 6 of 7"):  # a dead (constant) feature
        Mahalanobis().fit(dead, _clusters()[1])


def test_ssd_one_sample_raises_and_few_samples_warn():
    f, _ = _clusters(n=5)
    with pytest.raises(ValueError, match=r"SSDScore.fit: the covariance .* zero.*7 samples"):
        SSDScore().fit(f[:1])
    with pytest.raises(ValueError, match="zero"):
        SSDScore().fit(f[:1].expand(4, -1))  # identical rows
    with pytest.warns(UserWarning, match=r"SSDScore.fit: .* singular \(rank 4 of 6"):
        SSDScore().fit(f)


def test_ledoit_wolf_matches_sklearn_and_the_paper_formula():
    f, y = _clusters(n=40, d=12, classes=4, seed=5)
    det = Mahalanobis(covariance="ledoit_wolf").fit(f, y)
    centred = (f - det.means[y]).numpy()
    sk = LedoitWolf(assume_centered=True).fit(centred)
    np.testing.assert_allclose(det.covariance.numpy(), sk.covariance_, rtol=1e-12, atol=1e-14)
    assert det.shrinkage == pytest.approx(sk.shrinkage_, rel=1e-12)
    np.testing.assert_allclose(det.covariance.numpy(), ref.ledoit_wolf(centred), atol=1e-13)
    np.testing.assert_allclose(
        det.precision.numpy(), np.linalg.inv(sk.covariance_), rtol=1e-9, atol=1e-11
    )
    # SSD+: shrinkage of the standardised unit features' covariance
    ssd = SSDScore(covariance="ledoit_wolf").fit(f)
    q = _queries(d=12)
    np.testing.assert_allclose(
        ssd.score(q).numpy(), ref.ssd_score(f.numpy(), q.numpy(), False, True), rtol=1e-9
    )
    assert Mahalanobis().fit(f, y).shrinkage == 0.0


def test_covariance_option_is_checked():
    for cls in (Mahalanobis, SSDScore):
        with pytest.raises(ValueError, match="covariance must be one of 'empirical'"):
            cls(covariance="shrunk")


# ------------------------------------------------------------ 2./3. magnitudes, offsets
@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300])
def test_far_from_one_features_give_the_scale_free_score(scale):
    """The Mahalanobis and SSD+ scores are scale-free: features times 1e200 (whose
    covariance, 1e400, is not a float64) score as the unscaled ones."""
    f, y = _clusters()
    q = _queries()
    for kw in ({}, {"covariance": "ledoit_wolf"}):
        want = Mahalanobis(**kw).fit(f, y).score(q)
        got = Mahalanobis(**kw).fit(f * scale, y).score(q * scale)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    got = SSDScore().fit(f * scale).score(q * scale)
    if scale > 1:  # below 1e-10 the official +1e-10 terms make SSD+ depend on the scale
        torch.testing.assert_close(got, SSDScore().fit(f).score(q))
    assert torch.isfinite(got).all()


def test_features_whose_deviations_overflow_float64_are_a_clear_error():
    f, y = _clusters()
    f[:, 0] = -1.7e308
    f[0, 0] = 1.7e308  # finite, but 3.4e308 from its class mean
    with pytest.raises(ValueError, match="Mahalanobis.fit: the features' deviations"):
        Mahalanobis().fit(f, y)
    f[0, 0] = -1e308  # 7e307 from its class mean: computable (the other features are
    with pytest.warns(UserWarning, match="rank 1 of 6"):  # below its precision: rank 1)
        det = Mahalanobis().fit(f, y)
    assert torch.isfinite(det.score(f)).all()


@pytest.mark.parametrize("offset", [300.0, 1e4])
def test_float32_with_a_large_common_offset(offset):
    """float32 features sharing an offset score as the same float32 values in float64
    (the fit is float64; the centre is rounded to float32 before the class centres are
    projected from it, so ``x - centre`` loses nothing)."""
    f, y = _clusters(offset=offset)
    q = _queries(offset=offset)
    f32, q32 = f.float(), q.float()
    det = Mahalanobis().fit(f32, y)
    want = det.score(q32.double())
    got = det.score(q32).double()
    assert ((got - want).abs() / want.abs().clamp(min=1)).max() < 1e-5
    ssd = SSDScore().fit(f32)
    want = ssd.score(q32.double())
    got = ssd.score(q32).double()
    assert ((got - want).abs() / want.abs().clamp(min=1)).max() < 1e-6


@pytest.mark.parametrize("scale", [1e-30, 3e38])
def test_normalised_scores_at_float32_extremes(scale):
    g = torch.Generator().manual_seed(6)
    train, q = torch.randn(30, 4, generator=g), torch.randn(5, 4, generator=g)
    scale = scale / 4.0  # the entries are below 4 in absolute value
    want = KNNScore(k=3).fit(train).score(q)
    torch.testing.assert_close(KNNScore(k=3).fit(train * scale).score(q * scale), want)
    protos = torch.randn(6, 4, generator=g)
    want = PrototypeScore(protos, num_classes=2).score(q)
    got = PrototypeScore(protos * scale, num_classes=2).score(q * scale)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------ 4. the ensemble's regression
def _fitted_ensemble():
    f, y = _clusters()
    return MahalanobisEnsemble().fit([f, f[:, :4]], y)


def test_fit_regression_scores_names_its_arguments():
    ens = _fitted_ensemble()
    good = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="scores_in must be a torch.Tensor"):
        ens.fit_regression_scores([[0.0, 1.0]], good)
    with pytest.raises(TypeError, match="scores_out must be a torch.Tensor"):
        ens.fit_regression_scores(good, [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"scores_out must have 2 columns"):
        ens.fit_regression_scores(good, torch.randn(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"scores_in must have 2 columns"):
        ens.fit_regression_scores(torch.randn(10, 1, dtype=torch.float64), good)
    with pytest.raises(ValueError, match=r"scores_in must be a 2-D"):
        ens.fit_regression_scores(torch.randn(10, dtype=torch.float64), good)
    nan = good.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="scores_out must have all values in"):
        ens.fit_regression_scores(good, nan)
    with pytest.raises(ValueError, match="scores_out must hold at least one sample"):
        ens.fit_regression_scores(good, good[:0])
    with pytest.raises(ValueError, match="scores_in must hold at least one sample"):
        ens.fit_regression_scores(good[:0], good)
    ens.fit_regression_scores(good, good + 3)  # fine
    assert ens.weight.shape == (2,)
