r"""Vocab-parallel log-softmax and cross-entropy over ``torch.distributed``.

When the output layer's vocabulary (or class count) :math:`V` is sharded across the ranks
of a process group, rank :math:`r` holds the contiguous slice
:math:`z_{:, s_r : s_r + V_r}` of the logits (``local_logits`` of shape (N, V_r)). The
softmax over the *global* vocabulary needs only per-row statistics, so only (N,)-sized
tensors ever cross ranks, never N x V:

.. math:: m = \max_r \max_{k \in r} z_k \quad(\text{all\_reduce MAX}), \qquad
          S = \sum_r \sum_{k \in r} e^{z_k - m} \quad(\text{all\_reduce SUM}), \qquad
          \operatorname{lse}(z) = m + \log S.

The target logit :math:`z_y` (each rank contributes its own entry or 0) and, for label
smoothing, the row sum :math:`\sum_k z_k` travel in the same SUM all-reduce. This is the
algorithm of Megatron-LM's tensor-parallel cross-entropy (M. Shoeybi, M. Patwary, R. Puri,
P. LeGresley, J. Casper, B. Catanzaro, "Megatron-LM: Training Multi-Billion Parameter
Language Models Using Model Parallelism", 2019, arXiv:1909.08053), with exact label
smoothing, ``ignore_index`` and reductions added; see :func:`vocab_parallel_cross_entropy`.

Running under ``torchrun`` (save as ``script.py``, run
``torchrun --nproc_per_node=2 script.py``)::

    import torch, torch.distributed as dist
    from softmaxkit.distributed import vocab_parallel_cross_entropy

    dist.init_process_group("gloo")  # or "nccl", with the tensors below on the rank's GPU
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same full logits and targets on every rank
    full, target = torch.randn(8, 1000), torch.randint(0, 1000, (8,))
    local = full.tensor_split(world, dim=1)[rank].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target, label_smoothing=0.1)
    loss.backward()  # local.grad is this rank's slice of the full gradient
    print(rank, loss.item())  # the same value on every rank
    dist.destroy_process_group()

The group: ``None`` (the default process group), a ``ProcessGroup`` (Megatron-LM's style),
or a ``DeviceMesh`` dimension as torch's functional collectives and torchtitan take it: a
1-D mesh (``group=mesh["tp"]``, a named sub-mesh of a 2-D ``("dp", "tp")`` mesh) or a pair
``group=(mesh, "tp")`` / ``(mesh, 1)``; a mesh of more than one dimension alone is refused
(which dimension is the vocabulary's is ambiguous). DTensors are not taken: for logits or a
weight that are a DTensor sharded on the vocabulary over a 1-D mesh (a ``ColwiseParallel``
output head), pass the shard ``x.to_local()`` with ``group=x.device_mesh``; DTensor's
``Shard`` splits are contiguous in rank order, which the default ``vocab_start_index``
assumes. A DTensor argument raises a TypeError that says so.

Only tensor collectives (``all_reduce``, ``all_gather``) on tensors on the logits' device
are used, so the NCCL backend works unchanged with CUDA tensors (each rank on its own GPU,
``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))``). Memory: forward and backward run
in row blocks, save only the input and (N,) statistics, and backward allocates only the
gradient (Megatron saves an fp32 softmax of the shard).

Bad input on one rank (a wrong shape or dtype, a target out of range or different from the
other ranks', options or chunk sizes that differ) makes every rank raise the same error,
naming the failing rank: each rank validates locally, then ONE all_gather of a few numbers
per rank (an error flag, the slice width, the row count, the targets' range and
fingerprint, the options) lets every rank take the same decision before any other
collective; the failing rank's message is shared only on that error path. On the normal
path this all_gather (which also gives the global V and this rank's offset) and one host
sync are the whole cost of the checks. NaN logits are allowed and propagate to every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops import cross_entropy as ce_ops
from softmaxkit._ops import dtensor
from softmaxkit._ops.blocks import compute_dtype, fill_where, row_blocks
from softmaxkit._ops.cross_entropy import CrossEntropyOptions
from softmaxkit.distributed._group import (
    Local,
    agree,
    check_start,
    check_target,
    checks_values,
    class_index,
    resolve_group,
)

__all__ = ["vocab_parallel_log_softmax", "vocab_parallel_cross_entropy"]


def _check_local_logits(local_logits: object) -> torch.Tensor:
    local_logits = v.check_floating("local_logits", local_logits)
    if local_logits.ndim < 1 or local_logits.shape[-1] == 0:
        raise ValueError(
            f"local_logits must have shape (..., V_local) with V_local >= 1 (this rank's slice "
            f"of the vocabulary on the last dimension), got shape {tuple(local_logits.shape)}"
        )
    return local_logits


def _local_lse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row max, row log-sum-exp) of the local slice in the compute dtype, block by block.

    ``lse = max - max_k log_softmax(z)_k``: torch's fused log_softmax is about twice as fast
    on CPU as ``exp(z - m).sum()``, and its max term lies in [-log V, 0] (no cancellation).
    A row that is all -inf on this rank has lse -inf (it contributes nothing).
    """
    dtype = compute_dtype(x)
    top = x.detach().amax(1).to(dtype)
    lse = torch.empty_like(top)
    for b in row_blocks(x.shape[0], x.shape[1]):
        lse[b] = top[b] - torch.log_softmax(x[b].to(dtype), 1).amax(1)
    return top, torch.where(top == -torch.inf, top, lse)


