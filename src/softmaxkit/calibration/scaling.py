r"""Post-hoc scaling of logits: temperature, vector and matrix scaling.

Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
arXiv:1706.04599, Sec. 4.2: each scaler maps logits ``z`` to calibrated logits and is
fitted by minimising the negative log-likelihood (NLL) of held-out labels, with the
classifier frozen. Temperature scaling keeps the argmax (and hence the accuracy).

API: ``scaler.fit(logits, target) -> scaler`` then ``scaler(logits) -> logits``.
Fitting works in float64 on the logits' device, one row block at a time, so memory
beyond the input stays at a few MiB of temporaries (plus an ``(N,)`` vector or two).
An unfitted scaler raises ``RuntimeError``; ``state_dict()`` holds the fitted values and
a ``fitted`` flag, and loading a fitted state dict makes the scaler usable.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import row_blocks, upcast
from softmaxkit._ops.optim import lbfgs

__all__ = ["MatrixScaling", "TemperatureScaling", "VectorScaling"]

#: entries per row block while fitting: 1 Mi float64 (8 MiB) per temporary
_BLOCK = 1 << 20


def _blocks(n: int, c: int) -> list[slice]:
    return row_blocks(n, c, _BLOCK)


def _as_float64(block: torch.Tensor) -> torch.Tensor:
    z = block.to(torch.float64)
    return z.clone() if z.is_inference() else z


class _Scaler(nn.Module):
    """Shared fitted-state handling."""

    fitted: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._fitted = False
        #: diagnostics of the last fit: method, iterations, NLL before and after
        self.fit_info: dict[str, object] = {}

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fitted = bool(self.fitted)

    def _mark_fitted(self) -> None:
        self.fitted.fill_(True)
        self._fitted = True

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call .fit(logits, target) on held-out "
                "data first (or load the state_dict of a fitted one)"
            )

    def _check_forward(self, logits: object, num_classes: int | None) -> torch.Tensor:
        self._require_fitted()
        V.check_floating("logits", logits)
        assert isinstance(logits, torch.Tensor)
        if logits.ndim < 1:
            raise ValueError("logits must have at least 1 dimension (the classes), got 0-d")
        if num_classes is not None and logits.shape[-1] != num_classes:
            raise ValueError(
                f"logits must have {num_classes} classes in the last dimension, "
                f"got shape {tuple(logits.shape)}"
            )
        return logits


def _check_fit(
    logits: object,
    target: object,
    max_iter: object,
    num_classes: int | None,
    allow_neg_inf: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    V.check_floating("logits", logits)
    assert isinstance(logits, torch.Tensor)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got shape {tuple(logits.shape)}")
    V.check_nonempty("logits", logits, "sample")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"logits must have num_classes={num_classes} columns, got shape {tuple(logits.shape)}"
        )
    target = V.check_class_indices("target", target, (logits.shape[0],), logits.shape[1])
    if target.device != logits.device:
        raise ValueError(
            f"target must be on the logits' device {logits.device}, got {target.device}"
        )
    V.check_int("max_iter", max_iter, low=1)
    V.check_logit_rows("logits", logits)
    if not allow_neg_inf:
        V.check_tensor_values("logits", logits, low=-math.inf, low_open=True)
    return logits.detach(), target


class _TemperatureNLL:
    r"""``f(s) = mean_i [LSE(z_i / T) - z_iy / T]`` with ``T = e^s``, and ``df/ds``.

    With ``beta = 1/T``, ``m_i = max_k z_ik``, ``d_ik = z_ik - m_i`` and
    ``S_i = sum_k exp(beta d_ik)``: ``f = mean[log S_i + beta (m_i - z_iy)]`` and
    ``df/dbeta = mean[sum_k softmax(beta z_i)_k d_ik + m_i - z_iy]``. ``f`` is convex in
    ``beta`` (a log-sum-exp of a linear map), so it is unimodal in ``s``.

    Evaluated one row block at a time into two preallocated float64 buffers (no
    allocation per evaluation); the last evaluation is cached.
    """

    def __init__(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.x = logits
        n, c = logits.shape
        self.n = n
        self.blocks = _blocks(n, c)
        top = logits.amax(dim=1).to(torch.float64)
        z_y = logits.gather(1, target.unsqueeze(1)).squeeze(1).to(torch.float64)
        if not bool(torch.isfinite(z_y).all()):
            raise ValueError("logits must be finite at the target class to fit a temperature")
        self.top = top
        self.gap_sum = (top - z_y).sum()
        self.masked = bool((logits == -math.inf).any())
        rows = self.blocks[0].stop - self.blocks[0].start
        self.d = torch.empty(rows, c, dtype=torch.float64, device=logits.device)
        self.e = torch.empty_like(self.d)
        self.cache: tuple[float, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = float(s.detach())
        if self.cache is not None and self.cache[0] == key:
            return self.cache[1], self.cache[2]
        beta = torch.exp(-s.detach().to(torch.float64))
        log_s = torch.zeros((), dtype=torch.float64, device=self.x.device)
        mean_d = torch.zeros_like(log_s)
        for rows in self.blocks:
            size = rows.stop - rows.start
            d, e = self.d[:size], self.e[:size]
            d.copy_(self.x[rows]).sub_(self.top[rows].unsqueeze(1))
            if self.masked:  # exp(beta * -1e300) = 0 and 0 * -1e300 = 0, never NaN
                d.clamp_(min=-1e300)
            torch.mul(d, beta, out=e).exp_()
            total = e.sum(dim=1)
            weighted = e.mul_(d).sum(dim=1)
            log_s = log_s + torch.log(total).sum()
            mean_d = mean_d + (weighted / total).sum()
        f = (log_s + beta * self.gap_sum) / self.n
        df_ds = -beta * (mean_d + self.gap_sum) / self.n
        self.cache = (key, f, df_ds)
        return f, df_ds


class TemperatureScaling(_Scaler):
    r"""Temperature scaling: calibrated logits :math:`z / T` with one scalar :math:`T > 0`.

    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv:1706.04599,
    Sec. 4.2. :math:`T` minimises the mean NLL :math:`\frac1N\sum_i
    [\mathrm{LSE}(z_i/T) - z_{iy_i}/T]` on held-out data; it does not change the argmax.

    Fitting (float64, on the logits' device, one row block at a time with the analytic
    gradient, no autograd graph and no ``N x C`` copy): L-BFGS with a strong-Wolfe line
    search on :math:`s = \log T` from :math:`T = 1`; the result is accepted when it is
    finite, inside ``bounds`` and :math:`|\partial f/\partial s| \le 10^{-7}`. Otherwise
    a bracketing search takes over: bisection on the sign of :math:`\partial f/\partial s`
    over :math:`\log T \in [\log T_{lo}, \log T_{hi}]` (valid because the NLL is convex in
    :math:`1/T`, hence unimodal in :math:`\log T`). When the minimiser lies outside
    ``bounds`` (e.g. separable data want :math:`T \to 0`, chance-level data
    :math:`T \to \infty`) the bound is returned. ``fit_info`` records the method used.

    Attributes:
        temperature: 0-d parameter, 1.0 until fitted.
        fitted: 0-d bool buffer.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import TemperatureScaling
        >>> g = torch.Generator().manual_seed(0)
        >>> true = torch.randn(2000, 5, generator=g) * 2
        >>> y = torch.multinomial(true.softmax(-1), 1, generator=g).squeeze(1)
        >>> ts = TemperatureScaling().fit(3 * true, y)  # over-confident by a factor 3
        >>> round(ts.temperature.item())
        3
        >>> ts(torch.tensor([[6.2, 0.0]])).argmax(-1)  # the argmax never changes
        tensor([0])
    """

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(()))

    def fit(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        max_iter: int = 100,
        bounds: tuple[float, float] = (1e-2, 1e2),
    ) -> TemperatureScaling:
        """Fit ``T`` by minimising the NLL of ``target`` under ``softmax(logits / T)``.

        Args:
            logits: ``(N, C)`` float logits of held-out data, N >= 1 (``-inf`` entries
                allowed except at the target class; no NaN / ``+inf``).
            target: ``(N,)`` class indices of any integer dtype (converted to int64 once).
            max_iter: L-BFGS iterations. Default 100.
            bounds: ``(T_lo, T_hi)`` with ``0 < T_lo < T_hi``, the range of the bracketing
                search and of the accepted result. Default ``(1e-2, 1e2)``.

        Returns:
            ``self``, fitted.
        """
        x, y = _check_fit(logits, target, max_iter, None, allow_neg_inf=True)
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise TypeError(f"bounds must be a pair (T_lo, T_hi), got {bounds!r}")
        lo = V.check_number("bounds[0]", bounds[0], low=0.0, low_open=True)
        hi = V.check_number("bounds[1]", bounds[1], low=lo, low_open=True)
        objective = _TemperatureNLL(x, y)
        s_lo, s_hi = math.log(lo), math.log(hi)
        s = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
        opt = lbfgs(
            [s], max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-15, history_size=10
        )

        def closure() -> torch.Tensor:
            f, grad = objective(s)
            s.grad = grad.reshape(())
            return f

        nll_before = float(objective(torch.zeros((), dtype=torch.float64, device=x.device))[0])
        method = "lbfgs"
        try:
            opt.step(closure)
            s_hat = float(s.detach())
            ok = math.isfinite(s_hat) and s_lo <= s_hat <= s_hi
            if ok:
                ok = abs(float(objective(s.detach())[1])) <= 1e-7
        except (RuntimeError, ValueError):  # a failed line search
            ok = False
        if not ok:
            method = "bisection"
            s_hat = self._bracket(objective, s_lo, s_hi, x.device)
        final = torch.tensor(s_hat, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            self.temperature.copy_(torch.exp(final))
        self.fit_info = {
            "method": method,
            "iterations": opt.state[s].get("n_iter", 0),
            "nll_before": nll_before,
            "nll_after": float(objective(final)[0]),
        }
        self._mark_fitted()
        return self

    @staticmethod
    def _bracket(objective: _TemperatureNLL, a: float, b: float, device: torch.device) -> float:
        def slope(v: float) -> float:
            return float(objective(torch.tensor(v, dtype=torch.float64, device=device))[1])

        if slope(a) >= 0:
            return a
        if slope(b) <= 0:
            return b
        while b - a > 1e-12:
            mid = 0.5 * (a + b)
            if slope(mid) > 0:
                b = mid
            else:
                a = mid
        return 0.5 * (a + b)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / T`` for logits of any shape ``(..., C)``; fp16/bf16 computed in float32
        and returned in the input dtype. An entry whose ``z / T`` lies beyond the dtype's
        range (``T < 1`` near its maximum) rounds to ``+-inf`` as IEEE division does: no
        finite logit represents it (compute in float64 to keep such logits)."""
        x = self._check_forward(logits, None)
        z = upcast(x)
        return (z / self.temperature.to(z.dtype)).to(x.dtype)


