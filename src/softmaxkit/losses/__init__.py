"""Training objectives built on the maps of :mod:`softmaxkit.functional`."""

from softmaxkit.losses.stablemax import StableMaxCrossEntropyLoss, stablemax_cross_entropy

__all__ = ["stablemax_cross_entropy", "StableMaxCrossEntropyLoss"]
