"""LDR-KL and ALDR-KL losses (Zhu, Ying & Yang, ICML 2023).

Both losses are the worst case, over a distribution ``p`` on the classes, of the expected
margin violation regularised by ``KL(p || uniform)``; its closed form is a scaled
log-mean-exp of the margins. ALDR-KL adapts the regularisation strength (a temperature)
per training instance and keeps it as state between calls.

The per-row work runs through the loss engine (:mod:`softmaxkit._ops.row_loss`) with an
analytic gradient: the chain rule through the logit normalisation is done in closed form,
so forward and backward each make a few passes over one row block and allocate only the
gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import compute_dtype, maybe_any, row_blocks, workspace
from softmaxkit._ops.row_loss import BufferedRowLoss, LossModule, prepare, reduce, row_loss

__all__ = ["ldr_kl_loss", "aldr_kl_loss", "LDRKLLoss", "ALDRKLLoss"]

NORMALIZATIONS = ("softplus_mean", "l1_mean", None)

#: the official smoothing of ``p`` before its KL to uniform (``softmax(.) + 1e-5``)
_P_FLOOR = 1e-5


# --- row kernels -------------------------------------------------------------------------------


def _target_dot(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """<t, x> per row where a class without target mass counts 0 even if x is -inf there."""
    return torch.where(t != 0, t * x, 0.0).sum(1, keepdim=True)


def _scaled(
    z: torch.Tensor, normalize: str | None, lam: float | torch.Tensor, buf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """``buf <- N(z) / lam`` for the normalisation ``N``; returns (buf, scale, nonfinite).

    ``scale`` is the (b, 1) divisor of the normalisation (mean softplus, or mean |z| over
    the finite entries); ``nonfinite`` says whether an infinite logit may be present
    (only tracked for "l1_mean", where it changes the gradient).
    """
    if normalize is None:
        return torch.mul(z, 1.0 / lam, out=buf), None, False
    k = z.shape[1]
    if normalize == "softplus_mean":
        torch.ops.aten.softplus.out(z, 1, 20, out=buf)
        # the mean as the sum of softplus / K: finite wherever the mean is (the plain sum
        # overflows for logits near the dtype's maximum); all logits below ~-88 (float32)
        # underflow softplus to 0: keep the divisor normal
        tiny, top = torch.finfo(buf.dtype).tiny, torch.finfo(buf.dtype).max
        scale = buf.mul_(1.0 / k).sum(1, keepdim=True).clamp_(min=tiny)
        return buf.mul_(torch.div(k / lam, scale).clamp_(max=top)), scale, False
    torch.abs(z, out=buf)
    scale = buf.mean(1, keepdim=True)
    nonfinite = maybe_any(torch.isinf(scale))
    if nonfinite:  # a -inf logit is an impossible class: it stays -inf, outside the norm;
        # the sum of |z| / K is finite wherever the mean is (the plain sum may overflow)
        scale = buf.nan_to_num_(nan=0.0, posinf=0.0).mul_(1.0 / k).sum(1, keepdim=True)
    # an all-zero row (e.g. a zero-initialised head) stays 0, its gradient taken at scale 1
    scale = torch.where(scale > 0, scale, 1.0)
    # divide (not multiply by 1 / scale): a subnormal scale has no finite reciprocal
    return torch.div(z, scale, out=buf).div_(lam), scale, nonfinite


def _add_scaled(u: torch.Tensor, t: torch.Tensor, coef: float | torch.Tensor) -> None:
    """``u += coef * t`` with a scalar or (b, 1) ``coef``."""
    if isinstance(coef, torch.Tensor):
        u.addcmul_(t, coef)
    else:
        u.add_(t, alpha=coef)


class _LDR(BufferedRowLoss):
    """Per-row LDR-KL value and gradient.

    ``lam`` is the loss's fixed lambda, or ``None`` when lambda comes per row as the first
    engine extra (ALDR-KL; its second extra is the detached additive term). Two scratch
    blocks are reused by every block of forward and backward.
    """

    buffers = 2

    def __init__(self, margin: float, normalize: str | None, lam: float | None) -> None:
        self.margin, self.normalize, self.lam = margin, normalize, lam

    def _buf(self, i: int, z: torch.Tensor) -> torch.Tensor:
        return self.block_work(z)[i]

    def _lam(
        self, extras: Sequence[torch.Tensor]
    ) -> tuple[float | torch.Tensor, torch.Tensor | None]:
        if self.lam is not None:
            return self.lam, None
        return extras[0].unsqueeze(1), extras[1]

    def _margins(
        self, z: torch.Tensor, t: torch.Tensor, lam: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """``u' = z~ / lam - (c / lam) t`` in scratch 0 (the margins over lam up to a per-row
        constant), with ``<t, z~> / lam``, the normalisation's scale and its nonfinite flag."""
        u, scale, nonfinite = _scaled(z, self.normalize, lam, self._buf(0, z))
        cl = self.margin / lam
        if t.dtype.is_floating_point:
            tu = _target_dot(t, u)
            _add_scaled(u, t, -cl)
        else:
            idx = t.unsqueeze(1)
            tu = u.gather(1, idx)
            u.scatter_(1, idx, tu - cl)
        return u, tu, scale, nonfinite

    def value(self, z: torch.Tensor, t: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        # L = lam log mean_k exp(m_k / lam) = c + lam (LSE(u') - <t, z~> / lam - log K);
        # for a class index y this is -lam (log_softmax(u')_y + log K)
        lam, extra = self._lam(extras)
        u, tu, _, _ = self._margins(z, t, lam)
        log_k = math.log(z.shape[1])
        if t.dtype.is_floating_point:
            out = lam * (torch.logsumexp(u, 1, keepdim=True) - tu - log_k) + self.margin
        else:
            logp: torch.Tensor = torch.ops.aten._log_softmax.out(u, 1, False, out=self._buf(1, z))
            out = -lam * (logp.gather(1, t.unsqueeze(1)) + log_k)
        out = out.squeeze(1)
        return out if extra is None else out + extra

    def grad(self, z: torch.Tensor, t: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        # dL/dz~ = q - t with q = softmax(m / lam); then the chain rule through z~ = N(z)
        *extras, g = rest
        lam, _ = self._lam(extras)
        k = z.shape[1]
        prob = t.dtype.is_floating_point
        u, tu, scale, nonfinite = self._margins(z, t, lam)
        q: torch.Tensor = torch.ops.aten._softmax.out(u, 1, False, out=self._buf(1, z))
        h = g.unsqueeze(1) if scale is None else g.unsqueeze(1) / scale
        if self.normalize is not None:
            # w = <q - t, z~> = lam <q, u'> + c <q, t> - <t, z~>, as z~ = lam u' + c t
            if nonfinite:
                u.nan_to_num_(nan=0.0, neginf=0.0)
            qu = u.mul_(q).sum(1, keepdim=True)
            qt = (q * t).sum(1, keepdim=True) if prob else q.gather(1, t.unsqueeze(1))
            hw = h * (lam * (qu - tu) + self.margin * qt) / k
        # softplus_mean: dz~_k/ds_j = ([k = j] - z~_k / K) / mu, ds_j/dz_j = sigmoid(z_j)
        grad = q.mul_(h).sub_(hw) if self.normalize == "softplus_mean" else q.mul_(h)
        if prob:
            grad.addcmul_(t, -h)
        else:
            grad.scatter_add_(1, t.unsqueeze(1), -h)
        if self.normalize == "softplus_mean":
            grad.mul_(torch.sigmoid(z, out=self._buf(0, z)))
        elif self.normalize == "l1_mean":
            # dz~_k/dz_j = ([k = j] - z~_k sign(z_j) / K) / d
            sign = torch.sign(z, out=self._buf(0, z))
            if nonfinite:
                sign.masked_fill_(torch.isinf(z), 0.0)
            grad.addcmul_(sign, -hw)
        return grad


def _aldr_lambdas(
    x2: torch.Tensor,
    lam_prev: torch.Tensor,
    lam0: float,
    alpha: float,
    normalize: str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The closed-form lambda step of ``ALDRLoss_V1`` for every row of ``x2``:
    ``lam0 (1 - KL(p || uniform) / (alpha log K))``, ``p = softmax(z~ / lam_prev) + 1e-5``
    renormalised."""
    rows, k = x2.shape
    out = torch.full((rows,), lam0, dtype=dtype, device=x2.device)
    if k <= 1 or rows == 0:
        return out
    log_k, norm = math.log(k), 1.0 + k * _P_FLOOR
    work = workspace(x2, dtype, 2)
    with torch.no_grad():
        for b in row_blocks(rows, k):
            n = b.stop - b.start
            z = x2[b].detach().to(dtype)
            u, _, _ = _scaled(z, normalize, lam_prev[b].unsqueeze(1), work[0][:n])
            p = torch.ops.aten._softmax.out(u, 1, False, out=work[1][:n])
            p.mul_(1.0 / norm).add_(_P_FLOOR / norm)
            kl = log_k + torch.log(p, out=work[0][:n]).mul_(p).sum(1)
            out[b] = lam0 - lam0 * kl / (alpha * log_k)
    return out


# --- validation --------------------------------------------------------------------------------


def _check_common(lam_name: str, lam: float, margin: float, normalize: str | None) -> None:
    v.check_number(lam_name, lam, low=0.0, low_open=True)
    v.check_number("margin", margin, low=0.0)
    v.check_choice("normalize", normalize, NORMALIZATIONS)


def _check_alpha(alpha: float) -> None:
    # alpha <= 1 lets lambda = lam0 (1 - KL / (alpha log K)) reach 0 (KL -> log K)
    v.check_number("alpha", alpha, low=1.0, low_open=True)


def _sample_shape(logits: torch.Tensor) -> torch.Size:
    return logits.shape[:1] + logits.shape[2:]


# --- LDR-KL ------------------------------------------------------------------------------------


@backend_op
def ldr_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    lam: float = 10.0,
    margin: float = 0.1,
    normalize: str | None = "softplus_mean",
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Label-distributionally robust loss with a KL regulariser (LDR-KL).

    .. math::
        \ell(z, y) = \max_{p \in \Delta_K} \sum_k p_k m_k - \lambda\,
                     \mathrm{KL}(p \,\|\, \tfrac{1}{K}\mathbf{1})
                   = \lambda \log \frac{1}{K} \sum_{k=1}^K e^{m_k / \lambda},
        \qquad m_k = c\,[k \ne y] + \tilde z_k - \tilde z_y,

    with the logits normalised first, as in the authors' code:
    ``"softplus_mean"`` :math:`\tilde z = \mathrm{softplus}(z) / \mathrm{mean}_k
    \mathrm{softplus}(z_k)` (``LDRLoss_V1``), ``"l1_mean"`` :math:`\tilde z = z / (\lVert z
    \rVert_1 / K)` (the ``ALDRLoss_V1`` default) or ``None`` (:math:`\tilde z = z`). The
    :math:`1/K` inside the log is the KL-to-uniform dual; it is a constant offset
    :math:`-\lambda \log K` from :math:`\lambda\,\mathrm{LSE}(m / \lambda)`. Large
    :math:`\lambda` tends to the uniform average :math:`\mathrm{mean}_k m_k`, small
    :math:`\lambda` to the Crammer-Singer form :math:`\max_k m_k`. The gradient is
    :math:`\partial \ell / \partial \tilde z = \mathrm{softmax}(m / \lambda) - e_y`, carried
    through the normalisation in closed form (no autograd graph; row blocks).

    A probability target :math:`t` (and label smoothing, which makes one) enters the
    authors' formula in place of their one-hot float labels:
    :math:`m_k = c\,(1 - t_k) + \tilde z_k - \langle t, \tilde z\rangle`. This is what
    ``LDRLoss_V1`` computes when handed soft labels, it is again an LDR-KL loss (label cost
    :math:`c(1 - t_k)`, reward :math:`\langle t, \tilde z\rangle`) with gradient
    :math:`\mathrm{softmax}(m/\lambda) - t`, and it costs one pass; the expected loss
    :math:`\sum_y t_y \ell(z, y)` (the engine's default extension) is a different function
    and would not match the official code on soft labels.

    Paper: D. Zhu, Y. Ying, T. Yang, "Label Distributionally Robust Losses for Multi-class
    Classification: Consistency, Robustness and Adaptivity", ICML 2023, arXiv:2112.14869.
    Official code: Optimization-AI/ICML2023_LDR (``loss.py``, ``experiment.py``).

    Defaults are the official experiment driver's (``experiment.py``: ``--margin 0.1``,
    ``parameter_set = [10]`` for LDR with the grid [0.1, 1, 10] commented out); the
    ``LDRLoss_V1`` class defaults are ``threshold=2.0``, ``Lambda=1.0``. The logit
    normalisation comes from the official code; the paper defines the loss on the model's
    scores (``normalize=None``). The value can be negative: for large lambda it is close
    to :math:`\mathrm{mean}_k m_k`. Differences from ``LDRLoss_V1``: ``reduction``,
    ``ignore_index``, probability targets and ``label_smoothing`` are added (the official
    returns the batch mean of one-hot targets); a row whose logits are all below about
    -88 (float32), where softplus underflows to 0 and the official divides 0 by 0, keeps a
    finite loss and gradient; "l1_mean" follows :func:`aldr_kl_loss` (an all-zero row and
    -inf logits stay finite). Softplus-mean is not invariant to rescaling the logits
    (softplus is not homogeneous; as the scale grows it tends to the "l1_mean"
    normalisation of relu(z)); "l1_mean" is exactly invariant to positive rescaling.

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1, like ``cross_entropy``.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        lam: the KL weight (temperature) :math:`\lambda > 0`; official driver 10.
        margin: the label cost :math:`c \ge 0` (the official ``threshold``); driver 0.1.
        normalize: "softplus_mean" (official LDR), "l1_mean" or None.
        reduction: "mean" (over non-ignored targets; 0 when all are ignored), "sum", "none".
        ignore_index: target value that contributes nothing (index targets).
        label_smoothing: eps in [0, 1]; the target becomes (1 - eps) e_y + eps / C.

    Returns:
        The reduced loss in the logits' dtype (half inputs are computed in float32).

    Example:
        >>> import torch
        >>> from softmaxkit.losses import ldr_kl_loss
        >>> z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
        >>> ldr_kl_loss(z, torch.tensor([0, 2]))
        tensor(-0.2387)
        >>> ldr_kl_loss(z, torch.tensor([0, 2]), lam=1.0, margin=2.0, reduction="none")
        tensor([0.5471, 2.1901])
    """
    _check_common("lam", lam, margin, normalize)
    v.check_reduction(reduction)
    rows = prepare(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing)
    loss = _LDR(float(margin), normalize, float(lam))
    losses = row_loss(loss, [rows.logits], rows.target, kept=rows.kept, smoothing=rows.smoothing)
    return reduce(losses, rows, reduction, logits.dtype)


class LDRKLLoss(LossModule):
    """Module twin of :func:`ldr_kl_loss` (same arguments and defaults)."""

    def __init__(
        self,
        *,
        lam: float = 10.0,
        margin: float = 0.1,
        normalize: str | None = "softplus_mean",
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        _check_common("lam", lam, margin, normalize)
        self.lam, self.margin, self.normalize = float(lam), float(margin), normalize

    def hyperparameters(self) -> dict[str, Any]:
        return {"lam": self.lam, "margin": self.margin, "normalize": self.normalize}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ldr_kl_loss(
            logits,
            target,
            lam=self.lam,
            margin=self.margin,
            normalize=self.normalize,
            **self.options(),
        )


# --- ALDR-KL -----------------------------------------------------------------------------------


@backend_op
def aldr_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    lam_prev: torch.Tensor | float,
    *,
    lam0: float = 10.0,
    alpha: float = 2.0,
    margin: float = 0.1,
    normalize: str | None = "l1_mean",
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Adaptive LDR-KL (ALDR-KL): LDR-KL with a per-instance lambda, one update per call.

    For each instance with previous :math:`\lambda^{\mathrm{prev}}`, as ``ALDRLoss_V1``
    computes it:

    .. math::
        p &= \mathrm{normalize}_1\big(\mathrm{softmax}(\tilde z / \lambda^{\mathrm{prev}})
             + 10^{-5}\big), \qquad
        \mathrm{KL} = \sum_k p_k \log(K p_k), \\
        \lambda &= \lambda_0 - \lambda_0\,\frac{\mathrm{KL}}{\alpha \log K}, \\
        \ell &= \lambda \log \frac{1}{K} \sum_k e^{m_k / \lambda}
                - \frac{\alpha \log K}{2 \lambda_0} (\lambda - \lambda_0)^2,

    with :math:`m` and :math:`\tilde z` as in :func:`ldr_kl_loss`. :math:`\lambda` is the
    maximiser of :math:`-\lambda\,\mathrm{KL} - \frac{\alpha \log K}{2\lambda_0}(\lambda -
    \lambda_0)^2` for that ``p``: one alternating step of the paper's max over
    :math:`(p, \lambda)`. It is detached, so the last term is a constant and the gradient
    flows only through :math:`\tilde z`. Because :math:`\mathrm{KL} < \log K`,
    :math:`\lambda > \lambda_0 (1 - 1/\alpha)`, which is why ``alpha`` must exceed 1: the
    class default ``alpha=1`` lets lambda reach 0 (it rounds to 0 in float32 once ``p``
    is one-hot) and divides the margins by zero.

    The functional form is stateless: pass the instances' previous lambdas and keep the
    returned ones (:class:`ALDRKLLoss` does this in a buffer). Ignored rows keep their
    previous lambda. Note that, as in the official code, ``p`` uses the softmax of the
    normalised logits without the margin term (the exact maximiser over ``p`` for a fixed
    lambda would be ``softmax(m / lambda)``).

    Paper: D. Zhu, Y. Ying, T. Yang, "Label Distributionally Robust Losses for Multi-class
    Classification: Consistency, Robustness and Adaptivity", ICML 2023, arXiv:2112.14869.
    Official code: Optimization-AI/ICML2023_LDR, ``loss.py::ALDRLoss_V1``.

    Defaults are the official driver's (``experiment.py`` / ``run_demo_ALDR.sh``: margin
    0.1, lambda0 10, alpha 2); the class defaults are ``threshold=1.0, Lambda=1.0,
    alpha=1.0``. ``normalize="l1_mean"`` is the class default (``softplus=False``);
    ``experiment.py`` passes ``softplus=True`` (our ``"softplus_mean"``) for CIFAR-100 only.
    Differences from ``ALDRLoss_V1``, besides the engine's ``reduction``, ``ignore_index``,
    probability targets (as in :func:`ldr_kl_loss`) and ``label_smoothing``: ``alpha > 1``
    is enforced; nothing is tied to CUDA; the ``1e-5`` renormalisation divides by
    ``1 + K 1e-5`` (the official divides by the computed sum: equal up to rounding); an
    all-zero logit row (official: NaN) normalises to 0 with its gradient taken at scale 1,
    and -inf logits (official: NaN) stay -inf outside the L1 norm; ``K = 1`` keeps
    ``lambda = lam0`` (official: 0/0).

    Args:
        logits: (N, C) or (N, C, d1, ...) with classes on dim 1.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        lam_prev: previous lambdas, positive, broadcastable to the per-sample shape (N,) or
            (N, d1, ...) (a float for all instances, e.g. ``lam0`` on first sight).
        lam0: the reference lambda :math:`\lambda_0 > 0`; official driver 10.
        alpha: the lambda regulariser's weight, > 1; official driver 2.
        margin: the label cost :math:`c \ge 0`; driver 0.1.
        normalize: "l1_mean" (official default), "softplus_mean" or None.
        reduction: "mean" (over non-ignored targets), "sum" or "none".
        ignore_index: target value that contributes nothing and keeps its lambda.
        label_smoothing: eps in [0, 1].

    Returns:
        ``(loss, lam_new)``: the reduced loss in the logits' dtype, and the new lambdas
        (detached) with the per-sample shape, in ``lam_prev``'s dtype (a float gives the
        compute dtype).

    Example:
        >>> import torch
        >>> from softmaxkit.losses import aldr_kl_loss
        >>> z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
        >>> loss, lam = aldr_kl_loss(z, torch.tensor([0, 2]), 10.0)  # first sight: lam0
        >>> loss, lam
        (tensor(-0.4031), tensor([9.9750, 9.9797]))
        >>> aldr_kl_loss(z, torch.tensor([0, 2]), lam)  # the next step starts from lam
        (tensor(-0.4031), tensor([9.9749, 9.9796]))
    """
    _check_alpha(alpha)
    _check_common("lam0", lam0, margin, normalize)
    v.check_reduction(reduction)
    rows = prepare(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing)
    dtype = compute_dtype(rows.logits)
    sample_shape = _sample_shape(logits)
    if isinstance(lam_prev, torch.Tensor):
        v.check_floating("lam_prev", lam_prev)
        v.check_broadcastable_to("lam_prev", lam_prev, tuple(sample_shape), "the sample shape")
        v.check_tensor_values("lam_prev", lam_prev, low=0.0, low_open=True)
        out_dtype = lam_prev.dtype
        prev = lam_prev.detach().to(device=logits.device, dtype=dtype)
    else:
        v.check_number("lam_prev", lam_prev, low=0.0, low_open=True)
        out_dtype = dtype
        prev = torch.tensor(float(lam_prev), dtype=dtype, device=logits.device)
    prev = prev.expand(sample_shape).reshape(-1)
    lam_new = _aldr_lambdas(rows.logits, prev, float(lam0), float(alpha), normalize, dtype)
    if rows.kept is not None and maybe_any(~rows.kept):
        lam_new = torch.where(rows.kept, lam_new, prev)
    num_classes = logits.shape[1]
    weight = alpha * math.log(num_classes) / (2.0 * lam0) if num_classes > 0 else 0.0
    extra = (lam_new - lam0).square_().mul_(-weight)
    losses = row_loss(
        _LDR(float(margin), normalize, None),
        [rows.logits],
        rows.target,
        kept=rows.kept,
        smoothing=rows.smoothing,
        extras=[lam_new, extra],
    )
    loss = reduce(losses, rows, reduction, logits.dtype)
    return loss, lam_new.reshape(sample_shape).to(out_dtype)


class ALDRKLLoss(LossModule):
    """ALDR-KL with the per-instance lambdas kept in a buffer (see :func:`aldr_kl_loss`).

    ``num_samples`` is the training set's size; ``forward(logits, target, index)`` takes
    each sample's dataset id in ``index`` (the per-sample shape: (N,), or (N, d1, ...) where
    every position is an instance with its own id). Side effect: in training mode each call
    reads ``lam[index]``, computes the loss with the updated lambdas and writes them back
    into ``lam``, so calling it twice on the same ids gives a different second result (the
    official behaviour). In eval mode ``lam`` is read, not written. Call it once per
    training step, before ``backward``; ids should be unique within a call among the
    non-ignored positions (with duplicates, which lambda is stored is unspecified, as in
    the official code). Ignored positions need a valid id but never change ``lam``.

    The buffer ``lam`` (float32 unless converted; initialised to ``lam0``) is saved in
    ``state_dict`` and follows ``.to(device/dtype)``; the official ``ALDRLoss_V1`` keeps
    it in a plain attribute on CUDA. :meth:`reset` sets every lambda back to ``lam0``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import ALDRKLLoss
        >>> crit = ALDRKLLoss(100)
        >>> z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
        >>> crit(z, torch.tensor([0, 2]), torch.tensor([7, 42]))
        tensor(-0.4031)
        >>> crit.lam[[7, 42]]
        tensor([9.9750, 9.9797])
    """

    lam: torch.Tensor

    def __init__(
        self,
        num_samples: int,
        *,
        lam0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        normalize: str | None = "l1_mean",
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        v.check_int("num_samples", num_samples, low=0)
        _check_alpha(alpha)
        _check_common("lam0", lam0, margin, normalize)
        self.num_samples = num_samples
        self.lam0, self.alpha, self.margin = float(lam0), float(alpha), float(margin)
        self.normalize = normalize
        self.register_buffer("lam", torch.full((num_samples,), self.lam0))

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "lam0": self.lam0,
            "alpha": self.alpha,
            "margin": self.margin,
            "normalize": self.normalize,
        }

    def reset(self) -> None:
        """Set every instance's lambda back to ``lam0``."""
        with torch.no_grad():
            self.lam.fill_(self.lam0)

    def _check_index(self, index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Dataset ids of any integer dtype, returned as int64, of the per-sample shape."""
        v.check_tensor("index", index)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.is_complex():
            raise TypeError(f"index must hold sample ids (an integer dtype), got {index.dtype}")
        index = v.check_index_dtype("index", index)  # any integer dtype, as int64
        expected = tuple(_sample_shape(logits)) if logits.ndim >= 2 else None
        if expected is not None and tuple(index.shape) != expected:
            raise ValueError(
                f"index must have the per-sample shape {expected} (one dataset id per "
                f"instance), got {tuple(index.shape)}"
            )
        if index.device.type == "cpu" and index.numel() > 0 and not torch.compiler.is_compiling():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.num_samples:
                raise ValueError(
                    f"index must hold sample ids in [0, {self.num_samples - 1}], "
                    f"got {lo if lo < 0 else hi}"
                )
        return index

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        index = self._check_index(index, logits)
        loss, lam_new = aldr_kl_loss(
            logits,
            target,
            self.lam[index],
            lam0=self.lam0,
            alpha=self.alpha,
            margin=self.margin,
            normalize=self.normalize,
            **self.options(),
        )
        if self.training:
            ids, new = index.reshape(-1), lam_new.reshape(-1)
            if not target.dtype.is_floating_point:
                kept = target.reshape(-1) != self.ignore_index
                if maybe_any(~kept):
                    ids, new = ids[kept], new[kept]
            with torch.no_grad():
                self.lam.index_put_((ids,), new.to(self.lam.dtype))
        return loss