def _fit_affine(
    x: torch.Tensor,
    y: torch.Tensor,
    params: list[torch.Tensor],
    *,
    apply: Callable[[torch.Tensor], torch.Tensor],
    penalty: Callable[[], torch.Tensor] | None,
    max_iter: int,
) -> dict[str, object]:
    """Minimise mean NLL(apply(z), y) (+ penalty) with L-BFGS + strong Wolfe in float64."""
    n, c = x.shape
    blocks = _blocks(n, c)
    opt = lbfgs(
        params, max_iter=max_iter, tolerance_grad=1e-8, tolerance_change=1e-12, history_size=20
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for rows in blocks:
            loss = F.cross_entropy(apply(_as_float64(x[rows])), y[rows], reduction="sum") / n
            loss.backward()
            total = total + loss.detach()
        if penalty is not None:
            reg = penalty()
            reg.backward()
            total = total + reg.detach()
        return total

    with torch.no_grad():
        before = sum(
            float(F.cross_entropy(apply(_as_float64(x[rows])), y[rows], reduction="sum"))
            for rows in blocks
        )
    opt.step(closure)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise RuntimeError("fit diverged: L-BFGS produced non-finite parameters")
    with torch.no_grad():
        after = sum(
            float(F.cross_entropy(apply(_as_float64(x[rows])), y[rows], reduction="sum"))
            for rows in blocks
        )
    return {
        "method": "lbfgs",
        "iterations": opt.state[params[0]].get("n_iter", 0),
        "nll_before": before / n,
        "nll_after": after / n,
    }


_Affine = TypeVar("_Affine", bound="_AffineScaler")


class _AffineScaler(_Scaler, ABC):
    """Vector and matrix scaling: calibrated logits ``self._map(z, weight, bias)``, fitted
    from the identity map (``_identity``) by minimising the mean NLL plus ``_penalty``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = V.check_int("num_classes", num_classes, low=1)
        self.weight = nn.Parameter(self._identity(torch.device("cpu")).float())
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

    @staticmethod
    @abstractmethod
    def _map(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The scaled logits of ``z`` under weight ``w`` and bias ``b``."""

    @abstractmethod
    def _identity(self, device: torch.device) -> torch.Tensor:
        """The float64 weight of the identity map."""

    def _penalty(self, w: torch.Tensor, b: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """The regulariser added to the mean NLL (none by default)."""
        return None

    def _forward_map(self, z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """:meth:`_map` as :meth:`forward` applies it (where it may guard the float range)."""
        return self._map(z, w, b)

    def _fit(self: _Affine, logits: torch.Tensor, target: torch.Tensor, max_iter: int) -> _Affine:
        x, y = _check_fit(logits, target, max_iter, self.num_classes, allow_neg_inf=False)
        w = self._identity(x.device).requires_grad_(True)
        b = torch.zeros(self.num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
        self.fit_info = _fit_affine(
            x,
            y,
            [w, b],
            apply=lambda z: self._map(z, w, b),
            penalty=self._penalty(w, b),
            max_iter=max_iter,
        )
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(b)
        self._mark_fitted()
        return self

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """The calibrated logits over the last dimension (``logits * w + b`` for vector,
        ``logits @ W.T + b`` for matrix scaling); fp16/bf16 computed in float32."""
        x = self._check_forward(logits, self.num_classes)
        z = upcast(x)
        return self._forward_map(z, self.weight.to(z.dtype), self.bias.to(z.dtype)).to(x.dtype)


class VectorScaling(_AffineScaler):
    r"""Vector scaling: calibrated logits :math:`z \odot w + b` with :math:`w, b \in \mathbb{R}^C`.

    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv:1706.04599,
    Sec. 4.2 (matrix scaling restricted to a diagonal matrix). :math:`(w, b)` minimise the
    mean NLL (a convex problem), fitted with L-BFGS + strong-Wolfe line search in float64
    from :math:`w = 1, b = 0` (the identity map); no regulariser, as in the paper. The
    argmax may change.

    Args:
        num_classes: C >= 1.

    Attributes:
        weight: ``(C,)`` parameter (ones until fitted). bias: ``(C,)`` parameter (zeros).

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import VectorScaling
        >>> g = torch.Generator().manual_seed(0)
        >>> true = torch.randn(2000, 3, generator=g)
        >>> y = torch.multinomial(true.softmax(-1), 1, generator=g).squeeze(1)
        >>> vs = VectorScaling(3).fit(2 * true + torch.tensor([1.0, 0.0, 0.0]), y)
        >>> vs.weight.detach().round(decimals=1)
        tensor([0.5000, 0.5000, 0.5000])
    """

    def fit(
        self, logits: torch.Tensor, target: torch.Tensor, *, max_iter: int = 200
    ) -> VectorScaling:
        """Fit ``(w, b)`` by minimising the NLL of ``target`` under ``softmax(z * w + b)``.

        Args:
            logits: ``(N, C)`` finite float logits of held-out data, N >= 1.
            target: ``(N,)`` class indices of any integer dtype (converted to int64 once).
            max_iter: L-BFGS iterations. Default 200.

        Returns:
            ``self``, fitted.
        """
        return self._fit(logits, target, max_iter)

    @staticmethod
    def _map(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return z * w + b

    def _identity(self, device: torch.device) -> torch.Tensor:
        return torch.ones(self.num_classes, dtype=torch.float64, device=device)


class MatrixScaling(_AffineScaler):
    r"""Matrix scaling: calibrated logits :math:`W z + b`, fitted with the ODIR penalty.

    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv:1706.04599,
    Sec. 4.2 (matrix scaling), regularised with ODIR (Off-Diagonal and Intercept
    Regularisation) of Kull et al., "Beyond temperature scaling: Obtaining well-calibrated
    multiclass probabilities with Dirichlet calibration", NeurIPS 2019, arXiv:1910.12656
    (their "MS-ODIR"). The fitted objective is

    .. math::
        \frac1N\sum_i \mathrm{NLL}(W z_i + b, y_i)
        + \frac{\lambda}{C(C-1)} \sum_{j \ne k} W_{jk}^2 + \frac{\mu}{C} \sum_j b_j^2

    (the normalised form of the authors' code, dirichletcal/dirichlet_python
    ``MultinomialRegression`` with ``reg_norm=True``). The diagonal is not penalised, so
    the penalty pulls towards per-class temperature scaling rather than towards zero.
    The paper picks :math:`\lambda, \mu` by cross-validation over a grid (from 1e-5 or
    1e-2 up to 1e6) and has no single default; the defaults here,
    :math:`\lambda = \mu = 10^{-2}`, are a mild choice of ours (the bottom of the paper's
    100-class grid). Tune them by cross-validation for your data. Fitted with L-BFGS +
    strong-Wolfe line search in float64 from the identity map.

    The calibrated logits are computed as :math:`r\,(W (z / r)) + b` with :math:`r` a
    power of two near :math:`\sqrt{\max_k |z_k|}` of the row, so that logits near the
    dtype's maximum overflow neither inside the matrix product (:math:`z_1 + z_2 - z_3` at
    ``3e38`` each is ``3e38``, not ``inf``) nor in its gradient; at ordinary magnitudes
    the result is bit for bit that of :math:`W z + b`.

    Args:
        num_classes: C >= 1.
        l2: :math:`\lambda >= 0`, weight of the off-diagonal penalty. Default 1e-2.
        bias_l2: :math:`\mu >= 0`, weight of the intercept penalty. Default 1e-2.

    Attributes:
        weight: ``(C, C)`` parameter (identity until fitted). bias: ``(C,)`` (zeros).

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import MatrixScaling
        >>> g = torch.Generator().manual_seed(0)
        >>> true = torch.randn(2000, 3, generator=g)
        >>> y = torch.multinomial(true.softmax(-1), 1, generator=g).squeeze(1)
        >>> ms = MatrixScaling(3, l2=0.0, bias_l2=0.0).fit(true[:, [1, 0, 2]], y)
        >>> ms.weight.detach().round().abs()  # learns to swap classes 0 and 1 back
        tensor([[0., 1., 0.],
                [1., 0., 0.],
                [0., 0., 1.]])
    """

    def __init__(self, num_classes: int, *, l2: float = 1e-2, bias_l2: float = 1e-2) -> None:
        super().__init__(num_classes)
        self.l2 = V.check_number("l2", l2, low=0.0)
        self.bias_l2 = V.check_number("bias_l2", bias_l2, low=0.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, l2={self.l2:g}, bias_l2={self.bias_l2:g}"

    def fit(
        self, logits: torch.Tensor, target: torch.Tensor, *, max_iter: int = 500
    ) -> MatrixScaling:
        """Fit ``(W, b)`` by minimising the ODIR-regularised NLL (see the class docstring).

        Arguments and result as :meth:`VectorScaling.fit`; ``max_iter`` defaults to 500.
        """
        return self._fit(logits, target, max_iter)

    @staticmethod
    def _map(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return z @ w.T + b

    def _identity(self, device: torch.device) -> torch.Tensor:
        return torch.eye(self.num_classes, dtype=torch.float64, device=device)

    def _forward_map(self, z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``((z / r) @ W.T) * r + b`` with ``r`` the power of two nearest below
        ``sqrt(max_k |z_k|)`` of the row (a constant for autograd).

        The products and partial sums of the matrix product then stay near ``sqrt`` of the
        row's scale, and so does every intermediate of the backward (``g * r``, then
        ``@ W``, then ``/ r``): logits near the dtype's maximum give a finite result and a
        finite gradient wherever the true ones are. Powers of two scale exactly, so at
        ordinary magnitudes the result is the plain ``z @ W.T + b`` to the bit.
        """
        _, exponent = torch.frexp(z.detach().abs().amax(dim=-1, keepdim=True))
        r = torch.ldexp(torch.ones(exponent.shape, dtype=z.dtype, device=z.device), exponent // 2)
        return (z / r) @ w.T * r + b

    def _penalty(self, w: torch.Tensor, b: torch.Tensor) -> Callable[[], torch.Tensor]:
        """ODIR: ``l2 / (C (C - 1))`` times the squared off-diagonal of ``W`` plus
        ``bias_l2 / C`` times the squared intercept."""
        c = self.num_classes
        off = ~torch.eye(c, dtype=torch.bool, device=w.device)
        lam = self.l2 / (c * (c - 1)) if c > 1 else 0.0
        mu = self.bias_l2 / c

        def penalty() -> torch.Tensor:
            return lam * (w * off).square().sum() + mu * b.square().sum()

        return penalty
