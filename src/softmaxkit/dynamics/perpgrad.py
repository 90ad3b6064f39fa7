"""⊥Grad: step an inner optimizer on the gradient with its component along the weights removed.

Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability",
ICLR 2025, arXiv:2501.04697, Sec. 5.1, Definition 7 (Eqs. 11-12). Official code:
LucasPrietoAl/grokking-at-the-edge-of-numerical-stability, ``orthograd.py::OrthoGrad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import upcast

__all__ = ["PerpGrad"]


def _forwarded(name: str) -> property:
    """An attribute read from and written to the inner optimizer.

    ``torch.optim.Optimizer.__init__`` runs before the inner optimizer is attached;
    what it stores meanwhile goes to a scratch dict that is dropped afterwards.
    """

    def fget(self: PerpGrad) -> Any:
        inner = self.__dict__.get("_inner")
        if inner is None:
            return self.__dict__["_scratch"][name]
        return getattr(inner, name)

    def fset(self: PerpGrad, value: Any) -> None:
        inner = self.__dict__.get("_inner")
        if inner is None:
            self.__dict__.setdefault("_scratch", {})[name] = value
        else:
            setattr(inner, name, value)

    return property(fget, fset, doc=f"The inner optimizer's ``{name}`` (shared, not a copy).")


def _perpendicular_(param: torch.Tensor, grad: torch.Tensor, rescale: bool) -> None:
    """Overwrite ``grad`` with g - (w.g / w.w) w, rescaled to ||g|| if ``rescale``.

    One tensor, flattened. Computed in float32 for float16/bfloat16 tensors, in the
    tensor's own precision otherwise. w = 0 leaves g unchanged; g parallel to w gives 0.
    """
    w = upcast(param.detach().reshape(-1))
    g = upcast(grad.reshape(-1))
    ww = torch.dot(w, w)
    coef = torch.where(ww > 0, torch.dot(w, g) / ww, 0.0)
    perp = g - coef * w
    if rescale:
        g_norm = torch.linalg.vector_norm(g)
        perp_norm = torch.linalg.vector_norm(perp)
        perp = perp * torch.where(perp_norm > 0, g_norm / perp_norm, 0.0)
    grad.copy_(perp.view(grad.shape))


def _check_lr(name: str, lr: object) -> None:
    """A learning rate >= 0: a real number, or a one-element floating tensor as torch
    accepts (its value read on CPU outside ``torch.compile``)."""
    if isinstance(lr, torch.Tensor):
        V.check_floating(name, lr)
        if lr.numel() != 1:
            raise ValueError(
                f"{name} must be a number or a one-element tensor, got shape {tuple(lr.shape)}"
            )
        V.check_tensor_values(name, lr, low=0.0, high=float("inf"), high_open=True)
    else:
        V.check_number(name, lr, low=0.0)


def _check_params(params: object) -> list[Any]:
    """``params`` as a list: tensors, ``(name, tensor)`` pairs or parameter-group dicts
    (each with a ``"params"`` entry), at least one; a group's ``lr`` is checked too."""
    if isinstance(params, (torch.Tensor, dict, str)) or not isinstance(params, Iterable):
        raise TypeError(
            "params must be an iterable of tensors or parameter-group dicts (e.g. "
            f"model.parameters()), got {type(params).__name__}"
        )
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            "params must be an ordered iterable (a list, a tuple, model.parameters()), got a "
            "set, whose order changes between runs"
        )
    items = list(params)
    if not items:
        raise ValueError("params must hold at least one parameter, got an empty iterable")
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if "params" not in item:
                raise ValueError(f"params[{i}] is a parameter group without a 'params' entry")
            if "lr" in item:
                _check_lr(f"params[{i}]['lr']", item["lr"])
        elif not (
            isinstance(item, torch.Tensor)
            or (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor))
        ):
            raise TypeError(
                f"params[{i}] must be a tensor, a (name, tensor) pair or a parameter-group "
                f"dict, got {type(item).__name__}"
            )
    return items


