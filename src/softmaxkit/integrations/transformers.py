r"""The fused :func:`softmaxkit.heads.linear_cross_entropy` inside Hugging Face causal LMs.

:func:`apply` patches one model *instance* (never its class) of a supported family so that a
forward call with ``labels`` computes the causal-LM loss from the final hidden states and
the ``lm_head`` weight with :func:`~softmaxkit.heads.linear_cross_entropy`, chunk by chunk,
without building the (batch, sequence, vocabulary) logits or their gradient; a call
without ``labels`` runs the model's own forward, unchanged. :func:`remove` undoes it.

How (the idea of Liger-Kernel's patched ``lce_forward``, Hsu et al., "Liger Kernel:
Efficient Triton Kernels for LLM Training", 2024, arXiv:2410.10989; written here without
copying any model's forward): for a call with labels the patched forward calls the model's
own forward with ``labels=None`` while the output layer (``get_output_embeddings()``, the
``lm_head``) is swapped for one that records the hidden states it is given and returns an
empty ``(..., 0)`` tensor. Everything before the output layer (the base model, the
attention masks, ``logits_to_keep``) therefore stays the model's own code, and the only
part re-implemented is what comes after it, which is why the families are a vetted list,
:data:`SUPPORTED` (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
``Qwen3ForCausalLM``, ``GemmaForCausalLM``, ``Gemma2ForCausalLM``, ``GPT2LMHeadModel``):
for each of them that part is the final-logit soft cap (Gemma 2 only) and
``self.loss_function``, transformers' ``ForCausalLMLoss``, whose semantics are kept:

* the shift: position ``t`` predicts ``labels[t + 1]``; the labels are padded with
  ``ignore_index`` at the end (or ``shift_labels`` is used when passed);
* ``ignore_index`` (default -100, or the ``ignore_index`` keyword of the call);
* the reduction: the mean over the kept tokens, or, when the call passes
  ``num_items_in_batch`` (the Trainer does, for gradient accumulation), the sum divided
  by ``num_items_in_batch``;
* the loss is float32 for float16/bfloat16 models, as transformers' (which upcasts the
  logits); float64 models keep float64 (transformers' loss is float32 there).

A forward hook on the output layer (a logits monitor) sees that empty ``(..., 0)`` tensor
during a call with labels: there are no logits to see. :class:`CollapseCallback` (a
``TrainerCallback`` logging the Softmax Collapse and zero-loss fractions of the training
logits, from ``integrations/_trainer_callback.py``) warns once instead of logging there.

Requires ``transformers`` (``pip install 'softmaxkit[hf]'``); tested with 4.51.3, 4.57.1 and
5.25.0.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as v
from softmaxkit.heads import linear_cross_entropy

if TYPE_CHECKING:  # loaded on first use by __getattr__ (it imports transformers)
    from softmaxkit.integrations._trainer_callback import CollapseCallback

__all__ = ["SUPPORTED", "CollapseCallback", "apply", "remove"]


def __getattr__(name: str) -> Any:
    """``CollapseCallback`` imports transformers, so it loads on first use."""
    if name == "CollapseCallback":
        from softmaxkit.integrations._trainer_callback import CollapseCallback

        return CollapseCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The supported model classes of ``transformers`` (their subclasses count when they keep
#: the class's ``forward``) -> the config attribute holding their final-logit soft cap
#: (``None``: the family does not cap its logits).
SUPPORTED: dict[str, str | None] = {
    "LlamaForCausalLM": None,
    "MistralForCausalLM": None,
    "Qwen2ForCausalLM": None,
    "Qwen3ForCausalLM": None,
    "GemmaForCausalLM": None,
    "Gemma2ForCausalLM": "final_logit_softcapping",
    "GPT2LMHeadModel": None,
}
LOSSES = ("linear_cross_entropy",)
#: the oldest transformers tested (4.51.3; also 4.57.1 and 5.25.0): ``loss_function``,
#: ``num_items_in_batch`` and the Qwen3 family
MIN_TRANSFORMERS = (4, 51)
_STATE = "_softmaxkit_fused_loss"  # the attribute of a patched model holding its _Patch

M = TypeVar("M", bound=nn.Module)


def _transformers() -> ModuleType:
    try:
        module = importlib.import_module("transformers")
    except ImportError as err:
        raise ImportError(
            "softmaxkit.integrations.transformers requires transformers, which is not "
            "installed: pip install 'softmaxkit[hf]'"
        ) from err
    version = str(getattr(module, "__version__", "0"))
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_TRANSFORMERS:
        raise ImportError(
            f"softmaxkit.integrations.transformers requires transformers>="
            f"{'.'.join(map(str, MIN_TRANSFORMERS))}, found {version}: "
            "pip install -U 'softmaxkit[hf]'"
        )
    return module


@dataclasses.dataclass(frozen=True)
class _Options:
    loss: str
    z_loss: float
    softcap: float | str | None
    chunk_size: int | None
    eval_logits: bool


@dataclasses.dataclass(frozen=True)
class _Patch:
    options: _Options
    family: str
    forward: Callable[..., Any]  # the patched forward set on the instance
    original: Callable[..., Any]  # the forward it calls (bound)
    had_forward: bool  # whether the instance had a forward of its own before apply


def _family(model: nn.Module) -> str:
    """The supported class ``model`` is (or subclasses without overriding its forward)."""
    for klass in type(model).__mro__:
        if klass.__name__ in SUPPORTED and klass.__module__.startswith("transformers."):
            if type(model).forward is not getattr(klass, "forward", None):
                raise TypeError(
                    f"model: {type(model).__name__} overrides the forward of {klass.__name__}; "
                    "only the transformers classes' own forward is supported"
                )
            return klass.__name__
    raise TypeError(
        f"model must be a Hugging Face causal LM of a supported family "
        f"({', '.join(SUPPORTED)}), got {type(model).__name__}"
    )


def _check_options(
    loss: object, z_loss: object, softcap: object, chunk_size: object, eval_logits: object
) -> _Options:
    v.check_choice("loss", loss, LOSSES)
    z = v.check_number("z_loss", z_loss, low=0.0)
    cap: float | str | None = None
    if isinstance(softcap, str):
        cap = v.check_choice("softcap", softcap, ("model",))
    elif softcap is not None:
        cap = v.check_number("softcap", softcap, low=0.0, low_open=True)
    if chunk_size is not None:
        v.check_int("chunk_size", chunk_size, low=1)
    v.check_bool("eval_logits", eval_logits)
    return _Options(str(loss), z, cap, chunk_size, bool(eval_logits))  # type: ignore[arg-type]


def _softcap(model: nn.Module, patch: _Patch) -> float | None:
    cap = patch.options.softcap
    if cap != "model":
        return None if cap is None else float(cap)
    attribute = SUPPORTED[patch.family]
    value = None if attribute is None else getattr(model.config, attribute, None)
    return None if value is None else float(value)


def _fused_loss(
    layer: tuple[torch.Tensor, torch.Tensor | None],
    hidden: torch.Tensor,
    labels: torch.Tensor,
    loss_kwargs: dict[str, Any],
    softcap: float | None,
    options: _Options,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` of ``linear(hidden, *layer)``, without the logits."""
    ignore_index = loss_kwargs.get("ignore_index", -100)
    target = loss_kwargs.get("shift_labels")
    if target is None:
        target = F.pad(labels.to(hidden.device), (0, 1), value=ignore_index)[..., 1:]
    target = target.to(hidden.device)
    weight, bias = layer
    x = hidden.reshape(-1, hidden.shape[-1])
    if x.dtype in (torch.float16, torch.bfloat16):  # float32 loss, as transformers' upcast
        x, weight = x.float(), weight.float()
        bias = None if bias is None else bias.float()
    items = loss_kwargs.get("num_items_in_batch")
    loss = linear_cross_entropy(
        x,
        weight,
        target.reshape(-1),
        linear_bias=bias,
        reduction="mean" if items is None else "sum",
        ignore_index=ignore_index,
        softcap=softcap,
        logsumexp_penalty=options.z_loss,
        chunk_size=options.chunk_size,
    )
    if items is not None:
        loss = loss / (items.to(loss.device) if torch.is_tensor(items) else items)
    return loss


