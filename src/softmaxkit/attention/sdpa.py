r"""Scaled dot-product attention with the clipped softmax (Bondarenko et al. 2023).

:func:`scaled_dot_product_attention` takes ``torch.nn.functional.scaled_dot_product_attention``'s
arguments (query ``(..., L, E)``, key ``(..., S, E)``, value ``(..., S, Ev)``, a boolean
``attn_mask`` with True = attend or an additive float mask, ``is_causal`` top-left aligned,
``scale``) and adds the softmax to use and a quantizer of the probabilities.

**The blocked path.** The clipped softmax ``clip((zeta - gamma) softmax(s) + gamma, 0, 1)``
is not invariant to a rescaling of the row's normaliser, so the one-pass online softmax of
FlashAttention cannot be used. The forward walks the key blocks of each query block twice:
pass 1 reduces each row to its log-sum-exp ``lse``; pass 2 forms the clipped probabilities
of each (query block, key block) tile from ``lse`` and accumulates them times V. Only
``lse`` (one number per query row) is saved besides the inputs; no ``(L, S)`` tensor is
ever built: one tile of about :data:`TILE_ELEMENTS` entries (and its few same-sized
temporaries) is alive at a time. When whole rows fit in a tile (the default while
:data:`MIN_ROWS` rows of all S keys fit: S up to 8192 at batch x heads = 16), there is one
key block per query block: the two walks share its tile, torch's fused softmax computes the
row statistics, and backward uses torch's fused softmax backward; longer rows are cut into
key blocks of :data:`DEFAULT_BLOCK` (or ``block_size``) keys.

**The gradient** (derived here, computed in :func:`_backward`). With
``s_ij = scale q_i . k_j + b_ij`` (``b`` the mask), ``p_ij = exp(s_ij - lse_i)``,
``u_ij = (zeta - gamma) p_ij + gamma``, ``y_ij = clamp(u_ij, 0, 1)``, ``y'_ij = Q(y_ij)``
(the quantizer, identity without one) and ``o_i = sum_j y'_ij v_j``, and ``g_i = dL/do_i``:

1. ``dL/dv_j = sum_i y'_ij g_i``.
2. ``dL/dy'_ij = g_i . v_j``; ``dL/dy_ij`` is that through the quantizer's own backward
   (its straight-through estimator), computed per tile with ``torch.autograd.grad``.
3. ``dL/du_ij = 1[0 <= u_ij <= 1] dL/dy_ij``: the clip passes the gradient inclusively at its
   bounds (``torch.clamp``'s rule) and blocks it for entries clipped strictly outside [0, 1].
4. ``dp_ij := dL/dp_ij = (zeta - gamma) dL/du_ij``.
5. The softmax Jacobian: ``dL/ds_ij = p_ij (dp_ij - D_i)`` with ``D_i = sum_j p_ij dp_ij``.
   ``D_i`` needs the whole row before any ``dL/ds_ij`` can be formed, so backward walks the
   key blocks twice as well: pass A accumulates ``D``, pass B forms ``dL/ds`` tile by tile.
   (FlashAttention's shortcut ``D_i = g_i . o_i`` does not hold here: the clip and the
   stretch make ``o_i != sum_j p_ij v_j``.) Clipped-away entries still receive gradient
   through ``-p_ij D_i``, as in the unblocked clipped softmax.
6. ``dL/dq_i = scale sum_j dL/ds_ij k_j``, ``dL/dk_j = scale sum_i dL/ds_ij q_i`` and, for a
   float mask that requires grad, ``dL/db_ij = dL/ds_ij``.

A fully masked query row has ``lse = -inf``; it is set to ``+inf`` so that its ``p`` is 0,
its ``y`` is ``clamp(gamma) = 0`` and every gradient through it is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype, maybe_any, unit_open_bounds

SOFTMAXES = ("softmax", "clipped")

#: elements of one (batch, query block, key block) tile: the query block is sized so that
#: a tile holds about this many entries (4 MiB of float32). Measured (float32 forward +
#: backward, B 2, H 8, L = S = 1024, E 64, one thread, time / naive composition): 2^20:
#: 0.43, 2^22: 0.60, 2^23: 0.54 (and 2^18 slower still at two threads).
TILE_ELEMENTS = 1 << 20
#: key-block length when rows are too long for whole-row tiles, or ``block_size``'s
#: default meaning. Measured (same shapes, one thread, block size forced, time / naive):
#: 128: 0.76, 256: 0.74, 512: 0.79, whole rows: 0.54 -- several key blocks cost two more
#: score matmuls per tile and a few more element-wise passes, so whole rows are used
#: wherever they fit (:data:`MIN_ROWS`). All on a shared, loaded 2-core machine.
DEFAULT_BLOCK = 256
#: by default a tile holds whole rows (one key block: the two walks share it and torch's
#: fused softmax kernels compute the row statistics) while at least this many rows fit.
MIN_ROWS = 8


@dataclass(frozen=True, kw_only=True)
class _Options:
    """One call's options of the blocked path (frozen: passed to the autograd Function)."""

    scale: float
    gamma: float
    zeta: float
    clip: bool
    causal: bool
    batch: tuple[int, ...]
    block_q: int
    block_k: int
    quantizer: Callable[[torch.Tensor], torch.Tensor] | None
    out_dtype: torch.dtype


