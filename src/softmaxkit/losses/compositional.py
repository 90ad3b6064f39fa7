"""Negative log-likelihood of an unnormalised model by compositional optimisation (MECO).

Jiang, Qin, Wu, Chen, Yang, Zhang, "Learning Unnormalized Statistical Models via
Compositional Optimization", ICML 2023, arXiv:2306.07485.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit._ops.row_loss import LossModule, reduce


class CompositionalState(nn.Module):
    r"""The moving-average estimate :math:`u_t` of :math:`Z = E_{z \sim q}[e^{f_\theta(z)} / q(z)]`.

    .. math:: u_t = (1 - \gamma)\, u_{t-1} + \gamma\, \frac{1}{m} \sum_{j=1}^m
              \frac{e^{f_\theta(z_j)}}{q(z_j)}, \qquad z_j \sim q

    Kept as :math:`\log u_t` (buffer ``log_u``) and updated by a log-sum-exp, which is the
    same recursion as the paper's linear one but cannot overflow however large
    :math:`f_\theta` gets. The first update (``steps == 0``) sets :math:`u_1` to the batch
    estimate itself (equivalently :math:`\gamma_1 = 1`); the paper leaves :math:`u_0` free.

    ``gamma`` is required: the paper's experimental value could not be verified here.
    :math:`\gamma = 1` keeps no memory and gives the plain mini-batch estimator.

    The buffers follow ``.to()`` and ``state_dict``; they are also moved to the device of
    the inputs on first use and promoted to float64 when the inputs are float64.

    Args:
        gamma: moving-average weight of the new batch, in (0, 1].
        device, dtype: of the buffers (default float32).

    Example:
        >>> import torch
        >>> from softmaxkit.losses import CompositionalState
        >>> state = CompositionalState(gamma=0.5)
        >>> _ = state.update(torch.tensor(2.0).log())   # first batch: u = 2
        >>> _ = state.update(torch.tensor(4.0).log())   # u = 0.5 * 2 + 0.5 * 4
        >>> state.log_partition().exp()
        tensor(3.)
    """

    log_u: torch.Tensor
    steps: torch.Tensor

    def __init__(
        self,
        gamma: float,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.gamma = v.check_number("gamma", gamma, low=0.0, high=1.0, low_open=True)
        v.check_floating_dtype("dtype", dtype)
        self.register_buffer("log_u", torch.zeros((), device=device, dtype=dtype))
        self.register_buffer("steps", torch.zeros((), device=device, dtype=torch.long))

    def log_partition(self) -> torch.Tensor:
        """The current estimate :math:`\\log u_t` of :math:`\\log Z` (a detached copy;
        meaningful once ``steps >= 1``)."""
        return self.log_u.detach().clone()

    def reset(self) -> None:
        """Forget the estimate: the next update starts afresh."""
        self.log_u.zero_()
        self.steps.zero_()

    def _follow(self, like: torch.Tensor) -> None:
        dtype = torch.promote_types(self.log_u.dtype, like.dtype)
        if self.log_u.device != like.device or self.log_u.dtype != dtype:
            self.log_u = self.log_u.to(device=like.device, dtype=dtype)
            self.steps = self.steps.to(device=like.device)

    @torch.no_grad()
    def update(self, log_batch_mean: torch.Tensor) -> torch.Tensor:
        """Fold one batch estimate :math:`\\log \\frac1m \\sum_j e^{f(z_j)}/q(z_j)` (a 0-d
        tensor) into the state, in place, and return the new :math:`\\log u_t` (detached)."""
        v.check_floating("log_batch_mean", log_batch_mean)
        if log_batch_mean.ndim != 0:
            raise ValueError(
                f"log_batch_mean must be a 0-d tensor, got shape {tuple(log_batch_mean.shape)}"
            )
        self._follow(log_batch_mean)
        batch = log_batch_mean.detach().to(self.log_u.dtype)
        if self.gamma == 1.0:
            new = batch
        else:
            blended = torch.logaddexp(
                self.log_u + math.log1p(-self.gamma), batch + math.log(self.gamma)
            )
            new = torch.where(self.steps == 0, batch, blended)
        self.log_u.copy_(new)
        self.steps.add_(1)
        return self.log_u.clone()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


def _log_noise_rows(
    log_noise: torch.Tensor | float | None, f_noise: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | float:
    if log_noise is None:
        return 0.0
    if isinstance(log_noise, torch.Tensor):
        v.check_floating("log_noise", log_noise)
        v.check_broadcastable_to("log_noise", log_noise, tuple(f_noise.shape), "f_noise's shape")
        return log_noise.detach().to(dtype).expand(f_noise.shape).reshape(-1)
    return v.check_number("log_noise", log_noise)


@backend_op
def compositional_nll(
    f_data: torch.Tensor,
    f_noise: torch.Tensor,
    state: CompositionalState | None = None,
    *,
    log_noise: torch.Tensor | float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""NLL of an unnormalised model with :math:`\log Z` estimated from noise samples (MECO).

    The model is :math:`p_\theta(x) = e^{f_\theta(x)} / Z(\theta)`: **f is the log of the
    unnormalised density, i.e. minus an energy** (pass ``-energy`` if your network
    outputs energies :math:`E_\theta = -f_\theta`). With noise :math:`z_j \sim q`,

    .. math:: F(\theta) = -\frac1n \sum_{i=1}^n f_\theta(x_i)
              + \log \underbrace{E_{z \sim q}\left[e^{f_\theta(z)} / q(z)\right]}_{Z(\theta)}

    is a compositional objective :math:`g(E[h])` with :math:`g = \log`. Each call updates
    the moving average :math:`u_t` held in ``state`` (see :class:`CompositionalState`)
    and returns a surrogate whose value is the NLL estimate
    :math:`-\frac1n\sum_i f_\theta(x_i) + \log u_t` and whose gradient is the paper's
    stochastic compositional gradient (Algorithm 1, before its momentum step),

    .. math:: -\frac1n \sum_i \nabla f_\theta(x_i)
              + \frac{1}{u_t} \frac1m \sum_j \frac{e^{f_\theta(z_j)}}{q(z_j)} \nabla f_\theta(z_j),

    with :math:`u_t` a constant (it already includes the current batch). The paper's
    momentum :math:`v_t = (1-\beta) v_{t-1} + \beta\,\cdot` and step are the optimiser's
    job (SGD with momentum, Adam). The weights :math:`e^{f_j - \log q_j - \log u_t}` are at
    most :math:`m / \gamma`, so nothing overflows.

    **Side effect and call order.** ``state`` is updated in place by every call, even
    under ``torch.no_grad``: call once per optimisation step, on that step's batches,
    before ``backward``. To evaluate, use ``-f_data.mean() + state.log_partition()``.
    With ``state=None`` the plain mini-batch estimator
    :math:`\log \frac1m \sum_j e^{f_\theta(z_j)}/q(z_j)` is differentiated as is (biased:
    :math:`E[\log \hat Z] \le \log Z`); this equals ``gamma=1``.

    Paper: W. Jiang, J. Qin, L. Wu, C. Chen, T. Yang, L. Zhang, "Learning Unnormalized
    Statistical Models via Compositional Optimization", ICML 2023, arXiv:2306.07485 (MECO).
    No official code was found (Optimization-AI/ICML2023_LDR is another paper). The paper
    keeps :math:`u_t` in linear space; the log-space recursion here is algebraically the same.

    Args:
        f_data: :math:`f_\theta(x_i)` for a batch of data, any shape (n samples in all).
        f_noise: :math:`f_\theta(z_j)` for noise samples :math:`z_j \sim q`, any shape with
            at least one sample.
        state: the :class:`CompositionalState` to use and update; ``None`` for the plain
            mini-batch estimator.
        log_noise: :math:`\log q(z_j)`, a tensor broadcastable to ``f_noise``'s shape (a
            constant: no gradient flows into it) or a number. ``None`` means
            :math:`\log q = 0`: the gradient is unchanged for any constant-density noise
            (uniform on a box), and the value is then off by :math:`\log` (volume).
        reduction: "mean" (the NLL above; 0 for an empty data batch), "sum" (n times it)
            or "none" (per-sample :math:`-f_\theta(x_i) + \log u_t`, shaped like ``f_data``).

    Returns:
        The loss in the promoted dtype of ``f_data`` and ``f_noise`` (computed in float32
        for half inputs).

    Example:
        >>> import torch
        >>> from softmaxkit.losses import CompositionalState, compositional_nll
        >>> state = CompositionalState(gamma=0.1)
        >>> f_data = torch.tensor([-0.5, -0.1])
        >>> f_noise = torch.tensor([-1.0, -0.2, -2.0])
        >>> log_q = torch.tensor([-1.4, -1.0, -2.2])
        >>> compositional_nll(f_data, f_noise, state, log_noise=log_q)
        tensor(0.7985)
        >>> state.steps
        tensor(1)
    """
    v.check_floating("f_data", f_data)
    v.check_floating("f_noise", f_noise)
    v.check_reduction(reduction)
    if state is not None and not isinstance(state, CompositionalState):
        raise TypeError(f"state must be a CompositionalState or None, got {type(state).__name__}")
    if f_noise.numel() == 0:
        raise ValueError("f_noise must hold at least one noise sample, got an empty tensor")
    dtype = compute_dtype(f_data, f_noise)
    a = f_noise.to(dtype).reshape(-1) - _log_noise_rows(log_noise, f_noise, dtype)
    log_m = math.log(a.numel())
    if state is None:
        log_z = torch.logsumexp(a, 0) - log_m
    else:
        log_u = state.update(torch.logsumexp(a.detach(), 0) - log_m).to(dtype)
        w = torch.exp(a - log_u)
        # value log u_t; gradient (1 / u_t) mean_j e^{a_j} grad a_j
        log_z = log_u + (w.mean() - w.detach().mean())
    losses = log_z - f_data.to(dtype)
    return reduce(losses, f_data.shape, reduction, torch.promote_types(f_data.dtype, f_noise.dtype))


class CompositionalNLLLoss(LossModule):
    """Module twin of :func:`compositional_nll` that owns its :class:`CompositionalState`
    (as the submodule ``state``, so the estimate is saved with the model's ``state_dict``).

    Example:
        >>> import torch
        >>> from softmaxkit.losses import CompositionalNLLLoss
        >>> loss_fn = CompositionalNLLLoss(gamma=0.1)
        >>> loss_fn(torch.tensor([-0.5, -0.1]), torch.tensor([-1.0, -0.2, -2.0]))
        tensor(-0.5195)
        >>> loss_fn
        CompositionalNLLLoss(
          reduction='mean'
          (state): CompositionalState(gamma=0.1)
        )
    """

    shared_options = ("reduction",)

    def __init__(self, gamma: float, *, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.state = CompositionalState(gamma)

    def forward(
        self,
        f_data: torch.Tensor,
        f_noise: torch.Tensor,
        log_noise: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        return compositional_nll(f_data, f_noise, self.state, log_noise=log_noise, **self.options())
