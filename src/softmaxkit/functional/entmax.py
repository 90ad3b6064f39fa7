r"""Sparse probability maps: sparsemax, 1.5-entmax and alpha-entmax.

All three are :math:`\alpha`-entmax for some :math:`\alpha > 1`,

.. math:: \alpha\text{-entmax}(x) = \arg\max_{p \in \Delta}\; p^\top x + H^T_\alpha(p),
          \qquad H^T_\alpha(p) = \frac{1}{\alpha(\alpha-1)} \sum_j (p_j - p_j^\alpha),

whose solution is :math:`p_i = [(\alpha-1)x_i - \tau]_+^{1/(\alpha-1)}` with the threshold
:math:`\tau` chosen so that :math:`\sum_i p_i = 1` (Peters, Niculae & Martins 2019).
:math:`\alpha = 2` is sparsemax, the Euclidean projection onto the simplex (Martins &
Astudillo 2016); :math:`\alpha = 1.5` is 1.5-entmax; :math:`\alpha \to 1` tends to softmax.

How the exact thresholds are found (``sparsemax``, ``entmax15``). The papers sort each
row (O(n log n)); here no row is fully sorted unless its support is dense. With the row
maximum shifted to 0 the threshold lies in :math:`[-1, 0)`, so every entry :math:`\le -1`
is out of the support and the support lies within the k largest entries, k the largest
count of entries above the bound in a row. While k is more than a quarter of the row,
monotone steps raise the bound (Michelot's 1986 projection step for sparsemax; the larger
of a Newton step and a Cauchy-Schwarz bound for 1.5-entmax; all stay below the threshold)
as long as each step at least halves k. A partial sort (``torch.topk``) of k entries then
gives the exact threshold by the papers' sort-based formulas. On dense supports the
partial sort costs about what the full sort does. Rows go in blocks of about 32 MiB,
which bounds the scratch memory.

``entmax_bisect`` is the papers' bisection on :math:`\tau` (``n_iter`` halvings of the
bracket :math:`[\max - 1, \max - n^{1-\alpha}]` in the scaled variable), with the same
candidate pruning: entries below the lower end of the bracket never count again, so once
they are few the remaining halvings run on a partial sort of the row; halvings that can no
longer move the midpoint (below the floating-point resolution) are skipped. The result is
the same bisection, renormalised to sum to 1 as the official code does.

The backward passes are closed forms on the support (no autograd through a sort): the
Jacobian of :math:`\alpha`-entmax is :math:`\mathrm{diag}(w) - w w^\top / \sum_j w_j`
with :math:`w_i = p_i^{2-\alpha}` on the support and 0 elsewhere.

The thresholds take a few host reads (the candidate count sizes the partial sort; the
bisection checks whether it can stop), one per step and never one per row. Under
``torch.compile`` the maps use full sorts and all ``n_iter`` halvings instead, so the
graph has no data-dependent sizes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, from_rows, row_blocks, upcast

# Narrowing schedule of the exact thresholds (sparsemax, entmax15):
_STEP_ABOVE = 1 / 4  # step while the candidates are more than this share of the row,
_SHRINK = 0.5  # ... and each step at least halves them,
_MAX_STEPS = 16  # ... at most this many steps
# entmax_bisect halves on the full row until the candidates are at most this share of it:
_COMPACT = 1 / 4
# rows are processed in blocks of about this many elements (32 MiB of float32)
_BLOCK = 1 << 23


def _arange_like(v: torch.Tensor) -> torch.Tensor:
    """1, 2, ..., k as a (1, k) row in ``v``'s dtype."""
    return torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device).unsqueeze(0)


def _sorted_tau_sparsemax(v: torch.Tensor) -> torch.Tensor:
    """Exact sparsemax threshold from each row's top entries sorted descending.

    Entry j is in the support iff :math:`\\sum_{i \\le j} (v_i - v_j) < 1` (equivalently
    :math:`1 + j v_j > \\sum_{i \\le j} v_i`); with k the support size,
    :math:`\\tau = (\\sum_{i \\le k} v_i - 1) / k` (Martins & Astudillo 2016, Alg. 1).
    Valid as long as the support lies within the given entries.
    """
    cs = v.cumsum(1)
    k = (torch.addcmul(cs, _arange_like(v), v, value=-1.0) < 1).sum(1, keepdim=True)
    k.clamp_min_(1)
    return (cs.gather(1, k - 1) - 1) / k.to(v.dtype)


