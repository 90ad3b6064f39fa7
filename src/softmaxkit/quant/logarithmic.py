r"""Log-domain quantizers of post-softmax probabilities: log2 (RepQuant), log-sqrt2 (RepQ-ViT)
and the adaptive-base AdaLog.

One grid for all three: with scale :math:`\Delta` and :math:`k` codes per octave,

.. math::
    c = \operatorname{clamp}\big(\lfloor -k \log_2(x / \Delta) \rceil,\ 0,\ 2^b - 1\big),
    \qquad \hat x = \Delta \, 2^{-c / k},

and :math:`\hat x = 0` where :math:`\lfloor -k \log_2(x/\Delta) \rceil \ge 2^b` (values
below the smallest level, and :math:`x = 0`). ``n_bits`` means one thing in every
quantizer here: :math:`2^b` codes for the non-zero levels, plus the flush-to-zero that
the official codes all have, so the output takes :math:`2^b + 1` values (RepQ-ViT's
:math:`2^b` levels and AdaLog's ``2 * n_levels`` with ``n_levels = 2^(b-1)`` are the same
count). The integer code of a flushed value is :math:`2^b` (so ``uint8`` holds the codes
up to 7 bits and ``int16`` at 8 bits). Values above :math:`\Delta` saturate at code 0.

Straight-through gradient (all three): 1 for inputs that are neither flushed to zero nor
above :math:`\Delta`, 0 there. RepQ-ViT's code has no STE (PTQ only); AdaLog's training
mode rounds with a straight-through ``round`` on the code, whose gradient with respect to
:math:`x` is :math:`\hat x / x` (close to 1) inside the range; we use exactly 1.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit.quant.base import (
    MAX_SAMPLES,
    SEARCH_SAMPLES,
    Quantizer,
    best_by_mse,
    check_bits,
    check_candidates,
    check_nonnegative,
    lookup,
    mse,
    quantile,
)
from softmaxkit.quant.uniform import REPQ_PERCENTILES


class _LogQuantizer(Quantizer):
    """The shared log grid: subclasses give the codes per octave (``_per_octave``) and the
    value of every code (``_level_table``, float64, refreshed by ``_sync``); decoding is a
    lookup in that table (cheaper than an exp2 and a zero mask per entry)."""

    scale: torch.Tensor
    levels: torch.Tensor

    def __init__(self, bits: int, *, max_samples: int, seed: int) -> None:
        super().__init__(check_bits(bits, 2, 8), max_samples=max_samples, seed=seed)
        self.zero_code: int = 2**bits  # the flush-to-zero code
        self.max_code = self.zero_code
        self.register_buffer("scale", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("levels", torch.zeros(self.zero_code + 1, dtype=torch.float64))

    def _level_table(self) -> torch.Tensor:
        codes = torch.arange(self.zero_code + 1, dtype=torch.float64)
        return self._values(codes, float(self.scale), self._per_octave())

    def _sync(self) -> None:
        self.levels = self._level_table().to(self.levels.device)

    @abc.abstractmethod
    def _per_octave(self) -> float:
        """Codes per octave: ``k`` in ``c = round(-k log2(x / scale))``."""

    def _codes(self, x: torch.Tensor, scale: float | torch.Tensor, k: float) -> torch.Tensor:
        # clamp to [0, 2^b]: every code >= 2^b (and +inf from x = 0) lands on the zero code
        return x.div(scale).log2_().mul_(-k).round_().clamp_(0, self.zero_code)

    def _values(self, codes: torch.Tensor, scale: float | torch.Tensor, k: float) -> torch.Tensor:
        out = torch.exp2(codes * (-1.0 / k)).mul_(scale)
        return out.masked_fill_(codes == self.zero_code, 0.0)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._codes(x, self.scale.to(x.dtype), self._per_octave())

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return lookup(self.levels.to(codes.dtype), codes)

    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (x <= self.scale.to(x.dtype)) & (codes != self.zero_code)


class _ScaledLogQuantizer(_LogQuantizer):
    """A log grid whose scale is fixed or chosen among percentile candidates by MSE."""

    def __init__(
        self,
        bits: int,
        *,
        scale: float | None = None,
        percentile: Any = REPQ_PERCENTILES,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__(bits, max_samples=max_samples, seed=seed)
        self.fixed_scale = (
            None if scale is None else v.check_number("scale", scale, low=0.0, low_open=True)
        )
        self.percentile = check_candidates("percentile", percentile)
        if self.fixed_scale is not None:
            self.scale.fill_(self.fixed_scale)

    def _fit(self, sample: torch.Tensor) -> None:
        if self.fixed_scale is not None:
            self.scale.fill_(self.fixed_scale)
            return
        k = self._per_octave()
        candidates = [quantile(sample, p) for p in self.percentile]
        candidates = [c for c in candidates if c > 0]
        best = best_by_mse(
            sample, candidates, lambda d: self._values(self._codes(sample, d, k), d, k)
        )
        if best is None:  # every candidate is 0 (all-zero data): RepQ-ViT's init, the max
            best = float(self.observed_max) if float(self.observed_max) > 0 else 1.0
        self.scale.fill_(best)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={float(self.scale):.6g}"


class Log2Quantizer(_ScaledLogQuantizer):
    r"""Log2 quantizer of post-softmax probabilities (RepQuant's inference quantizer).

    .. math::
        c = \operatorname{clamp}\big(\lfloor -\log_2(x / \Delta) \rceil,\ 0,\ 2^b - 1\big),
        \qquad \hat x = \Delta\, 2^{-c},

    and :math:`\hat x = 0` where :math:`\lfloor -\log_2(x/\Delta) \rceil \ge 2^b`
    (module docstring: the shared log grid, codes, zero and gradient). A multiplication by
    :math:`\hat x` is a bit shift, which is why RepQuant (Li et al., "RepQuant: Towards
    Accurate Post-Training Quantization of Large Transformer Models via Scale
    Reparameterization", 2024, arXiv 2402.05628) uses log2 for softmax at inference.

    RepQuant has no released code and its full text was not reachable here, so the
    quantizer is the log2 rule shared by RepQ-ViT's reparameterised inference form and
    AdaLog's ``Log2Quantizer`` (GoatWu/AdaLog, ``quantizers/logarithm.py``); the scale is
    chosen like RepQ-ViT's log-sqrt2 scale (the percentile candidate of smallest MSE on
    the calibration data) unless ``scale`` fixes it. ``scale=1.0`` is AdaLog's post-softmax
    setting (its scale is fixed at 1 and never searched). AdaLog clamps
    :math:`x/\Delta` to :math:`[10^{-15}, 1]` before the log; we take the log of
    :math:`x/\Delta` itself, so a zero is always flushed to exactly 0.

    Args:
        bits: :math:`b`, 2 to 8.
        scale: a fixed :math:`\Delta > 0`, or ``None`` (default) to calibrate it.
        percentile: candidate quantile levels of :math:`\Delta` (default RepQ-ViT's
            0.999, 0.9999, 0.99999).
        max_samples, seed: the calibration subsample (see :class:`Quantizer`).

    Shape: any; output of the input's shape and dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import Log2Quantizer
        >>> q = Log2Quantizer(2, scale=1.0)
        >>> q.start_calibration(); _ = q(torch.rand(10)); q.finish_calibration()
        >>> q(torch.tensor([0.0, 0.01, 0.2, 0.3, 1.0]))
        tensor([0.0000, 0.0000, 0.2500, 0.2500, 1.0000])
    """

    def _per_octave(self) -> float:
        return 1.0


class LogSqrt2Quantizer(_ScaledLogQuantizer):
    r"""Log-sqrt2 quantizer of post-softmax probabilities (RepQ-ViT).

    .. math::
        c = \operatorname{clamp}\big(\lfloor -2\log_2(x / \Delta) \rceil,\ 0,\ 2^b - 1\big),
        \qquad \hat x = \Delta\, 2^{-c/2}
        = \Delta\, 2^{-\lceil c/2 \rceil}\big(1 + (c \bmod 2)(\sqrt 2 - 1)\big),

    and :math:`\hat x = 0` where :math:`\lfloor -2\log_2(x/\Delta) \rceil \ge 2^b`
    (module docstring: the shared log grid, codes, zero and gradient). The right-hand
    form is the paper's reparameterisation into log2 plus a shift for inference; we
    compute :math:`\Delta 2^{-c/2}` directly (the tests check the identity). :math:`\Delta`
    is the quantile of the calibration data at 0.999, 0.9999 or 0.99999, whichever gives
    the smallest mean-squared error, as in the official code (Li et al., "RepQ-ViT: Scale
    Reparameterization for Post-Training Quantization of Vision Transformers", ICCV 2023,
    arXiv 2212.08254; zkkli/RepQ-ViT, ``classification/quant/quantizer.py``).

    Deliberate differences from the official code: the candidates' quantiles are computed
    on the calibration subsample in torch (exact while the data fit in ``max_samples``;
    the code falls back to numpy above torch.quantile's 16M-entry limit); the code
    calibrates on its first batch only, we on everything seen during calibration; the
    code has no STE (PTQ only), ours is the one of the module docstring.

    Args:
        bits: :math:`b`, 2 to 8 (the code's range).
        scale: a fixed :math:`\Delta > 0`, or ``None`` (default) to calibrate it.
        percentile: candidate quantile levels of :math:`\Delta`.
        max_samples, seed: the calibration subsample (see :class:`Quantizer`).

    Shape: any; output of the input's shape and dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import LogSqrt2Quantizer
        >>> q = LogSqrt2Quantizer(3, scale=1.0)
        >>> q.start_calibration(); _ = q(torch.rand(10)); q.finish_calibration()
        >>> q(torch.tensor([0.0, 0.5, 0.7, 1.0]))
        tensor([0.0000, 0.5000, 0.7071, 1.0000])
        >>> q.quantize(torch.tensor([0.0, 0.5, 0.7, 1.0]))
        tensor([8, 2, 1, 0], dtype=torch.uint8)
    """

    def _per_octave(self) -> float:
        return 2.0


#: AdaLog's fixed denominator of the base exponent (``AdaLogQuantizer.r``)
ADALOG_R = 37


class AdaLogQuantizer(_LogQuantizer):
    r"""AdaLog: a log quantizer with an adaptive base, searched on calibration data.

    The base is :math:`2^{q/r}` with :math:`r = 37` fixed and the integer :math:`q`
    searched (:math:`q = 37` is log2, :math:`q \approx 18.5` log-sqrt2):

    .. math::
        c = \operatorname{clamp}\Big(\Big\lfloor -\frac{r}{q}\log_2 \frac{x}{s} \Big\rceil,
        \ 0,\ 2^b - 1\Big)

    and :math:`\hat x = 0` where the rounded code is :math:`\ge 2^b`. The value of a code
    depends on ``mode``:

    * ``"hardware"`` (default; the official eval mode and the search's form): a shift
      and a :math:`(b+1)`-bit mantissa from two tables,
      :math:`\hat x = s\, 2^{-\lfloor cq/r \rfloor}\,
      \lfloor 2^{-((qc) \bmod r)/r}(2^{b+1} - 2) \rceil / (2^{b+1} - 2)`;
    * ``"simulated"`` (the official training mode): :math:`\hat x = s\,2^{-cq/r}`.

    The two differ by the mantissa rounding; pin the mode you test. In ``"hardware"`` mode
    quantizing is not idempotent: a level's rounded mantissa can fall below the next code's boundary
    (at 2 bits with :math:`q = 10`, code 3 decodes to 0.5, which encodes as code 4, i.e. zero), as
    in the official tables; ``"simulated"`` levels are fixed points. Calibration searches :math:`q
    \in \{10, \dots, 10 + n_{eq} - 1\}` (the official effective grid: the code builds :math:`n_{eq}
    + 1` candidates and evaluates the first :math:`n_{eq}`) for the smallest error, with
    :math:`n_{eq} = 128` (the official 3/4/6-bit configs; the class default is 100). The scale
    :math:`s` of post-softmax inputs is fixed at 1 and never searched, as in the official code. Wu
    et al., "AdaLog: Post-Training Quantization for Vision Transformers with Adaptive Logarithm
    Quantizer", ECCV 2024, arXiv 2407.12951; GoatWu/AdaLog, ``quantizers/logarithm.py`` and
    ``quant_layers/matmul.py``.

    Bits: :math:`b` means :math:`2^b` codes, as everywhere in ``softmaxkit.quant``; the
    official code writes ``n_levels = 2^(b-1)`` and clamps to ``2 * n_levels - 1``, the
    same :math:`2^b - 1`.

    Deliberate differences from the official code:

    * the search minimises the mean-squared error of the probabilities themselves (on a
      random :math:`2^{16}`-entry part of the calibration subsample, ``search_samples``);
      the official objective is output-aware, the error of :math:`A_q V_q` against the
      float :math:`A V` (V quantized by the matmul's other quantizer), which a quantizer
      that sees only :math:`A` cannot compute. There is no V quantizer to
      alternate with, so one search round replaces the config's three, and FPCS (which
      the official code runs for V's uniform scale, not for :math:`q`) has nothing to
      search here;
    * no clamp of :math:`x/s` to :math:`10^{-15}` before the log: a zero is always flushed
      to exactly 0 (the official code keeps it at a tiny level when the code of
      :math:`10^{-15}` fits in :math:`2^b` codes, e.g. at 8 bits with small :math:`q`);
    * the straight-through gradient is the module docstring's (the official training mode
      uses a straight-through round, gradient :math:`\hat x / x`).

    Args:
        bits: :math:`b`, 2 to 8.
        mode: ``"hardware"`` (default) or ``"simulated"``.
        eq_n: the number of base candidates (default 128, the official configs).
        base_q: a fixed integer :math:`q \ge 1` (no search), or ``None`` (default).
        search_samples: how many calibration entries the search evaluates (default
            :math:`2^{16}`, a uniform random part of the subsample).
        max_samples, seed: the calibration subsample (see :class:`Quantizer`).

    Shape: any; output of the input's shape and dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import AdaLogQuantizer
        >>> q = AdaLogQuantizer(4, base_q=37)  # q = r: the log2 grid
        >>> q.start_calibration(); _ = q(torch.rand(10)); q.finish_calibration()
        >>> q(torch.tensor([0.0, 0.125, 0.3, 1.0]))
        tensor([0.0000, 0.1250, 0.2500, 1.0000])
    """

    q: torch.Tensor

    r = ADALOG_R

    def __init__(
        self,
        bits: int,
        *,
        mode: str = "hardware",
        eq_n: int = 128,
        base_q: int | None = None,
        search_samples: int = SEARCH_SAMPLES,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__(bits, max_samples=max_samples, seed=seed)
        self.mode = v.check_choice("mode", mode, ("hardware", "simulated"))
        self.eq_n = v.check_int("eq_n", eq_n, low=1, high=4096)
        self.fixed_q = None if base_q is None else v.check_int("base_q", base_q, low=1)
        self.search_samples = v.check_int("search_samples", search_samples, low=1)
        self.register_buffer("q", torch.tensor(self.r if base_q is None else base_q))
        self._sync()

    def _sync(self) -> None:
        self._q = int(self.q)
        super()._sync()

    def _level_table(self) -> torch.Tensor:
        return self._table(self._q)

    def _per_octave(self) -> float:
        return self.r / self._q

    def _table(self, q: int) -> torch.Tensor:
        """The value of every code for base exponent ``q`` (float64; the last entry, the
        flush-to-zero code, is 0)."""
        codes = torch.arange(self.zero_code + 1, dtype=torch.float64)
        if self.mode == "simulated":
            values = torch.exp2(-(codes * q) / self.r)
        else:
            grid = 2 ** (self.bits + 1) - 2  # the mantissa grid 1 / (4 n_levels - 2)
            shift = torch.div(codes * q, self.r, rounding_mode="floor")
            mantissa = torch.round(torch.exp2(-torch.remainder(codes * q, self.r) / self.r) * grid)
            values = torch.exp2(-shift) * (mantissa / grid)
        values[-1] = 0.0
        return values

    def _fit(self, sample: torch.Tensor) -> None:
        if self.fixed_q is not None:
            best = self.fixed_q
        else:
            sample = self._subsample(sample, self.search_samples)
            octaves = -torch.log2(sample)  # s = 1: the codes are round(octaves * r / q)
            scores = []
            for q in range(10, 10 + self.eq_n):
                scores.append(float(mse(self._fake(octaves, q), sample)))
            best = 10 + min(range(len(scores)), key=scores.__getitem__)
        self.q.fill_(best)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._codes(x, 1.0, self._per_octave())

    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (x <= 1.0) & (codes != self.zero_code)

    def _fake(self, octaves: torch.Tensor, q: int) -> torch.Tensor:
        """The quantized probabilities for base exponent ``q``, from ``-log2(p)``."""
        codes = (octaves * (self.r / q)).round_().clamp_(0, self.zero_code).long()
        return self._table(q).to(octaves.dtype)[codes]

    @torch.no_grad()
    def fit_output_aware(
        self,
        probs: torch.Tensor,
        values: torch.Tensor,
        *,
        value_bits: int | None = None,
        search_round: int = 3,
        fpcs: bool = True,
        steps: int = 6,
    ) -> tuple[float, float] | None:
        r"""The official output-aware search: the base of ``probs`` (and, with
        ``value_bits``, the uniform quantizer of ``values``) minimising the error of the
        attention output against the float :math:`A V`.

        With :math:`A` = ``probs`` (..., L, S) and :math:`V` = ``values`` (..., S, E):
        :math:`q^* = \arg\min_q \operatorname{mean}\big((A V - A_q V_q)^2\big)` over
        :math:`q \in \{10, \dots, 10 + n_{eq} - 1\}`, where :math:`V_q` is V quantized by
        its uniform quantizer (or V itself when ``value_bits`` is None). With
        ``value_bits``, V's asymmetric uniform quantizer
        :math:`V_q = (\operatorname{clamp}(\lfloor V/s \rceil + z, 0, 2^{b_v} - 1) - z)s`
        starts at the second-to-last percentile candidate and each of ``search_round``
        rounds searches :math:`q`, then :math:`(s, z)` by FPCS (fast progressive
        combining search: 16 zero points around :math:`2^{b_v - 1}` times
        :math:`n_{eq}/16` scales between the (0.1, 0.9)- and (0, 1)-quantile ranges, keep
        the best 16, refine each scale ``steps - 1`` times by :math:`n_{eq}/16` offsets
        around it, halving the spread, keep the best 1 at the end), or a plain grid over
        the candidates with ``fpcs=False``. As GoatWu/AdaLog's
        ``PostSoftmaxAsymmetricallyBatchingQuantMatMul.hyperparameter_searching`` with
        the 3/4/6-bit configs (``search_round`` 3, ``steps`` 6, ``eq_n`` 128), except:
        V's quantizer is per tensor (the official one is per head) and quantiles are taken
        over all of V at once (the official code averages them over mini-batches). As in
        the official code, the refinement offsets :math:`(\mathrm{linspace}(0, 1, n) -
        0.5)\delta` skip the kept scale itself when :math:`n` is even, so FPCS can end
        slightly worse than the plain grid.

        The quantizer is calibrated on return (``base_q`` of the constructor is ignored).

        Returns:
            ``(scale, zero_point)`` of V's quantizer, or None without ``value_bits``.

        Example:
            >>> import torch
            >>> from softmaxkit.quant import AdaLogQuantizer
            >>> g = torch.Generator().manual_seed(0)
            >>> a = torch.randn(2, 16, 16, generator=g).softmax(-1)
            >>> v = torch.randn(2, 16, 8, generator=g)
            >>> q = AdaLogQuantizer(4, eq_n=32)
            >>> scale, zero = q.fit_output_aware(a, v, value_bits=4)
            >>> bool(q.calibrated)
            True
        """
        v.check_floating("probs", probs)
        v.check_floating("values", values)
        check_nonnegative("probs", probs)
        if probs.ndim < 2 or values.ndim < 2 or probs.shape[-1] != values.shape[-2]:
            raise ValueError(
                f"values must have shape (..., S, E) with S = probs.shape[-1], got probs "
                f"{tuple(probs.shape)} and values {tuple(values.shape)}"
            )
        if value_bits is not None:
            v.check_int("value_bits", value_bits, low=2, high=8)
        v.check_int("search_round", search_round, low=1)
        v.check_bool("fpcs", fpcs)
        v.check_int("steps", steps, low=1)
        a, vals = probs.double(), values.double()
        raw, octaves = a @ vals, -torch.log2(a)
        grid = list(range(10, 10 + self.eq_n))

        def out_error(a_sim: torch.Tensor, v_sim: torch.Tensor) -> float:
            return float(mse(a_sim @ v_sim, raw))

        def search_q(v_sim: torch.Tensor) -> int:
            scores = [out_error(self._fake(octaves, q), v_sim) for q in grid]
            return grid[min(range(len(grid)), key=scores.__getitem__)]

        if value_bits is None:
            best_q, result = search_q(vals), None
        else:
            top = 2**value_bits - 1

            def v_sim(scale: float, zero: float) -> torch.Tensor:
                return (vals / scale).round_().add_(zero).clamp_(0, top).sub_(zero).mul_(scale)

            scales, zeros = _value_candidates(vals, value_bits, self.eq_n)
            state = (scales[-2], zeros[-2])
            for _ in range(search_round):
                best_q = search_q(v_sim(*state))
                a_q = self._fake(octaves, best_q)

                def err(pair: tuple[float, float], a_q: torch.Tensor = a_q) -> float:
                    return out_error(a_q, v_sim(*pair))

                pairs = list(zip(scales, zeros))
                if not fpcs:
                    state = min(pairs, key=err)
                    continue
                width, count = 16, max(self.eq_n // 16, 1)
                spread = scales[1] - scales[0] if len(scales) > 1 else scales[0]
                kept = sorted(pairs, key=err)[:width]
                for step in range(steps - 1):
                    offsets = [(i / max(count - 1, 1) - 0.5) * spread for i in range(count)]
                    spread /= count - 0.5
                    pairs = [(s + o, z) for s, z in kept for o in offsets]
                    kept = sorted(pairs, key=err)[: 1 if step == steps - 2 else width]
                state = kept[0]
            result = (float(state[0]), float(state[1]))
        self.q.fill_(best_q)
        self.calibrated.fill_(True)
        self._ready = True
        self._sync()
        return result

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}, q={self._q}, r={self.r}"


def _value_candidates(
    values: torch.Tensor, bits: int, eq_n: int
) -> tuple[list[float], list[float]]:
    """AdaLog's ``calculate_percentile_candidates`` for V (per tensor): ``num_zp = min(16,
    2^(b-1))`` zero points centred on :math:`2^{b-1}` times ``eq_n // num_zp`` scales from
    the (0.1, 0.9)-quantile range to the (0, 1) range, over :math:`2^b - 1`; zero points
    vary slowest (scale index fastest), as the official ``repeat`` / ``repeat_interleave``."""
    flat = values.reshape(-1)
    if flat.numel() > 1 << 24:  # torch.quantile's limit
        flat = flat[
            torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 24]
        ]
    levels = 2 ** (bits - 1)
    num_zp = min(16, levels)
    num_scale = max(eq_n // num_zp, 1)
    q = torch.quantile(flat, torch.tensor([0.1, 0.9, 0.0, 1.0], dtype=flat.dtype))
    low_range, high_range = float(q[1] - q[0]), float(q[3] - q[2])
    steps = [i / max(num_scale - 1, 1) for i in range(num_scale)]
    scales = [(low_range + t * (high_range - low_range)) / (2**bits - 1) for t in steps]
    zeros = range(int(levels - num_zp / 2), int(levels + num_zp / 2))
    pairs = [(s, float(z)) for z in zeros for s in scales]
    return [p[0] for p in pairs], [p[1] for p in pairs]
