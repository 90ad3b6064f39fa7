"""f-divergences between the softmax distributions of two logit tensors.

Every divergence is computed in log space from the log-softmax of both inputs, row block
by row block through the losses' engine, with a closed-form gradient to both inputs: the
forward pass allocates nothing of size N x C (beyond a contiguous copy when ``dim`` is not the
last axis) and backward allocates only the gradients.

Two kernels per divergence: an exact one, right for any logits (``-inf`` included), and on
CPU a fast one, the plain closed forms with a few passes over each block, which hands the
rare rows it cannot get exactly (a ``-inf``, ``inf`` or NaN logit) to the exact one.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, compute_dtype, maybe_any
from softmaxkit._ops.row_loss import BufferedRowLoss, LossModule, reduce, row_loss

KINDS = ("kl", "reverse_kl", "js", "tv", "hellinger", "alpha")

#: below this |1 - alpha| (or |alpha|) the alpha-divergence is evaluated at its KL limit;
#: the first neglected term is |1 - alpha| * d**2 / 2 for a log-ratio d, far below rounding.
_ALPHA_LIMIT = 1e-20

#: for 0 < 1 - alpha the exponent (1 - alpha) log(q / p) is capped here: it only exceeds it
#: where p^alpha q^(1 - alpha) < exp(-80), far below rounding against the sum's 1.
_EXP_CAP = 80.0

Parts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: a fast kernel's (g * grad_p or None, g * grad_q or None, rows it did not get exactly)
FastGrads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]

# The kernels below avoid torch.where / masked_fill / comparisons on whole blocks (on CPU they
# cost 10-30 elementwise passes each). Log-probabilities are "floored" instead: -inf becomes
# the most negative finite number L, so that p * (log p - log q) is an exact 0 where p = 0,
# and a class with p > 0 = q shows up as a log-ratio near -L, which a row maximum detects.


def log_probs(z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax of a (b, C) block; a row of only ``-inf`` logits is the zero
    measure (``-inf`` everywhere) instead of NaN."""
    out = torch.log_softmax(z, 1)
    dead = z.amax(1, keepdim=True) == -math.inf
    return out.masked_fill(dead, -math.inf) if maybe_any(dead) else out


def floor_inf(x: torch.Tensor) -> torch.Tensor:
    """``x`` with ``-inf`` replaced by the most negative finite number of its dtype."""
    return x.clamp(min=torch.finfo(x.dtype).min)


def unbounded_rows(ratio: torch.Tensor) -> torch.Tensor:
    """Rows whose floored log-ratio reaches about -L: a class with p > 0 = q."""
    return ratio.amax(1) > torch.finfo(ratio.dtype).max / 2


def nonnegative(loss: torch.Tensor) -> torch.Tensor:
    """A divergence rounded below zero (by at most a few ulps) is 0; gradients are
    computed from the exact formulas, not through this clamp."""
    return loss.clamp(min=0.0)


