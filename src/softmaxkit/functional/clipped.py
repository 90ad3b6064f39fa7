"""Clipped softmax (Bondarenko et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import (
    as_rows,
    block_target,
    from_rows,
    in_dtype,
    row_blocks,
    store,
    unit_open_bounds,
    workspace,
)
from softmaxkit.functional._softmax import masked_logits
from softmaxkit.functional.two_pass import safe_normalize


class _ClippedSoftmax(torch.autograd.Function):
    """Clipped softmax of the rows of a 2-D input, in row blocks.

    Saves only the input: backward recomputes each block's softmax in cache, so peak
    memory is the output and the gradient, as for ``torch.softmax``. Temporaries live
    in a reused one-block workspace.
    """

    @staticmethod
    def forward(
        ctx: Any, z2: torch.Tensor, gamma: float, zeta: float, out_dtype: torch.dtype
    ) -> torch.Tensor:
        out = torch.empty(z2.shape, dtype=out_dtype, device=z2.device)
        (work,) = workspace(z2, z2.dtype, 1)
        for b in row_blocks(*z2.shape):
            p, _ = safe_normalize(z2[b], 1, log=False, out=work[: b.stop - b.start])
            u = p.mul_(zeta - gamma).add_(gamma)
            store(out[b], torch.clamp(u, 0.0, 1.0, out=block_target(out[b], u.dtype, u)))
        ctx.gamma, ctx.zeta = gamma, zeta
        ctx.save_for_backward(z2)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (z2,) = ctx.saved_tensors
        scale, gamma = ctx.zeta - ctx.gamma, ctx.gamma
        grad = torch.empty_like(z2)
        work = workspace(z2, z2.dtype, 3)
        # torch.clamp passes the gradient where 0 <= u <= 1, bounds included; the clip's
        # backward kernel excludes its bounds, so it gets their outer neighbours
        lo, hi = unit_open_bounds(z2.dtype)
        for b in row_blocks(*z2.shape):
            p_buf, u_buf, g_buf = (w[: b.stop - b.start] for w in work)
            p, _ = safe_normalize(z2[b], 1, log=False, out=p_buf)
            u = torch.mul(p, scale, out=u_buf).add_(gamma)
            gb = in_dtype(g[b], g_buf)
            gu = torch.ops.aten.hardtanh_backward.grad_input(gb, u, lo, hi, grad_input=u_buf)
            if scale != 1.0:
                gu.mul_(scale)
            torch.ops.aten._softmax_backward_data.out(gu, p, 1, p.dtype, grad_input=grad[b])
        return grad, None, None, None


def clipped_softmax_gamma(alpha: float, seq_len: int) -> float:
    r"""The paper's rule for the clipped softmax's :math:`\gamma`: :math:`-\alpha / T`.

    ``seq_len`` is the length :math:`T` the softmax runs over (the official OPT script
    uses its ``block_size``, 512, with :math:`\alpha = 12`; BERT's uses
    ``max_seq_length``).

    Example:
        >>> from softmaxkit import clipped_softmax_gamma
        >>> clipped_softmax_gamma(12, 512)
        -0.0234375
    """
    alpha = v.check_number("alpha", alpha, low=0.0)
    seq_len = v.check_int("seq_len", seq_len, low=1)
    return -alpha / seq_len


@backend_op
def clipped_softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    gamma: float = -0.025,
    zeta: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Clipped softmax: a softmax that can output exact zeros (and ones).

    .. math:: y = \operatorname{clip}((\zeta - \gamma)\,\mathrm{softmax}(x) + \gamma,\ 0,\ 1)

    With :math:`\gamma < 0` an attention head can give a token exactly zero weight
    with finite logits, so it no longer has to push logits to extremes (the source of
    the activation outliers that make transformers hard to quantise). Rows no longer
    sum to 1. The clip's gradient is inclusive at the bounds, as ``torch.clamp``;
    entries clipped strictly outside [0, 1] pass no gradient through their own output.

    Paper: Y. Bondarenko, M. Nagel, T. Blankevoort, "Quantizable Transformers: Removing
    Outliers by Helping Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929.
    Defaults are the paper's BERT setting (``gamma=-0.025, zeta=1``, official script
    ``clipped(-.025:1)``); the official function's own defaults are ``gamma=-0.1``,
    ``eta=1.1`` (``eta`` is the code's name for :math:`\zeta`) and ``dim=1``. For the
    paper's sequence-length rule use :func:`clipped_softmax_gamma`. One official
    configuration labelled ``clipped(-.005:1.005)`` actually ran with
    :math:`\gamma = -0.003` (a typo in the mapping); it is not replicated here.

    Args:
        x: logits of any shape; float16/bfloat16 computed in float32, returned in the
            input dtype.
        dim: the axis of the softmax.
        gamma: :math:`\gamma \le 0`, the stretch below 0.
        zeta: :math:`\zeta \ge 1`, the stretch above 1.
        mask: boolean keep-mask broadcastable to ``x``; masked entries and rows with
            nothing kept give 0 with zero gradient (the official code gives NaN rows).

    Example:
        >>> import torch
        >>> from softmaxkit import clipped_softmax
        >>> clipped_softmax(torch.tensor([4.0, 0.0, -4.0]), gamma=-0.1)
        tensor([0.9799, 0.0000, 0.0000])
    """
    gamma = v.check_number("gamma", gamma, high=0.0)
    zeta = v.check_number("zeta", zeta, low=1.0)
    z, dim = masked_logits(x, dim, 1.0, mask)
    if x.numel() == 0:
        return x.clone()
    # torch leaves Function.apply unannotated
    out2: torch.Tensor = _ClippedSoftmax.apply(as_rows(z, dim), gamma, zeta, x.dtype)  # type: ignore[no-untyped-call]
    return from_rows(out2, x, dim)


class ClippedSoftmax(nn.Module):
    """Module twin of :func:`clipped_softmax`: ``ClippedSoftmax(dim, gamma=, zeta=)(x, mask)``."""

    def __init__(self, dim: int = -1, *, gamma: float = -0.025, zeta: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        self.gamma = v.check_number("gamma", gamma, high=0.0)
        self.zeta = v.check_number("zeta", zeta, low=1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return clipped_softmax(x, self.dim, gamma=self.gamma, zeta=self.zeta, mask=mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, gamma={self.gamma}, zeta={self.zeta}"
