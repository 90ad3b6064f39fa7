"""Two-pass softmax (Dukhan & Ablavatski 2020) and the normalisation engine behind
:func:`softmaxkit.softmax` / :func:`softmaxkit.log_softmax`.

The engine computes softmax or log-softmax along one axis with the library's
conventions (a row whose entries are all ``-inf`` gives zeros, or ``-inf`` for the log
map, with zero gradient) and, for rows long enough to be split, the two-pass
algorithm: each chunk of a row reduces to a (max, sum of exp) pair, the pairs of a row
merge associatively, and a second pass writes the outputs. ``torch.softmax`` works on
a row with one thread; splitting a single huge row into chunks lets every core work
on it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, fill_where, from_rows, maybe_any, upcast

#: default chunk length: 64 KiB of float32 per chunk, so a chunk stays in L2 while
#: torch's fused row kernel makes its internal passes over it.
DEFAULT_CHUNK = 1 << 14
#: ``softmax`` switches to the two-pass path for rows at least this long when there
#: are fewer rows than threads. Measured on 2 cores, one float32 row, ours / torch:
#: 2^17: 1.97, 2^20: 0.8-1.3, 2^22: 0.84-1.34, 2^23: 0.61, 2^25: 0.65, 2^26: 0.58.
AUTO_MIN_ROW = 1 << 23


def _torch_normalize(z: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    return torch.log_softmax(z, dim) if log else torch.softmax(z, dim)


def safe_normalize(
    z: torch.Tensor, dim: int, log: bool, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's fused softmax / log-softmax with all ``-inf`` rows set to 0 / ``-inf``.

    torch returns NaN rows there; a NaN in the first column is the only possible sign
    of one, so the full dead-row test runs only when that column holds a NaN (always
    on accelerators, see :func:`maybe_any`). Writes into ``out`` when given (a
    contiguous tensor shaped like ``z``). Returns the output and the (keepdim) dead-row
    flags, or None when no test ran.
    """
    if out is None:
        y = _torch_normalize(z, dim, log)
    else:
        y = (torch.ops.aten._log_softmax.out if log else torch.ops.aten._softmax.out)(
            z, dim, False, out=out
        )
    if not maybe_any(y.narrow(dim, 0, 1).isnan()):
        return y, None
    dead = z.amax(dim, keepdim=True) == -math.inf
    return y.masked_fill_(dead, -math.inf if log else 0.0), dead


