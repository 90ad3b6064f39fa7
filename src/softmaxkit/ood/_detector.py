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

from abc import ABC, abstractmethod

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
    V.check_floating(name, features)
    if pool:
        if features.ndim < 2:
            raise ValueError(
                f"{name} must be (samples, features) or (samples, channels, *spatial), got "
                f"shape {tuple(features.shape)}"
            )
        if features.ndim > 2:
            features = features.flatten(2).mean(2)
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


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (a zero row stays zero)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norm.clamp(min=torch.finfo(x.dtype).tiny)


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
        self, features: object, labels: torch.Tensor | None, **options: object
    ) -> FeatureDetector:
        self._fit_checked(check_features("features", features, pool=self._pool), labels, **options)
        return self

    @abstractmethod
    def _fit_checked(self, x: torch.Tensor, labels: torch.Tensor | None, **options: object) -> None:
        """Store what scoring needs from checked features (and labels)."""
