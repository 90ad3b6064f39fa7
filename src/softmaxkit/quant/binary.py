"""BiViT's softmax-aware binarization of attention probabilities."""

from __future__ import annotations

import torch

from softmaxkit import _validation as v
from softmaxkit.quant.base import MAX_SAMPLES, Quantizer


class SoftmaxBinarizer(Quantizer):
    r"""Softmax-aware binarization (BiViT): 1 for probabilities at least a fraction of the
    row's largest, 0 for the long tail.

    .. math::
        \hat p_{ij} = \mathbb 1\big[p_{ij} \ge \rho \max_k p_{ik}\big]\ \mathbb 1[p_{ij} > 0],
        \qquad \rho = 0.25,

    a 1-bit code per entry (``uint8`` 0 or 1). Unlike sign binarization, the threshold
    follows the data: a peaky row keeps its few large entries, a flat row keeps many.
    He et al., "BiViT: Extremely Compressed Binary Vision Transformers", ICCV 2023,
    arXiv 2211.07091; the rule and :math:`\rho = 0.25` are the released code's
    (ThisisBillhe/BiViT, ``binary_modules/utils_quant.py::SoftmaxBinaryQuantizer``, used
    by ``BiAttention_SAB``), whose output is the 0/1 matrix itself, multiplied by V.

    Straight-through gradient: the identity everywhere, as in the official attention
    (``binary.detach() - p.detach() + p``).

    ``per_row=True`` (default) is the official rule: the threshold is the row's own
    maximum along ``dim``, so the binarizer is **not element-wise** (``elementwise`` is
    False: it must see whole rows, so blocked attention must not call it per key block)
    and needs no calibration (it is calibrated from construction; calibration calls pass
    through). ``per_row=False`` is softmaxkit's element-wise variant for blocked use: the
    threshold is :math:`\rho` times the mean row maximum seen during calibration (rows
    along ``dim``; calibrate on whole rows), one number per tensor.

    Deliberate differences from the official code: the official quantizer takes the
    logits and applies the softmax itself, this one takes the probabilities; a zero
    probability stays 0 (the official rule maps an all-zero row, e.g. a fully masked one,
    to all ones since :math:`0 \ge 0.25 \cdot 0`).

    Args:
        ratio: :math:`\rho` in (0, 1] (default 0.25, the official value).
        per_row: the official per-row threshold (default) or the calibrated per-tensor one.
        dim: the row axis (default -1, the keys).
        max_samples, seed: unused by the threshold; kept for the common protocol.

    Shape: any; output of the input's shape and dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.quant import SoftmaxBinarizer
        >>> SoftmaxBinarizer()(torch.tensor([[0.6, 0.2, 0.15, 0.05], [0.3, 0.3, 0.3, 0.1]]))
        tensor([[1., 1., 1., 0.],
                [1., 1., 1., 1.]])
    """

    threshold: torch.Tensor
    row_max_sum: torch.Tensor
    row_count: torch.Tensor

    def __init__(
        self,
        ratio: float = 0.25,
        *,
        per_row: bool = True,
        dim: int = -1,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
    ) -> None:
        super().__init__(1, max_samples=max_samples, seed=seed)
        self.ratio = v.check_number("ratio", ratio, low=0.0, high=1.0, low_open=True)
        self.per_row = v.check_bool("per_row", per_row)
        self.elementwise = not self.per_row
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r} ({type(dim).__name__})")
        self.dim = dim
        self.max_code = 1
        self.register_buffer("threshold", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("row_max_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("row_count", torch.tensor(0, dtype=torch.int64))
        if self.per_row:  # nothing to calibrate
            self.calibrated.fill_(True)
            self._ready = True
        self._sync()

    def _sync(self) -> None:
        self._threshold = float(self.threshold)

    def _reset_statistics(self) -> None:
        self.row_max_sum.zero_()
        self.row_count.zero_()

    def _observe_extra(self, x: torch.Tensor) -> None:
        if x.ndim == 0:
            x = x.reshape(1)
        v.check_dim("dim", self.dim, x.ndim)
        row_max = x.amax(dim=self.dim)
        self.row_max_sum.add_(row_max.sum(dtype=torch.float64))
        self.row_count.add_(row_max.numel())

    def _fit(self, sample: torch.Tensor) -> None:
        rows = int(self.row_count)
        mean_max = float(self.row_max_sum) / rows if rows else 0.0
        self.threshold.fill_(self.ratio * mean_max)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_row:
            v.check_dim("dim", self.dim, x.ndim)
            if x.numel() == 0:
                return torch.zeros_like(x)
            top = x if x.ndim == 0 else x.amax(dim=self.dim, keepdim=True)
            threshold: torch.Tensor | float = top * self.ratio
        else:
            threshold = self._threshold
        return ((x >= threshold) & (x > 0)).to(x.dtype)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.clone()

    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        return None

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, per_row={self.per_row}, dim={self.dim}"