def _run_without_logits(
    model: nn.Module, patch: _Patch, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, torch.Tensor]:
    """The model's own forward (``labels=None``) with the output layer swapped for one that
    records its input; the output and the hidden states the output layer was given."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    seen: list[torch.Tensor] = []

    def record(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden)
        return hidden.new_empty((*hidden.shape[:-1], 0))

    previous = head.__dict__.get("forward")
    head.forward = record
    try:
        out = patch.original(*args, **kwargs)
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous
    if len(seen) != 1:
        raise RuntimeError(
            f"softmaxkit.integrations.transformers: the output layer of {type(model).__name__} "
            f"was called {len(seen)} times in one forward (expected once); remove() the patch"
        )
    return out, seen[0]


def _output_layer(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (weight, bias) of the model's output layer, an ``nn.Linear``."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"model: the output layer of {type(model).__name__} must be an nn.Linear, got "
            f"{type(head).__name__}"
        )
    return head.weight, head.bias


def _patched_forward(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    patch: _Patch = getattr(model, _STATE)
    if "labels" in kwargs or not args:
        labels = kwargs.get("labels")
        call_args, call_kwargs = args, {**kwargs, "labels": None}
    else:  # labels may have been passed by position
        bound = inspect.signature(patch.original).bind(*args, **kwargs)
        labels = bound.arguments.get("labels")
        bound.arguments["labels"] = None
        call_args, call_kwargs = bound.args, dict(bound.kwargs)
    if labels is None or (patch.options.eval_logits and not model.training):
        return patch.original(*args, **kwargs)
    return_dict = call_kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", None)
    call_kwargs["return_dict"] = True
    out, hidden = _run_without_logits(model, patch, call_args, call_kwargs)
    layer, cap = _output_layer(model), _softcap(model, patch)
    loss = _fused_loss(layer, hidden, labels, call_kwargs, cap, patch.options)
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    out = type(out)(**{**fields, "loss": loss, "logits": None})
    return out.to_tuple() if return_dict is False else out


def apply(
    model: M,
    *,
    loss: str = "linear_cross_entropy",
    z_loss: float = 0.0,
    softcap: float | str | None = "model",
    chunk_size: int | None = None,
    eval_logits: bool = False,
) -> M:
    r"""Patch a Hugging Face causal LM instance so that its loss is fused and chunked.

    After ``apply(model)``, ``model(..., labels=labels)`` returns the loss of
    :func:`softmaxkit.heads.linear_cross_entropy` on the final hidden states ``h`` and the
    output layer's weight ``W`` (and bias ``b``, if any), with the model's own shift,
    ``ignore_index`` and reduction (transformers' ``ForCausalLMLoss``); with
    ``s_t = cap * tanh((W h_t + b) / cap)`` (or ``W h_t + b`` without a cap) and
    ``y_t = labels[t + 1]`` (``ignore_index`` at the last position),

    .. math::

        L = \frac{1}{n} \sum_{t:\, y_t \neq \text{ignore}}
            \Big(\operatorname{lse}(s_t) - s_{t, y_t} + c \operatorname{lse}(s_t)^2\Big),

    where ``n`` is the number of kept tokens, or ``num_items_in_batch`` when the call
    passes it (the Trainer's gradient-accumulation denominator: the sum over the
    micro-batch divided by the count over the whole accumulated batch), and ``c`` is
    ``z_loss``, PaLM's auxiliary "z-loss" ``1e-4 * log^2 Z`` (Chowdhery et al., "PaLM:
    Scaling Language Modeling with Pathways", 2022, arXiv:2204.02311; default 0, i.e.
    transformers' plain loss). The logits are never built in that case: the output's
    ``logits`` is ``None`` (the fused chunked head of Liger-Kernel, Hsu et al., 2024,
    arXiv:2410.10989, and Cut Cross-Entropy, Wijmans et al., "Cut Your Losses in
    Large-Vocabulary Language Models", 2024, arXiv:2411.09009). Everything else in the
    output (``cache``, ``hidden_states``, ``attentions``) is the model's own. A call
    without ``labels`` runs the model's own forward unchanged (generation included). The
    model is patched in place and returned; its class and every other instance are
    untouched.

    Deliberate differences from the unpatched model: the loss is computed from float32
    logits recomputed per chunk (transformers rounds the logits to the model's dtype
    before upcasting them), so for float16/bfloat16 models it is slightly *more* accurate
    than the original, equal within float32 rounding for float32 models, and float64 for
    float64 models (transformers' ``.float()`` makes its loss float32 there); and
    ``logits`` is ``None`` whenever ``labels`` are passed, also in eval mode, so an
    evaluation that needs the logits (the Trainer's ``compute_metrics``) needs
    ``eval_logits=True`` (a model in eval mode then runs its own forward) or
    ``prediction_loss_only=True``.

    Args:
        model: an instance of a supported class (:data:`SUPPORTED`: Llama, Mistral, Qwen2,
            Qwen3, Gemma, Gemma 2, GPT-2), or of a subclass that keeps its ``forward``;
            any other model raises a TypeError naming the supported families.
        loss: the fused loss; only ``"linear_cross_entropy"`` (the default) for now.
        z_loss: coefficient ``c >= 0`` of the log-sum-exp penalty (linear_cross_entropy's
            ``logsumexp_penalty``); default 0.0 (transformers' loss; PaLM uses 1e-4).
        softcap: ``"model"`` (default): the model's own final-logit soft cap (Gemma 2's
            ``config.final_logit_softcapping``, read at each call; no cap for the other
            families); a positive float: that cap in the loss; ``None``: no cap in the loss.
            The logits of a call without labels are always the model's own.
        chunk_size: rows (tokens) per chunk; default ``None``:
            :func:`softmaxkit.heads.linear_cross_entropy`'s default.
        eval_logits: when True, a model in eval mode (``model.training`` False) runs its
            own forward even with labels, building the logits (default False).

    Returns:
        ``model``, patched. Applying twice with the same options is a no-op; with other
        options it raises a ValueError (call :func:`remove` first).

    Raises:
        ImportError: transformers is not installed (``pip install 'softmaxkit[hf]'``).
        TypeError: ``model`` is not of a supported family, or an option has a wrong type.
        ValueError: an option is out of range, or the model is patched with other options.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from softmaxkit.integrations.transformers import apply, remove
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
        ...                      num_hidden_layers=1, num_attention_heads=4)
        >>> model = LlamaForCausalLM(config)
        >>> ids = torch.randint(0, 128, (2, 9))
        >>> plain = model(input_ids=ids, labels=ids).loss
        >>> out = apply(model)(input_ids=ids, labels=ids)
        >>> out.logits is None, torch.allclose(out.loss, plain)
        (True, True)
        >>> remove(model)(input_ids=ids).logits.shape
        torch.Size([2, 9, 128])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    options = _check_options(loss, z_loss, softcap, chunk_size, eval_logits)
    _transformers()
    patch: _Patch | None = getattr(model, _STATE, None)
    if patch is not None:
        if patch.options == options:
            return model
        raise ValueError(
            f"model is already patched by softmaxkit.integrations.transformers.apply with "
            f"other options ({patch.options}); call remove(model) first"
        )
    family = _family(model)
    loss_function = getattr(model, "loss_function", None)
    causal_lm_loss = importlib.import_module("transformers.loss.loss_utils").ForCausalLMLoss
    if loss_function is not causal_lm_loss:
        raise TypeError(
            f"model: {type(model).__name__}.loss_function is {loss_function!r}, not "
            "transformers' ForCausalLMLoss, whose semantics the fused loss reproduces"
        )
    had_forward = "forward" in model.__dict__
    original = model.forward

    # the original's name, docstring and signature (functools.wraps): the Trainer reads the
    # forward's parameters to choose the dataset columns and to pass num_items_in_batch
    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        return _patched_forward(model, *args, **kwargs)

    _output_layer(model)
    patch = _Patch(options, family, forward, original, had_forward)
    object.__setattr__(model, _STATE, patch)
    model.forward = forward
    return model


def remove(model: M) -> M:
    """Undo :func:`apply` on ``model`` and return it; a model that is not patched is
    returned unchanged.

    Raises:
        RuntimeError: ``model.forward`` was replaced again after :func:`apply` (by another
            patch), which this cannot undo in the right order.

    Example:
        >>> import torch
        >>> print(remove(torch.nn.Linear(2, 2)))
        Linear(in_features=2, out_features=2, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    patch: _Patch | None = getattr(model, _STATE, None)
    if patch is None:
        return model
    if model.__dict__.get("forward") is not patch.forward:
        raise RuntimeError(
            "remove: model.forward was replaced after softmaxkit's apply(); undo that patch first"
        )
    if patch.had_forward:
        model.forward = patch.original
    else:
        del model.forward
    object.__delattr__(model, _STATE)
    return model
