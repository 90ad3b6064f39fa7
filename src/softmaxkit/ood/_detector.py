"""The fit/score protocol of the feature-based OOD detectors, written once.

Every feature detector of :mod:`softmaxkit.ood` (:class:`~softmaxkit.ood.Mahalanobis`,
:class:`~softmaxkit.ood.KNNScore`, :class:`~softmaxkit.ood.SSDScore`,
:class:`~softmaxkit.ood.PrototypeScore`) follows it:

- ``fit(features, labels=None) -> self`` stores what scoring needs (a public ``fit`` with
  its own signature, e.g. ``Mahalanobis.fit(features, target, *, num_classes)``, calls
  ``FeatureDetector._fit``); :class:`~softmaxkit.ood.PrototypeScore` gets its prototypes
  at construction instead (a :class:`FeatureScore` without ``fit``);
- ``score(features) -> (N,)``, **higher = more in-distribution**, in ``features``' dtype,
  computed in ``_compute_dtype`` (float64 for float64, else float32, unless the detector
  says otherwise), in blocks of rows where the detector sets a block size;
- before fit, ``score`` raises a ``RuntimeError`` naming the detector and its fit call;
- one feature check (:func:`check_features`): a floating 2-D (samples, features) tensor,
  as wide as the fit, finite. Mahalanobis also takes (samples, channels, *spatial) maps
  (averaged over space) and, as before, rejects only NaN in the features it scores.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Any, NamedTuple, TypeVar

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype


def check_features(
    name: str,
    features: object,
    width: int | None = None,
    *,
    pool: bool = False,
    finite: bool = True,
) -> torch.Tensor:
    """``features`` as a floating (samples, features) tensor, checked.

    ``pool``: a (samples, channels, *spatial) map is averaged over space (Mahalanobis'
    pooling of every layer). ``width``: the number of features the detector was fitted
    on. ``finite``: every value finite; else only NaN is rejected (+-inf allowed).
    """
    features = V.check_floating(name, features)
    if pool:
        if features.ndim < 2:
            raise ValueError(
                f"{name} must be (samples, features) or (samples, channels, *spatial), got "
                f"shape {tuple(features.shape)}"
            )
        if features.ndim > 2:
            flat = features.flatten(2)
            pooled = flat.mean(2)
            if not bool(torch.isfinite(pooled).all()):
                # a spatial sum beyond the dtype's range (or a non-finite entry): average
                # the terms divided first, which cannot overflow where the mean is finite
                pooled = (flat / flat.shape[2]).sum(2)
            features = pooled
    elif features.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (samples, features) tensor, got shape {tuple(features.shape)}"
        )
    if width is not None and features.shape[1] != width:
        raise ValueError(
            f"{name} must have {width} features (as fitted), got shape {tuple(features.shape)}"
        )
    if finite:
        V.check_tensor_values(
            name, features, low=float("-inf"), high=float("inf"), low_open=True, high_open=True
        )
    else:
        V.check_no_nan(name, features)
    return features


def class_counts(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, int | None]:
    """Samples per class of the int64 ``labels`` (C,), and the first class with none
    (``None`` when every class has one)."""
    counts = torch.bincount(labels, minlength=num_classes)
    empty = counts == 0
    missing = int(torch.nonzero(empty)[0, 0]) if bool(empty.any()) else None
    return counts, missing


def scale_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their (detached) largest absolute entry, a zero row left zero: the
    same direction, with every entry in [-1, 1], so that squares and norms of the result
    neither overflow nor underflow (``torch.linalg.vector_norm`` does not scale: a float32
    row of 3e38 has norm inf, one of 1e-30 norm 0)."""
    peak = x.detach().abs().amax(1, keepdim=True)
    return x / peak.clamp(min=torch.finfo(x.dtype).tiny)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (a zero row stays zero), computed on the rows scaled
    to a largest entry of 1 (:func:`scale_rows`): exact at any finite magnitude."""
    x = scale_rows(x)
    norm: torch.Tensor = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norm.clamp(min=torch.finfo(x.dtype).tiny)


# ------------------------------------------------------------ Gaussian covariance fits
#: the covariance estimators of the Gaussian detectors (Mahalanobis, SSD+)
COVARIANCE_ESTIMATORS = ("empirical", "ledoit_wolf")


def power_of_two_above(value: float) -> float:
    """The smallest power of two >= ``value`` > 0 (1.0 for 0; at most 2^1023, the largest
    float64 power of two): dividing by it is exact."""
    if value <= 0.0:
        return 1.0
    mantissa, exponent = math.frexp(value)
    return math.ldexp(1.0, min(exponent - 1 if mantissa == 0.5 else exponent, 1023))


def ledoit_wolf_shrink(cov: torch.Tensor, centred: torch.Tensor) -> tuple[torch.Tensor, float]:
    r"""Ledoit & Wolf's (2004) shrinkage of the MLE covariance ``S = X^T X / n`` of the
    centred samples ``X`` (n, p) towards the scaled identity ``mu I``, ``mu = tr(S) / p``:

        Sigma = (1 - rho) S + rho mu I,   rho = min(b2, d2) / d2,
        d2 = ||S - mu I||_F^2 / p,   b2 = (1/n sum_k ||x_k||^4 - ||S||_F^2) / (n p)

    (the closed form of "A well-conditioned estimator for large-dimensional covariance
    matrices", J. Multivariate Anal. 2004, as scikit-learn's ``ledoit_wolf_shrinkage``
    computes it; ``rho = 0`` when ``S = mu I``). ``sum_k ||x_k||^4`` takes one pass over
    ``X``; everything else comes from ``S``. Returns ``(Sigma, rho)``."""
    n, p = centred.shape
    trace = torch.diagonal(cov).sum()
    mu = trace / p
    frob = cov.square().sum()
    d2 = (frob - 2 * mu * trace + p * mu * mu) / p
    b2 = (centred.square().sum(1).square().sum() / n - frob) / (n * p)
    d2_, b2_ = float(d2), float(b2)
    rho = 0.0 if d2_ <= 0.0 else min(max(b2_, 0.0), d2_) / d2_
    eye = torch.eye(p, dtype=cov.dtype, device=cov.device)
    return (1.0 - rho) * cov + (rho * mu) * eye, rho


class GaussianFit(NamedTuple):
    """A fitted covariance, kept in the scaled units ``x / scale`` (``scale`` a power of
    two, so the scaling is exact): ``covariance`` and ``precision`` are the true (unscaled)
    float64 matrices (they overflow to inf / underflow to 0 only where the true values
    are not float64 numbers, beyond about 1e154); ``scaled_precision`` =
    ``pinv(Sigma / scale^2) = W W^T`` and its ``factor`` W (d, r) are what scoring uses,
    on ``x / scale``, so that scores are exact at any finite magnitude; ``rank`` r;
    ``shrinkage`` the Ledoit-Wolf intensity (0.0 for the empirical estimate)."""

    covariance: torch.Tensor
    precision: torch.Tensor
    scaled_precision: torch.Tensor
    factor: torch.Tensor
    scale: float
    rank: int
    shrinkage: float


def fit_covariance(
    centred: torch.Tensor,
    *,
    estimator: str,
    ridge: float,
    who: str,
    full_rank_needs: str,
    remedy: str,
    stacklevel: int,
) -> GaussianFit:
    """The covariance of the float64 ``centred`` samples (n, d) and its pseudo-inverse.

    ``Sigma = X^T X / n`` (the MLE), shrunk by :func:`ledoit_wolf_shrink` for
    ``estimator="ledoit_wolf"``, plus ``ridge * I``; computed on ``X / scale`` with
    ``scale`` the power of two above ``max(|X|, sqrt(ridge))``, so that no square
    overflows. The pseudo-inverse drops the eigenvalues at or below
    ``d * eps_float64 * lambda_max`` (``torch.linalg.pinv``'s default cut-off).

    Degenerate fits say so: a zero covariance (every score would be the same constant)
    raises ``ValueError``; a singular one (rank r < d: the score ignores d - r directions)
    warns (``UserWarning``), naming what a full-rank estimate needs (``full_rank_needs``)
    and the detector's ``remedy``.
    """
    n, d = centred.shape
    peak = float(centred.abs().amax()) if centred.numel() else 0.0
    if not math.isfinite(peak):
        raise ValueError(
            f"{who}: the features' deviations from their means are not finite float64 "
            "numbers (features beyond about 9e307 in magnitude); scale the features down"
        )
    scale = power_of_two_above(max(peak, math.sqrt(ridge)))
    xs = centred / scale
    cov = xs.T @ xs / n
    shrinkage = 0.0
    if estimator == "ledoit_wolf":
        cov, shrinkage = ledoit_wolf_shrink(cov, xs)
    if ridge > 0:
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        cov = cov + (ridge / scale / scale) * eye
    cov = (cov + cov.T) / 2
    try:
        evals, evecs = torch.linalg.eigh(cov)
    except RuntimeError as exc:  # torch.linalg.LinAlgError: no convergence
        raise ValueError(
            f"{who}: the covariance of the features could not be decomposed "
            f"({str(exc).splitlines()[0]})"
        ) from None
    top = float(evals[-1]) if d else 0.0
    cutoff = d * torch.finfo(torch.float64).eps * top
    keep = evals > cutoff if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    rank = int(keep.sum())
    if rank == 0:
        raise ValueError(
            f"{who}: the covariance of the features is zero (no sample differs from its mean: "
            f"{n} sample(s)), so every score would be the same constant; a non-zero "
            f"covariance needs more samples (a full-rank one needs {full_rank_needs})"
            + ("" if "eps" not in remedy else ", or a ridge eps > 0")
        )
    if rank < d:
        warnings.warn(
            f"{who}: the covariance of the features is singular (rank {rank} of {d}, from "
            f"{n} samples); the pseudo-inverse ignores {d - rank} direction(s), in which no "
            f"deviation is scored. A full-rank estimate needs {full_rank_needs} and no "
            f"constant or collinear features; {remedy} gives one",
            UserWarning,
            stacklevel=stacklevel,
        )
    vals, vecs = evals[keep], evecs[:, keep]
    precision = (vecs / vals) @ vecs.T
    precision = (precision + precision.T) / 2
    factor = vecs / vals.sqrt()
    return GaussianFit(
        covariance=cov * scale * scale,
        precision=precision / scale / scale,
        scaled_precision=precision,
        factor=factor,
        scale=scale,
        rank=rank,
        shrinkage=shrinkage,
    )


class FeatureScore(ABC):
    """The scoring half of the protocol: fitted check, feature check, chunked scoring.

    A subclass sets ``_fit_call`` (how it is fitted, named in the error before fit) and
    implements ``_width()`` (the number of features seen at fit, ``None`` before) and
    ``_score_rows(x)`` (the scores of one block of checked rows, already in
    ``_compute_dtype(x)``). ``_pool`` / ``_finite_queries`` are the options of
    :func:`check_features` for the features it scores.
    """

    _fit_call = "fit(features)"
    _pool = False
    _finite_queries = True

    @abstractmethod
    def _width(self) -> int | None:
        """The number of features scoring expects (None before fit)."""

    @abstractmethod
    def _score_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The (b,) scores of one block of checked query rows."""

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """float64 for float64 features, else float32 (the package's policy)."""
        return compute_dtype(x)

    def _rows_per_block(self, x: torch.Tensor) -> int:
        """Rows per scoring block; by default all of ``x`` in one block. A detector whose
        temporaries grow with more than the features (Mahalanobis: classes; kNN: the
        bank) sets its own. (Measured on CPU, 2 cores: cutting SSD+ or the prototype score
        into blocks of ~1M entries made it about 1.5-2x slower, so they score in one block,
        as before.)"""
        return max(1, x.shape[0])

    def _fitted_width(self) -> int:
        """The fitted width; a clear ``RuntimeError`` before fit."""
        width = self._width()
        if width is None:
            raise RuntimeError(f"{type(self).__name__} used before {self._fit_call}")
        return width

    def _check_queries(self, name: str, features: object) -> torch.Tensor:
        """``features`` to be scored, checked against the fit (see :func:`check_features`)."""
        width = self._fitted_width()
        return check_features(name, features, width, pool=self._pool, finite=self._finite_queries)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of ``features`` (N, d), shape (N,), higher = more in-distribution, in
        ``features``' dtype; in blocks of ``_rows_per_block`` rows."""
        x = self._check_queries("features", features)
        xc = x.to(self._compute_dtype(x))
        n, step = xc.shape[0], self._rows_per_block(xc)
        if n <= step:
            return self._score_rows(xc).to(x.dtype)
        parts = [self._score_rows(xc[start : start + step]) for start in range(0, n, step)]
        return torch.cat(parts).to(x.dtype)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(features)


_Detector = TypeVar("_Detector", bound="FeatureDetector")


class FeatureDetector(FeatureScore):
    """:class:`FeatureScore` with the fitting half, ``fit(features, labels=None) -> self``.

    A subclass implements ``_fit_checked(x, labels, **options)``, given the checked
    training features; a public ``fit`` with its own signature calls :meth:`_fit`.
    """

    def fit(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> FeatureDetector:
        """Fit on training ``features`` (N, d) (and ``labels`` (N,) where the detector
        uses them); returns ``self``."""
        return self._fit(features, labels)

    def _fit(
        self: _Detector, features: object, labels: torch.Tensor | None, **options: object
    ) -> _Detector:
        self._fit_checked(check_features("features", features, pool=self._pool), labels, **options)
        return self

    # ``*args: Any, **options: Any``: each detector has its own labels and options
    @abstractmethod
    def _fit_checked(self, x: torch.Tensor, *args: Any, **options: Any) -> None:
        """Store what scoring needs from checked features (and labels)."""
