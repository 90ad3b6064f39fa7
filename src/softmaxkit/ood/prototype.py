"""Scores of PALM (Lu, Gong, Wang, Xue, Yao & Moore 2024).

"Learning with Mixture of Prototypes for Out-of-Distribution Detection", ICLR 2024,
arXiv:2402.02653. Official code: jeff024/PALM.

What PALM scores with at test time (settled from the official code): ``eval_cifar.py``
calls ``util/evaluations/mahalanobis.py::eval_maha``, the "SSD+" score of Sehwag, Chiang
& Mittal, "SSD: A Unified Framework for Self-Supervised Outlier Detection", ICLR 2021,
arXiv:2103.12051: a single class-agnostic Gaussian on L2-normalised, standardised
penultimate features. The prototypes shape the embedding during training but are not
used by that score. This module offers both:

- :class:`SSDScore`: the published test-time score (with the official code's double
  mean subtraction behind ``official_centering=True``);
- :class:`PrototypeScore`: a score built from PALM's learned prototypes, the log of the
  class-conditional von Mises-Fisher mixture PALM models each class with (uniform
  mixture weights at test time, as a test sample has no assignment weights). This is
  our construction from the paper's model, not a score the paper evaluates.

PALM's training is :class:`softmaxkit.ood.PALMLoss` (``ood/palm.py``); its ``prototypes``
buffer can feed :class:`PrototypeScore`.

Sign convention: higher = more in-distribution.
"""

from __future__ import annotations

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype, upcast
from softmaxkit.ood._detector import (
    COVARIANCE_ESTIMATORS,
    FeatureDetector,
    FeatureScore,
    check_features,
    class_counts,
    fit_covariance,
    normalize_rows,
)

__all__ = ["PrototypeScore", "SSDScore"]


class PrototypeScore(FeatureScore):
    r"""Mixture-of-prototypes score from PALM's prototypes.

    PALM models class c on the unit sphere by prototypes ``p_1^c .. p_K^c`` and
    ``p(z | c) ~ sum_k w_k^c exp(p_k^c . z / tau)`` (its MLE objective). With uniform weights,

        score(x) = max_c log( 1/K_c sum_{k: class(k) = c} exp(p_k . z / tau) ),
        z = f(x) / ||f(x)||,

    computed stably (one max-shift per row, a scatter-add over classes). Higher = more
    in-distribution. The official prototype buffer has ``num_classes * cache_size``
    rows (cache_size 6 in ``runner.sh``) with prototype p in class ``p mod num_classes``;
    that is the default layout here.

    Args:
        prototypes: (P, d) prototypes (L2-normalised here).
        num_classes: C; prototype p belongs to class ``p % C`` (ignored when
            ``prototype_labels`` is given).
        prototype_labels: (P,) class of each prototype, in [0, C).
        temperature: tau (default 0.1, the official ``runner.sh`` value).

    Example:
        >>> import torch
        >>> protos = torch.eye(4)  # class p % 2: classes {e0, e2} and {e1, e3}
        >>> s = PrototypeScore(protos, num_classes=2)
        >>> s.score(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
        tensor([9.3069, 5.0000])
    """

    def __init__(
        self,
        prototypes: torch.Tensor,
        *,
        num_classes: int | None = None,
        prototype_labels: torch.Tensor | None = None,
        temperature: float = 0.1,
    ) -> None:
        check_features("prototypes", prototypes)
        V.check_nonempty("prototypes", prototypes, "prototype")
        p = upcast(prototypes.detach())
        self.prototypes = normalize_rows(p)
        self.temperature = V.check_number("temperature", temperature, low=0.0, low_open=True)
        n_protos = p.shape[0]
        if prototype_labels is None:
            if num_classes is None:
                raise ValueError("num_classes must be given when prototype_labels is None")
            V.check_int("num_classes", num_classes, low=1, high=n_protos)
            labels = torch.arange(n_protos, device=p.device) % num_classes
        else:
            labels = prototype_labels
            if num_classes is None:
                labels = V.check_class_indices("prototype_labels", labels, (n_protos,), 2**62)
                num_classes = int(labels.max()) + 1
            V.check_int("num_classes", num_classes, low=1)
            labels = V.check_class_indices("prototype_labels", labels, (n_protos,), num_classes)
            labels = labels.to(p.device)
        counts, missing = class_counts(labels, num_classes)
        if missing is not None:
            raise ValueError(
                f"prototype_labels must give every class a prototype, got none for class {missing}"
            )
        self.num_classes = num_classes
        self.prototype_labels = labels
        self._log_counts = counts.to(p.dtype).log()

    def _width(self) -> int:
        return self.prototypes.shape[1]

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        return compute_dtype(x, self.prototypes)

    def _class_scores(self, z: torch.Tensor) -> torch.Tensor:
        """(rows, C) log mixture likelihoods of rows ``z`` already in the compute dtype."""
        dtype = z.dtype
        z = normalize_rows(z)
        logits = z @ self.prototypes.to(dtype).T / self.temperature
        shift = logits.detach().amax(1, keepdim=True)
        mass = torch.zeros(z.shape[0], self.num_classes, dtype=dtype, device=z.device)
        mass = mass.index_add(1, self.prototype_labels, torch.exp(logits - shift))
        return mass.log() + shift - self._log_counts.to(dtype)

    def _score_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self._class_scores(x).amax(1)

    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Per-class log mixture likelihoods ``log(1/K_c sum_k exp(p_k . z / tau))``, (N, C)."""
        x = self._check_queries("features", features)
        return self._class_scores(x.to(self._compute_dtype(x))).to(x.dtype)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``max_c`` of :meth:`class_scores`, shape (N,), ``features``' dtype."""
        return super().score(features)


