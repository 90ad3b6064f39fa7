"""Float64 transcription of PALM's training loss as the official code computes it.

Lu et al., "Learning with Mixture of Prototypes for Out-of-Distribution Detection", ICLR
2024, arXiv:2402.02653; official code jeff024/PALM, ``util/loss_functions.py::PALM``
(``sinkhorn``, ``mle_loss``, ``proto_contra``, ``forward``). Written step by step in the
official order with the official semantics and quirks, in plain torch float64 (autograd
gives the reference gradient); no softmaxkit import:

- Sinkhorn in the exp domain, ``F.normalize(p=1)`` with its 1e-12 floor (written out as
  ``x / max(sum |x|, 1e-12)``);
- dense (N, K) masks and a top-k over all K columns;
- the EMA update keeps its graph (so the prototype-contrastive loss reaches the features
  through it), then the assignment is recomputed with the new prototypes;
- the loss's top-k is taken again of the *pre-update* normalised update mask;
- no shift in the MLE's log-sum-exp; the contrastive logits shifted by their detached
  row max.
"""

from __future__ import annotations

import torch


def l1_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``F.normalize(x, p=1, dim=dim)``: ``x / max(sum |x|, 1e-12)``."""
    return x / x.abs().sum(dim, keepdim=True).clamp(min=1e-12)


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``F.normalize(x, p=2, dim=dim)``."""
    return x / torch.sqrt((x * x).sum(dim, keepdim=True)).clamp(min=1e-12)


def sinkhorn(features: torch.Tensor, protos: torch.Tensor, epsilon: float, iterations: int):
    """(N, K) Q of the official ``sinkhorn`` (no gradient)."""
    out = features.detach() @ protos.detach().T
    q = torch.exp(out / epsilon).T  # K x N
    k_protos, n = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = l1_normalize(q, 1) / k_protos
        q = l1_normalize(q, 0) / n
    return (q * n).T


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    idx = torch.topk(values, k, dim=1).indices
    return torch.zeros_like(values).scatter(1, idx, 1.0)


def palm_ref(
    features: torch.Tensor,
    targets: torch.Tensor,
    protos: torch.Tensor,
    *,
    num_classes: int,
    cache_size: int = 6,
    k: int = 5,
    proto_m: float = 0.999,
    temp: float = 0.1,
    lambda_pcon: float = 1.0,
    epsilon: float = 0.05,
    iterations: int = 3,
):
    """``(loss, mle, proto_contra, new_protos)`` for ``features`` (B, V, d) (assumed
    normalised, as the official model's output), ``targets`` (B,) and ``protos`` (K, d).

    ``proto_contra`` is unweighted (the official ``loss_dict`` holds it times lambda).
    """
    k = min(k, cache_size)
    nviews = features.shape[1]
    feats = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor = targets.repeat(nviews).view(-1, 1)
    contrast = torch.arange(num_classes).repeat(cache_size).view(-1, 1)
    mask = (anchor == contrast.T).double()

    # --- EMA update
    q = sinkhorn(feats, protos, epsilon, iterations)
    if k > 0:
        update_mask = mask * q
        update_mask = l1_normalize(l1_normalize(topk_mask(update_mask, k) * update_mask, 1), 0)
    else:
        update_mask = l1_normalize(l1_normalize(mask * q, 1), 0)
    update_features = update_mask.T @ feats
    new_protos = l2_normalize(proto_m * protos + (1 - proto_m) * update_features, 1)

    # --- MLE with the new prototypes
    q = sinkhorn(feats, new_protos, epsilon, iterations)
    logits = feats @ new_protos.detach().T / temp
    if k > 0:
        loss_mask = l1_normalize(topk_mask(update_mask, k) * (mask * q), 1)
    else:
        loss_mask = l1_normalize(q * mask, 1)
    pos = (loss_mask * logits).sum(1)
    neg = torch.log(torch.exp(logits).sum(1))
    mle = -(pos - neg).mean()

    # --- prototype contrastive loss on the (differentiable) new prototypes
    p = l2_normalize(new_protos, 1)
    labels = torch.arange(num_classes).repeat(cache_size).view(-1, 1)
    same = (labels == labels.T).double()
    dots = p @ p.T / 0.5
    dots = dots - dots.max(1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(len(p), dtype=torch.float64)
    same = same * not_self
    pos_c = (l1_normalize(same, 1) * dots).sum(1)
    neg_c = torch.log((not_self * torch.exp(dots)).sum(1))
    pcon = -(pos_c - neg_c).mean()

    loss = mle + lambda_pcon * pcon if lambda_pcon > 0 else mle
    return loss, mle, pcon, new_protos.detach()
