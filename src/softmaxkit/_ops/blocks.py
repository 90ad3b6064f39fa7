"""The row/block walker, the one half-precision and compute-dtype policy, scratch buffers.

The half-precision policy, stated once for the whole package: float16 and bfloat16 are
computed in float32 and results are returned in the input dtype; float32 and float64
are computed in their own dtype. Where several tensors meet, the widest wins
(:func:`compute_dtype`).
"""

from __future__ import annotations

import math

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(*inputs: torch.Tensor | torch.dtype | None) -> torch.dtype:
    """The dtype to compute in: float64 if any input is float64, else float32 when any
    input is half or float32 (half types are computed in float32). ``None`` entries are
    skipped; with no floating input the answer is float32."""
    dtypes = [t if isinstance(t, torch.dtype) else t.dtype for t in inputs if t is not None]
    return torch.float64 if torch.float64 in dtypes else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its compute dtype (a no-op for float32/float64)."""
    return x.float() if x.dtype in HALF_DTYPES else x


def maybe_any(flags: torch.Tensor) -> bool:
    """Whether any flag may be set, read without a device synchronisation.

    On CPU in eager mode reading the answer is free, so it is exact; on an accelerator
    or under ``torch.compile`` it answers True (the caller then does the full work).
    """
    if flags.device.type == "cpu" and not torch.compiler.is_compiling():
        return bool(flags.any())
    return True


def fill_where(y: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    """``y.masked_fill_(where, value)`` for a broadcastable boolean ``where``, skipping
    the full pass over ``y`` when nothing is set (see :func:`maybe_any`)."""
    if maybe_any(where):
        y.masked_fill_(where, value)
    return y


def out_of_range(total: torch.Tensor) -> torch.Tensor:
    """Where a row total of non-negative terms (a sum of squares, of StableMax terms) is
    inf or NaN (its terms overflowed) or below ``tiny / eps`` of its dtype (its terms
    underflowed, or lost their precision as subnormals). Such rows are recomputed from
    terms scaled by a per-row factor (the scale-before-square rule); every other row keeps
    the plain computation, so a check of this (rows, 1) tensor is the whole cost of the
    rule at ordinary magnitudes."""
    info = torch.finfo(total.dtype)
    return ~(total <= info.max) | (total < info.tiny / info.eps)


def row_scale(
    x: torch.Tensor, dim: int, where: torch.Tensor, floor: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Per-row scale factors (keepdim, no gradient): ``max(max_k |x_k|, floor)`` on the rows
    ``where`` is set and 1 elsewhere (also where that maximum is 0, inf or NaN), so dividing
    by it leaves the other rows exactly as they were and maps the flagged ones into
    [-1, 1] (:func:`out_of_range`)."""
    c = torch.linalg.vector_norm(x.detach(), ord=math.inf, dim=dim, keepdim=True)
    c = c.clamp_min(floor) if not isinstance(floor, torch.Tensor) else torch.maximum(c, floor)
    usable = where & (c > 0) & (c < math.inf)
    return torch.where(usable, c, torch.ones_like(c))


#: elements per block of the blocked kernels: 4 MiB of float32, so a block's
#: temporaries stay in the last-level cache and peak memory stays at the output's size.
BLOCK_ELEMENTS = 1 << 20


def row_blocks(rows: int, row_length: int, elements: int = BLOCK_ELEMENTS) -> list[slice]:
    """Slices of whole rows covering ``rows`` rows, about ``elements`` entries each."""
    if torch.compiler.is_compiling():
        # under torch.compile one block: the compiler fuses the block's work and plans its
        # own memory (an unrolled loop of slices would only lengthen the graph)
        return [slice(0, rows)]
    step = max(1, elements // max(row_length, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def as_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` with ``dim`` moved last, flattened to contiguous (rows, size of dim).

    A view when ``dim`` is already the last axis of a contiguous tensor, else a copy.
    """
    if t.ndim == 0:
        return t.reshape(1, 1)
    # a list, not a generator: dynamo cannot pass a generator to math.prod (graph break)
    rows = math.prod([size for axis, size in enumerate(t.shape) if axis != dim])
    return t.movedim(dim, -1).contiguous().view(rows, t.shape[dim])


def from_rows(rows: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`as_rows` for a tensor shaped like ``like``."""
    if like.ndim == 0:
        return rows.reshape(())
    return rows.view(like.movedim(dim, -1).shape).movedim(-1, dim)


def workspace(x2: torch.Tensor, dtype: torch.dtype, count: int) -> list[torch.Tensor]:
    """``count`` scratch buffers of one row block of the 2-D ``x2``, reused block after block.

    Fresh temporaries per block would be returned to the OS and page-faulted in again on
    every block; reusing these keeps the blocked kernels' working set in cache.
    """
    rows = min(x2.shape[0], max(1, BLOCK_ELEMENTS // max(x2.shape[1], 1)))
    if torch.compiler.is_compiling():  # one block of all rows (see row_blocks)
        rows = x2.shape[0]
    return [torch.empty(rows, x2.shape[1], dtype=dtype, device=x2.device) for _ in range(count)]


def in_dtype(src: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """``src`` if it already has ``buffer``'s dtype, else ``src`` copied into ``buffer``."""
    return src if src.dtype == buffer.dtype else buffer.copy_(src)


def block_target(dst: torch.Tensor, dtype: torch.dtype, fallback: torch.Tensor) -> torch.Tensor:
    """Where a block result computed in ``dtype`` goes: ``dst`` itself when it has that
    dtype (no copy), else the scratch ``fallback`` (then :func:`store` copies it)."""
    return dst if dst.dtype == dtype else fallback


def store(dst: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into ``dst`` unless it was computed there already (under
    ``torch.compile``, which cannot compare data pointers, always: the compiler removes
    the copy of a tensor onto itself)."""
    if torch.compiler.is_compiling() or value.data_ptr() != dst.data_ptr():
        dst.copy_(value)


def unit_open_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """The neighbours of 0 below and of 1 above in ``dtype``: ``lo < u < hi`` iff
    ``0 <= u <= 1``, so the fused ``hardtanh_backward`` (exclusive bounds) passes a clip's
    gradient inclusively at 0 and 1 as ``torch.clamp`` does. From ``finfo`` alone (no tensor,
    so dynamo folds it): the smallest subnormal is ``tiny * eps``, the spacing above 1 ``eps``."""
    info = torch.finfo(dtype)
    return -info.tiny * info.eps, 1.0 + info.eps
