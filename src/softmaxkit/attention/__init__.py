"""Softmax inside attention: Re-ttention, very sparse attention for a denoising loop that
reuses softmax statistics."""

from softmaxkit.attention.rettention import Rettention, RettentionSchedule, local_band_mask

__all__ = ["Rettention", "RettentionSchedule", "local_band_mask"]
