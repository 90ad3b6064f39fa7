"""The quantizer protocol shared by every ``softmaxkit.quant`` quantizer, and ``calibrate``.

Conventions, stated once for the package:

* **Input.** Post-softmax probabilities: a floating tensor of any shape with entries
  >= 0 (a negative entry raises ``ValueError`` naming ``input``; the check reads the
  values on CPU outside ``torch.compile`` only, like every check of ``_validation``).
  float16/bfloat16 are computed in float32 and returned in the input dtype.
* **Calibration.** ``start_calibration()`` resets the statistics and switches the
  quantizer to calibration mode (``calibrating`` is True): each call then *accumulates*
  statistics and returns its input unchanged. ``finish_calibration()`` fits the
  quantizer's parameters from everything seen. The statistics use bounded memory: an
  exact running minimum and maximum (so calibrating on chunks equals calibrating on
  their concatenation) and a uniform random subsample of at most ``max_samples``
  entries (bottom-k of seeded random keys), on which percentile and error searches run.
  While the data seen fit in ``max_samples`` the subsample is all of it. Calling an
  uncalibrated quantizer outside calibration raises ``RuntimeError``.
* **Element-wise.** Once calibrated, every quantizer here is element-wise with
  per-tensor parameters (applying it to blocks of a tensor equals applying it to the
  whole), except :class:`~softmaxkit.quant.SoftmaxBinarizer` with ``per_row=True``
  (its threshold is a per-row maximum); the class attribute ``elementwise`` says which.
* **Forward.** Quantize-dequantize, with a straight-through gradient: the gradient with
  respect to the input is 1 where the input lies inside the quantizer's representable
  range and 0 where it is clipped (each class states its range; the binarizer passes the
  gradient everywhere, as BiViT's code does). The STE is built only when a gradient is
  needed, so inference pays for the quantize-dequantize alone.
* **Codes.** ``quantize(x)`` returns the integer codes (``uint8`` when every code fits,
  else ``int16``; :attr:`Quantizer.code_dtype`), ``dequantize(codes)`` maps them back, and
  ``dequantize(quantize(x), dtype=x.dtype)`` equals ``forward(x)`` bit for bit (the
  forward pass is literally decode(encode(x))).
* **Zero.** A zero probability is quantized to exactly zero by every quantizer.
* **State.** Fitted parameters, the ``calibrated`` flag and the running statistics are
  buffers, so ``state_dict()`` / ``load_state_dict()`` round-trip a calibrated quantizer.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import HALF_DTYPES, upcast

#: default cap on the calibration subsample (entries)
MAX_SAMPLES = 1 << 20
#: default cap on the part of the subsample the grid searches (AdaLog, FP) evaluate
SEARCH_SAMPLES = 1 << 16
#: torch.quantile accepts at most this many entries
_QUANTILE_LIMIT = 1 << 24


def check_nonnegative(name: str, value: torch.Tensor) -> torch.Tensor:
    """Entries >= 0 (NaN fails), read in one pass (a minimum) on CPU outside
    ``torch.compile`` only (elsewhere reading them would synchronise the device)."""
    if not v.readable(value):
        return value
    low = value.detach().min()
    if not bool(low >= 0):
        bad = value.detach()[~(value.detach() >= 0)].flatten()[0].item()
        raise ValueError(f"{name} must hold probabilities (all entries >= 0, no NaN), got {bad:g}")
    return value


def check_bits(value: Any, low: int, high: int) -> int:
    return v.check_int("bits", value, low=low, high=high)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error (the searches' objective, as in RepQ-ViT's ``lp_loss``)."""
    return (x - y).pow_(2).mean()


