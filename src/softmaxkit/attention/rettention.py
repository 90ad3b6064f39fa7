r"""Re-ttention: very sparse attention for a denoising loop that reuses softmax statistics.

Paper: R. Chen, K. G. Mills, L. Jiang, C. Gao, D. Niu, "Re-ttention: Ultra Sparse Visual
Generation via Attention Statistical Reshape", NeurIPS 2025, arXiv:2505.22918. Official
code: ``cccrrrccc/Re-ttention`` (``module/pixart_processor.py``, ``module/Cog_processor.py``,
``module/hunyuan_processor.py``; MIT licence), read for every detail below.

The method, per attention layer of a diffusion transformer and per denoising step
:math:`t`, with scores :math:`s_{ij} = q_i \cdot k_j / \sqrt{E}` and the local band
:math:`M_i = \{j : |i - j| \le \lfloor w / 2 \rfloor\}`:

* **full step**: ordinary attention :math:`o_i = \sum_j \operatorname{softmax}(s_i)_j v_j`;
* **refresh step**: full attention, and the statistics of the step are cached: the in-band
  softmax mass

  .. math:: \rho_i = \frac{\sum_{j \in M_i} e^{s_{ij}}}{\sum_j e^{s_{ij}}}

  per batch entry, head and query row, and the residual :math:`r_i = o_i - \rho_i
  \sum_{j \in M_i} \operatorname{softmax}_{M_i}(s_i)_j v_j` between full attention and the
  rescaled sparse attention of the same step;
* **sparse step**: only the keys of the band are computed,

  .. math:: o_i = \rho_i \sum_{j \in M_i} \frac{e^{s_{ij}}}{\sum_{l \in M_i} e^{s_{il}}} v_j
            + r_i, \qquad \rho_i \leftarrow \rho_i + \lambda

  (the sparse softmax carries the cached full-attention mass instead of 1; the residual
  cached at the last refresh step is added; after the step the mass grows by the drift
  :math:`\lambda`, ``ratio_drift``, official 0.04).

Which step is which is a :class:`RettentionSchedule` (the official presets for PixArt,
CogVideoX and Hunyuan-DiT are its class methods).

**Deliberate differences from the official code**, each a recommendation of the reference
notes:

* The official processors compute the dense :math:`QK^\top` on sparse steps too and add
  :math:`-10^5` outside the mask (no compute is saved, and :math:`-10^5` is not
  representable in float16). Here a sparse step computes only the band: queries are taken
  in blocks of ``b`` rows (32 to 64), the ``b + 2h`` keys and values of each block's band
  are gathered (``index_select`` with an index built once per sequence length; no
  :math:`(S, S)` tensor is built), and keys outside a query's own band are removed by exact
  boolean masking (-inf, never a finite constant), so each query's softmax runs over
  exactly its band :math:`M_i`. The work is :math:`S (b + 2h) E` multiply-adds per head
  instead of :math:`S^2 E`. The refresh step's full attention is computed in blocks of
  query rows (it needs each row's log-sum-exp), the full steps by torch's
  ``scaled_dot_product_attention``.
* The sparse set is the band of the flattened token sequence (the PixArt and Hunyuan
  processors), or with ``prefix_tokens``/``frames`` the CogVideoX mask (always-attended
  text tokens, the band at the same in-frame offset of every frame), gathered the same way:
  the image queries of one in-frame block of every frame share the prefix keys and the
  band windows of all frames; the text queries attend every key (their mass is 1).
* Key padding masks are honoured on every path (the official full path ignores the
  attention mask, and the window path has none).
* The residual is kept per head in attention-output space, before the output projection;
  the official code keeps it after ``to_out`` (linear + dropout). For a linear ``to_out``
  in inference (dropout off) the two are the same: :math:`W(a + r) + b = (W a + b) + W r`.
* Statistics are computed and kept in float32 for float16/bfloat16 inputs (float64 for
  float64), and the output is returned in the input dtype.
* The official PixArt/Hunyuan processors also compute :math:`\rho` on every full step; it is
  overwritten at the refresh step before any sparse step reads it, so it is not computed
  here (the outputs are the same).
* ``clamp_ratio=True`` (not official) keeps :math:`\rho \le 1` while it drifts; by default
  it is not clamped and can exceed 1, as in the official code.
* The official code's 4-D input branch (undefined variables) and its import of a missing
  ``sparse_mask`` module are not reproduced.

Inference only: Rettention mutates its cache on every call and defines no gradient; it
raises if called with gradients enabled on inputs that require grad (use
``torch.no_grad()`` or ``torch.inference_mode()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype, maybe_any

#: the fraction of keys in the official band, ``window = int(S * density)`` (the official
#: attribute ``sparsity = 0.03125``, which is the kept fraction despite its name)
DEFAULT_DENSITY = 0.03125
#: the official drift of the cached mass per sparse step (``cached_ratio += 0.04``)
DEFAULT_RATIO_DRIFT = 0.04
#: score entries per block of the full path with statistics (32 MiB of float32)
_FULL_BLOCK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- the band


def _half_width(window: int, size: int) -> int:
    """The band's half-width ``window // 2`` (official), capped at ``size - 1`` (beyond it
    the band already holds every key)."""
    return max(0, min(window // 2, size - 1))


def local_band_mask(
    size: int,
    window: int,
    *,
    prefix_tokens: int = 0,
    frames: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The official local attention band as a dense boolean mask (True = attend).

    .. math:: M_{ij} = [\,|i - j| \le \lfloor w / 2 \rfloor\,], \qquad i, j < S

    Every row keeps :math:`2 \lfloor w/2 \rfloor + 1` keys, fewer within
    :math:`\lfloor w/2 \rfloor` of either end: the band is clipped at the edges, not
    shifted inward (the official ``create_local_attention_mask`` of the PixArt and Hunyuan
    processors; their older ``create_local_attention_mask_old`` shifted it). The official
    window is ``int(S * sparsity)`` with ``sparsity = 0.03125``.

    With ``prefix_tokens`` :math:`P` or ``frames`` :math:`T > 1` it is the CogVideoX mask
    (the official ``generate_sliding_window_attention_mask``): the first :math:`P` tokens
    (text) attend every token and every token attends them; the other :math:`S - P` tokens
    form :math:`T` frames of :math:`F = (S - P) / T` tokens, and a token at in-frame offset
    :math:`o` attends the tokens at offsets :math:`|o - o'| \le \lfloor w/2 \rfloor` of
    every frame (clipped at the frame's edges). The official CogVideoX run has
    :math:`S = 17776`, :math:`P = 226`, :math:`T = 13`, :math:`F = 1350` and
    :math:`w = \operatorname{int}(1350 \cdot 0.03125) = 42`.

    This is for inspection and for dense code of one's own: :class:`Rettention` never
    builds it (its sparse step computes only the band's keys).

    Paper: Chen et al., "Re-ttention: Ultra Sparse Visual Generation via Attention
    Statistical Reshape", NeurIPS 2025, arXiv:2505.22918.

    Args:
        size: the sequence length :math:`S` (queries and keys), at least 0.
        window: the official window :math:`w` (at least 0); the half-width is ``w // 2``.
        prefix_tokens: always-attended leading tokens :math:`P` (default 0).
        frames: frames :math:`T` after the prefix (default 1); ``S - P`` must divide.
        device: where to build the mask.

    Returns:
        A boolean tensor of shape (S, S).

    Example:
        >>> from softmaxkit.attention import local_band_mask
        >>> local_band_mask(5, 2).int()
        tensor([[1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1],
                [0, 0, 0, 1, 1]], dtype=torch.int32)
        >>> local_band_mask(5, 0, prefix_tokens=1, frames=2).int()
        tensor([[1, 1, 1, 1, 1],
                [1, 1, 0, 1, 0],
                [1, 0, 1, 0, 1],
                [1, 1, 0, 1, 0],
                [1, 0, 1, 0, 1]], dtype=torch.int32)
    """
    v.check_int("size", size, low=0)
    v.check_int("window", window, low=0)
    v.check_int("prefix_tokens", prefix_tokens, low=0)
    v.check_int("frames", frames, low=1)
    if size < prefix_tokens or (size - prefix_tokens) % frames:
        raise ValueError(
            f"size {size} must be prefix_tokens={prefix_tokens} plus frames={frames} frames "
            "of equal length"
        )
    index = torch.arange(size, device=device)
    if prefix_tokens == 0 and frames == 1:
        return (index[None, :] - index[:, None]).abs() <= window // 2
    frame = max((size - prefix_tokens) // frames, 1)
    offset = (index - prefix_tokens) % frame
    mask = (offset[None, :] - offset[:, None]).abs() <= window // 2
    mask[:prefix_tokens] = True
    mask[:, :prefix_tokens] = True
    return mask


class _BandPlan(NamedTuple):
    """The index structure of the band for one (size, half-width, device): queries in
    blocks of ``block`` rows; block ``n`` meets the ``span = block + 2h`` keys
    ``n * block - h ..`` whose (clipped) positions are ``index`` (n * span,), and ``drop``
    (n, block, span) is True where a key is outside the query's band or the sequence."""

    block: int
    blocks: int
    span: int
    tail: int
    index: torch.Tensor  # type: ignore[assignment]  # shadows tuple.index, never called
    drop: torch.Tensor


def _band_plan(size: int, half: int, device: torch.device) -> _BandPlan:
    block = max(32, min(64, half))
    blocks = -(-size // block)
    span = block + 2 * half
    rows = torch.arange(block, device=device)
    cols = torch.arange(span, device=device)
    offset = cols[None, :] - rows[:, None]
    allowed = (offset >= 0) & (offset <= 2 * half)  # (b, span): |i - j| <= h
    absolute = torch.arange(blocks, device=device)[:, None] * block - half + cols  # (n, span)
    inside = (absolute >= 0) & (absolute < size)
    drop = ~(inside[:, None, :] & allowed)  # (n, b, span)
    index = absolute.clamp(0, max(size - 1, 0)).flatten()
    return _BandPlan(block, blocks, span, blocks * block - size, index, drop)


def _band_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    val: torch.Tensor,
    key_mask: torch.Tensor | None,
    scale: float,
    plan: _BandPlan,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of each query over its band only: (output, scores).

    q, k: (B, H, S, E), val: (B, H, S, Ev) in the compute dtype; key_mask (B, S) or None.
    Queries go in blocks of ``b`` rows; block ``n`` (rows ``nb .. nb + b - 1``) gathers the
    ``b + 2h`` keys and values ``nb - h .. nb + b - 1 + h`` (indices clipped into range;
    the clipped ones are masked), and the plan's (n, b, b + 2h) mask with the key padding
    removes every key outside a query's band by exact boolean masking. A query with no
    valid key gives zeros. ``scores`` (B, H, n, b, b + 2h) are the masked scores (-inf
    outside the band), for the log-sum-exp of a refresh step.
    """
    size = q.shape[2]
    block, blocks, span, tail, index, drop = plan
    qb = q * scale
    if tail:
        qb = F.pad(qb, (0, 0, 0, tail))
    qb = qb.unflatten(2, (blocks, block))
    kb = k.index_select(2, index).unflatten(2, (blocks, span))  # (B, H, n, span, E)
    vb = val.index_select(2, index).unflatten(2, (blocks, span))  # (B, H, n, span, Ev)
    scores = torch.matmul(qb, kb.transpose(-1, -2))  # (B, H, n, b, span)
    if key_mask is not None:
        padded = ~key_mask[:, index].unflatten(1, (blocks, span))[:, :, None, :]  # (B, n, 1, span)
        drop = (drop | padded)[:, None]  # (B, 1, n, b, span)
    scores = scores.masked_fill_(drop, -math.inf)
    weights = torch.softmax(scores, -1)  # NaN rows where nothing is kept: zeroed below
    out = torch.matmul(weights, vb)  # (B, H, n, b, Ev)
    if key_mask is not None:  # without one, every row of the sequence keeps its diagonal
        empty = drop.all(-1, keepdim=True)  # (B, 1, n, b, 1)
        if maybe_any(empty):
            out = out.masked_fill_(empty, 0.0)
    return out.flatten(2, 3)[:, :, :size], scores


def _band_lse(scores: torch.Tensor, size: int) -> torch.Tensor:
    """The band's log-sum-exp (B, H, S, 1) from :func:`_band_attention`'s scores."""
    return torch.logsumexp(scores, -1, keepdim=True).flatten(2, 3)[:, :, :size]


class _FramePlan(NamedTuple):
    """The index structure of the per-frame band with always-attended prefix tokens (the
    CogVideoX mask): image queries at the same in-frame block of every frame share their
    keys, the ``prefix`` keys and the in-frame band window of every frame. ``qidx``
    (n * frames * b,) gathers the queries, ``inv`` (frames * F,) puts them back, ``kidx``
    (n * L,) gathers the keys, ``drop`` (n, 1, b, L) masks keys outside the band."""

    prefix: int
    frames: int
    block: int
    blocks: int
    keys: int
    qidx: torch.Tensor
    inv: torch.Tensor
    kidx: torch.Tensor
    drop: torch.Tensor


def _frame_plan(size: int, half: int, prefix: int, frames: int, device: torch.device) -> _FramePlan:
    frame = (size - prefix) // frames
    block = max(1, min(max(32, min(64, half)), frame))
    blocks = -(-frame // block) if frame else 0
    span = block + 2 * half
    ar = torch.arange
    offsets = ar(blocks, device=device)[:, None] * block + ar(block, device=device)  # (n, b)
    starts = prefix + ar(frames, device=device) * frame  # (frames,)
    qidx = starts[None, :, None] + offsets.clamp(max=max(frame - 1, 0))[:, None, :]
    o = ar(frame, device=device)
    inv = (o // block) * (frames * block) + (o % block)  # (F,) position in the blocked rows
    inv = (inv[None, :] + ar(frames, device=device)[:, None] * block).flatten()
    cols = ar(blocks, device=device)[:, None] * block - half + ar(span, device=device)  # (n, span)
    inside = (cols >= 0) & (cols < frame)
    kframes = starts[None, :, None] + cols.clamp(0, max(frame - 1, 0))[:, None, :]
    kidx = torch.cat(
        [ar(prefix, device=device).expand(blocks, prefix), kframes.flatten(1)], 1
    )  # (n, L)
    offset = ar(span, device=device)[None, :] - ar(block, device=device)[:, None]
    allowed = (offset >= 0) & (offset <= 2 * half)  # (b, span)
    dropped = ~(inside[:, None, :] & allowed)  # (n, b, span)
    drop = torch.cat(
        [
            torch.zeros(blocks, block, prefix, dtype=torch.bool, device=device),
            dropped[:, :, None, :].expand(blocks, block, frames, span).flatten(2),
        ],
        -1,
    )[:, None]  # (n, 1, b, L)
    keys = prefix + frames * span
    return _FramePlan(
        prefix, frames, block, blocks, keys, qidx.flatten(), inv, kidx.flatten(), drop
    )


def _frame_band_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    val: torch.Tensor,
    key_mask: torch.Tensor | None,
    scale: float,
    plan: _FramePlan,
    *,
    with_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over the per-frame band plus the prefix keys (output, log-sum-exp or
    None); the prefix (text) queries attend every key, as in the official mask."""
    prefix, frames, block, blocks, keys, qidx, inv, kidx, drop = plan
    outs, lses = [], []
    if prefix:
        out_t, lse_t = _full_attention_stats(q[:, :, :prefix], k, val, key_mask, scale)
        outs.append(out_t)
        lses.append(lse_t)
    qb = (q * scale).index_select(2, qidx).unflatten(2, (blocks, frames * block))
    kb = k.index_select(2, kidx).unflatten(2, (blocks, keys))  # (B, H, n, L, E)
    vb = val.index_select(2, kidx).unflatten(2, (blocks, keys))  # (B, H, n, L, Ev)
    scores = torch.matmul(qb, kb.transpose(-1, -2))  # (B, H, n, frames * b, L)
    if key_mask is not None:
        padded = ~key_mask[:, kidx].unflatten(1, (blocks, keys))[:, :, None, None, :]
        drop = (drop | padded)[:, None]  # (B, 1, n, 1, b, L)
    scores.unflatten(3, (frames, block)).masked_fill_(drop, -math.inf)
    if with_lse:
        lse = torch.logsumexp(scores, -1, keepdim=True).flatten(2, 3).index_select(2, inv)
        lses.append(lse)
    out = torch.matmul(torch.softmax(scores, -1), vb)  # (B, H, n, frames * b, Ev)
    if key_mask is not None:
        empty = drop.all(-1, keepdim=True)  # (B, 1, n, 1, b, 1)
        if maybe_any(empty):
            out.unflatten(3, (frames, block)).masked_fill_(empty, 0.0)
    outs.append(out.flatten(2, 3).index_select(2, inv))
    return torch.cat(outs, 2), (torch.cat(lses, 2) if with_lse else None)


def _full_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    val: torch.Tensor,
    key_mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full softmax attention and each row's log-sum-exp, in blocks of query rows (no
    (S, S) score matrix per head at once). A row with no valid key gives zeros, -inf."""
    batch, heads, size, _ = q.shape
    step = max(1, _FULL_BLOCK_ELEMENTS // max(1, batch * heads * size))
    outs, lses = [], []
    drop = None if key_mask is None else ~key_mask[:, None, None, :]
    for start in range(0, size, step):
        scores = torch.matmul(q[:, :, start : start + step], k.transpose(-1, -2)).mul_(scale)
        if drop is not None:
            scores = scores.masked_fill_(drop, -math.inf)
        top = scores.amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        weights = scores.sub_(top).exp_()
        total = weights.sum(-1, keepdim=True)
        out = torch.matmul(weights, val)
        outs.append(out / torch.where(total > 0, total, torch.ones_like(total)))
        lses.append(top + total.log())
    if not outs:  # S = 0
        return val.new_zeros(val.shape), q.new_zeros(q.shape[:-1] + (1,))
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _full_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    val: torch.Tensor,
    key_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Plain full attention through torch's SDPA; a batch entry with no valid key gives 0."""
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, val, scale=scale)
    out = F.scaled_dot_product_attention(
        q, k, val, attn_mask=key_mask[:, None, None, :], scale=scale
    )
    return out.masked_fill(~key_mask.any(-1)[:, None, None, None], 0.0)