@dataclass(frozen=True)
class _Inputs:
    """The blocked path's tensors: ``qs`` = q times the scale (N, L, E), ``k`` (N, S, E),
    ``val`` (N, S, Ev), ``mask`` None / boolean / float (..., L, S)."""

    qs: torch.Tensor
    k: torch.Tensor
    val: torch.Tensor
    mask: torch.Tensor | None


# ------------------------------------------------------------------------------- tiles


def _spans(n: int, step: int) -> list[slice]:
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _key_spans(rows: slice, S: int, o: _Options) -> list[slice]:
    """The key blocks that query block ``rows`` sees: all, or (causal) those starting at or
    before its last row (a block wholly above the diagonal contributes exactly 0)."""
    return [cols for cols in _spans(S, o.block_k) if not o.causal or cols.start < rows.stop]


def _scores(x: _Inputs, rows: slice, cols: slice, o: _Options) -> torch.Tensor:
    """The (N, |rows|, |cols|) tile of ``s = scale q k^T + mask``."""
    s = torch.bmm(x.qs[:, rows], x.k[:, cols].transpose(1, 2))
    mask = x.mask
    if mask is not None:
        tile = mask[..., rows, cols]
        view = s.view(*o.batch, *s.shape[1:])
        if mask.dtype == torch.bool:
            view.masked_fill_(~tile, -math.inf)
        else:
            view.add_(tile)
    if o.causal and cols.stop - 1 > rows.start:  # crosses the diagonal (top-left aligned)
        i = torch.arange(rows.start, rows.stop, device=s.device).unsqueeze(1)
        j = torch.arange(cols.start, cols.stop, device=s.device)
        s.masked_fill_(j > i, -math.inf)
    return s


def _probs(
    x: _Inputs, rows: slice, cols: slice, lse: torch.Tensor | None, o: _Options
) -> torch.Tensor:
    """The tile's softmax probabilities ``p``: from the row's ``lse`` when the row spans
    several key blocks, else (``lse`` None: the tile holds whole rows) torch's fused softmax,
    with rows that keep no key set to 0 (torch gives NaN there; a NaN in the first column is
    its only possible sign, so the fill runs only when one is there)."""
    s = _scores(x, rows, cols, o)
    if lse is not None:
        return s.sub_(lse).exp_()
    p = torch.softmax(s, -1)
    dead = p[..., :1].isnan()
    if maybe_any(dead):
        p.masked_fill_(dead, 0.0)
    return p


def _stretch(p: torch.Tensor, o: _Options) -> torch.Tensor:
    """``u = (zeta - gamma) p + gamma`` (a new tensor); ``y = clamp(u, 0, 1)``."""
    return torch.mul(p, o.zeta - o.gamma).add_(o.gamma)


