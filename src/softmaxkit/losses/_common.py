"""What every class-dimension loss shares (private to ``softmaxkit.losses``).

* :func:`prepare` validates ``(logits, target)`` in the ``torch.nn.functional.cross_entropy``
  layout (classes on dim 1) and turns it into rows: a (rows, C) logits matrix and targets
  that are either class indices (rows,) or probabilities (rows, C), with ``ignore_index``
  and ``label_smoothing`` resolved.
* :func:`row_loss` evaluates a per-row loss ``fn`` block by block, never holding more
  than one block of temporaries, and computes its gradient block by block in backward
  (from an analytic ``grad_fn`` when the loss has one, else by re-running ``fn`` on the
  block under autograd). Peak memory is the gradient itself, a third of what
  ``cross_entropy`` needs.
* :func:`reduce` applies ``reduction`` the way ``cross_entropy`` does.

A loss defined for one class label, ``l(z, y)``, is extended to a probability target
``t`` as the expected loss ``sum_k t_k l(z, k)`` (for cross-entropy this is torch's soft
target cross-entropy); label smoothing ``eps`` turns an index ``y`` into the probability
target ``(1 - eps) e_y + eps / C``, exactly as ``cross_entropy`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit.functional._common import HALF_DTYPES, as_rows, maybe_any, row_blocks


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
        return self.index if self.index is not None else self.probs


def check_logits(name: str, logits: torch.Tensor) -> torch.Tensor:
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
    x2 = as_rows(logits, 1)
    if target.dtype.is_floating_point:
        if not probs:
            raise TypeError(
                f"target must hold class indices (an integer dtype) for this loss, "
                f"got {target.dtype}"
            )
        if target.shape != logits.shape:
            raise ValueError(
                f"target must hold class indices (an integer dtype) of shape "
                f"{tuple(logits.shape[:1] + logits.shape[2:])} or probabilities of the logits' "
                f"shape {tuple(logits.shape)}, got {target.dtype} of shape {tuple(target.shape)}"
            )
        v.check_tensor_values("target", target, low=0.0)
        sample_shape = logits.shape[:1] + logits.shape[2:]
        t2 = as_rows(target.detach(), 1)
        return Rows(x2, None, t2, float(label_smoothing), None, sample_shape)
    v.check_class_target(target, logits, 1, ignore_index)
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
    total = losses.sum()
    if reduction == "mean":
        total = total / (kept.sum().clamp(min=1) if kept is not None else max(losses.numel(), 1))
    return total.to(dtype)


def smoothed(index: torch.Tensor, smoothing: float, num_classes: int, dtype) -> torch.Tensor:
    """The dense probability target ``(1 - eps) e_y + eps / C`` of index targets."""
    out = torch.full(
        (index.shape[0], num_classes), smoothing / num_classes, dtype=dtype, device=index.device
    )
    return out.scatter_add_(1, index.unsqueeze(1), torch.full_like(out[:, :1], 1.0 - smoothing))


def _block_args(b: slice, inputs, target, extras, smoothing, dtype):
    zs = [x[b].to(dtype) for x in inputs]
    t = None if target is None else target[b]
    if t is not None and t.dtype.is_floating_point:
        t = t.to(dtype)
        if smoothing > 0:
            t = t * (1 - smoothing) + smoothing / t.shape[1]
    elif t is not None and smoothing > 0:
        t = smoothed(t, smoothing, inputs[0].shape[1], dtype)
    return zs, t, [e[b] for e in extras]


class _RowLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, grad_fn, dtype, smoothing, n_inputs, target, kept, *tensors):
        inputs, extras = tensors[:n_inputs], tensors[n_inputs:]
        rows, width = inputs[0].shape
        out = inputs[0].new_empty(rows, dtype=dtype)
        for b in row_blocks(rows, width * n_inputs):
            zs, t, ex = _block_args(b, inputs, target, extras, smoothing, dtype)
            out[b] = fn(*zs, t, *ex)
        if kept is not None:
            out.masked_fill_(~kept, 0.0)
        ctx.fn, ctx.grad_fn, ctx.dtype, ctx.smoothing = fn, grad_fn, dtype, smoothing
        ctx.n_inputs = n_inputs
        ctx.save_for_backward(target, kept, *tensors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        target, kept, *tensors = ctx.saved_tensors
        inputs, extras = tensors[: ctx.n_inputs], tensors[ctx.n_inputs :]
        wanted = [ctx.needs_input_grad[7 + i] for i in range(ctx.n_inputs)]
        grads = [torch.empty_like(x) if w else None for x, w in zip(inputs, wanted)]
        g = g.to(ctx.dtype)
        if kept is not None:
            g = g.masked_fill(~kept, 0.0)
        rows, width = inputs[0].shape
        for b in row_blocks(rows, width * ctx.n_inputs):
            zs, t, ex = _block_args(b, inputs, target, extras, ctx.smoothing, ctx.dtype)
            if ctx.grad_fn is not None:
                parts = ctx.grad_fn(*zs, t, *ex, g[b])
                parts = parts if isinstance(parts, tuple) else (parts,)
            else:
                with torch.enable_grad():
                    zs = [z.detach().requires_grad_(w) for z, w in zip(zs, wanted)]
                    loss = ctx.fn(*zs, t, *ex)
                    need = [z for z in zs if z.requires_grad]
                    found = iter(torch.autograd.grad(loss, need, g[b], allow_unused=True))
                parts = [next(found) if z.requires_grad else None for z in zs]
            for grad, part in zip(grads, parts):
                if grad is not None:
                    grad[b] = 0.0 if part is None else part
        if kept is not None and maybe_any(~kept):
            for grad in grads:
                if grad is not None:
                    grad.masked_fill_(~kept.unsqueeze(1), 0.0)
        return (None,) * 7 + tuple(grads) + (None,) * len(extras)


def row_loss(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor | None,
    *,
    kept: torch.Tensor | None = None,
    smoothing: float = 0.0,
    extras: Sequence[torch.Tensor] = (),
    grad_fn: Callable[..., torch.Tensor | tuple] | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-row loss ``fn(*zs, t, *extras)`` of (rows, C) ``inputs``, computed in row blocks.

    ``fn`` receives each input's block in ``dtype`` (default: float32 for half inputs,
    else the input dtype), the target block (indices (b,), or probabilities (b, C), or
    ``None``) and the blocks of the per-row ``extras`` (never differentiated), and returns
    the (b,) losses using differentiable torch ops. With ``smoothing > 0`` the target
    block reaches ``fn`` as smoothed probabilities, ``(1 - eps) t + eps / C`` (index
    targets as ``t = e_y``). Rows where ``kept`` is False give 0
    and zero gradient. ``grad_fn(*zs, t, *extras, g)``, when given, returns the gradient
    of ``sum(g * fn(...))`` with respect to each input (a tensor, or a tuple for several).
    """
    dtype = dtype or (torch.float32 if inputs[0].dtype in HALF_DTYPES else inputs[0].dtype)
    if inputs[0].shape[0] == 0 or inputs[0].shape[1] == 0:
        zero = sum((x.sum(-1) * 0 for x in inputs), inputs[0].new_zeros(inputs[0].shape[0]))
        return zero.to(dtype)
    return _RowLoss.apply(
        fn, grad_fn, dtype, float(smoothing), len(inputs), target, kept, *inputs, *extras
    )


class LossModule(nn.Module):
    """Base of the module twins of (logits, target) losses: validates and stores
    ``reduction``, ``ignore_index`` and ``label_smoothing`` once; ``options()`` gives them
    as keyword arguments for the functional."""

    def __init__(
        self, *, reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        v.check_loss_options(reduction, ignore_index, label_smoothing)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)

    def options(self) -> dict:
        return {
            "reduction": self.reduction,
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={val!r}" for k, val in self.options().items())
