r"""MaskLLM: learnable N:M sparsity masks sampled through a Gumbel-softmax.

Paper: G. Fang, H. Yin, S. Muralidharan, G. Heinrich, J. Pool, J. Kautz, P. Molchanov,
X. Wang, "MaskLLM: Learnable Semi-Structured Sparsity for Large Language Models",
NeurIPS 2024, arXiv:2409.17481. Official code: NVlabs/MaskLLM
(``learnable_sparsity/differentiable_mask.py``, ``pretrain_maskllm.py``).

Each group of :math:`M` consecutive weights along the input dimension of an ``nn.Linear``
(4 consecutive elements of the flattened ``(out, in)`` weight, as the official code) chooses
one of the :math:`C = \binom{M}{N}` binary candidate patterns :math:`S_c \in \{0,1\}^M`
with :math:`N` ones. Each group owns logits :math:`\pi \in \mathbb{R}^C`; during training
the mask of the group is the Gumbel-softmax mixture of the candidates

.. math:: \tilde m = \sum_c y_c S_c, \qquad
          y = \mathrm{softmax}\big((\kappa \pi + g) / \tau\big),\ g_c \sim \mathrm{Gumbel}(0, 1),

with the logit scale :math:`\kappa` and the temperature :math:`\tau` annealed linearly over
the training iterations (``t / T``) from their first to their last value; at evaluation the
mask is the arg-max candidate :math:`S_{\arg\max_c \pi_c}`. The training loss adds the
official regulariser that *maximises* the norm of the kept weights (the weights detached, so
only the logits receive its gradient), with its weight decayed linearly to 0:

.. math:: \mathcal{L} = \mathcal{L}_{task}
          - \lambda (1 - t/T) \sum_{\text{layers}} \lVert \mathrm{sg}(W) \odot \tilde m \rVert_2^2 .

Conventions and defaults (REFERENCE 10 and 44):

- Candidates in the official order: 2:4 is 1100, 1010, 1001, 0110, 0101, 0011; 1:4 is the
  four one-hot patterns (lexicographic order of the kept positions). Only 1:4 and 2:4 are
  supported, as the official code.
- Logits initialised from :math:`\mathcal{N}(0, 0.01^2)`; the prior initialisation adds
  :math:`(p_c - 1)\,\mathrm{std}(\pi)\,s` where :math:`p_c` is the overlap of candidate
  :math:`c` with a one-shot prior mask (magnitude pruning here; the scripts use SparseGPT) and
  :math:`s` the strength (3.0, the scripts'). The std is that of the *current* logits (about
  0.01), so the prior's effect depends on the initialisation, as in the official code.
- :math:`\kappa: 10^2 \to 5\cdot 10^2` and :math:`\tau: 4 \to 0.05`: the shipped training
  scripts' values (the argparse defaults are :math:`10^3 \to 10^4` and :math:`4 \to 0.05`, the
  layer constructor's :math:`10^3 \to 10^4` and :math:`4 \to 0.1`). :math:`\lambda = 10^{-5}`
  and ``total_steps = 2000`` are the scripts' too. The paper states a constant :math:`\lambda`;
  the code decays it and we follow the code.
- The mask is soft in training (``hard=False``, the scripts'); ``hard=True`` gives the
  straight-through one-hot mixture.
- The original weights are frozen by default (the scripts' ``mask-only``);
  ``freeze_weights=False`` trains them jointly (not in the paper's experiments).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit.functional import gumbel_softmax

__all__ = [
    "nm_candidates",
    "nm_soft_mask",
    "magnitude_nm_mask",
    "is_nm_sparse",
    "NMMaskLearner",
    "apply_nm_masks",
]

SUPPORTED = ((1, 4), (2, 4))  # the official code's patterns


# ----------------------------------------------------------------------------- checks


def _check_pattern(n: object, m: object) -> tuple[int, int]:
    n = v.check_int("n", n, low=1)
    m = v.check_int("m", m, low=1)
    if (n, m) not in SUPPORTED:
        raise ValueError(
            f"n:m must be one of 1:4, 2:4 (the patterns of the official MaskLLM code), "
            f"got n={n}, m={m}"
        )
    return n, m


def _check_range(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (start, end), got {value!r}")
    start = v.check_number(f"{name}[0]", value[0], low=0.0, low_open=True)
    end = v.check_number(f"{name}[1]", value[1], low=0.0, low_open=True)
    return start, end


def _check_groups(name: str, x: torch.Tensor, m: int) -> None:
    if x.ndim < 1 or x.shape[-1] % m:
        raise ValueError(
            f"{name}'s last dimension must be a multiple of m={m}, got shape {tuple(x.shape)}"
        )


# ----------------------------------------------------------------------- functional core


def nm_candidates(
    n: int = 2,
    m: int = 4,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The :math:`\binom{M}{N}` binary N:M patterns, one per row, in the official order.

    Row :math:`c` is :math:`S_c \in \{0, 1\}^M` with :math:`N` ones; the rows follow the
    lexicographic order of the kept positions, which is the official code's order
    (2:4: 1100, 1010, 1001, 0110, 0101, 0011). Paper: Fang et al., "MaskLLM", NeurIPS 2024,
    arXiv:2409.17481.

    Args:
        n, m: the pattern, 1:4 or 2:4 (default 2:4, the paper's).
        dtype, device: of the result.

    Returns:
        a ``(C, m)`` tensor.

    Example:
        >>> from softmaxkit.sparsity import nm_candidates
        >>> nm_candidates(2, 4)[:2]
        tensor([[1., 1., 0., 0.],
                [1., 0., 1., 0.]])
    """
    n, m = _check_pattern(n, m)
    v.check_floating_dtype("dtype", dtype)
    rows = [
        [1.0 if k in kept else 0.0 for k in range(m)]
        for kept in itertools.combinations(range(m), n)
    ]
    return torch.tensor(rows, dtype=dtype, device=device)


