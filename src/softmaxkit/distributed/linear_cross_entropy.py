r"""Vocab-parallel fused linear + cross-entropy: the output layer sharded over ranks, chunked.

Rank :math:`r` of ``group`` holds the rows :math:`W_r` (V_r, d) of the output weight (and
its bias slice); every rank holds the same hidden states :math:`h` (N, d) and targets.
:func:`vocab_parallel_linear_cross_entropy` returns
``cross_entropy(h @ W.T + b, target)`` over the concatenated vocabulary without ever
building the (N, V) logits, the (N, V_r) logits of the shard, or their gradients: it walks
over the rows in chunks (as :func:`softmaxkit.heads.linear_cross_entropy` does) and, per
chunk, all-reduces only per-row statistics (as
:func:`softmaxkit.distributed.vocab_parallel_cross_entropy` does). The gradient of ``h``
is a sum over the ranks' vocabulary slices: one (N, d) SUM all-reduce per call.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit.distributed.vocab_parallel import (
    _all_reduce,
    _check_owned_once,
    _check_target,
    _checks_values,
    _class_index,
    _resolve_group,
    _vocab_layout,
)
from softmaxkit.heads.linear_ce import default_chunk_size

__all__ = ["vocab_parallel_linear_cross_entropy"]

_HALF = (torch.float16, torch.bfloat16)


class _Opts(NamedTuple):
    reduction: str
    smoothing: float
    softcap: float | None
    penalty: float
    chunk: int
    start: int
    total: int | None
    group: Any
    world: int
    check: bool  # read target values on the host to check every row is owned once


def _logits(x_c, W, b, o: _Opts):
    """(s, tanh(z / softcap) or None): the chunk's (soft-capped) logits of this shard."""
    z = torch.addmm(b, x_c, W.t()) if b is not None else x_c @ W.t()
    if o.softcap is None:
        return z, None
    th = z.div_(o.softcap).tanh_()
    return th * o.softcap, th


def _chunks(x, W, b, tgt, kept, o: _Opts):
    """Per row chunk: (rows, input chunk in the compute dtype, (soft-capped) logits of this
    shard, tanh or None, target's local column (0 where not owned), owned-and-kept mask)."""
    rows, width = x.shape[0], W.shape[0]
    for lo in range(0, rows, o.chunk):
        sl = slice(lo, min(lo + o.chunk, rows))
        x_c = x[sl].to(W.dtype)
        s, th = _logits(x_c, W, b, o)
        local = tgt[sl] - o.start
        own = kept[sl] & (local >= 0) & (local < width)
        yield sl, x_c, s, th, torch.where(own, local, torch.zeros_like(local)), own


def _grad_block(e, th, local, own, scale, o: _Opts):
    """dLoss/dz of one chunk, in place in ``e``, which holds the global softmax times the
    row coefficient: subtract the target distribution's part (``scale`` is the row's upstream
    scale, 0 on ignored rows), then apply the softcap's derivative."""
    if o.smoothing > 0:
        e.sub_(((o.smoothing / o.total) * scale).unsqueeze(1))
    hit = torch.where(own, -(1 - o.smoothing) * scale, torch.zeros_like(scale))
    e.scatter_add_(1, local.unsqueeze(1), hit.unsqueeze(1))
    if th is not None:
        e.mul_(th.mul_(th).neg_().add_(1.0))  # d softcap(z) / dz = 1 - tanh^2
    return e


