"""The private base layer every package of softmaxkit may import (and nothing else).

* :mod:`~softmaxkit._ops.blocks`: the half-precision / compute-dtype policy, the row
  layout (``as_rows``), the row-block walker and the scratch buffers of blocked kernels.
* :mod:`~softmaxkit._ops.row_loss`: the row-loss contract (value and gradient of one
  block of rows) and the one entry point that applies reduction, ignore_index, label
  smoothing and probability targets; the base of the losses' module twins.
* :mod:`~softmaxkit._ops.cross_entropy`: the cross-entropy rules (ignore_index, label
  smoothing, class weights, softcap, log-sum-exp penalty, mean denominators) written
  once over per-row statistics, local or all-reduced over a process group, shared by
  the fused and the vocab-parallel heads and VQ-Logits.
* :mod:`~softmaxkit._ops.stablemax`: StableMax's element-wise pieces (``s``, its
  log-derivative ``r``), shared by the map and its cross-entropy.
* :mod:`~softmaxkit._ops.optim`: the one float64 L-BFGS set-up of the small convex fits.
* :mod:`~softmaxkit._ops.dtensor`: DTensor arguments at the public entries (an
  FSDP2-sharded weight all-gathered with FSDP's averaged gradient; a TypeError naming the
  fix for DTensor activations and logits).

Dependencies point one way: ``_ops`` imports only torch and :mod:`softmaxkit._validation`.
"""
