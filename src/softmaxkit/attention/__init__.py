"""Softmax inside attention: a drop-in scaled dot-product attention with the clipped softmax
and a probabilities quantizer, and a drop-in multi-head attention with gated attention."""

from softmaxkit.attention.multihead import MultiheadAttention
from softmaxkit.attention.sdpa import scaled_dot_product_attention

__all__ = ["scaled_dot_product_attention", "MultiheadAttention"]
