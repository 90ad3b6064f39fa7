"""Deep k-NN score (Sun et al. 2022): reference, chunking, ties, dtypes, paper claim, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.ood import KNNScore, auroc
from tests.reference import ood_ref as ref


def _feats(n, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize(
    ("k", "chunk_size"), [(1, 1), (5, 7), (50, 13), (50, None), (5, 10_000), (3, 64)]
)
def test_matches_reference_for_every_chunking(k, chunk_size):
    train, query = _feats(300), _feats(25, seed=1)
    got = KNNScore(k, chunk_size=chunk_size).fit(train).score(query)
    np.testing.assert_allclose(
        got.numpy(), ref.knn_score(train.numpy(), query.numpy(), k), rtol=1e-12, atol=1e-13
    )


def test_default_k_is_the_papers():
    assert KNNScore().k == 50


def test_ties_and_duplicates():
    train = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 3 + [[-1.0, 0.0]], dtype=torch.float64)
    knn = KNNScore(5, chunk_size=3).fit(train)
    q = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    # query 0: four neighbours at distance 0, the fifth at sqrt 2; query 1: 3 at 0, then 4 at sqrt 2
    torch.testing.assert_close(knn.score(q), -torch.tensor([2.0, 2.0], dtype=torch.float64).sqrt())
    # k = 4 for query 0 is an exact tie at 0
    assert KNNScore(4).fit(train).score(q[:1]).item() == 0.0


def test_scale_invariance_and_bounds():
    train, query = _feats(200), _feats(30, seed=2)
    knn = KNNScore(10).fit(train)
    s = knn.score(query)
    torch.testing.assert_close(knn.score(query * 1e4), s)
    torch.testing.assert_close(KNNScore(10).fit(train * 3e-3).score(query), s)
    assert ((s <= 0) & (s >= -2)).all()
    assert knn.score(train[:5]).max() <= 0  # distances are never negative


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(1, 9), st.integers(0, 10**6))
def test_property_chunking_never_changes_the_answer(n, d, chunk, seed):
    train, query = _feats(n + 3, d, seed=seed), _feats(5, d, seed=seed + 1)
    k = min(3, n)
    a = KNNScore(k).fit(train).score(query)
    b = KNNScore(k, chunk_size=chunk).fit(train).score(query)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(dtype):
    train, query = _feats(300, dtype=dtype), _feats(40, seed=3, dtype=dtype)
    got = KNNScore(20).fit(train).score(query)
    assert got.dtype == dtype
    want = ref.knn_score(train.double().numpy(), query.double().numpy(), 20)
    rounding = np.abs(torch.from_numpy(want).to(dtype).double().numpy() - want).max()
    assert np.abs(got.double().numpy() - want).max() <= 2 * rounding + 1e-6


def test_paper_claim_shifted_cluster_is_separated():
    """Sun et al. 2022: ID test features lie close to training features on the sphere,
    OOD ones do not. Gaussian class clusters vs a shifted cluster: AUROC > 0.99."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(5, 32, generator=g), dim=1) * 6
    y = torch.arange(3000) % 5
    train = centres[y] + torch.randn(3000, 32, generator=g)
    test_in = centres[y[:1000]] + torch.randn(1000, 32, generator=g)
    ood_centre = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0) * 6
    ood = ood_centre + torch.randn(1000, 32, generator=g)
    knn = KNNScore(50).fit(train)
    assert auroc(knn.score(test_in), knn.score(ood)).item() > 0.99


def test_errors():
    with pytest.raises(ValueError, match="k must be in"):
        KNNScore(0)
    with pytest.raises(TypeError, match="k must be an int"):
        KNNScore(2.5)
    with pytest.raises(ValueError, match="chunk_size must be in"):
        KNNScore(chunk_size=0)
    with pytest.raises(RuntimeError, match="before fit"):
        KNNScore(3).score(_feats(2))
    with pytest.raises(ValueError, match="features must hold at least k=50 samples, got 10"):
        KNNScore().fit(_feats(10))
    with pytest.raises(ValueError, match="features must be a 2-D"):
        KNNScore(1).fit(torch.zeros(3))
    with pytest.raises(ValueError, match="features must have all values in"):
        KNNScore(1).fit(torch.tensor([[0.0, float("nan")]]))
    knn = KNNScore(1).fit(_feats(5, d=4))
    with pytest.raises(ValueError, match="features must have 4 features"):
        knn.score(_feats(2, d=3))
    with pytest.raises(ValueError, match="features must have all values in"):
        knn.score(torch.tensor([[0.0, float("inf"), 0.0, 0.0]]))
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        knn.score(torch.zeros(2, 4, dtype=torch.int64))
