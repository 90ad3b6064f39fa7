"""The softmax gates of :mod:`softmaxkit.moe` and their result type."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import upcast
from softmaxkit.functional import topk_softmax

NOISES = (None, "shazeer")
BIAS_PLACEMENTS = ("outside", "inside")


@dataclass
class GateOutput:
    """What a gate returns for ``T`` tokens (the leading dims of the input flattened).

    Attributes:
        combine_weights: ``(T, k)`` weights of the chosen experts, in the input's dtype;
            assignments dropped by the capacity limit have weight 0.
        expert_indices: ``(T, k)`` int64 expert of each weight.
        logits: ``(T, E)`` router logits that were routed on (noise and temperature
            included), float32 for half inputs.
        probs: ``(T, E)`` the full (dense) softmax of ``logits``.
        load_balancing_loss: scalar, Switch Transformer's auxiliary loss (see
            :class:`TopKGate`).
        router_z_loss: scalar, ST-MoE's router z-loss.
        dropped: scalar int64, the number of (token, expert) assignments dropped by the
            capacity limit (0 without one).
        kept: ``(T, k)`` bool, False where an assignment was dropped.
    """

    combine_weights: torch.Tensor
    expert_indices: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    load_balancing_loss: torch.Tensor
    router_z_loss: torch.Tensor
    dropped: torch.Tensor
    kept: torch.Tensor

    def combine_matrix(self) -> torch.Tensor:
        """The dense ``(T, E)`` combine matrix (zeros for experts not chosen)."""
        num_experts = self.logits.shape[-1]
        out = self.combine_weights.new_zeros(self.combine_weights.shape[0], num_experts)
        return out.scatter_add_(1, self.expert_indices, self.combine_weights)

    def aux_loss(self, load_balancing: float = 1e-2, z_loss: float = 1e-3) -> torch.Tensor:
        """``load_balancing * load_balancing_loss + z_loss * router_z_loss``; the defaults
        are Switch Transformer's α = 1e-2 and ST-MoE's c_z = 1e-3."""
        lb = v.check_number("load_balancing", load_balancing, low=0.0)
        z = v.check_number("z_loss", z_loss, low=0.0)
        return lb * self.load_balancing_loss + z * self.router_z_loss


def _flatten_tokens(x: torch.Tensor, d_model: int) -> torch.Tensor:
    v.check_floating("x", x)
    if x.ndim == 0 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (..., {d_model}), got {tuple(x.shape)}")
    return x.reshape(-1, d_model)


def _aux_losses(
    logits: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch load-balancing loss (f_i over the k assignments, normalised by k) and the
    ST-MoE router z-loss; 0 for an empty batch."""
    tokens, num_experts = probs.shape
    if tokens == 0:
        zero = probs.sum() * 0.0
        return zero, zero
    k = indices.shape[1]
    counts = torch.zeros(num_experts, dtype=probs.dtype, device=probs.device)
    counts.scatter_add_(
        0, indices.reshape(-1), torch.ones_like(indices.reshape(-1), dtype=probs.dtype)
    )
    f = counts / (tokens * k)
    p = probs.mean(0)
    balance = num_experts * (f * p).sum()
    z = torch.logsumexp(logits, dim=-1).square().mean()
    return balance, z


