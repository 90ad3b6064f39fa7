"""Vocab-parallel softmax and cross-entropy over ``torch.distributed``.

For a vocabulary (or class count) sharded across the ranks of a process group: each rank
holds a contiguous slice of the logits (or of the output layer's weight, for the fused
linear + cross-entropy), and only (N,)-sized row statistics cross ranks.
Works with any backend that has ``all_reduce``/``all_gather`` on tensors (gloo on CPU,
NCCL on CUDA), and without a process group as the world-size-1 case.
"""

from softmaxkit.distributed.linear_cross_entropy import vocab_parallel_linear_cross_entropy
from softmaxkit.distributed.vocab_parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_log_softmax,
)

__all__ = [
    "vocab_parallel_log_softmax",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
