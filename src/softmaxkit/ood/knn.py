"""Deep nearest-neighbour OOD score (Sun, Ming, Zhu & Li 2022).

"Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022,
arXiv:2204.06507. Official code: deeplearning-wisc/knn-ood.

Sign convention: higher = more in-distribution (pytorch-ood's ``KNN`` returns the
distance itself, higher = more OOD).
"""

from __future__ import annotations

import torch

from softmaxkit import _validation as V

__all__ = ["KNNScore"]

_HALF = (torch.float16, torch.bfloat16)

#: entries of one (query chunk x bank chunk) similarity block when ``chunk_size`` is None
_BLOCK_ELEMENTS = 1 << 22


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (a zero row stays zero)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norm.clamp(min=torch.finfo(x.dtype).tiny)


def _check_features(name: str, features: object, dim: int | None = None) -> torch.Tensor:
    V.check_floating(name, features)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (samples, features) tensor, got shape {tuple(features.shape)}"
        )
    if dim is not None and features.shape[1] != dim:
        raise ValueError(
            f"{name} must have {dim} features (as fitted), got shape {tuple(features.shape)}"
        )
    V.check_tensor_values(
        name, features, low=float("-inf"), high=float("inf"), low_open=True, high_open=True
    )
    return features


class KNNScore:
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

    def fit(self, features: torch.Tensor) -> KNNScore:
        """Store the L2-normalised training features ``features`` (M, d), M >= k.

        float16/bfloat16 are stored in float32; float32/float64 as given.
        """
        _check_features("features", features)
        if features.shape[0] < self.k:
            raise ValueError(
                f"features must hold at least k={self.k} samples, got {features.shape[0]}"
            )
        x = features.detach()
        x = x.float() if x.dtype in _HALF else x
        self.bank = _normalize(x)
        return self

    def _chunks(self) -> tuple[int, int]:
        """(query rows, bank rows) per similarity block."""
        if self.chunk_size is not None:
            return self.chunk_size, max(self.chunk_size, self.k)
        rows = 1024
        return rows, max(self.k, _BLOCK_ELEMENTS // rows)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of ``features`` (N, d): ``-||z* - z*_(k)||``, shape (N,), ``features``' dtype."""
        if self.bank is None:
            raise RuntimeError("KNNScore.score called before fit(features)")
        bank = self.bank
        _check_features("features", features, bank.shape[1])
        q_all = _normalize(features.detach().to(bank.dtype))
        n, m = q_all.shape[0], bank.shape[0]
        out = torch.empty(n, dtype=bank.dtype, device=bank.device)
        q_step, b_step = self._chunks()
        for qs in range(0, n, q_step):
            q = q_all[qs : qs + q_step]
            best_sim = q.new_full((q.shape[0], 0), float("-inf"))
            best_idx = torch.empty((q.shape[0], 0), dtype=torch.int64, device=q.device)
            for bs in range(0, m, b_step):
                sim = q @ bank[bs : bs + b_step].T
                idx = torch.arange(bs, bs + sim.shape[1], device=q.device).expand_as(sim)
                sim = torch.cat([best_sim, sim], 1)
                idx = torch.cat([best_idx, idx], 1)
                keep = min(self.k, sim.shape[1])
                best_sim, where = sim.topk(keep, dim=1)
                best_idx = idx.gather(1, where)
            # k-th largest similarity = k-th smallest distance; recompute it directly
            kth = best_idx[:, -1]  # topk is sorted: the last kept one is the k-th
            out[qs : qs + q_step] = -torch.linalg.vector_norm(q - bank[kth], dim=1)
        return out.to(features.dtype)

    __call__ = score
