"""Softmax inside attention: a drop-in scaled dot-product attention with the clipped softmax
and a probabilities quantizer, a drop-in multi-head attention with gated attention
(Bondarenko et al. 2023), and Re-ttention, very sparse attention for a denoising loop that
reuses softmax statistics."""

from softmaxkit.attention.multihead import MultiheadAttention
from softmaxkit.attention.rettention import Rettention, RettentionSchedule, local_band_mask
from softmaxkit.attention.sdpa import scaled_dot_product_attention

__all__ = [
    "scaled_dot_product_attention",
    "MultiheadAttention",
    "Rettention",
    "RettentionSchedule",
    "local_band_mask",
]
