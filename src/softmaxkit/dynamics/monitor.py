r"""A Softmax Collapse monitor for real training loops: a forward hook on the logits' module.

Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability", ICLR 2025,
arXiv:2501.04697. The authors' logger (``MetricsLogger.compute_softmax_collapse`` and
``compute_zero_terms``) recomputes both metrics on a separate evaluation pass; this monitor reads
the logits the training forward already produced (no extra forward pass) and measures them with
:func:`softmax_collapse_fraction` / :func:`softmax_collapse`, detached and under ``no_grad``.
"""

from __future__ import annotations

import warnings
from collections import deque
from types import TracebackType
from typing import Any, NamedTuple

import torch
from torch import nn

from softmaxkit import _validation as V
from softmaxkit.dynamics.collapse import softmax_collapse, softmax_collapse_fraction

__all__ = ["CollapseMonitor", "CollapseRecord"]


class CollapseRecord(NamedTuple):
    """One measured forward call of a :class:`CollapseMonitor` (an immutable named tuple).

    Attributes:
        call: 0-based index of the forward call among those the monitor counts (every call,
            or only training-mode calls with ``training_only=True``).
        fraction: 0-d float32 tensor on the logits' device, the Softmax Collapse fraction.
        zero_loss_fraction: 0-d float32 tensor, the fraction of rows whose cross-entropy
            (in ``dtype``) is exactly 0, or ``None`` when no target was given for the call.
    """

    call: int
    fraction: torch.Tensor
    zero_loss_fraction: torch.Tensor | None


def _find_logits_module(model: nn.Module) -> nn.Module:
    """The module whose output is the logits: ``model.get_output_embeddings()`` when that
    method exists and returns a module (Hugging Face models), else ``model`` itself when it
    is an ``nn.Linear`` or has no submodules, else the last ``nn.Linear`` in
    ``model.modules()`` (registration order), else ``model``."""
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        found = getter()
        if isinstance(found, nn.Module):
            return found
    if isinstance(model, nn.Linear) or not any(True for _ in model.children()):
        return model
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else model