def _sorted_tau_entmax15(v: torch.Tensor) -> torch.Tensor:
    """Exact 1.5-entmax threshold (for :math:`p = [v - \\tau]_+^2`) from sorted top entries.

    Entry j is in the support iff the mass at :math:`\\tau = v_j` is below 1,
    :math:`\\sum_{i \\le j}(v_i - v_j)^2 < 1`: the condition :math:`\\tau_j \\le v_j` of
    Peters et al. 2019, Alg. 2, rewritten with
    :math:`\\sum_{i \\le j} (v_i - c)^2 = s_j + j(\\bar v_j - c)^2`.
    On the support of size k, :math:`\\tau = \\bar v_k - \\sqrt{(1 - s_k)/k}` with
    :math:`s_k = \\sum_{i \\le k}(v_i - \\bar v_k)^2`.
    """
    vv = v * v
    cs, cs2 = v.cumsum(1), vv.cumsum(1)
    mass = torch.addcmul(cs2, v, cs, value=-2.0).addcmul_(vv, _arange_like(v))
    k = (mass < 1).sum(1, keepdim=True).clamp_min_(1)
    kf = k.to(v.dtype)
    mean = cs.gather(1, k - 1) / kf
    spread = cs2.gather(1, k - 1) - mean * mean * kf
    return mean - ((1 - spread) / kf).clamp_min_(0).sqrt_()


