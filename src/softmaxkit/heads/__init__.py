"""Output layers for large label spaces: the fused linear + cross-entropy, the spherical
exact-gradient layer, VQ-Logits, kNN-LM."""

from softmaxkit.heads.concept import ConceptBottleneck, concept_matrix_search
from softmaxkit.heads.cosine import CosineHead
from softmaxkit.heads.equiangular import EquiangularHead, equiangular_basis
from softmaxkit.heads.knnlm import KNNLM
from softmaxkit.heads.linear_ce import (
    LinearCrossEntropy,
    LinearCrossEntropyExtras,
    linear_cross_entropy,
)
from softmaxkit.heads.spherical import SphericalOutputLayer
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
    "equiangular_basis",
    "EquiangularHead",
    "CosineHead",
    "ConceptBottleneck",
    "concept_matrix_search",
]
