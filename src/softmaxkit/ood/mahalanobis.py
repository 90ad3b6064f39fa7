"""Mahalanobis OOD detector (Lee, Lee, Lee & Shin 2018) and its layer ensemble.

"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018, arXiv:1807.03888. Official code: pokaxpoka/deep_Mahalanobis_detector
(``lib_generation.py``: ``sample_estimator``, ``get_Mahalanobis_score``; ``lib_regression.py``).

Sign convention: higher = more in-distribution, as in the paper. pytorch-ood's
``Mahalanobis`` returns the negation (an outlier score). Scale: this module scores with
``max_c -(f - mu_c)^T Sigma^-1 (f - mu_c)``, the paper's score as we know it (and as
pytorch-ood's docstring states it; the paper's text could not be re-read here, so that
the paper has no 1/2 is unverified). The official code (and pytorch-ood's code) use
``-1/2`` of the quadratic form, i.e. half of our score: same ranking, same AUROC; the
ensemble's regression weights differ by a factor 2 (and, through the L2 penalty, slightly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import BLOCK_ELEMENTS, upcast
from softmaxkit._ops.optim import lbfgs
from softmaxkit.ood._detector import (
    COVARIANCE_ESTIMATORS,
    FeatureDetector,
    class_counts,
    fit_covariance,
    power_of_two_above,
)

__all__ = ["Mahalanobis", "MahalanobisEnsemble", "logistic_regression", "NOISE_MAGNITUDES"]

#: the paper's / official script's grid of input pre-processing magnitudes epsilon
NOISE_MAGNITUDES = (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)

#: entries of one (rows x max(classes, features)) block of the chunked scoring
_BLOCK_ELEMENTS = BLOCK_ELEMENTS


def _check_finite(name: str, x: torch.Tensor) -> None:
    V.check_tensor_values(
        name, x, low=float("-inf"), high=float("inf"), low_open=True, high_open=True
    )


#: Mahalanobis._factors: -m, W, the projected centres, their squared norms, 1 / scale
_Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]


class Mahalanobis(FeatureDetector):
    r"""Class-conditional Gaussians with a tied covariance; score = closest class.

    Fit (the official ``sample_estimator``): class means ``mu_c`` and the tied
    maximum-likelihood covariance
    ``Sigma = 1/N sum_c sum_{i: y_i = c} (f_i - mu_c)(f_i - mu_c)^T``
    (divided by N, as sklearn's ``EmpiricalCovariance`` that the official code uses),
    in float64, and its pseudo-inverse (eigenvalues at or below ``d * eps_float64 *
    lambda_max`` dropped: ``torch.linalg.pinv(hermitian=True)``'s cut-off; sklearn's
    ``pinvh`` in the official code). ``covariance="ledoit_wolf"`` shrinks ``Sigma``
    towards ``tr(Sigma)/d * I`` by Ledoit & Wolf's (2004) closed-form intensity (as
    sklearn's ``LedoitWolf`` on the class-centred features; not in the paper, which uses
    the empirical estimate, the default). ``eps > 0`` then adds ``eps * I`` (pytorch-ood's
    default is 1e-6; the official code adds nothing).

    Degenerate fits say so (the paper's estimate is singular with fewer than
    ``num_classes + d`` samples, or with dead / collinear features): a zero covariance
    (e.g. one sample per class), which would make every score 0, raises ``ValueError``;
    a singular one (rank r < d) warns (``UserWarning``): the pseudo-inverse then scores
    no deviation in the d - r missing directions. Shrinkage or a ridge gives a full-rank
    estimate.

    Score: ``M(f) = max_c -(f - mu_c)^T Sigma^-1 (f - mu_c)``, higher = more
    in-distribution. Computed in row chunks from ``Sigma^-1 = W W^T``: with
    ``g = W^T(f - m)`` (``m`` the mean of the class means) and ``p_c = W^T(mu_c - m)``, the
    closest class comes from one matmul, ``|g|^2 - 2 g . p_c + |p_c|^2``, and its distance
    is then recomputed directly as ``|g - p_c|^2`` (no cancellation), so no (N, C, d)
    tensor is formed and float32 is as accurate as the direct per-class formula. float64
    features are scored in float64; others in float32 and returned in their dtype
    (float16 overflows to -inf beyond -65504). Everything is computed on ``f / s``, with
    ``s`` the power of two above the largest class-centred deviation (an exact scaling),
    so the fit and the score are exact at any finite magnitude (float64 features of 1e200,
    whose covariance 1e400 is not a float64 number; float32 up to 3.4e38); and ``m`` is
    rounded to the scoring dtype before ``p_c`` is formed from it, so features sharing a
    large offset lose no accuracy in float32.

    Features of shape ``(N, C, *spatial)`` are averaged over the spatial axes first, as the
    paper does for every layer.

    Args:
        eps: ridge added to the covariance before the pseudo-inverse (default 0.0).
        covariance: ``"empirical"`` (default, the paper's) or ``"ledoit_wolf"``.

    Attributes (after :meth:`fit`): ``means`` (C, d), ``covariance`` (d, d) and
    ``precision`` (d, d), all float64 (the true matrices: beyond about 1e154 they over- or
    underflow, while scoring, which uses the scaled ones, stays exact), and
    ``shrinkage``, the Ledoit-Wolf intensity in [0, 1] (0.0 for ``"empirical"``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(300) % 3
        >>> f = torch.randn(300, 4, generator=g) + 5 * torch.eye(4)[y]
        >>> det = Mahalanobis().fit(f, y)
        >>> bool(det.score(f[:5]).mean() > det.score(f[:5] + 20).mean())
        True
    """

    _fit_call = "fit(features, target)"
    _pool = True  # (N, C, *spatial) features are averaged over space
    _finite_queries = False  # scored features may be infinite (not NaN)

    #: frames between the user's ``fit`` call and the covariance fit's warning
    _warn_stacklevel = 5

    def __init__(self, *, eps: float = 0.0, covariance: str = "empirical") -> None:
        self.eps = V.check_number("eps", eps, low=0.0)
        self.covariance_estimator = V.check_choice("covariance", covariance, COVARIANCE_ESTIMATORS)
        self.shrinkage: float | None = None
        self.means: torch.Tensor | None = None
        self.covariance: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self._cache: dict[tuple[torch.dtype, torch.device], _Factors] = {}

    # ------------------------------------------------------------------ fit
    def fit(  # type: ignore[override]  # target is required
        self, features: torch.Tensor, target: torch.Tensor, *, num_classes: int | None = None
    ) -> Mahalanobis:
        """Fit the class means and tied covariance on ``features`` (N, d) with labels
        ``target`` (N,), class indices of any integer dtype in [0, num_classes) (default:
        ``target.max() + 1``); every class needs at least one sample. A zero covariance
        raises ``ValueError``, a singular one warns (see the class docstring)."""
        return self._fit(features, target, num_classes=num_classes)

    def _fit_checked(
        self, x: torch.Tensor, target: torch.Tensor, *, num_classes: int | None
    ) -> None:
        x = x.detach()
        n = x.shape[0]
        V.check_nonempty("features", x, "sample")
        if num_classes is None:
            target = V.check_class_indices("target", target, (n,), 2**62)
            num_classes = int(target.max()) + 1
        V.check_int("num_classes", num_classes, low=1)
        target = V.check_class_indices("target", target, (n,), num_classes)
        x = x.to(torch.float64)
        target = target.to(x.device)
        counts, missing = class_counts(target, num_classes)
        if missing is not None:
            raise ValueError(
                f"target must hold every class in [0, {num_classes - 1}] at least once, "
                f"got no sample of class {missing}"
            )
        # class sums of x / 2^k (exact), so that they cannot overflow
        unit = power_of_two_above(float(x.abs().amax()))
        means = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device)
        means = means.index_add_(0, target, x / unit).div_(counts.unsqueeze(1)) * unit
        d = x.shape[1]
        fit = fit_covariance(
            x - means[target],
            estimator=self.covariance_estimator,
            ridge=self.eps,
            who="Mahalanobis.fit",
            full_rank_needs=f"at least num_classes + d = {num_classes + d} samples",
            remedy="covariance='ledoit_wolf' or a ridge eps > 0",
            stacklevel=self._warn_stacklevel,
        )
        self.means, self.covariance, self.precision = means, fit.covariance, fit.precision
        self.shrinkage = fit.shrinkage
        self._gaussian = fit
        self._cache = {}

    def _width(self) -> int | None:
        return None if self.means is None else self.means.shape[1]

    @property
    def num_classes(self) -> int:
        return self._fitted().shape[0]

    def _fitted(self) -> torch.Tensor:
        self._fitted_width()
        assert self.means is not None  # _fitted_width raised otherwise
        return self.means

    def _factors(self, dtype: torch.dtype, device: torch.device) -> _Factors:
        """(-m, W, W^T(mu_c - m) as (C, r), their squared norms, 1 / scale) in ``dtype``,
        all in the fit's scaled units ``x / scale`` (exact: a power of two), so that
        ``x / scale - m`` cannot overflow where the distance is finite. The centre ``m``
        (the mean of the class means) is rounded to ``dtype`` first and the class centres
        are projected from that rounded ``m`` in float64: a large common offset of the
        features then costs no accuracy (``x - m`` is exact near ``m``)."""
        key = (dtype, device)
        if key not in self._cache:
            means, fit = self._fitted() / self._gaussian.scale, self._gaussian
            centre = means.mean(0).to(dtype).to(torch.float64)
            proj = (means - centre) @ fit.factor
            parts = (-centre, fit.factor, proj, proj.square().sum(1))
            cached = tuple(p.to(device=device, dtype=dtype) for p in parts)
            self._cache[key] = cast(_Factors, (*cached, 1.0 / fit.scale))
        return self._cache[key]

    def _whiten(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``g = W^T (x / scale - m)`` (rows, r), the class centres ``W^T (mu_c - m)`` and
        their squared norms; ``(x - mu_c)^T Sigma^-1 (x - mu_c) = |g - proj_c|^2``."""
        neg_centre, w, proj, proj_sq, inv_scale = self._factors(x.dtype, x.device)
        return torch.add(neg_centre, x, alpha=inv_scale) @ w, proj, proj_sq

    def _sq_distances(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, C) squared Mahalanobis distances of (rows, d) ``x``, expanded as
        ``|g|^2 - 2 g . proj_c + |proj_c|^2`` (one matmul; differentiable)."""
        g, proj, proj_sq = self._whiten(x)
        return (g.square().sum(1, keepdim=True) - 2 * (g @ proj.T) + proj_sq).clamp(min=0)

    def _closest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The closest class (rows, 1) and its squared distance (rows,), the latter
        recomputed directly as ``|g - proj_c|^2`` (no cancellation; differentiable)."""
        g, proj, proj_sq = self._whiten(x)
        expanded = g.detach().square().sum(1, keepdim=True) - 2 * (g.detach() @ proj.T)
        closest = (expanded + proj_sq).argmin(1, keepdim=True)
        return closest, (g - proj[closest.squeeze(1)]).square().sum(1)

    # ---------------------------------------------------------------- score
    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Per-class scores ``-(f - mu_c)^T Sigma^-1 (f - mu_c)``, shape (N, C), from the
        expanded form (one matmul; in float32 its absolute error grows with ``|g|^2``, so
        :meth:`score` recomputes the winning class's distance directly)."""
        x = self._check_queries("features", features)
        return (-self._sq_distances(upcast(x))).to(x.dtype)

    def _rows_per_block(self, x: torch.Tensor) -> int:
        return max(1, _BLOCK_ELEMENTS // max(self.num_classes, x.shape[1]))

    def _score_rows(self, x: torch.Tensor) -> torch.Tensor:
        return -self._closest(x)[1]

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``M(f) = max_c -(f - mu_c)^T Sigma^-1 (f - mu_c)``, shape (N,), chunked over rows."""
        return super().score(features)

    # -------------------------------------------------------- pre-processing
    def preprocess(
        self,
        model: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]],
        inputs: torch.Tensor,
        *,
        noise_magnitude: float,
        input_std: Sequence[float] | torch.Tensor | None = None,
        layer: int | None = None,
    ) -> torch.Tensor:
        r"""The paper's input pre-processing: one signed-gradient step towards the
        closest class,

            x_hat = x - eps * sign(grad_x (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)) / std,
            c = argmax_c M_c(x).

        As in the official ``get_Mahalanobis_score``: the sign maps a zero gradient to +1
        (``2 * (grad >= 0) - 1``), and the signed gradient is divided per input channel
        (axis 1) by the normalisation std (``input_std``; the official values are
        (0.2023, 0.1994, 0.2010) for its ResNet and (63.0, 62.1, 66.7)/255 for its
        DenseNet; default None: no division). The gradient is of the summed distances
        (the official code takes the batch mean of half of them: the same sign).
        Parameters of ``model`` get no gradient; put it in eval mode yourself.

        Args:
            model: maps ``inputs`` to features (N, d) / ``(N, C, *spatial)``, or to a list or
                tuple of per-layer features (then ``layer`` picks one).
            inputs: (N, C, ...) floating inputs.
            noise_magnitude: eps >= 0 (the paper picks it on validation data from
                :data:`NOISE_MAGNITUDES`).
            input_std: per-channel std of the input normalisation, length ``inputs.shape[1]``.
            layer: index into the model's list of features.

        Returns:
            ``x_hat``, detached, ``inputs``' shape and dtype.
        """
        eps = V.check_number("noise_magnitude", noise_magnitude, low=0.0)
        V.check_floating("inputs", inputs)
        if inputs.ndim < 2:
            raise ValueError(
                f"inputs must be (samples, channels, ...), got shape {tuple(inputs.shape)}"
            )
        V.check_callable("model", model)
        std = None
        if input_std is not None:
            std = torch.as_tensor(input_std, dtype=inputs.dtype, device=inputs.device).flatten()
            if std.numel() != inputs.shape[1]:
                raise ValueError(
                    f"input_std must have one entry per input channel ({inputs.shape[1]}), "
                    f"got {std.numel()}"
                )
            V.check_tensor_values("input_std", std, low=0.0, low_open=True)
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            feats = _select_layer(model(x), layer)
            f = upcast(self._check_queries("model output", feats))
            loss = self._closest(f)[1].sum()
            (grad,) = torch.autograd.grad(loss, x)
        step = torch.where(grad >= 0, 1.0, -1.0).to(inputs.dtype)
        if std is not None:
            step = step / std.view(1, -1, *([1] * (inputs.ndim - 2)))
        return (inputs.detach() - eps * step).detach()

    def score_inputs(
        self,
        model: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]],
        inputs: torch.Tensor,
        *,
        noise_magnitude: float = 0.0,
        input_std: Sequence[float] | torch.Tensor | None = None,
        layer: int | None = None,
    ) -> torch.Tensor:
        """Score of the pre-processed inputs: ``M(f(x_hat))`` (see :meth:`preprocess`);
        with ``noise_magnitude=0`` the plain score of ``model(inputs)``. Shape (N,)."""
        if noise_magnitude != 0.0:
            inputs = self.preprocess(
                model, inputs, noise_magnitude=noise_magnitude, input_std=input_std, layer=layer
            )
        with torch.no_grad():
            return self.score(_select_layer(model(inputs), layer))


def _select_layer(output: object, layer: int | None) -> Any:  # unchecked: score checks it
    if isinstance(output, (list, tuple)):
        if layer is None:
            raise ValueError(
                f"layer must be given when the model returns a list of {len(output)} features"
            )
        V.check_int("layer", layer, low=-len(output), high=len(output) - 1)
        return output[layer]
    if layer is not None:
        raise ValueError(f"layer must be None when the model returns one tensor, got {layer}")
    return output


def logistic_regression(
    x: torch.Tensor, y: torch.Tensor, *, C: float = 1.0, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""L2-regularised binary logistic regression, fitted by L-BFGS in float64.

    Minimises sklearn's ``LogisticRegression(penalty="l2", C=C)`` objective,
    ``C * sum_i log(1 + exp(-s_i (x_i . w + b))) + |w|^2 / 2`` with ``s_i = 2 y_i - 1``
    and the intercept ``b`` unpenalised, with ``torch.optim.LBFGS`` (strong-Wolfe line
    search) to a gradient tolerance of 1e-12, on columns divided by their std (the same
    minimiser, better conditioned).

    Args:
        x: (N, F) floating features.
        y: (N,) labels, each exactly 0 or 1 (any dtype; bool allowed); any other value
            (0.5, 2, NaN) is a ``ValueError``.
        C: inverse regularisation strength > 0 (default 1.0, sklearn's).
        max_iter: L-BFGS iterations (default 500).

    Returns:
        ``(weight (F,), bias ())``, float64; the log-odds of label 1 are ``x @ weight + bias``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> w, b = logistic_regression(x, torch.tensor([0, 0, 1, 1]))
        >>> bool(w[0] > 0)
        True
    """
    V.check_floating("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (samples, features), got shape {tuple(x.shape)}")
    V.check_nonempty("x", x, "sample")
    _check_finite("x", x)
    V.check_tensor("y", y)
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"y must have shape {(x.shape[0],)}, got {tuple(y.shape)}")
    if y.dtype != torch.bool:
        wrong = (y != 0) & (y != 1)
        if bool(wrong.any()):
            bad = y[wrong][0].item()
            raise ValueError(f"y must hold the labels 0 and 1 only, got {bad}")
    c = V.check_number("C", C, low=0.0, low_open=True)
    V.check_int("max_iter", max_iter, low=1)
    xd = x.detach().to(torch.float64)
    sign = y.detach().to(device=xd.device, dtype=torch.float64) * 2 - 1
    # optimise v = w * scale on unit-scale columns (same minimiser, better conditioned)
    scale = xd.std(0, correction=0) if xd.shape[0] > 1 else torch.ones_like(xd[0])
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    xs = xd / scale
    params = torch.zeros(xd.shape[1] + 1, dtype=torch.float64, device=xd.device)
    params.requires_grad_(True)
    opt = lbfgs(
        [params], max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-16, history_size=20
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        v, b = params[:-1], params[-1]
        margin = sign * (xs @ v + b)
        penalty = 0.5 * (v / scale).square().sum()
        loss = c * torch.nn.functional.softplus(-margin).sum() + penalty
        loss.backward()
        return loss

    opt.step(closure)
    params = params.detach()
    return params[:-1] / scale, params[-1].clone()


class MahalanobisEnsemble:
    r"""The paper's feature ensemble: one :class:`Mahalanobis` per layer, combined by a
    logistic regression fitted on validation ID/OOD scores (the paper's "feature ensemble").

    ``score(features) = sum_l w_l M_l(f_l) + b``: the log-odds of in-distribution under
    the regression (ID labelled 1), so higher = more in-distribution. The official code
    labels OOD 1 and reports a probability; the log-odds give the same ranking without
    the probability's saturation ties.

    Differences from the official code (``lib_regression.py``): it fits sklearn's
    ``LogisticRegressionCV`` (10 values of C by 5-fold CV); this fits one
    :func:`logistic_regression` at the given ``C`` (default 1.0), in torch.
    :meth:`fit_validation` runs the paper's selection of the noise magnitude from
    :data:`NOISE_MAGNITUDES` (best TNR at 95% TPR on held-out validation data).

    Args:
        eps: covariance ridge of each layer's :class:`Mahalanobis` (default 0.0).
        C: inverse L2 strength of the regression (default 1.0).
        covariance: each layer's covariance estimator, ``"empirical"`` (default, the
            paper's) or ``"ledoit_wolf"`` (see :class:`Mahalanobis`).

    Attributes: ``detectors`` (one per layer), ``weight`` (L,) and ``bias`` (float64, after
    a regression fit), ``noise_magnitude`` and ``validation_fpr`` (after
    :meth:`fit_validation`).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> layers = [torch.randn(200, 3, generator=g) + 4 * y[:, None] for _ in range(2)]
        >>> ens = MahalanobisEnsemble().fit(layers, y)
        >>> ood = [torch.randn(200, 3, generator=g) + 12 for _ in range(2)]
        >>> ens = ens.fit_regression(layers, ood)
        >>> bool(ens.score(layers).mean() > ens.score(ood).mean())
        True
    """

    def __init__(self, *, eps: float = 0.0, C: float = 1.0, covariance: str = "empirical") -> None:
        self.eps = V.check_number("eps", eps, low=0.0)
        self.C = V.check_number("C", C, low=0.0, low_open=True)
        self.covariance_estimator = V.check_choice("covariance", covariance, COVARIANCE_ESTIMATORS)
        self.detectors: list[Mahalanobis] = []
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.noise_magnitude = 0.0
        self.validation_fpr: float | None = None

    def _check_layers(self, name: str, features: object) -> list[torch.Tensor]:
        if not isinstance(features, (list, tuple)) or len(features) == 0:
            raise TypeError(
                f"{name} must be a non-empty list or tuple of per-layer feature tensors, "
                f"got {type(features).__name__}"
            )
        if self.detectors and len(features) != len(self.detectors):
            raise ValueError(
                f"{name} must hold {len(self.detectors)} layers (as fitted), got {len(features)}"
            )
        return list(features)

    def fit(
        self,
        features: Sequence[torch.Tensor],
        target: torch.Tensor,
        *,
        num_classes: int | None = None,
    ) -> MahalanobisEnsemble:
        """Fit one :class:`Mahalanobis` per layer on the training ``features`` (a list of
        (N, d_l) or ``(N, C_l, *spatial)`` tensors) with labels ``target`` (N,)."""
        self.detectors = []
        layers = self._check_layers("features", features)
        detectors = []
        for f in layers:
            det = Mahalanobis(eps=self.eps, covariance=self.covariance_estimator)
            det._warn_stacklevel = 6  # the warning points at the ensemble's fit call
            detectors.append(det.fit(f, target, num_classes=num_classes))
        self.detectors = detectors
        self.weight = self.bias = None
        return self

    def layer_scores(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-layer scores ``M_l(f_l)``, shape (N, L), float64."""
        if not self.detectors:
            raise RuntimeError("MahalanobisEnsemble used before fit(features, target)")
        layers = self._check_layers("features", features)
        cols = [det.score(f).to(torch.float64) for det, f in zip(self.detectors, layers)]
        return torch.stack(cols, 1)

    def fit_regression(
        self, features_in: Sequence[torch.Tensor], features_out: Sequence[torch.Tensor]
    ) -> MahalanobisEnsemble:
        """Fit the layer weights on validation features: ID (``features_in``, label 1)
        against OOD (``features_out``, label 0)."""
        s_in, s_out = self.layer_scores(features_in), self.layer_scores(features_out)
        return self.fit_regression_scores(s_in, s_out)

    def fit_regression_scores(
        self, scores_in: torch.Tensor, scores_out: torch.Tensor
    ) -> MahalanobisEnsemble:
        """Fit the layer weights on precomputed layer scores, e.g. of pre-processed inputs
        from :meth:`layer_scores_inputs`: ``scores_in`` (N, L) of ID samples (label 1) and
        ``scores_out`` (M, L) of OOD samples (label 0), floating, finite, N, M >= 1, with
        one column per layer (as many as fitted layers, when fitted)."""
        width = len(self.detectors) or None
        for name, t in (("scores_in", scores_in), ("scores_out", scores_out)):
            V.check_floating(name, t)
            if t.ndim != 2:
                raise ValueError(
                    f"{name} must be a 2-D (samples, layers) tensor, got shape {tuple(t.shape)}"
                )
            V.check_nonempty(name, t, "sample")
            if width is None:
                width = t.shape[1]
            elif t.shape[1] != width:
                raise ValueError(
                    f"{name} must have {width} columns (one per layer"
                    f"{', as fitted' if self.detectors else ', as scores_in'}), got shape "
                    f"{tuple(t.shape)}"
                )
            _check_finite(name, t)
        if scores_in.device != scores_out.device:
            raise ValueError(
                f"scores_in and scores_out must be on the same device, got {scores_in.device} "
                f"and {scores_out.device}"
            )
        x = torch.cat([scores_in, scores_out]).to(torch.float64)
        y = torch.cat([torch.ones(scores_in.shape[0]), torch.zeros(scores_out.shape[0])])
        self.weight, self.bias = logistic_regression(x, y.to(x.device), C=self.C)
        return self

    def combine(self, layer_scores: torch.Tensor) -> torch.Tensor:
        """``layer_scores @ weight + bias``: the ensemble score of (N, L) layer scores."""
        if self.weight is None:
            raise RuntimeError("MahalanobisEnsemble.score called before fit_regression(...)")
        assert self.bias is not None  # fitted with the weight
        return layer_scores.to(torch.float64) @ self.weight.to(layer_scores.device) + self.bias

    def score(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ensemble score of per-layer ``features``, shape (N,), float64."""
        return self.combine(self.layer_scores(features))

    __call__ = score

    def layer_scores_inputs(
        self,
        model: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        inputs: torch.Tensor,
        *,
        noise_magnitude: float = 0.0,
        input_std: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, L) layer scores of pre-processed inputs: layer l scores its own
        ``x_hat_l`` (the step uses layer l's distance), as the official code does."""
        if not self.detectors:
            raise RuntimeError("MahalanobisEnsemble used before fit(features, target)")
        cols = [
            det.score_inputs(
                model, inputs, noise_magnitude=noise_magnitude, input_std=input_std, layer=i
            ).to(torch.float64)
            for i, det in enumerate(self.detectors)
        ]
        return torch.stack(cols, 1)

    def score_inputs(
        self,
        model: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        inputs: torch.Tensor,
        *,
        noise_magnitude: float | None = None,
        input_std: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ensemble score of pre-processed inputs, shape (N,), float64; the noise magnitude
        defaults to the one :meth:`fit_validation` chose (0.0 before)."""
        eps = self.noise_magnitude if noise_magnitude is None else noise_magnitude
        scores = self.layer_scores_inputs(model, inputs, noise_magnitude=eps, input_std=input_std)
        return self.combine(scores)

    def fit_validation(
        self,
        model: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        inputs_in: torch.Tensor,
        inputs_out: torch.Tensor,
        *,
        noise_magnitudes: Sequence[float] = NOISE_MAGNITUDES,
        input_std: Sequence[float] | torch.Tensor | None = None,
        tpr: float = 0.95,
    ) -> MahalanobisEnsemble:
        """The paper's validation protocol (official ``OOD_Regression_Mahalanobis.py``):
        for each noise magnitude, the (N, L) layer scores of the pre-processed validation
        inputs; the regression is fitted on the first half of the ID and of the OOD
        inputs and judged on the second halves by the FPR at ``tpr`` TPR (lowest wins, i.e.
        the best TNR at 95% TPR; ties go to the earlier magnitude). Keeps the winner's
        magnitude (``noise_magnitude``) and regression. Each input set needs >= 2 samples."""
        from softmaxkit.ood.metrics import fpr_at_tpr

        for name, t in (("inputs_in", inputs_in), ("inputs_out", inputs_out)):
            V.check_floating(name, t)
            if t.ndim == 0 or t.shape[0] < 2:
                raise ValueError(
                    f"{name} must hold at least 2 samples (half fit, half select), "
                    f"got shape {tuple(t.shape)}"
                )
        mags = [V.check_number("noise_magnitudes", m, low=0.0) for m in noise_magnitudes]
        if not mags:
            raise ValueError("noise_magnitudes must hold at least one magnitude, got none")
        h_in, h_out = inputs_in.shape[0] // 2, inputs_out.shape[0] // 2
        best: tuple[float, float, torch.Tensor | None, torch.Tensor | None] | None = None
        for eps in mags:
            s_in = self.layer_scores_inputs(
                model, inputs_in, noise_magnitude=eps, input_std=input_std
            )
            s_out = self.layer_scores_inputs(
                model, inputs_out, noise_magnitude=eps, input_std=input_std
            )
            self.fit_regression_scores(s_in[:h_in], s_out[:h_out])
            fpr = float(fpr_at_tpr(self.combine(s_in[h_in:]), self.combine(s_out[h_out:]), tpr))
            if best is None or fpr < best[0]:
                best = (fpr, eps, self.weight, self.bias)
        assert best is not None  # mags is not empty
        _, self.noise_magnitude, self.weight, self.bias = best
        self.validation_fpr = best[0]
        return self
