"""Training objectives built on the maps of :mod:`softmaxkit.functional`.

Every loss on (logits, target) follows ``torch.nn.functional.cross_entropy``: classes on
dim 1, class indices or probability targets, ``reduction``, ``ignore_index`` and
``label_smoothing`` where the math allows, and runs block by block so that its peak
memory is the gradient alone.
"""

from softmaxkit.functional import spherical_softmax, taylor_softmax
from softmaxkit.losses.adversarial import AdversarialCompSumLoss, adversarial_comp_sum_loss
from softmaxkit.losses.comp_sum import (
    CompSumLoss,
    GeneralizedCrossEntropyLoss,
    MAELoss,
    SumExpLoss,
    comp_sum_loss,
    generalized_cross_entropy,
    mae_loss,
    sum_exp_loss,
)
from softmaxkit.losses.compositional import (
    CompositionalNLLLoss,
    CompositionalState,
    compositional_nll,
)
from softmaxkit.losses.distill import KDLoss, NKDLoss, USKDLoss, kd_loss, nkd_loss, uskd_loss
from softmaxkit.losses.divergence import FDivergence, f_divergence
from softmaxkit.losses.hinge import SquaredHingeLoss, squared_hinge_loss
from softmaxkit.losses.ldr import ALDRKLLoss, LDRKLLoss, aldr_kl_loss, ldr_kl_loss
from softmaxkit.losses.metric import NormalizedSoftmaxLoss, cosine_logits, normalized_softmax_loss
from softmaxkit.losses.retrieval import (
    DecoupledSoftmaxLoss,
    MultiPositiveSoftmaxLoss,
    SoftTopKLoss,
    decoupled_softmax_loss,
    multi_positive_softmax_loss,
    soft_topk_loss,
)
from softmaxkit.losses.spherical import (
    LogSumExpPenalty,
    SphericalSoftmaxLoss,
    TaylorSoftmaxLoss,
    ZLoss,
    logsumexp_penalty,
    spherical_softmax_loss,
    taylor_softmax_loss,
    z_loss,
)
from softmaxkit.losses.stablemax import StableMaxCrossEntropyLoss, stablemax_cross_entropy
from softmaxkit.losses.tempnet import TempNetDROLoss, tempnet_dro_loss

__all__ = [
    # StableMax (Prieto et al. 2025)
    "stablemax_cross_entropy",
    "StableMaxCrossEntropyLoss",
    # comp-sum family (Mao, Mohri & Zhong 2023)
    "comp_sum_loss",
    "sum_exp_loss",
    "generalized_cross_entropy",
    "mae_loss",
    "adversarial_comp_sum_loss",
    "CompSumLoss",
    "SumExpLoss",
    "GeneralizedCrossEntropyLoss",
    "MAELoss",
    "AdversarialCompSumLoss",
    # spherical family (de Brébisson & Vincent 2016) and the PaLM log-partition penalty
    "z_loss",
    "spherical_softmax_loss",
    "taylor_softmax_loss",
    "spherical_softmax",  # the maps, from softmaxkit.functional
    "taylor_softmax",
    "logsumexp_penalty",
    "ZLoss",
    "SphericalSoftmaxLoss",
    "TaylorSoftmaxLoss",
    "LogSumExpPenalty",
    # label distributionally robust losses (Zhu, Ying & Yang 2023)
    "ldr_kl_loss",
    "aldr_kl_loss",
    "LDRKLLoss",
    "ALDRKLLoss",
    # distillation (Hinton et al. 2015; Yang et al. 2023) and f-divergences
    "kd_loss",
    "nkd_loss",
    "uskd_loss",
    "KDLoss",
    "NKDLoss",
    "USKDLoss",
    "f_divergence",
    "FDivergence",
    # retrieval (DEXML, Gupta et al. 2024)
    "decoupled_softmax_loss",
    "multi_positive_softmax_loss",
    "soft_topk_loss",
    "DecoupledSoftmaxLoss",
    "MultiPositiveSoftmaxLoss",
    "SoftTopKLoss",
    # metric learning (Zhai & Wu 2019; NormFace)
    "normalized_softmax_loss",
    "cosine_logits",
    "NormalizedSoftmaxLoss",
    # L2-SVM head (Agarap 2017)
    "squared_hinge_loss",
    "SquaredHingeLoss",
    # unnormalized models (Jiang et al. 2023)
    "compositional_nll",
    "CompositionalState",
    "CompositionalNLLLoss",
    # TempNet's KL-DRO loss (Qiu et al. 2024)
    "tempnet_dro_loss",
    "TempNetDROLoss",
]
