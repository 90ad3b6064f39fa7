"""Losses of the spherical family (Vincent et al. 2015) and the PaLM log-partition penalty.

* :func:`z_loss`: the Z-loss of de Brébisson & Vincent 2016, a softplus of the z-scored
  target output; invariant to shifting and to positively rescaling the outputs.
* :func:`spherical_softmax_loss` and :func:`taylor_softmax_loss`: the negative
  log-likelihoods of the spherical softmax and of the second-order Taylor softmax
  (de Brébisson & Vincent, ICLR 2016), whose maps are
  :func:`softmaxkit.spherical_softmax` and :func:`softmaxkit.taylor_softmax`.
* :func:`logsumexp_penalty`: ``weight * logsumexp(logits)^2``, the auxiliary term PaLM
  (Chowdhery et al. 2022) calls "z-loss". It is **not** the Z-loss above.

The first three depend on a row of outputs ``o`` only through ``sum(o)``, ``sum(o^2)`` and
the target entries, which is what makes them members of the spherical family: their
gradient has the form ``f1 o + f2 1 + (sparse part on the targets)``. Here they take the
full (N, C) logits; the O(d^2) output layer that exploits this form lives in ``heads``.
Each loss is a :class:`~softmaxkit._ops.row_loss.RowLoss` with an analytic gradient and runs
through the row engine, so backward allocates only the gradient. The negative
log-likelihoods are computed as ``log(total) - log(term)``, never as the log of the
map's ratio, which would round to 0 for an unlikely target.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, maybe_any, out_of_range, row_scale
from softmaxkit._ops.row_loss import LossModule, RowLoss, Rows, class_loss, reduce, row_loss


def _sq_norm(z: torch.Tensor) -> torch.Tensor:
    """Per-row sum of squares, (b, 1), without a (b, C) temporary."""
    norm: torch.Tensor = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return norm.square()


def _picked(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return z.gather(1, t.unsqueeze(1))


def _sphere_total(
    u: torch.Tensor, eps: float, plain: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(c, inner)``, (b, 1) each, with ``sum_k (u_k^2 + eps) = c^2 inner`` per row.

    ``c`` is None (read: 1) unless some row's plain total ``plain`` (default: computed here
    from ``sum(u^2)``) overflows or underflows; those rows get ``c = max(max_k |u_k|,
    sqrt(eps))`` (:func:`~softmaxkit._ops.blocks.row_scale`) and their ``inner`` from the
    scaled terms, so ``inner`` is in [1/2, 2C] there. No gradient flows through ``c``."""
    C = u.shape[1]
    total = _sq_norm(u) + C * eps if plain is None else plain
    bad = out_of_range(total.detach())
    if not maybe_any(bad):
        return None, total
    c = row_scale(u, 1, bad, math.sqrt(eps))
    inner = _sq_norm(u / c) + C * (math.sqrt(eps) / c).square()
    return c, torch.where(bad, inner, total)


