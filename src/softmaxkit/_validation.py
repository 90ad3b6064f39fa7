"""The one place that checks arguments.

Every public function validates its arguments through these helpers, so every
error a user can see has the same shape: the argument's name, what was expected
and what was given. Type problems raise ``TypeError``; values outside their
domain raise ``ValueError``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

REDUCTIONS = ("mean", "sum", "none")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{value!r} ({type(value).__name__})"


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def readable(value: torch.Tensor) -> bool:
    """Whether a check may read ``value``'s entries: a non-empty CPU tensor outside
    ``torch.compile`` (elsewhere reading them would synchronise the device or break the
    graph; an out-of-range index is then caught by the device-side check that reads it)."""
    return value.device.type == "cpu" and value.numel() > 0 and not torch.compiler.is_compiling()


_Check = TypeVar("_Check", bound=Callable[..., torch.Tensor])


def _reads_values(check: _Check) -> _Check:
    """A check ``check(name, value, ...)`` of ``value``'s entries, run only where they may
    be read (:func:`readable`); elsewhere ``value`` passes unchecked. Returns ``value``."""

    @functools.wraps(check)
    def checked(name: str, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return check(name, value, *args, **kwargs) if readable(value) else value

    return checked  # type: ignore[return-value]


def check_index_dtype(name: str, value: object) -> torch.Tensor:
    """Class indices of any integer dtype (int8 ... int64, uint8; not bool, not floating),
    returned as int64: the one place where integer labels are converted, so every caller
    gets the dtype that ``gather``, ``one_hot`` and ``nll_loss`` need."""
    value = check_tensor(name, value)
    if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold class indices (an integer dtype), got {value.dtype}")
    return value if value.dtype == torch.int64 else value.long()


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    return value


def check_floating(name: str, value: object) -> torch.Tensor:
    """A tensor of a floating dtype (float16, bfloat16, float32, float64)."""
    value = check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {value.dtype}"
        )
    return value


def check_dim(name: str, dim: Any, ndim: int) -> int:
    """An integer axis valid for a tensor of ``ndim`` dimensions; returned non-negative.

    A 0-d tensor is treated as having one axis, as torch does for reductions.
    """
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {_describe(dim)}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise ValueError(
            f"{name} must be in [{-rank}, {rank - 1}] for a tensor with {ndim} dimensions, "
            f"got {dim}"
        )
    return dim % rank


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the interval given by ``low``/``high``.

    ``low_open``/``high_open`` exclude the bound itself.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = _interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must be in {interval}, got {value:g}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An integer in the closed interval [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_reduction(reduction: Any) -> str:
    checked: str = check_choice("reduction", reduction, REDUCTIONS)
    return checked


def check_loss_options(reduction: Any, ignore_index: Any, label_smoothing: Any) -> None:
    """The ``cross_entropy`` options every class loss shares (for module twins' ``__init__``)."""
    check_reduction(reduction)
    check_int("ignore_index", ignore_index)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)


