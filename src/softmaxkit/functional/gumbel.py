"""Gumbel-softmax relaxed sampling with a straight-through hard mode."""

from __future__ import annotations

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import upcast
from softmaxkit.functional._softmax import temper
from softmaxkit.functional.two_pass import normalize


@backend_op
def gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 1.0,
    *,
    hard: bool = False,
    dim: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A relaxed one-hot sample from the categorical distribution ``softmax(logits)``.

    .. math:: y = \mathrm{softmax}\big((\text{logits} + g) / \tau\big), \qquad
              g_i = -\log E_i,\ E_i \sim \mathrm{Exp}(1)

    (:math:`g_i` is standard Gumbel noise). As :math:`\tau \to 0` the sample approaches
    a one-hot vector at :math:`\arg\max_i(\text{logits}_i + g_i)`, which is an exact
    sample of the categorical distribution. ``hard=True`` returns that one-hot vector
    in the forward pass with the gradient of the soft sample (straight-through
    estimator: ``y_hard - y.detach() + y``).

    Papers: E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with
    Gumbel-Softmax", ICLR 2017, arXiv:1611.01144; C. Maddison, A. Mnih, Y. W. Teh,
    "The Concrete Distribution", ICLR 2017, arXiv:1611.00712.

    Differences from ``torch.nn.functional.gumbel_softmax``: a ``generator`` makes
    samples reproducible, ``-inf`` logits are never sampled and a row of ``-inf``
    gives zeros (also with ``hard=True``) instead of NaN, half inputs are computed in
    float32, ties in the hard one-hot go to the lowest index, and a ``tau < 1`` divides the
    noisy logits after subtracting their row max (the softmax does not change), so large
    logits at a small ``tau`` do not overflow to NaN.

    Args:
        logits: unnormalised log-probabilities of any shape; ``-inf`` excludes a class.
        tau: temperature :math:`\tau > 0`.
        hard: return the straight-through one-hot sample.
        dim: the categorical axis.
        generator: a ``torch.Generator`` on the logits' device, for reproducible noise.

    Example:
        >>> import torch
        >>> from softmaxkit import gumbel_softmax
        >>> g = torch.Generator().manual_seed(0)
        >>> y = gumbel_softmax(torch.zeros(2, 4), tau=0.5, hard=True, generator=g)
        >>> y.sum(-1)
        tensor([1., 1.])
    """
    v.check_floating("logits", logits)
    dim = v.check_dim("dim", dim, logits.ndim)
    tau = v.check_number("tau", tau, low=0.0, low_open=True)
    v.check_bool("hard", hard)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    z = upcast(logits)
    noise = torch.empty_like(z, memory_format=torch.contiguous_format)
    noise.exponential_(generator=generator).log_().neg_()
    noisy = noise.add_(z)
    y = normalize(temper(noisy, dim, float(tau)) if noisy.ndim else noisy / tau, dim, False, None)
    if hard and y.numel():
        top, index = y.max(dim, keepdim=True)
        one_hot = torch.zeros_like(y).scatter_(dim, index, 1.0).mul_(top > 0)
        y = one_hot - y.detach() + y
    return y.to(logits.dtype)


class GumbelSoftmax(nn.Module):
    """Module twin of :func:`gumbel_softmax`: ``GumbelSoftmax(tau, hard=..., dim=...)(logits)``."""

    def __init__(self, tau: float = 1.0, *, hard: bool = False, dim: int = -1) -> None:
        super().__init__()
        self.tau = v.check_number("tau", tau, low=0.0, low_open=True)
        self.hard = v.check_bool("hard", hard)
        self.dim = dim

    def forward(
        self, logits: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return gumbel_softmax(logits, self.tau, hard=self.hard, dim=self.dim, generator=generator)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}, dim={self.dim}"