def _capacity_keep(indices: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """``(T, k)`` bool: an assignment is kept when fewer than ``capacity`` assignments came
    before it to its expert, in the order (choice rank, then token) -- every token's first
    choice, in token order, before any second choice (GShard / Switch order)."""
    tokens, k = indices.shape
    order = indices.t().reshape(-1)  # rank-major, token-minor
    one_hot = F.one_hot(order, num_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
    return (position < capacity).reshape(k, tokens).t()


def _finish(
    x: torch.Tensor,
    logits: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    capacity_factor: float | None,
) -> GateOutput:
    num_experts = logits.shape[-1]
    probs = torch.softmax(logits, dim=-1)
    balance, z = _aux_losses(logits, probs, indices)
    tokens, k = indices.shape
    if capacity_factor is None:
        kept = torch.ones_like(indices, dtype=torch.bool)
    else:
        capacity = math.ceil(capacity_factor * tokens * k / num_experts)
        kept = _capacity_keep(indices, num_experts, capacity)
        weights = weights * kept
    dropped = (~kept).sum()
    return GateOutput(weights.to(x.dtype), indices, logits, probs, balance, z, dropped, kept)


class TopKGate(nn.Module):
    r"""The top-K sparse softmax gate with optional noise, capacity and auxiliary losses.

    .. math::
        H(x) = W x + b \;(+\; \varepsilon \odot \mathrm{softplus}(W_{noise} x),\;
        \varepsilon \sim \mathcal N(0, I) \text{ in training, if } noise="shazeer"),
        \qquad G(x) = \mathrm{softmax}(\mathrm{TopK}(H(x), K))

    with TopK keeping the K largest logits and setting the rest to -inf, i.e. the softmax
    renormalised over the chosen experts (Nguyen, Akbarian, Yan, Ho, "Statistical Perspective
    of Top-K Sparse Softmax Gating Mixture of Experts", ICLR 2024, arXiv:2309.13850; built on
    :func:`softmaxkit.functional.topk_softmax`; ties go to the lower expert index).

    ``noise="shazeer"``: the noisy top-K gating of Shazeer et al., "Outrageously Large Neural
    Networks: The Sparsely-Gated Mixture-of-Experts Layer" (ICLR 2017, arXiv:1701.06538),
    eq. 4-5: standard normal noise scaled by a learned softplus(W_noise x), added in train
    mode only; W_noise starts at zero as in the paper (so noise starts at softplus(0)).
    Shazeer's own importance/load losses are not implemented; use the Switch loss below.

    Auxiliary losses (always computed, cheap; the user chooses their weights, see
    :meth:`GateOutput.aux_loss`; coefficient 0 switches one off):

    - ``load_balancing_loss`` = :math:`E \sum_i f_i P_i`, Switch Transformer (Fedus, Zoph,
      Shazeer, JMLR 2022, arXiv:2101.03961, eq. 4), :math:`P_i` the mean router probability
      of expert i, :math:`f_i` the fraction of the T·K assignments sent to expert i
      (for K = 1 exactly Switch's fraction of tokens; dividing by K keeps the uniform
      optimum at 1 for every K). Computed before capacity dropping.
    - ``router_z_loss`` = :math:`\frac1T \sum_t \mathrm{logsumexp}(H(x_t))^2`, ST-MoE
      (Zoph et al. 2022, arXiv:2202.08906, eq. 5).

    Capacity: with ``capacity_factor`` c, each expert takes at most
    :math:`\lceil c \cdot T K / E \rceil` assignments; the rest are dropped (weight 0, not
    renormalised, as in Switch where a dropped token passes only through the residual), by
    priority: every token's first choice in token order, then every second choice, ... (the
    GShard / Switch order). ``GateOutput.dropped`` counts the dropped assignments.

    Shapes: input ``(..., d_model)``; outputs over the ``T`` flattened tokens (see
    :class:`GateOutput`). Half inputs are routed in float32; weights return in the input
    dtype.

    Args:
        d_model: input size.
        num_experts: E >= 1.
        k: experts per token, 1 <= k <= E.
        noise: None or "shazeer".
        capacity_factor: None (no dropping, default) or > 0.
        bias: whether the router linear has a bias (the paper's β_0; Switch has none).

    Example:
        >>> import torch
        >>> from softmaxkit.moe import TopKGate
        >>> _ = torch.manual_seed(0)
        >>> gate = TopKGate(8, num_experts=4, k=2)
        >>> out = gate(torch.randn(5, 8))
        >>> out.combine_weights.shape, out.expert_indices.shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
        >>> torch.allclose(out.combine_weights.sum(-1), torch.ones(5))
        True
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        k: int,
        *,
        noise: str | None = None,
        capacity_factor: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = v.check_int("d_model", d_model, low=1)
        self.num_experts = v.check_int("num_experts", num_experts, low=1)
        self.k = v.check_int("k", k, low=1, high=num_experts)
        self.noise = v.check_choice("noise", noise, NOISES)
        if capacity_factor is not None:
            capacity_factor = v.check_number(
                "capacity_factor", capacity_factor, low=0.0, low_open=True
            )
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(d_model, num_experts, bias=v.check_bool("bias", bias))
        self.noise_router = None
        if noise == "shazeer":
            self.noise_router = nn.Linear(d_model, num_experts, bias=False)
            nn.init.zeros_(self.noise_router.weight)

    def forward(self, x: torch.Tensor) -> GateOutput:
        x2 = _flatten_tokens(x, self.d_model)
        xc = upcast(x2)
        logits = F.linear(xc, upcast(self.router.weight).to(xc.dtype), _bias(self.router, xc))
        if self.noise_router is not None and self.training:
            scale = F.softplus(F.linear(xc, self.noise_router.weight.to(xc.dtype)))
            logits = logits + torch.randn_like(logits) * scale
        weights, indices = topk_softmax(logits, self.k, -1, return_indices=True)
        weights = weights.gather(-1, indices)
        return _finish(x2, logits, weights, indices, self.capacity_factor)


def _bias(linear: nn.Linear, like: torch.Tensor) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.to(like.dtype)


class _TemperatureGate(nn.Module):
    """Shared parts: router linear, temperature (fixed, learned, or annealed)."""

    log_temperature: torch.Tensor
    num_steps: torch.Tensor

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        *,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        final_temperature: float | None = None,
        anneal_steps: int = 0,
        bias_placement: str = "outside",
    ) -> None:
        super().__init__()
        self.d_model = v.check_int("d_model", d_model, low=1)
        self.num_experts = v.check_int("num_experts", num_experts, low=1)
        tau = v.check_number("temperature", temperature, low=0.0, low_open=True)
        v.check_bool("learn_temperature", learn_temperature)
        if final_temperature is not None:
            final_temperature = v.check_number(
                "final_temperature", final_temperature, low=0.0, low_open=True
            )
            if learn_temperature:
                raise ValueError(
                    "final_temperature (annealing) and learn_temperature=True exclude each other"
                )
        self.initial_temperature = tau
        self.final_temperature = final_temperature
        self.anneal_steps = v.check_int("anneal_steps", anneal_steps, low=0)
        self.bias_placement = v.check_choice("bias_placement", bias_placement, BIAS_PLACEMENTS)
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        self.bias = nn.Parameter(torch.zeros(num_experts))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        log_tau = torch.tensor(math.log(tau))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @property
    def temperature(self) -> torch.Tensor:
        """The current temperature τ = exp(log_temperature) (a 0-dim tensor)."""
        return self.log_temperature.exp()

    def step(self) -> None:
        """Advance the annealing schedule by one step (a no-op without one): τ goes
        geometrically from ``temperature`` to ``final_temperature`` over ``anneal_steps``
        steps and then stays there."""
        if self.final_temperature is None:
            return
        self.num_steps += 1
        frac = min(int(self.num_steps) / max(self.anneal_steps, 1), 1.0)
        start, end = math.log(self.initial_temperature), math.log(self.final_temperature)
        self.log_temperature.fill_(start + frac * (end - start))

    def _squash(self, z: torch.Tensor) -> torch.Tensor:
        """σ between the router linear and the temperature: the identity here."""
        return z

    def _scores(self, xc: torch.Tensor) -> torch.Tensor:
        tau = self.temperature.to(xc.dtype)
        lin = xc @ self.weight.to(xc.dtype).t()
        b = self.bias.to(xc.dtype)
        if self.bias_placement == "inside":
            return self._squash(lin + b) / tau
        return self._squash(lin) / tau + b

    def forward(self, x: torch.Tensor) -> GateOutput:
        x2 = _flatten_tokens(x, self.d_model)
        logits = self._scores(upcast(x2))
        probs = torch.softmax(logits, dim=-1)
        indices = torch.arange(self.num_experts, device=x2.device).expand(x2.shape[0], -1)
        return _finish(x2, logits, probs, indices, None)


class DenseToSparseGate(_TemperatureGate):
    r"""The dense-to-sparse gate: a softmax of the router logits divided by a temperature.

    .. math:: G(x)_i = \mathrm{softmax}_i\big(\beta_{1i}^\top x / \tau + \beta_{0i}\big)
              \quad (\text{bias\_placement="outside", default})

    or :math:`\mathrm{softmax}_i((\beta_{1i}^\top x + \beta_{0i})/\tau)` with
    ``bias_placement="inside"``. The two are the same family (β_0 rescaled by τ); they
    differ only for a learned or annealed τ. Paper: Nguyen, Akbarian, Ho, "Is Temperature
    Sample Efficient for Softmax Gaussian Mixture of Experts?", ICML 2024,
    arXiv:2401.13875, section 2 (the gate the paper analyses; originally Nie et al.'s
    DTS-Gate, arXiv:2112.14397). Placement of β_0: the paper writes its mixing measure as
    Σ_i exp(β_{0i}) δ_{(β_{1i}, τ, a_i, b_i, ν_i)}, i.e. β_0 is an additive per-expert
    log-weight not divided by τ -- our default. This placement is inferred from that
    mixing-measure form; the paper's body was not available to check it, so both readings
    are offered.

    Temperature: fixed (default 1.0), learned (``learn_temperature=True``, parameterised as
    log τ so τ stays > 0; in the paper τ is a parameter estimated by maximum likelihood), or
    annealed geometrically from ``temperature`` to ``final_temperature`` over
    ``anneal_steps`` calls of :meth:`step` (our schedule; the paper analyses a fixed unknown
    τ and prescribes no schedule). The gate is dense: every expert gets a weight
    (``combine_weights`` is ``(T, E)``), sparsity comes from a small τ.

    Args:
        d_model: input size.
        num_experts: E.
        temperature: τ > 0 (initial value).
        learn_temperature: learn τ by gradient.
        final_temperature: end of the annealing schedule (None = no schedule).
        anneal_steps: steps of the schedule.
        bias_placement: "outside" (default) or "inside" τ.

    Example:
        >>> import torch
        >>> from softmaxkit.moe import DenseToSparseGate
        >>> _ = torch.manual_seed(0)
        >>> gate = DenseToSparseGate(4, 3, temperature=0.5)
        >>> w = gate(torch.randn(2, 4)).combine_weights
        >>> w.shape, torch.allclose(w.sum(-1), torch.ones(2))
        (torch.Size([2, 3]), True)
    """


class ActivationGate(_TemperatureGate):
    r"""The activation dense-to-sparse gate: an activation σ between the router linear and
    the temperature softmax.

    .. math:: G(x)_i = \mathrm{softmax}_i\big(\sigma(\beta_{1i}^\top x) / \tau +
              \beta_{0i}\big) \quad (\text{bias\_placement="outside", default})

    or :math:`\mathrm{softmax}_i(\sigma(\beta_{1i}^\top x + \beta_{0i})/\tau)` with
    ``bias_placement="inside"`` (here the two differ as families, since σ is nonlinear).
    Paper: Nguyen, Akbarian, Ho, "Is Temperature Sample Efficient for Softmax Gaussian
    Mixture of Experts?", ICML 2024, arXiv:2401.13875 (the proposed gate, section 4): the
    linear output goes through σ before the softmax; the rates need σ whose derivatives
    are linearly independent (e.g. tanh, sigmoid), so ReLU and the identity raise a
    warning. Placement of β_0 as in :class:`DenseToSparseGate` (additive log-weight, the
    paper's exp(β_{0i}) mixing weights; inferred, not checked against the paper's body).

    Args:
        activation: σ, an elementwise callable (default ``torch.tanh``).

    The other arguments (``d_model``, ``num_experts``, ``temperature``,
    ``learn_temperature``, ``final_temperature``, ``anneal_steps``, ``bias_placement``) are
    as in :class:`DenseToSparseGate`.

    Example:
        >>> import torch
        >>> from softmaxkit.moe import ActivationGate
        >>> _ = torch.manual_seed(0)
        >>> gate = ActivationGate(4, 3)
        >>> gate(torch.randn(2, 4)).combine_weights.shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
        *,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        final_temperature: float | None = None,
        anneal_steps: int = 0,
        bias_placement: str = "outside",
    ) -> None:
        super().__init__(
            d_model,
            num_experts,
            temperature=temperature,
            learn_temperature=learn_temperature,
            final_temperature=final_temperature,
            anneal_steps=anneal_steps,
            bias_placement=bias_placement,
        )
        self.activation: Callable[[torch.Tensor], torch.Tensor] = v.check_callable(
            "activation", activation
        )
        if _is_linear_or_relu(activation):
            warnings.warn(
                "ActivationGate: the paper's rates need an activation whose derivatives are "
                "linearly independent (e.g. tanh, sigmoid); ReLU / identity do not qualify",
                UserWarning,
                stacklevel=2,
            )

    def _squash(self, z: torch.Tensor) -> torch.Tensor:
        return self.activation(z)


def _is_linear_or_relu(fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    if fn in (torch.relu, F.relu, torch.nn.functional.relu) or isinstance(
        fn, (nn.ReLU, nn.Identity)
    ):
        return True
    probe = torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    try:
        out = fn(probe)
    except Exception:  # noqa: BLE001 - a probe only
        return False
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        return False
    identity = torch.allclose(out, probe)
    relu = torch.allclose(out, probe.clamp_min(0))
    return bool(identity or relu)