# ----------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class RettentionSchedule:
    r"""Which denoising steps of a Re-ttention layer are full, refresh or sparse.

    Step :math:`t` (counted from 0 per layer, one step per call, as the official
    ``stepi``) is

    * ``"full"`` when :math:`t <` ``full_steps``: full attention, nothing cached;
    * ``"refresh"`` when :math:`t` is in ``refresh_steps`` or
      :math:`t - \text{full\_steps}` is a multiple of ``refresh_every``: full attention,
      and the in-band mass :math:`\rho` and the residual are cached;
    * ``"sparse"`` otherwise: band attention scaled by :math:`\rho`, plus the residual,
      then :math:`\rho \leftarrow \rho + \lambda`.

    The first step after the full ones must be a refresh step (a sparse step needs the
    cache): always so with ``refresh_every``; with ``refresh_steps`` alone, ``full_steps``
    must be listed. The official code refreshes where ``stepi % 5 == 0``; counting from
    ``full_steps`` instead gives the same steps for its presets (their ``full_steps`` are
    multiples of 5) and keeps the rule valid for any ``full_steps``.

    The official presets (class methods), read from the official processors and run
    scripts of ``cccrrrccc/Re-ttention``:

    =============== =========== ==================================== ===============
    preset           full steps  refresh steps                        official steps
    =============== =========== ==================================== ===============
    ``pixart()``     0-4         5, 10, 15 (an explicit list)         20
    ``cogvideox()``  0-14        every multiple of 5 from 15          50
    ``hunyuan()``    0-9         every multiple of 5 from 10          50
    =============== =========== ==================================== ===============

    (PixArt: ``module/pixart_processor.py``, ``stepi < 5`` and ``stepi in [5, 10, 15]``,
    20 steps in ``scripts/sigma_*.py``/``alpha_*.py``; CogVideoX: ``module/Cog_processor.py``,
    ``stepi < 15`` and ``stepi % 5 == 0``, 50 steps in ``scripts/Vbench_category.py``;
    Hunyuan: ``module/hunyuan_processor.py``, ``stepi < 10`` and ``stepi % 5 == 0``, 50 steps
    in ``scripts/hunyuan_*.py``.) The official CogVideoX mask is
    ``Rettention(prefix_tokens=226, frames=13)`` (17776 tokens). ``num_steps`` records the
    official run length; it is informational (steps beyond it follow the same rule; the
    PixArt list then has no more refreshes, as in the official code).

    Paper: Chen et al., "Re-ttention: Ultra Sparse Visual Generation via Attention
    Statistical Reshape", NeurIPS 2025, arXiv:2505.22918.

    Args:
        full_steps: steps ``0 .. full_steps - 1`` are full (at least 0).
        refresh_every: refresh every this many steps (at least 1) from ``full_steps`` on;
            ``None`` for none.
        refresh_steps: explicit refresh steps (each at least ``full_steps``).
        num_steps: the official run's number of steps, or ``None``.

    Example:
        >>> from softmaxkit.attention import RettentionSchedule
        >>> s = RettentionSchedule.pixart()
        >>> [s.kind(t) for t in (0, 4, 5, 6, 10, 19)]
        ['full', 'full', 'refresh', 'sparse', 'refresh', 'sparse']
        >>> [RettentionSchedule(full_steps=2, refresh_every=3).kind(t) for t in range(6)]
        ['full', 'full', 'refresh', 'sparse', 'sparse', 'refresh']
    """

    full_steps: int
    refresh_every: int | None = None
    refresh_steps: tuple[int, ...] = ()
    num_steps: int | None = None

    def __post_init__(self) -> None:
        v.check_int("full_steps", self.full_steps, low=0)
        if self.refresh_every is not None:
            v.check_int("refresh_every", self.refresh_every, low=1)
        if not isinstance(self.refresh_steps, (tuple, list)):
            raise TypeError(
                f"refresh_steps must be a tuple of ints, got {type(self.refresh_steps).__name__}"
            )
        steps = tuple(
            v.check_int(f"refresh_steps[{i}]", s, low=self.full_steps)
            for i, s in enumerate(self.refresh_steps)
        )
        object.__setattr__(self, "refresh_steps", tuple(sorted(set(steps))))
        if self.num_steps is not None:
            v.check_int("num_steps", self.num_steps, low=1)
        if self._kind(self.full_steps) != "refresh":
            raise ValueError(
                f"refresh_steps/refresh_every must make step full_steps={self.full_steps} a "
                "refresh step (the first sparse step needs the statistics of a refresh step)"
            )

    def _kind(self, step: int) -> str:
        if step < self.full_steps:
            return "full"
        every = self.refresh_every
        if step in self.refresh_steps or (
            every is not None and (step - self.full_steps) % every == 0
        ):
            return "refresh"
        return "sparse"

    def kind(self, step: int) -> str:
        """``"full"``, ``"refresh"`` or ``"sparse"`` for step ``step`` (from 0)."""
        return self._kind(v.check_int("step", step, low=0))

    @classmethod
    def pixart(cls) -> RettentionSchedule:
        """PixArt-alpha/Sigma: full steps 0-4, refresh at 5, 10, 15; 20 steps (official)."""
        return cls(full_steps=5, refresh_steps=(5, 10, 15), num_steps=20)

    @classmethod
    def cogvideox(cls) -> RettentionSchedule:
        """CogVideoX: full steps 0-14, refresh every 5 steps from 15; 50 steps (official)."""
        return cls(full_steps=15, refresh_every=5, num_steps=50)

    @classmethod
    def hunyuan(cls) -> RettentionSchedule:
        """Hunyuan-DiT: full steps 0-9, refresh every 5 steps from 10; 50 steps (official)."""
        return cls(full_steps=10, refresh_every=5, num_steps=50)


