"""The maps: logits -> distribution. Pure functions with module twins."""

from softmaxkit.functional._softmax import LogSoftmax, Softmax, log_softmax, softmax
from softmaxkit.functional.clipped import ClippedSoftmax, clipped_softmax, clipped_softmax_gamma
from softmaxkit.functional.entmax import (
    Entmax15,
    EntmaxBisect,
    Sparsemax,
    entmax15,
    entmax_bisect,
    sparsemax,
)
from softmaxkit.functional.gumbel import GumbelSoftmax, gumbel_softmax
from softmaxkit.functional.spherical import spherical_softmax, taylor_softmax
from softmaxkit.functional.stablemax import LogStableMax, StableMax, log_stablemax, stablemax
from softmaxkit.functional.topk import TopKSoftmax, topk_softmax
from softmaxkit.functional.two_pass import two_pass_log_softmax, two_pass_softmax

__all__ = [
    "softmax",
    "log_softmax",
    "Softmax",
    "LogSoftmax",
    "two_pass_softmax",
    "two_pass_log_softmax",
    "stablemax",
    "log_stablemax",
    "StableMax",
    "LogStableMax",
    "clipped_softmax",
    "clipped_softmax_gamma",
    "ClippedSoftmax",
    "topk_softmax",
    "TopKSoftmax",
    "gumbel_softmax",
    "GumbelSoftmax",
    "sparsemax",
    "entmax15",
    "entmax_bisect",
    "Sparsemax",
    "Entmax15",
    "EntmaxBisect",
    "spherical_softmax",
    "taylor_softmax",
]
