r"""The cross-entropy rules, written once over per-row statistics.

Every fused or sharded cross-entropy of softmaxkit (:func:`softmaxkit.heads.linear_cross_entropy`,
:func:`softmaxkit.distributed.vocab_parallel_cross_entropy`,
:func:`softmaxkit.distributed.vocab_parallel_linear_cross_entropy`,
:meth:`softmaxkit.heads.VQLogits.cross_entropy`) computes its loss and its logit gradient
here, from per-row statistics of a block of rows of the (soft-capped) logits ``s``:

* the row max ``m`` and the sum ``S = sum_k exp(s_k - m)``, so ``lse = m + log S``;
* the target logit ``s_y`` (class-index targets);
* the weighted logit sum ``sum_k w_k s_k`` (only with label smoothing);
* ``sum_k t'_k w_k s_k`` (probability targets).

The statistics are either local (the block holds the whole vocabulary) or all-reduced over
a process group (each rank holds a contiguous slice of the vocabulary): one all_reduce
MAX of ``m``, then one all_reduce SUM of the stacked (rows,) statistics; nothing of size
rows x V ever crosses ranks. :class:`CrossEntropyOptions` says which (``group``,
``world``, ``vocab_start``, ``vocab_total``).

The loss of a kept row with class target ``y``, class weights ``w`` (default 1), label
smoothing ``eps``, vocabulary size ``V``, ``W = sum_k w_k`` and log-sum-exp penalty ``c``
(PaLM's "z-loss", arXiv:2204.02311) is ``torch.nn.functional.cross_entropy``'s plus the
penalty::

    l = (1 - eps) w_y (lse - s_y) + (eps / V) (W lse - sum_k w_k s_k) + c lse^2

and for a probability target ``t`` with ``t' = (1 - eps) t + eps / V``::

    l = (sum_k w_k t'_k) lse - sum_k w_k t'_k s_k + c lse^2.

Ignored rows (target ``ignore_index``) have loss 0 and gradient 0. Reductions:
``"none"`` the per-row losses; ``"sum"`` their sum; ``"mean"`` divides the cross-entropy
part by ``D`` = the number of kept rows, or ``sum w_y`` over kept rows with class weights
(the number of rows for probability targets), and the penalty by ``n`` = the number of
kept rows (it is not class-weighted, as in Liger-Kernel). When ``D`` or ``n`` is 0 the
"mean" is 0 with zero gradient (torch gives NaN), for every caller: the library's one
convention for an all-ignored batch.
The gradient derivation is written step by step beside :func:`logit_grad_`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from softmaxkit import _validation as v

__all__ = [
    "CrossEntropyOptions",
    "Targets",
    "Block",
    "RowStats",
    "Upstream",
    "ChunkResult",
    "MIN_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "default_chunk_size",
    "all_reduce",
    "global_max",
    "index_targets",
    "targets_of",
    "prob_targets",
    "block",
    "chunk_logits",
    "softcap_",
    "fast_half_matmul",
    "WEIGHT_BLOCK_BYTES",
    "UPCAST_BLOCK_BYTES",
    "reduce_statistics",
    "check_owned_once",
    "block_statistics",
    "row_loss",
    "penalty_rows",
    "mean_denominators",
    "reduce_loss",
    "logit_grad_",
    "linear_chunks",
    "check_options",
]

#: Bounds (bytes) of one chunk's logits for the default ``chunk_size``.
MIN_CHUNK_BYTES = 16 * 2**20
MAX_CHUNK_BYTES = 256 * 2**20


def default_chunk_size(
    rows: int, num_classes: int, in_features: int, dtype: torch.dtype = torch.float32
) -> int:
    """Default rows per chunk: a chunk's logits take a quarter of the weight gradient's size.

    The (num_classes, in_features) weight gradient is allocated anyway, so one chunk's
    logits add a quarter of it to the peak (``in_features / 4`` rows), clamped to
    :data:`MIN_CHUNK_BYTES` (16 MiB: fewer rows make the matmuls inefficient) and
    :data:`MAX_CHUNK_BYTES` (256 MiB) of logits, and to ``rows``: the peak of
    :func:`linear_chunks` is the weight gradient plus at most 256 MiB per chunk buffer
    (one buffer; two with softcap), whatever V (a chunk's buffers are released before
    the next chunk's are allocated; measured, float32, N 512, d 512, V 65536: 170 MiB
    for a 128 MiB weight gradient and a 32 MiB chunk, 202 MiB before that release).
    Measured on a CPU (d = 1024): 64-row chunks cost 1.5x the plain path's time, 256-row
    chunks 1.05x.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    row_bytes = max(num_classes * itemsize, 1)
    budget = min(max(num_classes * in_features * itemsize // 4, MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
    return max(1, min(max(rows, 1), budget // row_bytes))


@dataclass(frozen=True, kw_only=True)
class CrossEntropyOptions:
    """The options of one cross-entropy call (keyword-only; frozen).

    ``reduction``, ``ignore_index``, ``label_smoothing`` as ``cross_entropy``; ``softcap``:
    the logits are ``softcap * tanh(z / softcap)`` (None: not capped); ``logsumexp_penalty``:
    ``c`` of ``c lse^2``; ``chunk_size``: rows per chunk of :func:`linear_chunks`;
    ``probs``: probability targets instead of class indices; ``want_argmax``: also return
    the per-row argmax; ``vocab_start`` / ``vocab_total``: the global index of the block's
    first class and the global vocabulary size (None: the block's width, i.e. not
    sharded); ``group`` / ``world``: the process group over which the statistics are
    all-reduced (``world == 1``: local, no collective); ``check_owned``: also sum an
    ownership count and raise unless every kept target lies in exactly one rank's slice.
    """

    reduction: str = "mean"
    ignore_index: int = -100
    label_smoothing: float = 0.0
    softcap: float | None = None
    logsumexp_penalty: float = 0.0
    chunk_size: int = 1
    probs: bool = False
    want_argmax: bool = False
    vocab_start: int = 0
    vocab_total: int | None = None
    group: Any = None
    world: int = 1
    check_owned: bool = False

    def classes(self, width: int) -> int:
        """The global vocabulary size ``V`` for a block of ``width`` columns."""
        return width if self.vocab_total is None else self.vocab_total

    def replace(self, **changes: Any) -> CrossEntropyOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Targets:
    """The targets of all rows, as the rules need them.

    Class indices: ``index`` (rows,) int64 global class (0 on ignored rows), ``kept``
    (rows,) bool, ``weight`` (rows,) ``w_y`` on kept rows and 0 elsewhere (compute dtype).
    Probability targets: ``probs`` (rows, V), ``kept`` None (every row counts).
    ``class_weight``: the (V,) class weights in the compute dtype, or None; ``dtype``: the
    compute dtype.
    """

    index: torch.Tensor | None
    kept: torch.Tensor | None
    weight: torch.Tensor | None
    probs: torch.Tensor | None
    class_weight: torch.Tensor | None
    dtype: torch.dtype


def index_targets(
    index: torch.Tensor, kept: torch.Tensor, class_weight: torch.Tensor | None, dtype: torch.dtype
) -> Targets:
    """:class:`Targets` of class indices (``index`` 0 on ignored rows, ``kept`` bool)."""
    if class_weight is None:
        weight = kept.to(dtype)
    else:
        weight = torch.where(
            kept, class_weight[index], torch.zeros((), dtype=dtype, device=kept.device)
        )
    return Targets(index, kept, weight, None, class_weight, dtype)


def targets_of(
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    o: CrossEntropyOptions,
    dtype: torch.dtype,
) -> Targets:
    """:class:`Targets` of a flat target: (rows, V) probabilities when ``o.probs``, else
    (rows,) int64 class indices in which ``o.ignore_index`` marks the ignored rows."""
    if o.probs:
        return prob_targets(target, class_weight, dtype)
    kept = target != o.ignore_index
    index = torch.where(kept, target, torch.zeros_like(target))
    return index_targets(index, kept, class_weight, dtype)


def prob_targets(
    probs: torch.Tensor, class_weight: torch.Tensor | None, dtype: torch.dtype
) -> Targets:
    """:class:`Targets` of (rows, V) probability targets (cast chunk by chunk to ``dtype``)."""
    return Targets(None, None, None, probs, class_weight, dtype)


@dataclass(frozen=True)
class Block:
    """The targets of one block of rows against one block of columns (a shard).

    ``rows``: the block's rows; ``index``: their global classes; ``column``: the target's
    column in this block (0 where not owned); ``own``: kept and the target lies in this
    block's columns; ``kept``, ``weight`` as :class:`Targets`; ``dist``: the (rows, V)
    target distribution ``w_k t'_k`` of probability targets; ``mass``: its row sum
    ``sum_k w_k t'_k`` (``(1 - eps) w_y + (eps / V) W`` on kept rows for class indices);
    ``class_weight``: the block's columns of the class weights; ``classes``: the global
    vocabulary size ``V``; ``weight_total``: ``W = sum_k w_k`` over it (``V`` unweighted).
    """

    rows: slice
    index: torch.Tensor | None
    column: torch.Tensor | None
    own: torch.Tensor | None
    kept: torch.Tensor | None
    weight: torch.Tensor | None
    dist: torch.Tensor | None
    mass: torch.Tensor
    class_weight: torch.Tensor | None
    classes: int
    weight_total: torch.Tensor | float


def block(targets: Targets, rows: slice, width: int, o: CrossEntropyOptions) -> Block:
    """The :class:`Block` of ``rows`` against this block's ``width`` columns."""
    eps, V = o.label_smoothing, o.classes(width)
    cw = targets.class_weight
    total = V if cw is None else cw.sum()
    if cw is not None and (o.vocab_start != 0 or width != cw.shape[0]):
        cw = cw[o.vocab_start : o.vocab_start + width]
    if targets.probs is not None:
        tt = targets.probs[rows].to(targets.dtype)
        if eps > 0:
            tt = tt * (1 - eps) + eps / V
        if cw is not None:
            tt = tt * cw
        return Block(rows, None, None, None, None, None, tt, tt.sum(1), cw, V, total)
    assert targets.index is not None and targets.kept is not None and targets.weight is not None
    index, kept, weight = targets.index[rows], targets.kept[rows], targets.weight[rows]
    column = index - o.vocab_start if o.vocab_start else index
    if o.world > 1 or o.vocab_start or width != V:  # a shard of the vocabulary
        own = kept & (column >= 0) & (column < width)
        column = torch.where(own, column, torch.zeros_like(column))
    else:
        own = kept
    mass = weight if eps == 0 else (1 - eps) * weight
    if eps > 0:
        mass = mass + (eps / V) * total * kept.to(weight.dtype)
    return Block(rows, index, column, own, kept, weight, None, mass, cw, V, total)


def check_options(
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    logsumexp_penalty: float,
    chunk_size: int | None,
) -> None:
    """Validate the options of a fused linear + cross-entropy, in this order (the
    arguments' public names)."""
    v.check_loss_options(reduction, ignore_index, label_smoothing)
    if softcap is not None:
        v.check_number("softcap", softcap, low=0.0, low_open=True)
    v.check_number("logsumexp_penalty", logsumexp_penalty, low=0.0)
    if chunk_size is not None:
        v.check_int("chunk_size", chunk_size, low=1)


def all_reduce(t: torch.Tensor, op: Any, group: Any, world: int) -> torch.Tensor:
    """``dist.all_reduce(t, op, group)`` in place when ``world > 1``; ``t`` itself."""
    if world > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def global_max(top: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """The row max over the whole vocabulary (all_reduce MAX of the local ``top``, a new
    tensor), made finite (0 where +-inf) as ``torch.logsumexp`` does. A constant shift:
    never differentiated."""
    m = all_reduce(top.clone() if world > 1 else top, dist.ReduceOp.MAX, group, world)
    return torch.where(m.isinf(), torch.zeros_like(m), m)


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics over the whole vocabulary (already all-reduced).

    ``lse``: log-sum-exp; ``sumexp``: ``sum_k exp(s_k - m)`` (the softmax normaliser;
    None where only ``lse`` is known); ``target_logit``: ``s_y`` (0 on ignored rows);
    ``logit_sum``: ``sum_k w_k s_k`` (label smoothing); ``target_dot``:
    ``sum_k w_k t'_k s_k`` (probability targets).
    """

    lse: torch.Tensor
    sumexp: torch.Tensor | None = None
    target_logit: torch.Tensor | None = None
    logit_sum: torch.Tensor | None = None
    target_dot: torch.Tensor | None = None


def reduce_statistics(
    m: torch.Tensor, local: RowStats, blk: Block, o: CrossEntropyOptions
) -> RowStats:
    """:class:`RowStats` over the whole vocabulary from this block's ``local`` sums.

    ``m`` is the global row max (:func:`global_max`) and ``local.sumexp`` this block's
    ``sum exp(s - m)``; its ``lse`` field is ignored. With ``o.world > 1`` the present
    statistics (and, with ``o.check_owned``, an ownership count) travel in one stacked
    all_reduce SUM.
    """
    names = ("sumexp", "target_logit", "logit_sum", "target_dot")
    parts = {k: getattr(local, k) for k in names if getattr(local, k) is not None}
    if o.world > 1:
        stack = list(parts.values())
        if o.check_owned:
            assert blk.own is not None and local.sumexp is not None
            stack.append(blk.own.to(local.sumexp.dtype))
        summed = all_reduce(torch.stack(stack), dist.ReduceOp.SUM, o.group, o.world)
        if o.check_owned:
            check_owned_once(blk, summed[-1])
        parts = dict(zip(parts, summed.unbind(0)))
    return RowStats(lse=m + parts["sumexp"].log(), **parts)


def check_owned_once(blk: Block, owners: torch.Tensor) -> None:
    """Raise (on every rank alike: ``owners`` is all-reduced) unless each kept row's target
    lies in exactly one rank's slice."""
    assert blk.kept is not None and blk.index is not None
    bad = blk.kept & (owners != 1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        first = blk.rows.start or 0
        raise ValueError(
            f"target must be identical on every rank and hold class indices in "
            f"[0, V - 1] (or ignore_index) with the ranks' slices tiling [0, V); row "
            f"{first + row} (target {int(blk.index[row])}) lies in {int(owners[row])} ranks' "
            f"slices instead of 1"
        )


def chunk_logits(
    x_c: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    o: CrossEntropyOptions,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(s, tanh(z / softcap) or None)``: a chunk's (soft-capped) logits ``z = x W^T + b``,
    a fresh buffer or ``out[0]`` (the softcap is applied in place, ``s`` into ``out[1]``)."""
    z0 = None if out is None else out[0]
    z = torch.addmm(b, x_c, W.t(), out=z0) if b is not None else torch.mm(x_c, W.t(), out=z0)
    return softcap_(z, o, None if out is None else out[1])


def softcap_(
    z: torch.Tensor, o: CrossEntropyOptions, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(s, tanh(z / softcap) or None)`` of fresh logits ``z`` (overwritten when capped;
    ``s`` written into ``out`` when given)."""
    if o.softcap is None:
        return z, None
    th = z.div_(o.softcap).tanh_()
    return torch.mul(th, o.softcap, out=out), th


def block_statistics(
    s: torch.Tensor, blk: Block, o: CrossEntropyOptions
) -> tuple[torch.Tensor, RowStats]:
    """``(e, stats)``: the :class:`RowStats` of the logits ``s`` of one block, and ``s``
    overwritten in place by ``e = exp(s - m)`` (``m`` the global row max), whose product
    with ``1 / stats.sumexp`` is the softmax. The target pieces are read before."""
    local: dict[str, torch.Tensor] = {}
    if blk.dist is not None:
        local["target_dot"] = (blk.dist * s).sum(1)
    else:
        assert blk.column is not None and blk.own is not None
        s_y = s.gather(1, blk.column.unsqueeze(1)).squeeze(1)
        if blk.own is not blk.kept:  # a shard: only the owner's entry counts
            s_y = torch.where(blk.own, s_y, torch.zeros((), dtype=s_y.dtype, device=s_y.device))
        local["target_logit"] = s_y
        if o.label_smoothing > 0:
            cw = blk.class_weight
            local["logit_sum"] = s.sum(1) if cw is None else s @ cw
    m = global_max(s.amax(1), o.group, o.world)
    e = s.sub_(m.unsqueeze(1)).exp_()
    return e, reduce_statistics(m, RowStats(m, sumexp=e.sum(1), **local), blk, o)


def row_loss(stats: RowStats, blk: Block, o: CrossEntropyOptions) -> torch.Tensor:
    """The cross-entropy part of each row's loss (no penalty), 0 on ignored rows.

    ``(1 - eps) w_y (lse - s_y) + (eps / V) (W lse - sum_k w_k s_k)`` for class indices,
    ``mass lse - sum_k w_k t'_k s_k`` for probability targets. Out of place, so autograd
    may differentiate it (VQ-Logits does).
    """
    lse = stats.lse
    if blk.dist is not None:
        assert stats.target_dot is not None
        return blk.mass * lse - stats.target_dot
    assert stats.target_logit is not None and blk.weight is not None and blk.kept is not None
    eps = o.label_smoothing
    loss = lse - stats.target_logit
    if blk.class_weight is not None:
        loss = blk.weight * loss
    if eps > 0:
        assert stats.logit_sum is not None
        smooth = blk.weight_total * lse - stats.logit_sum
        loss = (1 - eps) * loss + (eps / blk.classes) * smooth
    return torch.where(blk.kept, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


def penalty_rows(
    lse: torch.Tensor | None, kept: torch.Tensor | None, o: CrossEntropyOptions
) -> torch.Tensor | None:
    """``c lse^2`` per row (0 on ignored rows), or None when ``c = 0``."""
    if o.logsumexp_penalty == 0.0:
        return None
    assert lse is not None  # callers pass None only without a penalty
    pen = o.logsumexp_penalty * lse * lse
    return pen if kept is None else pen * kept.to(pen.dtype)


def mean_denominators(
    targets: Targets, rows: int, dtype: torch.dtype, o: CrossEntropyOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, n)``: what "mean" divides the cross-entropy part and the penalty by (1, 1 for
    the other reductions), device tensors (no host sync); computed once per call.

    ``D = sum w_y`` over kept rows (their number without class weights; the number of rows
    for probability targets), ``n`` = the number of kept rows; 0 becomes 1 (the "mean" of
    nothing is then 0).
    """
    if targets.index is not None:
        device = targets.index.device
    else:
        assert targets.probs is not None
        device = targets.probs.device
    one = torch.ones((), dtype=dtype, device=device)
    if o.reduction != "mean":
        return one, one
    if targets.kept is None:
        n = torch.full((), float(max(rows, 1)), dtype=dtype, device=device)
        return n, n
    n = targets.kept.sum().to(dtype)
    assert targets.weight is not None
    D = n if targets.class_weight is None else targets.weight.sum()
    return torch.where(D == 0, one, D), torch.where(n == 0, one, n)


def reduce_loss(
    ce: torch.Tensor,
    lse: torch.Tensor | None,
    targets: Targets,
    den: tuple[torch.Tensor, torch.Tensor],
    o: CrossEntropyOptions,
) -> torch.Tensor:
    """The loss of a call from its per-row cross-entropy parts ``ce`` and ``lse``:
    ``ce + c lse^2`` per row for "none", else ``sum ce / D + sum c lse^2 / n`` with
    ``den = (D, n)`` (:func:`mean_denominators`; 1 for "sum"). The "mean" sums the rows
    already divided (``sum(ce / D)``), so it is finite whenever the mean is, also where
    ``sum(ce)`` alone would overflow (per-row losses near the float maximum)."""
    pen = penalty_rows(lse, targets.kept, o)
    if o.reduction == "none":
        return ce if pen is None else ce + pen
    D, n = den
    loss = (ce / D).sum() if o.reduction == "mean" else ce.sum()
    if pen is not None:
        loss = loss + ((pen / n).sum() if o.reduction == "mean" else pen.sum())
    return loss


@dataclass(frozen=True)
class Upstream:
    """The scales of a row's loss in the gradient: ``ce`` of the cross-entropy part and
    ``penalty`` of ``c lse^2``; 0-d (``1 / D`` and ``1 / n`` of "mean", 1 of "sum") or
    per row (the upstream gradient of "none")."""

    ce: torch.Tensor
    penalty: torch.Tensor

    @staticmethod
    def from_denominators(den: tuple[torch.Tensor, torch.Tensor]) -> Upstream:
        D, n = den
        return Upstream(D.reciprocal(), n.reciprocal())

    def rows(self, sl: slice) -> Upstream:
        if self.ce.ndim == 0:
            return self
        return Upstream(self.ce[sl], self.penalty[sl])


def _rowmul(scale: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return scale.unsqueeze(1) * t if scale.ndim == 1 else scale * t


def logit_grad_(
    e: torch.Tensor,
    norm: torch.Tensor | None,
    lse: torch.Tensor,
    blk: Block,
    up: Upstream,
    o: CrossEntropyOptions,
    *,
    tanh: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""dLoss/dz of one block, written in place into ``e`` (or into ``out``).

    ``e * norm[:, None]`` is the softmax ``p`` of the (soft-capped) logits over the global
    vocabulary (``norm`` None: ``e`` is ``p`` already); ``lse`` the rows' log-sum-exp;
    ``up`` the upstream scales; ``tanh`` the saved ``tanh(z / softcap)`` (overwritten).
    The derivation, for one row with soft-capped logits ``s`` and ``a = up.ce``,
    ``b = up.penalty``:

    1. ``d lse / d s_k = p_k`` (the softmax).
    2. Cross-entropy part ``w_y (lse - s_y)``: ``w_y (p_k - [k = y])``.
    3. Label smoothing: the target becomes ``(1 - eps) e_y + eps / V``; the loss
       ``sum_k q_k w_k (lse - s_k)`` with ``q`` that distribution has gradient
       ``M p_k - q_k w_k`` with ``M = sum_k q_k w_k``, i.e.
       ``((1 - eps) w_y + (eps / V) W) p_k - (1 - eps) w_y [k = y] - (eps / V) w_k``.
       Probability targets are the same with ``q = t'``: ``M p_k - t'_k w_k``.
    4. Class weights enter through ``w_y``, ``w_k`` and ``M`` above (``M = blk.mass``).
    5. Penalty ``c lse^2``: ``2 c lse p_k`` (kept rows only).
    6. Upstream: ``a`` scales steps 2-4 and ``b`` step 5 (``1 / D`` and ``1 / n`` for
       "mean"), so ``dL/ds_k = (a M + 2 b c lse) p_k - a (target distribution)_k``:
       one pass over ``e`` for the softmax term, a scatter for ``[k = y]``, a row
       broadcast for the smoothing term.
    7. Softcap ``s = C tanh(z / C)``: ``ds/dz = 1 - tanh^2(z / C)`` (chain rule, in place).

    Ignored rows have ``w_y = 0`` and ``M = 0`` and the penalty masked, so a zero gradient.
    On a shard the scatter of step 2 only hits the rank that owns ``y``.
    """
    eps = o.label_smoothing
    coef = up.ce * blk.mass  # steps 2-4, 6
    if o.logsumexp_penalty != 0.0:  # step 5
        pen = up.penalty * (2 * o.logsumexp_penalty) * lse
        coef = coef + (pen if blk.kept is None else pen * blk.kept.to(pen.dtype))
    if norm is not None:
        coef = coef * norm
    G = torch.mul(e, coef.unsqueeze(1), out=e if out is None else out)  # step 1
    if blk.dist is not None:
        G.sub_(_rowmul(up.ce, blk.dist))
    else:
        assert blk.weight is not None and blk.own is not None and blk.column is not None
        hit = -(up.ce * blk.weight) if eps == 0 else -(up.ce * (1 - eps)) * blk.weight
        if blk.own is not blk.kept:
            hit = torch.where(blk.own, hit, torch.zeros((), dtype=hit.dtype, device=hit.device))
        G.scatter_add_(1, blk.column.unsqueeze(1), hit.unsqueeze(1))
        if eps > 0:
            assert blk.kept is not None
            gamma = (up.ce * (eps / blk.classes)) * blk.kept.to(G.dtype)
            if blk.class_weight is None:
                G.sub_(gamma.unsqueeze(1))
            else:
                G.addcmul_(gamma.unsqueeze(1), blk.class_weight, value=-1.0)
    if tanh is not None:  # step 7
        G.mul_(tanh.mul_(tanh).neg_().add_(1.0))
    return G


@dataclass
class ChunkResult:
    """What :func:`linear_chunks` returns: the reduced ``loss``, the per-row cross-entropy
    parts ``ce``, ``lse`` and ``argmax`` (forward only), and the gradients ``grad_x``,
    ``grad_w``, ``grad_b`` (None unless asked for; ``grad_x`` of this rank's slice only);
    ``half_weight``: instead of ``grad_w``, the float32 accumulator of a half weight
    (``linear_chunks(..., finish=False)``) whose ``grad_weight(scale)`` gives it."""

    loss: torch.Tensor | None
    ce: torch.Tensor | None
    lse: torch.Tensor | None
    argmax: torch.Tensor | None
    grad_x: torch.Tensor | None
    grad_w: torch.Tensor | None
    grad_b: torch.Tensor | None
    half_weight: _HalfWeight | None = None


#: float32 bytes of one block of the weight's rows in the half-precision paths: the unit of
#: the float32 weight-gradient accumulator (one allocation per block, so that each is given
#: back to the allocator as soon as it is cast into the output; at least glibc's largest
#: mmap threshold, 32 MiB, so that a freed block leaves the resident set at once) and of
#: the per-block float32 upcast of the weight on devices without fast half matmuls.
WEIGHT_BLOCK_BYTES = 32 * 2**20


#: float32 bytes of one piece of the weight upcast at a time where half matmuls are not
#: native (:class:`_HalfWeight`): the only float32 copy of the weight ever held.
UPCAST_BLOCK_BYTES = 4 * 2**20


def fast_half_matmul(t: torch.Tensor) -> bool:
    """Whether :func:`linear_chunks` runs its matmuls in ``t``'s half dtype (float16 or
    bfloat16): on CUDA, whose half matmuls accumulate in float32 and can return float32
    (``out_dtype``), so that neither the logits nor a chunk's weight-gradient partial is
    rounded to the half dtype. Not on CPU: torch's CPU half matmul returns only the half
    dtype, so each chunk's ``G^T x`` partial would be rounded before the float32
    accumulation (more roundings than the plain half path: its error against float64 was
    measured 1.2-1.7x the plain path's), and without AVX512-BF16/AMX it is an emulation
    4-50x slower than float32 (measured on an AVX2 EPYC); there the weight is upcast one
    block of rows at a time instead. False for float32/float64."""
    return t.dtype in (torch.float16, torch.bfloat16) and t.device.type == "cuda"


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of half matrices as float32: accumulated in float32 and not rounded to the
    half dtype where torch offers it (CUDA's ``out_dtype``), else rounded once then upcast."""
    if a.device.type == "cuda":
        return torch.mm(a, b, torch.float32)
    return torch.mm(a, b).float()


class _HalfWeight:
    """The three matmuls of a chunk against a half weight ``W`` (V_r, d), in float32 math.

    ``native`` (:func:`fast_half_matmul`): the matmuls run in the half dtype with float32
    accumulation and float32 results (the logits, ``G W`` and each chunk's ``G^T x`` are
    not rounded to the half dtype; off CUDA, where this path is only reached in tests, they
    are), and the float32 logit gradient is rounded to the half dtype for the two gradient
    matmuls, as the plain half path rounds its own. Otherwise the weight is upcast one
    piece of :data:`UPCAST_BLOCK_BYTES` at a time (never a whole float32 copy) and the
    matmuls run in float32. Either way the weight gradient is
    accumulated in float32 over the chunks, in one (rows of the block, d) buffer per block
    of :data:`WEIGHT_BLOCK_BYTES`, and :meth:`grad_weight` casts the blocks into the
    half-dtype gradient one at a time, freeing each (peak: the float32 accumulator plus one
    block, instead of a float32 accumulator plus the whole half gradient).
    """

    def __init__(self, W: torch.Tensor, cdt: torch.dtype, want_grad: bool) -> None:
        self.W, self.cdt = W, cdt
        self.native = fast_half_matmul(W)
        width, d = W.shape
        step = max(1, -(-WEIGHT_BLOCK_BYTES // max(d * 4, 1)))
        self.blocks = [slice(lo, min(lo + step, width)) for lo in range(0, width, step)]
        self.acc = [W.new_zeros(bl.stop - bl.start, d, dtype=cdt) for bl in self.blocks]
        if not want_grad:
            self.acc = []
        # the upcast path's pieces: (accumulator block, rows in it, rows of W), each piece
        # at most UPCAST_BLOCK_BYTES of float32 weight
        sub = max(1, UPCAST_BLOCK_BYTES // max(d * 4, 1))
        self.pieces = [
            (i, slice(lo - bl.start, hi - bl.start), slice(lo, hi))
            for i, bl in enumerate(self.blocks)
            for lo in range(bl.start, bl.stop, sub)
            for hi in (min(lo + sub, bl.stop),)
        ]

    def logits(
        self, x_h: torch.Tensor, x_c: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor
    ) -> torch.Tensor:
        """The chunk's float32 logits ``x W^T + b`` (``x_h``: the chunk's rows in the half
        dtype, ``x_c``: the same in the compute dtype; ``b`` in the compute dtype), written
        into ``out`` (the upcast path) or a fresh buffer (native)."""
        if self.native:
            z = _mm32(x_h, self.W.t())
        else:
            z = out
            for _, _, rows in self.pieces:
                torch.mm(x_c, self.W[rows].to(self.cdt).t(), out=z[:, rows])
        return z if b is None else z.add_(b)

    def grads(
        self, G: torch.Tensor, x_h: torch.Tensor, x_c: torch.Tensor, gx_c: torch.Tensor | None
    ) -> None:
        """Fold the chunk's float32 logit gradient ``G``: ``gx_c = G W`` (written into
        ``gx_c``, compute dtype) and the weight-gradient blocks ``+= G^T x``."""
        if self.native:
            G16, x16 = G.to(self.W.dtype), x_h
            if gx_c is not None:
                gx_c.copy_(_mm32(G16, self.W))
            for bl, acc in zip(self.blocks, self.acc):
                if acc.device.type == "cuda":
                    torch.addmm(acc, G16[:, bl].t(), x16, torch.float32, out=acc)
                else:
                    acc.add_(torch.mm(G16[:, bl].t(), x16))
            return
        if gx_c is not None:
            gx_c.zero_()
        for i, local, rows in self.pieces:
            if gx_c is not None:
                gx_c.addmm_(G[:, rows], self.W[rows].to(self.cdt))
            if self.acc:
                self.acc[i][local].addmm_(G[:, rows].t(), x_c)

    def grad_weight(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The weight gradient (times ``scale``, a 0-d upstream gradient, when given) in the
        weight's dtype, rounded once from float32; the float32 blocks are freed as cast."""
        out = torch.empty_like(self.W, memory_format=torch.contiguous_format)
        for bl in self.blocks:
            acc = self.acc.pop(0)
            if scale is None:
                out[bl].copy_(acc)
            else:
                out[bl].copy_(acc.mul_(scale.to(acc.dtype)))
            del acc
        return out


def linear_chunks(
    x: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    targets: Targets,
    o: CrossEntropyOptions,
    *,
    needs: tuple[bool, bool, bool] = (False, False, False),
    grad: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    finish: bool = True,
) -> ChunkResult:
    """Walk ``x`` (rows, d) in chunks of ``o.chunk_size`` rows against ``W`` (V_r, d).

    Forward (``lse`` None): per chunk the (soft-capped) logits, their statistics (reduced
    over ``o``'s group), the rows' cross-entropy part and lse (and argmax), and the reduced
    ``loss`` (the "mean" denominators computed once, here); with any of ``needs``
    (x, W, b) also the logit gradient of "mean"/"sum" for a unit upstream gradient, folded
    at once into ``grad_x[chunk] = G W``, ``grad_W += G^T x[chunk]``,
    ``grad_b += sum_rows G``. Backward of "none" (``lse``: the saved global lse, ``grad``:
    the per-row upstream gradient): the softmax is ``exp(s - lse)``, so no statistic is
    recomputed and none crosses ranks. Peak memory:
    one chunk's logits plus the target distribution (probability targets) and the tanh
    (softcap); a chunk's buffers are released before the next chunk's are allocated.

    The compute dtype is ``targets.dtype``. When ``W`` is half (float16/bfloat16, with
    ``x`` and ``b`` of its dtype) the three matmuls go through :class:`_HalfWeight`: native
    half matmuls where :func:`fast_half_matmul`, else the weight upcast block by block; the
    statistics, loss and logit gradient stay float32, ``grad_W`` is accumulated in float32
    and returned in ``W``'s dtype, ``grad_b`` in ``b``'s dtype; ``grad_x`` is always in the
    compute dtype (the caller casts it). ``finish=False`` keeps a half weight's float32
    accumulator (``half_weight``) so that the caller rounds it once, after scaling it by the
    upstream gradient.
    """
    rows, width, cdt = x.shape[0], W.shape[0], targets.dtype
    half = W.dtype != cdt
    forward = lse is None
    if forward:
        den = mean_denominators(targets, rows, cdt, o)
        up = Upstream.from_denominators(den)
    else:
        assert grad is not None
        up = Upstream(grad.to(cdt), grad.to(cdt))
    ce = x.new_empty(rows, dtype=cdt) if forward else None
    lse_out = x.new_empty(rows, dtype=cdt) if forward else lse
    pred = x.new_empty(rows, dtype=torch.long) if forward and o.want_argmax else None
    gx = x.new_empty(rows, x.shape[1], dtype=cdt) if needs[0] else None
    hw = _HalfWeight(W, cdt, needs[1]) if half else None
    gw = torch.zeros_like(W) if needs[1] and hw is None else None
    gb = W.new_zeros(width, dtype=cdt) if needs[2] else None
    b_c = None if b is None else b.to(cdt)
    # the chunks' logits (and soft-capped logits) buffers, allocated once: a fresh (chunk,
    # V) buffer per chunk can leave the host allocator holding two (measured: glibc)
    bufs: tuple[torch.Tensor, torch.Tensor] | None = None
    for lo in range(0, rows, o.chunk_size):
        sl = slice(lo, min(lo + o.chunk_size, rows))
        x_h = x[sl]
        x_c = x_h.to(cdt)
        if bufs is None:
            n_buf = min(o.chunk_size, rows)
            z_buf = x.new_empty(n_buf, width, dtype=cdt)
            s_buf = x.new_empty(n_buf, width, dtype=cdt) if o.softcap is not None else z_buf
            bufs = (z_buf, s_buf)
        out = (bufs[0][: sl.stop - lo], bufs[1][: sl.stop - lo])
        if hw is None:
            s, th = chunk_logits(x_c, W, b_c, o, out)
        else:
            s, th = softcap_(hw.logits(x_h, x_c, b_c, out[0]), o, out[1])
        blk = block(targets, sl, width, o)
        if forward:
            if pred is not None:
                pred[sl] = s.argmax(1)
            e, stats = block_statistics(s, blk, o)
            assert ce is not None and lse_out is not None and stats.sumexp is not None
            ce[sl] = row_loss(stats, blk, o)
            lse_out[sl] = lse_c = stats.lse
            norm = stats.sumexp.reciprocal()
        else:
            assert lse is not None
            lse_c = lse[sl]
            e, norm = s.sub_(lse_c.unsqueeze(1)).exp_(), None
        if gx is None and gw is None and gb is None and (hw is None or not hw.acc):
            del s, e, th
            continue
        G = logit_grad_(e, norm, lse_c, blk, up.rows(sl), o, tanh=th)
        if hw is not None:
            hw.grads(G, x_h, x_c, None if gx is None else gx[sl])
        else:
            if gx is not None:
                torch.mm(G, W, out=gx[sl])
            if gw is not None:
                gw.addmm_(G.t(), x_c)
        if gb is not None:
            gb.add_(G.sum(0))
        # release this chunk's (chunk, V) buffers before the next chunk allocates its own
        del s, e, th, G
    if hw is not None and needs[1] and finish:
        gw = hw.grad_weight()
    if gb is not None and b is not None:
        gb = gb.to(b.dtype)
    loss = None
    if forward:
        assert ce is not None
        loss = reduce_loss(ce, lse_out, targets, den, o)
    keep = hw if hw is not None and needs[1] and not finish else None
    return ChunkResult(loss, ce, lse_out, pred, gx, gw, gb, keep)
