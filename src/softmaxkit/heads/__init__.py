"""Output layers that replace a plain linear + softmax: the fused linear + cross-entropy, the
spherical exact-gradient layer, VQ-Logits, kNN-LM, the Fourier Head, TempNet's per-input
temperature, the cosine and equiangular-basis classifiers, and the Sparse-CBM concept
bottleneck."""

from softmaxkit.heads.concept import ConceptBottleneck, concept_matrix_search
from softmaxkit.heads.cosine import CosineHead
from softmaxkit.heads.equiangular import EquiangularHead, equiangular_basis
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
    "linear_cross_entropy",
    "LinearCrossEntropy",
    "LinearCrossEntropyExtras",
    "SphericalOutputLayer",
    "VQLogits",
    "kmeans",
    "KMeansResult",
    "KNNLM",
    "FourierHead",
    "TempNet",
    "CosineHead",
    "equiangular_basis",
    "EquiangularHead",
    "ConceptBottleneck",
    "concept_matrix_search",
]
