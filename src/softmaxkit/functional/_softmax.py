"""Masked, tempered softmax and log-softmax."""

from __future__ import annotations

import math

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import upcast
from softmaxkit.functional.two_pass import auto_chunk, normalize


def masked_logits(
    x: torch.Tensor, dim: int, temperature: float, mask: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Validate, upcast, temper and mask logits for a softmax-like map.

    Returns the logits in their compute dtype, divided by ``temperature``, with
    masked-out entries set to ``-inf``, and ``dim`` made non-negative.
    """
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    z = upcast(x)
    if temperature != 1.0:
        z = z / temperature
    if mask is not None:
        v.check_mask(mask, x)
        z = z.masked_fill(~mask, -math.inf)
    return z, dim


def _normalize(x, dim, temperature, mask, log):
    z, dim = masked_logits(x, dim, temperature, mask)
    return normalize(z, dim, log, auto_chunk(z, dim)).to(x.dtype)


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
            ``T -> inf`` the uniform distribution over kept entries.
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