def _forward(x, W, b, tgt, kept, o: _Opts, needs: tuple[bool, bool, bool]):
    """Per-row CE part and global lse; with any of ``needs`` (x, W, b) also those unit-scale
    gradients (divided by the "mean" denominator; x's not yet all-reduced)."""
    rows, cdt = x.shape[0], W.dtype
    want_grad = any(needs)
    ce = x.new_empty(rows, dtype=cdt)
    lse = x.new_empty(rows, dtype=cdt)
    gx, gw, gb = _grad_buffers(x, W, needs)
    keptf = kept.to(cdt)
    # the upstream scale of each row's loss (1 / kept rows for "mean"; 0 on ignored rows)
    scale_all = keptf / keptf.sum().clamp(min=1) if o.reduction == "mean" else keptf
    for sl, x_c, s, th, local, own in _chunks(x, W, b, tgt, kept, o):
        s_y = torch.where(own, s.gather(1, local.unsqueeze(1)).squeeze(1), 0.0)
        m = _all_reduce(s.amax(1), dist.ReduceOp.MAX, o.group, o.world)
        stats = [s_y]
        if o.smoothing > 0:
            stats.append(s.sum(1))
        if o.check:
            stats.append(own.to(cdt))
        e = s.sub_(m.unsqueeze(1)).exp_()  # s is a fresh buffer
        stats = _all_reduce(torch.stack([e.sum(1), *stats]), dist.ReduceOp.SUM, o.group, o.world)
        if o.check:
            _check_owned_once(kept[sl], stats[-1], tgt[sl], sl.start)
        lse_c = m + stats[0].log()
        loss = lse_c - stats[1]
        if o.smoothing > 0:
            loss = (1 - o.smoothing) * loss + o.smoothing * (lse_c - stats[2] / o.total)
        ce[sl] = loss * keptf[sl]
        lse[sl] = lse_c
        if want_grad:
            scale = scale_all[sl]
            coef = scale * (1 + 2 * o.penalty * lse_c)
            e.mul_((coef / stats[0]).unsqueeze(1))
            _accumulate(_grad_block(e, th, local, own, scale, o), W, x_c, sl, gx, gw, gb)
    return ce, lse, gx, gw, gb


def _grad_buffers(x, W, needs):
    need_x, need_w, need_b = needs
    gx = x.new_empty(x.shape[0], x.shape[1], dtype=W.dtype) if need_x else None
    gw = torch.zeros_like(W) if need_w else None
    gb = W.new_zeros(W.shape[0]) if need_b else None
    return gx, gw, gb


def _accumulate(G, W, x_c, sl, gx, gw, gb):
    if gx is not None:
        torch.mm(G, W, out=gx[sl])
    if gw is not None:
        gw.addmm_(G.t(), x_c)
    if gb is not None:
        gb.add_(G.sum(0))


