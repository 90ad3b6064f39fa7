"""Masked, tempered softmax and log-softmax."""

from __future__ import annotations

import math

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import upcast
from softmaxkit.functional.two_pass import auto_chunk, normalize


def temper(z: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    r"""``z / temperature`` for a softmax-like map along ``dim``, without overflow.

    ``T >= 1`` divides (nothing can overflow). ``T < 1`` divides :math:`z - \max z` (the
    row max, detached; 0 for a row without a finite maximum) instead: the maps are
    shift-invariant, every shifted logit is :math:`\le 0`, and one that still overflows
    is :math:`-\infty`, the correctly rounded value of its (zero) probability, so large
    logits at a small temperature give the exact result and ``T -> 0`` the one-hot argmax
    (ties share the mass). A ``T`` below the compute dtype's smallest normal number
    (``1e-40`` in float32) divides in float64. Costs one more read of ``z`` (the row max)
    and an in-place pass, only when ``T < 1``.
    """
    if temperature >= 1.0:
        return z if temperature == 1.0 else z / temperature
    m = z.detach().amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    if temperature < torch.finfo(z.dtype).tiny:
        return ((z.double() - m.double()) / temperature).to(z.dtype)
    return (z - m).div_(temperature)


def masked_logits(
    x: torch.Tensor, dim: int, temperature: float, mask: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Validate, upcast, mask and temper logits for a softmax-like map.

    Returns the logits in their compute dtype, masked-out entries set to ``-inf``, divided
    by ``temperature`` (:func:`temper`, which shifts by the row max for ``T < 1``; the maps
    are shift-invariant), and ``dim`` made non-negative.
    """
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    z = upcast(x)
    if mask is not None:
        v.check_mask(mask, x)
        z = z.masked_fill(~mask, -math.inf)
    if x.numel() and x.ndim:
        z = temper(z, dim, float(temperature))
    elif temperature != 1.0:
        z = z / temperature
    return z, dim


def _normalize(
    x: torch.Tensor, dim: int, temperature: float, mask: torch.Tensor | None, log: bool
) -> torch.Tensor:
    z, dim = masked_logits(x, dim, temperature, mask)
    return normalize(z, dim, log, auto_chunk(z, dim)).to(x.dtype)


@backend_op
def softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Softmax with a temperature and a boolean keep-mask.

    .. math:: y_i = \frac{m_i\, e^{x_i / T}}{\sum_j m_j\, e^{x_j / T}}

    where :math:`m` is the mask (``True`` = keep). A row with nothing kept (every entry
    masked, or every logit ``-inf``) gives zeros and zero gradient, never NaN
    (``torch.softmax`` gives NaN there). For few, very long rows along the last axis
    it switches to :func:`two_pass_softmax`, which spreads one row over all threads.

    Args:
        x: logits of any shape; float16/bfloat16 are computed in float32 and returned in
            the input dtype.
        dim: the axis to normalise.
        temperature: :math:`T > 0`; ``T -> 0`` approaches the one-hot argmax and
            ``T -> inf`` the uniform distribution over kept entries. For ``T < 1`` the
            logits are shifted by their row max before dividing, so ``x / T`` never
            overflows: any finite logits at any ``T`` give the exact (finite) result,
            e.g. ``softmax(x, temperature=1e-40)`` is the one-hot argmax of ``x``.
        mask: boolean tensor broadcastable to ``x``; ``True`` keeps an entry.

    Example:
        >>> import torch
        >>> from softmaxkit import softmax
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
        >>> softmax(x, mask=torch.tensor([[True, True, False], [False, False, False]]))
        tensor([[0.2689, 0.7311, 0.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    return _normalize(x, dim, temperature, mask, log=False)


@backend_op
def log_softmax(
    x: torch.Tensor,
    dim: int = -1,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Log-softmax with a temperature and a boolean keep-mask.

    .. math:: y_i = x_i / T - \log \sum_{j:\, m_j} e^{x_j / T} \quad (m_i), \qquad
              y_i = -\infty \quad (\neg m_i)

    A row with nothing kept gives ``-inf`` everywhere and zero gradient, never NaN.
    Arguments as :func:`softmax`.

    Example:
        >>> import torch
        >>> from softmaxkit import log_softmax
        >>> log_softmax(torch.tensor([0.0, 0.0, 5.0]), mask=torch.tensor([True, True, False]))
        tensor([-0.6931, -0.6931,    -inf])
    """
    return _normalize(x, dim, temperature, mask, log=True)


class Softmax(nn.Module):
    """Module twin of :func:`softmax`: ``Softmax(dim, temperature)(x, mask=None)``."""

    def __init__(self, dim: int = -1, temperature: float = 1.0) -> None:
        super().__init__()
        v.check_number("temperature", temperature, low=0.0, low_open=True)
        self.dim = dim
        self.temperature = temperature

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return softmax(x, self.dim, temperature=self.temperature, mask=mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, temperature={self.temperature}"


class LogSoftmax(Softmax):
    """Module twin of :func:`log_softmax`: ``LogSoftmax(dim, temperature)(x, mask=None)``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return log_softmax(x, self.dim, temperature=self.temperature, mask=mask)