class PerpGrad(torch.optim.Optimizer):
    r"""⊥Grad ("ortho-grad"): an optimizer wrapper that removes the gradient along the weights.

    Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025,
    arXiv:2501.04697, Definition 7. Before every step of the inner optimizer, each
    parameter tensor's gradient is replaced, per tensor and flattened (weights and
    biases separately), by

    .. math::
        g_\perp = g - \frac{w^\top g}{w^\top w}\, w, \qquad
        g \leftarrow g_\perp \cdot \frac{\lVert g \rVert}{\lVert g_\perp \rVert}
        \ \text{(if ``rescale``)}

    which removes the naïve-loss-minimisation direction (scaling the weights, hence
    the logits, of a positively homogeneous network) and so prevents Softmax Collapse.
    ``rescale=True`` is the official code's behaviour (``OrthoGrad`` rescales to the
    original gradient norm); ``rescale=False`` is the bare projection of the paper's
    Eq. 12. The paper's text (Secs. 1-7) gives only the bare projection and does not
    mention the rescale. Adam-type updates are invariant to a constant gradient scale
    (up to ``eps``) but not to the per-step factor the rescale applies; under SGD the
    rescale keeps the step length.

    The wrapper **shares** the inner optimizer's ``param_groups``, ``state`` and
    ``defaults`` (the same objects), so LR schedulers, ``add_param_group``,
    ``zero_grad``, ``state_dict``/``load_state_dict`` all reach the optimizer that
    steps, and a state dict is interchangeable with one of the plain inner optimizer.

    **The paper's runs.** The authors' driver builds ``OrthoGrad(params, AdamW, lr=lr,
    weight_decay=wd)`` and then loads the state dict of a separately built
    ``AdamW(betas=(0.9, beta2), eps=adam_epsilon)`` into the *wrapper*; that replaces
    only the wrapper's own group dicts, so the AdamW that steps keeps the torch defaults.
    The published ⊥AdamW runs (Figs. 1 and 6; Fig. 1 passes ``--beta2 0.99``, the CLI
    default ``--adam_epsilon`` is 1e-25)
    therefore effectively used ``betas=(0.9, 0.999), eps=1e-8`` while their plain AdamW
    baselines used ``(0.9, 0.99), eps=1e-25``; ⊥SGD got the driver's ``momentum=0.8``.
    Reproduce them with ``PerpGrad(params, lr=0.01, weight_decay=0.0)``.

    Args:
        params: parameters or parameter-group dicts, as for any torch optimizer.
        base_optimizer_cls: the inner optimizer class. Default ``torch.optim.AdamW`` (the
            official driver's default optimizer; the ``OrthoGrad`` class defaults to SGD).
            Its ``step`` is called without a closure, so optimizers that must
            re-evaluate the closure (``torch.optim.LBFGS``) are rejected.
        rescale: rescale :math:`g_\perp` to :math:`\lVert g \rVert`. Default ``True``
            (official code); ``False`` is the paper's formula.
        **base_kwargs: passed to ``base_optimizer_cls`` (``lr``, ``betas``, ...); what is
            not given takes the inner optimizer's torch defaults (note AdamW's
            ``weight_decay=0.01``; the paper uses 0). ``params`` (non-empty: tensors,
            ``(name, tensor)`` pairs or group dicts) and ``lr`` (>= 0, here or in a group)
            are checked here, with errors naming them; the other options are checked by
            the inner optimizer.

    Notes:
        * ``step`` overwrites each ``.grad`` with the projected gradient (as the official
          code does) and skips parameters whose grad is ``None``; sparse gradients raise.
        * The projection is computed in float32 for float16/bfloat16 parameters (the
          official ``1e-30`` guards vanish in float16); instead of those guards, w = 0
          leaves g unchanged and g = c·w gives g⊥ = 0.
        * Nearly parallel g and w: g⊥ is then mostly rounding noise, and the rescale
          blows it up to norm ||g|| in an essentially arbitrary direction (as in the
          official code). A one-element tensor (a scalar gain or bias) is the extreme
          case: its gradient is always parallel to it, so with the rescale it receives
          ±||g|| in a sign set by rounding. Use ``rescale=False``, or leave such
          tensors to a separate plain optimizer.
        * ``step(closure)`` evaluates the closure once with grad enabled, projects, then
          steps the inner optimizer, and returns the closure's loss. (The official code
          passes the closure to the inner step, which recomputes the gradients after the
          projection and so steps on unprojected gradients.)
        * Hooks registered on the wrapper's ``state_dict``/``load_state_dict`` do not run
          (those calls go to the inner optimizer); register them on ``base_optimizer``.

    Example:
        >>> import torch
        >>> from softmaxkit.dynamics import PerpGrad
        >>> model = torch.nn.Linear(4, 3, bias=False)
        >>> opt = PerpGrad(model.parameters(), torch.optim.AdamW, lr=0.01, weight_decay=0.0)
        >>> model(torch.randn(8, 4)).logsumexp(-1).mean().backward()
        >>> w0, g_norm = model.weight.detach().clone(), model.weight.grad.norm()
        >>> opt.step()
        >>> g = model.weight.grad  # projected in place: orthogonal to w0, same norm
        >>> bool(abs((w0 * g).sum()) < 1e-6), bool(torch.isclose(g.norm(), g_norm))
        (True, True)
        >>> opt.param_groups is opt.base_optimizer.param_groups
        True
    """

    param_groups = _forwarded("param_groups")
    state = _forwarded("state")
    defaults = _forwarded("defaults")

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
        *,
        rescale: bool = True,
        **base_kwargs: Any,
    ) -> None:
        V.check_subclass(
            "base_optimizer_cls",
            base_optimizer_cls,
            torch.optim.Optimizer,
            exclude=(torch.optim.LBFGS,),
            why="its step re-evaluates the closure, which would undo the projection",
        )
        V.check_bool("rescale", rescale)
        params = _check_params(params)
        if "lr" in base_kwargs:
            _check_lr("lr", base_kwargs["lr"])
        # torch.optim.Optimizer sets up its hooks and bookkeeping here; the placeholder
        # group it builds lives in the scratch dict and is dropped below.
        super().__init__([torch.empty(0)], {})
        self.__dict__["_inner"] = base_optimizer_cls(params, **base_kwargs)
        self.__dict__.pop("_scratch", None)
        self.rescale = rescale

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The inner optimizer that performs the update."""
        inner: torch.optim.Optimizer = self.__dict__["_inner"]
        return inner

    def __getstate__(self) -> dict[str, Any]:
        return {"_inner": self.base_optimizer, "rescale": self.rescale}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        super().__setstate__({})  # recreates the hook dicts and the step patch

    def __repr__(self) -> str:
        inner = "\n    ".join(repr(self.base_optimizer).splitlines())
        return f"PerpGrad(rescale={self.rescale},\n    base_optimizer={inner})"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        inner = self.__dict__.get("_inner")
        if inner is None:  # called by torch.optim.Optimizer.__init__ for the placeholder
            super().add_param_group(param_group)
        else:
            inner.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        V.check_bool("set_to_none", set_to_none)
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict (loadable into a plain inner optimizer)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the inner optimizer (hyperparameters and state)."""
        self.base_optimizer.load_state_dict(state_dict)

    @torch.no_grad()
    def project_gradients_(self) -> None:
        """Replace every ``.grad`` by its projection (and rescale); ``step`` calls this."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "PerpGrad does not support sparse gradients; got a sparse grad for a "
                        f"parameter of shape {tuple(p.shape)}"
                    )
                _perpendicular_(p, p.grad, self.rescale)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if given), project the gradients, step the inner optimizer.

        Returns the closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.project_gradients_()
        self.base_optimizer.step()
        return loss
