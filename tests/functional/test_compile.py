"""Every public map runs under ``torch.compile`` on CPU, forward and backward.

One compiled function calls all the maps, so the suite pays for one compilation.
"""

import torch

import softmaxkit as sk
from softmaxkit.losses import stablemax_cross_entropy


def all_maps(x, keep, target):
    return (
        sk.softmax(x, mask=keep, temperature=0.5).sum()
        + sk.log_softmax(x).sum()
        + sk.two_pass_softmax(x, chunk_size=4).sum()
        + sk.two_pass_log_softmax(x, chunk_size=4).sum()
        + sk.stablemax(x).sum()
        + sk.log_stablemax(x, mask=keep).masked_fill(~keep, 0).sum()
        + sk.clipped_softmax(x, gamma=-0.1, zeta=1.1).sum()
        + sk.topk_softmax(x, 3).sum()
        + sk.gumbel_softmax(x, 0.5).sum()
        + sk.sparsemax(x).sum()
        + sk.entmax15(x).sum()
        + sk.entmax_bisect(x, 1.3).sum()
        + stablemax_cross_entropy(x, target)
    )


def test_every_map_compiles_on_cpu():
    x = torch.randn(3, 10, requires_grad=True)
    keep = torch.rand(3, 10) > 0.3
    target = torch.tensor([0, 4, 9])
    compiled = torch.compile(all_maps)
    out = compiled(x, keep, target)
    (g,) = torch.autograd.grad(out, x)
    x_eager = x.detach().clone().requires_grad_()
    torch.manual_seed(0)
    # gumbel noise differs between the two calls; compare everything else
    eager_total = all_maps(x_eager, keep, target) - sk.gumbel_softmax(x_eager, 0.5).sum()
    assert torch.isfinite(out) and torch.isfinite(g).all()
    assert abs(out.item() - eager_total.item() - 3.0) < 1e-3  # each gumbel row sums to 1
