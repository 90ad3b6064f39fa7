"""The spherical-family losses over the whole floating range (issue 11, part 2): finite and
equal to float64 where the true loss is finite, also where o^2 or the spread overflows."""

import pytest
import torch

from softmaxkit.losses import spherical_softmax_loss, taylor_softmax_loss, z_loss

LOSSES = {
    "z_loss": lambda x, t, **kw: z_loss(x, t, a=1.0, b=0.5, **kw),
    "spherical": lambda x, t, **kw: spherical_softmax_loss(x, t, eps=1e-3, **kw),
    "taylor": taylor_softmax_loss,
}


def rows(magnitude: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    x[0] = torch.tensor([1.0, -1.0, 0.5, 0.0, -0.25, 1.0])  # a zero logit, +-max
    return x / x.abs().max() * magnitude


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize(
    "dtype,magnitude",
    [(torch.float32, 1e20), (torch.float32, 1e30), (torch.float32, 3e38), (torch.bfloat16, 3e38)],
)
@pytest.mark.parametrize("soft", [False, True])
def test_huge_logits_match_float64(name, dtype, magnitude, soft):
    fn = LOSSES[name]
    x = rows(magnitude)
    t = torch.tensor([0, 1, 2, 3, 5])
    if soft:
        t = torch.softmax(torch.randn(5, 6, generator=torch.Generator().manual_seed(4)), -1)
    xs = x.to(dtype).requires_grad_()
    loss = fn(xs, t.to(dtype) if soft else t, reduction="none")
    loss.sum().backward()
    xd = xs.detach().double().requires_grad_()
    expected = fn(xd, t.double() if soft else t, reduction="none")
    expected.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(expected).all()
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(loss.double(), expected, **tol)
    assert not torch.isnan(xs.grad).any()
    scale = expected.abs().max() / magnitude  # gradients are of order loss / |x|
    rel = 1e-3 if dtype == torch.float32 else 1e-2  # the gradient is rounded to dtype
    assert ((xs.grad.double() - xd.grad).abs() <= 1e-2 * scale + rel * xd.grad.abs()).all()


def test_z_loss_is_scale_invariant_at_1e30():
    """The issue's case: outputs of +-1e30 gave 0.974 (sigma's norm overflowed to inf, so
    every z-score was 0) where the scale-invariant loss is that of the unit outputs."""
    unit = torch.tensor([[1.0, -1.0, 0.3, -0.7]])
    t = torch.tensor([2])
    expected = z_loss(unit, t, a=1.0, b=0.0)
    for dtype in (torch.float32, torch.bfloat16):
        got = z_loss((unit * 1e30).to(dtype), t, a=1.0, b=0.0)
        torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-3)


def test_z_loss_tiny_outputs_without_eps():
    # the squared spread underflows; with eps = 0 the loss is that of the unit outputs
    unit = torch.tensor([[1.0, -1.0, 0.3, -0.7]])
    t = torch.tensor([0])
    got = z_loss(unit * 1e-25, t, a=1.0, b=0.0, eps=0.0)
    torch.testing.assert_close(got, z_loss(unit, t, a=1.0, b=0.0, eps=0.0))


def test_rows_in_range_are_unchanged_by_an_extreme_row():
    x = rows(1.0).float()
    big = torch.cat([x, torch.full((1, 6), 1e30)])
    big[-1, 0] = -1e30
    t = torch.tensor([0, 1, 2, 3, 5])
    for fn in LOSSES.values():
        torch.testing.assert_close(
            fn(big, torch.cat([t, t[:1]]), reduction="none")[:5], fn(x, t, reduction="none")
        )
