"""Softmax gates of mixture-of-experts layers and a grouped-dispatch MoE layer.

- :class:`TopKGate`: the top-K sparse softmax gate (softmax over the top-K logits), optional
  noisy top-K (Shazeer et al. 2017), capacity factor with dropped-assignment count, the
  Switch load-balancing loss and the ST-MoE router z-loss.
- :class:`DenseToSparseGate` and :class:`ActivationGate`: the two gates of Nguyen, Akbarian,
  Ho, "Is Temperature Sample Efficient for Softmax Gaussian Mixture of Experts?" (ICML 2024,
  arXiv:2401.13875).
- :class:`MoE`: a layer that dispatches tokens grouped by expert (one call per expert).
- :class:`GateOutput`: what every gate returns.
"""

from softmaxkit.moe.gates import ActivationGate, DenseToSparseGate, GateOutput, TopKGate
from softmaxkit.moe.layer import MoE

__all__ = ["TopKGate", "DenseToSparseGate", "ActivationGate", "GateOutput", "MoE"]