def _global_lse(x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """Global row lse: MAX all-reduce of the row max m, SUM all-reduce of exp(lse_local - m)."""
    top, local = _local_lse(x)
    if world == 1:
        return local
    m = ce_ops.global_max(top, group, world)
    return m + ce_ops.all_reduce((local - m).exp(), dist.ReduceOp.SUM, group, world).log()


class _VocabParallelLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
        lse = _global_lse(x, group, world)
        # a row that is all -inf over the whole vocabulary gives -inf (not -inf - -inf)
        out = fill_where(
            x.to(compute_dtype(x)) - lse[:, None], lse[:, None] == -torch.inf, -torch.inf
        )
        ctx.save_for_backward(out, lse)
        ctx.group, ctx.world, ctx.dtype = group, world, x.dtype
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out, lse = ctx.saved_tensors
        g = grad.to(out.dtype)
        # d/dz_j sum_k g_k log p_k = g_j - p_j sum_k g_k, the sum over the GLOBAL vocabulary;
        # a fully masked row (lse = -inf) has zero gradient
        total = ce_ops.all_reduce(g.sum(1), dist.ReduceOp.SUM, ctx.group, ctx.world)
        out = fill_where(g - out.exp() * total[:, None], lse[:, None] == -torch.inf, 0.0)
        return out.to(ctx.dtype), None, None


def vocab_parallel_log_softmax(local_logits: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    r"""This rank's slice of ``log_softmax`` over a vocabulary sharded across ranks.

    .. math:: \log p_k = z_k - \operatorname{lse}(z), \qquad
              \operatorname{lse}(z) = m + \log \sum_r \sum_{k \in r} e^{z_k - m},
              \quad m = \max_k z_k,

    with the max and the sum of exponentials all-reduced (MAX, then SUM) over ``group``,
    so only (N,)-sized tensors cross ranks. The result equals the matching slice of
    ``torch.log_softmax`` of the concatenated logits. Backward is
    :math:`g_j - p_j \sum_k g_k` and needs one SUM all-reduce of the (N,) row sums of the
    incoming gradient, so **every rank must run backward**. The max is a constant shift
    inside a custom ``autograd.Function`` and is never differentiated.

    Megatron-LM's algorithm (Shoeybi et al., "Megatron-LM: Training Multi-Billion
    Parameter Language Models Using Model Parallelism", 2019, arXiv:1909.08053).

    Args:
        local_logits: (..., V_local) this rank's contiguous slice of the logits, classes on
            the last dimension, the same leading shape on every rank. Any floating dtype;
            float16/bfloat16 are computed in float32 and returned in the input dtype.
        group: the process group (default None: the default group), a ``ProcessGroup``, a
            1-D ``DeviceMesh`` (e.g. ``mesh["tp"]``) or ``(mesh, "tp")`` (see the module
            docstring). With no process group initialised this is the world-size-1 case and
            equals ``torch.log_softmax(z, -1)``.

    A row that is -inf over the whole vocabulary (a fully masked row) gives -inf and zero
    gradient, the library's convention (as :func:`softmaxkit.log_softmax`), not NaN.
    Bad input on one rank makes every rank raise the same error (one small all_gather
    before the other collectives; see :mod:`softmaxkit.distributed.vocab_parallel`).

    Returns:
        Log-probabilities of the local slice, shape and dtype of ``local_logits``.

    Runs under ``torchrun --nproc_per_node=2 script.py`` as shown in
    :mod:`softmaxkit.distributed.vocab_parallel`; NCCL works unchanged.

    Example:
        >>> import torch
        >>> from softmaxkit.distributed import vocab_parallel_log_softmax
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])  # world size 1: no process group
        >>> vocab_parallel_log_softmax(z)
        tensor([[-0.1698, -2.1698, -3.1698]])
    """
    dtensor.refuse("local_logits", local_logits, dtensor.LOCAL_FIX)
    ranks = resolve_group(group)
    mine, error = Local(), None
    try:
        _check_local_logits(local_logits)
        mine = Local(width=local_logits.shape[-1], rows=local_logits[..., 0].numel())
    except (TypeError, ValueError) as e:
        error = e
    agree(ranks, mine, error, local_logits)  # every rank raises alike, before any collective
    x = local_logits.reshape(-1, local_logits.shape[-1])
    out: torch.Tensor = _VocabParallelLogSoftmax.apply(x, ranks[0], ranks[1])  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
    return out.reshape(local_logits.shape)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row losses (the cross-entropy rules of :mod:`softmaxkit._ops.cross_entropy`)
    of the whole local slice; forward all-reduces the statistics, backward is local."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, index: torch.Tensor, kept: torch.Tensor, o: CrossEntropyOptions
    ) -> torch.Tensor:
        dtype = compute_dtype(x)
        top, local_lse = _local_lse(x)
        m = ce_ops.global_max(top, o.group, o.world)
        blk = ce_ops.block(
            ce_ops.index_targets(index, kept, None, dtype), slice(None), x.shape[1], o
        )
        assert blk.column is not None and blk.own is not None  # class-index targets
        picked = x.gather(1, blk.column[:, None]).squeeze(1).to(dtype)
        local = ce_ops.RowStats(
            m,
            sumexp=(local_lse - m).exp(),
            target_logit=torch.where(blk.own, picked, torch.zeros_like(picked)),
            logit_sum=x.sum(1, dtype=dtype) if o.label_smoothing > 0 else None,
        )
        stats = ce_ops.reduce_statistics(m, local, blk, o)
        ctx.save_for_backward(x, stats.lse, local_lse, index, kept)
        ctx.o = o
        return ce_ops.row_loss(stats, blk, o)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        # local: (softmax - target distribution) on this slice (ce_ops.logit_grad_); lse is
        # already global, so no collective is needed. The global softmax is the local one
        # (torch's fused kernel) times exp(lse_local - lse); rows that are all -inf here
        # get 0, not NaN.
        x, lse, local_lse, index, kept = ctx.saved_tensors
        o = ctx.o
        dtype = lse.dtype
        targets = ce_ops.index_targets(index, kept, None, dtype)
        up = ce_ops.Upstream(grad.to(dtype), grad.to(dtype))
        norm = (local_lse - lse).exp_()
        dead = local_lse == -torch.inf
        out = torch.empty_like(x)
        for b in row_blocks(x.shape[0], x.shape[1]):
            p = fill_where(torch.softmax(x[b].to(dtype), 1), dead[b, None], 0.0)
            # write straight into the gradient when no cast back is needed
            blk = ce_ops.block(targets, b, x.shape[1], o)
            dst = out[b] if out.dtype == dtype else None
            G = ce_ops.logit_grad_(p, norm[b], lse[b], blk, up.rows(b), o, out=dst)
            if dst is None:
                out[b] = G
        return out, None, None, None


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    vocab_start_index: int | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy over a vocabulary sharded across the ranks of ``group``.

    Equals ``torch.nn.functional.cross_entropy(z, target, ignore_index=...,
    label_smoothing=..., reduction=...)`` of the concatenated logits :math:`z` (N, V), on
    every rank, while only (N,)-sized statistics cross ranks:

    .. math:: \ell = (1 - \varepsilon)\,(\operatorname{lse}(z) - z_y)
              + \varepsilon\,\Big(\operatorname{lse}(z) - \frac{1}{V}\sum_{k=1}^{V} z_k\Big),

    the cross-entropy against the smoothed target :math:`(1 - \varepsilon) e_y +
    \varepsilon / V` (label smoothing of Szegedy et al., "Rethinking the Inception
    Architecture for Computer Vision", 2016, arXiv:1512.00567, with torch's convention).
    Collectives in forward: all_reduce MAX of the row max, then one all_reduce SUM of the
    stacked (N,) rows: sum of :math:`e^{z_k - m}`, target logit (the owning rank's entry,
    0 elsewhere), row logit sum (only when :math:`\varepsilon > 0`) and, on CPU, an
    ownership count that checks every kept target lies in exactly one rank's slice. The
    max is a constant shift (detached; the backward uses the softmax, which ignores it).
    **Backward is local and needs no collective**:
    :math:`\partial \ell / \partial z_k = p_k - (1 - \varepsilon)[k = y] - \varepsilon / V`
    on this rank's slice, recomputed from the saved input and the global
    :math:`\operatorname{lse}` (nothing N x V is saved).

    Why not Megatron's formula: Megatron-LM (Shoeybi et al., 2019, arXiv:1909.08053)
    smooths with the *local* partition size :math:`V_r` and the mean log-probability over
    the *local* slice only, with NeMo's :math:`\varepsilon V_r / (V_r - 1)` factor (which
    spreads :math:`\varepsilon` over the other classes instead of torch's
    :math:`\varepsilon / V` over all, and divides by zero when :math:`V_r = 1`). At world
    size > 1 that gives a different loss on every rank, none equal to the smoothed
    cross-entropy over :math:`V` (Megatron-LM issues #737, #7464). Here the smoothing term
    uses the global logit sum and the global :math:`V`, so it is exact at any world size and
    any (uneven) split (tested at 2 and 4 ranks with uneven splits).

    The targets, ``ignore_index`` and the reduction are replicated: every rank holds the
    same (N,) ``target`` and returns the same loss. Ignored rows have 0 loss and 0
    gradient; "mean" divides by the number of non-ignored rows (0, not NaN, when all are
    ignored, unlike ``cross_entropy``).

    Args:
        local_logits: (..., V_local) this rank's contiguous slice of the logits, classes on
            the last dimension (Megatron's layout, not ``cross_entropy``'s dim 1), the same
            leading shape on every rank, V_local >= 1 (may differ between ranks).
            float16/bfloat16 are computed in float32; the loss and gradient come back in
            the input dtype.
        target: (...) global class indices in [0, V - 1] or ``ignore_index``, identical on
            every rank.
        group: the process group (default None: the default group), a ``ProcessGroup``, a
            1-D ``DeviceMesh`` (e.g. ``mesh["tp"]``) or ``(mesh, "tp")`` (see the module
            docstring). With no process group initialised (world size 1) this is exactly
            ``cross_entropy`` over the last dimension.
        vocab_start_index: global index of this rank's first class (given on every rank or
            on none). Default None: the sum of the lower ranks' V_local, from the checking
            collective below.
        ignore_index: target value that contributes nothing (default -100, as torch).
        label_smoothing: :math:`\varepsilon \in [0, 1]` (default 0.0, as torch).
        reduction: "mean" (default), "sum" or "none" (per-row losses, ``target``'s shape).

    Returns:
        The loss, in the logits' dtype, replicated on every rank.

    Runs under ``torchrun --nproc_per_node=2 script.py`` as shown in
    :mod:`softmaxkit.distributed.vocab_parallel`; NCCL works unchanged (tensor collectives
    only, on the logits' device).

    Example:
        >>> import torch
        >>> from softmaxkit.distributed import vocab_parallel_cross_entropy
        >>> z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])  # world size 1
        >>> round(vocab_parallel_cross_entropy(z, y).item(), 4)
        2.1698
        >>> round(vocab_parallel_cross_entropy(z, y, label_smoothing=0.3).item(), 4)
        2.0698
    """
    dtensor.refuse("local_logits", local_logits, dtensor.LOCAL_FIX)
    dtensor.refuse("target", target)
    ranks = resolve_group(group)
    mine, error = Local(), None
    try:  # local checks; agree() then makes every rank raise alike, before any collective
        _check_local_logits(local_logits)
        flat = check_target(
            target, local_logits.shape[:-1], "local_logits' shape without the vocabulary dimension"
        )
        v.check_int("ignore_index", ignore_index)
        eps = v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        v.check_reduction(reduction)
        mine = Local(
            width=local_logits.shape[-1],
            rows=flat.numel(),
            target=flat,
            ignore_index=ignore_index,
            option_names=("ignore_index", "label_smoothing", "reduction"),
            options=(ignore_index, float(eps), v.REDUCTIONS.index(reduction)),
            vocab_start_index=check_start(vocab_start_index, ranks[1]),
        )
    except (TypeError, ValueError) as e:
        error = e
    layout = agree(ranks, mine, error, local_logits)
    start, total = layout.start, layout.total
    x = local_logits.reshape(-1, local_logits.shape[-1])
    index, kept = class_index(flat, ignore_index, total, ranks[1])
    o = CrossEntropyOptions(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=float(eps),
        vocab_start=start,
        vocab_total=total,
        group=ranks[0],
        world=ranks[1],
        check_owned=checks_values(index) and ranks[1] > 1,
    )
    losses: torch.Tensor = _VocabParallelCrossEntropy.apply(x, index, kept, o)  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
    dtype = losses.dtype
    targets = ce_ops.index_targets(index, kept, None, dtype)
    den = ce_ops.mean_denominators(targets, x.shape[0], dtype, o)
    loss = ce_ops.reduce_loss(losses, None, targets, den, o)  # no penalty: lse unused
    if reduction == "none":
        loss = loss.reshape(target.shape)
    return loss.to(local_logits.dtype)
