r"""Comp-sum losses (Mao, Mohri & Zhong, ICML 2023).

Paper: A. Mao, M. Mohri, Y. Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
Applications", ICML 2023, arXiv:2304.07288. A comp-sum loss composes a function
:math:`\Phi^\tau` with the sum of exponentiated score differences,

.. math:: \ell_\tau(h, x, y) = \Phi^\tau\Big(\sum_{y' \ne y} e^{h(x, y') - h(x, y)}\Big),
          \qquad
          \Phi^\tau(u) = \begin{cases}
              \frac{(1 + u)^{1 - \tau} - 1}{1 - \tau} & \tau \ge 0,\ \tau \ne 1 \\
              \log(1 + u) & \tau = 1,
          \end{cases}

and since :math:`1 + u = 1 / p_y` with :math:`p = \mathrm{softmax}(h(x, \cdot))`, it is a
function of the softmax probability of the label alone:
:math:`\ell_\tau = (1 - p_y^{\tau - 1}) / (\tau - 1)` (:math:`-\log p_y` at :math:`\tau = 1`).
:math:`\tau = 0` is the sum-exponential loss, :math:`\tau = 1` the logistic loss
(cross-entropy), :math:`\tau \in (1, 2)` the generalized cross-entropy of Zhang & Sabuncu
with :math:`q = \tau - 1`, and :math:`\tau = 2` the mean absolute error :math:`1 - p_y`.

Everything is evaluated from :math:`\log p_y` as
:math:`\operatorname{expm1}((\tau - 1)\log p_y) / (1 - \tau)`, which has no cancellation
near :math:`\tau = 1`, and the gradient is analytic: the cross-entropy gradient
:math:`p - e_y` reweighted by :math:`p_y^{\tau - 1}`. The smooth adversarial comp-sum
losses of the same paper are in :mod:`softmaxkit.losses.adversarial`.
"""

from __future__ import annotations

from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.row_loss import LossModule, RowLoss, class_loss

__all__ = [
    "comp_sum_loss",
    "sum_exp_loss",
    "generalized_cross_entropy",
    "mae_loss",
    "CompSumLoss",
    "SumExpLoss",
    "GeneralizedCrossEntropyLoss",
    "MAELoss",
]

GCE_DEFAULT_Q = 0.7


def _check_tau(tau: float) -> float:
    return v.check_number("tau", tau, low=0.0)


def _check_q(q: float) -> float:
    return v.check_number("q", q, low=0.0, high=1.0, low_open=True)


def _phi(log_p: torch.Tensor, tau: float) -> torch.Tensor:
    """:math:`\\Phi^\\tau` as a function of ``log p`` (elementwise)."""
    if tau == 1.0:
        return -log_p
    return torch.expm1((tau - 1.0) * log_p) / (1.0 - tau)