def check_mask(mask: Any, x: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A boolean keep-mask (True = keep) broadcastable to ``x``."""
    check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = keep), got dtype {mask.dtype}")
    return check_broadcastable_to(name, mask, tuple(x.shape), "the input's shape")


def check_class_target(
    target: object, logits: torch.Tensor, class_dim: int, ignore_index: int, name: str = "target"
) -> torch.Tensor:
    """Class indices: any integer dtype (returned as int64), the logits' shape without
    ``class_dim``, in range.

    Values are checked on CPU tensors outside ``torch.compile`` only; elsewhere an
    out-of-range index is caught by the device-side check of the gather that reads it.
    """
    target = check_index_dtype(name, target)
    expected = logits.shape[:class_dim] + logits.shape[class_dim + 1 :]
    if target.shape != expected:
        raise ValueError(
            f"{name} must have shape {tuple(expected)} (the logits' shape without the class "
            f"dimension {class_dim}), got {tuple(target.shape)}"
        )
    if readable(target):
        num_classes = logits.shape[class_dim]
        kept = target[target != ignore_index]
        if kept.numel() > 0:
            lo, hi = int(kept.min()), int(kept.max())
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"{name} must hold class indices in [0, {num_classes - 1}] "
                    f"(or ignore_index={ignore_index}), got {bad}"
                )
    return target


FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating_dtype(name: str, value: Any) -> torch.dtype:
    """A floating ``torch.dtype``: float16, bfloat16, float32 or float64."""
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {_describe(value)}")
    if value not in FLOATING_DTYPES:
        options = ", ".join(str(d) for d in FLOATING_DTYPES)
        raise ValueError(f"{name} must be one of {options}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A plain ``bool`` (not an int, not a tensor)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return value


def check_callable(name: str, value: Any) -> Any:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {_describe(value)}")
    return value


def check_subclass(
    name: str, value: Any, base: type, *, exclude: Iterable[type] = (), why: str = ""
) -> type:
    """A class deriving from ``base`` and from none of ``exclude`` (``why`` says why not)."""
    if not (isinstance(value, type) and issubclass(value, base)):
        raise TypeError(
            f"{name} must be a subclass of {base.__module__}.{base.__qualname__}, "
            f"got {_describe(value)}"
        )
    for bad in exclude:
        if issubclass(value, bad):
            reason = f" ({why})" if why else ""
            raise ValueError(
                f"{name} must not be {bad.__module__}.{bad.__qualname__} or a subclass{reason}, "
                f"got {value.__qualname__}"
            )
    return value


def check_broadcastable_to(
    name: str, value: object, shape: tuple[int, ...], what: str
) -> torch.Tensor:
    """A tensor whose shape broadcasts to ``shape`` without changing it (``what`` names it)."""
    value = check_tensor(name, value)
    try:
        fits = torch.broadcast_shapes(value.shape, shape) == torch.Size(shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} must be broadcastable to {what} {tuple(shape)}, got shape {tuple(value.shape)}"
        )
    return value


@_reads_values
def check_tensor_values(
    name: str,
    value: torch.Tensor,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> torch.Tensor:
    """A tensor whose entries all lie in the interval given by ``low``/``high`` (NaN never does).

    Values are read on CPU tensors outside ``torch.compile`` only (elsewhere reading them
    would synchronise the device); the tensor is returned unchanged.
    """
    ok = torch.ones(value.shape, dtype=torch.bool)
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not bool(ok.all()):
        bad = value.detach()[~ok].flatten()[0].item()
        interval = _interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must have all values in {interval}, got {bad:g}")
    return value


def check_linear_layer(
    input_name: str,
    input: Any,
    weight_name: str,
    weight: Any,
    bias_name: str,
    bias: Any,
) -> tuple[int, int]:
    """An output layer's operands: ``input`` (..., d), ``weight`` (V, d) with V >= 1 and an
    optional ``bias`` (V,), all floating and of ``input``'s dtype. Returns (V, d)."""
    check_floating(input_name, input)
    check_floating(weight_name, weight)
    if input.ndim < 1:
        raise ValueError(f"{input_name} must have shape (..., d), got shape {tuple(input.shape)}")
    if weight.ndim != 2 or weight.shape[0] < 1:
        raise ValueError(
            f"{weight_name} must have shape (V, d) with V >= 1 (one row per class), got shape "
            f"{tuple(weight.shape)}"
        )
    V, d = weight.shape
    if input.shape[-1] != d:
        raise ValueError(
            f"{input_name}'s last dimension must equal {weight_name}'s d = {d}, got "
            f"{input_name} of shape {tuple(input.shape)}"
        )
    if weight.dtype != input.dtype:
        raise TypeError(
            f"{weight_name} must have {input_name}'s dtype {input.dtype}, got {weight.dtype}"
        )
    if bias is not None:
        check_floating(bias_name, bias)
        if tuple(bias.shape) != (V,):
            raise ValueError(f"{bias_name} must have shape ({V},), got shape {tuple(bias.shape)}")
        if bias.dtype != input.dtype:
            raise TypeError(
                f"{bias_name} must have {input_name}'s dtype {input.dtype}, got {bias.dtype}"
            )
    return V, d


def check_nonempty(name: str, value: torch.Tensor, what: str = "element") -> torch.Tensor:
    """A tensor with at least one entry (``what`` names an entry in the message)."""
    if value.numel() == 0:
        raise ValueError(
            f"{name} must hold at least one {what}, got an empty tensor of shape "
            f"{tuple(value.shape)}"
        )
    return value


@_reads_values
def check_no_nan(name: str, value: torch.Tensor) -> torch.Tensor:
    """A tensor without NaN entries (+-inf allowed).

    Read on CPU tensors outside ``torch.compile`` only, like :func:`check_tensor_values`.
    """
    nan = torch.isnan(value.detach())
    if bool(nan.any()):
        count = int(nan.sum())
        raise ValueError(
            f"{name} must not contain NaN, got {count} NaN value(s) in a tensor of shape "
            f"{tuple(value.shape)}"
        )
    return value


def check_annotations(name: str, value: object, num_classes: int, missing: int) -> torch.Tensor:
    """An (items, annotators) integer tensor of class indices in [0, num_classes) or
    ``missing``, returned as int64.

    ``missing`` must itself lie outside [0, num_classes). Values are read on CPU tensors
    outside ``torch.compile`` only, like :func:`check_tensor_values`.
    """
    value = check_index_dtype(name, value)
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D (items, annotators), got shape {tuple(value.shape)}")
    if 0 <= missing < num_classes:
        raise ValueError(
            f"missing must lie outside the class range [0, {num_classes - 1}], got {missing}"
        )
    if readable(value):
        bad = (value != missing) & ((value < 0) | (value >= num_classes))
        if bool(bad.any()):
            got = int(value[bad].flatten()[0])
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes - 1}] "
                f"(or missing={missing}), got {got}"
            )
    return value


