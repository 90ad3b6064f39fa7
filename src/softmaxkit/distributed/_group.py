"""Process-group plumbing shared by the vocab-parallel losses (private to ``distributed``).

Resolving the group, the vocabulary layout of the ranks' slices (offset and global size),
and the target checks and class-index builder, identical for every vocab-parallel loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from softmaxkit import _validation as v


def checks_values(t: torch.Tensor) -> bool:
    """Whether tensor values may be read (CPU, outside ``torch.compile``): no device sync."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def resolve_group(group: Any) -> tuple[Any, int, int]:
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


def vocab_layout(
    width: int,
    rows: int,
    device: torch.device,
    ranks: tuple[Any, int, int],
    vocab_start_index: Any,
    *,
    need_total: bool,
) -> tuple[int, int | None]:
    """(vocab_start_index, global vocabulary size or None when unknown and not needed)."""
    group, world, rank = ranks  # resolve_group's answer
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
        mine = torch.tensor([width, rows], dtype=torch.int64, device=device)
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
    total = torch.tensor([width], dtype=torch.int64, device=device)
    dist.all_reduce(total, group=group)
    return vocab_start_index, int(total.item())


def check_target(target: Any, batch_shape: torch.Size, source: str) -> None:
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


def class_index(
    target: torch.Tensor, ignore_index: int, total: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat int64 class index, 0 on ignored rows; flat kept mask), the kept values checked
    to lie in [0, V) where they can be read without a device sync."""
    flat = target.reshape(-1)
    kept = flat != ignore_index
    if checks_values(flat) and bool(kept.any()):
        lo, hi = int(flat[kept].min()), int(flat[kept].max())
        if lo < 0 or (total is not None and hi >= total):
            raise ValueError(
                f"target must hold class indices in [0, {'V - 1' if total is None else total - 1}]"
                f" (or ignore_index={ignore_index}), got {lo if lo < 0 else hi}"
            )
    return torch.where(kept, flat, torch.zeros_like(flat)).to(torch.int64), kept
