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

Only tensor collectives (``all_reduce``, ``all_gather``) on tensors on the logits' device
are used, so the NCCL backend works unchanged with CUDA tensors (each rank on its own GPU,
``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))``). Memory: forward and backward run
in row blocks, save only the input and (N,) statistics, and backward allocates only the
gradient (Megatron saves an fp32 softmax of the shard).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype, fill_where, row_blocks

__all__ = ["vocab_parallel_log_softmax", "vocab_parallel_cross_entropy"]


def _checks_values(t: torch.Tensor) -> bool:
    """Whether tensor values may be read (CPU, outside ``torch.compile``): no device sync."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _resolve_group(group: Any) -> tuple[Any, int, int]:
    """(group, world size, rank in group); world size 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError(
                f"group must be None when no torch.distributed process group is initialised "
                f"(world size 1), got {group!r}"
            )
        return None, 1, 0
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"group must contain this process (rank {dist.get_rank()}), got {group!r}")
    return group, world, rank


def _check_local_logits(local_logits: Any) -> torch.Tensor:
    v.check_floating("local_logits", local_logits)
    if local_logits.ndim < 1 or local_logits.shape[-1] == 0:
        raise ValueError(
            f"local_logits must have shape (..., V_local) with V_local >= 1 (this rank's slice "
            f"of the vocabulary on the last dimension), got shape {tuple(local_logits.shape)}"
        )
    return local_logits


