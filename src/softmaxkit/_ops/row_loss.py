"""The row-loss contract and what every class-dimension loss shares.

* :class:`RowLoss` declares a loss as the value (and optionally the gradient) of one
  block of rows.
* :func:`class_loss` is the one entry point of a (logits, target) loss: it validates the
  pair in the ``torch.nn.functional.cross_entropy`` layout (:func:`prepare`: classes on
  dim 1, class indices (rows,) or probabilities (rows, C), ``ignore_index`` and
  ``label_smoothing`` resolved), evaluates the loss block by block (:func:`row_loss`,
  never more than one block of temporaries; backward block by block from the analytic
  gradient or autograd on the block, so peak memory is the gradient itself, a third of
  what ``cross_entropy`` needs) and applies ``reduction`` as ``cross_entropy`` does
  (:func:`reduce`).
* :class:`LossModule` is the base of every loss's module twin.

A loss defined for one class label, ``l(z, y)``, is extended to a probability target
``t`` as the expected loss ``sum_k t_k l(z, k)`` (for cross-entropy this is torch's soft
target cross-entropy); label smoothing ``eps`` turns an index ``y`` into the probability
target ``(1 - eps) e_y + eps / C``, exactly as ``cross_entropy`` does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops import dtensor
from softmaxkit._ops.blocks import as_rows, compute_dtype, maybe_any, row_blocks, workspace


@dataclass
class Rows:
    """A loss's inputs as rows.

    ``index`` holds class indices (ignored rows set to 0) when the targets were indices,
    ``probs`` the (rows, C) probability targets when they were probabilities; exactly one
    is set. ``smoothing`` is the label smoothing still to apply (block by block, in
    :func:`row_loss`). ``kept`` marks the rows that count
    (``None``: all do). ``shape`` is the per-sample shape of ``reduction="none"``.
    """

    logits: torch.Tensor
    index: torch.Tensor | None
    probs: torch.Tensor | None
    smoothing: float
    kept: torch.Tensor | None
    shape: torch.Size

    @property
    def target(self) -> torch.Tensor:
        if self.index is not None:
            return self.index
        assert self.probs is not None  # exactly one of index, probs is set
        return self.probs


def check_logits(name: str, logits: torch.Tensor) -> torch.Tensor:
    dtensor.refuse(name, logits, dtensor.LOGITS_FIX)  # before DTensor's mixed-tensor error
    v.check_floating(name, logits)
    if logits.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}"
        )
    return logits


def prepare(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    probs: bool = True,
    name: str = "logits",
) -> Rows:
    """Validate a (logits, target) pair in ``cross_entropy``'s layout and return its rows.

    ``target`` is class indices of shape (N, d1, ...) or, when ``probs`` allows it,
    probabilities with the logits' shape (any floating dtype; entries must be >= 0).
    """
    check_logits(name, logits)
    v.check_int("ignore_index", ignore_index)
    v.check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    v.check_tensor("target", target)
    dtensor.refuse("target", target)
    x2 = as_rows(logits, 1)
    sample_shape = logits.shape[:1] + logits.shape[2:]
    # a floating target of the index shape (or where probabilities are not allowed) is
    # class indices of a wrong dtype: check_class_target's TypeError below
    if target.dtype.is_floating_point and probs and target.shape != sample_shape:
        if target.shape != logits.shape:
            raise ValueError(
                f"target must hold class indices (an integer dtype) of shape "
                f"{tuple(sample_shape)} or probabilities of the logits' "
                f"shape {tuple(logits.shape)}, got {target.dtype} of shape {tuple(target.shape)}"
            )
        v.check_tensor_values("target", target, low=0.0)
        t2 = as_rows(target.detach(), 1)
        return Rows(x2, None, t2, float(label_smoothing), None, sample_shape)
    target = v.check_class_target(target, logits, 1, ignore_index)  # int64, any int dtype in
    flat = target.reshape(-1)
    kept = flat != ignore_index
    index = torch.where(kept, flat, 0) if maybe_any(~kept) else flat
    return Rows(x2, index, None, float(label_smoothing), kept, target.shape)


def reduce(
    losses: torch.Tensor, rows: Rows | Sequence[int], reduction: str, dtype: torch.dtype
) -> torch.Tensor:
    """``reduction`` of per-row ``losses`` as ``cross_entropy`` does it: "mean" divides by
    the number of kept rows (0, not NaN, when none is kept or there are no rows), "none"
    has the per-sample shape. ``rows`` is the :class:`Rows` of the loss, or the per-sample
    shape of a loss without ignored rows."""
    shape, kept = (rows.shape, rows.kept) if isinstance(rows, Rows) else (tuple(rows), None)
    if reduction == "none":
        return losses.reshape(shape).to(dtype)
    if reduction == "sum":
        return losses.sum().to(dtype)
    # divide, then sum: finite wherever the mean is (the sum of per-row losses near the
    # dtype's maximum overflows); an (N,) vector, so no measurable cost
    count = kept.sum().clamp(min=1) if kept is not None else max(losses.numel(), 1)
    return (losses / count).sum().to(dtype)


def smoothed(
    index: torch.Tensor, smoothing: float, num_classes: int, dtype: torch.dtype
) -> torch.Tensor:
    """The dense probability target ``(1 - eps) e_y + eps / C`` of index targets."""
    out = torch.full(
        (index.shape[0], num_classes), smoothing / num_classes, dtype=dtype, device=index.device
    )
    return out.scatter_add_(1, index.unsqueeze(1), torch.full_like(out[:, :1], 1.0 - smoothing))


class RowLoss(ABC):
    """The row-loss contract: the value, and optionally the gradient, of one block of rows.

    A loss on (rows, C) inputs is written as a subclass (hyperparameters as attributes,
    set in ``__init__``) with two hooks, in the manner of entmax's
    ``_GenericLossFunction``; the engine (:func:`row_loss`, :func:`class_loss`) owns
    everything else: row blocks, the compute dtype, ignored rows, label smoothing, the
    reduction and the autograd plumbing.

    * ``value(*zs, t, *extras)``: the (b,) losses of one block. ``zs`` are the blocks of
      the differentiable inputs in the compute dtype, ``t`` the target block (class
      indices (b,), probabilities (b, C), or ``None``), ``extras`` the blocks of per-row
      tensors that are never differentiated. Plain differentiable torch ops.
    * ``grad(*zs, t, *extras, g)``: the gradient of ``sum(g * value(...))`` with respect
      to each input (a tensor, or a tuple with one entry, possibly ``None``, per input).
      The default returns ``None``: the engine then differentiates ``value`` on the block
      with autograd. An analytic ``grad`` may also return ``None`` for a block it cannot
      handle (for example non-finite logits), and autograd takes over for that block.
    """

    # (*args: Any, **kwargs: Any): each subclass fixes its own arity (inputs, target,
    # extras, g), so the hooks accept any signature an override declares
    @abstractmethod
    def value(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The (b,) losses of one block (see the class docstring)."""

    def grad(
        self, *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor | None, ...] | None:
        return None


