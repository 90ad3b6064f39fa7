"""Mahalanobis detector (Lee et al. 2018): fit, score, pre-processing, ensemble, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.linear_model import LogisticRegression

from softmaxkit.ood import (
    NOISE_MAGNITUDES,
    Mahalanobis,
    MahalanobisEnsemble,
    auroc,
    fpr_at_tpr,
    logistic_regression,
)
from softmaxkit.ood import mahalanobis as mmod
from tests.reference import ood_ref as ref


def _clusters(n=600, d=8, classes=4, sep=4.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g, dtype=torch.float64) * sep
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d)
    y = torch.arange(n) % classes
    f = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    return f.to(dtype), y, centres, mix


def test_fit_matches_reference_and_sklearn():
    f, y, _, _ = _clusters()
    det = Mahalanobis().fit(f, y)
    means, cov, prec = ref.mahalanobis_fit(f.numpy(), y.numpy(), 4)
    np.testing.assert_allclose(det.means.numpy(), means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(det.covariance.numpy(), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(det.precision.numpy(), prec, rtol=1e-8, atol=1e-10)
    # the official sample_estimator: sklearn EmpiricalCovariance on class-centred features
    centred = np.concatenate([f[y == c].numpy() - f[y == c].numpy().mean(0) for c in range(4)])
    sk = EmpiricalCovariance(assume_centered=False).fit(centred)
    np.testing.assert_allclose(det.covariance.numpy(), sk.covariance_, atol=1e-12)
    np.testing.assert_allclose(det.precision.numpy(), sk.precision_, rtol=1e-8, atol=1e-10)
    assert det.num_classes == 4


def test_score_matches_reference_float64():
    f, y, _, _ = _clusters()
    det = Mahalanobis().fit(f, y)
    q, _, _, _ = _clusters(n=50, seed=1, sep=6.0)
    _, _, prec = ref.mahalanobis_fit(f.numpy(), y.numpy(), 4)
    want_cls = ref.mahalanobis_class_scores(q.numpy(), det.means.numpy(), prec)
    np.testing.assert_allclose(det.class_scores(q).numpy(), want_cls, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(det.score(q).numpy(), want_cls.max(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(det(q).numpy(), want_cls.max(1), rtol=1e-9, atol=1e-9)


def test_chunked_scoring_equals_one_block(monkeypatch):
    f, y, _, _ = _clusters()
    det = Mahalanobis().fit(f, y)
    whole = det.score(f)
    monkeypatch.setattr(mmod, "_BLOCK_ELEMENTS", 24)  # 3 rows per chunk
    torch.testing.assert_close(det.score(f), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(dtype):
    f, y, _, _ = _clusters()
    det = Mahalanobis().fit(f.to(dtype), y)  # fitted in float64 from the rounded features
    q = f[:64].to(dtype)
    out = det.score(q)
    assert out.dtype == dtype
    fitted = f.to(dtype).double()
    _, _, prec = ref.mahalanobis_fit(fitted.numpy(), y.numpy(), 4)
    want = ref.mahalanobis_score(q.double().numpy(), det.means.numpy(), prec)
    # the official float32 computation: per class, (f - mu) P (f - mu) with a float32 P
    q32, p32, mu32 = q.float(), det.precision.float(), det.means.float()
    plain = torch.stack([-(((q32 - m) @ p32) * (q32 - m)).sum(1) for m in mu32], 1).amax(1)
    plain_err = np.abs(plain.double().numpy() - want).max()
    rounding = np.abs(torch.from_numpy(want).to(dtype).double().numpy() - want).max()
    err = np.abs(out.double().numpy() - want).max()
    assert err <= 4 * max(plain_err, rounding)


def test_eps_ridge_and_rank_deficient():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(6, 10, generator=g, dtype=torch.float64)  # d > N: singular covariance
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.warns(UserWarning, match=r"singular \(rank 4 of 10"):
        det = Mahalanobis().fit(f, y)
    _, _, prec = ref.mahalanobis_fit(f.numpy(), y.numpy(), 2)
    np.testing.assert_allclose(det.precision.numpy(), prec, rtol=1e-7, atol=1e-8)
    assert torch.isfinite(det.score(f)).all()
    det = Mahalanobis(eps=0.1).fit(f, y)
    means, _, prec = ref.mahalanobis_fit(f.numpy(), y.numpy(), 2, eps=0.1)
    np.testing.assert_allclose(
        det.score(f).numpy(), ref.mahalanobis_score(f.numpy(), means, prec), rtol=1e-9
    )


def test_spatial_maps_are_averaged():
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(40, 3, 5, 4, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 2
    pooled = maps.mean((2, 3))
    a, b = Mahalanobis().fit(maps, y), Mahalanobis().fit(pooled, y)
    torch.testing.assert_close(a.score(maps), b.score(pooled))


def test_gradcheck_score():
    f, y, _, _ = _clusters(n=60, d=3, classes=2)
    det = Mahalanobis().fit(f, y)
    q = f[:5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(det.score, (q,))


def test_paper_claim_shifted_cluster_is_separated():
    """Gaussian class clusters (the paper's GDA model): a shifted OOD cluster is found
    with AUROC > 0.99, while the max class score of held-out ID data stays high."""
    f, y, centres, mix = _clusters(n=2000, d=16, classes=5, sep=3.0, dtype=torch.float32)
    det = Mahalanobis().fit(f, y)
    test_in, _, _, _ = _clusters(n=1000, d=16, classes=5, sep=3.0, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    ood = centres.mean(0) + 6.0 + torch.randn(1000, 16, generator=g, dtype=torch.float64) @ mix
    a = auroc(det.score(test_in), det.score(ood.float()))
    assert a.item() > 0.99


# ------------------------------------------------------------ pre-processing
class _Linear(torch.nn.Module):
    """x (N, C, H, W) -> features A vec(x) (N, d), and a list [relu, linear] when asked."""

    def __init__(self, c=3, h=2, w=2, d=4, as_list=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.randn(d, c * h * w, generator=g, dtype=torch.float64))
        with torch.no_grad():
            self.a[:, 0] = 0.0  # input entry 0 has exactly zero gradient
        self.as_list = as_list

    def forward(self, x):
        f = x.flatten(1) @ self.a.T
        return [torch.relu(f), f] if self.as_list else f


def test_preprocess_matches_hand_gradient():
    model = _Linear()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    det = Mahalanobis().fit(model(x).detach(), y)
    std = (0.2023, 0.1994, 0.2010)
    eps = 0.0014
    got = det.preprocess(model, x, noise_magnitude=eps, input_std=std)
    # hand gradient of (f - mu_c)^T P (f - mu_c), f = A vec(x): 2 A^T P (f - mu_c)
    a = model.a.detach().numpy()
    f = x.flatten(1).numpy() @ a.T
    prec, means = det.precision.numpy(), det.means.numpy()
    cls = ref.mahalanobis_class_scores(f, means, prec).argmax(1)
    grad = 2 * (f - means[cls]) @ prec @ a
    sign = np.where(grad >= 0, 1.0, -1.0).reshape(x.shape)
    want = x.numpy() - eps * sign / np.array(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-15)
    # zero gradient -> +1 (official sign convention): entry 0 moves by -eps / std_0
    np.testing.assert_allclose((x - got)[:, 0, 0, 0].numpy(), eps / std[0], rtol=1e-12)
    assert model.a.grad is None  # no parameter gradients left behind


def test_preprocess_increases_score_and_score_inputs():
    model = _Linear(as_list=True, seed=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 2
    det = Mahalanobis().fit(model(x)[1].detach(), y)
    clean = det.score_inputs(model, x, layer=1)
    torch.testing.assert_close(clean, det.score(model(x)[1].detach()))
    noisy = det.score_inputs(model, x, noise_magnitude=1e-4, layer=1)
    assert (noisy >= clean - 1e-12).all() and (noisy > clean).float().mean() > 0.9
    x_hat = det.preprocess(model, x, noise_magnitude=1e-4, layer=1)
    torch.testing.assert_close(noisy, det.score(model(x_hat)[1]))


def test_noise_magnitudes_are_the_papers():
    assert NOISE_MAGNITUDES == (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)


# ---------------------------------------------------------------- ensemble
@pytest.mark.parametrize("C", [1.0, 0.05])
def test_logistic_regression_matches_sklearn(C):
    g = torch.Generator().manual_seed(int(C * 100))
    x = torch.randn(400, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 20.0, 300.0])
    logit = 1.5 * x[:, 0] - 0.05 * x[:, 1] + 0.002 * x[:, 2] + 0.3
    y = (torch.rand(400, generator=g, dtype=torch.float64) < torch.sigmoid(logit)).long()
    w, b = logistic_regression(x, y, C=C)
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), sk.coef_[0], rtol=1e-5, atol=1e-9)
    assert b.item() == pytest.approx(sk.intercept_[0], rel=1e-5, abs=1e-8)


def test_ensemble_fits_layers_and_separates():
    f1, y, centres, mix = _clusters(n=800, d=6, classes=3, seed=0)
    f2 = torch.tanh(f1 @ torch.randn(6, 5, generator=torch.Generator().manual_seed(1)).double())
    ens = MahalanobisEnsemble().fit([f1, f2], y)
    assert len(ens.detectors) == 2
    torch.testing.assert_close(ens.layer_scores([f1, f2])[:, 0], ens.detectors[0].score(f1))
    g = torch.Generator().manual_seed(7)
    val_in, _, _, _ = _clusters(n=300, d=6, classes=3, seed=0)
    val_out = val_in + 5 + torch.randn(300, 6, generator=g, dtype=torch.float64)
    proj = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)).double()

    def layers(f):
        return [f, torch.tanh(f @ proj)]

    ens.fit_regression(layers(val_in), layers(val_out))
    s_in, s_out = ens.score(layers(val_in)), ens.score(layers(val_out))
    assert s_in.dtype == torch.float64 and s_in.shape == (300,)
    assert auroc(s_in, s_out).item() > 0.99
    # the weights are those of a regression on the layer scores
    x = torch.cat([ens.layer_scores(layers(val_in)), ens.layer_scores(layers(val_out))])
    lab = torch.cat([torch.ones(300), torch.zeros(300)])
    w, b = logistic_regression(x, lab)
    torch.testing.assert_close(ens.weight, w)
    torch.testing.assert_close(ens.combine(x[:3]), x[:3] @ w + b)


def test_ensemble_score_inputs_perturbs_each_layer():
    model = _Linear(as_list=True, seed=4)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 2
    ens = MahalanobisEnsemble().fit([t.detach() for t in model(x)], y)
    scores = ens.layer_scores_inputs(model, x, noise_magnitude=1e-3)
    for i, det in enumerate(ens.detectors):
        torch.testing.assert_close(
            scores[:, i], det.score_inputs(model, x, noise_magnitude=1e-3, layer=i)
        )
    x_out = x + 3
    ens.fit_regression_scores(scores, ens.layer_scores_inputs(model, x_out, noise_magnitude=1e-3))
    out = ens.score_inputs(model, x, noise_magnitude=1e-3)
    torch.testing.assert_close(out, ens.combine(scores))


def test_fit_validation_picks_the_best_noise_magnitude():
    model = _Linear(as_list=True, seed=6)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(60, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 2
    ens = MahalanobisEnsemble().fit([t.detach() for t in model(x)], y)
    val_in = torch.randn(40, 3, 2, 2, generator=g, dtype=torch.float64)
    val_out = 1.3 * torch.randn(40, 3, 2, 2, generator=g, dtype=torch.float64) + 0.3
    mags = (0.0, 0.05, 0.01, 0.2)
    ens.fit_validation(model, val_in, val_out, noise_magnitudes=mags)
    # the protocol by hand: fit on the first halves, FPR@95 on the second halves
    fprs, fits = [], []
    for eps in mags:
        s_in = ens.layer_scores_inputs(model, val_in, noise_magnitude=eps)
        s_out = ens.layer_scores_inputs(model, val_out, noise_magnitude=eps)
        x_fit = torch.cat([s_in[:20], s_out[:20]])
        w, b = logistic_regression(x_fit, torch.cat([torch.ones(20), torch.zeros(20)]))
        fits.append((w, b))
        fprs.append(fpr_at_tpr(s_in[20:] @ w + b, s_out[20:] @ w + b).item())
    best = int(np.argmin(fprs))
    assert ens.noise_magnitude == mags[best]
    assert ens.validation_fpr == fprs[best]
    torch.testing.assert_close(ens.weight, fits[best][0])
    torch.testing.assert_close(
        ens.score_inputs(model, val_in), ens.score_inputs(model, val_in, noise_magnitude=mags[best])
    )


def test_errors():
    f, y, _, _ = _clusters(n=40, d=3, classes=2)
    with pytest.raises(RuntimeError, match="before fit"):
        Mahalanobis().score(f)
    with pytest.raises(ValueError, match="target must hold every class"):
        Mahalanobis().fit(f, y, num_classes=3)
    with pytest.raises(ValueError, match="target must hold class indices in"):
        Mahalanobis().fit(f, y + 1, num_classes=2)
    with pytest.raises(TypeError, match="target must hold class indices"):
        Mahalanobis().fit(f, y.double())
    with pytest.raises(ValueError, match="target must have shape"):
        Mahalanobis().fit(f, y[:-1])
    with pytest.raises(ValueError, match="features must have all values in"):
        Mahalanobis().fit(f.masked_fill(f > 1, float("nan")), y)
    with pytest.raises(ValueError, match="eps must be in"):
        Mahalanobis(eps=-1.0)
    det = Mahalanobis().fit(f, y)
    with pytest.raises(ValueError, match="features must have 3 features"):
        det.score(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="features must not contain NaN"):
        det.score(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="features must be"):
        det.score(torch.zeros(3))
    model = _Linear(as_list=True, d=3)
    x = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer must be given"):
        det.preprocess(model, x, noise_magnitude=0.01)
    with pytest.raises(ValueError, match="layer must be in"):
        det.preprocess(model, x, noise_magnitude=0.01, layer=5)
    with pytest.raises(ValueError, match="noise_magnitude must be in"):
        det.preprocess(model, x, noise_magnitude=-0.01, layer=0)
    with pytest.raises(ValueError, match="input_std must have one entry per input channel"):
        det.preprocess(model, x, noise_magnitude=0.01, layer=0, input_std=(1.0, 2.0))
    with pytest.raises(TypeError, match="model must be callable"):
        det.preprocess(3, x, noise_magnitude=0.01)
    ens = MahalanobisEnsemble()
    with pytest.raises(TypeError, match="features must be a non-empty list"):
        ens.fit(f, y)
    ens.fit([f, f], y)
    with pytest.raises(ValueError, match="must hold 2 layers"):
        ens.layer_scores([f])
    with pytest.raises(RuntimeError, match="before fit_regression"):
        ens.score([f, f])
    with pytest.raises(ValueError, match="y must hold the labels 0 and 1 only, got 2"):
        logistic_regression(f, y * 2)
    with pytest.raises(ValueError, match="C must be in"):
        logistic_regression(f, y, C=0.0)
    x = torch.zeros(4, 3, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="inputs_out must hold at least 2 samples"):
        MahalanobisEnsemble().fit_validation(model, x, x[:1])
    with pytest.raises(ValueError, match="noise_magnitudes must be in"):
        MahalanobisEnsemble().fit_validation(model, x, x, noise_magnitudes=(-1.0,))