def _two_log_over(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """2 log(h / c) (2 log h when c is None): the log of the ratio while h / c is a normal
    number (no cancellation between two large logs), the difference of the logs below."""
    if c is None:
        return h.log().mul_(2)
    r = h / c
    return torch.where(r >= torch.finfo(r.dtype).tiny, r.log(), h.log() - c.log()).mul_(2)


def _over_total(
    u: torch.Tensor, c: torch.Tensor | None, inner: torch.Tensor, *, own: bool = False
) -> torch.Tensor:
    """u / (c^2 inner) without forming c^2 (which may overflow); in place on ``u`` when the
    caller owns it (``own``)."""
    out = (u.div_(inner) if own else u / inner) if c is None else (u / c).div_(inner)
    return out if c is None else out.div_(c)


def _hypot(u: torch.Tensor, root: float) -> torch.Tensor:
    """sqrt(u^2 + root^2) elementwise, finite for any finite u (torch.hypot scales)."""
    return torch.hypot(u, torch.tensor(root, dtype=u.dtype, device=u.device))


def _u_over_sq_eps(u: torch.Tensor, root_eps: float) -> torch.Tensor:
    """u / (u^2 + eps) = (u / h) / h with h = hypot(u, sqrt(eps)), without overflow."""
    h = _hypot(u, root_eps)
    return (u / h).div_(h)


# --- Z-loss ------------------------------------------------------------------------------------


def _softplus_scaled(x: torch.Tensor, a: float) -> torch.Tensor:
    """(1/a) log(1 + exp(a x)); linear only beyond a x = 40, where the difference (e^-40)
    is below float64 resolution."""
    return F.softplus(x, beta=a, threshold=40.0)


def _z_stats(
    z: torch.Tensor, eps: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred outputs d = o - mean(o), the population standard deviation sigma and the
    divisor s = sigma + eps (1 where both are 0: then d = 0 and every z-score is 0)."""
    d = z - z.mean(1, keepdim=True)
    sigma: torch.Tensor = torch.linalg.vector_norm(d, dim=1, keepdim=True) / math.sqrt(z.shape[1])
    s = sigma + eps
    s = torch.where(s > 0, s, torch.ones_like(s))
    return d, sigma, s


def _z_scaled(
    z: torch.Tensor, eps: float
) -> tuple[
    torch.Tensor,
    torch.Tensor | float,
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
]:
    """``(z / c, eps / c, stats)``: the z-scores are unchanged when the outputs and eps are
    divided by the same c > 0. c is 1 (and ``z`` returned as is) unless a row's mean or
    spread overflows (outputs beyond ~1e19 in float32: the norm of the centred outputs, or
    their sum, is inf) or its squared spread underflows; such rows get c = max_k |o_k|
    (:func:`~softmaxkit._ops.blocks.row_scale`) and their statistics from o / c. ``c``
    carries no gradient: the loss depends on it only through eps / c. The caller divides
    a gradient computed on ``z / c`` by ``c`` (returned as ``stats[3]``, None when 1)."""
    d, sigma, s = _z_stats(z, eps)
    # sigma^2 C = |d|^2: out of range where the norm is inf/NaN or its square underflowed
    bad = out_of_range((sigma.detach() * math.sqrt(z.shape[1])).square())
    zero = sigma.detach() == 0
    if maybe_any(zero):  # a constant row (d = 0 exactly) has nothing to rescue
        bad &= ~zero | (d.detach().abs().amax(1, keepdim=True) > 0)
    if not maybe_any(bad):
        return z, eps, (d, sigma, s, None)
    c = row_scale(z, 1, bad)
    z, eps_c = z / c, eps / c
    return z, eps_c, (*_z_stats(z, eps_c), c)


def _over_sigma(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x / sigma, and 0 where sigma = 0 (there the centred outputs it multiplies are 0)."""
    return torch.where(sigma > 0, x / torch.where(sigma > 0, sigma, torch.ones_like(sigma)), 0.0)


def _rowdot(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-row sum of t * h, (b,), overwriting the temporary ``h`` (faster than bmm)."""
    return h.mul_(t).sum(1)


def _z_params(a: float, b: float, eps: float) -> tuple[float, float, float]:
    v.check_number("a", a, low=0.0, low_open=True)
    v.check_number("b", b)
    v.check_number("eps", eps, low=0.0)
    return float(a), float(b), float(eps)


class _ZLoss(RowLoss):
    # z_k = d_k / s; dz_k/do_j = (delta_kj - 1/C) / s - z_k d_j / (C s sigma); rows whose
    # statistics overflow are evaluated on o / c with eps / c (_z_scaled), the gradient / c
    def __init__(self, a: float, b: float, eps: float) -> None:
        self.a, self.b, self.eps = a, b, eps

    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        z, _, (d, _, s, _) = _z_scaled(z, self.eps)
        if t.dtype.is_floating_point:
            return _rowdot(t, _softplus_scaled(d.div_(s).neg_().add_(b), a))
        return _softplus_scaled(b - _picked(d, t) / s, a).squeeze(1)

    def grad(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        z, _, (d, sigma, s, c) = _z_scaled(z, self.eps)
        C = z.shape[1]
        g = g.unsqueeze(1) if c is None else g.unsqueeze(1) / c
        if t.dtype.is_floating_point:
            zs = d / s
            # w_k = t_k dl/dz_k = -t_k sigmoid(a (b - z_k))
            w = zs.neg().add_(b).mul_(a).sigmoid_().neg_().mul_(t)
            w1 = w.sum(1, keepdim=True)
            w2 = _rowdot(w, zs).unsqueeze(1)
            out = d.mul_(_over_sigma(-w2 / (C * s), sigma)).add_(w.div_(s))
            return out.sub_(w1 / (C * s)).mul_(g)
        zc = _picked(d, t) / s
        gf = g * torch.sigmoid(a * (b - zc)).neg_()  # g dl/dz_c
        out = d.mul_(_over_sigma(-gf * zc / (C * s), sigma)).sub_(gf / (C * s))
        return out.scatter_add_(1, t.unsqueeze(1), gf / s)


@backend_op
def z_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    a: float,
    b: float,
    eps: float = 1e-12,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""The Z-loss: a softplus of the z-scored target output (de Brébisson & Vincent 2016).

    For a row of outputs :math:`o \in \mathbb{R}^C` and target class :math:`c`:

    .. math::
        \mu = \frac{1}{C}\sum_k o_k, \qquad
        \sigma = \sqrt{\frac{1}{C}\sum_k (o_k - \mu)^2}, \qquad
        z_c = \frac{o_c - \mu}{\sigma + \varepsilon},

        \ell(o, c) = \frac{1}{a}\operatorname{softplus}\big(a\,(b - z_c)\big)
                   = \frac{1}{a}\log\big(1 + e^{a (b - z_c)}\big).

    :math:`\sigma` is the population standard deviation (divided by :math:`C`), as in the
    paper and the official code. The loss is invariant to adding a constant to every
    output and (up to :math:`\varepsilon`) to multiplying them by a positive factor, and it
    depends on :math:`o` only through :math:`\sum_k o_k`, :math:`\sum_k o_k^2` and
    :math:`o_c`, so it belongs to the spherical family. :math:`a > 0` sets the sharpness
    of the softplus and :math:`b` the z-score beyond which the target stops being pushed
    up. The paper tunes them per task (they trade top-1 against top-k accuracy), so both
    are required here. The official example (``pascal20100/factored_output_layer``,
    ``example/timing_example.py``) uses :math:`\operatorname{softplus}(-z_c)`, i.e.
    ``a=1, b=0``, with ``eps=1e-12`` added to :math:`\sigma`; ``eps`` defaults to that
    value. A constant row (:math:`\sigma = 0`) has z-scores 0 and a finite loss, but the
    gradient grows like :math:`1/(\sigma + \varepsilon)` as the outputs become equal: a
    row of equal outputs (e.g. from a zero-initialised output layer) gets a gradient of
    order :math:`1/\varepsilon`, so raise ``eps`` if that can happen.

    The whole floating range: :math:`z_c` is unchanged when the outputs and
    :math:`\varepsilon` are divided by the same :math:`c > 0`, so a row whose mean or
    spread overflows (outputs beyond about :math:`10^{19}` in float32) or whose squared
    spread underflows is evaluated on :math:`o / c` with :math:`\varepsilon / c`,
    :math:`c = \max_k |o_k|` (the gradient divided by :math:`c`); other rows are computed
    as before (one check of the row spreads).

    A probability target :math:`t` (or label smoothing) gives the expected loss
    :math:`\sum_k t_k\,\ell(o, k)`.

    **Not the PaLM "z-loss".** Large language models call "z-loss" the auxiliary penalty
    :math:`10^{-4} \log^2 \sum_k e^{o_k}` on the softmax normaliser (Chowdhery et al.
    2022); that is :func:`logsumexp_penalty`, added *to* cross-entropy. This function is
    a classification loss that *replaces* cross-entropy.

    Paper: A. de Brébisson, P. Vincent, "The Z-loss: a shift and scale invariant
    classification loss belonging to the Spherical Family", 2016, arXiv:1604.08859.

    Args:
        logits: (N, C) or (N, C, d1, ...) outputs with classes on dim 1, like
            ``cross_entropy``; C >= 2.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        a: sharpness, > 0 (required; the paper tunes it).
        b: z-score margin, any real (required; the paper tunes it).
        eps: added to :math:`\sigma`, >= 0 (default 1e-12, the official code's).
        reduction: "mean" (over non-ignored targets; 0 when all are ignored), "sum" or
            "none".
        ignore_index: target value that contributes nothing (index targets only).
        label_smoothing: in [0, 1], as in ``cross_entropy``.

    Returns:
        The loss in the logits' dtype: a scalar, or per sample for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import z_loss
        >>> x = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 1.0]])
        >>> z_loss(x, torch.tensor([2, 0]), a=1.0, b=1.0, reduction="none")
        tensor([0.5391, 1.8738])
    """
    loss = _ZLoss(*_z_params(a, b, eps))
    v.check_floating("logits", logits)
    if logits.ndim >= 2 and logits.shape[1] < 2:
        raise ValueError(
            f"z_loss needs at least 2 classes (the z-score of a single output is undefined), "
            f"got logits of shape {tuple(logits.shape)}"
        )
    return class_loss(
        loss,
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


# --- spherical softmax and Taylor softmax ------------------------------------------------------


def _check_eps(eps: float) -> float:
    return float(v.check_number("eps", eps, low=0.0, low_open=True))


class _SphericalNLL(RowLoss):
    # l = log(sum_k o_k^2 + C eps) - log(o_c^2 + eps); the total as c^2 * inner
    # (_sphere_total: scaled only in rows where the plain sum overflows or underflows), the
    # target's term as 2 log hypot(o_c, sqrt(eps)), so no square of a logit is ever formed
    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.root = math.sqrt(eps)

    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # l = log(inner) - 2 log(hypot(o_c, sqrt(eps)) / c), total = c^2 inner
        c, inner = _sphere_total(z, self.eps)
        log_inner = inner.log().squeeze(1)
        if t.dtype.is_floating_point:
            return t.sum(1) * log_inner - _rowdot(t, _two_log_over(_hypot(z, self.root), c))
        return log_inner - _two_log_over(_hypot(_picked(z, t), self.root), c).squeeze(1)

    def grad(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # dl/do_j = 2 o_j / (sum_k o_k^2 + C eps) - [j = c] 2 o_c / (o_c^2 + eps)
        g2 = 2 * g.unsqueeze(1)
        out = _over_total(z, *_sphere_total(z, self.eps))
        if t.dtype.is_floating_point:
            own = _u_over_sq_eps(z, self.root).mul_(t)
            return out.mul_(t.sum(1, keepdim=True)).sub_(own).mul_(g2)
        own = _u_over_sq_eps(_picked(z, t), self.root)
        return out.mul_(g2).scatter_add_(1, t.unsqueeze(1), -g2 * own)


def _taylor_total(z: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(c, inner)`` with ``sum_k f(o_k) = c^2 inner / 2``, f(o) = ((1 + o)^2 + 1) / 2: the
    plain total ``2 (C + sum(o) + sum(o^2) / 2)`` from the row sums (no (b, C) temporary),
    and, in rows where it overflows, the sum over the scaled terms of 1 + o
    (:func:`_sphere_total` with eps = 1)."""
    plain = 2 * (z.sum(1, keepdim=True) + 0.5 * _sq_norm(z) + z.shape[1])
    bad = out_of_range(plain.detach())
    if not maybe_any(bad):
        return None, plain
    return _sphere_total(z + 1, 1.0, plain)


class _TaylorNLL(RowLoss):
    # l = log(sum_k f(o_k)) - log f(o_c), f(o) = 1 + o + o^2 / 2 = ((1 + o)^2 + 1) / 2,
    # f'(o) = 1 + o; 2 f(o) = hypot(1 + o, 1)^2 (no square of a logit is formed)
    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # l = log(inner) - 2 log(hypot(1 + o_c, 1) / c), 2 sum_k f(o_k) = c^2 inner
        c, inner = _taylor_total(z)
        log_inner = inner.log().squeeze(1)
        if t.dtype.is_floating_point:
            return t.sum(1) * log_inner - _rowdot(t, _two_log_over(_hypot(z + 1, 1.0), c))
        return log_inner - _two_log_over(_hypot(_picked(z, t) + 1, 1.0), c).squeeze(1)

    def grad(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # dl/do_j = f'(o_j) / sum_k f(o_k) - [j = c] f'(o_c) / f(o_c)
        #         = 2 (1 + o_j) / (2 sum_k f) - [j = c] 2 (1 + o_c) / ((1 + o_c)^2 + 1)
        g2 = 2 * g.unsqueeze(1)
        out = _over_total(z + 1, *_taylor_total(z), own=True)
        if t.dtype.is_floating_point:
            own = _u_over_sq_eps(z + 1, 1.0).mul_(t)
            return out.mul_(t.sum(1, keepdim=True)).sub_(own).mul_(g2)
        own = _u_over_sq_eps(_picked(z, t) + 1, 1.0)
        return out.mul_(g2).scatter_add_(1, t.unsqueeze(1), -g2 * own)


@backend_op
def spherical_softmax_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Negative log-likelihood of the spherical softmax (log-spherical softmax loss).

    The map is :func:`softmaxkit.spherical_softmax`; the loss is computed from the sums
    below, not from the map's ratio (which rounds to 0 for an unlikely target).

    .. math::
        p_c = \frac{o_c^2 + \varepsilon}{\sum_k (o_k^2 + \varepsilon)}, \qquad
        \ell(o, c) = -\log p_c
                   = \log\Big(\sum_k o_k^2 + C\varepsilon\Big) - \log(o_c^2 + \varepsilon).

    The map squares the outputs where softmax exponentiates them, so the loss depends on
    :math:`o` only through :math:`\sum_k o_k^2` and :math:`o_c` (spherical family) and is
    unchanged when every output flips sign. :math:`\varepsilon > 0` keeps :math:`p`
    defined when the outputs are 0 and bounds the loss by :math:`\log(C + \sum_k o_k^2 /
    \varepsilon)`; it is a hyperparameter of the map (the paper notes the spherical
    softmax needs it, the Taylor softmax does not) and has no default here. Because
    :math:`o_k^2` grows in both directions, a ``-inf`` logit does not mean "impossible
    class" here: it makes that class the most likely one (the loss is then infinite or
    NaN).

    No square of a logit is formed where it would overflow: the target's term is
    :math:`2 \log \operatorname{hypot}(o_c, \sqrt{\varepsilon})` and a row whose
    :math:`\sum_k o_k^2` overflows or underflows is summed over :math:`o / c`,
    :math:`c = \max(\max_k |o_k|, \sqrt{\varepsilon})`, and its log taken as
    :math:`2 \log c + \log \sum_k ((o_k / c)^2 + \varepsilon / c^2)`, so the loss is
    finite and exact for any finite logits (other rows: one check of the row sums).

    A probability target :math:`t` (or label smoothing) gives the soft-target
    cross-entropy :math:`-\sum_k t_k \log p_k`, the expected loss.

    Papers: the map is from P. Vincent, A. de Brébisson, X. Bouthillier, "Efficient Exact
    Gradient Update for training Deep Networks with Very Large Sparse Targets", NeurIPS
    2015, arXiv:1412.7091; the loss is studied in A. de Brébisson, P. Vincent, "An
    Exploration of Softmax Alternatives Belonging to the Spherical Loss Family", ICLR 2016,
    arXiv:1511.05042.

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1, like ``cross_entropy``.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        eps: the constant added to every squared output, > 0 (required).
        reduction, ignore_index, label_smoothing: as in :func:`z_loss`.

    Returns:
        The loss in the logits' dtype: a scalar, or per sample for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import spherical_softmax_loss
        >>> x = torch.tensor([[1.0, -2.0, 0.0]])
        >>> spherical_softmax_loss(x, torch.tensor([1]), eps=0.01)
        tensor(0.2266)
    """
    return class_loss(
        _SphericalNLL(_check_eps(eps)),
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


@backend_op
def taylor_softmax_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Negative log-likelihood of the second-order Taylor softmax (log-Taylor softmax loss).

    The map is :func:`softmaxkit.taylor_softmax`; the loss is computed from the sums
    below, not from the map's ratio.

    .. math::
        f(o) = 1 + o + \frac{o^2}{2}, \qquad
        p_c = \frac{f(o_c)}{\sum_k f(o_k)}, \qquad
        \ell(o, c) = \log\Big(C + \sum_k o_k + \frac{1}{2}\sum_k o_k^2\Big) - \log f(o_c).

    :math:`f` is the second-order Taylor expansion of :math:`e^o` at 0; it is at least
    :math:`1/2` (at :math:`o = -1`), so :math:`p` needs no :math:`\varepsilon`, and unlike
    the spherical softmax it is not symmetric in the sign of :math:`o`. The loss depends on
    :math:`o` only through :math:`\sum_k o_k`, :math:`\sum_k o_k^2` and :math:`o_c`
    (spherical family). As for the spherical softmax, a ``-inf`` logit does not mean
    "impossible class" (:math:`f(-\infty) = \infty`). Since :math:`2 f(o) = (1 + o)^2 + 1`,
    the target's term is :math:`2 \log \operatorname{hypot}(1 + o_c, 1)` and a row whose
    total overflows is summed over :math:`(1 + o) / c` as for
    :func:`spherical_softmax_loss`: finite and exact for any finite logits.

    A probability target :math:`t` (or label smoothing) gives the soft-target
    cross-entropy :math:`-\sum_k t_k \log p_k`, the expected loss.

    Paper: A. de Brébisson, P. Vincent, "An Exploration of Softmax Alternatives Belonging
    to the Spherical Loss Family", ICLR 2016, arXiv:1511.05042.

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1, like ``cross_entropy``.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        reduction, ignore_index, label_smoothing: as in :func:`z_loss`.

    Returns:
        The loss in the logits' dtype: a scalar, or per sample for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import taylor_softmax_loss
        >>> x = torch.tensor([[1.0, -2.0, 0.0]])
        >>> taylor_softmax_loss(x, torch.tensor([0]))
        tensor(0.5878)
    """
    return class_loss(
        _TaylorNLL(),
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


# --- PaLM log-partition penalty ----------------------------------------------------------------


def _check_weight(weight: float) -> float:
    return float(v.check_number("weight", weight, low=0.0))


class _LogSumExpSquare(RowLoss):
    # l = w lse(o)^2, dl/do_k = 2 w lse(o) softmax(o)_k = 2 w lse exp(o_k - lse)
    def __init__(self, weight: float) -> None:
        self.weight = weight

    @staticmethod
    def _lse(z: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(z, 1)
        return torch.where(lse == -math.inf, 0.0, lse)  # a row of -inf has nothing to penalise

    def value(self, z: torch.Tensor, t: None) -> torch.Tensor:
        return self.weight * self._lse(z).square()

    def grad(self, z: torch.Tensor, t: None, g: torch.Tensor) -> torch.Tensor:
        lse = self._lse(z).unsqueeze(1)
        return (z - lse).exp_().mul_(2 * self.weight * lse * g.unsqueeze(1))


@backend_op
def logsumexp_penalty(
    logits: torch.Tensor,
    *,
    weight: float = 1e-4,
    dim: int = 1,
    reduction: str = "mean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The PaLM "z-loss": ``weight * logsumexp(logits)^2`` per sample.

    .. math:: \ell(o) = w \, \log^2 Z, \qquad Z = \sum_k e^{o_k}, \qquad
              \frac{\partial \ell}{\partial o_k} = 2 w \log Z \cdot \operatorname{softmax}(o)_k.

    An auxiliary term added to cross-entropy that pulls the log-normaliser
    :math:`\log Z` towards 0, which keeps the logits in a range where low-precision
    training stays stable (and makes :math:`o` close to normalised log-probabilities).
    Chowdhery et al. use :math:`w = 10^{-4}` (the default). Language-model codebases
    (T5X/Mesh TensorFlow, PaLM, OLMo) call this "z-loss"; it is **not** the Z-loss of de
    Brébisson & Vincent 2016, which is a classification loss on z-scored outputs
    (:func:`z_loss`). A row whose logits are all ``-inf`` gives 0 and zero gradient.

    Paper: A. Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022,
    arXiv:2204.02311 (Section 5, "z_loss = 10^-4 * log^2 Z").

    Args:
        logits: any shape with the classes on ``dim``.
        weight: the coefficient :math:`w`, >= 0 (default 1e-4, PaLM's).
        dim: the class dimension (default 1, the ``cross_entropy`` layout, so
            ``F.cross_entropy(x, t) + logsumexp_penalty(x)`` uses the same logits).
        reduction: "mean" (over kept samples; 0 when none is kept), "sum" or "none" (the
            logits' shape without ``dim``).
        mask: optional boolean keep-mask (True = keep) broadcastable to the logits' shape
            without ``dim``; e.g. ``target != ignore_index``, so the penalty averages over
            the same tokens as the cross-entropy it is added to.

    Returns:
        The penalty in the logits' dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import logsumexp_penalty
        >>> logsumexp_penalty(torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), weight=1.0)
        tensor(2.9576)
    """
    v.check_floating("logits", logits)
    dim = v.check_dim("dim", dim, logits.ndim)
    weight = _check_weight(weight)
    v.check_reduction(reduction)
    shape = logits.shape[:dim] + logits.shape[dim + 1 :]
    kept = None
    if mask is not None:
        v.check_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor (True = keep), got dtype {mask.dtype}")
        v.check_broadcastable_to("mask", mask, tuple(shape), "the logits' shape without dim")
        kept = mask.expand(shape).reshape(-1)
    x2 = as_rows(logits, dim)
    rows = Rows(x2, None, None, 0.0, kept, shape)
    losses = row_loss(_LogSumExpSquare(weight), [x2], None, kept=kept)
    return reduce(losses, rows, reduction, logits.dtype)


# --- modules -----------------------------------------------------------------------------------


class ZLoss(LossModule):
    """Module twin of :func:`z_loss` (the de Brébisson & Vincent Z-loss; for PaLM's
    "z-loss" penalty see :class:`LogSumExpPenalty`)."""

    def __init__(
        self,
        a: float,
        b: float,
        *,
        eps: float = 1e-12,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.a, self.b, self.eps = _z_params(a, b, eps)

    def hyperparameters(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "eps": self.eps}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return z_loss(logits, target, **self.hyperparameters(), **self.options())


class SphericalSoftmaxLoss(LossModule):
    """Module twin of :func:`spherical_softmax_loss`."""

    def __init__(
        self,
        eps: float,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.eps = _check_eps(eps)

    def hyperparameters(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return spherical_softmax_loss(logits, target, **self.hyperparameters(), **self.options())


class TaylorSoftmaxLoss(LossModule):
    """Module twin of :func:`taylor_softmax_loss`."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return taylor_softmax_loss(logits, target, **self.options())


class LogSumExpPenalty(LossModule):
    """Module twin of :func:`logsumexp_penalty` (PaLM's "z-loss"; not :class:`ZLoss`)."""

    shared_options = ("reduction",)

    def __init__(self, weight: float = 1e-4, *, dim: int = 1, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.weight, self.dim = _check_weight(weight), dim

    def hyperparameters(self) -> dict[str, Any]:
        return {"weight": self.weight, "dim": self.dim}

    def forward(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return logsumexp_penalty(logits, **self.hyperparameters(), **self.options(), mask=mask)