def _logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a forward output: a tensor, an object's ``.logits`` (a Hugging Face
    ``ModelOutput``), or the first element of a tuple / list."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class CollapseMonitor:
    r"""Record the Softmax Collapse fraction (and zero-loss fraction) of every n-th forward.

    Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025, arXiv:2501.04697
    (Definition 3, Eqs. 2-4). For the logits :math:`z` of a forward call, with rows along
    ``dim``, it records

    .. math:: \mathrm{SC} = \frac{1}{N}\sum_{n} \mathbb{1}\Big[\sum_j e^{z_{nj} - \max_k z_{nk}}
              = 1\Big], \qquad
              \mathrm{ZL} = \frac{1}{N'}\sum_{n:\, y_n \ne -100}
              \mathbb{1}\big[\mathrm{CE}(z_n, y_n) = 0\big],

    both evaluated in ``dtype`` (default float32, the official ``--softmax_precision 32``),
    exactly as :func:`softmax_collapse` does (same precision, tie and ``-inf`` rules).

    **Which module is hooked.** With ``find=True`` (default): a Hugging Face model's
    ``get_output_embeddings()`` (when it returns a module); a bare ``nn.Linear`` or a leaf
    module itself; otherwise the **last** ``nn.Linear`` registered
    in the model (the usual output head); a model without ``nn.Linear`` is hooked itself.
    ``find=False`` hooks the given module as is. The hooked module's output may be the
    logits tensor, an object with a ``.logits`` tensor, or a tuple whose first element is the
    logits; anything else is skipped with one warning. An output with an empty class axis
    (``(..., 0)``, the placeholder a fused-loss patch such as
    ``softmaxkit.integrations.transformers.apply`` returns, since it never builds the
    logits) is skipped and counted in :attr:`placeholder_calls`, never recorded as zeros.
    :attr:`module` says which module was hooked.

    **The zero-loss fraction needs the targets.** Give them with :meth:`set_target` before
    the forward call (the next call of the hooked module uses them, then drops them). Without
    a target ``zero_loss_fraction`` is ``None``: the target-free alternative, "the top
    probability rounds to exactly 1", is the same event as :math:`S = 1` (``1 / S`` rounds
    to 1 only when ``S`` does), so it would only repeat SC.

    **Cost.** No extra forward pass: the hook reads the output already computed, detached,
    under ``no_grad`` (a few elementwise passes over the logits: cast to ``dtype``, max,
    subtract, exp, sum), and returns nothing, so outputs and gradients are untouched. Use
    ``every`` to measure only every n-th call. Records keep 0-d tensors on the logits'
    device (no ``.item()``, no device synchronisation); convert when you log.

    Args:
        model_or_module: the model or the logits-producing module.
        every: measure every ``every``-th counted call (``>= 1``), starting with the first.
            Default 1.
        dtype: softmax precision of the metrics. Default ``torch.float32`` (official).
        dim: the class axis of the logits. Default ``-1``.
        find: apply the module rule above (default ``True``) or hook ``model_or_module``.
        training_only: count only calls made while the hooked module is in training mode
            (``module.training``). Default ``False``: every call.
        max_history: keep only the last ``max_history`` records (``None``: all).

    Example:
        >>> import torch
        >>> from softmaxkit.dynamics import CollapseMonitor
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(16, 4), torch.randint(3, (16,))
        >>> with CollapseMonitor(net) as monitor:  # hooks net[2], the last nn.Linear
        ...     monitor.set_target(y)
        ...     loss = torch.nn.functional.cross_entropy(net(x), y)
        >>> monitor.module is net[2], len(monitor.history)
        (True, 1)
        >>> monitor.latest.fraction, monitor.latest.zero_loss_fraction  # a fresh net: none yet
        (tensor(0.), tensor(0.))
    """

    def __init__(
        self,
        model_or_module: nn.Module,
        *,
        every: int = 1,
        dtype: torch.dtype = torch.float32,
        dim: int = -1,
        find: bool = True,
        training_only: bool = False,
        max_history: int | None = None,
    ) -> None:
        if not isinstance(model_or_module, nn.Module):
            raise TypeError(
                f"model_or_module must be a torch.nn.Module, got {type(model_or_module).__name__}"
            )
        self.every = V.check_int("every", every, low=1)
        self.dtype = V.check_floating_dtype("dtype", dtype)
        V.check_int("dim", dim)
        self.dim = dim
        self.training_only = V.check_bool("training_only", training_only)
        if max_history is not None:
            V.check_int("max_history", max_history, low=1)
        find = V.check_bool("find", find)
        self.module: nn.Module = _find_logits_module(model_or_module) if find else model_or_module
        self._history: deque[CollapseRecord] = deque(maxlen=max_history)
        self._calls = 0
        self._target: torch.Tensor | None = None
        self._shift = False
        self._warned = False
        self._placeholders = 0
        self._handle: Any = self.module.register_forward_hook(self._hook)

    # ----------------------------------------------------------------------------- API
    def set_target(self, target: torch.Tensor | None, *, shift: bool = False) -> None:
        """Targets for the next forward call of the hooked module (class indices, ``-100`` =
        ignored, or probabilities of the logits' shape), as :func:`softmax_collapse` takes
        them.

        ``shift=True`` is the causal-LM convention (Hugging Face ``labels``): logits
        ``(..., T, V)`` at position ``t`` are scored against ``target[..., t + 1]``, so the
        last position's logits and the first target are dropped (needs ``dim`` = the last
        axis). ``None`` clears a pending target.
        """
        if target is not None:
            V.check_tensor("target", target)
        self._shift = V.check_bool("shift", shift)
        self._target = target

    @property
    def history(self) -> list[CollapseRecord]:
        """The records so far, oldest first (a new list)."""
        return list(self._history)

    @property
    def latest(self) -> CollapseRecord | None:
        """The most recent record, or ``None`` before the first."""
        return self._history[-1] if self._history else None

    @property
    def calls(self) -> int:
        """How many forward calls the monitor has counted (measured or not)."""
        return self._calls

    @property
    def placeholder_calls(self) -> int:
        """Measured calls skipped because the output had an empty class axis: the
        placeholder a fused-loss patch (``softmaxkit.integrations.transformers.apply``,
        Liger-Kernel) returns instead of the logits it never builds."""
        return self._placeholders

    def clear(self) -> None:
        """Forget the records (the call counter keeps running)."""
        self._history.clear()

    def remove(self) -> None:
        """Remove the hook (idempotent); the records stay readable."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> CollapseMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # ---------------------------------------------------------------------------- hook
    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        target, shift = self._target, self._shift
        self._target = None  # a target belongs to one call, counted or not
        if self.training_only and not module.training:
            return
        call = self._calls
        self._calls += 1
        if call % self.every:
            return
        logits = _logits_of(output)
        if logits is not None and logits.ndim > 0 and logits.shape[self.dim] == 0:
            self._placeholders += 1  # no logits: a fused-loss patch's empty placeholder
            return
        if logits is None or not logits.is_floating_point():
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"CollapseMonitor: the output of the hooked {type(module).__name__} is "
                    f"not a floating logits tensor ({type(output).__name__}); nothing is "
                    "recorded (hook the logits-producing module, or pass find=False)",
                    stacklevel=2,
                )
            return
        with torch.no_grad():
            self._history.append(self._measure(call, logits.detach(), target, shift))

    def _measure(
        self, call: int, logits: torch.Tensor, target: torch.Tensor | None, shift: bool
    ) -> CollapseRecord:
        if target is None:
            fraction = softmax_collapse_fraction(logits, dim=self.dim, dtype=self.dtype)
            return CollapseRecord(call, fraction, None)
        if shift:
            if logits.ndim < 2 or self.dim not in (-1, logits.ndim - 1):
                raise ValueError(
                    "set_target(..., shift=True) needs logits (..., T, V) with the classes on "
                    f"the last axis, got logits of shape {tuple(logits.shape)} and dim={self.dim}"
                )
            steps = logits.shape[-2] - 1
            logits = logits.narrow(-2, 0, max(steps, 0))
            target = target.narrow(-1, 1, max(steps, 0)) if steps > 0 else target[..., :0]
        result = softmax_collapse(logits, target, dim=self.dim, dtype=self.dtype)
        return CollapseRecord(call, result.fraction, result.zero_loss_fraction)

    def __repr__(self) -> str:
        state = "attached" if self._handle is not None else "removed"
        return (
            f"CollapseMonitor(module={type(self.module).__name__}, every={self.every}, "
            f"dtype={self.dtype}, records={len(self._history)}, {state})"
        )
