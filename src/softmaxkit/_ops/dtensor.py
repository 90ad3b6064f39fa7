"""DTensor arguments (FSDP2 sharded parameters, tensor-parallel shards) at the public entries.

``torch.distributed.fsdp.fully_shard`` (FSDP2) stores each parameter as a ``DTensor``
sharded on dim 0 over its mesh. Inside the forward of the module that owns it, FSDP has
all-gathered it and the module's attribute is a plain tensor, so nothing here runs. Outside
that forward (a loss called with ``model.lm_head.weight`` after ``hidden = model(x)``, or
with an ``lm_head`` that is its own ``fully_shard`` unit while the loss runs in the parent's
forward) the attribute is the sharded DTensor. :func:`full_weight` turns such a weight into
the full plain tensor by a differentiable all-gather whose backward is exactly FSDP's
gradient reduction: the gradient of the full weight computed on each rank is declared
``Partial("avg")`` over every mesh dimension, so backward reduce-scatters it (and
all-reduces over a replicated HSDP dimension) as the **mean over the ranks**, which is what
FSDP2 computes for a parameter used inside its module's forward (its default gradient divide
factor is the data-parallel world size). The sharded parameter's ``.grad`` is then the
DTensor shard FSDP's optimizer step expects; with equal per-rank batches and a "mean" loss
it equals the gradient of one process on the concatenated batch.

Every other DTensor argument (hidden states, logits, targets) is refused by :func:`refuse`
with a TypeError that names the fix, instead of DTensor's "got mixed torch.Tensor and
DTensor" RuntimeError from deep inside the computation. No DTensor can exist before
``torch.distributed.tensor`` is imported, so the check costs one dict lookup otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

__all__ = ["is_dtensor", "full_weight", "full_detached", "refuse", "LOGITS_FIX", "LOCAL_FIX"]

_FIX = (
    "call it inside the forward of the module that owns the weight (FSDP2 unshards it there), "
    "or unshard first with module.unshard() or weight.full_tensor()"
)
LOGITS_FIX = (
    "pass {name}.full_tensor() (the whole tensor on every rank), or for logits sharded on the "
    "vocabulary (Shard(-1), tensor parallelism) use softmaxkit.distributed."
    "vocab_parallel_cross_entropy({name}.to_local(), target, group={name}.device_mesh)"
)
LOCAL_FIX = (
    "pass this rank's slice {name}.to_local() with group={name}.device_mesh (a 1-D mesh whose "
    "shards are contiguous on the vocabulary dimension, in rank order)"
)
_PLAIN_FIX = "pass {name}.full_tensor() (the whole tensor on every rank) or {name}.to_local()"


def is_dtensor(value: object) -> bool:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor`` (no import if none can exist)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def _describe(value: Any) -> str:
    return (
        f"a DTensor of global shape {tuple(value.shape)} with placements "
        f"{tuple(value.placements)} on {value.device_mesh}"
    )


def full_weight(name: str, weight: Any) -> Any:
    """``weight`` itself, or the full plain tensor of a DTensor weight (sharded or replicated).

    Differentiable: the gradient of the full tensor is averaged over every mesh dimension
    on its way back to the shards (reduce-scatter on a ``Shard`` dimension, all-reduce on a
    ``Replicate`` one), FSDP2's default reduction. A ``Partial`` weight (pending sums, not a
    parameter layout) raises a TypeError naming the fix.
    """
    if not is_dtensor(weight):
        return weight
    from torch.distributed.tensor import Partial

    if any(p.is_partial() for p in weight.placements):
        raise TypeError(
            f"{name} must be a plain tensor or a sharded/replicated DTensor, got "
            f"{_describe(weight)} (pending partial sums); {_FIX}"
        )
    avg = [Partial("avg")] * weight.device_mesh.ndim
    full: torch.Tensor = weight.full_tensor(grad_placements=avg)
    return full


def full_detached(name: str, weight: Any) -> Any:
    """The full plain tensor of a DTensor weight, detached (initialisers that read a
    pretrained weight, e.g. k-means of its rows, take no gradient); a plain tensor (or
    None) is returned unchanged."""
    if not is_dtensor(weight):
        return weight
    with torch.no_grad():
        full: torch.Tensor = full_weight(name, weight.detach())
    return full


def refuse(name: str, value: Any, fix: str = _PLAIN_FIX) -> None:
    """Raise a TypeError naming the fix (``fix`` with ``{name}`` filled in) when ``value``
    is a DTensor; do nothing otherwise."""
    if is_dtensor(value):
        raise TypeError(
            f"{name} must be a plain torch.Tensor, got {_describe(value)}; " + fix.format(name=name)
        )
