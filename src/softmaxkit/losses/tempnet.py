"""The DRO loss that trains TempNet's per-input temperature together with the model.

Qiu et al., "To Cool or not to Cool? Temperature Network Meets Large Foundation Models via
DRO" (ICML 2024, arXiv 2404.04575); official code zhqiu/TempNet,
``GPT-2/megatron/model/tempnet.py::tau_cross_entropy``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import compute_dtype, upcast
from softmaxkit._validation import (
    check_class_target,
    check_floating,
    check_int,
    check_number,
    check_reduction,
    readable,
)

__all__ = ["TempNetDROLoss", "tempnet_dro_loss"]


def _check(
    logits: torch.Tensor, target: torch.Tensor, tau: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    check_floating("logits", logits)
    check_floating("tau", tau)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, V), got shape {tuple(logits.shape)}")
    target = check_class_target(target, logits, 1, ignore_index)
    n = logits.shape[0]
    if tau.shape not in ((n,), (n, 1)):
        raise ValueError(f"tau must have shape ({n},) or ({n}, 1), got {tuple(tau.shape)}")
    if readable(tau) and not bool((tau > 0).all()):
        raise ValueError("tau must be positive (every temperature > 0)")
    return target


@backend_op
def tempnet_dro_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    tau: torch.Tensor,
    *,
    rho: float = 8.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""The KL-regularised DRO loss of TempNet (language-model version), per token:

    .. math::
        \ell_i = \tau_i\,\mathrm{CE}(z_i/\tau_i, y_i) + (\rho - \log V)\,\tau_i
               = \tau_i \log \frac1V \sum_j e^{(z_{ij} - z_{i y_i})/\tau_i} + \rho\,\tau_i,

    the dual of :math:`\max_{p:\,\mathrm{KL}(p\|\mathrm{unif}) \le \rho} \sum_j p_j
    (z_{ij} - z_{iy_i})` with the per-token temperature :math:`\tau_i` as the dual variable.
    Gradients reach the logits and τ (τ is not detached, as the official code), so the
    model and :class:`softmaxkit.heads.TempNet` train together. Use it for training only;
    evaluate with the plain cross-entropy (the official setup).

    Args:
        logits: (N, V) float.
        target: (N,) class indices; ``ignore_index`` entries do not count.
        tau: (N,) or (N, 1) positive temperatures (e.g. ``TempNet(V)(logits)``).
        rho: the KL radius ρ. Default 8.0: the official OWT2 training config
            (``owt2_setup_tempnet.yml``, ``tempnet_rho``); the framework default is 1.0.
            Not verified against the paper's own table.
        ignore_index: target value to skip (default -100, as ``F.cross_entropy``).
        reduction: ``"mean"`` (over the counted tokens; 0 when none counts), ``"sum"`` or
            ``"none"`` ((N,), 0 at ignored tokens).

    Returns a tensor in the logits' dtype (float16/bfloat16 are computed in float32).

    Paper vs official code: the official ``tau_cross_entropy`` ignores its loss mask and
    averages over every token, padding included; this loss honours ``ignore_index``.
    Passing no ignored token reproduces the official value. The official second return
    value (the mean CE at temperature τ) is ``F.cross_entropy(logits / tau, target)``.

    Example:
        >>> from softmaxkit.heads import TempNet
        >>> logits, y = torch.randn(6, 50), torch.randint(0, 50, (6,))
        >>> tau = TempNet(50, hidden_size=8)(logits)
        >>> loss = tempnet_dro_loss(logits, y, tau, rho=8.0)
        >>> loss.shape
        torch.Size([])
    """
    ignore_index = check_int("ignore_index", ignore_index)
    target = _check(logits, target, tau, ignore_index)
    rho = check_number("rho", rho)
    reduction = check_reduction(reduction)
    dtype = compute_dtype(logits, tau)
    z = upcast(logits).to(dtype)
    t = upcast(tau).to(dtype).reshape(-1, 1)
    ce = F.cross_entropy(z / t, target, ignore_index=ignore_index, reduction="none")
    keep = target != ignore_index
    loss = t.squeeze(-1) * ce + (rho - math.log(logits.shape[-1])) * t.squeeze(-1)
    loss = torch.where(keep, loss, loss.new_zeros(()))
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = (loss / keep.sum().clamp_min(1)).sum()  # divide first: finite wherever the mean is
    return out.to(logits.dtype)


class TempNetDROLoss(nn.Module):
    r"""Module form of :func:`tempnet_dro_loss`: ``TempNetDROLoss(rho)(logits, target, tau)``.

    .. math::
        \ell_i = \tau_i\,\mathrm{CE}(z_i/\tau_i, y_i) + (\rho - \log V)\,\tau_i

    Qiu et al., "To Cool or not to Cool? Temperature Network Meets Large Foundation Models
    via DRO" (ICML 2024, arXiv 2404.04575). Defaults as :func:`tempnet_dro_loss` (ρ = 8.0,
    the official OWT2 config). The language-model loss has no moving-average state (the
    official CLIP loss ``iSogCLR_TempNet_Loss`` has one; it is not implemented here).

    Example:
        >>> loss_fn = TempNetDROLoss(rho=8.0)
        >>> logits, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
        >>> loss_fn(logits, y, torch.ones(4, 1)).shape
        torch.Size([])
    """

    def __init__(
        self, rho: float = 8.0, *, ignore_index: int = -100, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.rho = check_number("rho", rho)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.reduction = check_reduction(reduction)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        return tempnet_dro_loss(
            logits,
            target,
            tau,
            rho=self.rho,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