class Quantizer(nn.Module, abc.ABC):
    r"""Base class of the post-softmax quantizers: the calibration protocol, the
    straight-through forward, integer codes and their exact inverse.

    A subclass implements :meth:`_fit` (parameters from the statistics),
    :meth:`_encode` (float codes of a compute-dtype tensor), :meth:`_decode` (values of
    float codes) and :meth:`_inside` (where the straight-through gradient is 1). See the
    module docstring for the conventions.

    Args:
        bits: code width (validated by each subclass for the range its paper allows).
        max_samples: cap on the calibration subsample (default :math:`2^{20}`, at most
            :math:`2^{24}`, torch.quantile's limit).
        seed: seed of the subsample's random keys.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import UniformQuantizer
        >>> q = UniformQuantizer(4)
        >>> q.start_calibration()
        >>> _ = q(torch.tensor([0.0, 0.5, 1.0]))  # accumulates, returns the input
        >>> q.finish_calibration()
        >>> q(torch.tensor([0.0, 0.1, 1.0]))
        tensor([0.0000, 0.1333, 1.0000])
        >>> q.quantize(torch.tensor([0.0, 0.1, 1.0]))
        tensor([ 0,  2, 15], dtype=torch.uint8)
    """

    calibrated: torch.Tensor
    observed_min: torch.Tensor
    observed_max: torch.Tensor
    observed_count: torch.Tensor

    #: applying the calibrated quantizer to blocks equals applying it to the whole tensor
    elementwise: bool = True
    #: the largest integer code (set by each subclass from its bits)
    max_code: int = 255

    def __init__(self, bits: int, *, max_samples: int = MAX_SAMPLES, seed: int = 0) -> None:
        super().__init__()
        self.bits = bits
        self.max_samples = v.check_int("max_samples", max_samples, low=1, high=_QUANTILE_LIMIT)
        self.seed = v.check_int("seed", seed)
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("observed_min", torch.tensor(math.inf, dtype=torch.float64))
        self.register_buffer("observed_max", torch.tensor(-math.inf, dtype=torch.float64))
        self.register_buffer("observed_count", torch.tensor(0, dtype=torch.int64))
        self._calibrating = False
        self._ready = False  # python mirror of ``calibrated`` (no device sync per call)
        self._sample: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._generator: torch.Generator | None = None
        # the hook registration is unannotated in torch (module method, not excluded)
        self.register_load_state_dict_post_hook(_after_load)  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ calibration
    @property
    def calibrating(self) -> bool:
        """True between :meth:`start_calibration` and :meth:`finish_calibration`."""
        return self._calibrating

    @property
    def code_dtype(self) -> torch.dtype:
        """The dtype of :meth:`quantize`'s codes: uint8 when every code fits, else int16."""
        return torch.uint8 if self.max_code <= 255 else torch.int16

    def start_calibration(self) -> None:
        """Reset the statistics and enter calibration mode (calls accumulate and return
        their input unchanged; an earlier fit stays in place, for :meth:`quantize`, until
        :meth:`finish_calibration` replaces it)."""
        self.observed_min.fill_(math.inf)
        self.observed_max.fill_(-math.inf)
        self.observed_count.zero_()
        self._sample = self._keys = self._generator = None
        self._reset_statistics()
        self._calibrating = True

    def finish_calibration(self) -> None:
        """Fit the parameters from everything seen since :meth:`start_calibration` and
        leave calibration mode. Raises ``RuntimeError`` if not calibrating or if no
        data was seen."""
        if not self._calibrating:
            raise RuntimeError(
                f"{type(self).__name__}.finish_calibration() called without "
                "start_calibration() first"
            )
        if int(self.observed_count) == 0:
            raise RuntimeError(
                f"{type(self).__name__} saw no data during calibration: call it on at least "
                "one non-empty tensor between start_calibration() and finish_calibration()"
            )
        sample = self._sample
        assert sample is not None  # observed_count > 0: _observe kept a sample
        with torch.no_grad():
            self._fit(sample)
        self.calibrated.fill_(True)
        self._ready = True
        self._sync()
        self._calibrating = False
        self._sample = self._keys = self._generator = None

    def abort_calibration(self) -> None:
        """Leave calibration mode without fitting (the statistics are dropped; an earlier
        fit, if any, stays)."""
        self._calibrating = False
        self._sample = self._keys = self._generator = None

    def _subsample(self, sample: torch.Tensor, count: int) -> torch.Tensor:
        """A uniform random subset of at most ``count`` entries of the calibration
        subsample (the entries of smallest random key), for the costlier searches."""
        if sample.numel() <= count or self._keys is None:
            return sample
        return sample[torch.topk(self._keys, count, largest=False).indices]

    def _sync(self) -> None:
        """Hook: refresh python copies of the parameter buffers (after a fit or a
        ``load_state_dict``), so the forward pass reads no buffer value."""

    def _reset_statistics(self) -> None:
        """Hook: reset subclass statistics (buffers) at :meth:`start_calibration`."""

    def _observe_extra(self, x: torch.Tensor) -> None:
        """Hook: accumulate subclass statistics from a compute-dtype tensor."""

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1)
        if flat.numel() == 0:
            return
        low, high = torch.aminmax(flat)
        self.observed_min.clamp_(max=low.to(torch.float64))
        self.observed_max.clamp_(min=high.to(torch.float64))
        self.observed_count.add_(flat.numel())
        self._observe_extra(x.detach())
        if self._generator is None:
            self._generator = torch.Generator(device=flat.device).manual_seed(self.seed)
        keys = torch.rand(flat.numel(), generator=self._generator, device=flat.device)
        values = flat.to(torch.float64)
        if self._sample is not None:
            assert self._keys is not None  # kept with the sample
            values = torch.cat([self._sample, values])
            keys = torch.cat([self._keys, keys])
        if values.numel() > self.max_samples:  # keep the bottom-k keys: a uniform sample
            keys, index = torch.topk(keys, self.max_samples, largest=False, sorted=False)
            values = values[index]
        self._sample, self._keys = values, keys

    @abc.abstractmethod
    def _fit(self, sample: torch.Tensor) -> None:
        """Set the parameters from the float64 subsample and the running statistics."""

    # ------------------------------------------------------------------ the map
    @abc.abstractmethod
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float codes (integers in [0, max_code]) of ``x`` (compute dtype, >= 0)."""

    @abc.abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Values of float codes, in the codes' dtype."""

    @abc.abstractmethod
    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor | None:
        """Where the straight-through gradient is 1 (a boolean tensor), None = everywhere."""

    def _check_ready(self) -> None:
        if not self._ready:
            raise RuntimeError(
                f"{type(self).__name__} is not calibrated: calibrate it first with "
                "softmaxkit.quant.calibrate(model, data), or start_calibration(), calls on "
                "calibration data, then finish_calibration()"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Calibration mode: accumulate statistics and return ``input`` unchanged.
        Otherwise: quantize-dequantize ``input`` with a straight-through gradient."""
        v.check_floating("input", input)
        check_nonnegative("input", input)
        if self._calibrating:
            self._observe(upcast(input))
            return input
        self._check_ready()
        x = upcast(input)
        codes = self._encode(x.detach())
        out = self._decode(codes)
        if input.requires_grad and torch.is_grad_enabled():
            inside = self._inside(x.detach(), codes)
            ste = x - x.detach()  # exactly 0, carrying the gradient of x
            out = out + (ste if inside is None else ste * inside)
        return out.to(input.dtype)

    def quantize(self, input: torch.Tensor) -> torch.Tensor:
        """The integer codes of ``input`` (:attr:`code_dtype`), not differentiable."""
        v.check_floating("input", input)
        check_nonnegative("input", input)
        self._check_ready()
        return self._encode(upcast(input.detach())).to(self.code_dtype)

    def dequantize(self, codes: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values of integer ``codes`` in ``dtype`` (default float32; float16/bfloat16
        are decoded in float32, float64 in float64), exactly the forward pass's values."""
        v.check_tensor("codes", codes)
        if codes.is_floating_point() or codes.dtype == torch.bool or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        dtype = torch.float32 if dtype is None else v.check_floating_dtype("dtype", dtype)
        self._check_ready()
        if codes.device.type == "cpu" and codes.numel() and not torch.compiler.is_compiling():
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high > self.max_code:
                raise ValueError(
                    f"codes must lie in [0, {self.max_code}], got {low if low < 0 else high}"
                )
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        return self._decode(codes.to(compute)).to(dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, calibrated={bool(self.calibrated)}"


def lookup(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``table[codes]`` for float codes holding integers (an int32 gather)."""
    index = codes.reshape(-1).to(torch.int32)
    return table.index_select(0, index).view(codes.shape)


def _after_load(module: Quantizer, incompatible: Any) -> None:
    module._ready = bool(module.calibrated)
    module._sync()


def compute_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64, everything else is computed in float32."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def quantile(sample: torch.Tensor, q: float) -> float:
    """The ``q``-quantile of a float64 sample (linear interpolation, numpy's default)."""
    return float(torch.quantile(sample, q))


def check_candidates(name: str, value: Any) -> tuple[float, ...]:
    """A non-empty tuple of quantile levels in (0, 1]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(
            f"{name} must be a number or a non-empty sequence of numbers, got {value!r}"
        )
    return tuple(v.check_number(name, p, low=0.0, high=1.0, low_open=True) for p in value)


def best_by_mse(
    sample: torch.Tensor, candidates: Iterable[Any], apply: Callable[[Any], torch.Tensor]
) -> Any:
    """The candidate whose ``apply(candidate)`` (a fake-quantized ``sample``) has the
    smallest MSE to ``sample``; the first one wins ties (strict ``<``, as in RepQ-ViT)."""
    best, best_score = None, math.inf
    for candidate in candidates:
        score = float(mse(apply(candidate), sample))
        if score < best_score:
            best, best_score = candidate, score
    return best


@torch.no_grad()
def calibrate(
    model: nn.Module,
    data: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> nn.Module:
    r"""Calibrate every :class:`Quantizer` inside ``model`` on ``data``.

    Each quantizer's :meth:`~Quantizer.start_calibration` is called, then
    ``forward(model, batch)`` (default ``model(batch)``) runs for every batch of ``data``
    under ``torch.no_grad()`` with the model in eval mode, then every
    :meth:`~Quantizer.finish_calibration`. The train/eval mode of every submodule is
    restored afterwards; if a batch raises, the quantizers leave calibration mode
    unfitted and the error propagates.

    Args:
        model: a module containing at least one quantizer (it may be one itself).
        data: an iterable of batches (a list, a DataLoader, a generator).
        forward: ``forward(model, batch)`` for batches that are not a single positional
            input (e.g. ``lambda m, b: m(*b)``).

    Returns:
        ``model``, calibrated.

    Example:
        >>> import torch
        >>> from softmaxkit import quant
        >>> model = torch.nn.Sequential(torch.nn.Softmax(-1), quant.LogSqrt2Quantizer(4))
        >>> batches = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i))
        ...            for i in range(3)]
        >>> _ = quant.calibrate(model, batches)
        >>> bool(model[1].calibrated)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of batches, got {type(data).__name__}")
    if forward is not None:
        v.check_callable("forward", forward)
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    if not quantizers:
        raise ValueError("model must contain at least one softmaxkit.quant.Quantizer, got none")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for q in quantizers:
            q.start_calibration()
        for batch in data:
            if forward is None:
                model(batch)
            else:
                forward(model, batch)
    except BaseException:
        for q in quantizers:
            q.abort_calibration()
        raise
    finally:
        for m, training in modes.items():
            m.training = training
    for q in quantizers:
        q.finish_calibration()
    return model
