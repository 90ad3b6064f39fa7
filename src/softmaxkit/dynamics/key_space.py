r"""Key-space diagnostics of a softmax output layer: how the vocabulary keys shape the middle ranks.

Peng, An & Shang, "Correlation and Navigation in the Vocabulary Key Representation Space of
Language Models", ICLR 2025, arXiv:2410.02284 (the issue names it "Liu et al."; the paper's
authors are Letian Peng, Chenyang An and Jingbo Shang). A language model's next-token
distribution is a softmax of dot products between a context *query* :math:`q` (the last hidden
state) and fixed vocabulary *keys* :math:`k_v` (the rows of the output weight),
:math:`p_v \propto \exp(q \cdot k_v)`. The paper finds that the few top-ranked tokens are usually
right, while the *middle* ranks are pulled toward the keys that are similar to the top ones (if
"P" is the top-1 token, "A"-"Z" follow), whatever the context asks for.

The official notebook (``KomeijiForce/KeyNavi``, ``Spurious_Key_Correlation.ipynb``) measures it
with k-means clusters of the keys (1024 clusters of Llama-3's 128256 keys, about 125 keys per
cluster): of the tokens ranked ``K + 1 .. N`` (``K = 10``, ``N = 100``), the share that falls in a
cluster of one of the top-``K`` tokens. This module gives two cluster-free, per-query measures of
the same pull, computed from the keys alone (no k-means, no seed), in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype, row_blocks

__all__ = ["KeySpaceReport", "KeySpaceSummary", "key_space_report"]

#: the official notebook's K (top-ranked tokens) and N (ranks examined)
TOP = 10
RANKS = 100
#: the official code's k-means cluster count; the default neighbour count is V / CLUSTERS
CLUSTERS = 1024
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class KeySpaceSummary(NamedTuple):
    """Batch summary of one per-query measure (an immutable named tuple).

    Attributes:
        mean: 0-d tensor, the mean over the queries where the measure is defined (NaN ignored).
        quantiles: 1-d tensor, the quantiles at :attr:`KeySpaceReport.levels` (linear
            interpolation, NaN ignored).
        defined: 0-d int64 tensor, the number of queries where the measure is defined.
    """

    mean: torch.Tensor
    quantiles: torch.Tensor
    defined: torch.Tensor


class KeySpaceReport(NamedTuple):
    """Result of :func:`key_space_report` (an immutable named tuple).

    Per-query tensors have the queries' leading shape ``(...)``.

    Attributes:
        top1: int64 ``(...)``, the index of each query's top-ranked token.
        spearman: ``(...)``, Spearman's rank correlation, over the tokens ranked
            ``top + 1 .. top + window``, between a token's probability and the cosine
            similarity of its key to the top-1 key (NaN where undefined: fewer than two
            tokens, or all probabilities or all similarities equal).
        neighbour_share: ``(...)``, the share of the probability mass of ranks
            ``2 .. mass_ranks`` held by the ``neighbours`` keys nearest (cosine) to the
            top-1 key.
        chance_share: the expected ``neighbour_share`` if the neighbours were ``neighbours``
            tokens drawn at random among the ``V - 1`` others: ``neighbours / (V - 1)``.
        spearman_summary: :class:`KeySpaceSummary` of ``spearman``.
        share_summary: :class:`KeySpaceSummary` of ``neighbour_share``.
        levels: 1-d tensor, the quantile levels of both summaries.
    """

    top1: torch.Tensor
    spearman: torch.Tensor
    neighbour_share: torch.Tensor
    chance_share: float
    spearman_summary: KeySpaceSummary
    share_summary: KeySpaceSummary
    levels: torch.Tensor


def key_space_report(
    output_weight: torch.Tensor,
    queries: torch.Tensor,
    *,
    top: int = TOP,
    window: int = RANKS - TOP,
    neighbours: int | None = None,
    mass_ranks: int = RANKS,
    quantiles: Sequence[float] = QUANTILES,
) -> KeySpaceReport:
    r"""How strongly the middle ranks of a softmax are pulled toward keys near the top-1 key.

    Peng, An & Shang, "Correlation and Navigation in the Vocabulary Key Representation Space
    of Language Models", ICLR 2025, arXiv:2410.02284 (Sec. 3). For a query :math:`q` and keys
    :math:`k_v` (rows of ``output_weight``, ``V`` of them), :math:`z_v = q \cdot k_v`,
    :math:`p = \mathrm{softmax}(z)`; rank the tokens by :math:`p` (rank 1 = top-1 token
    :math:`t`) and let :math:`c_v = \cos(k_v, k_t)`.

    * **Rank correlation** over the window :math:`W` of ranks ``top + 1 .. top + window``:

      .. math:: \rho = \mathrm{Spearman}\big(\{p_v\}_{v \in W}, \{c_v\}_{v \in W}\big),

      Pearson's correlation of the average ranks (ties share their mean rank). A positive
      :math:`\rho` means the more probable middle tokens are the ones whose keys resemble the
      top-1 key: the paper's "middle-ranked prediction is biased towards tokens similar to the
      top ones".
    * **Neighbour share** of the mass of ranks :math:`R = 2 .. r` (``r = mass_ranks``), with
      :math:`N_k(t)` the ``k = neighbours`` keys of highest :math:`c_v`, :math:`v \ne t`:

      .. math:: s = \frac{\sum_{v \in R \cap N_k(t)} p_v}{\sum_{v \in R} p_v}
                  = \exp\Big(\operatorname{LSE}_{v \in R \cap N_k(t)} z_v
                    - \operatorname{LSE}_{v \in R} z_v\Big),

      computed from the logits (the normaliser cancels, so no probability underflows); it is
      compared with :attr:`KeySpaceReport.chance_share` :math:`= k / (V - 1)`, its expected
      value for a neighbour set unrelated to the keys.

    Defaults and their source: ``top = 10`` and ``top + window = mass_ranks = 100`` are the
    official notebook's ``K = 10`` (tokens defining the "main" key regions) and ``N = 100``
    (ranks examined); ``neighbours = ceil(V / 1024)`` is the mean cluster size of the official
    code's 1024 k-means clusters of the keys (125 for Llama-3's 128256 tokens, 50 for GPT-2's
    50257).

    Differences from the paper (deliberate): the paper compares ranks ``K + 1 .. N`` against
    k-means clusters of the top-``K`` tokens and judges answers' correctness with GPT-4o; here
    the key regions are the cosine nearest neighbours of the top-1 key (no clustering, no
    seed, no external judge) and the pull is measured by the two statistics above. Cosine
    (not the dot product) measures key similarity, so the key norms (the tokens' frequency
    prior) do not count as similarity.

    Args:
        output_weight: floating ``(V, d)``, the keys (an ``nn.Linear(d, V).weight``, a tied
            embedding). ``V >= top + 2``.
        queries: floating ``(..., d)``, the hidden states fed to the output layer. Any leading
            shape, including ``(0, d)``.
        top: tokens ranked before the window (``>= 1``). Default 10 (official ``K``).
        window: tokens in the correlation window (``>= 2``); cut to ``V - top`` when longer.
            Default 90 (official ``N - K``).
        neighbours: ``k``, the size of the top-1 key's neighbourhood, in ``[1, V - 1]``.
            Default ``None``: ``ceil(V / 1024)`` (official cluster size).
        mass_ranks: ``r``, the last rank of the neighbour-share range (``>= 2``), cut to ``V``.
            Default 100 (official ``N``).
        quantiles: levels in ``[0, 1]`` of the batch summaries. Default
            ``(0.1, 0.25, 0.5, 0.75, 0.9)``.

    Returns:
        :class:`KeySpaceReport`. Floating results are float64 for a float64 input and float32
        otherwise (half precision is computed in float32). Empty batch: per-query tensors of
        shape ``(0,)``, summaries with ``defined = 0`` and NaN ``mean`` and ``quantiles`` (as
        ``torch.mean`` of nothing).

    Notes:
        * Memory: the queries are processed in blocks of about 2**20 logits; no ``(B, V, V)``
          or ``(B, V)`` tensor is built, only ``(block, V)`` ones (a few MiB), so ``V = 50k``
          works for any batch size. Time is two ``(B, d) x (d, V)`` products.
        * Ties in the logits are ranked as ``torch.topk`` orders them (the window's members
          may then depend on the device); ties inside the window share their mean rank.
        * Keys of zero norm have cosine 0 with every key.
        * Invariances: scaling all keys, or a query, by a positive number leaves ``top1`` and
          ``spearman`` unchanged (``neighbour_share`` changes with the softmax temperature);
          rotating keys and queries together, or permuting the vocabulary, changes nothing.

    Example:
        >>> import torch
        >>> from softmaxkit.dynamics import key_space_report
        >>> g = torch.Generator().manual_seed(0)
        >>> keys = torch.nn.functional.normalize(torch.randn(500, 16, generator=g), dim=1)
        >>> q = 8.0 * keys[:4]  # each query points exactly at a key
        >>> r = key_space_report(keys, q, neighbours=5)
        >>> r.top1.tolist()
        [0, 1, 2, 3]
        >>> bool((r.spearman > 0.999).all())  # unit keys: logit = 8 cos(key, top-1 key)
        True
        >>> r.chance_share  # 5 / 499
        0.01002004008016032
    """
    keys, q, k, window, mass_ranks, levels = _check(
        output_weight,
        queries,
        top=top,
        window=window,
        neighbours=neighbours,
        mass_ranks=mass_ranks,
        quantiles=quantiles,
    )
    n_vocab, dim = keys.shape
    lead = q.shape[:-1]
    dtype = compute_dtype(keys, q)
    with torch.no_grad():
        kc = keys.detach().to(dtype)
        unit = F.normalize(kc, dim=1)
        rows = q.detach().reshape(-1, dim).to(dtype)
        n = rows.shape[0]
        top1 = torch.empty(n, dtype=torch.long, device=q.device)
        rho = torch.empty(n, dtype=dtype, device=q.device)
        share = torch.empty(n, dtype=dtype, device=q.device)
        ranks = max(top + window, mass_ranks)
        for block in row_blocks(n, n_vocab):
            t1, r, s = _block(kc, unit, rows[block], (top, window, k, mass_ranks, ranks))
            top1[block], rho[block], share[block] = t1, r, s
        lv = torch.tensor(levels, dtype=dtype, device=q.device)
        return KeySpaceReport(
            top1.reshape(lead),
            rho.reshape(lead),
            share.reshape(lead),
            k / (n_vocab - 1),
            _summary(rho, lv),
            _summary(share, lv),
            lv,
        )


def _block(
    keys: torch.Tensor, unit: torch.Tensor, q: torch.Tensor, sizes: tuple[int, int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-1 index, Spearman rho, neighbour share) of one block of queries."""
    top, window, k, mass_ranks, ranks = sizes
    z = q @ keys.T  # (C, V)
    best = torch.topk(z, ranks, dim=1)  # sorted, descending
    top1 = best.indices[:, 0]
    cos = unit[top1] @ unit.T  # (C, V): cosine of every key to the top-1 key
    # (a) rank correlation over ranks top+1 .. top+window
    idx = best.indices[:, top : top + window]
    rho = _spearman(best.values[:, top : top + window], cos.gather(1, idx))
    # (b) share of the mass of ranks 2..r held by the k nearest keys of the top-1 key
    cos.scatter_(1, top1[:, None], -math.inf)  # the top-1 key is not its own neighbour
    near = torch.topk(cos, k, dim=1, sorted=False).indices.sort(dim=1).values  # (C, k)
    r_idx = best.indices[:, 1:mass_ranks].contiguous()
    at = torch.searchsorted(near, r_idx).clamp_max(k - 1)
    r_near = near.gather(1, at) == r_idx  # is each of ranks 2..r among the neighbours?
    r_z = best.values[:, 1:mass_ranks]
    inside = torch.logsumexp(r_z.masked_fill(~r_near, -math.inf), dim=1)
    share = torch.exp(inside - torch.logsumexp(r_z, dim=1))
    return top1, rho, share


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank) along the last axis of (C, w)."""
    ordered, order = torch.sort(x, dim=1)
    first = torch.searchsorted(ordered, ordered, side="left")  # tie group: first .. last
    last = torch.searchsorted(ordered, ordered, side="right")
    mean_rank = (first + last + 1).to(x.dtype) / 2
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman correlation of (C, w) tensors; NaN where a row's ranks are constant."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    num = (ra * rb).sum(dim=1)
    den = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    nan = torch.full_like(num, math.nan)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(num.dtype).tiny), nan)


def _summary(values: torch.Tensor, levels: torch.Tensor) -> KeySpaceSummary:
    n_defined = (~torch.isnan(values)).sum()
    if values.numel() == 0:
        mean = torch.full((), math.nan, dtype=values.dtype, device=values.device)
        qs = torch.full(levels.shape, math.nan, dtype=values.dtype, device=values.device)
    else:
        mean = torch.nanmean(values)
        qs = torch.nanquantile(values, levels)
    return KeySpaceSummary(mean, qs, n_defined)


def _check(
    output_weight: object,
    queries: object,
    *,
    top: object,
    window: object,
    neighbours: object,
    mass_ranks: object,
    quantiles: object,
) -> tuple[torch.Tensor, torch.Tensor, int, int, int, tuple[float, ...]]:
    keys = V.check_floating("output_weight", output_weight)
    q = V.check_floating("queries", queries)
    if keys.ndim != 2:
        raise ValueError(
            f"output_weight must be 2-D (V, d), got shape {tuple(keys.shape)}",
        )
    if q.ndim == 0 or q.shape[-1] != keys.shape[1]:
        raise ValueError(
            f"queries must have shape (..., d) with d = output_weight.shape[1] = "
            f"{keys.shape[1]}, got shape {tuple(q.shape)}"
        )
    if q.device != keys.device:
        raise ValueError(f"queries must be on output_weight's device {keys.device}, got {q.device}")
    n_vocab = keys.shape[0]
    top = V.check_int("top", top, low=1)
    if n_vocab < top + 2:
        raise ValueError(
            f"output_weight must have at least top + 2 = {top + 2} rows (keys) for a window "
            f"of two tokens after the top {top}, got V = {n_vocab}; lower top"
        )
    window = min(V.check_int("window", window, low=2), n_vocab - top)
    if neighbours is None:
        k = math.ceil(n_vocab / CLUSTERS)
    else:
        k = V.check_int("neighbours", neighbours, low=1, high=n_vocab - 1)
    mass_ranks = min(V.check_int("mass_ranks", mass_ranks, low=2), n_vocab)
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence):
        raise TypeError(f"quantiles must be a sequence of numbers, got {quantiles!r}")
    levels = tuple(
        V.check_number(f"quantiles[{i}]", v, low=0.0, high=1.0) for i, v in enumerate(quantiles)
    )
    return keys, q, k, window, mass_ranks, levels
