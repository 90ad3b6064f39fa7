"""The OOD scores of ``softmaxkit report``, in one registry.

:data:`OOD_SCORES` maps a score's name (its key in ``report.json``) to an :class:`OODScore`:
the label the page shows, whether it needs features, and how to compute it from a
:class:`ScoreInputs`. The report computes every score of the registry, in its order, so
adding an entry here adds the score to the JSON, the HTML table and the plots. Every score
is "higher = more in-distribution" (the sign of :mod:`softmaxkit.ood`).

Feature scores are fitted on the fit half of the input (features and labels) and score
the evaluation half (in) and the OOD input (out); one that cannot be fitted (a
``ValueError``, e.g. a class absent from the fit half) is reported as skipped, and the
warnings a score gives (e.g. a singular covariance) are kept in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from softmaxkit import ood as O

KNN_K = 50  # Sun et al. 2022 (arXiv:2204.06507), CIFAR-10: k = 50 ...
KNN_BANK = 50_000  # ... for its 50,000 training images; we keep the ratio k / bank


def default_knn_k(bank_size: int) -> int:
    """k of the kNN score: the paper's CIFAR-10 ratio 50 / 50,000, at least 1."""
    return max(1, round(KNN_K * bank_size / KNN_BANK))


@dataclass(frozen=True, kw_only=True)
class ScoreInputs:
    """What a score may use: logits of the in rows (the evaluation half) and of the OOD
    rows; with features on both sides, the fit half's features and labels, the in and OOD
    features, and the kNN score's k."""

    logits_in: torch.Tensor
    logits_out: torch.Tensor
    features_fit: torch.Tensor | None = None
    labels_fit: torch.Tensor | None = None
    features_in: torch.Tensor | None = None
    features_out: torch.Tensor | None = None
    knn_k: int | None = None


Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class OODScore:
    """One score of the report: its label on the page, whether it needs features, and
    ``compute(inputs) -> (scores of the in rows, scores of the OOD rows)``."""

    label: str
    needs_features: bool
    compute: Callable[[ScoreInputs], Pair]


def _of_logits(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[ScoreInputs], Pair]:
    """A logit score applied to the in and the OOD logits."""
    return lambda s: (fn(s.logits_in), fn(s.logits_out))


def _of_features(fit: Callable[[ScoreInputs], Any]) -> Callable[[ScoreInputs], Pair]:
    """A feature detector fitted by ``fit(inputs)``, scoring the in and the OOD features."""

    def compute(s: ScoreInputs) -> Pair:
        detector = fit(s)
        return detector.score(s.features_in), detector.score(s.features_out)

    return compute


def _fit_mahalanobis(s: ScoreInputs) -> O.Mahalanobis:
    assert s.features_fit is not None and s.labels_fit is not None  # a feature score
    return O.Mahalanobis(covariance="ledoit_wolf").fit(s.features_fit, s.labels_fit)


def _fit_knn(s: ScoreInputs) -> O.KNNScore:
    assert s.features_fit is not None and s.knn_k is not None  # a feature score
    return O.KNNScore(k=s.knn_k).fit(s.features_fit)


OOD_SCORES: dict[str, OODScore] = {
    "msp": OODScore("MSP (max softmax probability)", False, _of_logits(O.msp_score)),
    "max_logit": OODScore("max logit", False, _of_logits(O.max_logit_score)),
    "energy": OODScore("energy (T = 1)", False, _of_logits(O.energy_score)),
    # Ledoit-Wolf shrinkage, not the paper's empirical covariance: the fit half is small
    # and features are often dead (ReLU) or outnumber it, which makes the empirical
    # covariance singular (the built-in task: rank 111 of 128, AUROC 0.715 -> 0.808)
    "mahalanobis": OODScore(
        "Mahalanobis (tied covariance, Ledoit-Wolf)",
        True,
        _of_features(_fit_mahalanobis),
    ),
    "knn": OODScore(
        "kNN (normalised features)",
        True,
        _of_features(_fit_knn),
    ),
}

#: name -> label on the page, for every registered score
SCORE_LABELS = {name: score.label for name, score in OOD_SCORES.items()}
