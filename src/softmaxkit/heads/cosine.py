r"""The cosine classifier of normalized softmax (NormFace / Zhai & Wu)."""

from __future__ import annotations

import math

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit.losses import cosine_logits

__all__ = ["CosineHead"]


class CosineHead(nn.Module):
    r"""Cosine logits against learned class proxies, divided by a temperature.

    .. math:: z_c = \frac{1}{\sigma}\,\frac{x}{\lVert x \rVert} \cdot
              \frac{w_c}{\lVert w_c \rVert}

    (no bias). The logits are :func:`softmaxkit.losses.cosine_logits` of ``x`` and
    ``self.weight``, so ``F.cross_entropy(head(x), y)`` equals
    ``losses.normalized_softmax_loss(x, head.weight, y, temperature=head.temperature)``
    (use the loss directly when only the loss is needed: it keeps fewer N x C tensors).

    Papers: A. Zhai, H.-Y. Wu, "Classification is a Strong Baseline for Deep Metric
    Learning", BMVC 2019, arXiv:1811.12649 (fixed :math:`\sigma = 0.05`, the official code's
    default); F. Wang et al., "NormFace", ACM MM 2017, arXiv:1704.06369 (the scale
    :math:`s = 1/\sigma` learned or fixed). The temperature has no default here: pass 0.05
    for Zhai & Wu, 1/s for NormFace.

    With ``learn_temperature=True`` the temperature is learned as
    :math:`\sigma = \exp(\rho)` with the parameter ``log_temperature`` :math:`= \rho`
    initialised to :math:`\log \sigma_0`, so it stays positive without a clamp
    (NormFace learns the scale :math:`s` directly; :math:`\log s = -\rho`, the same family).
    The proxies are initialised like ``nn.Linear``'s weight (Kaiming uniform).

    Args:
        in_features: D.
        num_classes: C.
        temperature: :math:`\sigma > 0` (the initial value when learned).
        learn_temperature: learn :math:`\sigma` (see above).
        eps: the norm floor of the normalisation.

    Shape: input (N, D) or (N, D, d1, ...) (features on dim 1, as ``cosine_logits``) ->
    logits (N, C) or (N, C, d1, ...), float32 for half inputs.

    Example:
        >>> import torch
        >>> from softmaxkit.heads import CosineHead
        >>> head = CosineHead(4, 3, temperature=0.05)
        >>> head(torch.randn(2, 4)).abs().max() <= 20.0 + 1e-4
        tensor(True)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        temperature: float,
        learn_temperature: bool = False,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.in_features = v.check_int("in_features", in_features, low=1)
        self.num_classes = v.check_int("num_classes", num_classes, low=1)
        temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
        self.learn_temperature = v.check_bool("learn_temperature", learn_temperature)
        self.eps = v.check_number("eps", eps, low=0.0, low_open=True)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self._temperature = temperature

    @property
    def temperature(self) -> float | torch.Tensor:
        """:math:`\\sigma`: a float, or a 0-d tensor (with gradient) when learned."""
        if self.learn_temperature:
            return self.log_temperature.exp()
        return self._temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learn_temperature:
            return cosine_logits(x, self.weight, temperature=self._temperature, eps=self.eps)
        z = cosine_logits(x, self.weight, temperature=1.0, eps=self.eps)
        return z / self.log_temperature.exp().to(z.dtype)

    def extra_repr(self) -> str:
        t = float(self.temperature)
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"temperature={t:g}, learn_temperature={self.learn_temperature}"
        )
