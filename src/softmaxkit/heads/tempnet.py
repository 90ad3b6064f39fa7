"""TempNet: a small network that predicts a per-input softmax temperature.

Qiu et al., "To Cool or not to Cool? Temperature Network Meets Large Foundation Models via
DRO" (ICML 2024, arXiv 2404.04575); official code zhqiu/TempNet,
``GPT-2/megatron/model/tempnet.py::TempNet`` (the language-model version).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit._ops.blocks import upcast
from softmaxkit._validation import check_bool, check_floating, check_int, check_number

__all__ = ["TempNet"]


class TempNet(nn.Module):
    r"""The temperature network of Qiu et al. (language-model version): maps a model's
    output logits to one temperature per input, in :math:`(\tau_\min, \tau_\max)`.

    .. math::
        \hat z = z/\|z\|_2,\quad
        h = W_2\,\mathrm{Dropout}(\sigma(W_1 \hat z + b_1)) + b_2 \in \mathbb{R}^{H},\quad
        w = \operatorname{softmax}(h / e^{s}),

    .. math::
        \tau = (\tau_\max - \tau_\min)\,
               \sigma\bigl(u^\top ((w - 1/H) \odot h) + c\bigr) + \tau_\min,

    with the learnable scaler :math:`s` initialised to 0 (= log 1), :math:`u` initialised to
    all ones and :math:`c` to 0, as the official code. Train it with
    :func:`softmaxkit.losses.tempnet_dro_loss`; the official run gives its parameters their
    own optimizer group (lr 2e-6, ``owt2_setup_tempnet.yml``).

    Args:
        in_features: size of the input, i.e. the vocabulary size V of the logits (official
            ``feature_dim=50304``).
        hidden_size: H; default 256 (official ``hid_size``).
        tau_min: default 0.5 (official LM ``tau_min``).
        tau_max: default 5.0 (hard-coded in the official LM code; the CLIP version uses
            0.05 with ``tau_min=0.005``).
        dropout: default 0.5 (official).
        detach_input: default True: the input logits are detached, as the official training
            loop does (``training.py``), so TempNet's gradient does not reach the backbone
            through its input (the backbone still gets the loss's gradient through the logits
            that the loss divides by τ).

    Shapes: input (..., V) -> τ (..., 1), the input's dtype (float16/bfloat16 computed in
    float32). A zero input row is normalised to zero (``F.normalize``'s epsilon).

    Paper vs official code: ``tau_max`` and ``detach_input`` are arguments here (fixed in the
    official code); nothing else differs.

    Example:
        >>> net = TempNet(100, hidden_size=16).eval()
        >>> tau = net(torch.randn(8, 100))
        >>> tau.shape, bool(((tau > 0.5) & (tau < 5.0)).all())
        (torch.Size([8, 1]), True)
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden_size: int = 256,
        tau_min: float = 0.5,
        tau_max: float = 5.0,
        dropout: float = 0.5,
        detach_input: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, low=1)
        self.hidden_size = check_int("hidden_size", hidden_size, low=1)
        self.tau_min = check_number("tau_min", tau_min, low=0.0, low_open=True)
        self.tau_max = check_number("tau_max", tau_max, low=self.tau_min, low_open=True)
        dropout = check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.detach_input = check_bool("detach_input", detach_input)
        self.proj = nn.Sequential(
            nn.Linear(self.in_features, self.hidden_size),
            nn.Sigmoid(),
            nn.Dropout(dropout),
            nn.Linear(self.hidden_size, self.hidden_size),
        )
        self.scaler = nn.Parameter(torch.zeros(()))
        self.last = nn.Linear(self.hidden_size, 1)
        with torch.no_grad():
            self.last.weight.fill_(1.0)
            self.last.bias.fill_(0.0)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_size={self.hidden_size}, "
            f"tau_min={self.tau_min:g}, tau_max={self.tau_max:g}, "
            f"detach_input={self.detach_input}"
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The temperature τ, (..., 1), in the input's dtype."""
        check_floating("input", input)
        if input.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"input must have last dimension in_features={self.in_features}, "
                f"got shape {tuple(input.shape)}"
            )
        x = input.detach() if self.detach_input else input
        x = upcast(x)
        x = x.to(torch.promote_types(x.dtype, upcast(self.last.weight).dtype))
        first, second = cast(nn.Linear, self.proj[0]), cast(nn.Linear, self.proj[3])
        dropout = self.proj[2]

        def linear(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
            return F.linear(h, layer.weight.to(x.dtype), layer.bias.to(x.dtype))

        h = linear(first, F.normalize(x, p=2.0, dim=-1))
        h = linear(second, dropout(torch.sigmoid(h)))
        w = torch.softmax(h / self.scaler.to(x.dtype).exp(), dim=-1)
        diff = linear(self.last, (w - 1.0 / self.hidden_size) * h)
        tau = (self.tau_max - self.tau_min) * torch.sigmoid(diff) + self.tau_min
        return tau.to(input.dtype)