class BufferedRowLoss(RowLoss):
    """A row loss that writes its temporaries into ``buffers`` block buffers
    (:func:`softmaxkit._ops.blocks.workspace`), allocated on the first block that asks for
    them and reused by every later block of forward and backward: the scratch-buffer
    mechanism of the losses with hand-written kernels (divergences, NKD, LDR-KL). Build
    one instance per call: the buffers live as long as the call's autograd graph."""

    #: how many block buffers the kernels use
    buffers = 0
    work: Sequence[torch.Tensor] = ()

    def block_work(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The buffers of ``z``'s block: the first ``len(z)`` rows of each."""
        n = z.shape[0]
        if not self.work or self.work[0].shape[0] < n:
            self.work = workspace(z, z.dtype, self.buffers)
        return [w[:n] for w in self.work]


@dataclass(frozen=True)
class _EngineOptions:
    dtype: torch.dtype
    smoothing: float
    inputs: int  # how many leading tensors are differentiable (rows, C) inputs


def _block_args(
    b: slice,
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor | None,
    extras: Sequence[torch.Tensor],
    o: _EngineOptions,
) -> tuple[list[torch.Tensor], torch.Tensor | None, list[torch.Tensor]]:
    zs = [x[b].to(o.dtype) for x in inputs]
    t = None if target is None else target[b]
    if t is not None and t.dtype.is_floating_point:
        t = t.to(o.dtype)
        if o.smoothing > 0:
            t = t * (1 - o.smoothing) + o.smoothing / t.shape[1]
    elif t is not None and o.smoothing > 0:
        t = smoothed(t, o.smoothing, inputs[0].shape[1], o.dtype)
    return zs, t, [e[b] for e in extras]


def _autograd_block(
    loss: RowLoss,
    zs: list[torch.Tensor],
    t: torch.Tensor | None,
    ex: list[torch.Tensor],
    g: torch.Tensor,
    wanted: Sequence[bool],
) -> list[torch.Tensor | None]:
    with torch.enable_grad():
        zs = [z.detach().requires_grad_(w) for z, w in zip(zs, wanted)]
        out = loss.value(*zs, t, *ex)
        need = [z for z in zs if z.requires_grad]
        found = iter(torch.autograd.grad(out, need, g, allow_unused=True))
    return [next(found) if z.requires_grad else None for z in zs]


# _RowLoss.forward(ctx, loss, options, target, kept, *inputs, *extras): the gradients of the
# inputs sit after these four leading arguments in needs_input_grad and in backward (a
# module constant: dynamo cannot read a class attribute of an autograd.Function in backward)
_LEADING = 4


class _RowLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        loss: RowLoss,
        o: _EngineOptions,
        target: torch.Tensor | None,
        kept: torch.Tensor | None,
        *tensors: torch.Tensor,
    ) -> torch.Tensor:
        inputs, extras = tensors[: o.inputs], tensors[o.inputs :]
        rows, width = inputs[0].shape
        out = inputs[0].new_empty(rows, dtype=o.dtype)
        for b in row_blocks(rows, width * o.inputs):
            zs, t, ex = _block_args(b, inputs, target, extras, o)
            out[b] = loss.value(*zs, t, *ex)
        if kept is not None:
            out.masked_fill_(~kept, 0.0)
        ctx.loss, ctx.o = loss, o
        ctx.save_for_backward(target, kept, *tensors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        o: _EngineOptions = ctx.o
        target, kept, *tensors = ctx.saved_tensors
        inputs, extras = tensors[: o.inputs], tensors[o.inputs :]
        wanted = ctx.needs_input_grad[_LEADING : _LEADING + o.inputs]
        grads = [torch.empty_like(x) if w else None for x, w in zip(inputs, wanted)]
        g = g.to(o.dtype)
        if kept is not None:
            g = g.masked_fill(~kept, 0.0)
        rows, width = inputs[0].shape
        for b in row_blocks(rows, width * o.inputs):
            zs, t, ex = _block_args(b, inputs, target, extras, o)
            parts = ctx.loss.grad(*zs, t, *ex, g[b])
            if parts is None:
                parts = _autograd_block(ctx.loss, zs, t, ex, g[b], wanted)
            elif not isinstance(parts, tuple):
                parts = (parts,)
            for grad, part in zip(grads, parts):
                if grad is not None:
                    grad[b] = 0.0 if part is None else part
        if kept is not None and maybe_any(~kept):
            for grad in grads:
                if grad is not None:
                    grad.masked_fill_(~kept.unsqueeze(1), 0.0)
        return (None,) * _LEADING + tuple(grads) + (None,) * len(extras)


def _traced_row_loss(
    loss: RowLoss,
    o: _EngineOptions,
    target: torch.Tensor | None,
    kept: torch.Tensor | None,
    inputs: Sequence[torch.Tensor],
    extras: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The compile path of :func:`row_loss` for a loss without an analytic ``grad``:
    ``loss.value`` on all rows, differentiated by autograd in the graph, as
    :class:`_RowLoss` differentiates it block by block in eager mode (its backward's
    ``torch.autograd.grad`` is what dynamo cannot trace). A loss with an analytic ``grad``
    runs :class:`_RowLoss` itself under ``torch.compile``, as one block (see
    :func:`softmaxkit._ops.blocks.row_blocks`). Ignored rows give 0 and zero gradient."""
    zs, t, ex = _block_args(slice(None), inputs, target, extras, o)
    out = loss.value(*zs, t, *ex)
    return out if kept is None else out.masked_fill(~kept, 0.0)


def row_loss(
    loss: RowLoss,
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor | None,
    *,
    kept: torch.Tensor | None = None,
    smoothing: float = 0.0,
    extras: Sequence[torch.Tensor] = (),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-row values of ``loss`` (a :class:`RowLoss`) on (rows, C) ``inputs``, in row blocks.

    Each block reaches ``loss.value`` in ``dtype`` (default: :func:`compute_dtype` of the
    first input); with ``smoothing > 0`` the target block arrives as smoothed
    probabilities ``(1 - eps) t + eps / C`` (index targets as ``t = e_y``). Rows where
    ``kept`` is False give 0 and zero gradient. Backward runs block by block too, from
    ``loss.grad`` or, where it returns ``None``, from autograd on ``loss.value``; peak
    memory is the gradient itself.
    """
    dtype = dtype or compute_dtype(inputs[0])
    if inputs[0].shape[0] == 0 or inputs[0].shape[1] == 0:
        zero = sum((x.sum(-1) * 0 for x in inputs), inputs[0].new_zeros(inputs[0].shape[0]))
        return zero.to(dtype)
    o = _EngineOptions(dtype, float(smoothing), len(inputs))
    if torch.compiler.is_compiling() and type(loss).grad is RowLoss.grad:
        return _traced_row_loss(loss, o, target, kept, inputs, extras)
    # torch leaves Function.apply unannotated
    out: torch.Tensor = _RowLoss.apply(loss, o, target, kept, *inputs, *extras)  # type: ignore[no-untyped-call]
    return out


def class_loss(
    loss: RowLoss,
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    probs: bool = True,
    dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The one entry point of a (logits, target) loss in ``cross_entropy``'s layout.

    Validates the pair and the options (:func:`prepare`), evaluates ``loss`` row block by
    row block (:func:`row_loss`; ``dtype`` is the compute dtype) and applies
    ``reduction`` as ``cross_entropy`` does (:func:`reduce`), returning ``out_dtype``
    (default: the logits' dtype). ``probs=False`` rejects probability targets.
    """
    v.check_reduction(reduction)
    rows = prepare(
        logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing, probs=probs
    )
    losses = row_loss(
        loss, [rows.logits], rows.target, kept=rows.kept, smoothing=rows.smoothing, dtype=dtype
    )
    return reduce(losses, rows, reduction, out_dtype or logits.dtype)


class LossModule(nn.Module):
    """Base of every loss's module twin: validates and stores the shared options once.

    ``shared_options`` names the options of ``cross_entropy`` this loss takes, a subset of
    ``("reduction", "ignore_index", "label_smoothing")`` (a subclass narrows it, e.g. to
    ``("reduction",)`` for a loss between two logit tensors); only those are checked,
    stored as attributes and returned by ``options()`` as keyword arguments for the
    functional. A subclass stores its own hyperparameters after ``super().__init__`` and
    lists them in ``extra_repr`` through ``hyperparameters()``.
    """

    shared_options: tuple[str, ...] = ("reduction", "ignore_index", "label_smoothing")
    # set by __init__ for the names in shared_options only
    reduction: str
    ignore_index: int
    label_smoothing: float

    def __init__(
        self, *, reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        given = {
            "reduction": reduction,
            "ignore_index": ignore_index,
            "label_smoothing": label_smoothing,
        }
        for name in self.shared_options:
            setattr(self, name, _OPTION_CHECKS[name](given[name]))

    def options(self) -> dict[str, Any]:
        """The shared options as keyword arguments of the functional."""
        return {name: getattr(self, name) for name in self.shared_options}

    def hyperparameters(self) -> dict[str, Any]:
        """The loss's own hyperparameters shown by ``repr`` (none by default)."""
        return {}

    def extra_repr(self) -> str:
        shown = {**self.hyperparameters(), **self.options()}
        return ", ".join(f"{k}={val!r}" for k, val in shown.items())


_OPTION_CHECKS: dict[str, Callable[[Any], object]] = {
    "reduction": v.check_reduction,
    "ignore_index": lambda value: v.check_int("ignore_index", value),
    "label_smoothing": lambda value: float(
        v.check_number("label_smoothing", value, low=0.0, high=1.0)
    ),
}
