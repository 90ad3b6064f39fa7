"""The losses without a compile test of their own run under ``torch.compile`` on CPU.

(The others are compiled in their own test files; one compiled function here keeps the
suite to one more compilation.)
"""

import torch

from softmaxkit import losses as L


def losses_without_own_compile_test(x, e, w, target, lam, f_data, f_noise, state):
    return (
        L.normalized_softmax_loss(e, w, target)
        + L.aldr_kl_loss(x, target, lam)[0]
        + L.compositional_nll(f_data, f_noise, state)
    )


def test_compiles_on_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, requires_grad=True)
    e = torch.randn(4, 3, generator=g, requires_grad=True)
    w = torch.randn(6, 3, generator=g, requires_grad=True)
    target = torch.tensor([0, 1, -100, 5])
    lam = torch.full((4,), 10.0)
    f_data = torch.randn(5, generator=g, requires_grad=True)
    f_noise = torch.randn(7, generator=g, requires_grad=True)
    args = (x, e, w, target, lam, f_data, f_noise)
    compiled = torch.compile(losses_without_own_compile_test)(
        *args, L.CompositionalState(gamma=0.5)
    )
    eager = losses_without_own_compile_test(*args, L.CompositionalState(gamma=0.5))
    torch.testing.assert_close(compiled, eager)
    leaves = [x, e, w, f_data, f_noise]
    for got, expected in zip(
        torch.autograd.grad(compiled, leaves), torch.autograd.grad(eager, leaves)
    ):
        torch.testing.assert_close(got, expected)
