"""The mixture-of-experts layer with grouped dispatch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit.moe.gates import GateOutput


class MoE(nn.Module):
    r"""A mixture-of-experts layer: :math:`y(x) = \sum_{i} G(x)_i \, E_i(x)`.

    The gate (:class:`TopKGate`, :class:`DenseToSparseGate`, :class:`ActivationGate`, or any
    module returning a :class:`GateOutput`) picks K experts per token; the tokens are sorted
    by expert (a stable argsort of the flat expert indices), gathered with ``index_select``,
    split into one contiguous block per expert, each expert is called ONCE on its block,
    the outputs are scaled by their combine weights and summed back per token with
    ``index_add_``. No Python loop over tokens; one loop over the E experts. Equal (up to
    summation order) to the dense reference :math:`\sum_i C_{ti} E_i(x_t)` with the gate's
    combine matrix C (tested in float64). Assignments dropped by a capacity limit are not
    dispatched; their tokens get 0 from that expert.

    Returns ``(output, gate_output)``: ``output`` has the input's shape and dtype
    (``(..., d_model)``; half inputs are combined in float32); add the auxiliary losses to
    the training loss yourself, e.g. ``loss = task_loss + gate_output.aux_loss()`` (Switch
    α = 1e-2 on ``load_balancing_loss``, ST-MoE 1e-3 on ``router_z_loss``).

    Papers: Shazeer et al. 2017 (arXiv:1701.06538, the sparsely-gated layer); the grouped
    dispatch is the usual sort-based implementation (as in Megablocks / Mixtral-style
    code), not a paper formula.

    Args:
        d_model: input and output size of every expert.
        experts: a sequence of E modules, or a factory ``index -> module`` called E times
            (E from ``gate.num_experts``).
        gate: the gating module; its ``num_experts`` must equal the number of experts.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from softmaxkit.moe import MoE, TopKGate
        >>> _ = torch.manual_seed(0)
        >>> layer = MoE(8, lambda i: nn.Linear(8, 8), TopKGate(8, num_experts=4, k=2))
        >>> y, aux = layer(torch.randn(2, 3, 8))
        >>> y.shape, aux.load_balancing_loss.shape
        (torch.Size([2, 3, 8]), torch.Size([]))
    """

    def __init__(
        self,
        d_model: int,
        experts: Sequence[nn.Module] | Callable[[int], nn.Module],
        gate: nn.Module,
    ) -> None:
        super().__init__()
        self.d_model = v.check_int("d_model", d_model, low=1)
        if not isinstance(gate, nn.Module):
            raise TypeError(f"gate must be an nn.Module, got {type(gate).__name__}")
        num = getattr(gate, "num_experts", None)
        if getattr(gate, "d_model", d_model) != d_model:
            raise ValueError(f"gate.d_model is {gate.d_model}, expected d_model={d_model}")
        if isinstance(experts, nn.Module) and not isinstance(
            experts, (nn.ModuleList, nn.Sequential)
        ):
            raise TypeError("experts must be a sequence of modules or a factory index -> module")
        if isinstance(experts, (Sequence, nn.ModuleList, nn.Sequential)):
            modules = list(experts)
        elif callable(experts) and not isinstance(experts, nn.Module):
            if not isinstance(num, int):
                raise TypeError("gate must have an int num_experts to use an expert factory")
            modules = [experts(i) for i in range(num)]
        else:
            raise TypeError("experts must be a sequence of modules or a factory index -> module")
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module):
                raise TypeError(f"experts[{i}] must be an nn.Module, got {type(m).__name__}")
        if isinstance(num, int) and num != len(modules):
            raise ValueError(f"experts has {len(modules)} modules but gate.num_experts is {num}")
        self.experts = nn.ModuleList(modules)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, GateOutput]:
        v.check_floating("x", x)
        if x.ndim == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (..., {self.d_model}), got {tuple(x.shape)}")
        x2 = x.reshape(-1, self.d_model)
        g = self.gate(x2)
        tokens, k = g.expert_indices.shape
        acc = compute_dtype(x2)
        out = torch.zeros(tokens, self.d_model, dtype=acc, device=x.device)
        flat_expert = g.expert_indices.reshape(-1)
        flat_weight = g.combine_weights.reshape(-1)
        flat_token = torch.arange(tokens, device=x.device).repeat_interleave(k)
        kept = g.kept.reshape(-1)
        if not bool(kept.all()):
            flat_expert, flat_weight, flat_token = (
                flat_expert[kept],
                flat_weight[kept],
                flat_token[kept],
            )
        order = torch.argsort(flat_expert, stable=True)
        sorted_token = flat_token.index_select(0, order)
        counts = torch.bincount(flat_expert, minlength=len(self.experts)).tolist()
        chunks = x2.index_select(0, sorted_token).split(counts)
        outputs = [expert(c) for expert, c, n in zip(self.experts, chunks, counts) if n > 0]
        if outputs:
            y = torch.cat(outputs).to(acc) * flat_weight.index_select(0, order).to(acc)[:, None]
            out = out.index_add(0, sorted_token, y)
        return out.to(x.dtype).reshape(x.shape), g