# ----------------------------------------------------------------------- the module


def _check_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[int, int, int, int, int]:
    for name, t in (("query", query), ("key", key), ("value", value)):
        v.check_floating(name, t)
        if t.ndim != 4:
            raise ValueError(
                f"{name} must have shape (batch, heads, sequence, features), "
                f"got shape {tuple(t.shape)}"
            )
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name} must have the query's dtype {query.dtype}, got {t.dtype}")
    batch, heads, size, features = query.shape
    if tuple(key.shape) != (batch, heads, size, features):
        raise ValueError(
            f"key must have the query's shape {tuple(query.shape)} (Rettention's band is for "
            f"self-attention), got {tuple(key.shape)}"
        )
    if tuple(value.shape[:3]) != (batch, heads, size):
        raise ValueError(
            f"value must have shape ({batch}, {heads}, {size}, Ev) to match the query, "
            f"got {tuple(value.shape)}"
        )
    return batch, heads, size, features, value.shape[-1]


def _check_key_mask(key_mask: torch.Tensor | None, batch: int, size: int) -> torch.Tensor | None:
    if key_mask is None:
        return None
    v.check_tensor("key_mask", key_mask)
    if key_mask.dtype != torch.bool:
        raise TypeError(
            f"key_mask must be a boolean tensor (True = attend), got dtype {key_mask.dtype}"
        )
    if tuple(key_mask.shape) != (batch, size):
        raise ValueError(
            f"key_mask must have shape (batch, sequence) = ({batch}, {size}), "
            f"got {tuple(key_mask.shape)}"
        )
    return key_mask


