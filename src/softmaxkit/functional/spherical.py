r"""The spherical softmax and the second-order Taylor softmax (de Brébisson & Vincent 2016).

Both replace softmax's :math:`e^{x_i}` by a polynomial of :math:`x_i` and normalise:
:math:`p_i = f(x_i) / \sum_k f(x_k)`. Their negative log-likelihoods are
:func:`softmaxkit.losses.spherical_softmax_loss` and
:func:`softmaxkit.losses.taylor_softmax_loss`.
"""

from __future__ import annotations

import math

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import maybe_any, out_of_range, row_scale, upcast


def sphere_normalised(u: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    r"""``(u_i^2 + eps) / sum_k (u_k^2 + eps)`` along ``dim`` of an upcast ``u``, scaled
    before squaring where it must be.

    The ratio is unchanged when ``u`` and :math:`\sqrt{\varepsilon}` are divided by the
    same :math:`c > 0`. Rows whose plain total overflows or underflows
    (:func:`~softmaxkit._ops.blocks.out_of_range`) are recomputed with
    :math:`c = \max(\max_k |u_k|, \sqrt{\varepsilon})` (each scaled term is at most 1 and
    the largest is at least 1/2 of the row's largest, so neither the terms nor the sum
    overflow, and :math:`\varepsilon / c^2` is kept wherever it is representable); every
    other row is computed exactly as before. ``c`` carries no gradient: the map does not
    depend on it.
    """
    f = u.square() + eps
    total = f.sum(dim, keepdim=True)
    bad = out_of_range(total.detach())
    if maybe_any(bad):
        c = row_scale(u, dim, bad, math.sqrt(eps))
        r2 = torch.where(bad, (math.sqrt(eps) / c).square(), eps)
        scaled = u / c
        f = torch.addcmul(r2, scaled, scaled)
        total = f.sum(dim, keepdim=True)
    return f / total


def _normalised(x: torch.Tensor, dim: int, shift: float, eps: float) -> torch.Tensor:
    """``sphere_normalised(x + shift, dim, eps)`` computed in ``x``'s compute dtype and
    returned in ``x``'s dtype."""
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    z = upcast(x)
    return sphere_normalised(z + shift if shift else z, dim, eps).to(x.dtype)


@backend_op
def spherical_softmax(x: torch.Tensor, *, eps: float, dim: int = -1) -> torch.Tensor:
    r"""The spherical softmax :math:`p_i = (x_i^2 + \varepsilon) / \sum_k (x_k^2 +
    \varepsilon)` along ``dim``.

    The map whose negative log is :func:`softmaxkit.losses.spherical_softmax_loss` (see
    there for :math:`\varepsilon`, which keeps :math:`p` defined when the inputs are 0 and
    has no default). It is unchanged when every input flips sign, and a ``-inf`` input
    does not mean "impossible class": it makes that class the most likely one.

    The whole floating range: the map equals :math:`(u_i^2 + r^2) / \sum_k (u_k^2 + r^2)`
    with :math:`u = x / c` and :math:`r = \sqrt{\varepsilon} / c` for any :math:`c > 0`, so
    a row whose plain sum of squares overflows (:math:`|x| \gtrsim 1.8 \cdot 10^{19}` in
    float32) or underflows is computed with :math:`c = \max(\max_k |x_k|,
    \sqrt{\varepsilon})`: exact wherever the result is representable, e.g.
    ``spherical_softmax(torch.tensor([1e20, 0.0, 1.0]), eps=1e-6)`` is ``[1, 0, 0]``
    (:math:`\varepsilon / c^2` then underflows, as the true share of ``eps`` does). Other
    rows are computed as before (one check of the row totals).

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
    eps = float(v.check_number("eps", eps, low=0.0, low_open=True))
    return _normalised(x, dim, 0.0, eps)


@backend_op
def taylor_softmax(x: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    r"""The second-order Taylor softmax :math:`p_i = f(x_i) / \sum_k f(x_k)`,
    :math:`f(x) = 1 + x + x^2/2`, along ``dim``.

    :math:`f` is the second-order Taylor expansion of :math:`e^x` at 0; it is at least
    :math:`1/2` (at :math:`x = -1`), so the map is strictly positive and needs no
    :math:`\varepsilon`. Its negative log is :func:`softmaxkit.losses.taylor_softmax_loss`.
    Since :math:`f(x) = ((1 + x)^2 + 1) / 2`, the map is
    ``spherical_softmax(1 + x, eps=1)`` and is computed so, scaled before squaring in the
    rows where :math:`x^2` would overflow (see :func:`spherical_softmax`): finite for any
    finite input, e.g. ``taylor_softmax(torch.tensor([1e30, -1e30]))`` is ``[0.5, 0.5]``.

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
    return _normalised(x, dim, 1.0, 1.0)
