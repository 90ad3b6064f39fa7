"""Tests of softmaxkit.moe beyond the shared contract: aux losses against the float64
reference, capacity dropping, noise, temperature schedules, the grouped dispatch against the
dense reference (also with drops), half precision, empty batches, compile, state_dict,
errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from softmaxkit import moe
from tests.reference import moe_ref

D, E = 6, 4


def _x(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_aux_losses_match_reference():
    torch.manual_seed(0)
    gate = moe.TopKGate(D, E, 2).double()
    out = gate(_x(10, D))
    lb = moe_ref.load_balancing_loss(out.logits.detach().numpy(), out.expert_indices.tolist())
    z = moe_ref.router_z_loss(out.logits.detach().numpy())
    assert math.isclose(out.load_balancing_loss.item(), lb, rel_tol=1e-12)
    assert math.isclose(out.router_z_loss.item(), z, rel_tol=1e-12)
    total = out.aux_loss(load_balancing=0.5, z_loss=0.25)
    assert math.isclose(total.item(), 0.5 * lb + 0.25 * z, rel_tol=1e-12)
    assert out.aux_loss(0.0, 0.0).item() == 0.0


def test_load_balancing_is_one_when_uniform():
    gate = moe.TopKGate(D, E, 1, bias=False).double()
    nn.init.zeros_(gate.router.weight)
    x = _x(8, D)
    out = gate(x)  # all logits tie -> expert 0 everywhere, P uniform: E * (1 * 1/E) = 1
    assert out.load_balancing_loss.item() == pytest.approx(1.0)


def test_capacity_drops_by_rank_then_token_order():
    gate = moe.TopKGate(D, E, 2, capacity_factor=0.5, bias=False).double()
    x = _x(16, D, seed=3)
    full = moe.TopKGate(D, E, 2, bias=False).double()
    full.load_state_dict(gate.state_dict())
    ref, out = full(x), gate(x)
    cap = math.ceil(0.5 * 16 * 2 / E)
    idx = ref.expert_indices
    expected = torch.ones_like(idx, dtype=torch.bool)
    used = [0] * E
    for j in range(2):
        for t in range(16):
            e = int(idx[t, j])
            expected[t, j] = used[e] < cap
            used[e] += 1
    assert torch.equal(out.kept, expected)
    assert out.dropped.item() == int((~expected).sum())
    assert torch.equal(out.combine_weights, ref.combine_weights * expected)
    counts = torch.bincount(idx[out.kept], minlength=E)
    assert int(counts.max()) <= cap


def test_noise_only_in_training():
    torch.manual_seed(0)
    gate = moe.TopKGate(D, E, 2, noise="shazeer").double()
    plain = moe.TopKGate(D, E, 2).double()
    plain.router.load_state_dict(gate.router.state_dict())
    x = _x(32, D)
    gate.eval()
    assert torch.equal(gate(x).logits, plain(x).logits)
    gate.train()
    noisy = gate(x).logits
    assert not torch.equal(noisy, plain(x).logits)
    # softplus(0) scale at init: noise std log(2)
    assert (noisy - plain(x).logits).std().item() == pytest.approx(math.log(2), rel=0.3)
    noisy.sum().backward()
    assert gate.noise_router.weight.grad is not None


def test_dense_gates_temperature_and_schedule():
    gate = moe.DenseToSparseGate(D, E, temperature=2.0, final_temperature=0.5, anneal_steps=4)
    assert gate.temperature.item() == pytest.approx(2.0)
    for _ in range(2):
        gate.step()
    assert gate.temperature.item() == pytest.approx(1.0)
    for _ in range(5):
        gate.step()
    assert gate.temperature.item() == pytest.approx(0.5)
    learned = moe.ActivationGate(D, E, learn_temperature=True, temperature=0.7)
    out = learned(_x(5, D, dtype=torch.float32))
    out.combine_weights[:, 0].sum().backward()
    assert learned.log_temperature.grad is not None
    # small temperature -> nearly one-hot (dense-to-sparse)
    cold = moe.DenseToSparseGate(D, E, temperature=1e-3).double()
    w = cold(_x(5, D)).combine_weights
    assert torch.allclose(w.max(-1).values, torch.ones(5, dtype=torch.float64), atol=1e-6)


def test_activation_warning():
    with pytest.warns(UserWarning, match="linearly independent"):
        moe.ActivationGate(D, E, torch.relu)
    with pytest.warns(UserWarning, match="linearly independent"):
        moe.ActivationGate(D, E, lambda t: t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moe.ActivationGate(D, E, torch.sigmoid)


def _layer(gate, seed=0):
    torch.manual_seed(seed)
    ffn = lambda i: nn.Sequential(nn.Linear(D, 8), nn.GELU(), nn.Linear(8, D))  # noqa: E731
    return moe.MoE(D, ffn, gate).double()


def _dense(layer, x):
    x2 = x.reshape(-1, D)
    c = layer.gate(x2).combine_matrix()
    return sum(c[:, i : i + 1] * layer.experts[i](x2) for i in range(len(layer.experts)))


@pytest.mark.parametrize(
    "gate",
    [
        lambda: moe.TopKGate(D, E, 2),
        lambda: moe.TopKGate(D, E, 1, capacity_factor=0.5),
        lambda: moe.DenseToSparseGate(D, E, temperature=0.5),
        lambda: moe.ActivationGate(D, E),
    ],
)
def test_moe_equals_dense_reference_float64(gate):
    layer = _layer(gate())
    x = _x(3, 7, D, seed=1)
    y, aux = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.reshape(-1, D), _dense(layer, x), atol=1e-12, rtol=1e-12)


def test_moe_gradcheck_through_experts_and_gate():
    layer = _layer(moe.TopKGate(D, E, 2))
    x = _x(5, D, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,), fast_mode=True)
    y, aux = layer(x)
    (y.sum() + aux.aux_loss()).backward()
    assert layer.gate.router.weight.grad is not None
    assert all(p.grad is not None for p in layer.experts.parameters())


def test_moe_calls_each_expert_once():
    calls = []

    class Probe(nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, x):
            calls.append((self.i, x.shape[0]))
            return x * (self.i + 1)

    layer = moe.MoE(D, Probe, moe.TopKGate(D, E, 2))
    layer(torch.randn(50, D))
    experts = [i for i, _ in calls]
    assert len(experts) == len(set(experts)) and sum(n for _, n in calls) == 100


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_moe_half(dtype):
    layer = _layer(moe.TopKGate(D, E, 2)).float()
    x = _x(16, D, dtype=torch.float32)
    ref, _ = layer(x)
    y, aux = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype and aux.combine_weights.dtype == dtype
    assert aux.logits.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.1)


def test_empty_batch():
    layer = _layer(moe.TopKGate(D, E, 2, capacity_factor=1.0))
    x = torch.zeros(0, 3, D, dtype=torch.float64, requires_grad=True)
    y, aux = layer(x)
    assert y.shape == x.shape and aux.dropped.item() == 0
    assert aux.load_balancing_loss.item() == 0 and aux.router_z_loss.item() == 0
    (y.sum() + aux.aux_loss()).backward()
    assert x.grad.shape == x.shape


def test_gate_compiles_on_cpu():
    gate = moe.TopKGate(D, E, 2)
    x = _x(9, D, dtype=torch.float32)
    eager = gate(x).combine_weights
    compiled = torch.compile(lambda t: gate(t).combine_weights, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager)


def test_state_dict_round_trip():
    a = _layer(moe.ActivationGate(D, E, learn_temperature=True, temperature=0.3))
    b = _layer(moe.ActivationGate(D, E, learn_temperature=True), seed=5)
    b.load_state_dict(a.state_dict())
    x = _x(4, D)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    g1 = moe.DenseToSparseGate(D, E, temperature=2.0, final_temperature=0.5, anneal_steps=2)
    g1.step()
    g2 = moe.DenseToSparseGate(D, E, temperature=2.0, final_temperature=0.5, anneal_steps=2)
    g2.load_state_dict(g1.state_dict())
    assert g2.temperature.item() == pytest.approx(g1.temperature.item())
    assert int(g2.num_steps) == 1


@pytest.mark.parametrize(
    ("build", "error", "name"),
    [
        (lambda: moe.TopKGate(D, E, 0), ValueError, "k"),
        (lambda: moe.TopKGate(D, E, E + 1), ValueError, "k"),
        (lambda: moe.TopKGate(D, E, 2, capacity_factor=-1.0), ValueError, "capacity_factor"),
        (lambda: moe.DenseToSparseGate(D, E, temperature=0.0), ValueError, "temperature"),
        (lambda: moe.ActivationGate(D, E, temperature=-1.0), ValueError, "temperature"),
        (
            lambda: moe.DenseToSparseGate(D, E, final_temperature=0.0),
            ValueError,
            "final_temperature",
        ),
        (
            lambda: moe.DenseToSparseGate(D, E, learn_temperature=True, final_temperature=0.1),
            ValueError,
            "learn_temperature",
        ),
        (lambda: moe.MoE(D, [nn.Linear(D, D)], moe.TopKGate(D, E, 1)), ValueError, "experts"),
        (
            lambda: moe.MoE(D + 1, lambda i: nn.Linear(D, D), moe.TopKGate(D, E, 1)),
            ValueError,
            "d_model",
        ),
        (lambda: moe.MoE(D, [1, 2, 3, 4], moe.TopKGate(D, E, 1)), TypeError, "experts"),
        (lambda: moe.MoE(D, nn.Linear(D, D), moe.TopKGate(D, E, 1)), TypeError, "experts"),
    ],
)
def test_errors(build, error, name):
    with pytest.raises(error, match=name):
        build()


def test_bad_input_shape():
    layer = _layer(moe.TopKGate(D, E, 2))
    with pytest.raises(ValueError, match="x"):
        layer(torch.zeros(3, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        layer.gate(torch.zeros((), dtype=torch.float64))
