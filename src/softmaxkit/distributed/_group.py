"""Process-group plumbing shared by the vocab-parallel losses (private to ``distributed``).

Resolving the group, the one collective in which the ranks agree on validity and on the
vocabulary layout of their slices (offset and global size) before any other collective
(:func:`agree`), and the target checks and class-index builder, identical for every
vocab-parallel op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from softmaxkit import _validation as v


def checks_values(t: torch.Tensor) -> bool:
    """Whether tensor values may be read (CPU, outside ``torch.compile``): no device sync."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _mesh_group(group: Any) -> Any:
    """The process group of a DeviceMesh dimension: ``mesh`` (1-D), ``mesh["tp"]`` (a 1-D
    sub-mesh) or ``(mesh, dim)`` with ``dim`` a dimension's name or index (the forms of
    torch's functional collectives); anything else is returned unchanged."""
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], DeviceMesh):
        mesh, dim = group
        names = mesh.mesh_dim_names or ()
        if isinstance(dim, str):
            if dim not in names:
                raise ValueError(
                    f"group=(mesh, {dim!r}) names no dimension of the mesh, whose dimensions "
                    f"are {names or 'unnamed'} (shape {tuple(mesh.shape)})"
                )
        elif isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < mesh.ndim:
            raise ValueError(
                f"group=(mesh, dim) needs dim a dimension name in {names} or an index in "
                f"[0, {mesh.ndim - 1}], got {dim!r}"
            )
        return mesh.get_group(dim)
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(
                f"group must be a 1-D DeviceMesh, got a {group.ndim}-D mesh of shape "
                f"{tuple(group.shape)} with dimensions {group.mesh_dim_names}; pick the "
                f'vocabulary-parallel dimension with group=mesh["tp"] or group=(mesh, "tp")'
            )
        return group.get_group()
    return group


def resolve_group(group: Any) -> tuple[Any, int, int]:
    """(process group, world size, rank in group); world size 1 without an initialised
    process group. ``group`` is None (the default group), a ``ProcessGroup``, a 1-D
    ``DeviceMesh`` or a ``(mesh, dim)`` pair (see :func:`_mesh_group`)."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError(
                f"group must be None when no torch.distributed process group is initialised "
                f"(world size 1), got {group!r}"
            )
        return None, 1, 0
    group = _mesh_group(group)
    member = group is not dist.GroupMember.NON_GROUP_MEMBER  # new_group() on a non-member
    if member and group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            "group must be None, a torch.distributed ProcessGroup, a 1-D DeviceMesh or a "
            f"(DeviceMesh, dim) pair, got {type(group).__name__}"
        )
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"group must contain this process (rank {dist.get_rank()}), got {group!r}")
    return group, world, rank


@dataclass
class Local:
    """What one rank brings to :func:`agree`: its local sizes and flat targets, and the
    options that must be the same on every rank (``options``, named by ``option_names``)."""

    width: int = 0
    rows: int = 0
    target: torch.Tensor | None = None  # flat int64 class indices
    ignore_index: int = -100
    option_names: tuple[str, ...] = ()
    options: tuple[float, ...] = ()
    chunk_size: int | None = None  # given by the caller
    default_chunk: int = 0  # this rank's default chunk size (chunked losses)
    vocab_start_index: int | None = None
    rows_name: str = "local_logits"


@dataclass(frozen=True)
class Layout:
    """The agreed vocabulary layout: this rank's first class, the global vocabulary size,
    and the chunk size (the same on every rank; None where the op is not chunked)."""

    start: int
    total: int
    chunk_size: int | None


_OK, _VALUE, _TYPE = 0, 1, 2
# columns of the table that every rank contributes to the one all_gather of agree()
_ERR, _WIDTH, _ROWS, _TMIN, _TMAX, _TSUM, _TDOT, _CHUNK, _DEFAULT, _START = range(10)
_OPTIONS = 6  # then up to this many options that must agree (the same length on every rank)


def _row(mine: Local, error: Exception | None, device: torch.device) -> torch.Tensor:
    """This rank's row of the table (float64: every int below 2**53 is exact), built on the
    host and moved once; the targets' statistics are computed on their device (no sync)."""
    values = [0.0] * (_START + 1 + _OPTIONS)
    if error is not None:
        values[_ERR] = _TYPE if isinstance(error, TypeError) else _VALUE
        return torch.tensor(values, dtype=torch.float64).to(device)
    values[_WIDTH], values[_ROWS], values[_TMAX] = mine.width, mine.rows, -1
    values[_CHUNK] = -1 if mine.chunk_size is None else mine.chunk_size
    values[_DEFAULT] = mine.default_chunk
    values[_START] = -1 if mine.vocab_start_index is None else mine.vocab_start_index
    values[_START + 1 : _START + 1 + len(mine.options)] = mine.options
    head = torch.tensor(values, dtype=torch.float64).to(device)
    t = mine.target
    if t is not None and t.numel():
        # range and fingerprint of the targets (read after the gather)
        kept = t != mine.ignore_index
        td = t.to(torch.float64)
        weights = torch.arange(1, t.numel() + 1, dtype=torch.float64, device=t.device)
        stats = [
            torch.where(kept, td, 0.0).amin(),
            torch.where(kept, td, -1.0).amax(),
            td.sum(),
            td @ weights,
        ]
        head[_TMIN : _TDOT + 1] = torch.stack(stats).to(device)
    return head


