"""Temperature / vector / matrix scaling: grid-search truth, paper claims, state, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from softmaxkit.calibration import (
    MatrixScaling,
    TemperatureScaling,
    VectorScaling,
    expected_calibration_error,
    negative_log_likelihood,
)
from tests.reference import calibration_ref as ref


@pytest.fixture(autouse=True)
def _one_thread():
    """The fits are many tiny float64 matmuls; on a shared, oversubscribed CI machine the
    BLAS thread pool makes each one 50x slower, so run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _synthetic(n=2000, c=10, factor=2.5, seed=0, dtype=torch.float32):
    """Labels drawn from softmax(true); the model reports factor * true (factor > 1:
    over-confident, < 1: under-confident), so the ideal temperature is ``factor``."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(torch.softmax(true, -1), 1, generator=g).squeeze(1)
    return (factor * true).to(dtype), y


@pytest.mark.parametrize(
    ("factor", "c"),
    [(2.5, 10), (0.4, 10), (1.0, 10), (6.0, 3)],
    ids=["over", "under", "calibrated", "c3"],
)
def test_temperature_matches_float64_grid_search(factor, c):
    z, y = _synthetic(c=c, factor=factor)
    ts = TemperatureScaling().fit(z, y)
    grid = ref.grid_search_temperature(z.double().numpy(), y.numpy())
    assert ts.temperature.item() == pytest.approx(grid, abs=1e-3)
    assert ts.fit_info["method"] == "lbfgs"
    assert ts.temperature.item() == pytest.approx(factor, rel=0.15)  # recovers the truth
    nll = ref.mean_nll_at_temperature(z.double().numpy(), y.numpy(), ts.temperature.item())
    assert ts.fit_info["nll_after"] == pytest.approx(nll, rel=1e-6)
    assert ts.fit_info["nll_after"] <= ts.fit_info["nll_before"] + 1e-12


def test_bracketing_fallback_agrees_with_lbfgs(monkeypatch):
    z, y = _synthetic(factor=3.0, seed=1)
    good = TemperatureScaling().fit(z, y)

    def broken_step(self, closure):
        raise RuntimeError("line search failed")

    monkeypatch.setattr(torch.optim.LBFGS, "step", broken_step)
    fallback = TemperatureScaling().fit(z, y)
    assert fallback.fit_info["method"] == "bisection"
    assert fallback.temperature.item() == pytest.approx(good.temperature.item(), abs=1e-6)


def test_unconverged_lbfgs_falls_back():
    z, y = _synthetic(factor=0.2, seed=2)
    ts = TemperatureScaling().fit(z, y, max_iter=1)
    grid = ref.grid_search_temperature(z.double().numpy(), y.numpy())
    assert ts.fit_info["method"] == "bisection"
    assert ts.temperature.item() == pytest.approx(grid, abs=1e-3)


def test_minimiser_outside_bounds_returns_the_bound():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(500, 5, generator=g) * 4
    # labels independent of the logits: the NLL keeps falling as T grows (towards log C)
    y = torch.randint(0, 5, (500,), generator=g)
    assert TemperatureScaling().fit(z, y, bounds=(0.1, 10.0)).temperature.item() == (
        pytest.approx(10.0, rel=1e-6)
    )
    # separable with margins: the NLL keeps falling as T shrinks
    y_sep = z.argmax(-1)
    assert TemperatureScaling().fit(z, y_sep).temperature.item() == pytest.approx(0.01, rel=1e-6)


def test_guo_claim_temperature_keeps_accuracy_and_reduces_ece_and_nll():
    """Guo et al. 2017 Sec. 4.2: T rescales without changing the argmax and fixes the
    over-confidence of the logits (here synthetic: 3x over-confident)."""
    z_val, y_val = _synthetic(factor=3.0, seed=4)
    z_test, y_test = _synthetic(factor=3.0, seed=5)
    ts = TemperatureScaling().fit(z_val, y_val)
    with torch.no_grad():
        out = ts(z_test)
    assert torch.equal(out.argmax(-1), z_test.argmax(-1))
    before = expected_calibration_error(z_test, y_test).item()
    after = expected_calibration_error(out, y_test).item()
    assert after < 0.3 * before and before > 0.1
    assert negative_log_likelihood(out, y_test) < negative_log_likelihood(z_test, y_test)


def test_masked_classes_do_not_change_the_temperature():
    z, y = _synthetic(n=800, c=6, factor=2.0, seed=6)
    masked = torch.cat([z, torch.full((800, 2), -math.inf)], dim=1)
    t1 = TemperatureScaling().fit(z, y).temperature.item()
    t2 = TemperatureScaling().fit(masked, y).temperature.item()
    assert t2 == pytest.approx(t1, abs=1e-7)


def test_extreme_logits():
    z, y = _synthetic(n=500, c=4, factor=1.0, seed=7)
    z = z * 1e3  # logits of order 1e4: massively over-confident
    ts = TemperatureScaling().fit(z, y, bounds=(1e-2, 1e4))
    grid = ref.grid_search_temperature(z.double().numpy(), y.numpy(), lo=100.0, hi=5000.0)
    assert ts.temperature.item() == pytest.approx(grid, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    z, y = _synthetic(n=1000, c=5, factor=2.0, seed=8, dtype=dtype)
    ts = TemperatureScaling().fit(z, y)
    grid = ref.grid_search_temperature(z.double().numpy(), y.numpy())
    assert ts.temperature.item() == pytest.approx(grid, abs=1e-3)
    out = ts(z)
    assert out.dtype == dtype
    expected = (z.float() / ts.temperature.detach()).to(dtype)
    assert torch.equal(out.detach(), expected) if dtype != torch.float64 else True
    for scaler in (VectorScaling(5), MatrixScaling(5)):
        assert scaler.fit(z, y)(z).dtype == dtype


def test_forward_any_leading_shape():
    z, y = _synthetic(n=300, c=4, factor=2.0, seed=9)
    for scaler in (TemperatureScaling(), VectorScaling(4), MatrixScaling(4)):
        scaler.fit(z, y)
        batch = z[:24].view(2, 3, 4, 4)
        with torch.no_grad():
            assert torch.allclose(scaler(batch).view(24, 4), scaler(z[:24]), atol=1e-6)


# ------------------------------------------------------------------- vector / matrix


def _penalised_grad(w, b, z, y, lam, mu):
    w = w.detach().double().requires_grad_(True)
    b = b.detach().double().requires_grad_(True)
    c = w.shape[0]
    off = ~torch.eye(c, dtype=torch.bool)
    loss = F.cross_entropy(z.double() @ w.T + b, y)
    if lam or mu:
        loss = loss + lam / (c * (c - 1)) * (w * off).square().sum() + mu / c * b.square().sum()
    return torch.autograd.grad(loss, (w, b))


def test_vector_scaling_recovers_per_class_scale_and_bias():
    g = torch.Generator().manual_seed(10)
    true = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(true, -1), 1, generator=g).squeeze(1)
    scale = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    shift = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    vs = VectorScaling(3).fit((true * scale + shift).float(), y)
    assert torch.allclose(vs.weight.detach().double(), 1 / scale, rtol=0.06)
    b = vs.bias.detach().double()
    want = -shift / scale
    assert torch.allclose(b - b.mean(), want - want.mean(), atol=0.06)
    assert vs.fit_info["nll_after"] < vs.fit_info["nll_before"]


def test_vector_scaling_is_stationary():
    z, y = _synthetic(n=1000, c=4, factor=2.0, seed=11, dtype=torch.float64)
    vs = VectorScaling(4).fit(z, y)
    gw, gb = _penalised_grad(torch.diag(vs.weight.detach()), vs.bias, z, y, 0.0, 0.0)
    assert gw.diagonal().abs().max() < 1e-6 and gb.abs().max() < 1e-6


@pytest.mark.parametrize(("lam", "mu"), [(0.0, 0.0), (1e-2, 1e-2), (10.0, 1.0)])
def test_matrix_scaling_reaches_the_odir_optimum(lam, mu):
    z, y = _synthetic(n=1000, c=4, factor=2.0, seed=12, dtype=torch.float64)
    ms = MatrixScaling(4, l2=lam, bias_l2=mu).fit(z, y)
    gw, gb = _penalised_grad(ms.weight, ms.bias, z, y, lam, mu)
    assert gw.abs().max() < 1e-5 and gb.abs().max() < 1e-5


def test_odir_shrinks_off_diagonal_weights():
    z, y = _synthetic(n=300, c=5, factor=2.0, seed=13)
    off = ~torch.eye(5, dtype=torch.bool)
    free = MatrixScaling(5, l2=0.0, bias_l2=0.0).fit(z, y).weight.detach()[off].abs().mean()
    strong = MatrixScaling(5, l2=1e3, bias_l2=0.0).fit(z, y).weight.detach()[off].abs().mean()
    assert strong < 0.1 * free


def test_nested_models_nll_order():
    """Vector scaling contains temperature scaling; matrix scaling contains vector scaling."""
    z, y = _synthetic(n=1500, c=5, factor=2.0, seed=14)
    nll_t = TemperatureScaling().fit(z, y).fit_info["nll_after"]
    nll_v = VectorScaling(5).fit(z, y).fit_info["nll_after"]
    nll_m = MatrixScaling(5, l2=0.0, bias_l2=0.0).fit(z, y).fit_info["nll_after"]
    assert nll_m <= nll_v + 1e-9 <= nll_t + 2e-9


# ------------------------------------------------------------------ state and errors


@pytest.mark.parametrize(
    "make", [TemperatureScaling, lambda: VectorScaling(4), lambda: MatrixScaling(4)]
)
def test_unfitted_raises_and_state_dict_round_trip(make):
    scaler = make()
    z, y = _synthetic(n=200, c=4, factor=2.0, seed=15)
    with pytest.raises(RuntimeError, match="is not fitted: call .fit"):
        scaler(z)
    scaler.fit(z, y)
    state = scaler.state_dict()
    assert bool(state["fitted"])
    fresh = make()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(z), scaler(z))
    assert set(state) >= {"fitted"} and any(k in state for k in ("temperature", "weight"))


def test_fit_errors():
    z, y = _synthetic(n=50, c=4, factor=2.0, seed=16)
    ts = TemperatureScaling()
    with pytest.raises(ValueError, match="logits must hold at least one sample"):
        ts.fit(z[:0], y[:0])
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        ts.fit(z[0], y)
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 3\], got 4"):
        ts.fit(z, torch.full((50,), 4))
    with pytest.raises(TypeError, match="bounds must be a pair"):
        ts.fit(z, y, bounds=1.0)
    with pytest.raises(ValueError, match=r"bounds\[1\] must be in \(0.5, inf\]"):
        ts.fit(z, y, bounds=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"max_iter must be in \[1, inf\], got 0"):
        ts.fit(z, y, max_iter=0)
    bad = z.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="logits must not contain NaN"):
        ts.fit(bad, y)
    masked = z.clone()
    masked[torch.arange(50), y] = -math.inf
    with pytest.raises(ValueError, match="finite at the target class"):
        ts.fit(masked, y)
    with pytest.raises(ValueError, match="num_classes=3 columns"):
        VectorScaling(3).fit(z, y)
    masked = z.clone()
    masked[0, (y[0] + 1) % 4] = -math.inf
    with pytest.raises(ValueError, match=r"logits must have all values in \(-inf, inf\]"):
        MatrixScaling(4).fit(masked, y)
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, inf\], got 0"):
        VectorScaling(0)
    with pytest.raises(ValueError, match=r"l2 must be in \[0, inf\], got -1"):
        MatrixScaling(3, l2=-1.0)
    fitted = VectorScaling(4).fit(z, y)
    with pytest.raises(ValueError, match="logits must have 4 classes in the last dimension"):
        fitted(z[:, :3])
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        fitted(y)


@pytest.mark.slow
def test_fit_at_benchmark_size():
    """10^5 x 1000 float32 logits (400 MB), the size the benchmark compares with netcal:
    the fit runs in row blocks and recovers the temperature."""
    z, y = _synthetic(n=100_000, c=1000, factor=2.0, seed=17)
    ts = TemperatureScaling().fit(z, y)
    assert ts.temperature.item() == pytest.approx(2.0, rel=0.05)


def test_row_blocks_give_the_same_fit(monkeypatch):
    import softmaxkit.calibration.scaling as S

    z, y = _synthetic(n=301, c=6, factor=2.0, seed=18)
    whole = [TemperatureScaling().fit(z, y), VectorScaling(6).fit(z, y)]
    monkeypatch.setattr(S, "_BLOCK", 50)  # blocks of 8 rows
    blocked = [TemperatureScaling().fit(z, y), VectorScaling(6).fit(z, y)]
    assert blocked[0].temperature.item() == pytest.approx(whole[0].temperature.item(), abs=1e-7)
    torch.testing.assert_close(blocked[1].weight, whole[1].weight, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
@pytest.mark.parametrize("cls", [TemperatureScaling, VectorScaling, MatrixScaling])
def test_fit_takes_labels_of_every_integer_dtype(cls, dtype):
    """int32 labels crashed vector / matrix scaling, uint8 labels temperature scaling."""
    z, y = _synthetic(n=200, c=4, seed=3)
    make = (lambda: cls()) if cls is TemperatureScaling else (lambda: cls(4))
    expected = make().fit(z, y)(z)
    torch.testing.assert_close(make().fit(z, y.to(dtype))(z), expected)
    with pytest.raises(TypeError, match="target must hold class indices"):
        make().fit(z, y > 1)


def test_matrix_scaling_does_not_overflow_near_the_float_maximum():
    """W z with entries near float32's maximum: the products and partial sums of the
    matrix product overflowed (3e38 + 3e38 - 3e38 = inf) though the result is 3e38."""
    ms = MatrixScaling(3)
    weight = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    ms.load_state_dict({"weight": weight, "bias": torch.zeros(3), "fitted": torch.tensor(True)})
    for dtype in (torch.float32, torch.bfloat16):
        z = torch.tensor([[3e38, 3e38, -3e38], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=dtype)
        z.requires_grad_(True)
        out = ms(z)
        want = z.detach().double() @ weight.double().T
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.detach().double(), want, rtol=1e-2, atol=1e-6)
        (grad,) = torch.autograd.grad(out.sum(), z)
        torch.testing.assert_close(grad.double(), weight.sum(0).double().expand(3, 3))