@overload
def _through_quantizer(y: torch.Tensor, dy: None, o: _Options) -> tuple[torch.Tensor, None]: ...
@overload
def _through_quantizer(
    y: torch.Tensor, dy: torch.Tensor, o: _Options
) -> tuple[torch.Tensor, torch.Tensor]: ...
def _through_quantizer(
    y: torch.Tensor, dy: torch.Tensor | None, o: _Options
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(Q(y), dL/dy)`` given ``dL/dQ(y)`` (``dy``, may be None): the quantizer's own backward
    (its straight-through estimator). A calibrating quantizer returns its input unchanged and
    is not called again here (its statistics are gathered in the forward)."""
    q = o.quantizer
    if q is None:
        return y, dy
    if dy is None:  # the forward
        return q(y), None
    if getattr(q, "calibrating", False):  # returned y unchanged in the forward
        return y, dy
    with torch.enable_grad():
        leaf = y.detach().requires_grad_(True)
        out = q(leaf)
        (grad,) = torch.autograd.grad(out, leaf, dy, allow_unused=True)
    return out.detach(), torch.zeros_like(y) if grad is None else grad


# ----------------------------------------------------------------------------- forward


def _row_lse(x: _Inputs, rows: slice, spans: list[slice], o: _Options) -> torch.Tensor:
    """Pass 1: the (N, |rows|, 1) log-sum-exp of the query block's scores; +inf for a row with
    nothing kept (so that its probabilities are exactly 0)."""
    lse = x.qs.new_full((x.qs.shape[0], rows.stop - rows.start, 1), -math.inf)
    for cols in spans:
        s = _scores(x, rows, cols, o)
        torch.logaddexp(lse, torch.logsumexp(s, -1, keepdim=True), out=lse)
    return lse.masked_fill_(lse == -math.inf, math.inf)


def _forward(x: _Inputs, o: _Options) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output and the per-row lse (NaN in query blocks whose tile held whole
    rows: backward recomputes those with the fused softmax)."""
    qs, val = x.qs, x.val
    N, L = qs.shape[:2]
    out = qs.new_empty(N, L, val.shape[-1])
    lse_all = qs.new_full((N, L, 1), math.nan)
    for rows in _spans(L, o.block_q):
        spans = _key_spans(rows, x.k.shape[1], o)
        lse = _row_lse(x, rows, spans, o) if len(spans) > 1 else None
        acc: torch.Tensor | None = None
        for cols in spans:  # pass 2
            p = _probs(x, rows, cols, lse, o)
            y = p.mul_(o.zeta - o.gamma).add_(o.gamma).clamp_(0.0, 1.0) if o.clip else p
            y, _ = _through_quantizer(y, None, o)
            if acc is None:
                acc = torch.bmm(y, val[:, cols])
            else:
                acc.baddbmm_(y, val[:, cols])
        assert acc is not None  # a query block sees at least one key block
        out[:, rows] = acc
        if lse is not None:
            lse_all[:, rows] = lse
    return out, lse_all


# ---------------------------------------------------------------------------- backward


def _tile_grads(
    x: _Inputs,
    rows: slice,
    cols: slice,
    lse: torch.Tensor | None,
    g: torch.Tensor,
    o: _Options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recompute one tile: ``(p, Q(y), dL/dp)``; ``g`` is the output gradient of the query block
    times ``zeta - gamma`` (step 4 folded into the matmul of step 2; ``y`` and the clip's
    test do not depend on it, and the quantizer's backward is linear in it)."""
    p = _probs(x, rows, cols, lse, o)
    dy = torch.bmm(g, x.val[:, cols].transpose(1, 2))  # (zeta - gamma) dL/dQ(y)   (step 2)
    if not o.clip:
        yq, dp = _through_quantizer(p, dy, o)
        return p, yq, dp
    u = _stretch(p, o)
    kept_lo, kept_hi = unit_open_bounds(u.dtype)  # cached per dtype
    y = torch.clamp(u, 0.0, 1.0)
    yq, dy = _through_quantizer(y, dy, o)
    dp = torch.ops.aten.hardtanh_backward(dy, u, kept_lo, kept_hi)  # steps 3-4
    return p, yq, dp


def _backward(
    x: _Inputs, lse: torch.Tensor, g: torch.Tensor, o: _Options, need_mask_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    qs, k, val, mask = x.qs, x.k, x.val, x.mask
    N, L = qs.shape[:2]
    dq, dk, dv = torch.zeros_like(qs), torch.zeros_like(k), torch.zeros_like(val)
    dmask: torch.Tensor | None = None
    if need_mask_grad:
        assert mask is not None  # need_mask_grad only with a float mask
        dmask = torch.zeros(mask.shape, dtype=qs.dtype, device=qs.device)
    stretch = o.zeta - o.gamma if o.clip else 1.0
    gs = g * stretch if stretch != 1.0 else g
    for rows in _spans(L, o.block_q):
        g_rows, gs_rows, q_rows = g[:, rows], gs[:, rows], qs[:, rows]
        spans = _key_spans(rows, k.shape[1], o)
        whole = len(spans) == 1
        lse_rows = None if whole else lse[:, rows]
        D = None
        if not whole:  # pass A: D_i = sum_j p_ij dp_ij   (step 5)
            D = qs.new_zeros(N, rows.stop - rows.start, 1)
            for cols in spans:
                p, _, dp = _tile_grads(x, rows, cols, lse_rows, gs_rows, o)
                D += torch.linalg.vecdot(p, dp).unsqueeze(-1)
        dq_rows = torch.zeros_like(q_rows)
        for cols in spans:  # pass B
            p, yq, dp = _tile_grads(x, rows, cols, lse_rows, gs_rows, o)
            dv[:, cols].baddbmm_(yq.transpose(1, 2), g_rows)  # step 1
            if whole:  # the fused softmax backward: p (dp - sum_j p_j dp_j)
                ds = torch.ops.aten._softmax_backward_data(dp, p, -1, p.dtype)
            else:
                assert D is not None  # pass A ran
                ds = dp.sub_(D).mul_(p)  # step 5
            dq_rows.baddbmm_(ds, k[:, cols])  # step 6 (times scale below)
            dk[:, cols].baddbmm_(ds.transpose(1, 2), q_rows)  # q_rows is already scaled
            if dmask is not None:
                tile = ds.view(*o.batch, *ds.shape[1:])
                dmask[..., rows, cols] += tile.sum_to_size(dmask[..., rows, cols].shape)
        dq[:, rows] = dq_rows
    return dq.mul_(o.scale), dk, dv, dmask


class _BlockedAttention(torch.autograd.Function):
    """Attention with a clipped (or plain) softmax over key blocks; saves only the inputs
    and the per-row log-sum-exp. ``q`` (N, L, E), ``k`` (N, S, E), ``val`` (N, S, Ev) in the
    compute dtype; ``mask`` None, boolean or float, shaped (..., L, S) broadcastable to
    ``o.batch + (L, S)``."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        val: torch.Tensor,
        mask: torch.Tensor | None,
        o: _Options,
    ) -> torch.Tensor:
        out, lse = _forward(_Inputs(q * o.scale, k, val, mask), o)
        ctx.o = o
        ctx.save_for_backward(q, k, val, mask, lse)
        return out.to(o.out_dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
        q, k, val, mask, lse = ctx.saved_tensors
        o = ctx.o
        need_mask = mask is not None and mask.is_floating_point() and ctx.needs_input_grad[3]
        g = g.to(q.dtype).contiguous()
        x = _Inputs(q * o.scale, k, val, mask)
        dq, dk, dv, dmask = _backward(x, lse, g, o, need_mask)
        return dq, dk, dv, dmask, None


# ---------------------------------------------------------------------------- the API


def _check_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
) -> tuple[tuple[int, ...], int, int]:
    """Validate the tensors; return the broadcast batch shape, L and S."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        v.check_floating(name, t)
        if t.ndim < 2:
            raise ValueError(
                f"{name} must have shape (..., length, features), got {tuple(t.shape)}"
            )
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name} must have query's dtype {query.dtype}, got {t.dtype}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key must have query's feature size E = {query.shape[-1]} in its last dimension, "
            f"got key of shape {tuple(key.shape)}"
        )
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value must have key's length S = {key.shape[-2]} in dimension -2, got value of "
            f"shape {tuple(value.shape)}"
        )
    try:
        batch = tuple(torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2]))
    except RuntimeError:
        raise ValueError(
            "query, key and value must have broadcastable batch dimensions, got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        ) from None
    L, S = query.shape[-2], key.shape[-2]
    v.check_bool("is_causal", is_causal)
    if attn_mask is not None:
        v.check_tensor("attn_mask", attn_mask)
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(
                "attn_mask must be a boolean tensor (True = attend) or an additive float mask, "
                f"got dtype {attn_mask.dtype}"
            )
        v.check_broadcastable_to("attn_mask", attn_mask, (*batch, L, S), "(*batch, L, S)")
        if is_causal:
            raise ValueError(
                "attn_mask and is_causal=True cannot be given together (as in torch's "
                "scaled_dot_product_attention): fold the causal mask into attn_mask"
            )
    return batch, L, S


def _dead_rows(attn_mask: torch.Tensor) -> torch.Tensor:
    """(..., L, 1) flags of the mask's rows that keep no key, on the mask's own shape."""
    if attn_mask.dtype == torch.bool:
        return ~attn_mask.any(-1, keepdim=True)
    return (attn_mask == -math.inf).all(-1, keepdim=True)


def _torch_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """torch's own SDPA, with rows that keep no key giving zeros (and zero gradient).

    Current torch CPU kernels already give zeros there, older ones and some accelerator
    kernels NaN: the rows are found from the mask's own (unbroadcast) shape by one
    reduction over it; only when there is one (always assumed on an accelerator, see
    ``maybe_any``) is the mask patched to keep every key of those rows and their outputs
    set to zero (their output gradient is then zero, so no NaN reaches the inputs)."""
    if attn_mask is not None and attn_mask.shape[-1] > 0:
        dead = _dead_rows(attn_mask)
        if maybe_any(dead):
            patched = (
                attn_mask | dead
                if attn_mask.dtype == torch.bool
                else (attn_mask.masked_fill(dead, 0.0))
            )
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=patched, scale=scale)
            return out.masked_fill(dead, 0.0)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale
    )


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    softmax: str = "softmax",
    gamma: float = -0.025,
    zeta: float = 1.0,
    probs_quantizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    r"""Scaled dot-product attention with the plain or the clipped softmax, and an optional
    quantizer of the attention probabilities.

    .. math::
        s = \mathrm{scale}\; Q K^\top + B, \qquad
        P = \mathrm{softmax}(s) \ \text{or}\
        \operatorname{clip}((\zeta - \gamma)\,\mathrm{softmax}(s) + \gamma,\ 0,\ 1), \qquad
        \mathrm{out} = \mathcal{Q}(P)\, V

    where :math:`B` is the mask (0 / :math:`-\infty` for a boolean mask, the values of a
    float mask), :math:`\mathrm{scale} = 1/\sqrt{E}` by default and :math:`\mathcal{Q}` the
    probabilities quantizer (identity by default).

    * ``softmax="softmax"`` without a quantizer calls
      ``torch.nn.functional.scaled_dot_product_attention`` (its fused kernels, in the input
      dtype: torch accumulates half precision in float32).
    * ``softmax="clipped"`` (or a quantizer) runs the blocked path: the key blocks of each
      query block are walked twice (row log-sum-exp, then clipped probabilities times V;
      one shared tile when whole rows fit) and an exact custom backward walks them again;
      only the inputs and one float per query row are saved, no (L, S) matrix is built
      (see the module docstring for the gradient). float16/bfloat16 are computed in
      float32 and returned in the input dtype.

    The clipped softmax is from Y. Bondarenko, M. Nagel, T. Blankevoort, "Quantizable
    Transformers: Removing Outliers by Helping Attention Heads Do Nothing", NeurIPS 2023,
    arXiv:2306.12929: with :math:`\gamma < 0` a head can give a token exactly zero weight
    with finite logits, so it need not push logits to extremes (the source of the outliers
    that make transformers hard to quantise). Defaults ``gamma=-0.025, zeta=1`` are the
    paper's BERT run (official script ``clipped(-.025:1)``; the official function's own
    defaults are ``gamma=-0.1, eta=1.1``, ``eta`` being the code's :math:`\zeta`); the
    paper's rule :math:`\gamma = -\alpha/T` is :func:`softmaxkit.clipped_softmax_gamma`. The
    clip's gradient is inclusive at 0 and 1, as ``torch.clamp`` (and the official
    ``torch.clip``).

    A query row that keeps no key gives zeros and zero gradient, never NaN (the official
    code and older torch kernels give NaN).

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``; batch dimensions broadcast with query's and value's.
        value: ``(..., S, Ev)``. The three share one floating dtype.
        attn_mask: boolean, True = attend (softmaxkit's and torch's SDPA convention), or
            an additive float mask (may require grad), broadcastable to ``(..., L, S)``.
        is_causal: query ``i`` attends keys ``j <= i`` (top-left aligned, as torch); not
            together with ``attn_mask``.
        scale: the score scale; default :math:`1/\sqrt{E}`.
        softmax: ``"softmax"`` or ``"clipped"``.
        gamma: :math:`\gamma \le 0` of the clipped softmax.
        zeta: :math:`\zeta \ge 1` of the clipped softmax.
        probs_quantizer: any callable ``Q(p)`` returning a tensor of ``p``'s shape, e.g. a
            ``softmaxkit.quant`` quantizer. It receives the probabilities in the compute
            dtype, one key block at a time (a per-tensor, element-wise quantizer gives the
            same result as on the whole matrix), and its backward (straight-through) is
            used through ``torch.autograd.grad`` per block; its own parameters receive no
            gradient on this path. A calibrating quantizer (``q.calibrating``) is called once
            per block in the forward only. A quantizer whose ``elementwise`` attribute is
            False (``quant.SoftmaxBinarizer(per_row=True)``) gets whole rows (one key block).
        block_size: keys per block of the blocked path. Default: whole rows while
            :data:`MIN_ROWS` of them fit in :data:`TILE_ELEMENTS` entries, else
            :data:`DEFAULT_BLOCK` (both chosen by measurement, see their comments).

    Returns:
        ``(..., L, Ev)`` in the input dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.attention import scaled_dot_product_attention
        >>> q, k, v = torch.randn(3, 2, 4, 8, 16, generator=torch.Generator().manual_seed(0))
        >>> out = scaled_dot_product_attention(q, k, v, softmax="clipped", gamma=-0.1)
        >>> out.shape
        torch.Size([2, 4, 8, 16])
        >>> only_first = torch.arange(8) == 0  # every query attends key 0 alone
        >>> out = scaled_dot_product_attention(q, k, v, attn_mask=only_first, softmax="clipped")
        >>> torch.allclose(out, v[..., :1, :].expand_as(out))
        True
    """
    batch, L, S = _check_inputs(query, key, value, attn_mask, is_causal)
    v.check_choice("softmax", softmax, SOFTMAXES)
    gamma = v.check_number("gamma", gamma, high=0.0)
    zeta = v.check_number("zeta", zeta, low=1.0)
    if scale is not None:
        scale = v.check_number("scale", scale)
    if probs_quantizer is not None:
        v.check_callable("probs_quantizer", probs_quantizer)
    if block_size is not None:
        block_size = v.check_int("block_size", block_size, low=1)
    E, Ev = query.shape[-1], value.shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    out_shape = (*batch, L, Ev)
    if S == 0 or math.prod(out_shape) == 0:  # nothing to attend to, or nothing asked
        # an empty slice's sum is an exact 0 that keeps the graph: zero gradients
        zero = sum(t.narrow(-1, 0, 0).sum() for t in (query, key, value))
        return query.new_zeros(out_shape) + zero
    if softmax == "softmax" and probs_quantizer is None:
        return _torch_sdpa(query, key, value, attn_mask, is_causal, scale)
    N = math.prod(batch)
    dtype = compute_dtype(query)
    # a quantizer that is not element-wise (quant.SoftmaxBinarizer(per_row=True) compares each
    # entry with its row max) must see whole rows: one key block
    rowwise = not getattr(probs_quantizer, "elementwise", True)
    if rowwise and block_size is not None and block_size < S:
        raise ValueError(
            f"block_size must be at least the number of keys ({S}) with a probs_quantizer that "
            f"is not element-wise (it needs whole rows), got {block_size}"
        )
    if block_size is None:  # whole rows while MIN_ROWS of them fit in one tile
        block_size = S if rowwise or N * S * MIN_ROWS <= TILE_ELEMENTS else DEFAULT_BLOCK
    block_k = min(block_size, S)
    o = _Options(
        scale=scale,
        gamma=gamma,
        zeta=zeta,
        clip=softmax == "clipped",
        causal=is_causal,
        batch=batch,
        block_q=min(L, max(1, TILE_ELEMENTS // (N * block_k))),
        block_k=block_k,
        quantizer=probs_quantizer,
        out_dtype=query.dtype,
    )

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).expand(*batch, *t.shape[-2:]).reshape(N, *t.shape[-2:])

    mask = attn_mask
    if mask is not None:
        mask = mask if mask.dtype == torch.bool else mask.to(dtype)
        mask = mask.reshape((1,) * max(0, 2 - mask.ndim) + tuple(mask.shape))
        mask = mask.expand(*mask.shape[:-2], L, S)
    # torch.autograd.Function.apply is unannotated
    out: torch.Tensor = _BlockedAttention.apply(  # type: ignore[no-untyped-call]
        flat(query), flat(key), flat(value), mask, o
    )
    return out.view(out_shape)
