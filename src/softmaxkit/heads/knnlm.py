r"""kNN-LM: a datastore of (context vector, next token) pairs interpolated with an LM.

Papers:

* U. Khandelwal, O. Levy, D. Jurafsky, L. Zettlemoyer, M. Lewis, "Generalization through
  Memorization: Nearest Neighbor Language Models", ICLR 2020, arXiv:1911.00172 (the kNN-LM:
  squared L2 distance, the interpolation weight :math:`\lambda = 0.25` on WikiText-103).
* F. F. Xu, U. Alon, G. Neubig, "Why do Nearest Neighbor Language Models Work?", ICML 2023,
  arXiv:2301.02828 (the kNN softmax temperature; official code frankxu2004/knnlm-why).

For a query :math:`q` (the LM's context vector) with :math:`k` nearest datastore keys
:math:`\kappa_1..\kappa_k` at distances :math:`d_i` holding next tokens :math:`v_i`,

.. math::
    p_{kNN}(y \mid q) = \sum_{i:\, v_i = y} \mathrm{softmax}_i(-d / T),
    \qquad
    p(y \mid q) = \lambda\, p_{kNN}(y \mid q) + (1 - \lambda)\, p_{LM}(y \mid q),

with :math:`d_i = \lVert q - \kappa_i \rVert^2` (``metric="l2"``, the papers') or
:math:`d_i = -q \cdot \kappa_i` (``metric="ip"``, the official code's ``dot`` option). Everything
is computed in log space: :math:`\log p_{kNN}(y)` is a per-token log-sum-exp of the neighbours'
log-probabilities, and the interpolation is
``logaddexp(log(lambda) + log p_kNN, log1p(-lambda) + log p_LM)``. A token no neighbour carries
has :math:`\log p_{kNN} = -\infty` exactly (the official code uses -10000 "for stability"; here
the log-sum-exps are guarded instead, so no NaN appears, in values or gradients).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.blocks import compute_dtype

__all__ = ["KNNLM"]

#: defaults: k from the official code (``--k 1024``); T = 1 from the official ``knnlm.py`` (the
#: paper's temperature sweeps live in its analysis scripts); lambda = 0.25 from Khandelwal et
#: al. 2020 on WikiText-103 (the official code's ``--lmbda`` defaults to 0.0, i.e. no kNN).
DEFAULT_K = 1024
DEFAULT_TEMPERATURE = 1.0
DEFAULT_LAMBDA = 0.25
METRICS = ("l2", "ip")
INDEXES = ("torch", "faiss")
#: elements of one block of gathered neighbour keys when distances are recomputed
_RECOMPUTE_ELEMENTS = 1 << 22
#: elements of one block of search distances (and of a chunk of keys cast to float32)
_BLOCK_ELEMENTS = 1 << 24
_FORMAT = "softmaxkit.heads.KNNLM"
_VERSION = 1


def _check_keys(name: str, keys: object, dim: int | None) -> torch.Tensor:
    keys = v.check_floating(name, keys)
    if keys.ndim != 2:
        raise ValueError(f"{name} must have shape (M, d) (2 dimensions), got {tuple(keys.shape)}")
    if dim is not None and keys.shape[1] != dim:
        raise ValueError(
            f"{name} must have {dim} columns (the datastore's key size), got {tuple(keys.shape)}"
        )
    return keys


def _check_values(name: str, values: object, size: int, vocab_size: int) -> torch.Tensor:
    values = v.check_tensor(name, values)
    if values.dtype != torch.long:
        raise TypeError(f"{name} must be a torch.long tensor of token ids, got {values.dtype}")
    if values.shape != (size,):
        raise ValueError(
            f"{name} must have shape ({size},) (one token id per key), got {tuple(values.shape)}"
        )
    if values.numel() > 0:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must hold token ids in [0, {vocab_size - 1}], got {bad}")
    return values


def _row_blocks(keys: torch.Tensor) -> list[slice]:
    step = max(1, _RECOMPUTE_ELEMENTS // max(keys.shape[1], 1))
    return [slice(s, min(s + step, keys.shape[0])) for s in range(0, keys.shape[0], step)]


def _mean(keys: torch.Tensor) -> torch.Tensor | None:
    """The float64 mean of the rows of ``keys`` (None when empty), a block at a time."""
    if keys.shape[0] == 0:
        return None
    total = torch.zeros(keys.shape[1], dtype=torch.float64, device=keys.device)
    for rows in _row_blocks(keys):
        total += keys[rows].detach().to(torch.float64).sum(0)
    return total / keys.shape[0]


class KNNLM(nn.Module):
    r"""A kNN-LM head: exact k-nearest-neighbour search over a datastore, interpolated with an LM.

    .. math::
        \log p(y \mid q) = \operatorname{logaddexp}\big(\log\lambda + \log p_{kNN}(y \mid q),\
            \log(1-\lambda) + \log p_{LM}(y \mid q)\big),
        \quad
        p_{kNN}(y \mid q) = \sum_{i \in \mathrm{kNN}(q),\, v_i = y}
            \frac{e^{-d_i / T}}{\sum_{j \in \mathrm{kNN}(q)} e^{-d_j / T}}.

    Khandelwal et al., "Generalization through Memorization: Nearest Neighbor Language
    Models", 2020, arXiv:1911.00172; Xu, Alon & Neubig, "Why do Nearest Neighbor Language
    Models Work?", 2023, arXiv:2301.02828 (official code frankxu2004/knnlm-why).

    The search is exact and in plain torch: the datastore is scanned in chunks of
    ``chunk_size`` keys against blocks of ``query_chunk_size`` queries, keeping a running
    top-k per query, so at most a ``query_chunk_size x chunk_size`` block of distances exists
    at a time (never ``N x M``): besides the datastore itself, a search holds that block,
    float64 key norms (8 bytes per key), the running ``(N, k)`` top-k and a 2^22-entry block
    of gathered neighbours, so a 10^6 x 1024 float32 datastore (4 GB) needs about 0.1 GB more
    for a few hundred queries. For ``"l2"`` the ranking score is
    :math:`\lVert\kappa - c\rVert^2 - 2(q - c)\cdot\kappa` (the squared distance less a
    per-query constant; a matrix product) with :math:`c` the keys' mean, which curbs the
    cancellation of the plain :math:`\lVert q\rVert^2 - 2q\cdot\kappa + \lVert\kappa\rVert^2`;
    the squared L2 distance of the k selected neighbours is then recomputed as
    :math:`\sum_j (q_j - \kappa_j)^2` (as the official code does by default).
    With ``index="faiss"`` an exact ``faiss.IndexFlatL2`` / ``IndexFlatIP`` does the ranking
    instead (faiss is optional: it is imported only then); any trained faiss index over the
    same keys may be assigned to ``self.faiss_index``.

    Args:
        keys: ``(M, d)`` floating context vectors, kept without a copy (fp16/bf16 are stored
            as given and searched in float32; float64 keys or queries are searched in float64).
        values: ``(M,)`` ``torch.long`` next-token ids in ``[0, vocab_size)``.
        vocab_size: V, the size of the LM's vocabulary.
        k: neighbours per query (default 1024, the official code's ``--k``).
        temperature: T > 0 of :math:`\mathrm{softmax}(-d/T)` (default 1.0, the official
            ``knnlm.py``; the paper sweeps T in its analysis scripts, e.g. 0.1..3.0 on the full
            datastore).
        lambda_: interpolation weight of the kNN distribution, in [0, 1] (default 0.25,
            Khandelwal et al. 2020 on WikiText-103; the official code's ``--lmbda`` defaults to
            0.0, i.e. the LM alone). 0 and 1 return exactly the LM and the kNN distribution.
        metric: ``"l2"`` (squared L2, the papers') or ``"ip"`` (inner product; the distance is
            then :math:`-q\cdot\kappa`, so smaller is nearer in both cases).
        chunk_size: datastore keys per search chunk (default None: sized so that a block of
            distances holds about 2^24 entries, 64 MiB in float32, and, for keys cast to the
            compute dtype (fp16/bf16), a chunk's copy about 2^24 entries too; never below k).
        query_chunk_size: queries per search block (default 64).
        index: ``"torch"`` (default) or ``"faiss"``.

    Ties: neighbours come sorted by ascending distance, exact ties by ascending datastore
    index; which of several candidates tied at the k-th place is kept is unspecified (as for
    ``torch.topk``).

    Example:
        >>> keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
        >>> head = KNNLM(keys, torch.tensor([2, 0, 2]), vocab_size=3, k=2, lambda_=0.5)
        >>> head.knn(torch.tensor([[0.1, 0.0]]))
        (tensor([[0.0100, 0.8100]]), tensor([[0, 1]]))
        >>> head(torch.tensor([[0.1, 0.0]]), torch.zeros(1, 3)).exp().sum()
        tensor(1.)
    """

    keys: torch.Tensor
    values: torch.Tensor
    key_sq_norms: torch.Tensor
    centre: torch.Tensor | None

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        vocab_size: int,
        *,
        k: int = DEFAULT_K,
        temperature: float = DEFAULT_TEMPERATURE,
        lambda_: float = DEFAULT_LAMBDA,
        metric: str = "l2",
        chunk_size: int | None = None,
        query_chunk_size: int = 64,
        index: str = "torch",
    ) -> None:
        super().__init__()
        self.vocab_size = v.check_int("vocab_size", vocab_size, low=1)
        self.k = v.check_int("k", k, low=1)
        self.temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
        self.lambda_ = v.check_number("lambda_", lambda_, low=0.0, high=1.0)
        self.metric = v.check_choice("metric", metric, METRICS)
        self.chunk_size = (
            None if chunk_size is None else v.check_int("chunk_size", chunk_size, low=1)
        )
        self.query_chunk_size = v.check_int("query_chunk_size", query_chunk_size, low=1)
        self.index = v.check_choice("index", index, INDEXES)
        _check_keys("keys", keys, None)
        _check_values("values", values, keys.shape[0], self.vocab_size)
        # not copied: a datastore can be most of the memory
        self.register_buffer("keys", keys.detach(), persistent=False)
        self.register_buffer("values", values.detach(), persistent=False)
        # l2 ranks against keys shifted by a fixed centre (their mean when built): the
        # distance is unchanged, the cancellation of |q|^2 - 2 q.k + |k|^2 much reduced
        self.register_buffer("centre", _mean(keys), persistent=False)
        self.register_buffer("key_sq_norms", self._sq_norms(keys), persistent=False)
        self.faiss_index: Any = None
        if self.index == "faiss":
            self.faiss_index = self._build_faiss()

    # ------------------------------------------------------------------ datastore
    @property
    def size(self) -> int:
        """M, the number of (key, value) pairs in the datastore."""
        return self.keys.shape[0]

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, dim={self.keys.shape[1]}, vocab_size={self.vocab_size}, "
            f"k={self.k}, temperature={self.temperature:g}, lambda_={self.lambda_:g}, "
            f"metric={self.metric!r}, index={self.index!r}"
        )

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``(n, d)`` keys and their ``(n,)`` token ids to the datastore.

        New keys are cast to the datastore's dtype and device. The datastore is reallocated
        (``torch.cat``), so add in large batches.

        Example:
            >>> head = KNNLM(torch.zeros(1, 2), torch.tensor([0]), vocab_size=2, k=1)
            >>> head.add(torch.ones(2, 2), torch.tensor([1, 1])); head.size
            3
        """
        _check_keys("keys", keys, self.keys.shape[1])
        _check_values("values", values, keys.shape[0], self.vocab_size)
        keys = keys.detach().to(self.keys)
        self.keys = torch.cat([self.keys, keys])
        self.values = torch.cat([self.values, values.detach().to(self.values.device)])
        if self.centre is None:
            self.centre = _mean(keys)
        self.key_sq_norms = torch.cat([self.key_sq_norms, self._sq_norms(keys)])
        if self.faiss_index is not None:
            self.faiss_index.add(keys.float().cpu().numpy())

    def _sq_norms(self, keys: torch.Tensor) -> torch.Tensor:
        """float64 squared norms of ``keys - centre``, a block of rows at a time."""
        out = torch.empty(keys.shape[0], dtype=torch.float64, device=keys.device)
        for rows in _row_blocks(keys):
            shifted = keys[rows].detach().to(torch.float64)
            if self.centre is not None:
                shifted = shifted - self.centre.to(shifted.device)
            out[rows] = shifted.square().sum(1)
        return out

    def _build_faiss(self) -> Any:
        try:
            import faiss  # type: ignore[import-not-found]
        except ImportError as err:
            raise ImportError(
                "index='faiss' needs the optional package faiss (pip install faiss-cpu or "
                "faiss-gpu); use index='torch' for the built-in exact search"
            ) from err
        dim = self.keys.shape[1]
        built = faiss.IndexFlatL2(dim) if self.metric == "l2" else faiss.IndexFlatIP(dim)
        if self.size > 0:
            built.add(self.keys.detach().float().cpu().numpy())
        return built

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the datastore and hyperparameters with ``torch.save`` (tensors on CPU)."""
        torch.save(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "keys": self.keys.detach().cpu(),
                "values": self.values.detach().cpu(),
                "vocab_size": self.vocab_size,
                "k": self.k,
                "temperature": self.temperature,
                "lambda_": self.lambda_,
                "metric": self.metric,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> KNNLM:
        """Read a datastore written by :meth:`save`, checking it (``overrides``: keyword
        arguments of the constructor, e.g. ``k``, ``chunk_size``, ``index``).

        Raises ``ValueError`` naming the file and the problem when it cannot be read, is not a
        KNNLM datastore, or its tensors have wrong shapes, dtypes or token ids >= vocab_size.
        """
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # torch raises several types for a corrupt file
            raise ValueError(f"could not read a KNNLM datastore from {str(path)!r}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a KNNLM datastore (no {_FORMAT!r} tag)")
        if data.get("version") != _VERSION:
            raise ValueError(
                f"{str(path)!r} has datastore version {data.get('version')!r}, expected {_VERSION}"
            )
        missing = [name for name in ("keys", "values", "vocab_size") if name not in data]
        if missing:
            raise ValueError(f"{str(path)!r} is missing the entries {missing}")
        vocab_size = overrides.pop("vocab_size", data["vocab_size"])
        try:
            _check_keys("keys", data["keys"], None)
            v.check_int("vocab_size", vocab_size, low=1)
            _check_values("values", data["values"], data["keys"].shape[0], vocab_size)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(path)!r} holds an invalid datastore: {err}") from err
        kwargs = {name: data[name] for name in ("k", "temperature", "lambda_", "metric")}
        kwargs.update(overrides)
        return cls(data["keys"], data["values"], vocab_size, **kwargs)

    # ------------------------------------------------------------------ search
    def _check_queries(self, queries: object) -> torch.Tensor:
        queries = v.check_floating("queries", queries)
        dim = self.keys.shape[1]
        if queries.ndim < 1 or queries.shape[-1] != dim:
            raise ValueError(
                f"queries must have shape (..., {dim}) (the datastore's key size), "
                f"got {tuple(queries.shape)}"
            )
        if self.k > self.size:
            raise ValueError(f"k must be at most the datastore size {self.size}, got k={self.k}")
        return queries

    def _chunk_scores(self, q: torch.Tensor, chunk: slice, dtype: torch.dtype) -> torch.Tensor:
        """Ranking scores of a ``(n, d)`` query block against keys[chunk] (smaller = nearer);
        for l2 the query norm, constant per row, is left out."""
        keys = self.keys[chunk].to(dtype)
        if self.metric == "ip":
            return -(q @ keys.T)
        # q arrives shifted by the centre c (see _search_torch); |q-c|^2 - 2(q-c).(k-c)
        # + |k-c|^2 is ranked as |k-c|^2 - 2(q-c).k, dropping the per-row constants: no copy
        # of the keys, and the rounding error scales with |q-c| |k|, not |q| |k|
        norms = self.key_sq_norms[chunk].to(dtype)
        return torch.addmm(norms.unsqueeze(0), q, keys.T, alpha=-2.0)

    def _exact_distances(self, q: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Distances of ``(N, d)`` queries to their ``(N, k)`` neighbours, recomputed exactly."""
        out = torch.empty(indices.shape, dtype=q.dtype, device=q.device)
        n, kk = indices.shape
        step = max(1, _RECOMPUTE_ELEMENTS // max(kk * q.shape[1], 1))
        for s in range(0, n, step):
            rows = slice(s, min(s + step, n))
            neighbours = self.keys[indices[rows]].to(q.dtype)  # (b, k, d)
            qb = q[rows].unsqueeze(1)
            if self.metric == "l2":
                out[rows] = (neighbours - qb).square_().sum(-1)
            else:
                out[rows] = -(neighbours @ q[rows].unsqueeze(-1)).squeeze(-1)
        return out

    def _chunk_rows(self, dtype: torch.dtype) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        rows = _BLOCK_ELEMENTS // self.query_chunk_size
        if self.keys.dtype != dtype:  # each chunk is copied to the compute dtype
            rows = min(rows, _BLOCK_ELEMENTS // max(self.keys.shape[1], 1))
        return max(rows, self.k)

    def _search_torch(self, q: torch.Tensor) -> torch.Tensor:
        n, k = q.shape[0], self.k
        step = self._chunk_rows(q.dtype)
        if self.metric == "l2":
            assert self.centre is not None  # set whenever the store is non-empty (k <= size)
            q = q - self.centre.to(q.dtype)
        best_s = torch.full((n, k), float("inf"), dtype=q.dtype, device=q.device)
        best_i = torch.zeros((n, k), dtype=torch.long, device=q.device)
        for start in range(0, self.size, step):
            chunk = slice(start, min(start + step, self.size))
            kc = min(k, chunk.stop - chunk.start)
            for qs in range(0, n, self.query_chunk_size):
                rows = slice(qs, min(qs + self.query_chunk_size, n))
                scores = self._chunk_scores(q[rows], chunk, q.dtype)
                s, i = torch.topk(scores, kc, dim=1, largest=False)
                merged_s = torch.cat([best_s[rows], s], 1)
                merged_i = torch.cat([best_i[rows], i + start], 1)
                s, pos = torch.topk(merged_s, k, dim=1, largest=False)
                best_s[rows] = s
                best_i[rows] = merged_i.gather(1, pos)
        return best_i

    def _search_faiss(self, q: torch.Tensor) -> torch.Tensor:
        _, found = self.faiss_index.search(q.detach().float().cpu().numpy(), self.k)
        indices = torch.from_numpy(found).to(device=q.device, dtype=torch.long)
        if bool((indices < 0).any()):
            raise RuntimeError(
                f"the faiss index returned fewer than k={self.k} neighbours for some query"
            )
        return indices

    @torch.no_grad()
    def knn(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The k nearest datastore entries of each query (exact search).

        Args:
            queries: ``(..., d)`` floating.

        Returns:
            ``(distances, indices)``, both ``(..., k)``, sorted by ascending distance (exact
            ties by ascending index): ``distances`` are :math:`\lVert q - \kappa\rVert^2`
            (``"l2"``) or :math:`-q\cdot\kappa` (``"ip"``) in float32 (float64 when the queries
            or keys are float64; half inputs are not returned in half, whose range a squared
            distance can exceed), ``indices`` are ``torch.long`` rows of the datastore.

        Example:
            >>> head = KNNLM(torch.eye(3), torch.tensor([0, 1, 2]), vocab_size=3, k=2)
            >>> head.knn(torch.tensor([[0.0, 0.9, 0.0]]))
            (tensor([[0.0100, 1.8100]]), tensor([[1, 0]]))
        """
        self._check_queries(queries)
        lead = queries.shape[:-1]
        dtype = compute_dtype(queries.dtype, self.keys.dtype)
        q = queries.detach().reshape(-1, queries.shape[-1]).to(device=self.keys.device, dtype=dtype)
        if q.shape[0] == 0:
            idx = torch.zeros((0, self.k), dtype=torch.long, device=q.device)
        elif self.faiss_index is not None:
            idx = self._search_faiss(q)
        else:
            idx = self._search_torch(q)
        dist = self._exact_distances(q, idx) if q.shape[0] > 0 else idx.to(dtype)
        # sort by (distance, index): stable sort on the index, then stable sort on distance
        idx, order = torch.sort(idx, dim=1, stable=True)
        dist = dist.gather(1, order)
        dist, order = torch.sort(dist, dim=1, stable=True)
        idx = idx.gather(1, order)
        return dist.reshape(*lead, self.k), idx.reshape(*lead, self.k)

    # ------------------------------------------------------------------ distributions
    # run eagerly under torch.compile: torch 2.13's inductor miscompiled this scatter fused
    # with the interpolation's logaddexp (wrong values when the LM tensor requires grad)
    @torch.compiler.disable  # type: ignore[untyped-decorator]  # torch: disable() is unannotated
    @torch.no_grad()
    def knn_log_probs(self, queries: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_{kNN}(\cdot \mid q)` over the vocabulary, ``(..., V)``.

        :math:`\log p_{kNN}(y) = \operatorname{logsumexp}_{i:\, v_i = y}\,
        \mathrm{log\_softmax}_i(-d / T)`; tokens no neighbour carries are exactly ``-inf``.
        Returned in the queries' dtype (computed in float32, or float64 for float64 inputs).
        No gradient flows to the queries (the search is not differentiable).

        Example:
            >>> head = KNNLM(torch.eye(3), torch.tensor([0, 1, 1]), vocab_size=4, k=3)
            >>> head.knn_log_probs(torch.tensor([[0.0, 1.0, 0.0]])).exp()
            tensor([[0.1065, 0.8935, 0.0000, 0.0000]])
        """
        dist, idx = self.knn(queries)
        lead = dist.shape[:-1]
        dist, idx = dist.reshape(-1, self.k), idx.reshape(-1, self.k)
        log_w = torch.log_softmax(dist / -self.temperature, dim=1)
        tokens = self.values[idx]
        shape = (dist.shape[0], self.vocab_size)
        # per-token log-sum-exp: the max per token, then the sum of exp(log_w - max)
        empty = torch.full(shape, float("-inf"), dtype=dist.dtype, device=dist.device)
        peak = empty.scatter_reduce(1, tokens, log_w, reduce="amax", include_self=True)
        peak_at = peak.gather(1, tokens)
        zeros = torch.zeros(shape, dtype=dist.dtype, device=dist.device)
        total = zeros.scatter_add(1, tokens, torch.exp(log_w - peak_at))
        out = total.log() + peak
        return out.reshape(*lead, self.vocab_size).to(queries.dtype)

    def forward(
        self,
        queries: torch.Tensor,
        lm_logits: torch.Tensor | None = None,
        *,
        lm_log_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Log-probabilities of :math:`\lambda p_{kNN} + (1 - \lambda) p_{LM}`, ``(..., V)``.

        Args:
            queries: ``(..., d)`` context vectors (the LM's hidden states used as keys).
            lm_logits: ``(..., V)`` LM logits (log-softmaxed here), or instead
            lm_log_probs: ``(..., V)`` LM log-probabilities (used as given).

        Computed as ``logaddexp(log(lambda) + log p_kNN, log1p(-lambda) + log p_LM)`` in float32
        (float64 for float64 inputs) and returned in the LM tensor's dtype; ``lambda_ = 0``
        returns the LM log-probabilities and ``lambda_ = 1`` the kNN ones exactly. Gradients
        flow to the LM tensor (zero where the LM has no weight, never NaN), not to the queries.

        Example:
            >>> head = KNNLM(torch.eye(2), torch.tensor([0, 1]), vocab_size=2, k=1, lambda_=0.5)
            >>> head(torch.tensor([[1.0, 0.0]]), lm_log_probs=torch.tensor([[0.0, -float("inf")]]))
            tensor([[0., -inf]])
        """
        if (lm_logits is None) == (lm_log_probs is None):
            raise ValueError("pass exactly one of lm_logits and lm_log_probs")
        name, lm = (
            ("lm_logits", lm_logits) if lm_log_probs is None else ("lm_log_probs", lm_log_probs)
        )
        lm = v.check_floating(name, lm)
        self._check_queries(queries)
        expected = (*queries.shape[:-1], self.vocab_size)
        if tuple(lm.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} (the queries' leading shape and vocab_size), "
                f"got {tuple(lm.shape)}"
            )
        out_dtype = lm.dtype
        lm = lm.to(compute_dtype(lm.dtype))
        lm = torch.log_softmax(lm, dim=-1) if name == "lm_logits" else lm
        if self.lambda_ == 0.0:
            return lm.to(out_dtype)
        knn = self.knn_log_probs(queries).to(device=lm.device, dtype=lm.dtype)
        if self.lambda_ == 1.0:
            # a where, not knn + 0 * lm: the LM gets a zero gradient, never 0 * inf = NaN
            return torch.where(torch.ones_like(knn, dtype=torch.bool), knn, lm).to(out_dtype)
        a = knn + math.log(self.lambda_)
        b = lm + math.log1p(-self.lambda_)
        # both terms -inf: logaddexp's gradient would be NaN; give -inf with a zero gradient
        dead = (a == float("-inf")) & (b == float("-inf"))
        mixed = torch.logaddexp(a.masked_fill(dead, 0.0), b.masked_fill(dead, 0.0))
        return mixed.masked_fill(dead, float("-inf")).to(out_dtype)
