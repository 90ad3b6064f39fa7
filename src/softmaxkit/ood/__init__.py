"""Out-of-distribution scores and metrics.

One sign convention throughout: **a higher score means more in-distribution** (ID).
pytorch-ood's detectors return outlier scores (higher = more OOD), the negation.

- Logit scores: :func:`msp_score`, :func:`max_logit_score`, :func:`energy_score`.
- Feature scores: :class:`Mahalanobis` (with the paper's input pre-processing) and
  :class:`MahalanobisEnsemble`, :class:`KNNScore`, :class:`PrototypeScore` and
  :class:`SSDScore` (PALM). All but the ensemble share one protocol: ``fit(features,
  ...)`` returns the detector, ``score(features)`` gives one score per row (in row blocks
  where memory needs them), scoring before fit raises ``RuntimeError``, and features are
  checked the same way (a floating (samples, features) tensor, as wide as the fit, finite).
- Training: :class:`PALMLoss` (PALM's mixture-of-prototypes loss, returning a
  :class:`PALMLossOutput`), whose encoder features :class:`SSDScore` scores.
- Metrics (ID positive unless stated): :func:`auroc`, :func:`aupr_in`, :func:`aupr_out`,
  :func:`fpr_at_tpr`.
"""

from softmaxkit.ood.knn import KNNScore
from softmaxkit.ood.mahalanobis import (
    NOISE_MAGNITUDES,
    Mahalanobis,
    MahalanobisEnsemble,
    logistic_regression,
)
from softmaxkit.ood.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr
from softmaxkit.ood.palm import PALMLoss, PALMLossOutput
from softmaxkit.ood.prototype import PrototypeScore, SSDScore
from softmaxkit.ood.scores import energy_score, max_logit_score, msp_score

__all__ = [
    "msp_score",
    "max_logit_score",
    "energy_score",
    "Mahalanobis",
    "MahalanobisEnsemble",
    "NOISE_MAGNITUDES",
    "logistic_regression",
    "KNNScore",
    "PrototypeScore",
    "SSDScore",
    "PALMLoss",
    "PALMLossOutput",
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_tpr",
]
