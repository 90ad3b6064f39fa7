"""Logit OOD scores: MSP, max logit, energy (reference, infinities, dtypes, grads, errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from softmaxkit.ood import (
    KNNScore,
    Mahalanobis,
    PrototypeScore,
    SSDScore,
    auroc,
    energy_score,
    max_logit_score,
    msp_score,
)
from tests.reference import ood_ref as ref

INF = math.inf


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize(
    ("fn", "row_ref", "kw"),
    [
        (msp_score, ref.msp_row, {}),
        (max_logit_score, ref.max_logit_row, {}),
        (energy_score, ref.energy_row, {}),
        (energy_score, ref.energy_row, {"temperature": 0.3}),
        (energy_score, ref.energy_row, {"temperature": 7.0}),
    ],
)
def test_matches_reference(fn, row_ref, kw):
    x = _logits(40, 17, scale=6.0)
    np.testing.assert_allclose(
        fn(x, **kw).numpy(), ref.rows(row_ref, x.numpy(), **kw), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("fn", [msp_score, max_logit_score, energy_score])
def test_dim_argument_and_shapes(fn):
    x = _logits(3, 5, 4)
    out = fn(x, dim=1)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, fn(x.transpose(1, 2)), rtol=0, atol=0)
    assert fn(_logits(0, 6)).shape == (0,)  # empty batch is fine
    assert fn(_logits(6)).shape == ()


def test_infinite_logits():
    x = torch.tensor(
        [
            [INF, 1.0, INF, -INF],
            [-INF, -INF, -INF, -INF],
            [-INF, 2.0, -INF, -INF],
            [1e4, -1e4, 0.0, 1e4],
        ],
        dtype=torch.float64,
    )
    for fn, row_ref in [
        (msp_score, ref.msp_row),
        (max_logit_score, ref.max_logit_row),
        (energy_score, ref.energy_row),
    ]:
        np.testing.assert_allclose(fn(x).numpy(), ref.rows(row_ref, x.numpy()), rtol=1e-12)
    assert msp_score(x).tolist()[:3] == [0.5, 0.0, 1.0]
    assert energy_score(x).tolist()[:2] == [INF, -INF]


@pytest.mark.parametrize("fn", [msp_score, energy_score])
def test_infinite_rows_have_zero_finite_gradient(fn):
    x = torch.tensor([[INF, 1.0, -INF], [-INF, -INF, -INF], [0.5, -INF, 2.0]], dtype=torch.float64)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    assert torch.isfinite(g).all()
    assert (g[:2] == 0).all()
    assert g[2, 1] == 0 and g[2, 0] != 0


@pytest.mark.parametrize("fn", [msp_score, max_logit_score, energy_score])
def test_gradcheck(fn):
    x = _logits(4, 6, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,))


def test_energy_gradient_is_softmax():
    x = _logits(5, 9, seed=1).requires_grad_(True)
    (g,) = torch.autograd.grad(energy_score(x).sum(), x)
    torch.testing.assert_close(g, torch.softmax(x.detach(), -1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fn", [msp_score, max_logit_score, energy_score])
def test_low_precision_no_worse_than_torch(dtype, fn):
    x = _logits(64, 33, scale=8.0, seed=2, dtype=dtype)
    out = fn(x)
    assert out.dtype == dtype
    truth = torch.from_numpy(
        ref.rows(
            {
                msp_score: ref.msp_row,
                max_logit_score: ref.max_logit_row,
                energy_score: ref.energy_row,
            }[fn],
            x.double().numpy(),
        )
    )
    # the plain torch expression in the same dtype, and rounding the truth to dtype
    plain = {
        msp_score: lambda t: torch.softmax(t, -1).amax(-1),
        max_logit_score: lambda t: t.amax(-1),
        energy_score: lambda t: torch.logsumexp(t, -1),
    }[fn](x)
    own = max((plain.double() - truth).abs().max(), (truth.to(dtype).double() - truth).abs().max())
    err = (out.double() - truth).abs().max()
    assert err <= 2 * own + 1e-30


def test_extreme_finite_logits():
    x = torch.tensor([[1e4, -1e4], [-1e4, -1e4 + 1.0]], dtype=torch.float32)
    torch.testing.assert_close(msp_score(x), torch.tensor([1.0, 1 / (1 + math.exp(-1.0))]))
    torch.testing.assert_close(
        energy_score(x), torch.tensor([1e4, -1e4 + 1.0 + math.log1p(math.exp(-1.0))])
    )


@pytest.mark.parametrize("temperature", [0.5, 1e-3, 1e-30])
def test_energy_at_a_low_temperature_does_not_overflow(temperature):
    """T < 1: z / T overflows float32 for z near its maximum, the score does not."""
    x = torch.tensor([[3e38, 0.0, -3e38], [1e37, 1e37, 0.0]], dtype=torch.float32)
    want = [3e38, 1e37 + temperature * math.log(2.0)]
    got = energy_score(x.requires_grad_(True), temperature)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64))
    (g,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=st.floats(-50, 50)
    ),
    st.floats(-20, 20),
)
def test_properties(x, shift):
    t = torch.from_numpy(x)
    msp, ml, en = msp_score(t), max_logit_score(t), energy_score(t)
    k = x.shape[1]
    assert ((msp >= 1 / k - 1e-12) & (msp <= 1 + 1e-12)).all()
    # shift invariance of MSP, equivariance of max logit and energy
    torch.testing.assert_close(msp_score(t + shift), msp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(max_logit_score(t + shift), ml + shift)
    torch.testing.assert_close(energy_score(t + shift), en + shift, rtol=1e-9, atol=1e-9)
    # max <= T lse(z/T) <= max + T log K
    assert (en >= ml - 1e-9).all() and (en <= ml + math.log(k) + 1e-9).all()
    # Liu et al. 2020, Sec. 2.3: log MSP = max logit - (-E) = f_max + E(x; f)
    torch.testing.assert_close(msp.log(), ml - en, rtol=1e-9, atol=1e-9)
    # energy -> max logit as T -> 0
    torch.testing.assert_close(energy_score(t, 1e-4), ml, rtol=0, atol=1e-4 * math.log(k) + 1e-9)


def test_errors():
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        msp_score(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        energy_score([[1.0, 2.0]])
    with pytest.raises(ValueError, match="logits must not contain NaN"):
        energy_score(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="temperature must be in"):
        energy_score(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="dim must be in"):
        max_logit_score(torch.zeros(2, 3), dim=2)
    with pytest.raises(ValueError, match="at least one class"):
        msp_score(torch.zeros(4, 0))
    with pytest.raises(ValueError, match="0-d"):
        msp_score(torch.tensor(1.0))


def test_compiles():
    def all_scores(x):
        return msp_score(x).sum() + max_logit_score(x).sum() + energy_score(x, 2.0).sum()

    x = _logits(3, 5, dtype=torch.float32).requires_grad_(True)
    out = torch.compile(all_scores)(x)
    (g,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(out, all_scores(x.detach()))
    assert torch.isfinite(g).all()
    # the feature scores of the other modules, in one more compilation
    f = _logits(100, 4, dtype=torch.float32)
    y = torch.arange(100) % 3
    det, knn = Mahalanobis().fit(f, y), KNNScore(5).fit(f)
    protos, ssd = PrototypeScore(f[:6], num_classes=3), SSDScore().fit(f)

    def feature_scores(q):
        return det.score(q).sum() + knn.score(q).sum() + protos.score(q).sum() + ssd.score(q).sum()

    q = _logits(7, 4, seed=9, dtype=torch.float32)
    torch.testing.assert_close(torch.compile(feature_scores)(q), feature_scores(q))


def test_energy_beats_msp_on_confident_ood_paper_claim():
    """Liu et al. 2020, Sec. 3: MSP saturates where energy does not. OOD logits that are
    a large-norm copy of ID logits are as 'confident' under MSP (equal, or more) but the
    energy (roughly the max logit) still ranks them separately; on ID logits that are
    larger in magnitude than OOD logits, energy separates better than MSP."""
    g = torch.Generator().manual_seed(0)
    n, k = 2000, 10
    # ID: a clear winner whose margin and scale vary; OOD: flatter, smaller logits
    ident = torch.randn(n, k, generator=g, dtype=torch.float64)
    ident[:, 0] += 4 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
    ood = 0.8 * torch.randn(n, k, generator=g, dtype=torch.float64)
    ood[:, 0] += 2.5 * torch.rand(n, generator=g, dtype=torch.float64)
    a_msp = auroc(msp_score(ident), msp_score(ood))
    a_energy = auroc(energy_score(ident), energy_score(ood))
    assert a_energy > a_msp
