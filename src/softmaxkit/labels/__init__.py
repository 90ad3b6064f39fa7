"""Soft labels from crowd annotations.

- :mod:`~softmaxkit.labels.aggregate`: the soft-labelling methods compared by Wright &
  Augenstein (arXiv:2212.09409) -- vote fractions, softmax of counts, Dawid-Skene, GLAD,
  MACE, Wawa, ZeroBasedSkill -- and their simple average.
- :mod:`~softmaxkit.labels.top_two`: the two-stage top-two answer and confusion
  inference of Jeong & Chung (ICML 2023, arXiv:2301.00006).

Annotations are an ``(items, annotators)`` integer tensor of class indices with a
``missing`` marker (default ``-1``).
"""

from softmaxkit.labels.aggregate import (
    METHODS,
    DawidSkeneFit,
    aggregate_soft_labels,
    average_soft_labels,
    dawid_skene,
    glad,
    mace,
    softmax_soft_labels,
    standard_soft_labels,
    wawa,
    zero_based_skill,
)
from softmaxkit.labels.top_two import TopTwoResult, top_two_answers, top_two_soft_labels

__all__ = [
    "METHODS",
    "DawidSkeneFit",
    "TopTwoResult",
    "aggregate_soft_labels",
    "average_soft_labels",
    "dawid_skene",
    "glad",
    "mace",
    "softmax_soft_labels",
    "standard_soft_labels",
    "top_two_answers",
    "top_two_soft_labels",
    "wawa",
    "zero_based_skill",
]
