"""Fused, chunked linear + cross-entropy that never builds the N x V logits.

The output layer of a language model computes ``logits = input @ linear_weight.T + bias``
and then ``cross_entropy(logits, target)``. With V in the 10^5 range the (N, V) logits and
their gradient dominate memory. :func:`linear_cross_entropy` walks over the rows in chunks
of ``chunk_size`` rows; for each chunk it computes the chunk's logits in float32 (float64
for float64 inputs), its per-row log-sum-exp and loss and, for ``reduction="mean"`` or
``"sum"``, the logit gradient ``G`` of the chunk, which it folds at once into
``grad_input[chunk] = G @ W``, ``grad_W += G^T @ input[chunk]`` and ``grad_b += sum_rows G``
(the fused-in-forward scheme of Liger-Kernel, Hsu et al. 2024, arXiv:2410.10989; the same
goal as Cut Cross-Entropy, Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary
Language Models", arXiv:2411.09009). Backward then only scales the stored gradients by
the upstream scalar. For ``reduction="none"`` the upstream gradient is per row, so forward
keeps only the inputs, and backward recomputes the logits chunk by chunk (exact, one
extra matmul per chunk).

Chunks run over rows only (each chunk sees the whole vocabulary). Peak memory above the
inputs is one chunk's logits plus at most one temporary of that size (two with softcap,
three with probability targets; see :func:`default_chunk_size`), plus the gradients.
Half inputs (float16/bfloat16): the three matmuls of a chunk run in the input dtype on
CUDA (float32 accumulation and float32 results, ``out_dtype``); elsewhere (torch's CPU
half matmul rounds its result and, without AVX512-BF16/AMX, is several times slower than
float32) the weight is upcast 4 MiB at a time and the matmuls run in float32. The
log-sum-exp, loss and logit gradient are float32 either way, ``grad_W`` is accumulated in
float32 (4 bytes per weight entry, in 32 MiB blocks, no float32 copy of the weight) and
rounded once to the weight's dtype, after the upstream scale, in backward. No host
synchronisation: the "mean" denominator stays a device tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, overload

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops import cross_entropy as ce_ops
from softmaxkit._ops import dtensor
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit._ops.cross_entropy import (  # noqa: F401 (default_chunk_size: docstrings name it here)
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    CrossEntropyOptions,
    default_chunk_size,
)

__all__ = ["LinearCrossEntropy", "LinearCrossEntropyExtras", "linear_cross_entropy"]


class LinearCrossEntropyExtras(NamedTuple):
    """Side outputs of :func:`linear_cross_entropy` (``return_extras=True``), not differentiable.

    ``lse``: per-row log-sum-exp of the (soft-capped) logits, the target's shape, in the
    compute dtype (float32 for half inputs). ``predicted``: per-row argmax class (int64).
    ``accuracy``: 0-d float, the mean of ``predicted == target`` over the kept rows (0
    when no row is kept; for probability targets the target's argmax is compared).
    """

    lse: torch.Tensor
    predicted: torch.Tensor
    accuracy: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class _Call:
    """One call's options: the cross-entropy rules', which gradients to compute, and the
    (V,) class weights (compute dtype; not differentiated) or None."""

    ce: CrossEntropyOptions
    needs: tuple[bool, bool, bool]
    out_dtype: torch.dtype
    class_weight: torch.Tensor | None


class _LinearCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        W: torch.Tensor,
        b: torch.Tensor | None,
        target: torch.Tensor,
        call: _Call,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        o, cw = call.ce, call.class_weight
        eager = o.reduction != "none"
        targets = ce_ops.targets_of(target, cw, o, compute_dtype(W))
        needs = call.needs if eager else (False, False, False)
        compiling = torch.compiler.is_compiling()
        # eager "mean"/"sum": a half weight's float32 gradient is kept until backward, which
        # scales it by the upstream gradient and rounds it once
        res = ce_ops.linear_chunks(x, W, b, targets, o, needs=needs, finish=compiling)
        loss = res.loss
        assert loss is not None  # a forward walk
        ctx.call, ctx.x_dtype = call, x.dtype
        ctx.grads = None
        if eager and compiling:
            ctx.save_for_backward(res.grad_x, res.grad_w, res.grad_b)
        elif eager:
            gw = res.grad_w if res.half_weight is None else res.half_weight
            ctx.grads = (res.grad_x, gw, res.grad_b)
        else:
            ctx.save_for_backward(x, W, b, target, res.lse)
        ctx.mark_non_differentiable(res.lse)
        if res.argmax is not None:
            ctx.mark_non_differentiable(res.argmax)
        return loss.to(call.out_dtype), res.lse, res.argmax

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g: torch.Tensor, _g_lse: object, _g_pred: object
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None, None]:
        o = ctx.call.ce
        if o.reduction != "none":
            if ctx.grads is None:  # traced by torch.compile: saved tensors, out of place
                gx, gw, gb = ctx.saved_tensors
                gx, gw, gb = (None if t is None else t * g.to(t.dtype) for t in (gx, gw, gb))
            else:
                # eager: take the buffers over and scale them in place, so that no second
                # (V, d) buffer is ever allocated
                if ctx.grads == "consumed":
                    raise RuntimeError(
                        "linear_cross_entropy: a second backward through the same call "
                        "(retain_graph=True, gradcheck) is not supported for reduction "
                        "'mean'/'sum', whose gradients are computed in forward and handed "
                        "over to the first backward; call it again, or use reduction='none'"
                    )
                gx, gw, gb = ctx.grads
                ctx.grads = "consumed"
                if isinstance(gw, ce_ops._HalfWeight):
                    gw = gw.grad_weight(g)
                elif gw is not None:
                    gw.mul_(g.to(gw.dtype))
                for t in (gx, gb):
                    if t is not None:
                        t.mul_(g.to(t.dtype))
        else:
            x, W, b, target, lse = ctx.saved_tensors
            targets = ce_ops.targets_of(target, ctx.call.class_weight, o, compute_dtype(W))
            res = ce_ops.linear_chunks(x, W, b, targets, o, needs=ctx.call.needs, grad=g, lse=lse)
            gx, gw, gb = res.grad_x, res.grad_w, res.grad_b
        if gx is not None:
            gx = gx.to(ctx.x_dtype)
        return gx, gw, gb, None, None


def _check_layer(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
) -> int:
    """Validate the output layer and the class weights; the number of classes V."""
    V, _ = v.check_linear_layer(
        "input", input, "linear_weight", linear_weight, "linear_bias", linear_bias
    )
    if weight is not None:
        v.check_floating("weight", weight)
        if weight.shape != (V,):
            raise ValueError(
                f"weight (class weights) must have shape ({V},), got shape {tuple(weight.shape)}"
            )
    return V


def _probability_target(
    input: torch.Tensor, target: torch.Tensor, V: int, ignore_index: int
) -> tuple[bool, torch.Tensor]:
    """Validate ``target``: ``(True, target)`` for probabilities, ``(False, int64 target)``
    for class indices of any integer dtype."""
    v.check_tensor("target", target)
    if target.dtype.is_floating_point:
        expected = tuple(input.shape[:-1]) + (V,)
        if tuple(target.shape) != expected:
            error = TypeError if tuple(target.shape) == tuple(input.shape[:-1]) else ValueError
            raise error(
                f"target must hold class indices (an integer dtype) of shape "
                f"{tuple(input.shape[:-1])} or probabilities of shape {expected}, got "
                f"{target.dtype} of shape {tuple(target.shape)}"
            )
        v.check_tensor_values("target", target, low=0.0)
        return True, target
    if tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(
            f"target must have shape {tuple(input.shape[:-1])} (the input's shape without "
            f"in_features), got {tuple(target.shape)}"
        )
    fake_logits = input.new_empty(()).expand(*target.shape, V)
    return False, v.check_class_target(target, fake_logits, target.ndim, ignore_index)


@overload
def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = ...,
    weight: torch.Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    softcap: float | None = ...,
    logsumexp_penalty: float = ...,
    return_extras: Literal[False] = ...,
    chunk_size: int | None = ...,
) -> torch.Tensor: ...
@overload
def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = ...,
    weight: torch.Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    softcap: float | None = ...,
    logsumexp_penalty: float = ...,
    return_extras: Literal[True],
    chunk_size: int | None = ...,
) -> tuple[torch.Tensor, LinearCrossEntropyExtras]: ...
@overload
def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = ...,
    weight: torch.Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    softcap: float | None = ...,
    logsumexp_penalty: float = ...,
    return_extras: bool,
    chunk_size: int | None = ...,
) -> torch.Tensor | tuple[torch.Tensor, LinearCrossEntropyExtras]: ...


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    logsumexp_penalty: float = 0.0,
    return_extras: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, LinearCrossEntropyExtras]:
    r"""``cross_entropy(linear(input, linear_weight, linear_bias), target)`` without the logits.

    With ``z = input @ linear_weight.T + linear_bias``, optionally soft-capped
    ``s = softcap * tanh(z / softcap)`` (Gemma 2 Team, "Gemma 2: Improving Open Language
    Models at a Practical Size", 2024, arXiv:2408.00118), ``lse = logsumexp(s)``, class
    weights ``w`` (default 1) and label smoothing ``eps`` (Szegedy et al., "Rethinking the
    Inception Architecture for Computer Vision", 2016, arXiv:1512.00567), the loss of a
    kept row with class target ``y`` is exactly ``torch.nn.functional.cross_entropy``'s

    ``l = (1 - eps) w_y (lse - s_y) + (eps / V) sum_k w_k (lse - s_k) + c lse^2``

    where ``c = logsumexp_penalty`` is the log-sum-exp penalty that PaLM (Chowdhery et al.,
    "PaLM: Scaling Language Modeling with Pathways", 2022, arXiv:2204.02311) calls
    "z-loss" (PaLM uses ``c = 1e-4``); it is *not* the Z-loss of
    :func:`softmaxkit.losses.spherical.z_loss` (de Brébisson and Vincent 2016). A
    probability target ``t`` gives ``l = sum_k w_k t'_k (lse - s_k) + c lse^2`` with
    ``t' = (1 - eps) t + eps / V``.

    Reductions follow ``cross_entropy``: ``"none"`` gives the per-row losses (0 on rows
    whose target is ``ignore_index``); ``"sum"`` their sum; ``"mean"`` divides the
    cross-entropy part by the number of kept rows, or by ``sum w_y`` over kept rows with
    class weights (by the number of rows for probability targets), and averages the
    penalty over the kept rows (it is not class-weighted, as in Liger-Kernel). Where
    torch returns NaN for "mean" (no row kept, or all kept weights 0), this returns 0.

    Chunked and fused (Liger-Kernel, Hsu et al., "Liger Kernel: Efficient Triton Kernels
    for LLM Training", 2024, arXiv:2410.10989; Cut Cross-Entropy, Wijmans et al., 2024,
    arXiv:2411.09009): the rows are processed ``chunk_size`` at a time and the (N, V)
    logits and their gradient are never built. For "mean"/"sum" the gradients of
    ``input``, ``linear_weight`` and ``linear_bias`` (only those that require grad, and none
    under ``torch.no_grad``) are computed during forward and scaled by the upstream
    scalar in backward; for "none" backward recomputes the logits chunk by chunk (exact).
    Half inputs: matmuls in the input dtype on CUDA, against a weight upcast piece by piece
    elsewhere; log-sum-exp, loss, logit gradient and the ``grad_W`` accumulation in float32
    (the loss and gradients are returned in the input dtype; see the module docstring).
    ``target`` and ``weight`` are not differentiated. No double backward;
    for "mean"/"sum" the forward-computed gradients are handed to the first backward and
    scaled in place (so no second (V, in_features) buffer is allocated), hence a second
    backward through the same call (``retain_graph=True``, ``gradcheck``) raises a
    RuntimeError; "none" allows it.

    FSDP2 (``torch.distributed.fsdp.fully_shard``): inside the forward of the module that
    owns the weight, FSDP has unsharded it and nothing changes. Called outside it (with
    ``model.lm_head.weight`` after ``hidden = model(x)``, or with an ``lm_head`` that is its
    own ``fully_shard`` unit), the weight and bias are sharded DTensors: they are
    all-gathered (the full (V, in_features) weight is materialised, as FSDP does) and the
    gradient reaching the shards is averaged over the mesh (reduce-scatter; all-reduce over
    an HSDP replica dimension), exactly FSDP2's default reduction, so with equal per-rank
    batches the training step equals one process on the concatenated batch (tested on 2
    and 4 gloo ranks). With ``MixedPrecisionPolicy(param_dtype=...)`` the sharded weight
    outside forward keeps its storage dtype, which must be ``input``'s. A DTensor
    ``input`` or ``target`` raises a TypeError naming the fix (``full_tensor()``).

    Args:
        input: (N, in_features) or (..., in_features) hidden states.
        linear_weight: (V, in_features) output weight, ``input``'s dtype (or a DTensor of
            it, e.g. an FSDP2-sharded parameter: all-gathered, see above).
        target: class indices of shape (N,) / (...), or probabilities (N, V) / (..., V).
        linear_bias: optional (V,) output bias.
        weight: optional (V,) class weights, as ``cross_entropy``'s ``weight``.
        reduction: "mean" (default), "sum" or "none", as ``cross_entropy``.
        ignore_index: class index whose rows do not count (default -100, torch's).
        label_smoothing: in [0, 1], default 0.0 (torch's).
        softcap: positive cap of the logits or None (default: no capping; Gemma 2 uses 30).
        logsumexp_penalty: coefficient ``c >= 0`` of the PaLM "z-loss" ``c lse^2`` (default 0).
        return_extras: also return a :class:`LinearCrossEntropyExtras` (lse, argmax, accuracy).
        chunk_size: rows per chunk; default :func:`default_chunk_size` (a chunk's logits
            take a quarter of the weight gradient's size, within 16-256 MiB).

    Returns:
        The loss (0-d, or the target's per-row shape for "none"), and with
        ``return_extras=True`` the tuple ``(loss, extras)``.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> x, W = torch.randn(6, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
        >>> y = torch.tensor([1, 2, 3, -100, 9, 0])
        >>> loss = linear_cross_entropy(x, W, y, label_smoothing=0.1, chunk_size=4)
        >>> torch.allclose(loss, F.cross_entropy(x @ W.T, y, label_smoothing=0.1))
        True
        >>> loss, extras = linear_cross_entropy(x, W, y, return_extras=True)
        >>> extras.lse.shape, extras.predicted.shape, extras.accuracy.shape
        (torch.Size([6]), torch.Size([6]), torch.Size([]))
    """
    dtensor.refuse("input", input)  # FSDP2: a sharded weight is all-gathered (_ops/dtensor)
    dtensor.refuse("target", target)
    linear_weight = dtensor.full_weight("linear_weight", linear_weight)
    linear_bias = dtensor.full_weight("linear_bias", linear_bias)
    weight = dtensor.full_detached("weight", weight)
    V = _check_layer(input, linear_weight, linear_bias, weight)
    opts = (reduction, ignore_index, label_smoothing, softcap, logsumexp_penalty, chunk_size)
    ce_ops.check_options(*opts)
    v.check_bool("return_extras", return_extras)
    probs, target = _probability_target(input, target, V, ignore_index)
    V, d = linear_weight.shape
    cdt = compute_dtype(input)
    x2 = input.reshape(-1, d)
    rows = x2.shape[0]
    o = CrossEntropyOptions(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        softcap=None if softcap is None else float(softcap),
        logsumexp_penalty=float(logsumexp_penalty),
        chunk_size=chunk_size if chunk_size is not None else default_chunk_size(rows, V, d, cdt),
        probs=probs,
        want_argmax=return_extras,
        vocab_total=V,
    )
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and input.requires_grad,
        grad_on and linear_weight.requires_grad,
        grad_on and linear_bias is not None and linear_bias.requires_grad,
    )
    cw = None if weight is None else weight.detach().to(cdt)
    tgt = target.detach().reshape(rows, V) if probs else target.reshape(rows)
    loss: torch.Tensor
    lse: torch.Tensor
    pred: torch.Tensor | None
    if any(needs):
        # half weights go in as they are: the chunks run their matmuls in the half dtype
        # (or upcast block by block) and accumulate grad_W in float32 (ce_ops.linear_chunks)
        W, b = linear_weight, linear_bias
        call = _Call(ce=o, needs=needs, out_dtype=input.dtype, class_weight=cw)
        loss, lse, pred = _LinearCE.apply(x2, W, b, tgt, call)  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
    else:
        W = linear_weight.detach()
        b = None if linear_bias is None else linear_bias.detach()
        targets = ce_ops.targets_of(tgt, cw, o, cdt)
        res = ce_ops.linear_chunks(x2.detach(), W, b, targets, o)
        assert res.loss is not None and res.lse is not None  # a forward walk
        loss, lse, pred = res.loss.to(input.dtype), res.lse, res.argmax
    shape = target.shape[:-1] if probs else target.shape
    if reduction == "none":
        loss = loss.reshape(shape)
    if not return_extras:
        return loss
    assert pred is not None  # want_argmax=return_extras
    if probs:
        hit = pred == tgt.argmax(1)
        acc = hit.to(cdt).mean() if rows > 0 else lse.new_zeros(())
    else:
        kept = tgt != ignore_index
        hit = (pred == tgt) & kept
        acc = hit.to(cdt).sum() / kept.sum().clamp(min=1).to(cdt)
    extras = LinearCrossEntropyExtras(lse.reshape(shape), pred.reshape(shape), acc)
    return loss, extras


class LinearCrossEntropy(nn.Module):
    """An output layer ``nn.Linear(in_features, num_classes, bias)`` fused with cross-entropy.

    ``forward(input, target)`` returns :func:`linear_cross_entropy` of ``input`` with this
    module's ``weight`` (num_classes, in_features) and ``bias`` (num_classes,), initialised
    as ``nn.Linear`` does so that an ``nn.Linear`` state dict loads into it. The other
    arguments are :func:`linear_cross_entropy`'s, set once; ``class_weight`` is its
    ``weight`` (a buffer). ``logits(input)`` gives the plain logits for inference.

    Example:
        >>> import torch
        >>> head = LinearCrossEntropy(8, 50, bias=True, label_smoothing=0.1)
        >>> loss = head(torch.randn(4, 3, 8), torch.randint(0, 50, (4, 3)))
        >>> loss.backward()
        >>> head.weight.grad.shape
        torch.Size([50, 8])
    """

    class_weight: torch.Tensor | None  # buffer

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = False,
        *,
        class_weight: torch.Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        softcap: float | None = None,
        logsumexp_penalty: float = 0.0,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        v.check_int("in_features", in_features, low=0)
        v.check_int("num_classes", num_classes, low=1)
        v.check_bool("bias", bias)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(num_classes, **kw)) if bias else None
        if class_weight is not None:
            v.check_floating("class_weight", class_weight)
            if class_weight.shape != (num_classes,):
                raise ValueError(
                    f"class_weight must have shape ({num_classes},), got shape "
                    f"{tuple(class_weight.shape)}"
                )
        self.register_buffer("class_weight", class_weight)
        self.reduction = v.check_reduction(reduction)
        self.ignore_index = v.check_int("ignore_index", ignore_index)
        self.label_smoothing = v.check_number("label_smoothing", label_smoothing, low=0, high=1)
        self.softcap = softcap
        self.logsumexp_penalty = logsumexp_penalty
        self.chunk_size = chunk_size
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def logits(self, input: torch.Tensor) -> torch.Tensor:
        """The plain (N, V) logits ``input @ weight.T + bias`` (soft-capped if set)."""
        # not forward: under FSDP2 the parameters may be sharded here (all-gathered)
        weight = dtensor.full_weight("weight", self.weight)
        z = nn.functional.linear(input, weight, dtensor.full_weight("bias", self.bias))
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    @overload
    def forward(
        self, input: torch.Tensor, target: torch.Tensor, return_extras: Literal[False] = ...
    ) -> torch.Tensor: ...
    @overload
    def forward(
        self, input: torch.Tensor, target: torch.Tensor, return_extras: Literal[True]
    ) -> tuple[torch.Tensor, LinearCrossEntropyExtras]: ...
    @overload
    def forward(
        self, input: torch.Tensor, target: torch.Tensor, return_extras: bool
    ) -> torch.Tensor | tuple[torch.Tensor, LinearCrossEntropyExtras]: ...

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, return_extras: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, LinearCrossEntropyExtras]:
        return linear_cross_entropy(
            input,
            self.weight,
            target,
            linear_bias=self.bias,
            weight=self.class_weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            softcap=self.softcap,
            logsumexp_penalty=self.logsumexp_penalty,
            return_extras=return_extras,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"bias={self.bias is not None}, reduction={self.reduction!r}"
        )