def _chunked_normalize(z: torch.Tensor, chunk: int, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-pass softmax of each row of a contiguous 2-D ``z`` (rows x n), chunk by chunk.

    Pass 1 runs torch's fused row kernel on every chunk (in parallel over chunks),
    which leaves ``exp(z - m_c) / s_c`` in the output; the chunk's pair (m_c, s_c) is
    read back from the chunk max of the input and of that output (the output's max is
    ``1 / s_c``, or ``-log s_c`` for the log map). The pairs merge per row; pass 2
    rescales each chunk in place by ``s_c exp(m_c - M) / S``.

    Returns the output and a (rows, 1) flag of rows whose entries are all ``-inf``.
    """
    rows, n = z.shape
    full, tail = divmod(n, chunk)
    out = torch.empty_like(z)
    spans = []  # (input view, output view) of shape (rows, chunks, length)
    if full:
        spans.append(
            (
                z[:, : full * chunk].view(rows, full, chunk),
                out[:, : full * chunk].view(rows, full, chunk),
            )
        )
    if tail:
        spans.append((z[:, full * chunk :].unsqueeze(1), out[:, full * chunk :].unsqueeze(1)))
    op = torch.ops.aten._log_softmax.out if log else torch.ops.aten._softmax.out
    maxima, tops = [], []
    for zs, ys in spans:
        maxima.append(zs.amax(-1, keepdim=True))
        if ys.is_contiguous():  # always so for a single row: written in place
            op(zs, -1, False, out=ys)
        else:  # several rows with a tail: the chunk views are strided
            ys.copy_(_torch_normalize(zs, -1, log))
        tops.append(ys.amax(-1, keepdim=True))
    m = torch.cat(maxima, 1)  # (rows, chunks, 1)
    dead = m == -math.inf  # chunks whose entries are all -inf: their output is NaN
    top = torch.cat(tops, 1).masked_fill_(dead, 1.0 if not log else 0.0)
    shift = m - m.amax(1, keepdim=True)  # m_c - M, <= 0
    if log:
        log_s = shift - top  # log(s_c exp(m_c - M)), since top = -log s_c
        scale = log_s - torch.logsumexp(log_s, 1, keepdim=True)
    else:
        w = shift.exp_().div_(top)  # s_c exp(m_c - M), since top = 1 / s_c
        scale = w / w.sum(1, keepdim=True)
    start = 0
    fill = -math.inf if log else 0.0
    for _, ys in spans:
        stop = start + ys.shape[1]
        (ys.add_ if log else ys.mul_)(scale[:, start:stop])
        fill_where(ys, dead[:, start:stop], fill)
        start = stop
    return out, dead.all(1)


class _Normalize(torch.autograd.Function):
    """softmax / log-softmax of ``z`` along ``dim`` with safe all ``-inf`` rows.

    ``chunk`` None uses torch's row kernel; an int uses the two-pass chunked path.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, dim: int, log: bool, chunk: int | None) -> torch.Tensor:
        if chunk is None:
            y, dead = safe_normalize(z, dim, log)
        else:
            y, dead_rows = _chunked_normalize(as_rows(z, dim), chunk, log)
            y = from_rows(y, z, dim)
            dead = from_rows(dead_rows, z.narrow(dim, 0, 1), dim) if log else None
        ctx.dim, ctx.log, ctx.chunk = dim, log, chunk
        ctx.save_for_backward(y, dead)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        y, dead = ctx.saved_tensors
        dim, log = ctx.dim, ctx.log
        if ctx.chunk is None:
            if log:
                grad = torch._log_softmax_backward_data(g, y, dim, y.dtype)
            else:
                grad = torch._softmax_backward_data(g, y, dim, y.dtype)
        elif log:  # g - exp(y) * sum(g), with the row sums reduced in parallel
            grad = torch.exp(y).mul_(g.sum(dim, keepdim=True).neg_()).add_(g)
        else:  # y * (g - <g, y>); the row dot products as a (BLAS) matrix product,
            # which reads g and y once and allocates nothing of their size
            rows_g, rows_y = g.movedim(dim, -1).unsqueeze(-2), y.movedim(dim, -1).unsqueeze(-1)
            dot = torch.matmul(rows_g, rows_y).squeeze(-1).movedim(-1, dim)
            grad = torch.sub(g, dot).mul_(y)
        if dead is not None:  # a dead row of the log map has y = -inf: no gradient
            grad = grad.masked_fill(dead, 0.0)
        return grad, None, None, None


def normalize(z: torch.Tensor, dim: int, log: bool, chunk: int | None) -> torch.Tensor:
    """Engine entry for already validated, upcast input ``z`` and a non-negative ``dim``."""
    if z.ndim == 0:
        return normalize(z.reshape(1), 0, log, chunk).reshape(())
    if z.shape[dim] == 0 or z.numel() == 0:
        return _torch_normalize(z, dim, log)
    if chunk is not None and chunk >= z.shape[dim]:
        chunk = None
    # torch leaves Function.apply unannotated
    out: torch.Tensor = _Normalize.apply(z, dim, log, chunk)  # type: ignore[no-untyped-call]
    return out


def _few_rows(z: torch.Tensor, dim: int) -> bool:
    """Fewer rows along ``dim`` than threads: torch's one-thread-per-row kernel idles cores."""
    rows = z.numel() // max(z.shape[dim], 1) if z.ndim else 1
    return rows < torch.get_num_threads()


def auto_chunk(z: torch.Tensor, dim: int) -> int | None:
    """The chunk length ``softmax`` uses: two-pass only for few, long rows along the last axis."""
    if z.ndim == 0 or dim != z.ndim - 1 or not z.is_contiguous():
        return None
    if z.shape[dim] >= AUTO_MIN_ROW and _few_rows(z, dim):
        return DEFAULT_CHUNK
    return None


def _two_pass(x: torch.Tensor, dim: int, chunk_size: int | None, log: bool) -> torch.Tensor:
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    if chunk_size is not None:
        v.check_int("chunk_size", chunk_size, low=1)
    z = upcast(x)
    if chunk_size is None:
        # one chunk per row when there are enough rows to keep every thread busy
        # (the algorithm then reduces to torch's fused row kernel)
        chunk_size = DEFAULT_CHUNK if _few_rows(x, dim) else None
    return normalize(z, dim, log, chunk_size).to(x.dtype)


@backend_op
def two_pass_softmax(
    x: torch.Tensor, dim: int = -1, *, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Softmax along ``dim`` by the two-pass algorithm, parallel within a row.

    Each row is cut into chunks of ``chunk_size`` entries. Pass 1 reduces every chunk
    :math:`c` to a pair :math:`(m_c, s_c)` with :math:`m_c = \max_{i \in c} x_i` and
    :math:`s_c = \sum_{i \in c} e^{x_i - m_c}`; pairs merge associatively,
    :math:`(m_a, s_a) \oplus (m_b, s_b) = (m, s_a e^{m_a - m} + s_b e^{m_b - m})` with
    :math:`m = \max(m_a, m_b)`. Pass 2 writes :math:`e^{x_i - M} / S` for the row's
    merged pair :math:`(M, S)`. Chunks are processed in parallel, so a single huge row
    uses every core, where ``torch.softmax`` gives a row one thread.

    Paper: M. Dukhan, A. Ablavatski, "The Two-Pass Softmax Algorithm", 2020,
    arXiv:2001.04438. The paper keeps the sum in an extended-exponent (mantissa,
    exponent) form to skip the max; here each chunk's pass runs torch's fused row kernel
    (max, exp-sum and write in cache), which makes the running max free.

    Args:
        x: input of any shape, float16/bfloat16 (computed in float32, returned in the
            input dtype), float32 or float64.
        dim: the axis to normalise.
        chunk_size: entries per chunk. ``None`` picks 16384 when there are fewer rows
            than threads (``torch.get_num_threads()``), and otherwise one chunk per row,
            where the algorithm is torch's fused row kernel.

    Returns:
        A tensor like ``x``. A row whose entries are all ``-inf`` gives zeros and zero
        gradient, never NaN. The gradient is the softmax Jacobian-vector product, with
        the row's dot product reduced in parallel too.

    Example:
        >>> import torch
        >>> from softmaxkit import two_pass_softmax
        >>> x = torch.randn(1 << 20)
        >>> torch.allclose(two_pass_softmax(x), torch.softmax(x, 0), rtol=1e-5, atol=1e-12)
        True
    """
    return _two_pass(x, dim, chunk_size, log=False)


@backend_op
def two_pass_log_softmax(
    x: torch.Tensor, dim: int = -1, *, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Log-softmax along ``dim`` by the two-pass algorithm, parallel within a row.

    As :func:`two_pass_softmax`; pass 2 adds :math:`-(M + \log S)` (computed as the
    chunk's own log-normaliser plus a per-chunk correction, so no large offset is
    subtracted from small log-probabilities). A row whose entries are all ``-inf``
    gives ``-inf`` and zero gradient.

    Paper: M. Dukhan, A. Ablavatski, "The Two-Pass Softmax Algorithm", 2020,
    arXiv:2001.04438.

    Example:
        >>> import torch
        >>> from softmaxkit import two_pass_log_softmax
        >>> x = torch.randn(1 << 20)
        >>> torch.allclose(two_pass_log_softmax(x), torch.log_softmax(x, 0), atol=1e-5)
        True
    """
    return _two_pass(x, dim, chunk_size, log=True)
