r"""The exact O(d^2) output layer for spherical-family losses (Vincent et al. 2015).

A loss of the spherical family depends on the outputs :math:`o = W h \in \mathbb{R}^D` only
through :math:`\sum_k o_k`, :math:`\sum_k o_k^2` and the target output :math:`o_c`, so its
gradient is :math:`\nabla_o \ell = f_1 o + f_2 \mathbf{1} + f_3 e_c` with per-example scalars
:math:`f_1, f_2, f_3`. :class:`SphericalOutputLayer` keeps :math:`W` factored so that the
loss, the gradient with respect to :math:`h` and the *exact* plain-SGD update of :math:`W`
all cost :math:`O(d^2)` per example, independent of :math:`D`.

Paper: P. Vincent, A. de Brébisson, X. Bouthillier, "Efficient Exact Gradient Update for
training Deep Networks with Very Large Sparse Targets", NeurIPS 2015, arXiv:1412.7091.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from softmaxkit import _validation as v

__all__ = ["SphericalOutputLayer"]

LOSSES = ("z_loss", "spherical_softmax", "taylor_softmax")

#: one recorded batch: (x, target, f1, f2, f3, target rows of W, box of the upstream scale)
_Recorded = tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    dict[str, Any],
]


def _row_terms(
    loss: str,
    s1: torch.Tensor,
    c2: torch.Tensor,
    oc: torch.Tensor,
    dc: torch.Tensor,
    *,
    D: int,
    opts: dict[str, float],
) -> tuple[torch.Tensor, ...]:
    """Per-example loss, the scalars of grad_o = f1 o + f2 1 + f3 e_c, and g2 = f2 + f1 mu
    (the coefficient of 1 once o is written o - mu 1 + mu 1), from s1 = sum(o), the centred
    sum of squares c2 = sum((o - mu)^2), oc = o_c and dc = o_c - mu (all (B,)), mu = s1 / D.
    The Z-loss uses only centred quantities: sigma = sqrt(c2 / D) and dc (computed from the
    centred target row), never a difference of two large sums (sum(o^2) = c2 + s1 mu is a
    sum of two non-negative terms)."""
    mu = s1 / D
    if loss == "z_loss":
        a, b, eps = opts["a"], opts["b"], opts["eps"]
        sigma = (c2 / D).clamp_min(0.0).sqrt()
        s = sigma + eps
        s = torch.where(s > 0, s, torch.ones_like(s))
        zc = dc / s
        value = F.softplus(a * (b - zc)) / a
        g = -torch.sigmoid(a * (b - zc))  # dl/dz_c
        # dz_c/do_k = (delta_kc - 1/D)/s - z_c (o_k - mu) / (D s sigma)
        safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        f1 = torch.where(sigma > 0, -g * zc / (D * s * safe), torch.zeros_like(g))
        g2 = -g / (D * s)
        f2 = g2 - mu * f1
        f3 = g / s
    elif loss == "spherical_softmax":
        eps = opts["eps"]
        total = c2 + s1 * mu + D * eps
        value = total.log() - (oc.square() + eps).log()
        f1 = 2.0 / total
        f2 = torch.zeros_like(f1)
        g2 = f1 * mu
        f3 = -2.0 * oc / (oc.square() + eps)
    else:  # taylor_softmax
        total = D + s1 + 0.5 * (c2 + s1 * mu)
        fc = 1.0 + oc + 0.5 * oc.square()
        value = total.log() - fc.log()
        f1 = 1.0 / total
        f2 = f1
        g2 = f1 * (1.0 + mu)
        f3 = -(1.0 + oc) / fc
    return value, f1, f2, f3, g2


class _Forward(torch.autograd.Function):
    """Returns the precomputed loss; backward returns the precomputed grad_h (times the
    upstream gradient) and records that upstream gradient as the scale of the pending
    weight update."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, grad_h: torch.Tensor, loss: torch.Tensor, box: dict[str, Any]
    ) -> torch.Tensor:
        ctx.save_for_backward(grad_h)
        ctx.box = box
        ctx.in_dtype, ctx.in_device = h.dtype, h.device
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad_h,) = ctx.saved_tensors
        ctx.box["scale"] = g.detach().to(grad_h.device, grad_h.dtype)
        return (grad_h * g.to(grad_h.device)).to(ctx.in_device, ctx.in_dtype), None, None, None


