r"""The spherical softmax and the second-order Taylor softmax (de Brébisson & Vincent 2016).

Both replace softmax's :math:`e^{x_i}` by a polynomial of :math:`x_i` and normalise:
:math:`p_i = f(x_i) / \sum_k f(x_k)`. Their negative log-likelihoods are
:func:`softmaxkit.losses.spherical_softmax_loss` and
:func:`softmaxkit.losses.taylor_softmax_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import upcast


def _normalised(x: torch.Tensor, dim: int, terms: Callable[[torch.Tensor], torch.Tensor]):
    """``f / sum(f)`` along ``dim`` with ``f = terms(x)``, in the compute dtype of ``x``,
    returned in ``x``'s dtype."""
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    f = terms(upcast(x))
    return (f / f.sum(dim, keepdim=True)).to(x.dtype)


def spherical_softmax(x: torch.Tensor, *, eps: float, dim: int = -1) -> torch.Tensor:
    r"""The spherical softmax :math:`p_i = (x_i^2 + \varepsilon) / \sum_k (x_k^2 +
    \varepsilon)` along ``dim``.

    The map whose negative log is :func:`softmaxkit.losses.spherical_softmax_loss` (see
    there for :math:`\varepsilon`, which keeps :math:`p` defined when the inputs are 0 and
    has no default). It is unchanged when every input flips sign, and a ``-inf`` input
    does not mean "impossible class": it makes that class the most likely one.

    Papers: P. Vincent, A. de Brébisson, X. Bouthillier, "Efficient Exact Gradient Update
    for training Deep Networks with Very Large Sparse Targets", NeurIPS 2015,
    arXiv:1412.7091; A. de Brébisson, P. Vincent, "An Exploration of Softmax Alternatives
    Belonging to the Spherical Loss Family", ICLR 2016, arXiv:1511.05042.

    Args:
        x: input of any shape, any floating dtype (float16/bfloat16 computed in float32,
            returned in the input dtype). Plain differentiable torch ops.
        eps: the constant added to every squared input, > 0 (required).
        dim: the axis to normalise.

    Example:
        >>> import torch
        >>> from softmaxkit import spherical_softmax
        >>> spherical_softmax(torch.tensor([1.0, -2.0, 0.0]), eps=0.01)
        tensor([0.2008, 0.7972, 0.0020])
    """
    v.check_number("eps", eps, low=0.0, low_open=True)
    return _normalised(x, dim, lambda z: z.square() + eps)


def taylor_softmax(x: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    r"""The second-order Taylor softmax :math:`p_i = f(x_i) / \sum_k f(x_k)`,
    :math:`f(x) = 1 + x + x^2/2`, along ``dim``.

    :math:`f` is the second-order Taylor expansion of :math:`e^x` at 0; it is at least
    :math:`1/2` (at :math:`x = -1`), so the map is strictly positive and needs no
    :math:`\varepsilon`. Its negative log is :func:`softmaxkit.losses.taylor_softmax_loss`.

    Paper: A. de Brébisson, P. Vincent, "An Exploration of Softmax Alternatives Belonging
    to the Spherical Loss Family", ICLR 2016, arXiv:1511.05042.

    Args:
        x: input of any shape, any floating dtype (float16/bfloat16 computed in float32,
            returned in the input dtype). Plain differentiable torch ops.
        dim: the axis to normalise.

    Example:
        >>> import torch
        >>> from softmaxkit import taylor_softmax
        >>> taylor_softmax(torch.tensor([1.0, -2.0, 0.0]))
        tensor([0.5556, 0.2222, 0.2222])
    """
    return _normalised(x, dim, lambda z: z + 1 + 0.5 * z.square())
