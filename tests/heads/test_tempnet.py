"""TempNet (Qiu et al., ICML 2024): the float64 reference of the official LM network,
its range and initialisation, detaching, dropout, half dtypes, empty batches, compile,
state_dict, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softmaxkit.heads import TempNet
from tests.reference.tempnet_ref import tempnet_ref


def _np(t):
    return t.detach().double().numpy()


def test_matches_float64_reference():
    torch.manual_seed(0)
    net = TempNet(20, hidden_size=8, tau_min=0.3, tau_max=4.0).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(6, 20, dtype=torch.float64) * 5
    ref = tempnet_ref(
        _np(x),
        _np(net.proj[0].weight),
        _np(net.proj[0].bias),
        _np(net.proj[3].weight),
        _np(net.proj[3].bias),
        net.scaler.item(),
        _np(net.last.weight)[0],
        net.last.bias.item(),
        0.3,
        4.0,
    )
    np.testing.assert_allclose(_np(net(x)), ref, rtol=1e-12)


def test_official_init_and_range():
    net = TempNet(30)
    assert net.hidden_size == 256 and net.tau_min == 0.5 and net.tau_max == 5.0
    assert net.scaler.item() == 0.0
    assert bool((net.last.weight == 1).all()) and net.last.bias.item() == 0.0
    assert net.proj[2].p == 0.5
    tau = net.eval()(torch.randn(64, 30) * 100)
    assert tau.shape == (64, 1) and bool(((tau > 0.5) & (tau < 5.0)).all())


def test_detach_input():
    x = torch.randn(4, 10, requires_grad=True)
    TempNet(10, hidden_size=4)(x).sum().backward()
    assert x.grad is None
    x2 = torch.randn(4, 10, requires_grad=True)
    TempNet(10, hidden_size=4, detach_input=False)(x2).sum().backward()
    assert x2.grad is not None


def test_gradcheck_parameters():
    torch.manual_seed(0)
    net = TempNet(5, hidden_size=3, detach_input=False).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    names = list(params)

    def f(x, *ps):
        return torch.func.functional_call(net, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = TempNet(10, hidden_size=32)
    x = torch.randn(3, 10)
    assert not torch.equal(net.train()(x), net(x))
    torch.testing.assert_close(net.eval()(x), net(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half(dtype):
    torch.manual_seed(0)
    net = TempNet(12, hidden_size=8).eval()
    x = torch.randn(4, 12)
    out = net(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), net(x), atol=0.05, rtol=0.02)
    assert net.to(dtype)(x.to(dtype)).dtype == dtype


def test_empty_and_batch_dims():
    net = TempNet(6, hidden_size=4)
    assert net(torch.randn(0, 6)).shape == (0, 1)
    assert net(torch.randn(2, 3, 6)).shape == (2, 3, 1)
    assert torch.isfinite(net(torch.zeros(2, 6))).all()


def test_compile_cpu():
    net = TempNet(6, hidden_size=4).eval()
    x = torch.randn(3, 6)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), net(x))


def test_state_dict_round_trip():
    a, b = TempNet(6, hidden_size=4), TempNet(6, hidden_size=4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"tau_min": 0.0}, ValueError, "tau_min"),
        ({"tau_min": 2.0, "tau_max": 1.0}, ValueError, "tau_max"),
        ({"hidden_size": 0}, ValueError, "hidden_size"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"detach_input": 1}, TypeError, "detach_input"),
    ],
)
def test_errors(kwargs, error, name):
    with pytest.raises(error, match=name):
        TempNet(4, **kwargs)
    with pytest.raises(ValueError, match="input"):
        TempNet(4)(torch.randn(2, 5))
