"""Quantizers for post-softmax activations (attention probabilities) and their calibration.

Every quantizer is an ``nn.Module`` with one protocol (:class:`Quantizer`): calibrate
(:func:`calibrate`, or ``start_calibration()`` / calls / ``finish_calibration()``), then the
forward pass is quantize-dequantize with a straight-through gradient; ``quantize()`` gives
the integer codes and ``dequantize()`` maps them back exactly. Inputs are probabilities
(entries >= 0); a zero probability stays exactly zero.

* :class:`UniformQuantizer`: the baseline, min-max or percentile calibrated (RepQ-ViT's).
* :class:`Log2Quantizer` (RepQuant), :class:`LogSqrt2Quantizer` (RepQ-ViT) and
  :class:`AdaLogQuantizer` (AdaLog, adaptive base with its search): log-domain grids.
* :class:`SoftmaxBinarizer`: BiViT's softmax-aware binarization.
* :class:`FPQuantizer`: LLM-FP4's ExMy format with a real exponent bias and its search.
"""

from softmaxkit.quant.base import Quantizer, calibrate
from softmaxkit.quant.binary import SoftmaxBinarizer
from softmaxkit.quant.floating import FPQuantizer
from softmaxkit.quant.logarithmic import AdaLogQuantizer, Log2Quantizer, LogSqrt2Quantizer
from softmaxkit.quant.uniform import UniformQuantizer

__all__ = [
    "Quantizer",
    "calibrate",
    "UniformQuantizer",
    "Log2Quantizer",
    "LogSqrt2Quantizer",
    "AdaLogQuantizer",
    "SoftmaxBinarizer",
    "FPQuantizer",
]
