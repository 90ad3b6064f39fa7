"""StableMax cross-entropy where the row sum of s overflows (issue 11, part 2)."""

import pytest
import torch

from softmaxkit.losses import stablemax_cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_row_sum_overflow(dtype, soft):
    x = torch.tensor([[3e38, 3e38, -3e38], [2e38, 2e38, 1.0], [1.0, -2.0, 0.5]], dtype=dtype)
    t = torch.tensor([0, 2, 1])
    if soft:
        t = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    xs = x.clone().requires_grad_()
    loss = stablemax_cross_entropy(xs, t.to(dtype) if soft else t, reduction="none")
    loss.sum().backward()
    xd = x.double().requires_grad_()
    expected = stablemax_cross_entropy(xd, t.double() if soft else t, reduction="none")
    expected.sum().backward()
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-2, atol=1e-2)
    assert not torch.isnan(xs.grad).any()
    torch.testing.assert_close(xs.grad.double(), xd.grad, rtol=2e-2, atol=1e-2)
    if not soft:
        # [3e38, 3e38, -3e38] with target 0: log 2 (the third term is ~3e-39)
        torch.testing.assert_close(loss[0].float(), torch.tensor(0.6931), rtol=1e-2, atol=0)
