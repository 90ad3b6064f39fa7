"""Learned N:M sparsity: MaskLLM's Gumbel-softmax masks over the N:M candidate patterns."""

from softmaxkit.sparsity.maskllm import (
    NMMaskLearner,
    apply_nm_masks,
    is_nm_sparse,
    magnitude_nm_mask,
    nm_candidates,
    nm_soft_mask,
)

__all__ = [
    "nm_candidates",
    "nm_soft_mask",
    "magnitude_nm_mask",
    "is_nm_sparse",
    "NMMaskLearner",
    "apply_nm_masks",
]
