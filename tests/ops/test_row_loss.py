"""The row-loss engine's reduction (softmaxkit._ops.row_loss.reduce) at the float range's
edge: a mean of per-row losses near the dtype's maximum is finite where the mean is."""

from __future__ import annotations

import torch

from softmaxkit._ops.row_loss import reduce
from softmaxkit.losses import squared_hinge_loss


def test_mean_of_rows_near_the_maximum_is_finite():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        top = torch.finfo(dtype).max
        losses = torch.full((4,), top / 2, dtype=dtype)
        losses[0] = top * 0.9
        got = reduce(losses, (4,), "mean", dtype)
        want = losses.double().mean()
        assert torch.isfinite(got)
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=0)
        assert torch.isinf(reduce(losses, (4,), "sum", dtype))  # the true sum is beyond


def test_a_loss_whose_mean_is_finite_near_the_maximum():
    # two classes, target 0: each row's squared hinge is (1 + o_1)^2 / 2 = 1.62e38, finite;
    # the sum of four rows is beyond float32's range, their mean is not
    x = torch.tensor([[0.0, 1.8e19]] * 4)
    loss = squared_hinge_loss(x, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(loss.double(), torch.tensor((1 + 1.8e19) ** 2 / 2).double())


def test_cross_entropy_rules_mean_of_rows_near_the_maximum_is_finite():
    # _ops.cross_entropy.reduce_loss (the shared cross-entropy rules), through the
    # world-size-1 vocab-parallel loss: each row's loss 3.3e38 is finite, their sum is not
    from softmaxkit.distributed import vocab_parallel_cross_entropy

    x = torch.tensor([[1.7e38, -1.6e38]] * 4)
    loss = vocab_parallel_cross_entropy(x, torch.ones(4, dtype=torch.long))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), torch.tensor(3.3e38, dtype=torch.float64))
