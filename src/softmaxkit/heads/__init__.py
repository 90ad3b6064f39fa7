"""Output layers for large label spaces: the fused linear + cross-entropy, the spherical
exact-gradient layer, VQ-Logits, kNN-LM."""

from softmaxkit.heads.fourier import FourierHead
from softmaxkit.heads.knnlm import KNNLM
from softmaxkit.heads.linear_ce import (
    LinearCrossEntropy,
    LinearCrossEntropyExtras,
    linear_cross_entropy,
)
from softmaxkit.heads.spherical import SphericalOutputLayer
from softmaxkit.heads.tempnet import TempNet
from softmaxkit.heads.vq_logits import KMeansResult, VQLogits, kmeans

__all__ = [
    "FourierHead",
    "TempNet",
    "linear_cross_entropy",
    "LinearCrossEntropy",
    "LinearCrossEntropyExtras",
    "SphericalOutputLayer",
    "VQLogits",
    "kmeans",
    "KMeansResult",
    "KNNLM",
]
