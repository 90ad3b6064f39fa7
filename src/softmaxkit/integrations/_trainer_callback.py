r"""A Hugging Face ``TrainerCallback`` logging Softmax Collapse while a ``Trainer`` trains.

Private: imports ``transformers`` at the top, so it is imported only by
``softmaxkit.integrations.transformers`` (which exposes :class:`CollapseCallback`) and only
when ``transformers`` is installed (``pip install 'softmaxkit[hf]'``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from softmaxkit.dynamics import CollapseMonitor

__all__ = ["CollapseCallback"]


class CollapseCallback(TrainerCallback):
    r"""Log the Softmax Collapse fraction and the zero-loss fraction of a ``Trainer`` run.

    Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025, arXiv:2501.04697
    (Definition 3, Eqs. 2-4); the metrics of :class:`softmaxkit.dynamics.CollapseMonitor`:

    .. math:: \mathrm{SC} = \text{mean}_n\, \mathbb{1}\Big[\sum_j e^{z_{nj} - \max z_n} = 1\Big],
              \qquad
              \mathrm{ZL} = \text{mean}_{n:\, y_n \ne -100}\, \mathbb{1}[\mathrm{CE}_n = 0]

    in float32 (the official precision), over the tokens of every training forward pass.

    At ``on_train_begin`` it hooks the model's logits module (``get_output_embeddings()``,
    see :class:`~softmaxkit.dynamics.CollapseMonitor`; training-mode calls only, so
    evaluation does not count) and a forward pre-hook on the model that reads the ``labels``
    keyword of each call (causal-LM shift: position ``t`` against ``labels[t + 1]``,
    ``-100`` ignored). Each training log (a ``logs`` dict with ``"loss"``) then gains

    * ``"collapse_fraction"``: the mean SC fraction of the forward passes since the last log;
    * ``"zero_loss_fraction"``: the mean ZL fraction of those that had ``labels``;

    written both into ``logs`` (seen by the callbacks after this one) and into the entry
    the ``Trainer`` appended to ``state.log_history``. Reporting integrations (``report_to``)
    that run before this callback do not see them: add it first with
    ``trainer.callback_handler.callbacks.insert(0, CollapseCallback())`` if they must.

    The records are cleared at each log, so :attr:`monitor` holds only the passes since the
    last one.

    **Fused loss.** When the model's training loss never builds the logits
    (``softmaxkit.integrations.transformers.apply``, Liger-Kernel), there is nothing to
    measure: the callback warns once and logs nothing (never zeros).

    The cost per step is a few elementwise passes over the logits under ``no_grad`` (no extra
    forward pass); ``every`` measures only every n-th training forward, and the values are
    read (one device synchronisation) only when the ``Trainer`` logs.

    Args:
        every: measure every ``every``-th training forward pass. Default 1.
        dtype: softmax precision of the metrics. Default ``torch.float32`` (official).

    Example:
        >>> from softmaxkit.integrations._trainer_callback import CollapseCallback
        >>> callback = CollapseCallback(every=4)  # Trainer(..., callbacks=[callback])
        >>> callback.monitor is None  # hooks are set at on_train_begin
        True
    """

    def __init__(self, *, every: int = 1, dtype: torch.dtype = torch.float32) -> None:
        # checked here (the monitor is built later, at on_train_begin)
        CollapseMonitor(nn.Identity(), every=every, dtype=dtype).remove()
        self.every = every
        self.dtype = dtype
        self.monitor: CollapseMonitor | None = None
        self._labels_hook: Any = None
        self._warned = False

    # ------------------------------------------------------------------------ events
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        self._detach()
        if model is None:
            return
        monitor = CollapseMonitor(model, every=self.every, dtype=self.dtype, training_only=True)
        self.monitor = monitor

        def labels_of(module: nn.Module, margs: Any, mkwargs: dict[str, Any]) -> None:
            labels = mkwargs.get("labels")
            if module.training and isinstance(labels, torch.Tensor):
                monitor.set_target(labels, shift=True)

        self._labels_hook = model.register_forward_pre_hook(labels_of, with_kwargs=True)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.monitor is None or logs is None or "loss" not in logs:
            return
        records = self.monitor.history
        self.monitor.clear()  # the next log averages the passes after this one
        if not records:
            no_logits = self.monitor.placeholder_calls > 0 or self.monitor.calls == 0
            if no_logits and not self._warned:
                self._warned = True
                warnings.warn(
                    "CollapseCallback: the model's training forward builds no logits (its "
                    "loss is fused, e.g. softmaxkit.integrations.transformers.apply), so the "
                    "collapse and zero-loss fractions cannot be measured and are not logged",
                    stacklevel=2,
                )
            return
        values = {"collapse_fraction": _mean([r.fraction for r in records])}
        zero = [r.zero_loss_fraction for r in records if r.zero_loss_fraction is not None]
        if zero:
            values["zero_loss_fraction"] = _mean(zero)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(values)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._detach()

    def _detach(self) -> None:
        if self.monitor is not None:
            self.monitor.remove()
        if self._labels_hook is not None:
            self._labels_hook.remove()
            self._labels_hook = None


def _mean(values: list[torch.Tensor]) -> float:
    """The mean of 0-d tensors as a float (one device synchronisation)."""
    return float(torch.stack([v.float() for v in values]).mean().item())