class SphericalOutputLayer(nn.Module):
    r"""A D-way output layer :math:`o = W h` trained with a spherical-family loss in
    :math:`O(d^2)` per example (Vincent, de Brébisson & Bouthillier 2015).

    **Representation.** The weight :math:`W \in \mathbb{R}^{D \times d}` is never stored;
    the layer keeps

    .. math::
        W = V U + \mathbf{1} s^\top, \qquad U^{-1}, \qquad
        C = W^\top P W, \qquad \bar w = W^\top \mathbf{1},
        \qquad P = I - \mathbf{1}\mathbf{1}^\top / D,

    with :math:`V \in \mathbb{R}^{D \times d}`, :math:`U \in \mathbb{R}^{d \times d}` and
    :math:`s \in \mathbb{R}^d`. The paper's :math:`W = VU` is extended by the rank-one
    term :math:`\mathbf{1} s^\top`, which absorbs the dense :math:`f_2 \mathbf{1} h^\top`
    part of the gradient (from :math:`\sum_k o_k`, used by the Z-loss and the Taylor
    softmax).

    (:math:`C` is the Gram matrix of the centred rows :math:`W_k - \bar w / D`; the
    uncentred :math:`Q = W^\top W = C + \bar w \bar w^\top / D` is the property
    :attr:`Q`).

    **Forward**, per example, in :math:`O(d^2)`: :math:`\sum_k o_k = \bar w^\top h`,
    :math:`\sum_k (o_k - \mu)^2 = h^\top C h` (with :math:`\mu = \bar w^\top h / D`; so
    :math:`\sum_k o_k^2 = h^\top C h + D \mu^2`), :math:`o_c = V_c (U h) + s^\top h`. The loss
    (``loss``: ``"z_loss"``, ``"spherical_softmax"`` or ``"taylor_softmax"``, the formulas
    of :func:`softmaxkit.losses.z_loss`, :func:`~softmaxkit.losses.spherical_softmax_loss`
    and :func:`~softmaxkit.losses.taylor_softmax_loss`) gives per-example scalars with
    :math:`\nabla_o \ell = f_1 o + f_2 \mathbf{1} + f_3 e_c`, and

    .. math:: \nabla_h \ell = f_1 C h + (f_2 + f_1 \mu) \bar w + f_3 W_c^\top .

    The Z-loss's spread :math:`\sigma = \sqrt{h^\top C h / D}` comes from the centred
    statistics, never as :math:`\sum_k o_k^2 / D - \mu^2` (which cancels in float32 when
    the outputs share a large offset), and :math:`f_2 + f_1 \mu = -g / (D (\sigma +
    \varepsilon))` is formed directly.

    The returned batch loss is the mean over the batch and is differentiable w.r.t.
    ``h`` (so the layer can sit on a network), but **not** w.r.t. the weights.

    **Training: plain SGD only, applied by** :meth:`step`. The layer has no
    ``nn.Parameter`` (the factors are buffers); :meth:`parameters` raises, so it cannot be
    handed to a ``torch.optim`` optimizer by mistake. Each training-mode forward (with
    grad enabled) records the batch's scalars; :meth:`step` then applies exactly
    :math:`W \leftarrow W - \eta \nabla_W L` for the recorded loss(es), all evaluated at
    the same :math:`W` (several forwards before one step accumulate, like gradient
    accumulation). If ``backward`` reached the loss, the update is scaled by the gradient
    that reached it (e.g. ``(2 * loss).backward()`` doubles it), as autograd would. With
    :math:`H = X^\top F_1 X` (rows :math:`h_i`, :math:`F_1 = \mathrm{diag}(f_{1,i})`),
    :math:`r = \sum_i f_{2,i} h_i` and :math:`M = I - \eta H`:

    .. math::
        W_{new} = W M - \eta \mathbf{1} r^\top - \eta \textstyle\sum_i e_{c_i} f_{3,i} h_i^\top,

    carried out as :math:`U \leftarrow U M`, :math:`U^{-1} \leftarrow M^{-1} U^{-1}`
    (Woodbury, a B x B solve; the batch form of the paper's Sherman-Morrison step),
    :math:`s \leftarrow M s - \eta r`, :math:`V_{c_i} \leftarrow V_{c_i} - \eta f_{3,i}
    h_i^\top U_{new}^{-1}` (repeated targets accumulate), and, with
    :math:`A = W_{new} - W M`, :math:`S = \sum_i e_{c_i} f_{3,i} h_i^\top` and
    :math:`p = S^\top \mathbf{1} = \sum_i f_{3,i} h_i`,

    .. math::
        C \leftarrow M C M - \eta (M G + G^\top M)
            + \eta^2 (S^\top S - p p^\top / D), \qquad
        \bar w \leftarrow M \bar w - \eta (D r + p),

    since :math:`P W_{new} = P W M - \eta P S` (:math:`P \mathbf{1} = 0`: the dense
    :math:`r` term drops out of the centred rows), where :math:`G = W^\top P S = W_C^\top
    F_3 X - \bar w p^\top / D` needs only the target rows :math:`W_C` and
    :math:`S^\top S = X^\top F_3 [c_i = c_j]_{ij} F_3 X`. Everything is
    :math:`O(B d^2 + B^2 d)`; nothing touches all :math:`D` rows. If :math:`M` is singular
    (a learning rate far too large) :meth:`step` raises.

    **Renormalisation.** Every ``renorm_every`` steps the layer computes
    :math:`\mathrm{cond}(U)` (:math:`O(d^3)`) and, when it exceeds ``renorm_threshold``,
    re-factors: :math:`V \leftarrow W`, :math:`U = U^{-1} = I`, :math:`s = 0`, and
    recomputes :math:`C` (from the centred rows) and :math:`\bar w = V^\top \mathbf{1}`
    (:math:`O(D d^2)`, rare). This follows the paper's remedy for an ill-conditioned
    :math:`U`; the defaults (check every 100 steps, threshold 1e4) are ours, the paper's
    exact schedule is not verified. :meth:`renormalize` forces it.

    The loss is first-order differentiable w.r.t. ``h`` (no double backward). The paper
    tracks :math:`Q = W^\top W`; tracking the centred :math:`C` instead costs the same and
    keeps the Z-loss exact in float32 when the outputs share a large common offset (a
    state dict with the old ``Q`` loads, converted).

    Targets are one-hot class indices only (the paper's K-sparse targets with K = 1);
    soft or multi-hot targets raise ``TypeError``. Inputs are cast to the layer's
    ``dtype`` (float64 by default: the factored update accumulates rounding error, and
    exactness is its point) and ``grad_h`` is returned in the input's dtype.

    Args:
        in_features: d, >= 1.
        out_features: D, >= 2.
        loss: ``"z_loss"`` (default), ``"spherical_softmax"`` or ``"taylor_softmax"``.
        a, b: the Z-loss sharpness (> 0) and margin (defaults 1.0 and 0.0: the official
            example's ``softplus(-z_c)``; the paper tunes them); Z-loss only (given for
            another loss: ``ValueError``).
        eps: Z-loss: added to sigma (default 1e-12, as :func:`~softmaxkit.losses.z_loss`);
            spherical softmax: added to each squared output, > 0 (default 1e-6, ours);
            not an option of the Taylor softmax.
        lr: the SGD learning rate :meth:`step` uses by default, > 0 (default 0.01).
        renorm_every: steps between condition checks, >= 1 (default 100).
        renorm_threshold: re-factor when cond(U) exceeds it, > 1 (default 1e4).
        dtype: the factors' dtype, float32 or float64 (default torch.float64).
        device: where the factors live.

    Shapes: ``h`` (B, d), ``target`` (B,) integer class indices in [0, D).

    Example:
        >>> import torch
        >>> from softmaxkit.heads.spherical import SphericalOutputLayer
        >>> _ = torch.manual_seed(0)
        >>> layer = SphericalOutputLayer(16, 1000, loss="taylor_softmax", lr=0.1)
        >>> h = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
        >>> loss = layer(h, torch.randint(0, 1000, (8,)))
        >>> loss.backward()          # h.grad is exact
        >>> layer.step()             # exact SGD update of W, O(B d^2)
        >>> layer.effective_weight().shape
        torch.Size([1000, 16])
    """

    # the factors of W and the tracked statistics (buffers)
    V: torch.Tensor
    U: torch.Tensor
    U_inv: torch.Tensor
    s: torch.Tensor
    wbar: torch.Tensor
    C: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        loss: str = "z_loss",
        a: float | None = None,
        b: float | None = None,
        eps: float | None = None,
        lr: float = 0.01,
        renorm_every: int = 100,
        renorm_threshold: float = 1e4,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        v.check_int("in_features", in_features, low=1)
        v.check_int("out_features", out_features, low=2)
        v.check_choice("loss", loss, LOSSES)
        v.check_number("lr", lr, low=0.0, low_open=True)
        v.check_int("renorm_every", renorm_every, low=1)
        v.check_number("renorm_threshold", renorm_threshold, low=1.0, low_open=True)
        v.check_floating_dtype("dtype", dtype)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                "dtype must be torch.float32 or torch.float64 (the factors need linear "
                f"algebra; half inputs are accepted and computed in it), got {dtype}"
            )
        opts: dict[str, float] = {}
        unused = [k for k, x in (("a", a), ("b", b)) if x is not None and loss != "z_loss"]
        if eps is not None and loss == "taylor_softmax":
            unused.append("eps")
        if unused:
            raise ValueError(f"{', '.join(unused)} is not an option of loss={loss!r}")
        if loss == "z_loss":
            opts["a"] = v.check_number("a", 1.0 if a is None else a, low=0.0, low_open=True)
            opts["b"] = v.check_number("b", 0.0 if b is None else b)
            opts["eps"] = v.check_number("eps", 1e-12 if eps is None else eps, low=0.0)
        elif loss == "spherical_softmax":
            opts["eps"] = v.check_number(
                "eps", 1e-6 if eps is None else eps, low=0.0, low_open=True
            )
        self.in_features, self.out_features = in_features, out_features
        self.loss, self.opts = loss, {k: float(x) for k, x in opts.items()}
        self.lr, self.renorm_every = float(lr), renorm_every
        self.renorm_threshold = float(renorm_threshold)
        self.steps = 0
        self._pending: list[_Recorded] = []
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        d = in_features
        shape: tuple[int, ...]
        for name, shape in (("V", (out_features, d)), ("U", (d, d)), ("U_inv", (d, d))):
            self.register_buffer(name, torch.empty(shape, **kw))
        for name, shape in (("s", (d,)), ("wbar", (d,)), ("C", (d, d))):
            self.register_buffer(name, torch.empty(shape, **kw))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init
        self.set_weight(torch.empty(out_features, d, **kw).uniform_(-bound, bound))

    # --- no torch.optim ----------------------------------------------------------------------

    def parameters(self, recurse: bool = True) -> NoReturn:
        raise RuntimeError(
            "SphericalOutputLayer has no nn.Parameter and trains itself with plain SGD: call "
            "layer.step() (or layer.step(lr)) after backward instead of giving it to a "
            "torch.optim optimizer (its exact O(d^2) update exists only for plain SGD)"
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to zero (no parameters); drops any recorded, not yet applied batch."""
        self._pending.clear()

    # --- weights ----------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.V.dtype

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Set W (D, d) and re-factor (V = W, U = U^{-1} = I, s = 0, C and wbar exact)."""
        v.check_floating("weight", weight)
        if tuple(weight.shape) != tuple(self.V.shape):
            raise ValueError(
                f"weight must have shape {tuple(self.V.shape)} (out_features, in_features), "
                f"got {tuple(weight.shape)}"
            )
        self.V.copy_(weight)
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.V.device)
        self.U.copy_(eye)
        self.U_inv.copy_(eye)
        self.s.zero_()
        self.wbar.copy_(self.V.sum(0))
        centred = self.V - self.wbar / self.out_features
        self.C.copy_(centred.T @ centred)
        self._pending.clear()

    @property
    def Q(self) -> torch.Tensor:  # noqa: N802 (the paper's name)
        """:math:`W^\\top W = C + \\bar w \\bar w^\\top / D` (d, d), from the tracked
        statistics (for checking; the layer itself works with the centred ``C``)."""
        return self.C + torch.outer(self.wbar, self.wbar) / self.out_features

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # a state dict saved before the layer tracked C holds Q = W^T W: convert it
        old, new, wbar = prefix + "Q", prefix + "C", prefix + "wbar"
        if old in state_dict and new not in state_dict and wbar in state_dict:
            w = state_dict[wbar]
            state_dict[new] = state_dict.pop(old) - torch.outer(w, w) / self.out_features
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """W = V U + 1 s^T, (D, d) (O(D d^2); for checking and export)."""
        return self.V @ self.U + self.s

    @torch.no_grad()
    def renormalize(self) -> None:
        """Re-factor now: V <- W, U = U^{-1} = I, s = 0, exact C and wbar (O(D d^2))."""
        pending = list(self._pending)
        self.set_weight(self.effective_weight())
        self._pending.extend(pending)

    # --- forward / step ---------------------------------------------------------------------

    def _check(self, h: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
        h = v.check_floating("h", h)
        if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] != self.in_features:
            raise ValueError(
                f"h must have shape (B, {self.in_features}) (batch B >= 1, in_features), "
                f"got {tuple(h.shape)}"
            )
        target = v.check_tensor("target", target)
        if target.dtype.is_floating_point or target.ndim != 1:
            raise TypeError(
                "target must be one-hot class indices of shape (B,) and an integer dtype; "
                "SphericalOutputLayer does not support soft or multi-hot targets, got "
                f"dtype {target.dtype} and shape {tuple(target.shape)}"
            )
        dummy = torch.empty(h.shape[0], self.out_features, device="meta")
        target = v.check_class_target(target, dummy, 1, ignore_index=-(2**62))  # int64
        return h, target.to(self.V.device)

    def forward(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; differentiable w.r.t. ``h``. In training mode with
        grad enabled, records the batch for :meth:`step`."""
        h, target = self._check(h, target)
        x = h.detach().to(self.V.device, self.dtype)
        B, D = x.shape[0], self.out_features
        with torch.no_grad():
            Wc = self.V[target] @ self.U + self.s  # (B, d) target rows of W
            s1 = x @ self.wbar
            Ch = x @ self.C  # C symmetric
            c2 = (Ch * x).sum(1).clamp_min(0.0)  # sum_k (o_k - mu)^2
            oc = (Wc * x).sum(1)
            dc = ((Wc - self.wbar / D) * x).sum(1)  # o_c - mu from the centred row
            value, f1, f2, f3, g2 = _row_terms(self.loss, s1, c2, oc, dc, D=D, opts=self.opts)
            f1, f2, f3, g2 = f1 / B, f2 / B, f3 / B, g2 / B  # mean reduction
            # f1 Q h + f2 wbar = f1 C h + (f2 + f1 mu) wbar
            grad_h = f1[:, None] * Ch + g2[:, None] * self.wbar + f3[:, None] * Wc
            loss = value.mean()
        box: dict[str, Any] = {"scale": None}
        if self.training and torch.is_grad_enabled():
            self._pending.append((x, target, f1, f2, f3, Wc, box))
        loss = loss.to(h.device, h.dtype)
        if h.requires_grad and torch.is_grad_enabled():
            out: torch.Tensor = _Forward.apply(h, grad_h, loss, box)  # type: ignore[no-untyped-call]  # torch: Function.apply is unannotated
            return out
        return loss

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """Apply the exact plain-SGD update for the batch(es) recorded since the last step.

        Args:
            lr: the learning rate (default: the layer's ``lr``), > 0.
        """
        eta = self.lr if lr is None else v.check_number("lr", lr, low=0.0, low_open=True)
        if not self._pending:
            raise RuntimeError(
                "SphericalOutputLayer.step() has no recorded batch: call the layer in "
                "training mode with grad enabled (and backward) before step()"
            )
        parts: list[tuple[torch.Tensor, ...]] = []
        for x, t, f1, f2, f3, Wc, box in self._pending:
            g = 1.0 if box["scale"] is None else box["scale"]
            parts.append((x, t, f1 * g, f2 * g, f3 * g, Wc))
        X, T, f1, f2, f3, Wc = (torch.cat(p) for p in zip(*parts))
        self._update(X, T, (f1, f2, f3), Wc, eta=eta)  # raises before changing anything
        self._pending.clear()
        self.steps += 1
        due = self.steps % self.renorm_every == 0
        if due and torch.linalg.cond(self.U) > self.renorm_threshold:
            self.renormalize()

    def _update(
        self,
        X: torch.Tensor,
        T: torch.Tensor,
        coefficients: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        Wc: torch.Tensor,
        *,
        eta: float,
    ) -> None:
        f1, f2, f3 = coefficients  # per-row loss coefficients of the exact update
        D = self.out_features
        F1X = f1[:, None] * X  # (B, d); H = X^T F1 X, M = I - eta H
        r = X.T @ f2  # (d,)
        p = X.T @ f3  # (d,) = S^T 1, S = sum_i e_ci f3_i h_i^T

        def right_m(A: torch.Tensor) -> torch.Tensor:  # A M
            return A - eta * (A @ X.T) @ F1X

        # C_new = M C M - eta (M G + G^T M) + eta^2 (S^T S - p p^T / D), G = W^T P S
        CM = right_m(self.C)
        MCM = right_m(CM.T)  # (CM)^T M = M C M (C, M symmetric)
        F3X = f3[:, None] * X
        G = Wc.T @ F3X - torch.outer(self.wbar, p) / D  # W^T S - wbar p^T / D
        MG = right_m(G.T).T  # M G
        same = (T[:, None] == T[None, :]).to(X.dtype)
        StS = F3X.T @ same @ F3X
        C_new = MCM - eta * (MG + MG.T) + eta**2 * (StS - torch.outer(p, p) / D)
        # wbar_new = M wbar - eta (D r + p)
        wbar_new = self.wbar - eta * (X.T @ (F1X @ self.wbar)) - eta * (D * r + p)
        s_new = self.s - eta * (X.T @ (F1X @ self.s)) - eta * r
        # U <- U M; U^{-1} <- M^{-1} U^{-1}, M^{-1} = I + eta X^T (I - eta F1 X X^T)^{-1} F1 X
        B = X.shape[0]
        inner = torch.eye(B, dtype=X.dtype, device=X.device) - eta * F1X @ X.T
        LU, pivots, info = torch.linalg.lu_factor_ex(inner)
        piv = LU.diagonal().abs()
        if int(info) != 0 or piv.min() <= B * torch.finfo(X.dtype).eps * piv.max().clamp_min(1.0):
            raise RuntimeError(
                f"the SGD update I - lr * sum_i f1_i h_i h_i^T is singular (lr={eta}); "
                "use a smaller learning rate"
            )
        sol = torch.linalg.lu_solve(LU, pivots, F1X @ self.U_inv)
        self.U_inv.add_(eta * X.T @ sol)
        self.U.copy_(right_m(self.U))
        # sparse rows: V_c += -eta f3_i h_i^T U_new^{-1}
        self.V.index_add_(0, T, (-eta) * F3X @ self.U_inv)
        self.C.copy_(0.5 * (C_new + C_new.T))
        self.wbar.copy_(wbar_new)
        self.s.copy_(s_new)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={x}" for k, x in self.opts.items())
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"loss={self.loss!r}{opts}, lr={self.lr}, dtype={self.dtype}"
        )