class _CompSum(RowLoss):
    """The comp-sum loss of one block of rows, evaluated from ``log p`` (:func:`_phi`); a
    probability target gives the expected loss."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def value(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # log_softmax, not z - logsumexp(z): on CPU torch.logsumexp is several times slower
        log_p = torch.log_softmax(z, 1)
        if not t.dtype.is_floating_point:
            return _phi(log_p.gather(1, t.unsqueeze(1)), self.tau).squeeze(1)
        # expected loss sum_k t_k Phi(log p_k); classes without target mass add nothing,
        # even where Phi(log p_k) is infinite (a -inf logit with tau <= 1)
        terms = _phi(log_p, self.tau).mul_(t)
        return terms.masked_fill_(t == 0, 0.0).sum(1)

    def grad(self, z: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # d Phi(log p_k) / d z = -p_k^(tau - 1) (e_k - p), so for weights w_k = t_k p_k^(tau - 1):
        # grad = p * sum_k w_k - w (index targets: w = p_y^(tau - 1) e_y). The weights come
        # from log p, never from log(p), which underflows (p_y = 0 while p_y^(tau-1) is not).
        tau = self.tau
        if not t.dtype.is_floating_point:
            index = t.unsqueeze(1)
            weight = g.unsqueeze(1)
            p = torch.softmax(z, 1)
            if tau != 1.0:
                # log p_y = z_y - lse with lse = max z - log(max p): exact, as max p >= 1/C
                # never underflows, and two row reductions are cheaper than log_softmax
                top = z.amax(1, keepdim=True)
                log_py = z.gather(1, index) - top + p.amax(1, keepdim=True).log()
                weight = weight * torch.exp((tau - 1.0) * log_py)
            return p.mul_(weight).scatter_add_(1, index, -weight)
        log_p = torch.log_softmax(z, 1)
        w = t if tau == 1.0 else (log_p * (tau - 1.0)).exp_().mul_(t).masked_fill_(t == 0, 0.0)
        p = log_p.exp_()
        return p.mul_(w.sum(1, keepdim=True)).sub_(w).mul_(g.unsqueeze(1))


@backend_op
def comp_sum_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    tau: float,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Comp-sum loss :math:`\Phi^\tau(\sum_{y' \ne y} e^{z_{y'} - z_y})` of Mao, Mohri & Zhong.

    .. math:: \ell_\tau(z, y) = \Phi^\tau\Big(\frac{1 - p_y}{p_y}\Big)
              = \begin{cases}
                  \dfrac{1 - p_y^{\tau - 1}}{\tau - 1} & \tau \ne 1 \\
                  -\log p_y & \tau = 1
              \end{cases}
              \qquad p = \mathrm{softmax}(z)

    computed as :math:`\operatorname{expm1}((\tau - 1)\log p_y) / (1 - \tau)` from
    :math:`\log p_y = z_y - \operatorname{logsumexp}(z)`. The family is continuous in
    :math:`\tau`; members: :math:`\tau = 0` sum-exponential (:math:`1/p_y - 1`),
    :math:`\tau = 1` cross-entropy, :math:`\tau \in (1, 2)` generalized cross-entropy
    with :math:`q = \tau - 1`, :math:`\tau = 2` MAE (:math:`1 - p_y`). For
    :math:`\tau > 1` the loss lies in :math:`[0, 1/(\tau - 1))`; for :math:`\tau < 1` it
    grows like :math:`p_y^{-(1-\tau)}` and overflows to ``inf`` once
    :math:`(1 - \tau)(-\log p_y)` passes the dtype's range (about 88 in float32), which
    is the loss's value, not a numerical accident. The gradient is
    :math:`\nabla_z \ell = p_y^{\tau - 1}(p - e_y)`, the cross-entropy gradient
    reweighted by :math:`p_y^{\tau - 1}`; it is computed analytically in row blocks, so
    backward allocates only the gradient.

    Probability targets :math:`t` (and label smoothing, which turns :math:`y` into
    :math:`(1 - \varepsilon) e_y + \varepsilon / C`) give the expected loss
    :math:`\sum_k t_k \ell_\tau(z, k)`, which at :math:`\tau = 1` is exactly
    ``torch.nn.functional.cross_entropy`` with soft targets. Classes with zero target
    mass contribute nothing, even with a ``-inf`` logit.

    Paper: A. Mao, M. Mohri, Y. Zhong, "Cross-Entropy Loss Functions: Theoretical
    Analysis and Applications", ICML 2023, arXiv:2304.07288 (comp-sum losses,
    :math:`\tau \ge 0`). There is no default for :math:`\tau`: it selects the member.

    Args:
        logits: (N, C) or (N, C, d1, ...) scores with classes on dim 1, like
            ``cross_entropy``.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits'
            shape.
        tau: :math:`\tau \ge 0`, finite.
        reduction: "mean" (over non-ignored targets; 0 when all are ignored; over all
            rows for probability targets), "sum" or "none" (per-sample shape).
        ignore_index: class-index target value that contributes nothing.
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in ``cross_entropy``.

    Returns:
        The loss in the logits' dtype (half inputs are computed in float32).

    Example:
        >>> import torch
        >>> from softmaxkit.losses import comp_sum_loss
        >>> z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])
        >>> [round(comp_sum_loss(z, y, tau).item(), 4) for tau in (0.0, 1.0, 1.5, 2.0)]
        [7.7569, 2.1698, 1.3241, 0.8858]
    """
    return class_loss(
        _CompSum(_check_tau(tau)),
        logits,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


@backend_op
def sum_exp_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Sum-exponential loss :math:`\sum_{y' \ne y} e^{z_{y'} - z_y} = 1/p_y - 1`.

    The comp-sum loss at :math:`\tau = 0` (:func:`comp_sum_loss`; Mao, Mohri & Zhong,
    ICML 2023, arXiv:2304.07288), the multi-class exponential loss of boosting. It is
    unbounded: it overflows to ``inf`` once the label trails by about 88 in float32.
    Arguments as in :func:`comp_sum_loss`.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import sum_exp_loss
        >>> sum_exp_loss(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([0]))
        tensor(2.)
    """
    return comp_sum_loss(
        logits,
        target,
        0.0,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


@backend_op
def generalized_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    q: float = GCE_DEFAULT_Q,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Generalized cross-entropy :math:`L_q = (1 - p_y^q)/q` (Zhang & Sabuncu 2018).

    .. math:: L_q(z, y) = \frac{1 - p_y^{\,q}}{q}, \qquad q \in (0, 1]

    which tends to cross-entropy as :math:`q \to 0` and is the MAE :math:`1 - p_y` at
    :math:`q = 1`. It is the comp-sum loss with :math:`\tau = 1 + q`
    (:func:`comp_sum_loss`; Mao, Mohri & Zhong, ICML 2023, arXiv:2304.07288) and is
    bounded by :math:`1/q`.

    Paper: Z. Zhang, M. R. Sabuncu, "Generalized Cross Entropy Loss for Training Deep
    Neural Networks with Noisy Labels", NeurIPS 2018, arXiv:1805.07836, which defines
    :math:`q \in (0, 1]` and uses ``q = 0.7`` in its experiments: that is the default.
    (For :math:`q > 1` use ``comp_sum_loss(..., tau=1 + q)``.) Other arguments as in
    :func:`comp_sum_loss`.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import generalized_cross_entropy
        >>> z, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> generalized_cross_entropy(z, y)
        tensor(0.1601)
    """
    q = _check_q(q)
    return comp_sum_loss(
        logits,
        target,
        1.0 + q,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


@backend_op
def mae_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Mean absolute error of the softmax, :math:`1 - p_y`.

    The comp-sum loss at :math:`\tau = 2` (:func:`comp_sum_loss`; Mao, Mohri & Zhong,
    ICML 2023, arXiv:2304.07288), bounded in :math:`[0, 1]`. Normalisation: papers
    that write MAE as :math:`\lVert e_y - p \rVert_1` (e.g. Ghosh et al. 2017) get
    twice this, since :math:`\lVert e_y - p \rVert_1 = (1 - p_y) + \sum_{k \ne y} p_k
    = 2(1 - p_y)`; multiply by 2 to match them. Arguments as in :func:`comp_sum_loss`.

    Example:
        >>> import torch
        >>> from softmaxkit.losses import mae_loss
        >>> mae_loss(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([3]))
        tensor(0.7500)
    """
    return comp_sum_loss(
        logits,
        target,
        2.0,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


# --------------------------------------------------------------------------------------
# Module twins
# --------------------------------------------------------------------------------------


class CompSumLoss(LossModule):
    """Module twin of :func:`comp_sum_loss`: ``CompSumLoss(tau)(logits, target)``."""

    def __init__(
        self,
        tau: float,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.tau = _check_tau(tau)

    def hyperparameters(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return comp_sum_loss(logits, target, **self.hyperparameters(), **self.options())


class SumExpLoss(LossModule):
    """Module twin of :func:`sum_exp_loss` (comp-sum, tau = 0)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum_exp_loss(logits, target, **self.options())


class GeneralizedCrossEntropyLoss(LossModule):
    """Module twin of :func:`generalized_cross_entropy` (default ``q = 0.7``, Zhang & Sabuncu)."""

    def __init__(
        self,
        q: float = GCE_DEFAULT_Q,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        self.q = _check_q(q)

    def hyperparameters(self) -> dict[str, Any]:
        return {"q": self.q}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return generalized_cross_entropy(logits, target, **self.hyperparameters(), **self.options())


class MAELoss(LossModule):
    """Module twin of :func:`mae_loss` (``1 - p_y``; comp-sum, tau = 2)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mae_loss(logits, target, **self.options())
