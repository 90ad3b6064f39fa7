"""The uniform (affine) quantizer: the baseline every post-softmax quantizer is compared with."""

from __future__ import annotations

from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit.quant.base import (
    MAX_SAMPLES,
    Quantizer,
    best_by_mse,
    check_bits,
    check_candidates,
    quantile,
)

#: RepQ-ViT's percentile candidates (``classification/quant/quantizer.py``)
REPQ_PERCENTILES = (0.999, 0.9999, 0.99999)


class UniformQuantizer(Quantizer):
    r"""Uniform quantizer of post-softmax probabilities, min-max or percentile calibrated.

    .. math::
        c = \operatorname{clamp}\big(\lfloor x / \Delta \rceil,\ 0,\ 2^b - 1\big),
        \qquad \hat x = c\,\Delta, \qquad \Delta = \frac{h}{2^b - 1}

    with the range's upper end :math:`h` from calibration: ``"minmax"`` takes the largest
    value seen; ``"percentile"`` takes the quantile of the calibration data at the level
    ``percentile`` or, given several levels, the one whose quantizer has the smallest
    mean-squared error on the calibration data (RepQ-ViT's search; default its levels
    0.999, 0.9999, 0.99999). This is the asymmetric ``UniformQuantizer`` of RepQ-ViT
    (Li et al., "RepQ-ViT: Scale Reparameterization for Post-Training Quantization of
    Vision Transformers", ICCV 2023, arXiv 2212.08254), the baseline of every paper here.

    Straight-through gradient: 1 for :math:`x \le (2^b - 1)\Delta`, 0 above (clipped).
    Codes: ``uint8`` in :math:`[0, 2^b - 1]`; zero is code 0.

    Deliberate differences from RepQ-ViT's code: the lower end of the range is 0, not a
    searched lower percentile, so the zero point is 0 and a zero probability stays exactly
    zero (for probabilities RepQ-ViT's lower percentile is ~0 anyway); quantiles are taken
    on the calibration subsample (exact while the data fit in ``max_samples``) in torch,
    without the numpy fallback. If all calibration data are zero, :math:`h = 1`.

    Args:
        bits: :math:`b`, 2 to 8 (RepQ-ViT's range).
        calibration: ``"minmax"`` (default) or ``"percentile"``.
        percentile: a level in (0, 1] or a sequence of candidate levels (used by
            ``"percentile"``; default RepQ-ViT's three).
        max_samples, seed: the calibration subsample (see :class:`Quantizer`).

    Shape: any; output of the input's shape and dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import UniformQuantizer
        >>> q = UniformQuantizer(2)
        >>> q.start_calibration(); _ = q(torch.tensor([0.0, 0.9])); q.finish_calibration()
        >>> q(torch.tensor([0.0, 0.2, 0.5, 0.9]))
        tensor([0.0000, 0.3000, 0.6000, 0.9000])
    """

    scale: torch.Tensor

    def __init__(
        self,
        bits: int,
        *,
        calibration: str = "minmax",
        percentile: Any = REPQ_PERCENTILES,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__(check_bits(bits, 2, 8), max_samples=max_samples, seed=seed)
        self.calibration = v.check_choice("calibration", calibration, ("minmax", "percentile"))
        self.percentile = check_candidates("percentile", percentile)
        self.levels: int = 2**bits - 1
        self.max_code = self.levels
        self.register_buffer("scale", torch.tensor(1.0 / self.levels, dtype=torch.float64))

    def _fit(self, sample: torch.Tensor) -> None:
        high = float(self.observed_max)
        if self.calibration == "percentile":
            highs = [quantile(sample, p) for p in self.percentile]
            if len(highs) > 1:
                high = best_by_mse(sample, highs, lambda h: self._fake(sample, h))
            else:
                high = highs[0]
        if not high > 0:
            high = 1.0
        self.scale.fill_(high / self.levels)

    def _fake(self, x: torch.Tensor, high: float) -> torch.Tensor:
        scale = (high if high > 0 else 1.0) / self.levels
        return x.div(scale).round_().clamp_(0, self.levels).mul_(scale)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.div(self.scale.to(x.dtype)).round_().clamp_(0, self.levels)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.mul(self.scale.to(codes.dtype))

    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return x <= self.scale.to(x.dtype) * self.levels

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, calibration={self.calibration!r}"