def _count_above(z: torch.Tensor, T: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """The number of entries above T in each row, (rows, 1), in ``z``'s dtype."""
    return torch.gt(z, T, out=scratch).sum(1, keepdim=True)


def _exact_tau(z: torch.Tensor, scratch: torch.Tensor, entmax15: bool) -> torch.Tensor:
    """Threshold of sparsemax (``p = [z - tau]_+``) or of 1.5-entmax (``p = [z - tau]_+^2``)
    for each row of a 2-D block ``z`` whose row maxima are 0 (or rows of -inf).

    Lower bounds T of the threshold confine the support to {z > T}, hence to the k largest
    entries, k the largest count of entries above T in a row. The first bound is -1 (the
    top entry alone has mass 1), or the step below applied to the whole row if higher.
    While k is a large share of the row, steps raise T, with s1 = sum [z - T]_+,
    s2 = sum [z - T]_+^2 and c = #{z > T} (mean of the candidates m = T + s1 / c):

    * sparsemax: T + (s1 - 1) / c, the exact threshold of the candidates (Michelot 1986);
    * 1.5-entmax: the larger of Newton's step T + (s2 - 1) / (2 s1) (f = s2 - 1 is convex
      and decreasing) and m - 1 / sqrt(c) (by Cauchy-Schwarz, s2 >= c (m - t)^2 at t <= m).

    All of them stay at or below the threshold. The threshold then comes from the papers'
    sort-based formula applied to the ``torch.topk`` of k. ``scratch``: like ``z``.
    """
    rows, n = z.shape
    if torch.compiler.is_compiling():  # no data-dependent sizes in a graph: sort the rows
        k = n
    else:
        # whole-row start: (sum z - 1) / n, or mean z - 1 / sqrt(n); -inf entries give -inf
        mean = z.mean(1, keepdim=True)
        T = (mean - 1 / math.sqrt(n) if entmax15 else mean - 1 / n).clamp_min_(-1.0)
        c = _count_above(z, T, scratch)
        k = int(c.amax())
        for _ in range(_MAX_STEPS):
            if k <= max(n * _STEP_ABOVE, 16):
                break
            r = torch.sub(z, T, out=scratch).relu_()
            s1 = r.sum(1, keepdim=True)
            cc = c.clamp_min(1)
            if entmax15:
                s2 = torch.linalg.vector_norm(r, 2, 1, keepdim=True).square_()
                newton = T + (s2 - 1) / (2 * s1).clamp_min_(torch.finfo(z.dtype).tiny)
                T = torch.maximum(newton, T + s1 / cc - cc.rsqrt())
            else:
                T = T + (s1 - 1) / cc
            c = _count_above(z, T, scratch)
            k_new = int(c.amax())
            stalled = k_new > k * _SHRINK
            k = k_new
            if stalled:
                break
        k = min(max(k, 1), n)
    top = torch.topk(z, k, dim=1).values
    return _sorted_tau_entmax15(top) if entmax15 else _sorted_tau_sparsemax(top)


def _shift_by_max(xb: torch.Tensor, out: torch.Tensor, half: bool = False) -> torch.Tensor:
    """``out = xb - rowmax`` (halved if ``half``: exact scaling, one rounding); rows of
    -inf stay -inf (their max is taken as 0). Returns the (rows, 1) flag of such rows."""
    m = xb.amax(1, keepdim=True)
    dead = m == -math.inf
    m.masked_fill_(dead, 0.0)
    if half:
        torch.add(m.mul_(-0.5), xb, alpha=0.5, out=out)
    else:
        torch.sub(xb, m, out=out)
    return dead


class _ExactEntmaxFunction(torch.autograd.Function):
    """sparsemax (``entmax15=False``) or 1.5-entmax of the rows of a 2-D tensor."""

    @staticmethod
    def forward(ctx: Any, x2: torch.Tensor, entmax15: bool) -> torch.Tensor:
        out = torch.empty_like(x2, memory_format=torch.contiguous_format)
        if x2.numel():
            blocks = row_blocks(x2.shape[0], x2.shape[1], _BLOCK)
            scratch = torch.empty_like(out[blocks[0]])
            for b in blocks:
                ob = out[b]
                dead = _shift_by_max(x2[b], ob, half=entmax15)
                tau = _exact_tau(ob, scratch[: ob.shape[0]], entmax15).masked_fill_(dead, 0.0)
                ob.sub_(tau).relu_()
                if entmax15:
                    ob.square_()
        ctx.entmax15 = entmax15
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (p,) = ctx.saved_tensors
        gi = torch.empty_like(p)
        if p.numel():
            for b in row_blocks(p.shape[0], p.shape[1], _BLOCK):
                pb, gb = p[b], g[b]
                # w = dp/d(x) diagonal: 1 on the support (sparsemax), sqrt(p) (1.5-entmax)
                w = pb.sqrt() if ctx.entmax15 else pb.sign()
                _project_grad(gb, w, gi[b])
        return gi, None


def _project_grad(g: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    """``out = w * g - w * sum(w * g) / sum(w)`` row-wise (0 where sum(w) == 0)."""
    torch.mul(g, w, out=out)
    wsum = w.sum(1, keepdim=True)
    q = out.sum(1, keepdim=True) / wsum.clamp_min(torch.finfo(w.dtype).tiny)
    out.addcmul_(w, q, value=-1.0)


def _exact_map(x: torch.Tensor, dim: int, entmax15: bool) -> torch.Tensor:
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    if x.numel() == 0:
        return x.clone()
    x2 = as_rows(upcast(x), dim)
    out2: torch.Tensor = _ExactEntmaxFunction.apply(x2, entmax15)  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
    return from_rows(out2, x, dim).to(x.dtype)


@backend_op
def sparsemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Sparsemax: the Euclidean projection of the logits onto the probability simplex.

    .. math:: \mathrm{sparsemax}(x) = \arg\min_{p \in \Delta} \lVert p - x \rVert_2^2,
              \qquad p_i = [x_i - \tau(x)]_+, \quad \textstyle\sum_i p_i = 1.

    Exact (the threshold is found as in the sort-based algorithm, from a partial sort of
    the candidates, see the module notes). The gradient is the closed form: on the
    support S, :math:`\partial L / \partial x_i = g_i - \frac{1}{|S|}\sum_{j \in S} g_j`,
    and 0 off it. ``-inf`` logits get exactly 0 and zero gradient; a row of ``-inf``
    gives zeros (not NaN). NaN in a row gives NaN.

    Paper: A. F. T. Martins, R. F. Astudillo, "From Softmax to Sparsemax: A Sparse Model
    of Attention and Multi-Label Classification", ICML 2016, arXiv:1602.02068.

    Args:
        x: logits of any shape; float16/bfloat16 computed in float32, returned in the
            input dtype.
        dim: the axis of the simplex (default -1, as ``torch.softmax``).

    Returns:
        Probabilities of ``x``'s shape and dtype, summing to 1 along ``dim``.

    Example:
        >>> import torch
        >>> from softmaxkit import sparsemax
        >>> sparsemax(torch.tensor([0.5, 1.0, -1.0]))
        tensor([0.2500, 0.7500, 0.0000])
    """
    return _exact_map(x, dim, False)


@backend_op
def entmax15(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""1.5-entmax: the sparse map between softmax and sparsemax, computed exactly.

    .. math:: \mathrm{entmax}_{1.5}(x) = \arg\max_{p \in \Delta}\; p^\top x + H^T_{1.5}(p),
              \qquad p_i = [x_i / 2 - \tau(x)]_+^2, \quad \textstyle\sum_i p_i = 1,

    with the Tsallis entropy :math:`H^T_{1.5}(p) = \frac{4}{3}\sum_j (p_j - p_j^{3/2})`.
    The gradient is the closed form with :math:`s = \sqrt{p}`:
    :math:`\partial L / \partial x = s \odot g - s\, (s^\top g) / \sum_j s_j`.
    ``-inf`` logits get exactly 0 and zero gradient; a row of ``-inf`` gives zeros.

    Paper: B. Peters, V. Niculae, A. F. T. Martins, "Sparse Sequence-to-Sequence Models",
    ACL 2019, arXiv:1905.05702 (exact sort-based threshold: their Algorithm 2).
    Arguments and result as :func:`sparsemax`.

    Example:
        >>> import torch
        >>> from softmaxkit import entmax15
        >>> x = torch.tensor([0.5, 1.0, -1.0])
        >>> entmax15(x)  # denser than sparsemax(x) = [0.25, 0.75, 0]
        tensor([0.3260, 0.6740, 0.0000])
    """
    return _exact_map(x, dim, True)


# --- alpha-entmax by bisection -------------------------------------------------------


def _pow(t: torch.Tensor, e: float | torch.Tensor) -> torch.Tensor:
    """``t ** e`` in place, with the exponents of sparsemax (1) and 1.5-entmax (2) cheap."""
    if isinstance(e, torch.Tensor):
        return t.pow_(e)
    if e == 1.0:
        return t
    if e == 2.0:
        return t.square_()
    return t.pow_(e)


def _bisect_block(
    z: torch.Tensor, scratch: torch.Tensor, b: float | torch.Tensor, n_iter: int
) -> torch.Tensor:
    """The last bisection midpoint tau for each row of ``z`` = (alpha - 1) (x - max x).

    f(tau) = sum_i [z_i - tau]_+^(1/b) - 1 is decreasing, f(-1) >= 0 >= f(-n^-b); each
    halving keeps the lower end ``lo`` where f >= 0. Two savings, neither changing the
    result: entries <= ``lo`` never count again, so once the largest number of entries
    above it is at most ``_COMPACT`` of the row, the halvings continue on the ``torch.topk``
    of those entries; and once ``lo + dm`` rounds to ``lo`` in every row, the remaining
    halvings cannot move (their midpoints all round to ``lo``), so they are skipped.
    """
    rows, n = z.shape
    e = 1.0 / b
    lo = z.new_full((rows, 1), -1.0)
    hi = -torch.pow(1.0 / n, b) if isinstance(b, torch.Tensor) else -((1.0 / n) ** b)
    dm = hi - lo
    src, buf = z, scratch
    eager = not torch.compiler.is_compiling()  # under compile: no data-dependent sizes
    count = torch.gt(z, lo, out=scratch).sum(1, keepdim=True) if eager else None
    k = int(count.amax()) if count is not None else n  # count: None unless eager
    tau = lo
    for _ in range(n_iter):
        if eager and src is z and k <= n * _COMPACT:
            src = torch.topk(z, max(k, 1), dim=1).values
            buf = torch.empty_like(src)
        dm = dm / 2
        tau = lo + dm
        if eager and bool((tau == lo).all()):
            break
        p = _pow(torch.sub(src, tau, out=buf).relu_(), e)
        ok = p.sum(1, keepdim=True) >= 1
        lo = torch.where(ok, tau, lo)
        if count is not None and src is z:  # eager
            count = torch.where(ok, p.sign_().sum(1, keepdim=True), count)
            k = int(count.amax())
    return tau


class _EntmaxBisectFunction(torch.autograd.Function):
    """alpha-entmax of the rows of a 2-D tensor; ``alpha``: a float or a (rows, 1) tensor."""

    @staticmethod
    def forward(
        ctx: Any, x2: torch.Tensor, alpha: float | torch.Tensor, n_iter: int
    ) -> torch.Tensor:
        out = torch.empty_like(x2, memory_format=torch.contiguous_format)
        tensor_alpha = isinstance(alpha, torch.Tensor)
        if x2.numel():
            blocks = row_blocks(x2.shape[0], x2.shape[1], _BLOCK)
            scratch = torch.empty_like(out[blocks[0]])
            for blk in blocks:
                ob = out[blk]
                b = alpha[blk] - 1 if isinstance(alpha, torch.Tensor) else alpha - 1.0
                dead = _shift_by_max(x2[blk], ob)
                ob.mul_(b)
                tau = _bisect_block(ob, scratch[: ob.shape[0]], b, n_iter)
                _pow(ob.sub_(tau.masked_fill(dead, 0.0)).relu_(), 1.0 / b)
                ob.div_(ob.sum(1, keepdim=True).clamp_min_(torch.finfo(ob.dtype).tiny))
        ctx.tensor_alpha = tensor_alpha
        if tensor_alpha:
            ctx.save_for_backward(out, alpha)
        else:
            ctx.save_for_backward(out)
            ctx.alpha = alpha
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        if ctx.tensor_alpha:
            p, alpha = ctx.saved_tensors
        else:
            (p,) = ctx.saved_tensors
            alpha = ctx.alpha
        gi = torch.empty_like(p)
        want_alpha = ctx.tensor_alpha and ctx.needs_input_grad[1]
        ga = torch.zeros_like(alpha) if want_alpha else None
        tiny = torch.finfo(p.dtype).tiny
        if p.numel():
            for blk in row_blocks(p.shape[0], p.shape[1], _BLOCK):
                pb, gb = p[blk], g[blk]
                a = alpha[blk] if ctx.tensor_alpha else alpha
                on = pb > 0
                if not ctx.tensor_alpha and a == 2.0:
                    w = pb.sign()
                elif not ctx.tensor_alpha and a == 1.5:
                    w = pb.sqrt()
                else:  # p^(2 - alpha) on the support; the where drops 0^(negative) = inf
                    w = torch.where(on, pb.pow(2 - a), 0.0)
                _project_grad(gb, w, gi[blk])
                if ga is not None:  # want_alpha
                    # dp_i/dalpha = (p_i - w^_i) / b^2 - (p_i log p_i - w^_i sum_j p_j log p_j) / b
                    # with b = alpha - 1 and w^ = w / sum(w)  (derivation in the tests)
                    bb = a - 1
                    plogp = torch.where(on, pb * pb.clamp_min(tiny).log(), 0.0)
                    what = w / w.sum(1, keepdim=True).clamp_min(tiny)
                    ent = plogp.sum(1, keepdim=True)
                    dp = (pb - what) / (bb * bb) - (plogp - what * ent) / bb
                    ga[blk] = (gb * dp).sum(1, keepdim=True)
        return gi, ga, None


@backend_op
def entmax_bisect(
    x: torch.Tensor, alpha: float | torch.Tensor = 1.5, dim: int = -1, n_iter: int = 50
) -> torch.Tensor:
    r"""alpha-entmax for any :math:`\alpha > 1`, by bisection on the threshold.

    .. math:: \alpha\text{-entmax}(x) = \arg\max_{p \in \Delta}\; p^\top x + H^T_\alpha(p),
              \qquad p_i = [(\alpha - 1) x_i - \tau]_+^{1/(\alpha-1)},

    with :math:`H^T_\alpha(p) = \frac{1}{\alpha(\alpha-1)}\sum_j (p_j - p_j^\alpha)` and
    :math:`\tau` found by ``n_iter`` halvings of
    :math:`[(\alpha-1)\max x - 1,\ (\alpha-1)\max x - n^{1-\alpha}]`; the output is taken at
    the last midpoint and renormalised to sum to 1 (as the official code does).
    :math:`\alpha = 2` is sparsemax and :math:`\alpha = 1.5` is 1.5-entmax (up to the
    bisection's precision; use :func:`sparsemax`/:func:`entmax15` for the exact maps).
    :math:`\alpha = 1` (softmax) is rejected: use ``softmax``.

    Gradient with respect to ``x``: :math:`w \odot g - w\,(w^\top g)/\sum_j w_j` with
    :math:`w_i = p_i^{2-\alpha}` on the support. With respect to a tensor ``alpha``
    (differentiable): :math:`\partial p_i/\partial\alpha = (p_i - \hat w_i)/(\alpha-1)^2
    - (p_i\log p_i - \hat w_i \sum_j p_j \log p_j)/(\alpha-1)`, :math:`\hat w = w/\sum_j w_j`.

    Paper: B. Peters, V. Niculae, A. F. T. Martins, "Sparse Sequence-to-Sequence Models",
    ACL 2019, arXiv:1905.05702 (bisection: their Algorithm 1; the alpha gradient is also
    in Correia, Niculae & Martins, "Adaptively Sparse Transformers", EMNLP 2019,
    arXiv:1909.00015).

    Args:
        x: logits of any shape; float16/bfloat16 computed in float32, returned in the
            input dtype.
        alpha: a float > 1, or a floating tensor of values > 1 broadcastable to ``x``
            with size 1 along ``dim`` (one alpha per row). Default 1.5, the paper's.
            Values of a tensor alpha are checked on CPU only.
        dim: the axis of the simplex (default -1).
        n_iter: number of bisection halvings, >= 1 (default 50, the official code's).

    Returns:
        Probabilities of ``x``'s shape and dtype, summing to 1 along ``dim``.

    Example:
        >>> import torch
        >>> from softmaxkit import entmax_bisect
        >>> entmax_bisect(torch.tensor([0.5, 1.0, -1.0]), alpha=2.0)
        tensor([0.2500, 0.7500, 0.0000])
        >>> entmax_bisect(torch.tensor([0.5, 1.0, -1.0]), alpha=torch.tensor([1.5]))
        tensor([0.3260, 0.6740, 0.0000])
    """
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    n_iter = v.check_int("n_iter", n_iter, low=1)
    x_c = upcast(x)
    if isinstance(alpha, torch.Tensor):
        v.check_floating("alpha", alpha)
        row_shape = list(x.shape) if x.ndim else [1]
        row_shape[dim] = 1
        v.check_broadcastable_to("alpha", alpha, tuple(row_shape), "the input's shape with dim")
        v.check_tensor_values("alpha", alpha, low=1.0, low_open=True)
        alpha_arg: float | torch.Tensor = as_rows(alpha.to(x_c.dtype).expand(row_shape), dim)
    else:
        alpha_arg = v.check_number("alpha", alpha, low=1.0, low_open=True)
    if x.numel() == 0:
        return x.clone()
    out2: torch.Tensor = _EntmaxBisectFunction.apply(as_rows(x_c, dim), alpha_arg, n_iter)  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
    return from_rows(out2, x, dim).to(x.dtype)


# --- module twins ---------------------------------------------------------------------


class Sparsemax(nn.Module):
    """Module twin of :func:`sparsemax`: ``Sparsemax(dim=-1)(x)``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = v.check_int("dim", dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparsemax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Entmax15(Sparsemax):
    """Module twin of :func:`entmax15`: ``Entmax15(dim=-1)(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return entmax15(x, self.dim)


class EntmaxBisect(nn.Module):
    """Module twin of :func:`entmax_bisect`: ``EntmaxBisect(alpha=1.5, dim=-1, n_iter=50)(x)``.

    A float ``alpha`` is a fixed hyperparameter; to learn it, pass a tensor (for example
    an ``nn.Parameter``) to :func:`entmax_bisect` directly.
    """

    def __init__(self, alpha: float = 1.5, dim: int = -1, n_iter: int = 50) -> None:
        super().__init__()
        self.alpha = v.check_number("alpha", alpha, low=1.0, low_open=True)
        self.dim = v.check_int("dim", dim)
        self.n_iter = v.check_int("n_iter", n_iter, low=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return entmax_bisect(x, self.alpha, self.dim, self.n_iter)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, dim={self.dim}, n_iter={self.n_iter}"