def _all_reduce(t: torch.Tensor, op: Any, group: Any, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


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


def _global_max(top: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """All-reduce MAX of the local row maxima, made finite (0) where +-inf as in
    ``torch.logsumexp``. Never differentiated: a constant shift (detached), and the custom
    backward passes use the softmax, which does not depend on it."""
    m = _all_reduce(top.clone(), dist.ReduceOp.MAX, group, world)
    return torch.where(m.isinf(), torch.zeros_like(m), m)


def _global_lse(x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """Global row lse: MAX all-reduce of the row max m, SUM all-reduce of exp(lse_local - m)."""
    top, local = _local_lse(x)
    if world == 1:
        return local
    m = _global_max(top, group, world)
    return m + _all_reduce((local - m).exp(), dist.ReduceOp.SUM, group, world).log()


def _vocab_layout(
    local_logits: torch.Tensor,
    rows: int,
    group: Any,
    world: int,
    rank: int,
    vocab_start_index: Any,
    need_total: bool,
) -> tuple[int, int | None]:
    """(vocab_start_index, global vocabulary size or None when unknown and not needed)."""
    width = local_logits.shape[-1]
    if vocab_start_index is not None:
        v.check_int("vocab_start_index", vocab_start_index, low=0)
    if world == 1:
        if vocab_start_index not in (None, 0):
            raise ValueError(
                f"vocab_start_index must be None or 0 at world size 1, got {vocab_start_index}"
            )
        return 0, width
    if vocab_start_index is None:
        # one all_gather of (V_local, N) per rank: the offsets, the global size, and a
        # check that every rank holds the same rows
        mine = torch.tensor([width, rows], dtype=torch.int64, device=local_logits.device)
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine, group=group)
        sizes = torch.stack(parts).cpu()
        if bool((sizes[:, 1] != rows).any()):
            raise ValueError(
                f"local_logits must have the same number of rows on every rank, got "
                f"{sizes[:, 1].tolist()} rows on ranks 0..{world - 1}"
            )
        return int(sizes[:rank, 0].sum()), int(sizes[:, 0].sum())
    if not need_total:
        return vocab_start_index, None
    total = torch.tensor([width], dtype=torch.int64, device=local_logits.device)
    dist.all_reduce(total, group=group)
    return vocab_start_index, int(total.item())


def _check_target(target: Any, batch_shape: torch.Size, source: str) -> None:
    """Class indices (an integer dtype) of shape ``batch_shape``."""
    v.check_tensor("target", target)
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"target must hold class indices (an integer dtype), got {target.dtype}; "
            f"probability targets are not supported by the vocab-parallel loss"
        )
    if target.shape != batch_shape:
        raise ValueError(
            f"target must have shape {tuple(batch_shape)} ({source}), got {tuple(target.shape)}"
        )


def _class_index(
    target: torch.Tensor, ignore_index: int, total: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat int64 class index, 0 on ignored rows; flat kept mask), the kept values checked
    to lie in [0, V) where they can be read without a device sync."""
    flat = target.reshape(-1)
    kept = flat != ignore_index
    if _checks_values(flat) and bool(kept.any()):
        lo, hi = int(flat[kept].min()), int(flat[kept].max())
        if lo < 0 or (total is not None and hi >= total):
            raise ValueError(
                f"target must hold class indices in [0, {'V - 1' if total is None else total - 1}]"
                f" (or ignore_index={ignore_index}), got {lo if lo < 0 else hi}"
            )
    return torch.where(kept, flat, torch.zeros_like(flat)).to(torch.int64), kept


def _check_owned_once(
    kept: torch.Tensor, owners: torch.Tensor, index: torch.Tensor, first_row: int = 0
) -> None:
    """Raise (on every rank alike: ``owners`` is all-reduced) unless each kept row's target
    lies in exactly one rank's slice; ``first_row`` numbers the rows of a chunk."""
    bad = kept & (owners != 1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target must be identical on every rank and hold class indices in "
            f"[0, V - 1] (or ignore_index) with the ranks' slices tiling [0, V); row "
            f"{first_row + row} (target {int(index[row])}) lies in {int(owners[row])} ranks' "
            f"slices instead of 1"
        )


class _VocabParallelLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, world: int) -> torch.Tensor:
        lse = _global_lse(x, group, world)
        out = x.to(compute_dtype(x)) - lse[:, None]
        ctx.save_for_backward(out)
        ctx.group, ctx.world, ctx.dtype = group, world, x.dtype
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        g = grad.to(out.dtype)
        # d/dz_j sum_k g_k log p_k = g_j - p_j sum_k g_k, the sum over the GLOBAL vocabulary
        total = _all_reduce(g.sum(1), dist.ReduceOp.SUM, ctx.group, ctx.world)
        return (g - out.exp() * total[:, None]).to(ctx.dtype), None, None


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
        group: the process group (default None: the default group). With no process group
            initialised this is the world-size-1 case and equals ``torch.log_softmax(z, -1)``.

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
    _check_local_logits(local_logits)
    group, world, _ = _resolve_group(group)
    x = local_logits.reshape(-1, local_logits.shape[-1])
    return _VocabParallelLogSoftmax.apply(x, group, world).reshape(local_logits.shape)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        index: torch.Tensor,
        kept: torch.Tensor,
        start: int,
        total: int | None,
        eps: float,
        group: Any,
        world: int,
    ) -> torch.Tensor:
        dtype = compute_dtype(x)
        width = x.shape[1]
        top, local_lse = _local_lse(x)
        m = _global_max(top, group, world)
        local = index - start
        own = kept & (local >= 0) & (local < width)
        local = torch.where(own, local, torch.zeros_like(local))
        picked = x.gather(1, local[:, None]).squeeze(1).to(dtype)
        stats = [(local_lse - m).exp(), torch.where(own, picked, torch.zeros_like(picked))]
        if eps > 0:
            stats.append(x.sum(1, dtype=dtype))
        check = _checks_values(index)
        if check:
            stats.append(own.to(dtype))
        stats = _all_reduce(torch.stack(stats), dist.ReduceOp.SUM, group, world)
        if check:
            _check_owned_once(kept, stats[-1], index)
        lse = m + stats[0].log()
        loss = lse - stats[1]
        if eps > 0:
            loss = (1 - eps) * loss + eps * (lse - stats[2] / total)
        loss = torch.where(kept, loss, torch.zeros_like(loss))
        ctx.save_for_backward(x, lse, local_lse, local, own, kept)
        ctx.eps, ctx.total = eps, total
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        # local: (softmax - target distribution) on this slice; lse is already global, so
        # no collective is needed. The global softmax is the local one (torch's fused
        # kernel) times exp(lse_local - lse); rows that are all -inf here get 0, not NaN.
        x, lse, local_lse, local, own, kept = ctx.saved_tensors
        dtype = lse.dtype
        w = torch.where(kept, grad.to(dtype), torch.zeros_like(lse))
        scale = (local_lse - lse).exp_().mul_(w)
        dead = local_lse == -torch.inf
        hit = torch.where(own, -(1 - ctx.eps) * w, torch.zeros_like(w))
        out = torch.empty_like(x)
        for b in row_blocks(x.shape[0], x.shape[1]):
            p = torch.softmax(x[b].to(dtype), 1)
            # write straight into the gradient when no cast back is needed
            block = torch.mul(p, scale[b, None], out=out[b] if out.dtype == dtype else p)
            fill_where(block, dead[b, None], 0.0)
            if ctx.eps > 0:
                block.sub_((ctx.eps / ctx.total) * w[b, None])
            block.scatter_add_(1, local[b, None], hit[b, None])
            if block is p:
                out[b] = block
        return out, None, None, None, None, None, None, None


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
        group: the process group (default None: the default group). With no process group
            initialised (world size 1) this is exactly ``cross_entropy`` over the last
            dimension.
        vocab_start_index: global index of this rank's first class. Default None: the sum
            of the lower ranks' V_local, found with one ``all_gather`` of (V_local, N) per
            rank (which also gives V and checks N agrees). Passing it skips that
            collective; V is then all-reduced only when ``label_smoothing > 0``.
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
    _check_local_logits(local_logits)
    _check_target(
        target, local_logits.shape[:-1], "local_logits' shape without the vocabulary dimension"
    )
    v.check_int("ignore_index", ignore_index)
    eps = v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    v.check_reduction(reduction)
    group, world, rank = _resolve_group(group)
    x = local_logits.reshape(-1, local_logits.shape[-1])
    start, total = _vocab_layout(
        x, x.shape[0], group, world, rank, vocab_start_index, need_total=eps > 0
    )
    index, kept = _class_index(target, ignore_index, total)
    losses = _VocabParallelCrossEntropy.apply(x, index, kept, start, total, eps, group, world)
    if reduction == "none":
        return losses.reshape(target.shape).to(local_logits.dtype)
    out = losses.sum()
    if reduction == "mean":
        out = out / kept.sum().clamp(min=1)
    return out.to(local_logits.dtype)