def _device(group: Any, tensor: Any) -> torch.device:
    if isinstance(tensor, torch.Tensor):
        return tensor.device
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _differs(table: torch.Tensor, column: int) -> bool:
    return bool((table[:, column] != table[0, column]).any())


def agree(
    ranks: tuple[Any, int, int],
    mine: Local,
    error: Exception | None,
    like: Any = None,
) -> Layout:
    """Agree on validity and on the vocabulary layout with ONE all_gather, before any other
    collective, so that bad input on one rank makes every rank raise the same error instead
    of leaving the others blocked in a collective.

    Each rank validates its arguments locally first (``error`` is what that raised, or
    None) and contributes one small row (:data:`_ERR` ... options): an error code, its
    slice width and row count, the range and a fingerprint of its targets, its chunk size
    and the options that must agree. From the gathered (world, k) table every rank takes
    the same decision: a local error (the lowest failing rank's type and message, shared on
    that error path only with ``all_gather_object``), then rows, options, chunk sizes and
    targets that differ between ranks, then targets outside [0, V). The normal path costs
    this one all_gather of a few numbers per rank and one host sync. At world size 1 there
    is no collective: ``error`` is raised as is.
    """
    group, world, rank = ranks
    if world == 1:
        if error is not None:
            raise error
        start = 0 if mine.vocab_start_index is None else mine.vocab_start_index
        chunk = mine.default_chunk if mine.chunk_size is None else mine.chunk_size
        return Layout(start, mine.width, chunk or None)
    row = _row(mine, error, _device(group, like))
    parts = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(parts, row, group=group)
    table = torch.stack(parts).cpu()
    failed = [r for r in range(world) if table[r, _ERR] != _OK]
    if failed:
        messages = [None] * world
        dist.all_gather_object(messages, None if error is None else str(error), group=group)
        r = failed[0]
        kind = TypeError if table[r, _ERR] == _TYPE else ValueError
        others = f" (and ranks {failed[1:]})" if len(failed) > 1 else ""
        raise kind(
            f"{messages[r]} [on rank {r}{others} of {world}; raised on every rank of the group]"
        )
    if _differs(table, _ROWS):
        raise ValueError(
            f"{mine.rows_name} must have the same number of rows on every rank, got "
            f"{table[:, _ROWS].long().tolist()} rows on ranks 0..{world - 1}"
        )
    for k, name in enumerate(mine.option_names):
        if _differs(table, _START + 1 + k):
            raise ValueError(
                f"{name} must be the same on every rank, got "
                f"{table[:, _START + 1 + k].tolist()} on ranks 0..{world - 1}"
            )
    if _differs(table, _CHUNK):
        given = ["None" if c < 0 else int(c) for c in table[:, _CHUNK].tolist()]
        raise ValueError(
            f"chunk_size must be the same on every rank (each chunk is one collective), got "
            f"{given} on ranks 0..{world - 1}"
        )
    starts = table[:, _START]
    if bool((starts < 0).any()) and not bool((starts < 0).all()):
        raise ValueError(
            f"vocab_start_index must be given on every rank or on none, got "
            f"{['None' if s < 0 else int(s) for s in starts.tolist()]} on ranks 0..{world - 1}"
        )
    total = int(table[:, _WIDTH].sum())
    outside = (table[:, _TMIN] < 0) | (table[:, _TMAX] >= total)
    if bool(outside.any()):
        r = int(outside.nonzero()[0, 0])
        lo, hi = int(table[r, _TMIN]), int(table[r, _TMAX])
        raise ValueError(
            f"target must hold class indices in [0, {total - 1}] "
            f"(or ignore_index={mine.ignore_index}), got {lo if lo < 0 else hi} on rank {r}"
        )
    if _differs(table, _TSUM) or _differs(table, _TDOT) or _differs(table, _TMAX):
        raise ValueError(
            "target must be identical on every rank (the targets are replicated), got "
            f"different targets on some of ranks 0..{world - 1}"
        )
    start = int(table[:rank, _WIDTH].sum()) if starts[0] < 0 else int(starts[rank])
    chunk = int(table[0, _CHUNK]) if table[0, _CHUNK] > 0 else int(table[:, _DEFAULT].min())
    return Layout(start, total, chunk or None)


def check_target(target: Any, batch_shape: torch.Size, source: str) -> torch.Tensor:
    """Class indices of any integer dtype of shape ``batch_shape``, returned flat as int64."""
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
    return v.check_index_dtype("target", target).reshape(-1)


def check_start(vocab_start_index: object, world: int) -> int | None:
    if vocab_start_index is not None:
        vocab_start_index = v.check_int("vocab_start_index", vocab_start_index, low=0)
        if world == 1 and vocab_start_index != 0:
            raise ValueError(
                f"vocab_start_index must be None or 0 at world size 1, got {vocab_start_index}"
            )
    return vocab_start_index


def class_index(
    flat: torch.Tensor, ignore_index: int, total: int, world: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat int64 class index, 0 on ignored rows; flat kept mask). At world size 1 the kept
    values are checked to lie in [0, V) where they can be read without a device sync (at
    larger world sizes :func:`agree` has checked them)."""
    kept = flat != ignore_index
    if world == 1 and checks_values(flat) and bool(kept.any()):
        lo, hi = int(flat[kept].min()), int(flat[kept].max())
        if lo < 0 or hi >= total:
            raise ValueError(
                f"target must hold class indices in [0, {total - 1}]"
                f" (or ignore_index={ignore_index}), got {lo if lo < 0 else hi}"
            )
    return torch.where(kept, flat, torch.zeros_like(flat)), kept
