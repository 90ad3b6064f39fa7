r"""LLM-FP4's floating-point (ExMy) quantizer with a real-valued exponent bias, applied to
post-softmax probabilities."""

from __future__ import annotations

import math

import torch

from softmaxkit import _validation as v
from softmaxkit.quant.base import (
    MAX_SAMPLES,
    SEARCH_SAMPLES,
    Quantizer,
    check_bits,
    lookup,
    mse,
)


def mantissa_candidates(bits: int) -> tuple[int, ...]:
    """LLM-FP4's mantissa widths: 0..bits-2 below 8 bits, 2..6 at 8 bits."""
    return tuple(range(2, 7)) if bits == 8 else tuple(range(bits - 1))


def initial_bias(max_value: float, exponent_bits: int, mantissa_bits: int) -> float:
    """The bias that puts the format's largest value at ``max_value``."""
    bias: float = 2**exponent_bits - math.log2(max_value) + math.log2(2 - 2.0**-mantissa_bits) - 1
    return bias


class FPQuantizer(Quantizer):
    r"""Floating-point ExMy quantizer with a real-valued exponent bias (LLM-FP4), searched
    on calibration data.

    With :math:`b = 1 + E + M` bits (sign, exponent, mantissa) and the real bias
    :math:`\beta` acting as the scale:

    .. math::
        m = (2 - 2^{-M})\, 2^{2^E - 1 - \beta}, \quad x_c = \min(x, m), \quad
        e = \max\big(\lfloor \log_2 x_c + \beta \rfloor,\ 1\big), \quad
        \hat x = \Big\lfloor \frac{x_c}{2^{e - M - \beta}} \Big\rceil 2^{e - M - \beta}

    (subnormals share the :math:`e = 1` step; :math:`x = 0` gives 0). The integer code is
    the format's bit pattern without the sign: :math:`(e - 1)2^M + k` with
    :math:`k = \lfloor x_c / 2^{e-M-\beta} \rceil`, in :math:`[0, 2^{b-1} - 1]` (``uint8``);
    probabilities never use the sign bit, so a signed b-bit format has :math:`2^{b-1}`
    levels here, as LLM-FP4's signed format would.

    Calibration follows the official code (nbasyl/LLM-FP4, ``quant_layers/fp_linear.py``):
    for every mantissa width :math:`M` (0 to :math:`b-2` below 8 bits, 2 to 6 at 8 bits),
    the initial bias :math:`\beta_0 = 2^E - \log_2 \max|x| + \log_2(2 - 2^{-M}) - 1` (the
    format's largest value is the largest input seen), then the candidates
    :math:`\beta_0(\alpha + i(\beta_{hi} - \alpha)/n_{eq})` for :math:`i < n_{eq}`, with
    :math:`\alpha = 0.01`, :math:`\beta_{hi} = 1.2`, :math:`n_{eq} = 100` (the official
    config; the :math:`i = n_{eq}` endpoint is built but never evaluated there, and
    ``inclusive=True`` evaluates it), keeping the best bias per format, then the best
    format. Liu et al., "LLM-FP4: 4-Bit Floating-Point Quantized Transformers", EMNLP
    2023, arXiv 2310.16836.

    Straight-through gradient: 1 for :math:`x \le m`, 0 above (clipped). The official
    code is PTQ only.

    Deliberate differences from the official code:

    * the official FP quantizer of the attention matmuls (``FPMinMaxQuantMatMul``) is not
      in the released repository; this applies the released ExMy rule of its linear
      layers' activations to the probabilities, per tensor;
    * the searches minimise the mean-squared error of the probabilities on a random
      :math:`2^{16}`-entry part of the calibration subsample (``search_samples``; the
      search evaluates up to 700 candidates); the official metric is the L2 error of the next linear
      layer's output. With a fixed objective one search round gives the config's three;
    * the official 8-bit format search indexes its per-format bias list with the mantissa
      width (off by two); each format here keeps its own searched bias;
    * the per-channel activation reparameterisation (``_fpq``) does not apply to a
      per-tensor probability quantizer and is not implemented.

    Args:
        bits: :math:`b`, 2 to 8.
        mantissa_bits: a fixed :math:`M` in :math:`[0, b - 2]`, or ``None`` (default) to
            search the format.
        bias: a fixed real :math:`\beta` (needs ``mantissa_bits``), or ``None`` (default)
            to search it.
        eq_n, alpha, beta_hi: the bias grid (defaults 100, 0.01, 1.2: the official config).
        inclusive: also evaluate the grid's endpoint :math:`\beta_0 \beta_{hi}`.
        search_samples: how many calibration entries the search evaluates (default
            :math:`2^{16}`, a uniform random part of the subsample).
        max_samples, seed: the calibration subsample (see :class:`Quantizer`).

    Shape: any; output of the input's shape and dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import FPQuantizer
        >>> q = FPQuantizer(4, mantissa_bits=1, bias=3.0)  # E2M1, largest value 1.5
        >>> q.start_calibration(); _ = q(torch.rand(10)); q.finish_calibration()
        >>> q(torch.tensor([0.0, 0.1, 0.3, 0.7, 2.0]))
        tensor([0.0000, 0.1250, 0.2500, 0.7500, 1.5000])
        >>> q.quantize(torch.tensor([0.0, 0.1, 0.3, 0.7, 2.0]))
        tensor([0, 1, 2, 5, 7], dtype=torch.uint8)
    """

    mantissa_bits: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        bits: int,
        *,
        mantissa_bits: int | None = None,
        bias: float | None = None,
        eq_n: int = 100,
        alpha: float = 0.01,
        beta_hi: float = 1.2,
        inclusive: bool = False,
        search_samples: int = SEARCH_SAMPLES,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__(check_bits(bits, 2, 8), max_samples=max_samples, seed=seed)
        self.fixed_mantissa = (
            None
            if mantissa_bits is None
            else v.check_int("mantissa_bits", mantissa_bits, low=0, high=bits - 2)
        )
        self.fixed_bias = None if bias is None else v.check_number("bias", bias)
        if self.fixed_bias is not None and self.fixed_mantissa is None:
            raise ValueError("bias needs mantissa_bits: a fixed bias belongs to one format")
        self.eq_n = v.check_int("eq_n", eq_n, low=1, high=100_000)
        self.alpha = v.check_number("alpha", alpha)
        self.beta_hi = v.check_number("beta_hi", beta_hi)
        self.inclusive = v.check_bool("inclusive", inclusive)
        self.search_samples = v.check_int("search_samples", search_samples, low=1)
        self.max_code = 2 ** (bits - 1) - 1
        m0 = mantissa_candidates(bits)[0] if mantissa_bits is None else mantissa_bits
        b0 = initial_bias(1.0, bits - 1 - m0, m0) if bias is None else self.fixed_bias
        self.register_buffer("mantissa_bits", torch.tensor(m0))
        self.register_buffer("bias", torch.tensor(b0, dtype=torch.float64))
        self._sync()

    def _sync(self) -> None:
        self._m, self._bias = int(self.mantissa_bits), float(self.bias)
        codes = torch.arange(self.max_code + 1, dtype=torch.float64)
        self._levels = self._values_of(codes, self._m, self._bias).to(self.bias.device)

    @property
    def exponent_bits(self) -> int:
        """:math:`E = b - 1 - M`."""
        return self.bits - 1 - self._m

    @property
    def max_value(self) -> float:
        """The format's largest value :math:`m = (2 - 2^{-M})2^{2^E - 1 - \\beta}`."""
        m, e = self._m, self.exponent_bits
        top: float = (2 - 2.0**-m) * 2.0 ** (2**e - 1 - self._bias)
        return top

    # the map, for any format (the search calls it with candidate formats)
    def _codes_of(self, x: torch.Tensor, m: int, bias: float) -> torch.Tensor:
        e_bits = self.bits - 1 - m
        top = (2 - 2.0**-m) * 2.0 ** (2**e_bits - 1 - bias)
        xc = x.clamp(max=top)
        e = torch.log2(xc).add_(bias).floor_().clamp_(1, 2**e_bits - 1)
        k = xc.div_(torch.exp2(e - (m + bias))).round_()
        codes: torch.Tensor = e.sub_(1).mul_(2**m).add_(k)  # (e - 1) 2^M + k
        return codes

    def _values_of(self, codes: torch.Tensor, m: int, bias: float) -> torch.Tensor:
        e = torch.div(codes, 2**m, rounding_mode="floor").clamp_(min=1)
        k: torch.Tensor = codes - (e - 1) * 2**m
        return k.mul_(torch.exp2(e.sub_(m + bias)))

    def _fit(self, sample: torch.Tensor) -> None:
        if self.fixed_bias is not None:
            self.bias.fill_(self.fixed_bias)
            return
        top = float(self.observed_max)
        top = top if top > 0 else 1.0
        formats = (
            (self.fixed_mantissa,)
            if self.fixed_mantissa is not None
            else mantissa_candidates(self.bits)
        )
        count = self.eq_n + 1 if self.inclusive else self.eq_n
        steps = [self.alpha + i * (self.beta_hi - self.alpha) / self.eq_n for i in range(count)]
        sample = self._subsample(sample, self.search_samples)
        best = (math.inf, formats[0], 0.0)
        for m in formats:
            b0 = initial_bias(top, self.bits - 1 - m, m)
            for step in steps:
                bias = b0 * step
                fake = self._values_of(self._codes_of(sample, m, bias), m, bias)
                score = float(mse(fake, sample))
                if score < best[0]:
                    best = (score, m, bias)
        self.mantissa_bits.fill_(best[1])
        self.bias.fill_(best[2])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        # The codes are the rounded bits of w = min(x, m) 2^(beta - emin) (emin = 127 in
        # float32, 1023 in float64): w's exponent field is the format's e, its mantissa
        # rounded to M bits (round half to even, carrying into the exponent) is k, and
        # the format's subnormal step 2^(1-M-beta) is the dtype's own subnormal grid.
        # Same codes as the official float formula (up to the dtype's last-bit rounding
        # of a tie), in a few integer passes instead of a log2 and an exp2 per entry.
        mantissa_bits, int_type, emin = (
            (23, torch.int32, 127) if x.dtype == torch.float32 else (52, torch.int64, 1023)
        )
        if not 1.0 <= self._bias <= 100.0:  # the shift constant would leave the normal range
            return self._codes_of(x, self._m, self._bias)
        shift = mantissa_bits - self._m
        w = x.clamp(max=self.max_value).mul_(2.0 ** (self._bias - emin))
        bits = w.view(int_type)
        codes = bits.bitwise_right_shift(shift).bitwise_and_(1).add_(bits)
        return codes.add_((1 << (shift - 1)) - 1).bitwise_right_shift_(shift)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        wide = codes.dtype in (torch.float64, torch.int64)  # float64 input or its codes
        levels = self._levels.to(codes.device, torch.float64 if wide else torch.float32)
        return lookup(levels, codes)

    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return x <= self.max_value

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, format=E{self.exponent_bits}M{self._m}, bias={self._bias:.6g}"
        )