def check_class_indices(
    name: str, value: object, shape: tuple[int, ...], num_classes: int
) -> torch.Tensor:
    """Class indices: any integer dtype (returned as int64), exactly ``shape``, all in
    [0, num_classes).

    Values are read on CPU tensors outside ``torch.compile`` only, like
    :func:`check_tensor_values`.
    """
    value = check_index_dtype(name, value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if readable(value):
        lo, hi = int(value.min()), int(value.max())
        bad = lo if lo < 0 else hi
        if not 0 <= bad < num_classes:
            raise ValueError(f"{name} must hold class indices in [0, {num_classes - 1}], got {bad}")
    return value


@_reads_values
def check_logit_rows(name: str, value: torch.Tensor) -> torch.Tensor:
    """Logits (..., C) with no NaN, no +inf, and a finite entry in every row (-inf allowed).

    Read on CPU tensors outside ``torch.compile`` only, like :func:`check_tensor_values`.
    """
    v = value.detach()
    low, high = torch.aminmax(v)  # one pass; NaN propagates into both
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        _raise_bad_logit_rows(name, v)
    return value


@_reads_values
def check_logit_input(name: str, value: torch.Tensor, flag: str, atol: float) -> torch.Tensor:
    """Logits (..., C) as :func:`check_logit_rows`, and a ``UserWarning`` when they look like
    probabilities: ``C >= 2``, every entry in [0, 1] and every row summing to 1 within
    ``atol``. Softmaxing probabilities again flattens them (``softmax([0.9, 0.1])`` is
    ``[0.69, 0.31]``), so the warning names the ``flag`` (e.g. ``from_logits``) to set False.

    The warning is attributed to the first caller outside softmaxkit, so Python's default
    warning filter shows it once per call site. The row sums are formed only when the
    one-pass min / max (shared with the NaN / +inf check) already lies in [0, 1], so
    ordinary logits pay nothing extra. Read on CPU tensors outside ``torch.compile`` only,
    like :func:`check_tensor_values`.
    """
    v = value.detach()
    low, high = torch.aminmax(v)  # one pass; NaN propagates into both
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        _raise_bad_logit_rows(name, v)
    if v.shape[-1] >= 2 and bool(low >= 0) and bool(high <= 1):
        err = (v.to(torch.float64).sum(dim=-1) - 1.0).abs()
        if bool((err <= atol).all()):
            warn_outside(
                f"{name} looks like probabilities (every entry in [0, 1], every row summing to "
                f"1), but {flag}=True treats it as logits and applies a softmax again; pass "
                f"{flag}=False if these are probabilities"
            )
    return value


def _raise_bad_logit_rows(name: str, v: torch.Tensor) -> None:
    """The error of :func:`check_logit_rows` for logits whose min or max is not finite."""
    if bool(torch.isnan(v).any()):
        raise ValueError(f"{name} must not contain NaN, got {int(torch.isnan(v).sum())} NaN(s)")
    if bool((v == math.inf).any()):
        raise ValueError(f"{name} must not contain +inf (softmax is undefined there), got +inf")
    if bool((v == -math.inf).all(dim=-1).any()):
        raise ValueError(f"{name} must have a finite entry in every row, got a row of all -inf")


@_reads_values
def check_probability_rows(name: str, value: torch.Tensor, atol: float) -> torch.Tensor:
    """Probabilities (..., C): entries in [0, 1], each row summing to 1 within ``atol``.

    Read on CPU tensors outside ``torch.compile`` only, like :func:`check_tensor_values`.
    """
    check_tensor_values(name, value, low=0.0, high=1.0)
    err = (value.detach().to(torch.float64).sum(dim=-1) - 1.0).abs()
    if bool((err > atol).any()):
        worst = float(err.max())
        raise ValueError(
            f"{name} must have rows summing to 1 (within {atol:g}) when from_logits=False, "
            f"got a row whose sum is off by {worst:g}"
        )
    return value


def probability_atol(dtype: torch.dtype) -> float:
    """How far from 1 a row of probabilities of ``dtype`` may sum: ``sqrt(eps)`` of the
    dtype, at least ``1e-6`` (float32: 3.5e-4; float16: 0.031; bfloat16: 0.088)."""
    return max(1e-6, math.sqrt(torch.finfo(dtype).eps))


@_reads_values
def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """A tensor of finite entries (no NaN, no +-inf).

    Read on CPU tensors outside ``torch.compile`` only, like :func:`check_tensor_values`.
    """
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        first = value.detach()[bad].flatten()[0].item()
        raise ValueError(
            f"{name} must be finite, got {int(bad.sum())} non-finite value(s) (e.g. {first}) "
            f"in a tensor of shape {tuple(value.shape)}"
        )
    return value


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_outside(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside softmaxkit (the user's call),
    so Python's default filter shows it once per call site however deep the library
    code that found the problem."""
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
