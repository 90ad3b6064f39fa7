"""Calibration: metrics, post-hoc scaling, the correctness-aware calibrator, transforms, plots.

Metrics (``expected_calibration_error``, ``classwise_calibration_error``,
``brier_score``, ``negative_log_likelihood``, ``reliability_curve``) take logits by
default and probabilities with ``from_logits=False``. Scalers (``TemperatureScaling``,
``VectorScaling``, ``MatrixScaling``, ``CorrectnessAwareCalibrator``) follow
``fit(logits, target)`` then ``scaler(logits)``. ``probability_to_possibility`` is the
transform Pi-NeSy uses. Plots need matplotlib (``pip install 'softmaxkit[plot]'``).
"""

from softmaxkit.calibration.correctness import (
    CorrectnessAwareCalibrator,
    CorrectnessAwareLoss,
    correctness_aware_features,
    correctness_aware_loss,
)
from softmaxkit.calibration.metrics import (
    ReliabilityCurve,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from softmaxkit.calibration.plots import plot_confidence_histogram, plot_reliability_diagram
from softmaxkit.calibration.scaling import MatrixScaling, TemperatureScaling, VectorScaling
from softmaxkit.calibration.transforms import POSSIBILITY_METHODS, probability_to_possibility

__all__ = [
    "CorrectnessAwareCalibrator",
    "CorrectnessAwareLoss",
    "MatrixScaling",
    "POSSIBILITY_METHODS",
    "ReliabilityCurve",
    "TemperatureScaling",
    "VectorScaling",
    "brier_score",
    "classwise_calibration_error",
    "correctness_aware_features",
    "correctness_aware_loss",
    "expected_calibration_error",
    "negative_log_likelihood",
    "plot_confidence_histogram",
    "plot_reliability_diagram",
    "probability_to_possibility",
    "reliability_curve",
]
