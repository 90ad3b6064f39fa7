r"""Multi-head attention with the gated attention and the clipped softmax of Bondarenko et al.
(2023): a drop-in for ``torch.nn.MultiheadAttention``.

Official code: Qualcomm-AI-research/outlier-free-transformers,
``transformers_language/models/bert_attention.py`` (``BertSelfAttentionWithExtras``) and
``opt_attention.py``; the gate types are its ``AttentionGateType``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import upcast
from softmaxkit.attention.sdpa import SOFTMAXES, scaled_dot_product_attention
from softmaxkit.functional import clipped_softmax
from softmaxkit.functional import softmax as safe_softmax

GATES = (None, "conditional_per_token", "conditional_per_head", "unconditional_per_head")
GATE_INPUTS = ("head_slice", "all_features")


def _logit(p: float, eps: float = 1e-16) -> float:
    """The official ``logit``: ``-log(1/p - 1)`` with ``p`` clipped to ``[eps, 1 - eps]``."""
    p = min(max(p, eps), 1.0 - eps)
    return -math.log(1.0 / p - 1.0)


class _Gate(nn.Module):
    r"""The gate's pre-activation :math:`\pi(x)`; the gate is ``sigmoid`` of it.

    ``forward(x)`` takes the module's query input ``x`` (N, L, E) and returns a tensor that
    broadcasts against the per-head attention output (N, H, L, d): (N, H, L, 1) per token,
    (N, H, 1, 1) per head (the pre-activation mean-pooled over tokens, as the official code),
    (H, 1, 1) unconditional.

    Parameters: ``logit`` (H,) for the unconditional gate; for ``head_slice`` one small
    network per head stored batched, ``weight`` (H, d) and ``bias`` (H,) (the official
    per-head ``Linear(d_head, 1)``), or with a hidden width ``m``: ``weight1`` (H, m, d),
    ``bias1`` (H, m), ``weight`` (H, m), ``bias`` (H,); for ``all_features`` a
    ``Linear(E, H)`` (``proj``) or ``Linear(E, m) -> ReLU -> Linear(m, H)``.
    """

    def __init__(
        self,
        kind: str,
        embed_dim: int,
        num_heads: int,
        *,
        gate_input: str,
        hidden: int | None,
        init: float,
        init_std: float | None,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        self.kind, self.gate_input, self.num_heads = kind, gate_input, num_heads
        H, d = num_heads, embed_dim // num_heads
        bias0 = _logit(init)
        self.hidden = hidden
        if kind == "unconditional_per_head":
            self.logit = nn.Parameter(torch.full((H,), bias0, **factory))
            return
        if gate_input == "all_features":
            last = nn.Linear(embed_dim if hidden is None else hidden, H, **factory)
            self.proj = (
                last
                if hidden is None
                else nn.Sequential(nn.Linear(embed_dim, hidden, **factory), nn.ReLU(), last)
            )
            weight, bias = last.weight, last.bias
        else:
            fan_in = d if hidden is None else hidden
            if hidden is not None:
                self.weight1 = nn.Parameter(torch.empty(H, hidden, d, **factory))
                self.bias1 = nn.Parameter(torch.empty(H, hidden, **factory))
                bound = 1.0 / math.sqrt(d)  # nn.Linear(d, m)'s default init, per head
                nn.init.uniform_(self.weight1, -bound, bound)
                nn.init.uniform_(self.bias1, -bound, bound)
            self.weight = nn.Parameter(torch.empty(H, fan_in, **factory))
            self.bias = nn.Parameter(torch.empty(H, **factory))
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear(fan_in, 1)'s default init, per head
            nn.init.uniform_(self.weight, -bound, bound)
            weight, bias = self.weight, self.bias
        with torch.no_grad():
            bias.fill_(bias0)
            if init_std is not None:
                weight.normal_(0.0, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "unconditional_per_head":
            return self.logit.view(-1, 1, 1)
        N, L, E = x.shape
        H = self.num_heads
        if self.gate_input == "all_features":
            pre: torch.Tensor = self.proj(x).transpose(1, 2).unsqueeze(-1)  # (N, H, L, 1)
        else:
            h = x.reshape(N, L, H, E // H)
            if self.hidden is not None:
                h = torch.relu(torch.einsum("nlhd,hmd->nlhm", h, self.weight1) + self.bias1)
            pre = torch.einsum("nlhd,hd->nhl", h, self.weight) + self.bias.view(H, 1)
            pre = pre.unsqueeze(-1)
        if self.kind == "conditional_per_head":
            pre = pre.mean(2, keepdim=True)  # pooled before the sigmoid, as the official code
        return pre


def _merge_masks(
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    N: int,
    H: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """torch's masks (True = masked OUT, or additive float) as one softmaxkit mask: a boolean
    keep-mask (True = attend) when both are boolean, else an additive float mask. Shapes
    broadcast to (N, H, L, S)."""
    parts: list[torch.Tensor] = []
    if attn_mask is not None:
        parts.append(
            attn_mask.view(N, H, *attn_mask.shape[-2:]) if attn_mask.ndim == 3 else attn_mask
        )
    if key_padding_mask is not None:
        parts.append(key_padding_mask.view(N, 1, 1, key_padding_mask.shape[-1]))
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        keep = ~parts[0]
        return keep if len(parts) == 1 else keep & ~parts[1]
    total: torch.Tensor | None = None
    for p in parts:
        add = (
            p.to(dtype)
            if p.is_floating_point()
            else torch.zeros(p.shape, dtype=dtype, device=p.device).masked_fill_(p, -math.inf)
        )
        total = add if total is None else total + add
    return total


class MultiheadAttention(nn.MultiheadAttention):
    r"""``torch.nn.MultiheadAttention`` with the clipped softmax, the gated attention and a
    probabilities quantizer (Bondarenko et al. 2023).

    .. math::
        \mathrm{head}_h = G_h(x) \odot \mathcal{Q}(\phi(Q_h K_h^\top / \sqrt{d}))\, V_h,
        \qquad \mathrm{out} = [\mathrm{head}_1, \dots, \mathrm{head}_H]\, W_O^\top + b_O

    with :math:`\phi` the softmax or the clipped softmax
    :math:`\operatorname{clip}((\zeta - \gamma)\,\mathrm{softmax} + \gamma, 0, 1)`,
    :math:`\mathcal{Q}` the probabilities quantizer and the gate
    :math:`G_h(x) = \texttt{gate\_scale}\cdot\mathrm{sigmoid}(\pi_h(x))`. The gate multiplies
    each head's attention output **before** the output projection; :math:`x` is the module's
    query input (the hidden state, before the Q/K/V projections; in a pre-LN block the
    normalised input, as the official OPT code).

    Paper: Y. Bondarenko, M. Nagel, T. Blankevoort, "Quantizable Transformers: Removing
    Outliers by Helping Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929. Official
    code: Qualcomm-AI-research/outlier-free-transformers (``BertSelfAttentionWithExtras``,
    ``OPTAttentionWithExtras``).

    Gates (``gate``; official ``AttentionGateType``):

    * ``"conditional_per_token"``: :math:`\pi_h` per token, gate shape (N, H, L, 1) (the
      paper's runs: BERT with an MLP gate, OPT with a linear gate and ``gate_init=0.25``);
    * ``"conditional_per_head"``: :math:`\pi_h` mean-pooled over the tokens **before** the
      sigmoid (as the official code; padded query positions count in the mean there and
      here), gate (N, H, 1, 1);
    * ``"unconditional_per_head"``: a learned vector of H logits, gate (H,).

    ``gate_input="head_slice"`` (official default): head h's :math:`\pi_h` sees only the
    h-th ``E/H`` slice of the hidden state (not that head's Q, K or V), as
    ``Linear(E/H, 1)``, or ``Linear(E/H, m) -> ReLU -> Linear(m, 1)`` with
    ``gate_mlp_hidden=m`` (official ``--attn_gate_mlp``: ``m = E/H // 4``; ``--attn_gate_mlp2``:
    ``m = E/H``). ``"all_features"`` (official ``attn_gate_linear_all_features``): one
    ``Linear(E, H)`` over all features per token.

    Initialisation: the last layer's bias is ``logit(gate_init)`` so the gate starts at
    ``gate_init`` (official ``attn_gate_init``, CLI default 0.5; OPT script 0.25); weights
    have ``nn.Linear``'s default init, or :math:`N(0, \texttt{gate\_init\_std}^2)` (official
    fine-tuning: 0.01 in BERT, 0.001 in OPT). ``gate_scale`` is 1 by default; the official
    code uses ``1 / attn_gate_init`` when fine-tuning a pretrained model.

    Deliberate differences from the official code (each only matters off its defaults):
    the official code sets the bias from ``attn_gate_init`` only for the single-linear
    per-head gate (the MLP gates and the all-features linear keep ``nn.Linear``'s random
    bias, and the unconditional logits start at 0 whatever the init) — here every variant
    starts at ``gate_init``; the official ``gate_scaling_factor`` is not applied to the
    unconditional gate — here ``gate_scale`` applies to all; the official all-features gate
    ignores ``conditional_per_head`` (it is always per token) — here it is pooled; the
    official code has no MLP for all features — here ``gate_mlp_hidden`` gives one.

    Drop-in: the constructor takes torch's arguments (keyword-only after ``num_heads``;
    ``batch_first`` defaults to **True** here, False in torch), the parameters have torch's names
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj``, ``bias_k``, ...) so torch state dicts load
    (``strict=False`` when a gate adds parameters), and ``forward`` has torch's signature and return
    values. **Masks follow torch's MultiheadAttention**: ``key_padding_mask`` (N, S) and
    ``attn_mask`` (L, S) or (N*H, L, S) are True where attention is NOT allowed (or additive floats)
    — the opposite of the rest of softmaxkit. With ``softmax="softmax"``, no gate and no quantizer,
    ``forward`` is ``torch.nn.MultiheadAttention.forward`` itself (bit for bit; like torch's, that
    path applies ``out_proj`` inside a fused function, so forward hooks on ``out_proj`` do not fire
    there: pass an identity ``probs_quantizer`` to take softmaxkit's path). Otherwise: attention
    weights (``need_weights=True``) or dropout in training are computed with the explicit (L, S)
    probabilities (as torch does for weights); else through
    :func:`softmaxkit.attention.scaled_dot_product_attention` (blocked, no (L, S) matrix). A query
    row with no key kept gives zeros (torch too, in recent versions).

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, device, dtype:
            as ``torch.nn.MultiheadAttention``.
        batch_first: (N, L, E) inputs when True (default here), (L, N, E) when False.
        softmax: ``"softmax"`` or ``"clipped"``.
        gamma: the clipped softmax's :math:`\gamma \le 0` (default: the paper's BERT run,
            ``clipped(-.025:1)``).
        zeta: the clipped softmax's :math:`\zeta \ge 1` (default: the same run).
        gate: None or one of the three gate types above.
        gate_input: ``"head_slice"`` or ``"all_features"``.
        gate_mlp_hidden: hidden width of an MLP gate (None: a linear gate).
        gate_init: the gate's initial value in (0, 1).
        gate_scale: the factor on the gate (official fine-tuning: ``1 / gate_init``).
        gate_init_std: std of the gate's last weight at init (None: ``nn.Linear``'s init).
        probs_quantizer: a callable (e.g. a ``softmaxkit.quant`` quantizer; an
            ``nn.Module`` is registered as a submodule) applied to the probabilities before
            they multiply V, and before dropout.
        block_size: key-block size passed to the blocked attention.

    Example:
        >>> import torch
        >>> from softmaxkit.attention import MultiheadAttention
        >>> _ = torch.manual_seed(0)
        >>> mha = MultiheadAttention(16, 4, softmax="clipped", gate="conditional_per_token")
        >>> x = torch.randn(2, 5, 16)
        >>> out, weights = mha(x, x, x)
        >>> out.shape, weights.shape
        (torch.Size([2, 5, 16]), torch.Size([2, 5, 5]))
        >>> plain = torch.nn.MultiheadAttention(16, 4, batch_first=True)
        >>> ours = MultiheadAttention.from_torch(plain)
        >>> torch.equal(ours(x, x, x)[0], plain(x, x, x)[0])
        True
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        softmax: str = "softmax",
        gamma: float = -0.025,
        zeta: float = 1.0,
        gate: str | None = None,
        gate_input: str = "head_slice",
        gate_mlp_hidden: int | None = None,
        gate_init: float = 0.5,
        gate_scale: float = 1.0,
        gate_init_std: float | None = None,
        probs_quantizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        block_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        embed_dim = v.check_int("embed_dim", embed_dim, low=1)
        num_heads = v.check_int("num_heads", num_heads, low=1)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                f"num_heads={num_heads}"
            )
        v.check_number("dropout", dropout, low=0.0, high=1.0)
        for name, flag in (
            ("bias", bias),
            ("add_bias_kv", add_bias_kv),
            ("add_zero_attn", add_zero_attn),
            ("batch_first", batch_first),
        ):
            v.check_bool(name, flag)
        for name, dim in (("kdim", kdim), ("vdim", vdim)):
            if dim is not None:
                v.check_int(name, dim, low=1)
        super().__init__(
            embed_dim,
            num_heads,
            dropout,
            bias,
            add_bias_kv,
            add_zero_attn,
            kdim,
            vdim,
            batch_first,
            device=device,
            dtype=dtype,
        )
        self.softmax = v.check_choice("softmax", softmax, SOFTMAXES)
        self.gamma = v.check_number("gamma", gamma, high=0.0)
        self.zeta = v.check_number("zeta", zeta, low=1.0)
        self.gate = v.check_choice("gate", gate, GATES)
        self.gate_input = v.check_choice("gate_input", gate_input, GATE_INPUTS)
        if gate_mlp_hidden is not None:
            v.check_int("gate_mlp_hidden", gate_mlp_hidden, low=1)
        self.gate_init = v.check_number(
            "gate_init", gate_init, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.gate_scale = v.check_number("gate_scale", gate_scale, low=0.0, low_open=True)
        if gate_init_std is not None:
            v.check_number("gate_init_std", gate_init_std, low=0.0)
        if probs_quantizer is not None:
            v.check_callable("probs_quantizer", probs_quantizer)
        self.probs_quantizer = probs_quantizer
        self.block_size = (
            None if block_size is None else v.check_int("block_size", block_size, low=1)
        )
        self.gate_proj = None
        if gate is not None:
            self.gate_proj = _Gate(
                gate,
                embed_dim,
                num_heads,
                gate_input=gate_input,
                hidden=gate_mlp_hidden,
                init=gate_init,
                init_std=gate_init_std,
                factory={"device": device, "dtype": dtype},
            )

    # torch's encoder layer takes a fused fast path in inference that reads the projection
    # weights and never calls this module; it is refused when ``_qkv_same_embed_dim`` is
    # False, which is what this attribute reports while a softmaxkit feature is on.
    @property
    def _qkv_same_embed_dim(self) -> bool:
        return self.__dict__.get("_same_dims", True) and self._plain()

    @_qkv_same_embed_dim.setter
    def _qkv_same_embed_dim(self, value: bool) -> None:
        self.__dict__["_same_dims"] = value

    def _plain(self) -> bool:
        """Nothing switched on: torch's own forward applies."""
        return (
            getattr(self, "softmax", "softmax") == "softmax"
            and getattr(self, "gate", None) is None
            and getattr(self, "probs_quantizer", None) is None
        )

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, **options: Any) -> MultiheadAttention:
        """This class with ``module``'s configuration and weights (``options``: the
        softmaxkit arguments, e.g. ``softmax="clipped"``, ``gate=...``). At the defaults its
        outputs equal ``module``'s bit for bit."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(
                f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}"
            )
        ref = module.out_proj.weight
        new = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            device=ref.device,
            dtype=ref.dtype,
            **options,
        )
        missing, unexpected = new.load_state_dict(module.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("gate_proj") for k in missing)
        new.train(module.training)
        return new

    def forward(  # type: ignore[override]  # the last two are keyword-only (see docstring)
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        *,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``torch.nn.MultiheadAttention.forward``'s arguments and returns: ``(attn_output,
        attn_weights)``, the weights (N, L, S) averaged over heads (or (N, H, L, S) with
        ``average_attn_weights=False``) or None when ``need_weights=False``. The last two
        arguments are keyword-only here (softmaxkit's limit of six positional parameters;
        torch's own layers pass them by keyword)."""
        if self._plain():
            return super().forward(
                query,
                key,
                value,
                key_padding_mask,
                need_weights,
                attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        return self._extended(
            (query, key, value),
            key_padding_mask,
            attn_mask,
            (need_weights, average_attn_weights, is_causal),
        )

    # ------------------------------------------------------------------------ the new path

    def _inputs(
        self,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        key_padding_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Validate; return batch-first (N, L, E) query, key, value and whether batched."""
        query, key, value = qkv
        for name, t in zip(("query", "key", "value"), qkv):
            v.check_floating(name, t)
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query, key and value must all be 3-D (batched) or all 2-D (unbatched), got "
                f"shapes {tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
            )
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        dims = (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        )
        for name, t, d in dims:
            if t.shape[-1] != d:
                raise ValueError(f"{name} must have {d} features, got shape {tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                "key and value must have the same batch size and length, and query the same "
                f"batch size, got shapes {tuple(qkv[0].shape)}, {tuple(qkv[1].shape)} and "
                f"{tuple(qkv[2].shape)}"
            )
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
        if key_padding_mask is not None:
            self._check_mask("key_padding_mask", key_padding_mask, [(N, S)] if batched else [(S,)])
            key_padding_mask = key_padding_mask.view(N, S)
        if attn_mask is not None:
            self._check_mask("attn_mask", attn_mask, [(L, S), (N * self.num_heads, L, S)])
        return query, key, value, key_padding_mask, batched

    @staticmethod
    def _check_mask(name: str, mask: torch.Tensor, shapes: list[tuple[int, ...]]) -> None:
        v.check_tensor(name, mask)
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(
                f"{name} must be boolean (True = not allowed to attend, torch's convention) "
                f"or an additive float mask, got dtype {mask.dtype}"
            )
        if tuple(mask.shape) not in [tuple(s) for s in shapes]:
            raise ValueError(
                f"{name} must have shape {' or '.join(str(tuple(s)) for s in shapes)}, got "
                f"{tuple(mask.shape)}"
            )

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        E = self.embed_dim
        if self.__dict__.get("_same_dims", True):
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(E)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _extended(
        self,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        key_padding_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        flags: tuple[bool, bool, bool],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        need_weights, average, is_causal = flags
        v.check_bool("need_weights", need_weights)
        v.check_bool("average_attn_weights", average)
        v.check_bool("is_causal", is_causal)
        if is_causal and attn_mask is None:
            raise ValueError(
                "is_causal=True needs attn_mask (a hint that attn_mask is the causal mask, "
                "as in torch.nn.MultiheadAttention)"
            )
        x, key, value, key_padding_mask, batched = self._inputs(qkv, key_padding_mask, attn_mask)
        q, k, val = self._project(x, key, value)
        N, L, E = q.shape
        H, d = self.num_heads, E // self.num_heads
        if self.bias_k is not None:
            assert self.bias_v is not None  # torch creates both or neither
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], 1)
            val = torch.cat([val, self.bias_v.expand(N, 1, E)], 1)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        q, k, val = (t.view(N, t.shape[1], H, d).transpose(1, 2) for t in (q, k, val))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, H, 1, d)], 2)
            val = torch.cat([val, val.new_zeros(N, H, 1, d)], 2)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        mask = _merge_masks(key_padding_mask, attn_mask, N, H, q.dtype)
        weights = None
        if need_weights or (self.training and self.dropout > 0):
            ctx, weights = self._explicit(q, k, val, mask)
        else:
            ctx = scaled_dot_product_attention(
                q,
                k,
                val,
                attn_mask=mask,
                softmax=self.softmax,
                gamma=self.gamma,
                zeta=self.zeta,
                probs_quantizer=self.probs_quantizer,
                block_size=self.block_size,
            )
        if self.gate_proj is not None:
            gate = torch.sigmoid(self.gate_proj(x))
            ctx = ctx * (gate * self.gate_scale if self.gate_scale != 1.0 else gate)
        out = self.out_proj(ctx.transpose(1, 2).reshape(N, L, E))
        if weights is not None:
            weights = weights.mean(1) if average else weights
            weights = weights if batched else weights.squeeze(0)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, (weights if need_weights else None)

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, val: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with the (N, H, L, S) probabilities materialised: returned (after
        quantizer and dropout, as torch returns them after dropout). float16/bfloat16 are
        computed in float32 (the quantizer sees float32 probabilities, as on the blocked
        path) and returned in the input dtype."""
        dtype = q.dtype
        q, k, val = (upcast(t) for t in (q, k, val))
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        keep = None
        if mask is not None and mask.dtype == torch.bool:
            keep = mask.expand(s.shape)
        elif mask is not None:
            s = s + mask.to(s.dtype)
        if self.softmax == "clipped":
            p = clipped_softmax(s, gamma=self.gamma, zeta=self.zeta, mask=keep)
        else:
            p = safe_softmax(s, mask=keep)
        if self.probs_quantizer is not None:
            p = self.probs_quantizer(p)
        p = F.dropout(p, self.dropout, self.training)
        return torch.matmul(p, val).to(dtype), p.to(dtype)

    def extra_repr(self) -> str:
        parts = [
            f"embed_dim={self.embed_dim}",
            f"num_heads={self.num_heads}",
            f"batch_first={self.batch_first}",
            f"softmax={self.softmax!r}",
        ]
        if self.softmax == "clipped":
            parts.append(f"gamma={self.gamma}, zeta={self.zeta}")
        if self.gate is not None:
            parts.append(
                f"gate={self.gate!r}, gate_input={self.gate_input!r}, "
                f"gate_init={self.gate_init}, gate_scale={self.gate_scale}"
            )
        return ", ".join(parts)


def _pad(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more key column: allowed (False / 0), as torch pads for bias_k and zero_attn."""
    return None if mask is None else F.pad(mask, (0, 1))
