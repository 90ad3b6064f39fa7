"""The shared row engine of the losses, exercised with cross-entropy against torch's."""

import pytest
import torch
import torch.nn.functional as F

from softmaxkit._ops.row_loss import RowLoss, class_loss, row_loss, smoothed

gen = torch.Generator().manual_seed(11)


class CE(RowLoss):
    """Cross-entropy through the contract, with autograd's gradient (the default hook)."""

    def value(self, z, t):
        lp = torch.log_softmax(z, -1)
        if t.dtype.is_floating_point:
            return -(t * lp).sum(-1)
        return -lp.gather(1, t[:, None]).squeeze(1)


class AnalyticCE(CE):
    def grad(self, z, t, g):
        p = torch.softmax(z, -1)
        if t.dtype.is_floating_point:
            return (p * t.sum(-1, keepdim=True) - t) * g[:, None]
        return p.scatter_add_(1, t[:, None], -torch.ones_like(p[:, :1])) * g[:, None]


def engine_ce(x, target, reduction="mean", label_smoothing=0.0, loss=None):
    loss = loss or CE()
    return class_loss(loss, x, target, reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("loss", [CE(), AnalyticCE()], ids=["autograd", "analytic"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_torch_cross_entropy(loss, reduction, label_smoothing, soft):
    x = torch.randn(7, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    if soft:
        target = torch.softmax(torch.randn(7, 5, 3, generator=gen, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, 5, (7, 3), generator=gen)
        target[0, 1] = -100
    ours = engine_ce(x, target, reduction, label_smoothing, loss)
    theirs = F.cross_entropy(x, target, reduction=reduction, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours, theirs)
    cot = torch.randn(ours.shape, generator=gen, dtype=ours.dtype)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x, cot)[0], torch.autograd.grad(theirs, x, cot)[0]
    )


def test_blocks_cover_many_rows():
    # rows longer than one block and more rows than one block holds
    x = torch.randn(300, 5000, generator=gen, requires_grad=True)
    t = torch.randint(0, 5000, (300,), generator=gen)
    ours, theirs = engine_ce(x, t, "sum", loss=AnalyticCE()), F.cross_entropy(x, t, reduction="sum")
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0])


def test_all_ignored_gives_zero_and_zero_gradient():
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    t = torch.full((4,), -100)
    loss = engine_ce(x, t)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


def test_half_inputs_compute_in_float32():
    x = torch.randn(6, 9, generator=gen)
    t = torch.randint(0, 9, (6,), generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        h = x.to(dtype).requires_grad_()
        loss = engine_ce(h, t, loss=AnalyticCE())
        loss.backward()
        assert loss.dtype == dtype and h.grad.dtype == dtype
        assert loss == F.cross_entropy(h.float(), t).to(dtype)  # fp32 result, rounded once


def test_several_inputs_and_extras():
    a = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, generator=gen, dtype=torch.float64)

    class Cross(RowLoss):
        def value(self, za, zb, t, wt):
            return wt * (torch.softmax(za, -1) * torch.log_softmax(zb, -1)).sum(-1)

    fn = Cross()
    assert torch.autograd.gradcheck(lambda p, q: row_loss(fn, [p, q], None, extras=[w]), (a, b))
    # only the second input requires grad
    out = row_loss(fn, [a.detach(), b], None, extras=[w])
    (gb,) = torch.autograd.grad(out.sum(), b)
    (expected,) = torch.autograd.grad(fn.value(a.detach(), b, None, w).sum(), b)
    torch.testing.assert_close(gb, expected)


def test_empty_inputs():
    x = torch.randn(0, 4, requires_grad=True)
    loss = engine_ce(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 4)


def test_smoothed_targets():
    t = smoothed(torch.tensor([2, 0]), 0.4, 4, torch.float64)
    expected = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(t, expected)


def test_compiles():
    x = torch.randn(4, 6, requires_grad=True)
    t = torch.tensor([0, 1, -100, 5])
    loss = torch.compile(lambda x, t: engine_ce(x, t, loss=AnalyticCE()))(x, t)
    loss.backward()
    torch.testing.assert_close(loss, F.cross_entropy(x, t))
    (expected,) = torch.autograd.grad(F.cross_entropy(x, t), x)
    torch.testing.assert_close(x.grad, expected)