def _backward_none(x, W, b, tgt, kept, lse, g, o: _Opts, needs):
    """Gradients for reduction "none" (per-row upstream ``g``): recompute each chunk's
    logits; the saved global lse gives the softmax, so no statistic crosses ranks."""
    cdt = W.dtype
    gx, gw, gb = _grad_buffers(x, W, needs)
    keptf = kept.to(cdt)
    scale_all = g.to(cdt) * keptf
    for sl, x_c, s, th, local, own in _chunks(x, W, b, tgt, kept, o):
        scale = scale_all[sl]
        coef = scale * (1 + 2 * o.penalty * lse[sl])
        e = s.sub_(lse[sl].unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
        _accumulate(_grad_block(e, th, local, own, scale, o), W, x_c, sl, gx, gw, gb)
    return gx, gw, gb


def _loss(ce, lse, kept, o: _Opts):
    rows = ce + o.penalty * lse * lse * kept.to(ce.dtype) if o.penalty else ce
    if o.reduction == "none":
        return rows
    total = rows.sum()
    return total / kept.sum().clamp(min=1) if o.reduction == "mean" else total


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, tgt, kept, o: _Opts, needs, out_dtype):
        eager = o.reduction != "none"
        ce, lse, gx, gw, gb = _forward(x, W, b, tgt, kept, o, needs if eager else (False,) * 3)
        if eager:
            if gx is not None:
                _all_reduce(gx, dist.ReduceOp.SUM, o.group, o.world)
            ctx.save_for_backward(gx, gw, gb)
        else:
            ctx.save_for_backward(x, W, b, tgt, kept, lse)
        ctx.o, ctx.needs, ctx.x_dtype = o, needs, x.dtype
        return _loss(ce, lse, kept, o).to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        o = ctx.o
        if o.reduction != "none":
            gx, gw, gb = (None if t is None else t * g.to(t.dtype) for t in ctx.saved_tensors)
        else:
            x, W, b, tgt, kept, lse = ctx.saved_tensors
            gx, gw, gb = _backward_none(x, W, b, tgt, kept, lse, g, o, ctx.needs)
            if gx is not None:
                _all_reduce(gx, dist.ReduceOp.SUM, o.group, o.world)
        if gx is not None:
            gx = gx.to(ctx.x_dtype)
        return gx, gw, gb, None, None, None, None, None


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    local_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    local_bias: torch.Tensor | None = None,
    group: Any = None,
    vocab_start_index: int | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    softcap: float | None = None,
    logsumexp_penalty: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Cross-entropy of a vocab-parallel output layer, chunked, without the logits.

    With the ranks' weight slices :math:`W = [W_0; W_1; \dots]` (V, d) and bias slices,
    logits :math:`z = h W^\top + b`, optionally soft-capped :math:`s = c \tanh(z / c)`
    (Gemma 2, arXiv:2408.00118), and :math:`\operatorname{lse} = \log \sum_k e^{s_k}` over
    the *global* vocabulary, a kept row's loss is exactly ``cross_entropy``'s

    .. math:: \ell = (1 - \varepsilon)(\operatorname{lse} - s_y)
              + \varepsilon\Big(\operatorname{lse} - \frac{1}{V}\sum_{k=1}^{V} s_k\Big)
              + \lambda \operatorname{lse}^2,

    with label smoothing :math:`\varepsilon` exact at any world size and split, and
    :math:`\lambda` = ``logsumexp_penalty`` (PaLM's "z-loss", Chowdhery et al. 2022,
    arXiv:2204.02311; not the Z-loss of :func:`softmaxkit.losses.z_loss`). Equal, on every
    rank, to ``linear_cross_entropy(hidden, W, target, ...)`` of the concatenated weight.

    How: the rows run in chunks of ``chunk_size`` (the same count on every rank). Per chunk,
    each rank computes its (chunk, V_r) logits and all-reduces only per-row statistics: the
    row max (MAX), then one stacked SUM of the sum of :math:`e^{s - m}`, the target logit,
    the logit sum (only with smoothing) and, on CPU, a count that checks each kept target
    lies in exactly one rank's slice (Megatron-LM's vocab-parallel cross-entropy, Shoeybi
    et al. 2019, arXiv:1909.08053, with the chunked, fused-in-forward gradients of
    Liger-Kernel, Hsu et al. 2024, arXiv:2410.10989). For "mean"/"sum" the gradients are
    computed in that same pass: the weight and bias gradients stay local (this rank's slice)
    and the hidden gradient, a sum over the slices, is SUM all-reduced once, (N, d); backward
    only scales them by the upstream scalar. For "none" forward keeps the inputs and the
    global lse, and backward recomputes each chunk's logits (no statistic crosses ranks,
    then the one (N, d) all-reduce), so **every rank must run backward**.

    ``hidden.grad`` is the full gradient :math:`\partial L / \partial h` (already summed
    over the ranks), the same on every rank: do not sum it again (for example with
    Megatron's ``copy_to_tensor_model_parallel_region`` in front of this call).

    Args:
        hidden: (..., d) hidden states, identical on every rank.
        local_weight: (V_r, d) this rank's contiguous slice of the output weight, hidden's
            dtype (float16/bfloat16 are computed and accumulated in float32); V_r may
            differ between ranks.
        target: (...) global class indices in [0, V - 1] or ``ignore_index``, identical on
            every rank. (Probability targets would need an (N, V) target; not supported.)
        local_bias: optional (V_r,) slice of the output bias.
        group: the process group (default None: the default group); with no process group
            initialised this is the single-process case.
        vocab_start_index: global index of this rank's first class. Default None: found with
            one ``all_gather`` of (V_r, N) per rank (also gives V and checks N agrees).
        ignore_index: target value whose rows contribute 0 loss and 0 gradient (default -100).
        label_smoothing: :math:`\varepsilon \in [0, 1]` (default 0.0, torch's convention).
        reduction: "mean" (over the kept rows; 0 when none is kept), "sum" or "none".
        softcap: positive cap of the logits or None (default: no capping).
        logsumexp_penalty: :math:`\lambda \ge 0` (default 0; PaLM uses 1e-4), averaged over
            the kept rows for "mean".
        chunk_size: rows per chunk; default :func:`softmaxkit.heads.linear_ce.default_chunk_size`
            of this rank's slice, made equal on every rank by an all-reduce MIN (one host
            sync; pass ``chunk_size`` to avoid it).

    Returns:
        The loss (0-d, or the target's shape for "none") in hidden's dtype, the same on
        every rank.

    Runs under ``torchrun --nproc_per_node=2 script.py`` like the example in
    :mod:`softmaxkit.distributed.vocab_parallel`; NCCL works unchanged (tensor collectives
    on hidden's device only).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from softmaxkit.distributed import vocab_parallel_linear_cross_entropy
        >>> h, W = torch.randn(5, 4, dtype=torch.float64), torch.randn(11, 4, dtype=torch.float64)
        >>> y = torch.tensor([3, 0, -100, 10, 7])  # world size 1: no process group
        >>> loss = vocab_parallel_linear_cross_entropy(h, W, y, label_smoothing=0.1)
        >>> torch.allclose(loss, F.cross_entropy(h @ W.T, y, label_smoothing=0.1))
        True
    """
    width, d = v.check_linear_layer(
        "hidden", hidden, "local_weight", local_weight, "local_bias", local_bias
    )
    _check_target(target, hidden.shape[:-1], "hidden's shape without d")
    v.check_loss_options(reduction, ignore_index, label_smoothing)
    if softcap is not None:
        v.check_number("softcap", softcap, low=0.0, low_open=True)
    v.check_number("logsumexp_penalty", logsumexp_penalty, low=0.0)
    if chunk_size is not None:
        v.check_int("chunk_size", chunk_size, low=1)
    group, world, rank = _resolve_group(group)
    x = hidden.reshape(-1, d)
    rows = x.shape[0]
    eps = float(label_smoothing)
    shard_logits = local_weight.new_empty(()).expand(rows, width)  # shape only, never built
    start, total = _vocab_layout(
        shard_logits, rows, group, world, rank, vocab_start_index, need_total=eps > 0
    )
    tgt, kept = _class_index(target, ignore_index, total)
    cdt = torch.float32 if hidden.dtype in _HALF else hidden.dtype
    if chunk_size is None:
        chunk_size = default_chunk_size(rows, width, d, cdt)
        if world > 1:  # the same number of chunks (of collectives) on every rank
            chunk = torch.tensor([chunk_size], device=x.device)
            chunk_size = int(_all_reduce(chunk, dist.ReduceOp.MIN, group, world).item())
    o = _Opts(
        reduction,
        eps,
        None if softcap is None else float(softcap),
        float(logsumexp_penalty),
        chunk_size,
        start,
        total,
        group,
        world,
        _checks_values(tgt) and world > 1,
    )
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and local_weight.requires_grad,
        grad_on and local_bias is not None and local_bias.requires_grad,
    )
    W = local_weight.to(cdt)
    b = None if local_bias is None else local_bias.to(cdt)
    loss = _VocabParallelLinearCE.apply(x, W, b, tgt, kept, o, needs, hidden.dtype)
    return loss.reshape(target.shape) if reduction == "none" else loss
