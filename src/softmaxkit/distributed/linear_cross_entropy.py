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

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops import cross_entropy as ce_ops
from softmaxkit._ops import dtensor
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit._ops.cross_entropy import CrossEntropyOptions, default_chunk_size
from softmaxkit.distributed._group import (
    Local,
    agree,
    check_start,
    check_target,
    checks_values,
    class_index,
    resolve_group,
)

__all__ = ["vocab_parallel_linear_cross_entropy"]


@dataclass(frozen=True, kw_only=True)
class _Call:
    """One call's options: the cross-entropy rules' (with the group) and which gradients."""

    ce: CrossEntropyOptions
    needs: tuple[bool, bool, bool]
    out_dtype: torch.dtype


def _sum_over_ranks(gx: torch.Tensor | None, o: CrossEntropyOptions) -> None:
    """The hidden state's gradient is a sum over the ranks' vocabulary slices."""
    if gx is not None:
        ce_ops.all_reduce(gx, dist.ReduceOp.SUM, o.group, o.world)


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W: torch.Tensor,
        b: torch.Tensor | None,
        target: torch.Tensor,
        call: _Call,
    ) -> torch.Tensor:
        o = call.ce
        eager = o.reduction != "none"
        targets = ce_ops.targets_of(target, None, o, compute_dtype(W))
        needs = call.needs if eager else (False, False, False)
        res = ce_ops.linear_chunks(x, W, b, targets, o, needs=needs)
        loss = res.loss
        assert loss is not None  # a forward walk
        if eager:
            _sum_over_ranks(res.grad_x, o)
            ctx.save_for_backward(res.grad_x, res.grad_w, res.grad_b)
        else:
            ctx.save_for_backward(x, W, b, target, res.lse)
        ctx.call, ctx.x_dtype = call, x.dtype
        return loss.to(call.out_dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None, None]:
        o = ctx.call.ce
        if o.reduction != "none":
            gx, gw, gb = (None if t is None else t * g.to(t.dtype) for t in ctx.saved_tensors)
        else:
            # recompute each chunk's logits; the saved global lse gives the softmax, so no
            # statistic crosses ranks (then the one (N, d) all-reduce of the hidden gradient)
            x, W, b, target, lse = ctx.saved_tensors
            targets = ce_ops.targets_of(target, None, o, compute_dtype(W))
            res = ce_ops.linear_chunks(x, W, b, targets, o, needs=ctx.call.needs, grad=g, lse=lse)
            gx, gw, gb = res.grad_x, res.grad_w, res.grad_b
            _sum_over_ranks(gx, o)
        if gx is not None:
            gx = gx.to(ctx.x_dtype)
        return gx, gw, gb, None, None


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
            dtype (float16/bfloat16: the matmuls in that dtype where it is native, else the
            weight upcast block by block; statistics, loss and logit gradient in float32;
            the weight gradient accumulated in float32); V_r may differ between ranks.
        target: (...) global class indices in [0, V - 1] or ``ignore_index``, identical on
            every rank. (Probability targets would need an (N, V) target; not supported.)
        local_bias: optional (V_r,) slice of the output bias.
        group: the process group (default None: the default group), a ``ProcessGroup``, a
            1-D ``DeviceMesh`` (e.g. ``mesh["tp"]``) or ``(mesh, "tp")`` (see
            :mod:`softmaxkit.distributed.vocab_parallel`); with no process group initialised
            this is the single-process case. A DTensor ``local_weight`` is refused: pass
            ``w.to_local()`` with ``group=w.device_mesh``.
        vocab_start_index: global index of this rank's first class (given on every rank or
            on none). Default None: the sum of the lower ranks' V_r, from the one checking
            collective below.
        ignore_index: target value whose rows contribute 0 loss and 0 gradient (default -100).
        label_smoothing: :math:`\varepsilon \in [0, 1]` (default 0.0, torch's convention).
        reduction: "mean" (over the kept rows; 0 when none is kept), "sum" or "none".
        softcap: positive cap of the logits or None (default: no capping).
        logsumexp_penalty: :math:`\lambda \ge 0` (default 0; PaLM uses 1e-4), averaged over
            the kept rows for "mean".
        chunk_size: rows per chunk; default :func:`softmaxkit.heads.linear_ce.default_chunk_size`
            of this rank's slice, made equal on every rank (the smallest of the ranks'
            defaults); a given ``chunk_size`` must be the same on every rank.

    Bad input on one rank: every rank raises the same error. Each rank validates its
    arguments, then ONE all_gather of a few numbers per rank (an error flag, V_r, N, the
    chunk size, the options, the targets' range and fingerprint) lets every rank take the
    same decision before any other collective (the failing rank's message is then shared),
    so no rank is left blocked in a collective. That all_gather (and one host sync) is the
    whole cost of the checks on the normal path; it also gives V and the offsets.

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
    dtensor.refuse("hidden", hidden)  # DTensors: a TypeError that names the fix
    dtensor.refuse("target", target)
    dtensor.refuse("local_weight", local_weight, dtensor.LOCAL_FIX)
    dtensor.refuse("local_bias", local_bias, dtensor.LOCAL_FIX)
    ranks = resolve_group(group)
    group, world = ranks[0], ranks[1]
    mine, error = Local(rows_name="hidden"), None
    try:  # local checks; agree() then makes every rank raise alike, before any collective
        width, d = v.check_linear_layer(
            "hidden", hidden, "local_weight", local_weight, "local_bias", local_bias
        )
        flat = check_target(target, hidden.shape[:-1], "hidden's shape without d")
        opts = (reduction, ignore_index, label_smoothing, softcap, logsumexp_penalty, chunk_size)
        ce_ops.check_options(*opts)
        rows = flat.numel()
        mine = Local(
            width=width,
            rows=rows,
            target=flat,
            ignore_index=ignore_index,
            option_names=(
                "ignore_index",
                "label_smoothing",
                "reduction",
                "softcap",
                "logsumexp_penalty",
            ),
            options=(
                ignore_index,
                float(label_smoothing),
                v.REDUCTIONS.index(reduction),
                -1.0 if softcap is None else float(softcap),
                float(logsumexp_penalty),
            ),
            # the same number of chunks (of collectives) on every rank: a given chunk_size
            # must agree; the default is the smallest of the ranks' defaults
            chunk_size=chunk_size,
            default_chunk=default_chunk_size(rows, width, d, compute_dtype(hidden)),
            vocab_start_index=check_start(vocab_start_index, world),
            rows_name="hidden",
        )
    except (TypeError, ValueError) as e:
        error = e
    layout = agree(ranks, mine, error, hidden)
    start, total, chunk_size = layout.start, layout.total, layout.chunk_size
    assert chunk_size is not None  # agreed for a chunked op: a default_chunk_size (>= 1)
    x = hidden.reshape(-1, d)
    eps = float(label_smoothing)
    class_index(flat, ignore_index, total, world)  # checks the kept values at world size 1
    o = CrossEntropyOptions(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=eps,
        softcap=None if softcap is None else float(softcap),
        logsumexp_penalty=float(logsumexp_penalty),
        chunk_size=chunk_size,
        vocab_start=start,
        vocab_total=total,
        group=group,
        world=world,
        check_owned=checks_values(flat) and world > 1,
    )
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and local_weight.requires_grad,
        grad_on and local_bias is not None and local_bias.requires_grad,
    )
    # half weights go in as they are: native half matmuls (or a block-by-block upcast),
    # float32 statistics and a float32 grad_W accumulator (ce_ops.linear_chunks)
    call = _Call(ce=o, needs=needs, out_dtype=hidden.dtype)
    loss: torch.Tensor = _VocabParallelLinearCE.apply(x, local_weight, local_bias, flat, call)  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
    return loss.reshape(target.shape) if reduction == "none" else loss
