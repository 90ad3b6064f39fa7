"""Deep nearest-neighbour OOD score (Sun, Ming, Zhu & Li 2022).

"Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022,
arXiv:2204.06507. Official code: deeplearning-wisc/knn-ood.

Sign convention: higher = more in-distribution (pytorch-ood's ``KNN`` returns the
distance itself, higher = more OOD).
"""

from __future__ import annotations

import torch

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import upcast
from softmaxkit.ood._detector import FeatureDetector, normalize_rows

__all__ = ["KNNScore"]

#: entries of one (query chunk x bank chunk) similarity block when ``chunk_size`` is None
_BLOCK_ELEMENTS = 1 << 22


class KNNScore(FeatureDetector):
    r"""Negative distance to the k-th nearest training feature, on L2-normalised features.

    With ``z* = z / ||z||`` and the normalised training bank ``{z*_i}``,

        score(z) = -|| z* - z*_{(k)} ||_2,

    where ``z*_{(k)}`` is the k-th nearest bank element (Sun et al. 2022, the negative k-th
    nearest-neighbour distance; higher = more in-distribution). The search is
    exact: cosine similarities are computed chunk by chunk over queries and over the bank,
    a running top-k is kept, and the distance to the selected k-th neighbour is then
    recomputed directly (no ``2 - 2 cos`` cancellation). Ties in distance do not change
    the k-th distance. Memory is one similarity block plus ``O(queries)``.

    The official code (faiss ``IndexFlatL2``) scores with the negative *squared* distance;
    the ranking, hence every OOD metric, is the same.

    Args:
        k: which neighbour (default 50: the paper's choice for CIFAR-10 and the official
            ``run_cifar.py``; the paper uses k = 1000 for ImageNet with the full training set).
        chunk_size: rows per query chunk and per bank chunk (at least k bank rows); default
            None: 1024 queries x 4096 bank rows, a 4M-entry similarity block.

    Attributes:
        bank: the normalised training features, (M, d), after :meth:`fit`.

    Example:
        >>> import torch
        >>> train = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
        >>> knn = KNNScore(k=5).fit(train)
        >>> knn.score(train[:3]).shape
        torch.Size([3])
    """

    def __init__(self, k: int = 50, *, chunk_size: int | None = None) -> None:
        self.k = V.check_int("k", k, low=1)
        if chunk_size is not None:
            V.check_int("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size
        self.bank: torch.Tensor | None = None

    def fit(self, features: torch.Tensor) -> KNNScore:  # type: ignore[override]  # no labels
        """Store the L2-normalised training features ``features`` (M, d), M >= k.

        float16/bfloat16 are stored in float32; float32/float64 as given.
        """
        return self._fit(features, None)

    def _fit_checked(self, x: torch.Tensor, labels: None) -> None:
        if x.shape[0] < self.k:
            raise ValueError(f"features must hold at least k={self.k} samples, got {x.shape[0]}")
        self.bank = normalize_rows(upcast(x.detach()))

    def _width(self) -> int | None:
        return None if self.bank is None else self.bank.shape[1]

    def _chunks(self) -> tuple[int, int]:
        """(query rows, bank rows) per similarity block."""
        if self.chunk_size is not None:
            return self.chunk_size, max(self.chunk_size, self.k)
        rows = 1024
        return rows, max(self.k, _BLOCK_ELEMENTS // rows)

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        assert self.bank is not None  # score checked the fit first
        return self.bank.dtype  # queries are compared in the bank's dtype

    def _rows_per_block(self, x: torch.Tensor) -> int:
        return self._chunks()[0]

    def _score_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``-||z* - z*_(k)||`` of one query chunk, with a running top-k over bank chunks."""
        bank = self.bank
        assert bank is not None  # score checked the fit first
        q = normalize_rows(x.detach())
        b_step = self._chunks()[1]
        best_sim = q.new_full((q.shape[0], 0), float("-inf"))
        best_idx = torch.empty((q.shape[0], 0), dtype=torch.int64, device=q.device)
        for bs in range(0, bank.shape[0], b_step):
            sim = q @ bank[bs : bs + b_step].T
            idx = torch.arange(bs, bs + sim.shape[1], device=q.device).expand_as(sim)
            sim = torch.cat([best_sim, sim], 1)
            idx = torch.cat([best_idx, idx], 1)
            keep = min(self.k, sim.shape[1])
            best_sim, where = sim.topk(keep, dim=1)
            best_idx = idx.gather(1, where)
        # k-th largest similarity = k-th smallest distance; recompute it directly
        kth = best_idx[:, -1]  # topk is sorted: the last kept one is the k-th
        dist: torch.Tensor = torch.linalg.vector_norm(q - bank[kth], dim=1)
        return -dist

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of ``features`` (N, d): ``-||z* - z*_(k)||``, shape (N,), ``features``' dtype."""
        return super().score(features)
