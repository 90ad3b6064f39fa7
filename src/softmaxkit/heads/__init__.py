"""Output layers for large label spaces: the fused linear + cross-entropy, VQ-Logits, kNN-LM."""

from softmaxkit.heads.knnlm import KNNLM
from softmaxkit.heads.linear_ce import (
    LinearCrossEntropy,
    LinearCrossEntropyExtras,
    linear_cross_entropy,
)
from softmaxkit.heads.vq_logits import KMeansResult, VQLogits, kmeans

__all__ = [
    "linear_cross_entropy",
    "LinearCrossEntropy",
    "LinearCrossEntropyExtras",
    "VQLogits",
    "kmeans",
    "KMeansResult",
    "KNNLM",
]
