"""tempnet_dro_loss / TempNetDROLoss (Qiu et al., ICML 2024): the float64 DRO-dual
reference, the official formula, the mask fix, reductions, gradcheck, half dtypes, empty
inputs, compile, errors, and one joint training step with TempNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softmaxkit.heads import TempNet
from softmaxkit.losses import TempNetDROLoss, tempnet_dro_loss
from tests.reference.tempnet_ref import tempnet_dro_ref


def _inputs(n=6, v=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, v, (n,), generator=g)
    tau = 0.5 + 4.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return z.to(dtype), y, tau.to(dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_dro_dual_reference(reduction):
    z, y, tau = _inputs()
    y[1] = -100
    out = tempnet_dro_loss(z, y, tau, rho=8.0, reduction=reduction)
    ref = tempnet_dro_ref(z.numpy(), y.numpy(), tau.numpy(), 8.0, reduction=reduction)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)


def test_official_formula_without_ignored_tokens():
    z, y, tau = _inputs()
    official = (
        tau * F.cross_entropy(z / tau, y, reduction="none")[:, None]
        + (1.0 - math.log(z.shape[1])) * tau
    ).mean()
    torch.testing.assert_close(tempnet_dro_loss(z, y, tau, rho=1.0), official)
    torch.testing.assert_close(tempnet_dro_loss(z, y, tau.squeeze(1), rho=1.0), official)
    torch.testing.assert_close(TempNetDROLoss(1.0)(z, y, tau), official)


def test_fully_ignored_gives_zero():
    z, y, tau = _inputs()
    z.requires_grad_()
    out = tempnet_dro_loss(z, torch.full_like(y, -100), tau)
    assert out.item() == 0.0
    out.backward()
    assert bool((z.grad == 0).all())


def test_gradcheck():
    z, y, tau = _inputs(n=3, v=4)
    z.requires_grad_()
    tau.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: tempnet_dro_loss(a, y, t), (z, tau))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half(dtype):
    z, y, tau = _inputs()
    out = tempnet_dro_loss(z.to(dtype), y, tau.to(dtype))
    assert out.dtype == dtype
    ref = tempnet_dro_loss(z.to(dtype).double(), y, tau.to(dtype).double())
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.01)


def test_empty_and_extreme():
    out = tempnet_dro_loss(torch.randn(0, 5), torch.zeros(0, dtype=torch.long), torch.ones(0))
    assert out.item() == 0.0
    z, y, tau = _inputs(dtype=torch.float32)
    assert torch.isfinite(tempnet_dro_loss(z * 1e30, y, tau)).all()


def test_compile_cpu():
    z, y, tau = _inputs(dtype=torch.float32)
    compiled = torch.compile(tempnet_dro_loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(z, y, tau), tempnet_dro_loss(z, y, tau))


def test_joint_training_step_moves_tau():
    torch.manual_seed(0)
    z = torch.randn(16, 20, requires_grad=True)
    y = torch.randint(0, 20, (16,))
    net = TempNet(20, hidden_size=8)
    loss = tempnet_dro_loss(z, y, net(z))
    loss.backward()
    assert z.grad is not None and net.last.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("change", "error", "name"),
    [
        ({"tau": torch.zeros(6, 1)}, ValueError, "tau"),
        ({"tau": torch.ones(5)}, ValueError, "tau"),
        ({"target": torch.full((6,), 11)}, ValueError, "target"),
        ({"target": torch.zeros(6)}, TypeError, "target"),
        ({"logits": torch.randn(6, 11, 2)}, ValueError, "logits"),
        ({"rho": float("nan")}, ValueError, "rho"),
        ({"reduction": "max"}, ValueError, "reduction"),
    ],
)
def test_errors(change, error, name):
    z, y, tau = _inputs(dtype=torch.float32)
    args = {"logits": z, "target": y, "tau": tau.squeeze(1), "rho": 8.0, **change}
    with pytest.raises(error, match=name):
        tempnet_dro_loss(args.pop("logits"), args.pop("target"), args.pop("tau"), **args)