def _kl(lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
    """KL(p || q), and with ``grads`` its gradients w.r.t. the logits of p and of q."""
    p = lp.exp()
    ratio = floor_inf(lp) - floor_inf(lq)  # log(p / q); 0 log 0 = 0 as p * ratio = 0 where p = 0
    loss = (p * ratio).sum(1).masked_fill(unbounded_rows(ratio), math.inf)  # +inf where p > 0 = q
    if not grads:
        return nonnegative(loss), lp, lq
    return nonnegative(loss), p * (ratio - loss.unsqueeze(1)), lq.exp() - p


def _js(lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
    p, q = lp.exp(), lq.exp()
    lm = floor_inf((0.5 * (p + q)).log())
    rp, rq = floor_inf(lp) - lm, floor_inf(lq) - lm  # <= log 2 where p > 0 (resp. q > 0)
    kp, kq = (p * rp).sum(1, keepdim=True), (q * rq).sum(1, keepdim=True)
    loss = nonnegative(0.5 * (kp + kq).squeeze(1))
    if not grads:
        return loss, lp, lq
    return loss, 0.5 * p * (rp - kp), 0.5 * q * (rq - kq)


def _tv(lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
    p, q = lp.exp(), lq.exp()
    diff = p - q
    loss = 0.5 * diff.abs().sum(1)
    if not grads:
        return loss, lp, lq
    sign = diff.sign()
    grad_p = 0.5 * p * (sign - (sign * p).sum(1, keepdim=True))
    grad_q = -0.5 * q * (sign - (sign * q).sum(1, keepdim=True))
    return loss, grad_p, grad_q


def _hellinger(lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
    rp, rq = (0.5 * lp).exp(), (0.5 * lq).exp()
    loss = 0.5 * (rp - rq).square().sum(1)
    if not grads:
        return loss, lp, lq
    both = rp * rq
    overlap = both.sum(1, keepdim=True)  # the Bhattacharyya coefficient
    return loss, 0.5 * (rp.square() * overlap - both), 0.5 * (rq.square() * overlap - both)


def _alpha_upper(lp: torch.Tensor, lq: torch.Tensor, alpha: float, grads: bool) -> Parts:
    """Amari alpha-divergence for alpha >= 1/2, written around its alpha -> 1 limit.

    With beta = 1 - alpha and d = log q - log p on the support of p,
    sum p^alpha q^beta - 1 = sum p expm1(beta d) = beta * S with S = sum p E,
    E = expm1(beta d) / beta (-> d as beta -> 0), so D = -S / alpha with no cancellation.
    """
    beta = 1.0 - alpha
    if abs(beta) < _ALPHA_LIMIT:
        return _kl(lp, lq, grads)
    p = lp.exp()
    x = beta * (floor_inf(lq) - floor_inf(lp))  # where p = 0: -huge (beta < 0) or capped (beta > 0)
    if beta > 0:
        x = x.clamp(max=_EXP_CAP)
    pe = p * torch.expm1(x)
    if beta < 0:  # p^alpha q^beta overflowed where p itself underflowed: +inf, not 0 * inf
        pe = pe.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)
    pe = pe / beta  # p E
    s = pe.sum(1, keepdim=True)
    loss = nonnegative(-s.squeeze(1) / alpha)
    if not grads:
        return loss, lp, lq
    w = p + beta * pe  # p^alpha q^beta
    grad_q = -(w - lq.exp() * w.sum(1, keepdim=True)) / alpha
    return loss, p * s - pe, grad_q


# --------------------------------------------------------------------------------------
# Fast kernels. The exact kernels above spend most of their passes over a block on -inf
# robustness (floors, dead-row checks, masks) that finite logits never need. The kernels
# below use the plain closed forms (no comparisons, no masks: on CPU those cost 10-40
# arithmetic passes) and report the rows where that is not exact, which is only where some
# logit is infinite, NaN or the row is all -inf: there a plain closed form meets 0 * inf,
# inf - inf or 0 / 0 and its per-row result (or sum) is NaN or infinite. Those rows alone
# are recomputed with the exact kernels. Finding them means reading a flag, which is free
# on CPU only: elsewhere (an accelerator, torch.compile) the exact kernels run on every row,
# so no code path synchronises with the device.
#
# The fast kernels write their temporaries into block buffers (``ws``, from
# :meth:`BufferedRowLoss.block_work`: allocated on the first block and reused by every
# block of forward and backward): a fresh block-sized temporary is page-faulted in again
# on every block, which costs about as much as the arithmetic pass writing it.


def fast_ok(z: torch.Tensor) -> bool:
    """Whether the fast kernels run on ``z``'s block (on CPU, in eager mode)."""
    return z.device.type == "cpu" and not torch.compiler.is_compiling()


def redo_rows(
    bad: torch.Tensor,
    values: Sequence[torch.Tensor | None],
    exact: Callable[[torch.Tensor], Sequence[torch.Tensor]],
) -> None:
    """Overwrite the ``bad`` rows (a (b,) bool) of each of ``values`` with ``exact(rows)``,
    the exact kernel evaluated on those rows only (``rows``: their indices)."""
    if maybe_any(bad):
        rows = bad.reshape(-1).nonzero().squeeze(1)
        for value, fixed in zip(values, exact(rows)):
            if value is not None:
                value[rows] = fixed


def scaled(z: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
    """``scale * z`` in ``out``, or ``z`` itself when ``scale`` is 1 (``z`` is read only)."""
    return z if scale == 1.0 else torch.mul(z, scale, out=out)


def shifted(z: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
    """``scale * z`` minus each row's maximum, in ``out``: the largest entry is exactly 0."""
    if scale == 1.0:
        return torch.sub(z, z.amax(1, keepdim=True), out=out)
    torch.mul(z, scale, out=out)
    return out.sub_(out.amax(1, keepdim=True))


def log_softmax_and_softmax(
    z: torch.Tensor, scale: float, out_log: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax, softmax) of the rows of ``scale * z`` with one exponential pass, in
    (``out_log``, ``out``).

    With the row maximum shifted to 0 the largest probability is exactly
    ``1 / sum_k exp(a_k)`` (>= 1 / C), so ``log softmax = a + log(max softmax)`` is as
    precise as ``torch.log_softmax`` (``a - log sum exp a``). NaN on rows holding ``+inf``,
    NaN or only ``-inf``.
    """
    a = shifted(z, scale, out_log)
    probs = torch.softmax(a, 1, out=out)
    return a.add_(probs.amax(1, keepdim=True).log_()), probs


def _finite_rows(*sums: torch.Tensor) -> torch.Tensor:
    ok = torch.isfinite(sums[0])
    for s in sums[1:]:
        ok &= torch.isfinite(s)
    return ok


# --------------------------------------------------------------------------------------
# The divergences as row losses: ``factor * D(softmax(scale * zp) || softmax(scale * zq))``
# per row of the two (b, C) logit blocks (no target), each with its exact kernel and its
# fast kernels. ``mirror`` evaluates D(q || p) instead (the inputs and their gradients
# swapped): "reverse_kl" is the mirrored KL, alpha < 1/2 the mirrored alpha-divergence.


class _Divergence(BufferedRowLoss):
    """The engine's hooks of one divergence; a kind defines ``exact`` (any logits),
    ``fast_value`` and ``fast_grads`` (the plain closed forms, reporting the rows they do
    not get exactly). ``needs`` says which of the two inputs need a gradient (the other's
    may be None)."""

    buffers = 5

    def __init__(
        self,
        *,
        scale: float = 1.0,
        factor: float = 1.0,
        needs: tuple[bool, bool] = (True, True),
        mirror: bool = False,
    ) -> None:
        self.scale, self.factor, self.needs, self.mirror = scale, factor, needs, mirror

    @abstractmethod
    def exact(self, lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
        """The exact per-row divergence (with ``grads``, its gradients) from log-probs."""

    @abstractmethod
    def fast_value(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> torch.Tensor:
        """The per-row divergence from the logits by the closed-form kernel."""

    @abstractmethod
    def fast_grads(
        self,
        zp: torch.Tensor,
        zq: torch.Tensor,
        g: torch.Tensor,
        needs: tuple[bool, bool],
        ws: list[torch.Tensor],
    ) -> FastGrads:
        """g * the gradients w.r.t. both logits (None where not needed), and the rows where
        they are not exact."""

    def _evaluate(self, zp: torch.Tensor, zq: torch.Tensor, grads: bool) -> Parts:
        if self.scale != 1.0:
            zp, zq = zp * self.scale, zq * self.scale
        return self.exact(log_probs(zp), log_probs(zq), grads)

    def value(self, zp: torch.Tensor, zq: torch.Tensor, t: None) -> torch.Tensor:
        if self.mirror:
            zp, zq = zq, zp
        if fast_ok(zp):
            loss = self.fast_value(zp, zq, self.block_work(zp))
            redo_rows(
                ~torch.isfinite(loss), [loss], lambda r: self._evaluate(zp[r], zq[r], False)[:1]
            )
            loss = nonnegative(loss)
        else:
            loss = self._evaluate(zp, zq, False)[0]
        return loss * self.factor if self.factor != 1.0 else loss

    def grad(
        self, zp: torch.Tensor, zq: torch.Tensor, t: None, g: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        g = (g * (self.factor * self.scale)).unsqueeze(1)
        needs = self.needs
        if self.mirror:
            zp, zq, needs = zq, zp, needs[::-1]
        if fast_ok(zp):
            grad_p, grad_q, bad = self.fast_grads(zp, zq, g, needs, self.block_work(zp))

            def exact(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                _, grad_p, grad_q = self._evaluate(zp[rows], zq[rows], True)
                return grad_p * g[rows], grad_q * g[rows]

            redo_rows(bad, [grad_p, grad_q], exact)
        else:
            _, grad_p, grad_q = self._evaluate(zp, zq, True)
            grad_p, grad_q = grad_p * g, grad_q * g
        return (grad_q, grad_p) if self.mirror else (grad_p, grad_q)


class _KL(_Divergence):
    def exact(self, lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
        return _kl(lp, lq, grads)

    def fast_value(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> torch.Tensor:
        lp, p = log_softmax_and_softmax(zp, self.scale, ws[0], ws[1])
        lq = torch.log_softmax(scaled(zq, self.scale, ws[2]), 1, out=ws[3])
        return lp.sub_(lq).mul_(p).sum(1)  # NaN or inf on every row with a non-finite logit

    def fast_grads(
        self,
        zp: torch.Tensor,
        zq: torch.Tensor,
        g: torch.Tensor,
        needs: tuple[bool, bool],
        ws: list[torch.Tensor],
    ) -> FastGrads:
        need_p, need_q = needs
        checks: list[torch.Tensor] = []
        if need_p:
            lp, p = log_softmax_and_softmax(zp, self.scale, ws[0], ws[1])
            lq, q = log_softmax_and_softmax(zq, self.scale, ws[2], ws[3])
            ratio = lp.sub_(lq)
            kl = torch.mul(ratio, p, out=ws[4]).sum(1, keepdim=True)
            grad_p = ratio.sub_(kl).mul_(p).mul_(g)  # p (log(p / q) - KL)
            checks.append(kl)
        else:
            p = torch.softmax(scaled(zp, self.scale, ws[0]), 1, out=ws[1])
            q = torch.softmax(scaled(zq, self.scale, ws[2]), 1, out=ws[3])
            grad_p = None
        grad_q = q.sub_(p).mul_(g) if need_q else None
        if grad_q is not None:  # need_q
            checks.append(grad_q.sum(1, keepdim=True))  # NaN only on rows of NaN p or q
        return grad_p, grad_q, ~_finite_rows(*checks).squeeze(1)


class _JS(_Divergence):
    def exact(self, lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
        return _js(lp, lq, grads)

    def _terms(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """p, q, log(p / m), log(q / m) and KL(p || m), KL(q || m) of a block, m = (p + q) / 2."""
        lp, p = log_softmax_and_softmax(zp, self.scale, ws[0], ws[1])
        lq, q = log_softmax_and_softmax(zq, self.scale, ws[2], ws[3])
        # m >= tiny: where p and q both underflow to 0 the terms are 0 either way and the log
        # ratios stay finite; a -inf logit still gives 0 * -inf = NaN in its row's sum
        lm = torch.lerp(p, q, 0.5, out=ws[4]).clamp_(min=torch.finfo(p.dtype).tiny).log_()
        rp, rq = lp.sub_(lm), lq.sub_(lm)
        kp = torch.mul(p, rp, out=lm).sum(1, keepdim=True)
        kq = torch.mul(q, rq, out=lm).sum(1, keepdim=True)
        return p, q, rp, rq, kp, kq

    def fast_value(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> torch.Tensor:
        *_, kp, kq = self._terms(zp, zq, ws)
        return (0.5 * (kp + kq)).squeeze(1)

    def fast_grads(
        self,
        zp: torch.Tensor,
        zq: torch.Tensor,
        g: torch.Tensor,
        needs: tuple[bool, bool],
        ws: list[torch.Tensor],
    ) -> FastGrads:
        p, q, rp, rq, kp, kq = self._terms(zp, zq, ws)
        half = 0.5 * g
        grad_p = rp.sub_(kp).mul_(p).mul_(half) if needs[0] else None
        grad_q = rq.sub_(kq).mul_(q).mul_(half) if needs[1] else None
        return grad_p, grad_q, ~_finite_rows(kp, kq).squeeze(1)  # kp finite: each p_k r_k is


class _TV(_Divergence):
    def exact(self, lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
        return _tv(lp, lq, grads)

    def _terms(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = torch.softmax(scaled(zp, self.scale, ws[0]), 1, out=ws[1])
        q = torch.softmax(scaled(zq, self.scale, ws[2]), 1, out=ws[3])
        return p, q, torch.sub(p, q, out=ws[4])

    def fast_value(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> torch.Tensor:
        *_, diff = self._terms(zp, zq, ws)
        return 0.5 * diff.abs_().sum(1)

    def fast_grads(
        self,
        zp: torch.Tensor,
        zq: torch.Tensor,
        g: torch.Tensor,
        needs: tuple[bool, bool],
        ws: list[torch.Tensor],
    ) -> FastGrads:
        p, q, diff = self._terms(zp, zq, ws)
        sign = diff.sign_()
        sp = torch.mul(sign, p, out=ws[0]).sum(1, keepdim=True)
        sq = torch.mul(sign, q, out=ws[0]).sum(1, keepdim=True)
        half = 0.5 * g
        grad_p = torch.sub(sign, sp, out=ws[0]).mul_(p).mul_(half) if needs[0] else None
        grad_q = q.mul_(sign.sub_(sq)).mul_(-half) if needs[1] else None
        return grad_p, grad_q, ~_finite_rows(sp, sq).squeeze(1)  # NaN only where p or q is


def _sqrt_probs(
    z: torch.Tensor, scale: float, work: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """sqrt(softmax(scale * z)) = softmax(scale * z / 2) / its 2-norm, in ``out``."""
    u = torch.softmax(torch.mul(z, 0.5 * scale, out=work), 1, out=out)
    return u.div_(torch.linalg.vector_norm(u, dim=1, keepdim=True))


class _Hellinger(_Divergence):
    buffers = 3

    def exact(self, lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
        return _hellinger(lp, lq, grads)

    def fast_value(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> torch.Tensor:
        rp = _sqrt_probs(zp, self.scale, ws[0], ws[1])
        rq = _sqrt_probs(zq, self.scale, ws[0], ws[2])
        return 0.5 * rp.sub_(rq).square_().sum(1)

    def fast_grads(
        self,
        zp: torch.Tensor,
        zq: torch.Tensor,
        g: torch.Tensor,
        needs: tuple[bool, bool],
        ws: list[torch.Tensor],
    ) -> FastGrads:
        rp = _sqrt_probs(zp, self.scale, ws[0], ws[1])
        rq = _sqrt_probs(zq, self.scale, ws[0], ws[2])
        both = torch.mul(rp, rq, out=ws[0])
        overlap = both.sum(1, keepdim=True)  # the Bhattacharyya coefficient
        half = 0.5 * g
        grad_p = rp.square_().mul_(overlap).sub_(both).mul_(half) if needs[0] else None
        grad_q = rq.square_().mul_(overlap).sub_(both).mul_(half) if needs[1] else None
        return grad_p, grad_q, ~torch.isfinite(overlap.squeeze(1))


class _Alpha(_Divergence):
    """Amari's alpha-divergence for alpha >= 1/2 with beta = 1 - alpha not tiny (see
    :func:`_alpha_upper`; :func:`divergence_loss` maps the other alphas here or to KL)."""

    buffers = 4

    def __init__(self, alpha: float, **options: Any) -> None:
        super().__init__(**options)
        self.alpha = alpha

    def exact(self, lp: torch.Tensor, lq: torch.Tensor, grads: bool) -> Parts:
        return _alpha_upper(lp, lq, self.alpha, grads)

    def _terms(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor], grads: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The terms of :func:`_alpha_upper` by the plain closed forms: p, q (None unless
        ``grads``), p E and S = sum p E. Where p or q is 0 the exact kernel's floors and its
        NaN repair act; here those rows give NaN or inf."""
        beta = 1.0 - self.alpha
        lp, p = log_softmax_and_softmax(zp, self.scale, ws[0], ws[1])
        if grads:
            lq, q = log_softmax_and_softmax(zq, self.scale, ws[2], ws[3])
        else:
            lq, q = torch.log_softmax(scaled(zq, self.scale, ws[2]), 1, out=ws[3]), None
        x = lq.sub_(lp).mul_(beta)
        if beta > 0:
            x.clamp_(max=_EXP_CAP)
        pe = x.expm1_().mul_(p).div_(beta)  # p E
        return p, q, pe, pe.sum(1, keepdim=True)

    def fast_value(
        self, zp: torch.Tensor, zq: torch.Tensor, ws: list[torch.Tensor]
    ) -> torch.Tensor:
        *_, s = self._terms(zp, zq, ws, grads=False)
        return -s.squeeze(1) / self.alpha

    def fast_grads(
        self,
        zp: torch.Tensor,
        zq: torch.Tensor,
        g: torch.Tensor,
        needs: tuple[bool, bool],
        ws: list[torch.Tensor],
    ) -> FastGrads:
        alpha = self.alpha
        p, q, pe, s = self._terms(zp, zq, ws, grads=True)
        assert q is not None  # grads=True
        grad_p = torch.mul(p, s, out=ws[0]).sub_(pe).mul_(g) if needs[0] else None
        w = pe.mul_(1.0 - alpha).add_(p)  # p^alpha q^(1 - alpha)
        total = w.sum(1, keepdim=True)
        grad_q = q.mul_(total).sub_(w).mul_(g / alpha) if needs[1] else None
        return grad_p, grad_q, ~_finite_rows(s, total).squeeze(1)


_KINDS: dict[str, tuple[type[_Divergence], bool]] = {
    "kl": (_KL, False),
    "reverse_kl": (_KL, True),
    "js": (_JS, False),
    "tv": (_TV, False),
    "hellinger": (_Hellinger, False),
}


def divergence_loss(kind: str, alpha: float | None, **options: Any) -> _Divergence:
    """The row loss ``factor * D(softmax(scale * zp) || softmax(scale * zq))`` of ``kind``
    for the engine (:func:`softmaxkit._ops.row_loss.row_loss`); ``options`` are the
    keyword arguments of :class:`_Divergence` but ``mirror``.

    On CPU the fast kernels run, with the exact kernel on the rows they flag."""
    if kind != "alpha":
        cls, mirror = _KINDS[kind]
        return cls(mirror=mirror, **options)
    # D_alpha(p || q) = D_(1 - alpha)(q || p): evaluate around the alpha -> 0 limit instead
    assert alpha is not None  # check_alpha requires it with kind="alpha"
    mirror = alpha < 0.5
    upper = 1.0 - alpha if mirror else alpha
    if abs(1.0 - upper) < _ALPHA_LIMIT:
        return _KL(mirror=mirror, **options)
    return _Alpha(upper, mirror=mirror, **options)


def check_alpha(kind: str, alpha: float | None) -> float | None:
    v.check_choice("kind", kind, KINDS)
    if kind == "alpha":
        if alpha is None:
            raise ValueError('alpha must be given (a real number) when kind="alpha", got None')
        return v.check_number("alpha", alpha)
    if alpha is not None:
        raise ValueError(f'alpha is only used with kind="alpha", got alpha={alpha!r} with {kind=}')
    return None


@backend_op
def f_divergence(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    kind: str,
    *,
    alpha: float | None = None,
    dim: int = -1,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""An f-divergence :math:`D(p \,\|\, q)` between ``p = softmax(p_logits)`` and
    ``q = softmax(q_logits)`` along ``dim``.

    .. math::
        \mathrm{kl}:\ \sum_k p_k \log\frac{p_k}{q_k} \qquad
        \mathrm{reverse\_kl}:\ \sum_k q_k \log\frac{q_k}{p_k} \qquad
        \mathrm{js}:\ \tfrac12 \mathrm{KL}(p\|m) + \tfrac12 \mathrm{KL}(q\|m),\ m = \tfrac{p+q}2

        \mathrm{tv}:\ \tfrac12 \sum_k |p_k - q_k| \qquad
        \mathrm{hellinger}:\ \tfrac12 \sum_k (\sqrt{p_k} - \sqrt{q_k})^2
            = 1 - \sum_k \sqrt{p_k q_k}

        \mathrm{alpha}:\ D_\alpha(p\|q) = \frac{1}{\alpha(\alpha - 1)}
            \Big(\sum_k p_k^\alpha q_k^{1-\alpha} - 1\Big)

    Each is an f-divergence :math:`\sum_k q_k f(p_k / q_k)` (Csiszar 1967; Ali & Silvey
    1966), so each is >= 0 and 0 exactly when p = q, i.e. when the two logit rows agree up
    to an additive shift. JS lies in [0, log 2] and is symmetric; TV in [0, 1]; "hellinger"
    is the *squared* Hellinger distance with the 1/2 convention, in [0, 1] (take its square
    root for the Hellinger metric). "alpha" is Amari's alpha-divergence in the
    parameterisation of A. Cichocki, S. Amari, "Families of Alpha- Beta- and
    Gamma-Divergences: Flexible and Robust Measures of Similarities", Entropy 12(6),
    1532-1568, 2010, for normalised distributions (Csiszar generator
    :math:`f(u) = (u^\alpha - 1 - \alpha (u - 1)) / (\alpha(\alpha - 1))`, the one of
    ``tfp.vi.amari_alpha``): alpha -> 1 gives KL(p || q), alpha -> 0 gives
    KL(q || p) = reverse KL, alpha = 1/2 gives 4 x "hellinger", and
    :math:`D_\alpha(p\|q) = D_{1-\alpha}(q\|p)`; any real alpha is accepted (Amari's
    original alpha' in [-1, 1] is 2 alpha - 1). Both limits are continuous: the sum is evaluated as
    :math:`\sum_k p_k\,\mathrm{expm1}((1-\alpha) \log(q_k/p_k))` (mirrored for
    alpha < 1/2), which never subtracts two numbers near 1.

    Computed exactly in log space from the log-softmax of both inputs, so it holds for any
    logits, including ``-inf`` (a zero-probability class; 0 log 0 = 0) and ±1e4. The
    result is ``+inf`` only where the divergence is: for "kl" where some class has
    p > 0 = q ("reverse_kl": q > 0 = p; "alpha": the same for alpha >= 1, resp. alpha <= 0);
    the gradient there is not defined (NaN or inf). A row of only ``-inf`` logits is
    treated as the zero measure (no NaN). Both inputs receive gradients (closed form,
    computed block by block in backward); neither is detached.

    As a distillation loss, pass the teacher as ``p_logits`` and the student as
    ``q_logits`` for the forward KL of Hinton et al. (``kind="kl"``, the usual KD loss;
    :func:`softmaxkit.losses.kd_loss` adds the temperature), or use "reverse_kl" for the
    mode-seeking KL(student || teacher); detach the teacher yourself
    (``teacher.detach()``) when it must not be trained.

    Args:
        p_logits: logits of p, any shape; float16/bfloat16 are computed in float32.
        q_logits: logits of q, the same shape.
        kind: one of "kl", "reverse_kl", "js", "tv", "hellinger", "alpha".
        alpha: the alpha of ``kind="alpha"`` (required there, rejected otherwise).
        dim: the class axis.
        reduction: "mean" over all distributions (every position other than ``dim``;
            the "batchmean" of ``torch.nn.functional.kl_div`` for 2-D input, 0 for an
            empty batch), "sum", or "none" (the input shape without ``dim``).

    Returns:
        The divergence in the promoted dtype of the two inputs.

    Example:
        >>> import torch
        >>> from softmaxkit.losses.divergence import f_divergence
        >>> p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 0.0]])
        >>> f_divergence(p, q, "kl"), f_divergence(p, q, "js")
        (tensor(0.5743), tensor(0.1495))
        >>> f_divergence(p, q, "alpha", alpha=1.0), f_divergence(p, q, "alpha", alpha=0.0)
        (tensor(0.5743), tensor(0.7379))
        >>> f_divergence(p, torch.tensor([[2.0, 0.0, -float("inf")]]), "tv")
        tensor(0.0420)
    """
    v.check_floating("p_logits", p_logits)
    v.check_floating("q_logits", q_logits)
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"q_logits must have the shape of p_logits {tuple(p_logits.shape)}, "
            f"got {tuple(q_logits.shape)}"
        )
    alpha = check_alpha(kind, alpha)
    dim = v.check_dim("dim", dim, p_logits.ndim)
    v.check_reduction(reduction)
    compute = compute_dtype(p_logits, q_logits)
    x2, y2 = as_rows(p_logits, dim), as_rows(q_logits, dim)
    needs = (x2.requires_grad, y2.requires_grad)
    loss = divergence_loss(kind, alpha, needs=needs)
    losses = row_loss(loss, [x2, y2], None, dtype=compute)
    out_dtype = torch.promote_types(p_logits.dtype, q_logits.dtype)
    return reduce(losses, p_logits.shape[:dim] + p_logits.shape[dim + 1 :], reduction, out_dtype)


class FDivergence(LossModule):
    """Module twin of :func:`f_divergence`: ``FDivergence(kind, alpha=None, dim=-1,
    reduction="mean")(p_logits, q_logits)``.

    Example:
        >>> import torch
        >>> from softmaxkit.losses.divergence import FDivergence
        >>> FDivergence("hellinger")(torch.tensor([[2.0, 0.0, -1.0]]), torch.zeros(1, 3))
        tensor(0.1562)
    """

    shared_options = ("reduction",)

    def __init__(
        self, kind: str, *, alpha: float | None = None, dim: int = -1, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction=reduction)
        self.alpha = check_alpha(kind, alpha)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r} ({type(dim).__name__})")
        self.kind, self.dim = kind, dim

    def hyperparameters(self) -> dict[str, Any]:
        alpha = {"alpha": self.alpha} if self.kind == "alpha" else {}
        return {"kind": self.kind, **alpha, "dim": self.dim}

    def forward(self, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        return f_divergence(
            p_logits, q_logits, self.kind, alpha=self.alpha, dim=self.dim, **self.options()
        )