def nm_soft_mask(
    logits: torch.Tensor,
    n: int = 2,
    m: int = 4,
    *,
    scale: float = 1e2,
    tau: float = 4.0,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""One Gumbel-softmax sample of the N:M mask of each group: a mixture of the candidates.

    .. math:: \tilde m = \sum_c y_c S_c,\qquad
              y = \mathrm{gumbel\_softmax}(\kappa\,\pi,\ \tau)

    (:func:`softmaxkit.functional.gumbel_softmax`, noise :math:`-\log E`,
    :math:`E \sim \mathrm{Exp}(1)`, the same draw as torch's). Each row of the result sums to
    :math:`N` and lies in :math:`[0, 1]^M`. Paper: Fang et al., "MaskLLM", NeurIPS 2024,
    arXiv:2409.17481, eq. (3)-(4); official ``DifferentiableMask.forward``.

    Args:
        logits: ``(..., C)`` candidate logits :math:`\pi` of each group,
            :math:`C = \binom{M}{N}`.
        n, m: the pattern (1:4 or 2:4; default 2:4).
        scale: :math:`\kappa > 0` (default :math:`10^2`, the scripts' start value).
        tau: :math:`\tau > 0` (default 4, the scripts' start value).
        hard: straight-through one-hot choice (the official ``hard``; default off).
        generator: for reproducible noise.

    Returns:
        ``(..., m)`` soft masks in ``logits``' dtype (half inputs computed in float32).

    Example:
        >>> import torch
        >>> from softmaxkit.sparsity import nm_soft_mask
        >>> g = torch.Generator().manual_seed(0)
        >>> nm_soft_mask(torch.zeros(3, 6), tau=0.5, generator=g).sum(-1).round()
        tensor([2., 2., 2.])
    """
    n, m = _check_pattern(n, m)
    v.check_floating("logits", logits)
    count = math.comb(m, n)
    if logits.ndim < 1 or logits.shape[-1] != count:
        raise ValueError(
            f"logits must have shape (..., {count}) for {n}:{m} (one logit per candidate), "
            f"got shape {tuple(logits.shape)}"
        )
    scale = v.check_number("scale", scale, low=0.0, low_open=True)
    tau = v.check_number("tau", tau, low=0.0, low_open=True)
    work = compute_dtype(logits)
    candidates = nm_candidates(n, m, dtype=work, device=logits.device)
    return _mix(logits, candidates, scale, tau, hard, generator)


def _mix(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    scale: float,
    tau: float,
    hard: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`nm_soft_mask` on checked arguments and given ``(C, m)`` candidates (the layers
    keep them as a buffer: no rebuild per forward)."""
    work = compute_dtype(logits)
    choices = gumbel_softmax(logits.to(work) * scale, tau, hard=hard, generator=generator)
    return (choices @ candidates.to(work)).to(logits.dtype)


def magnitude_nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    r"""The one-shot magnitude N:M mask: keep the :math:`N` largest :math:`|w|` of each group.

    Groups are :math:`M` consecutive elements along the last dimension (the input dimension
    of an ``nn.Linear`` weight). Ties go to the lower position. This is the magnitude baseline
    of the paper's Table 1 and the default prior of :func:`apply_nm_masks`. Paper: Fang et al.,
    "MaskLLM", NeurIPS 2024, arXiv:2409.17481.

    Args:
        weight: ``(..., d)`` with ``d`` a multiple of ``m``.
        n, m: the pattern (1:4 or 2:4; default 2:4).

    Returns:
        a boolean mask of ``weight``'s shape, ``True`` = keep.

    Example:
        >>> import torch
        >>> from softmaxkit.sparsity import magnitude_nm_mask
        >>> magnitude_nm_mask(torch.tensor([[0.1, -3.0, 2.0, 0.5]]))
        tensor([[False,  True,  True, False]])
    """
    n, m = _check_pattern(n, m)
    v.check_floating("weight", weight)
    _check_groups("weight", weight, m)
    groups = weight.detach().abs().reshape(-1, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)[:, :n]
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(1, order, True)
    return keep.reshape(weight.shape)


def is_nm_sparse(x: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    r"""Whether every group of :math:`M` consecutive elements along the last dim obeys N:M.

    A boolean mask must keep *exactly* :math:`N` of each :math:`M`; a floating tensor (a
    masked weight) must have *at most* :math:`N` non-zeros per group (a kept weight may be
    zero). Paper: Fang et al., "MaskLLM", NeurIPS 2024, arXiv:2409.17481.

    Args:
        x: ``(..., d)`` boolean mask or floating weight, ``d`` a multiple of ``m``.
        n, m: the pattern (1:4 or 2:4; default 2:4).

    Returns:
        a 0-dim boolean tensor (no device synchronisation; ``bool()`` it to read it). An
        empty ``x`` is N:M sparse.

    Example:
        >>> import torch
        >>> from softmaxkit.sparsity import is_nm_sparse
        >>> bool(is_nm_sparse(torch.tensor([[True, False, True, False]])))
        True
    """
    n, m = _check_pattern(n, m)
    v.check_tensor("x", x)
    if x.dtype != torch.bool and not x.is_floating_point():
        raise TypeError(f"x must be a boolean mask or a floating tensor, got {x.dtype}")
    _check_groups("x", x, m)
    counts = (x != 0).reshape(-1, m).sum(-1)
    return (counts == n).all() if x.dtype == torch.bool else (counts <= n).all()


# -------------------------------------------------------------------- the module layer


class _Schedule:
    """The shared annealing state of every layer of one learner (plain object, not a module,
    so the layers' parametrizations can hold it without a module cycle)."""

    def __init__(
        self,
        scale_range: tuple[float, float],
        temperature_range: tuple[float, float],
        total_steps: int,
        hard: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.scale_range = scale_range
        self.temperature_range = temperature_range
        self.total_steps = total_steps
        self.hard = hard
        self.generator = generator
        self.iteration = 0

    @property
    def progress(self) -> float:
        return min(self.iteration / self.total_steps, 1.0)

    def value(self, pair: tuple[float, float]) -> float:
        start, end = pair
        return start + (end - start) * self.progress


class _NMMask(nn.Module):
    """The parametrization ``W -> W * mask`` of one linear layer's weight."""

    candidates: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, n: int, m: int, schedule: _Schedule, gate_init: torch.Tensor
    ) -> None:
        super().__init__()
        self.n, self.m, self.shape = n, m, tuple(weight.shape)
        self.schedule = schedule
        self.gate = nn.Parameter(gate_init)
        self.register_buffer(
            "candidates",
            nm_candidates(n, m, dtype=gate_init.dtype, device=weight.device),
            persistent=False,
        )
        self.last_mask: torch.Tensor | None = None

    def mask(self) -> torch.Tensor:
        if self.training:
            s = self.schedule
            mask = _mix(
                self.gate,
                self.candidates,
                s.value(s.scale_range),
                s.value(s.temperature_range),
                s.hard,
                s.generator,
            )
        else:
            mask = self.candidates[self.gate.argmax(-1)]
        return mask.reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        self.last_mask = mask
        return (weight.to(mask.dtype) * mask).to(weight.dtype)


def _original(layer: nn.Linear) -> torch.Tensor:
    """The unmasked weight of a layer parametrized by :class:`_NMMask`."""
    plists = cast(nn.ModuleDict, layer.parametrizations)
    return cast(parametrize.ParametrizationList, plists.weight).original


def _linears(model: nn.Module, layers: object) -> list[tuple[str, nn.Linear]]:
    found = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    if layers is None:
        return found
    if callable(layers):
        return [(name, mod) for name, mod in found if layers(name, mod)]
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be None, a callable or a list of names, got {layers!r}")
    wanted = list(layers)
    by_name = dict(found)
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError(f"layers names no nn.Linear of the model: {missing}")
    return [(name, by_name[name]) for name in wanted]


class NMMaskLearner(nn.Module):
    r"""MaskLLM's learnable N:M masks on the chosen ``nn.Linear`` layers of a model.

    Each chosen layer's ``weight`` is parametrized as :math:`W \odot \tilde m` (see the module
    docstring for the formulas): a fresh Gumbel-softmax mask mixture of the candidates is
    drawn at each forward in training mode, the arg-max candidate is used in eval mode. The
    learner holds every layer's candidate logits (``learner.parameters()`` are what the
    optimizer trains), the schedules (:meth:`step`), the regulariser (:meth:`regularizer`),
    :meth:`export` and :meth:`remove`. The model's ``state_dict`` holds the logits too (the
    parametrization's ``gate``), so it round-trips into a model with masks applied the same
    way; the learner's own ``state_dict`` holds the logits and the iteration.

    Every read of a masked layer's ``weight`` in training mode draws a new mask (one per
    forward, as the official layer); :meth:`regularizer` uses the last draw of each layer, so
    call it after the forward whose loss it joins.

    Paper: Fang et al., "MaskLLM: Learnable Semi-Structured Sparsity for Large Language
    Models", NeurIPS 2024, arXiv:2409.17481; official code NVlabs/MaskLLM.

    Args:
        model: any module; its ``nn.Linear`` layers (or those chosen by ``layers``) get masks.
        n, m: 1:4 or 2:4 (default 2:4); every chosen layer's ``in_features`` must be a
            multiple of ``m`` (groups run along the input dimension).
        prior: ``"magnitude"`` (the one-shot magnitude N:M mask of each layer), ``None`` (no
            prior, logits stay :math:`\mathcal{N}(0, 0.01^2)`), a boolean mask (one chosen
            layer) or a mapping from layer name to boolean mask of that layer's weight shape.
        prior_strength: :math:`s \ge 0` (default 3.0, the scripts').
        scale_range: :math:`(\kappa_0, \kappa_1)` (default (1e2, 5e2), the scripts').
        temperature_range: :math:`(\tau_0, \tau_1)`, both :math:`> 0` (default (4, 0.05)).
        weight_reg: :math:`\lambda \ge 0` (default 1e-5, the scripts').
        layers: ``None`` (every ``nn.Linear``), a list of module names, or a callable
            ``(name, module) -> bool``.
        total_steps: :math:`T`, the iterations the schedules span (default 2000, the scripts').
        hard: straight-through one-hot sampling (default False, the scripts').
        freeze_weights: keep the original weights frozen (default True: the paper learns
            masks only); they regain their ``requires_grad`` on :meth:`remove`.
        generator: a ``torch.Generator`` for the logit initialisation (drawn in float32 on
            its device) and, when it is on the model's device, for the Gumbel noise; on another
            device the noise uses torch's default generator unless ``learner.generator`` is
            set to a generator on that device.

    Shapes: a layer of weight ``(out, in)`` holds logits ``(out * in / m, C)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from softmaxkit.sparsity import NMMaskLearner, is_nm_sparse
        >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> learner = NMMaskLearner(model, 2, 4, total_steps=10)
        >>> opt = torch.optim.AdamW(learner.parameters(), lr=0.05)
        >>> x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
        >>> for _ in range(3):
        ...     loss = nn.functional.cross_entropy(model(x), y) + learner.regularizer()
        ...     opt.zero_grad(); loss.backward(); opt.step(); learner.step()
        >>> masks, weights = learner.export()
        >>> all(bool(is_nm_sparse(mk)) for mk in masks.values())
        True
        >>> learner.remove()
    """

    def __init__(
        self,
        model: nn.Module,
        n: int = 2,
        m: int = 4,
        *,
        prior: str | torch.Tensor | Mapping[str, torch.Tensor] | None = "magnitude",
        prior_strength: float = 3.0,
        scale_range: tuple[float, float] = (1e2, 5e2),
        temperature_range: tuple[float, float] = (4.0, 0.05),
        weight_reg: float = 1e-5,
        layers: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
        total_steps: int = 2000,
        hard: bool = False,
        freeze_weights: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.n, self.m = _check_pattern(n, m)
        strength = v.check_number("prior_strength", prior_strength, low=0.0)
        schedule = _Schedule(
            _check_range("scale_range", scale_range),
            _check_range("temperature_range", temperature_range),
            v.check_int("total_steps", total_steps, low=1),
            v.check_bool("hard", hard),
            generator,
        )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.weight_reg = v.check_number("weight_reg", weight_reg, low=0.0)
        self.freeze_weights = v.check_bool("freeze_weights", freeze_weights)
        chosen = _linears(model, layers)
        if not chosen:
            raise ValueError("layers chooses no nn.Linear of the model")
        for name, layer in chosen:
            if layer.in_features % self.m:
                raise ValueError(
                    f"layer {name!r} has in_features={layer.in_features}, not a multiple of "
                    f"m={self.m}; N:M groups run along the input dimension"
                )
            if parametrize.is_parametrized(layer, "weight"):
                raise ValueError(f"layer {name!r}'s weight is already parametrized")
        priors = self._priors(prior, chosen)
        device = chosen[0][1].weight.device
        if generator is not None and generator.device != device:
            schedule.generator = None  # the noise is drawn on the model's device
        self._schedule = schedule
        self.names = [name for name, _ in chosen]
        self._layers = chosen  # plain list: the model owns the layers
        self._grad_flags = [layer.weight.requires_grad for _, layer in chosen]
        masks = []
        for (_, layer), prior_mask in zip(chosen, priors):
            gate = self._init_gate(layer.weight, prior_mask, strength, generator)
            mask = _NMMask(layer.weight, self.n, self.m, schedule, gate)
            parametrize.register_parametrization(layer, "weight", mask, unsafe=True)
            if self.freeze_weights:
                _original(layer).requires_grad_(False)
            masks.append(mask)
        self.masks = nn.ModuleList(masks)

    # ---------------------------------------------------------------- construction pieces

    def _priors(
        self,
        prior: str | torch.Tensor | Mapping[str, torch.Tensor] | None,
        chosen: list[tuple[str, nn.Linear]],
    ) -> list[torch.Tensor | None]:
        if prior is None:
            return [None] * len(chosen)
        if isinstance(prior, str):
            v.check_choice("prior", prior, ("magnitude",))
            return [magnitude_nm_mask(layer.weight, self.n, self.m) for _, layer in chosen]
        if isinstance(prior, torch.Tensor):
            if len(chosen) != 1:
                raise ValueError(
                    f"prior as one tensor needs exactly one chosen layer, got {len(chosen)}; "
                    "pass a mapping from layer name to mask"
                )
            prior = {chosen[0][0]: prior}
        if not isinstance(prior, Mapping):
            raise TypeError(
                f"prior must be 'magnitude', None, a boolean tensor or a mapping, got {prior!r}"
            )
        found: list[torch.Tensor | None] = []
        for name, layer in chosen:
            if name not in prior:
                raise ValueError(f"prior has no mask for layer {name!r}")
            mask = prior[name]
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"prior for layer {name!r} must be a boolean tensor")
            if mask.shape != layer.weight.shape:
                raise ValueError(
                    f"prior for layer {name!r} must have shape {tuple(layer.weight.shape)}, "
                    f"got {tuple(mask.shape)}"
                )
            found.append(mask.to(layer.weight.device))
        return found

    def _init_gate(
        self,
        weight: torch.Tensor,
        prior_mask: torch.Tensor | None,
        strength: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        count = math.comb(self.m, self.n)
        dtype = compute_dtype(weight)
        # drawn in float32 (the official gate's dtype) on the generator's device (the CPU
        # without one) whatever the weight's dtype and device,
        # so one seed gives the same logits for every dtype (torch's float32 and float64
        # normal_ draws differ)
        where = "cpu" if generator is None else generator.device
        gate = torch.empty(weight.numel() // self.m, count, dtype=torch.float32, device=where)
        gate.normal_(0.0, 0.01, generator=generator)
        gate = gate.to(device=weight.device, dtype=dtype)
        if prior_mask is not None and strength > 0:
            options = nm_candidates(self.n, self.m, dtype=dtype, device=weight.device)
            overlap = prior_mask.reshape(-1, self.m).to(dtype) @ options.T
            gate = gate + (overlap - 1) * gate.std() * strength
        return gate

    # ------------------------------------------------------------------------ schedules

    @property
    def iteration(self) -> int:
        """Training iterations taken (:meth:`step` calls)."""
        return self._schedule.iteration

    @property
    def scale(self) -> float:
        r"""The current logit scale :math:`\kappa_0 + (\kappa_1 - \kappa_0)\min(t/T, 1)`."""
        return self._schedule.value(self._schedule.scale_range)

    @property
    def temperature(self) -> float:
        r"""The current temperature :math:`\tau_0 + (\tau_1 - \tau_0)\min(t/T, 1)`."""
        return self._schedule.value(self._schedule.temperature_range)

    @property
    def reg_weight(self) -> float:
        r"""The current regulariser weight :math:`\lambda (1 - \min(t/T, 1))`."""
        return self.weight_reg * (1.0 - self._schedule.progress)

    @property
    def generator(self) -> torch.Generator | None:
        """The generator of the Gumbel noise (on the model's device; settable)."""
        return self._schedule.generator

    @generator.setter
    def generator(self, value: torch.Generator | None) -> None:
        if value is not None and not isinstance(value, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {value!r}")
        self._schedule.generator = value

    def step(self) -> None:
        """Advance the schedules by one iteration (call after each optimizer step)."""
        self._schedule.iteration += 1

    def regularizer(self) -> torch.Tensor:
        r"""The term to *add* to the loss: :math:`-\lambda(1 - t/T)\sum \lVert\mathrm{sg}(W)
        \odot \tilde m\rVert^2` over the masks of the last forward (0 before any forward)."""
        total: torch.Tensor | None = None
        masks = self._mask_modules()
        for (_, layer), mask in zip(self._layers, masks):
            if mask.last_mask is None:
                continue
            w = _original(layer).detach().to(mask.last_mask.dtype)
            term = (w * mask.last_mask).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), dtype=masks[0].gate.dtype)
        return -self.reg_weight * total

    # ----------------------------------------------------------------- export / removal

    def hard_masks(self) -> dict[str, torch.Tensor]:
        """Each layer's arg-max candidate mask (boolean, weight-shaped, ``True`` = keep)."""
        with torch.no_grad():
            return {
                name: mask.candidates[mask.gate.argmax(-1)].reshape(mask.shape).bool()
                for name, mask in zip(self.names, self._mask_modules())
            }

    def _mask_modules(self) -> list[_NMMask]:
        """``self.masks`` with their type (``nn.ModuleList`` is not generic)."""
        return [cast(_NMMask, mask) for mask in self.masks]

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(masks, weights)``: the hard masks and the masked original weights per layer
        name (detached copies; the model is unchanged)."""
        masks = self.hard_masks()
        weights = {}
        with torch.no_grad():
            for (name, layer), mk in zip(self._layers, masks.values()):
                original = _original(layer)
                weights[name] = original * mk.to(original.dtype)
        return masks, weights

    def remove(self, *, apply_masks: bool = False) -> None:
        """Remove the masks: the layers get back their original ``weight`` parameters
        (``apply_masks=True`` leaves the hard-masked weights instead) and their
        ``requires_grad``."""
        v.check_bool("apply_masks", apply_masks)
        _, weights = self.export()
        for (name, layer), flag in zip(self._layers, self._grad_flags):
            if not parametrize.is_parametrized(layer, "weight"):
                continue
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
            with torch.no_grad():
                if apply_masks:
                    layer.weight.copy_(weights[name])
            layer.weight.requires_grad_(flag)

    def get_extra_state(self) -> dict[str, int]:
        return {"iteration": self._schedule.iteration}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._schedule.iteration = int(state["iteration"])

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, layers={self.names}, iteration={self.iteration}"


def apply_nm_masks(
    model: nn.Module,
    n: int = 2,
    m: int = 4,
    *,
    prior: str | torch.Tensor | Mapping[str, torch.Tensor] | None = "magnitude",
    prior_strength: float = 3.0,
    scale_range: tuple[float, float] = (1e2, 5e2),
    temperature_range: tuple[float, float] = (4.0, 0.05),
    weight_reg: float = 1e-5,
    layers: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
    **options: Any,
) -> NMMaskLearner:
    r"""Put MaskLLM's learnable N:M masks on ``model``'s linear layers; returns the learner.

    The same as :class:`NMMaskLearner` (see it for the formulas and every argument; the
    keyword ``options`` are its ``total_steps``, ``hard``, ``freeze_weights`` and
    ``generator``). Paper: Fang et al., "MaskLLM", NeurIPS 2024, arXiv:2409.17481.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from softmaxkit.sparsity import apply_nm_masks
        >>> model = nn.Linear(8, 3)
        >>> learner = apply_nm_masks(model, 2, 4)
        >>> _ = model.eval()
        >>> int((model.weight != 0).sum())
        12
    """
    return NMMaskLearner(
        model,
        n,
        m,
        prior=prior,
        prior_strength=prior_strength,
        scale_range=scale_range,
        temperature_range=temperature_range,
        weight_reg=weight_reg,
        layers=layers,
        **options,
    )