class SSDScore(FeatureDetector):
    r"""PALM's test-time score: SSD+ class-agnostic Mahalanobis on normalised features.

    As ``eval_maha`` in the official code: with ``u = f / (||f|| + 1e-10)`` and the
    training mean ``m`` and (biased) std ``s`` of ``u``, ``z = (u - m) / (s + 1e-10)``;
    the training covariance ``Sigma`` of ``z`` is the biased (divide by N) one and

        score(f) = -z^T pinv(Sigma) z        (no 1/2 factor).

    ``official_centering=True`` reproduces a quirk of the official code, which scores
    ``z - m`` (the *un-standardised* mean subtracted a second time) and so reproduces the
    published numbers; the default centres once. Fitted and scored in float64 for every
    input dtype, as the official NumPy code (the pseudo-inverse drops eigenvalues at or
    below ``d * eps_float64 * lambda_max``, ``torch.linalg.pinv(hermitian=True)``'s
    cut-off; the official ``np.linalg.pinv`` cuts off at a smaller relative singular
    value, which only matters for near-singular covariances); the result is returned in
    the features' dtype. ``covariance="ledoit_wolf"`` shrinks ``Sigma`` towards
    ``tr(Sigma)/d * I`` (Ledoit & Wolf 2004; not in the official code). Use penultimate
    (encoder) features, not the projection head's.

    Degenerate fits say so: a zero covariance (one sample, or identical rows: every score
    would be 0) raises ``ValueError``; a singular one (fewer than d + 1 samples, constant
    or collinear features) warns (``UserWarning``). The row norm is taken of the rows
    divided by their largest entry, so any finite magnitude is scored exactly.

    Args:
        official_centering: subtract the raw training mean again before scoring
            (default False).
        covariance: ``"empirical"`` (default, the official code's) or ``"ledoit_wolf"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> train = torch.randn(500, 6, generator=g) + 3
        >>> ssd = SSDScore().fit(train)
        >>> bool(ssd.score(train[:50]).mean() > ssd.score(-train[:50]).mean())
        True
    """

    #: frames between the user's ``fit`` call and the covariance fit's warning
    _warn_stacklevel = 5

    def __init__(self, *, official_centering: bool = False, covariance: str = "empirical") -> None:
        self.official_centering = V.check_bool("official_centering", official_centering)
        self.covariance_estimator = V.check_choice("covariance", covariance, COVARIANCE_ESTIMATORS)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.shrinkage: float | None = None

    @staticmethod
    def _unit(x: torch.Tensor) -> torch.Tensor:
        """``x / (||x|| + 1e-10)`` per row, computed on the rows divided by their
        (detached) largest absolute entry ``p``, as ``(x/p) / (||x/p|| + 1e-10/p)``: the
        same function, with no overflow of the norm at any finite magnitude."""
        peak = x.detach().abs().amax(1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
        xs = x / peak
        norm: torch.Tensor = torch.linalg.vector_norm(xs, dim=1, keepdim=True)
        return xs / (norm + 1e-10 / peak)

    def fit(self, features: torch.Tensor) -> SSDScore:  # type: ignore[override]  # no labels
        """Fit the mean, std and precision on training features (N, d). A zero covariance
        (one sample, or identical rows) raises ``ValueError``; a singular one (fewer than
        d + 1 samples, constant or collinear features) warns (``UserWarning``): the
        pseudo-inverse then ignores the missing directions."""
        return self._fit(features, None)

    def _fit_checked(self, x: torch.Tensor, labels: None) -> None:
        V.check_nonempty("features", x, "sample")
        u = self._unit(x.detach().to(torch.float64))
        mean = u.mean(0)
        std = u.std(0, correction=0)
        z = (u - mean) / (std + 1e-10)
        d = z.shape[1]
        fit = fit_covariance(
            z - z.mean(0),
            estimator=self.covariance_estimator,
            ridge=0.0,
            who="SSDScore.fit",
            full_rank_needs=f"at least d + 1 = {d + 1} samples",
            remedy="covariance='ledoit_wolf'",
            stacklevel=self._warn_stacklevel,
        )
        self.mean, self.std, self.precision = mean, std, fit.precision
        self.shrinkage = fit.shrinkage
        # scoring works in the fit's units z / scale (a power of two: exact), where the
        # precision is a float64 number even when the true one over- or underflows
        self._scaled = (mean / fit.scale, (std + 1e-10) * fit.scale, fit.scaled_precision)

    def _width(self) -> int | None:
        return None if self.precision is None else self.precision.shape[0]

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """float64 for every input dtype, as the fit (and the official NumPy code): the
        standardised unit vectors of a concentrated cluster (features sharing a large
        offset) vary little along the mean direction, so ``Sigma``'s condition number
        exceeds float32's precision (about 1e8 at an offset of 1e4 times the spread) and
        a float32 score would be off by more than its own size."""
        return torch.float64

    def _score_rows(self, x: torch.Tensor) -> torch.Tensor:
        assert self.mean is not None  # score checked the fit first
        mean, mean_s, denom, precision = (
            t.to(device=x.device, dtype=x.dtype) for t in (self.mean, *self._scaled)
        )
        z = (self._unit(x) - mean) / denom  # z / scale
        if self.official_centering:
            z = z - mean_s
        return -((z @ precision) * z).sum(1)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``-z^T pinv(Sigma) z``, shape (N,), computed in float64 (see
        :meth:`_compute_dtype`) and returned in ``features``' dtype."""
        return super().score(features)