class Rettention(torch.nn.Module):
    r"""Re-ttention: sparse attention for a denoising loop that reuses softmax statistics.

    Replaces the attention computation of one self-attention layer of a diffusion
    transformer, called once per denoising step with that step's (B, H, S, E) queries,
    keys and values. Full steps compute ordinary attention; refresh steps compute it too
    and cache, per batch entry, head and query row, the in-band softmax mass
    :math:`\rho_i` and the residual :math:`r_i`; sparse steps compute only the keys of a
    local band of width :math:`2\lfloor w/2 \rfloor + 1` and return

    .. math:: o_i = \rho_i \sum_{j \in M_i}
              \frac{e^{s_{ij}}}{\sum_{l \in M_i} e^{s_{il}}} v_j + r_i,
              \qquad\text{then } \rho_i \leftarrow \rho_i + \lambda

    with :math:`\rho_i = \sum_{j \in M_i} e^{s_{ij}} / \sum_j e^{s_{ij}}` and
    :math:`r_i = o^{\text{full}}_i - \rho_i\, o^{\text{band}}_i` from the last refresh step
    (see the module docstring of :mod:`softmaxkit.attention.rettention` for the method and
    every difference from the official code). A sparse step costs about
    :math:`S (b + 2h) E` multiply-adds per head for the band (:math:`b` = query block,
    :math:`h` = half-width) instead of :math:`S^2 E`.

    Call order: ``reset()`` before each generation (or build a new module), then one call
    per denoising step, in order; ``step=`` (optional) is checked against the step the
    module expects. The cached ``ratio`` (B, H, S, 1) and ``residual`` (B, H, S, Ev) are
    non-persistent buffers (float32 for half inputs).

    Inference only: no gradient is defined and the cache changes on every call; calling it
    with gradients enabled on inputs that require grad raises a RuntimeError.

    Paper: R. Chen, K. G. Mills, L. Jiang, C. Gao, D. Niu, "Re-ttention: Ultra Sparse
    Visual Generation via Attention Statistical Reshape", NeurIPS 2025, arXiv:2505.22918
    (the paper reports CogVideoX-2B at 96.9% sparsity with PSNR 27.96, and lambda = 0.04 as
    the best drift of its ablation). Official code: ``cccrrrccc/Re-ttention``.

    Args:
        window: the official window :math:`w`; the band keeps keys with
            :math:`|i - j| \le \lfloor w/2 \rfloor`. ``None`` (default) uses
            ``int(S * density)`` for each call's sequence length, as the official code.
        density: the kept fraction of keys when ``window`` is None, in (0, 1]; default
            0.03125 (the official ``sparsity`` attribute: 96.9% sparsity).
        schedule: a :class:`RettentionSchedule`; default :meth:`RettentionSchedule.pixart`.
        ratio_drift: :math:`\lambda`, added to :math:`\rho` after each sparse step, at
            least 0; default 0.04 (official code, hard-coded there; the paper's best).
        clamp_ratio: keep :math:`\rho \le 1` while it drifts (not official; default False).
        prefix_tokens: always-attended leading tokens (CogVideoX's 226 text tokens; default
            0): they attend every key and every query attends them.
        frames: the tokens after the prefix form this many frames of equal length
            (CogVideoX: 13 of 1350); the band applies at the same in-frame offset in
            every frame, and the default window is ``int(F * density)`` for the frame
            length ``F`` (official ``int(1350 * sparsity)``). Default 1.
        use_ratio: scale the band softmax by :math:`\rho` (default True). False is the
            official processors' ``use_ratio = False`` mode (residual caching only: the
            band softmax sums to 1, and the residual is taken against it), the paper's
            ablation without the statistical reshape; :math:`\rho` is still cached.

    Shape:
        query, key: (B, H, S, E); value: (B, H, S, Ev); ``key_mask``: (B, S) boolean,
        True = attend (the softmaxkit convention: the opposite of
        ``nn.MultiheadAttention``'s ``key_padding_mask``); output (B, H, S, Ev) in the
        input dtype. The sequence length and batch must stay the same within a
        generation.

    Example:
        >>> import torch
        >>> from softmaxkit.attention import Rettention, RettentionSchedule
        >>> rett = Rettention(window=4, schedule=RettentionSchedule(full_steps=1, refresh_every=3))
        >>> g = torch.Generator().manual_seed(0)
        >>> q, k, val = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
        >>> with torch.no_grad():
        ...     outs = [rett(q, k, val) for _ in range(3)]  # full, refresh, sparse
        >>> full = torch.nn.functional.scaled_dot_product_attention(q, k, val)
        >>> bool(torch.allclose(outs[2], full, atol=1e-5))  # same inputs: exact again
        True
        >>> rett.step, [rett.schedule.kind(t) for t in range(3)]
        (3, ['full', 'refresh', 'sparse'])
    """

    ratio: torch.Tensor | None
    residual: torch.Tensor | None

    def __init__(
        self,
        *,
        window: int | None = None,
        density: float = DEFAULT_DENSITY,
        schedule: RettentionSchedule | None = None,
        ratio_drift: float = DEFAULT_RATIO_DRIFT,
        clamp_ratio: bool = False,
        use_ratio: bool = True,
        prefix_tokens: int = 0,
        frames: int = 1,
    ) -> None:
        super().__init__()
        if window is not None:
            v.check_int("window", window, low=0)
        self.window = window
        self.density = v.check_number("density", density, low=0.0, high=1.0, low_open=True)
        if schedule is None:
            schedule = RettentionSchedule.pixart()
        elif not isinstance(schedule, RettentionSchedule):
            raise TypeError(f"schedule must be a RettentionSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.ratio_drift = v.check_number("ratio_drift", ratio_drift, low=0.0)
        self.clamp_ratio = v.check_bool("clamp_ratio", clamp_ratio)
        self.use_ratio = v.check_bool("use_ratio", use_ratio)
        self.prefix_tokens = v.check_int("prefix_tokens", prefix_tokens, low=0)
        self.frames = v.check_int("frames", frames, low=1)
        self.step = 0
        self._plan_key: tuple[int, int, torch.device] | None = None
        self._band: _BandPlan | _FramePlan | None = None
        self.register_buffer("ratio", None, persistent=False)
        self.register_buffer("residual", None, persistent=False)

    def extra_repr(self) -> str:
        size = f"window={self.window}" if self.window is not None else f"density={self.density}"
        return f"{size}, schedule={self.schedule}, ratio_drift={self.ratio_drift}"

    def reset(self) -> None:
        """Forget the cache and restart at step 0 (call between generations)."""
        self.step = 0
        self.ratio = None
        self.residual = None

    def _frame_size(self, size: int) -> int:
        return (size - self.prefix_tokens) // self.frames

    def _plan(self, size: int, device: torch.device) -> _BandPlan | _FramePlan:
        """The band's index structure, built once per (size, half-width, device)."""
        key = (size, self.half_width(size), device)
        if self._plan_key != key:
            if self.prefix_tokens or self.frames > 1:
                self._band = _frame_plan(size, key[1], self.prefix_tokens, self.frames, device)
            else:
                self._band = _band_plan(size, key[1], device)
            self._plan_key = key
        assert self._band is not None  # built with _plan_key
        return self._band

    def half_width(self, size: int) -> int:
        """The band's half-width for sequence length ``size``: ``w // 2`` with the
        official ``w = int(F * density)`` unless ``window`` was given, where ``F`` is the
        frame length ``(size - prefix_tokens) // frames`` (``size`` for one frame and no
        prefix), capped at ``F - 1``."""
        frame = self._frame_size(size)
        window = self.window if self.window is not None else int(frame * self.density)
        return _half_width(window, frame)

    @overload
    def _sparse(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        val: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        with_lse: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def _sparse(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        val: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        with_lse: Literal[False],
    ) -> tuple[torch.Tensor, None]: ...
    def _sparse(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        val: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        with_lse: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention over the sparse set only: (output, log-sum-exp if ``with_lse``)."""
        size = q.shape[2]
        plan = self._plan(size, q.device)
        if isinstance(plan, _FramePlan):
            return _frame_band_attention(q, k, val, mask, scale, plan, with_lse=with_lse)
        band, scores = _band_attention(q, k, val, mask, scale, plan)
        return band, (_band_lse(scores, size) if with_lse else None)

    def sdpa(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
    ) -> torch.Tensor:
        """This layer behind ``torch.nn.functional.scaled_dot_product_attention``'s
        signature, to wrap an attention processor that calls SDPA on (B, H, S, E) tensors
        (diffusers' ``AttnProcessor2_0`` and its kin): each call is the next denoising step.

        ``attn_mask`` may be ``None`` or a boolean key-padding mask (True = attend) of shape
        (B, 1, 1, S) (or (B, S)); other masks, ``dropout_p > 0`` and ``is_causal=True`` are
        refused (a diffusion transformer's self-attention uses none of them in inference).

        A processor wraps it by calling ``rett.sdpa`` where it called
        ``F.scaled_dot_product_attention``, one :class:`Rettention` per layer, and calls
        :meth:`reset` on every layer between generations (the official scripts' own
        ``clear_stepi``).

        Example:
            >>> import torch
            >>> from softmaxkit.attention import Rettention
            >>> q = k = val = torch.randn(2, 4, 32, 8)
            >>> with torch.no_grad():
            ...     out = Rettention().sdpa(q, k, val, attn_mask=torch.ones(2, 1, 1, 32).bool())
            >>> out.shape
            torch.Size([2, 4, 32, 8])
        """
        v.check_number("dropout_p", dropout_p, low=0.0, high=0.0)
        if v.check_bool("is_causal", is_causal):
            raise ValueError("is_causal must be False: Rettention's band is not causal")
        key_mask = None
        if attn_mask is not None:
            v.check_tensor("attn_mask", attn_mask)
            size = query.shape[-2] if query.ndim else 0
            if attn_mask.dtype != torch.bool:
                raise TypeError(
                    "attn_mask must be a boolean key-padding mask (True = attend), "
                    f"got dtype {attn_mask.dtype}"
                )
            if attn_mask.ndim == 4 and attn_mask.shape[1] == 1 and attn_mask.shape[2] == 1:
                key_mask = attn_mask[:, 0, 0]
            elif attn_mask.ndim == 2:
                key_mask = attn_mask
            else:
                raise ValueError(
                    f"attn_mask must be a key-padding mask of shape (B, 1, 1, {size}) or "
                    f"(B, {size}), got shape {tuple(attn_mask.shape)}"
                )
        out: torch.Tensor = self(query, key, value, key_mask=key_mask, scale=scale)
        return out

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        step: int | None = None,
        key_mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        """One denoising step of the layer's attention (see the class docstring).

        Args:
            query, key: (B, H, S, E); value: (B, H, S, Ev); one floating dtype.
            step: the step being run, checked against :attr:`step` (the calls so far since
                :meth:`reset`); ``None`` to take the next one.
            key_mask: (B, S) boolean, True = attend; honoured on every path.
            scale: the score scale; default :math:`1/\\sqrt{E}`.

        Returns:
            (B, H, S, Ev) in the input dtype.
        """
        batch, heads, size, features, _ = _check_qkv(query, key, value)
        mask = _check_key_mask(key_mask, batch, size)
        if size < self.prefix_tokens or (size - self.prefix_tokens) % self.frames:
            raise ValueError(
                f"query's sequence length {size} must be prefix_tokens={self.prefix_tokens} "
                f"plus frames={self.frames} frames of equal length"
            )
        if step is not None:
            v.check_int("step", step, low=0)
            if step != self.step:
                raise ValueError(
                    f"step must be {self.step} (the next step of this generation), got {step}; "
                    "call reset() before a new generation"
                )
        if scale is None:
            scale = 1.0 / math.sqrt(features) if features else 1.0
        else:
            scale = v.check_number("scale", scale)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            raise RuntimeError(
                "Rettention is inference only (its cache changes on every call and it defines "
                "no gradient): call it under torch.no_grad() or torch.inference_mode()"
            )
        kind = self.schedule.kind(self.step)
        dtype = compute_dtype(query)
        q, k, val = query.to(dtype), key.to(dtype), value.to(dtype)
        ratio: torch.Tensor | None  # None on a sparse step without a cache
        if kind == "full":
            out = _full_attention(q, k, val, mask, scale)
        elif kind == "refresh":
            out, lse_full = _full_attention_stats(q, k, val, mask, scale)
            band, lse_band = self._sparse(q, k, val, mask, scale, True)
            kept = torch.isfinite(lse_band) & torch.isfinite(lse_full)
            ratio = torch.where(kept, (lse_band - lse_full).exp(), torch.zeros_like(lse_band))
            self.ratio = ratio
            self.residual = out - ratio * band if self.use_ratio else out - band
        else:
            ratio, residual = self.ratio, self.residual
            if ratio is None or residual is None:
                raise RuntimeError(
                    f"step {self.step} is sparse but nothing is cached: call reset() before a "
                    "generation and run its steps in order from 0"
                )
            expected = tuple(residual.shape)
            if (batch, heads, size, value.shape[-1]) != expected:
                raise ValueError(
                    f"query/value shapes ({batch}, {heads}, {size}, {value.shape[-1]}) differ "
                    f"from the cached statistics {expected}; call reset() between generations"
                )
            band, _ = self._sparse(q, k, val, mask, scale, False)
            if self.use_ratio:
                out = torch.addcmul(residual.to(dtype), ratio.to(dtype), band)
            else:
                out = residual.to(dtype) + band
            ratio = ratio + self.ratio_drift
            self.ratio = ratio.clamp(max=1.0) if self.clamp_ratio else ratio
        self.step += 1
        return out.to(query.dtype)
