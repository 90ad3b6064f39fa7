"""Sparse-CBM: the CBL losses of the official cbm.py and Concept Matrix Search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softmaxkit.heads import ConceptBottleneck, concept_matrix_search
from tests.reference import concept_ref as ref


def make(loss="gumbel", **kw):
    torch.manual_seed(0)
    return ConceptBottleneck(6, 3, loss=loss, **kw)


def test_forward_is_cbl_then_head():
    m = make()
    x = torch.randn(4, 6)
    cbl_out, logits = m(x)
    torch.testing.assert_close(cbl_out, x @ m.cbl.weight.T)
    torch.testing.assert_close(logits, cbl_out @ m.head.weight.T)
    assert m.cbl.bias is None and m.head.bias is None


@pytest.mark.parametrize("shape", [(4, 6), (8, 6), (3, 6)])
def test_contrastive_matches_reference(shape):
    m = make("contrastive")
    L = torch.randn(*shape, dtype=torch.float64)
    assert float(m.concept_loss(L)) == pytest.approx(ref.contrastive(L.numpy()), rel=1e-10)


def test_l1_matches_reference():
    m = make("l1", l1_lambda=0.01)
    expected = ref.l1(m.cbl.weight.detach(), 0.01)
    assert float(m.concept_loss(torch.randn(2, 6))) == pytest.approx(expected, rel=1e-6)
    m.concept_loss(torch.randn(2, 6)).backward()
    torch.testing.assert_close(m.cbl.weight.grad, 0.01 * m.cbl.weight.sign() / 6)


def test_gumbel_expectation_matches_reference():
    m = ConceptBottleneck(24, 3, loss="gumbel", tau=0.7)
    L = torch.randn(16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    ours = np.mean([float(m.concept_loss(L, generator=g)) for _ in range(200)])
    rng = np.random.default_rng(0)
    theirs = np.mean(
        [
            ref.gumbel(L.numpy(), 0.7, rng.gumbel(size=(16, 24)), rng.gumbel(size=(16, 24)))
            for _ in range(200)
        ]
    )
    assert ours == pytest.approx(theirs, rel=0.02)


def test_gumbel_seeded_and_finite_at_extremes():
    m = make("gumbel", tau=0.1)
    L = torch.randn(4, 6)
    a = m.concept_loss(L, generator=torch.Generator().manual_seed(0))
    b = m.concept_loss(L, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    big = torch.tensor([[1e4, -1e4, 0, 0, 0, 0]]).repeat(3, 1)
    assert torch.isfinite(m.concept_loss(big, generator=torch.Generator().manual_seed(0)))


def test_training_step_gradients_and_compile():
    for loss in ("gumbel", "contrastive", "l1"):
        m = make(loss).double()
        x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
        y = torch.tensor([0, 1, 2, 0])

        def total(x, m=m, y=y):
            cbl_out, logits = m(x)
            g = torch.Generator().manual_seed(0)
            return F.cross_entropy(logits, y) + m.concept_loss(cbl_out, generator=g)

        assert torch.autograd.gradcheck(total, (x,))
    m, x = make("contrastive"), torch.randn(4, 6)
    torch.testing.assert_close(torch.compile(m)(x)[1], m(x)[1])


def test_empty_half_state_dict():
    m = make("contrastive")
    cbl_out, logits = m(torch.randn(0, 6))
    assert logits.shape == (0, 3) and float(m.concept_loss(cbl_out)) == 0.0
    for dt in (torch.float16, torch.bfloat16):
        mm = make("gumbel").to(dt)
        cbl_out, _ = mm(torch.randn(4, 6).to(dt))
        loss = mm.concept_loss(cbl_out, generator=torch.Generator().manual_seed(0))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    other = ConceptBottleneck(6, 3)
    other.load_state_dict(m.state_dict())
    x = torch.randn(2, 6)
    torch.testing.assert_close(other(x)[1], m(x)[1])


def test_errors():
    with pytest.raises(ValueError, match="loss"):
        ConceptBottleneck(6, 3, loss="hard")
    with pytest.raises(ValueError, match="tau"):
        ConceptBottleneck(6, 3, tau=0.0)
    with pytest.raises(ValueError, match="concept_logits"):
        make()(torch.randn(2, 5))
    with pytest.raises(ValueError, match="cbl_out"):
        make().concept_loss(torch.randn(2, 5))


@pytest.mark.parametrize("mode", ["similarity", "max"])
@pytest.mark.parametrize("normalize", ["row", "column"])
def test_cms_matches_reference(mode, normalize):
    g = torch.Generator().manual_seed(0)
    images, concepts, classes = (torch.randn(n, 5, generator=g).abs() for n in (7, 9, 4))
    got = concept_matrix_search(
        images.double(), concepts.double(), classes.double(), mode=mode, normalize=normalize
    )
    expected = ref.cms_scores(images, concepts, classes, mode, normalize)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    half = concept_matrix_search(images.half(), concepts.half(), classes.half(), mode=mode)
    assert half.dtype == torch.float32 and half.shape == (7, 4)
    assert concept_matrix_search(images[:0], concepts, classes, mode=mode).shape == (0, 4)


def test_cms_errors():
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match="concept_features"):
        concept_matrix_search(x, torch.randn(4, 6), x)
    with pytest.raises(ValueError, match="mode"):
        concept_matrix_search(x, x, x, mode="mean")
    with pytest.raises(ValueError, match="normalize"):
        concept_matrix_search(x, x, x, normalize="both")
