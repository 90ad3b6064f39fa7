"""PALM scores (Lu et al. 2024): SSD+ (the published test-time score) and the prototype
mixture score: references, layout, dtypes, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softmaxkit.ood import PrototypeScore, SSDScore, auroc
from tests.reference import ood_ref as ref


def _feats(n, d=12, seed=0, shift=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 3.0, d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale + 1.0 + shift).to(dtype)


# ---------------------------------------------------------------------- SSD+
@pytest.mark.parametrize("official", [False, True])
def test_ssd_matches_official_transcription(official):
    train, query = _feats(500), _feats(60, seed=1, shift=0.5)
    got = SSDScore(official_centering=official).fit(train).score(query)
    want = ref.ssd_score(train.numpy(), query.numpy(), official_centering=official)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-9)


def test_ssd_centring_differs_only_by_the_quirk():
    train = _feats(400)
    a = SSDScore().fit(train)
    b = SSDScore(official_centering=True).fit(train)
    assert not torch.allclose(a.score(train), b.score(train))
    # the default centres once: training scores average -d (E[z^T Sigma^-1 z] = d)
    assert a.score(train).mean().item() == pytest.approx(-train.shape[1], rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ssd_dtypes(dtype):
    train, query = _feats(400), _feats(30, seed=2)
    ssd = SSDScore().fit(train)
    got = ssd.score(query.to(dtype))
    assert got.dtype == dtype
    want = ref.ssd_score(train.numpy(), query.to(dtype).double().numpy())
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=tol, atol=tol)


def test_ssd_separates_shifted_cluster():
    """A Gaussian ID cluster vs one in another direction (only directions count after the
    L2 normalisation): AUROC > 0.99."""
    g = torch.Generator().manual_seed(0)
    centre = torch.nn.functional.normalize(torch.randn(12, generator=g, dtype=torch.float64), dim=0)
    other = torch.nn.functional.normalize(torch.randn(12, generator=g, dtype=torch.float64), dim=0)

    def draw(mean, n):
        return 5 * mean + torch.randn(n, 12, generator=g, dtype=torch.float64)

    ssd = SSDScore().fit(draw(centre, 2000))
    assert auroc(ssd.score(draw(centre, 500)), ssd.score(draw(other, 500))).item() > 0.99


# ---------------------------------------------------------------- prototypes
def _protos(classes=3, per_class=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes * per_class, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_prototype_score_matches_reference(temperature):
    p = _protos()
    q = _feats(40, d=8, seed=5) - 1.0
    got = PrototypeScore(p, num_classes=3, temperature=temperature).score(q)
    labels = np.arange(12) % 3  # the official layout: prototype p in class p mod C
    want = ref.prototype_score(p.numpy(), labels, q.numpy(), temperature)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_prototype_labels_argument_and_uneven_classes():
    p = _protos(classes=2, per_class=3)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    q = _feats(10, d=8, seed=6)
    got = PrototypeScore(p, prototype_labels=labels, temperature=0.2)
    want = ref.prototype_score(p.numpy(), labels.numpy(), q.numpy(), 0.2)
    np.testing.assert_allclose(got(q).numpy(), want, rtol=1e-12)
    assert got.num_classes == 2 and got.class_scores(q).shape == (10, 2)


def test_prototype_score_extremes_and_grad():
    p = _protos()
    s = PrototypeScore(p, num_classes=3, temperature=1e-3)  # logits up to 1e3: no overflow
    q = _feats(8, d=8, seed=7).requires_grad_(True)
    out = s.score(q)
    assert torch.isfinite(out).all()
    assert torch.autograd.gradcheck(PrototypeScore(p, num_classes=3).score, (q,))
    # bounds: log(1/K) + max logit <= score <= max logit (= 1 / tau on the sphere)
    s1 = PrototypeScore(p, num_classes=3, temperature=0.5)
    out = s1.score(q.detach())
    assert (out <= 2.0 + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_prototype_dtypes(dtype):
    p = _protos()
    q = _feats(20, d=8, seed=8).to(dtype)
    got = PrototypeScore(p, num_classes=3).score(q)
    assert got.dtype == dtype
    want = ref.prototype_score(p.numpy(), np.arange(12) % 3, q.double().numpy(), 0.1)
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=tol, atol=tol)


def test_prototype_score_separates_off_prototype_features():
    """Samples drawn around the prototypes score higher than samples between them."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(30, 16, generator=g, dtype=torch.float64), dim=1)
    idx = torch.randint(0, 30, (500,), generator=g)
    near = p[idx] + 0.05 * torch.randn(500, 16, generator=g, dtype=torch.float64)
    far = torch.randn(500, 16, generator=g, dtype=torch.float64)
    s = PrototypeScore(p, num_classes=5)
    assert auroc(s.score(near), s.score(far)).item() > 0.99


def test_errors():
    p = _protos()
    with pytest.raises(ValueError, match="num_classes must be given"):
        PrototypeScore(p)
    with pytest.raises(ValueError, match="num_classes must be in"):
        PrototypeScore(p, num_classes=13)
    with pytest.raises(ValueError, match="temperature must be in"):
        PrototypeScore(p, num_classes=3, temperature=0.0)
    with pytest.raises(ValueError, match="every class a prototype, got none for class 1"):
        PrototypeScore(p, prototype_labels=torch.zeros(12, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="prototype_labels must have shape"):
        PrototypeScore(p, prototype_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="prototypes must hold at least one prototype"):
        PrototypeScore(torch.zeros(0, 4), num_classes=1)
    s = PrototypeScore(p, num_classes=3)
    with pytest.raises(ValueError, match="features must have 8 features"):
        s.score(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="features must have all values in"):
        s.score(torch.full((1, 8), float("nan")))
    with pytest.raises(RuntimeError, match="before fit"):
        SSDScore().score(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="official_centering must be a bool"):
        SSDScore(official_centering=1)
    with pytest.raises(ValueError, match="features must hold at least one sample"):
        SSDScore().fit(torch.zeros(0, 3))
