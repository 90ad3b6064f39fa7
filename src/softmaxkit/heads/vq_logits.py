"""VQ-Logits: an output layer whose V logits come from K << V codebook vectors.

Shao, Huang, Wu, Cheng, Wu, Shan and Zheng, "VQ-Logits: Compressing the Output Bottleneck
of Large Language Models via Vector Quantized Logits", 2025, arXiv:2505.10202.

The V x d output matrix of a language model is replaced by a codebook ``C`` (K x d) and a
token-to-code map ``M: {0..V-1} -> {0..K-1}``:

* code logits ``L_c = h C^T`` (shape (..., K));
* vocabulary logits ``L_v[..., i] = L_c[..., M(i)]`` (a gather by ``M``), followed by the
  ordinary softmax over V.

So every token sharing a code gets the same logit and ``P(i) = exp(L_c[M(i)]) / sum_k n_k
exp(L_c[k])`` with ``n_k = |M^-1(k)|``; the memory-lean log-likelihood never builds (..., V):
``log P(i) = L_c[M(i)] - logsumexp_k(L_c[k] + log n_k)`` (a code with ``n_k = 0`` has
``log n_k = -inf`` and drops out).

What was checked (against the arXiv abstract and a third-party summary of the method
section; the full text could not be read here): the two formulas above, the codebook
being a learned K x d matrix, "a learned or pre-assigned mapping", and ablations on
"codebook size, initialization, and learning strategies". **Not verified**: k-means on the
original output embeddings as the initialisation (REFERENCE.md section 27 names it as an
example), whether and how the paper re-assigns the map during training, and any auxiliary
loss. This module ships the pre-assigned maps (k-means of a pretrained output matrix, a
seeded balanced random map, or one the user supplies) with a codebook trained by
backpropagation of the language-model loss, and a *learned* map
(``assignment="learned"``) whose update rule is softmaxkit's own, derived below from the
likelihood (:meth:`VQLogits.reassign`), not the paper's (which could not be read). The
optional per-code bias is a softmaxkit addition (the paper's ``L_c`` has none), off by
default.

Learned map (softmaxkit's rule). Moving token ``i`` from code ``a`` to code ``b`` changes
the training log-likelihood by exactly ``sum_{n: y_n = i} (L_c[n, b] - L_c[n, a]) -
sum_n log(1 + q_n(b) - q_n(a))``, where ``q_n(k) = exp(L_c[n, k]) / Z_n`` is the
probability of one token of code ``k`` at position ``n``. To first order in ``q`` (small
for a large vocabulary) this is ``S[i, b] - S[i, a]`` with the score
``S[i, k] = s_i . c_k + m_i b_k - Q_k``, where ``s_i`` is the sum of the hidden states
whose target is ``i``, ``m_i`` their number and ``Q_k = sum_n q_n(k)``. Training
alternates gradient steps on the codebook (the statistics ``s``, ``m``, ``Q`` are gathered
by :meth:`VQLogits.cross_entropy` in training mode) with :meth:`VQLogits.reassign`, which
moves every seen token to its best-scoring code (a hard coordinate-ascent step, like the
assignment step of k-means).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops import cross_entropy as ce_ops
from softmaxkit._ops import dtensor
from softmaxkit._ops.blocks import compute_dtype

__all__ = ["KMeansResult", "VQLogits", "kmeans"]


class KMeansResult(NamedTuple):
    """What :func:`kmeans` returns.

    ``centroids`` (K, d) in the points' compute dtype (float32, or float64 for float64
    points), ``assignment`` (N,) int64 cluster of each point, ``inertia`` (at most
    ``iters + 1``,) float64: the objective ``sum_n ||x_n - c_{a(n)}||^2`` after each assignment step
    (non-increasing; the last entry is the objective of the returned pair).
    """

    centroids: torch.Tensor
    assignment: torch.Tensor
    inertia: torch.Tensor


def _nearest(
    points: torch.Tensor, centroids: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest centroid; chunked over the points so
    that at most ``chunk_size x K`` distances exist at once."""
    c2 = centroids.pow(2).sum(1)
    dists, index = [], []
    for start in range(0, points.shape[0], chunk_size):
        x = points[start : start + chunk_size]
        d = x.pow(2).sum(1, keepdim=True) - 2.0 * (x @ centroids.T) + c2
        best, arg = d.min(1)
        dists.append(best.clamp_min(0.0))
        index.append(arg)
    return torch.cat(dists), torch.cat(index)


def _power_of_two_scaled(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(x / unit, unit)`` with ``unit`` a power of two that brings ``max |x|`` near 1 when
    the squared norms and distances of ``x`` would overflow or underflow in its dtype
    (``max |x|`` beyond ``2^(max exponent / 2 - 8)`` or below ``2^(min exponent / 2 + 8)``),
    else ``(x, 1.0)``. K-means is scale-equivariant (the same assignments; centroids scale
    by ``unit``, the objective by ``unit^2``) and dividing by a power of two is exact, so
    the scaled run is the run in exact arithmetic; in range nothing changes (one read of
    ``x``)."""
    info = torch.finfo(x.dtype)
    top = float(x.abs().amax()) if x.numel() else 0.0
    max_exp, min_exp = math.frexp(info.max)[1], math.frexp(info.tiny)[1]
    hi, lo = 2.0 ** (max_exp // 2 - 8), 2.0 ** (min_exp // 2 + 8)
    if top == 0.0 or lo <= top <= hi:
        return x, 1.0
    unit = 2.0 ** (math.frexp(top)[1] - 1)  # top / unit in [1, 2); unit fits the dtype
    return x / unit, unit


def _sample_index(weights: torch.Tensor | None, n: int, generator: torch.Generator | None) -> int:
    """One index drawn with probability proportional to ``weights`` (uniform when None or all
    zero), on the CPU with ``generator`` so the draw is reproducible on any device."""
    if weights is not None:
        w = weights.detach().to("cpu", torch.float64)
        if float(w.sum()) > 0.0:
            return int(torch.multinomial(w, 1, generator=generator))
    return int(torch.randint(n, (1,), generator=generator))


def kmeans(
    points: torch.Tensor,
    num_clusters: int,
    *,
    iters: int = 25,
    init: str = "k-means++",
    generator: torch.Generator | None = None,
    chunk_size: int = 4096,
) -> KMeansResult:
    r"""Lloyd's k-means in plain torch, with k-means++ or random seeding.

    Minimises :math:`\sum_n \lVert x_n - c_{a(n)} \rVert^2` by alternating the assignment
    :math:`a(n) = \arg\min_k \lVert x_n - c_k \rVert^2` and the update
    :math:`c_k = \mathrm{mean}\{x_n : a(n) = k\}`. Used by :class:`VQLogits` to cluster the
    rows of a pretrained output matrix, the codebook initialisation the VQ-Logits paper
    ablates (Shao et al., "VQ-Logits: Compressing the Output Bottleneck of Large Language
    Models via Vector Quantized Logits", 2025, arXiv:2505.10202).

    * Seeding: ``"k-means++"`` (Arthur and Vassilvitskii, 2007: first centre uniform, each
      next one drawn with probability proportional to the squared distance to the nearest
      chosen centre) or ``"random"`` (K distinct points drawn uniformly). Draws use
      ``generator`` (a CPU ``torch.Generator``; ``None``: torch's global one), so a seeded
      generator makes the whole run reproducible.
    * Distances are computed as ``|x|^2 - 2 x.c + |c|^2``, ``chunk_size`` points at a time,
      on the points less their mean where that mean exceeds their spread (k-means is
      translation-equivariant; the three terms would cancel in float32 when the points
      share a large offset).
      Points whose squared norms would overflow or underflow (float32 beyond about
      ``1e17`` or below ``1e-17``) are clustered in units of a power of two near their
      largest entry, which is exact (k-means is scale-equivariant): any finite points give
      the exact clustering. Non-finite points raise ``ValueError``.
    * Empty clusters: after each update, every empty cluster's centre is moved onto one of
      the points farthest from their centres (distinct points), which never increases the
      objective.
    * Stops after ``iters`` iterations (assignment + update; a last assignment step then
      matches the returned centroids) or when an assignment step changes nothing.

    Args:
        points: (N, d) floating tensor (half types are computed in float32).
        num_clusters: K, in [1, N].
        iters: maximum number of iterations, >= 1 (default 25, a softmaxkit choice).
        init: ``"k-means++"`` (default) or ``"random"``.
        generator: CPU ``torch.Generator`` for the seeding draws.
        chunk_size: points per distance block (default 4096).

    Returns:
        :class:`KMeansResult` ``(centroids, assignment, inertia)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(20, 2, generator=g) + 10, torch.randn(20, 2, generator=g)])
        >>> res = kmeans(x, 2, generator=torch.Generator().manual_seed(1))
        >>> sorted(torch.bincount(res.assignment).tolist())
        [20, 20]
        >>> bool(res.inertia[-1] <= res.inertia[0])
        True
    """
    v.check_floating("points", points)
    if points.ndim != 2:
        raise ValueError(f"points must have shape (N, d), got shape {tuple(points.shape)}")
    n = points.shape[0]
    if n < 1:
        raise ValueError("points must hold at least one row, got 0 rows")
    v.check_int("num_clusters", num_clusters, low=1, high=n)
    v.check_int("iters", iters, low=1)
    v.check_choice("init", init, ("k-means++", "random"))
    v.check_int("chunk_size", chunk_size, low=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")

    with torch.no_grad():
        x = points.detach().to(compute_dtype(points))
        v.check_tensor_values(
            "points", x, low=-math.inf, high=math.inf, low_open=True, high_open=True
        )
        x, unit = _power_of_two_scaled(x)
        # translation-equivariant: points sharing an offset larger than their spread are
        # clustered about their mean, so |x|^2 - 2 x.c + |c|^2 does not cancel (the centre
        # is added back below); otherwise they are used as given
        centre: torch.Tensor | None
        centre = x.mean(0)
        centred = x - centre
        if float(centre.abs().amax()) > float(centred.abs().amax()):
            x = centred
        else:
            centre = None
        k = num_clusters
        if init == "random":
            chosen = torch.randperm(n, generator=generator)[:k].to(x.device)
            centroids = x[chosen].clone()
        else:
            # D^2 updated with |x|^2 - 2 x.c + |c|^2 (a mat-vec per centre, no (N, d)
            # temporary); a chosen point's own distance is set to exactly 0.
            x2 = x.pow(2).sum(1)
            centroids = x.new_empty(k, x.shape[1])
            d2 = None
            for j in range(k):
                idx = _sample_index(d2, n, generator)
                c = x[idx]
                centroids[j] = c
                dj = (x2 - 2.0 * (x @ c) + x2[idx]).clamp_min(0.0)
                d2 = dj if d2 is None else torch.minimum(d2, dj)
                d2[idx] = 0.0

        inertias: list[float] = []
        assignment = None
        refilled = False
        for _ in range(iters):
            dist, new_assignment = _nearest(x, centroids, chunk_size)
            inertias.append(float(dist.double().sum()))
            if assignment is not None and not refilled and torch.equal(new_assignment, assignment):
                break  # converged: the centroids are the means of this assignment
            assignment = new_assignment
            counts = torch.bincount(assignment, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
            nonempty = counts > 0
            centroids = torch.where(
                nonempty[:, None], sums / counts.clamp_min(1)[:, None].to(x.dtype), centroids
            )
            empty = (~nonempty).nonzero().flatten()
            refilled = empty.numel() > 0
            if refilled:
                far = dist.topk(empty.numel()).indices
                centroids[empty] = x[far]
                assignment = assignment.clone()
                assignment[far] = empty
        else:
            dist, assignment = _nearest(x, centroids, chunk_size)
            inertias.append(float(dist.double().sum()))
    inertia = torch.tensor(inertias, dtype=torch.float64)
    if centre is not None:
        centroids = centroids + centre
    if unit != 1.0:  # back from the scaled units: exact (a power of two)
        centroids, inertia = centroids * unit, inertia * unit**2
    return KMeansResult(centroids, assignment, inertia)


class VQLogits(nn.Module):
    r"""VQ-Logits output layer: K codebook vectors scattered to V logits by a token-to-code map.

    Shao et al., "VQ-Logits: Compressing the Output Bottleneck of Large Language Models via
    Vector Quantized Logits", 2025, arXiv:2505.10202.

    .. math::
        L_c = h C^T (+ b), \qquad L_v[\dots, i] = L_c[\dots, M(i)], \qquad
        \log P(i) = L_c[M(i)] - \operatorname{logsumexp}_k (L_c[k] + \log n_k)

    with codebook ``C`` (K, d) (a learned ``nn.Parameter``, trained by backpropagation of
    the model's loss), the map ``M`` (buffer ``mapping``, (V,) int64, fixed after
    construction; replace the head to change it) and ``n_k = |M^-1(k)|`` (buffer
    ``code_counts``). Training: the gradient reaching code ``k`` is the sum of the gradients
    of the logits of the tokens mapped to it (the gather's scatter-add).

    The (V, d) output matrix is never built:
    :meth:`forward` gathers the (..., K) code logits into (..., V); :meth:`code_logits`
    returns the (..., K) code logits and :meth:`log_prob` / :meth:`cross_entropy` evaluate
    the likelihood without any (..., V) tensor.

    Map (``assignment``):

    * ``None`` (default): ``"kmeans"`` when ``weight`` is given, else ``"random"``.
    * ``"random"``: a balanced random map ``M = perm mod K`` for a random
      permutation drawn from ``generator`` (every code gets floor(V/K) or ceil(V/K) tokens).
    * ``"kmeans"``: k-means (:func:`kmeans`) of the rows of a pretrained output matrix
      ``weight`` (V, d); the codebook is the centroids and ``M`` the cluster of each token.
      Same as :meth:`from_linear`.
    * ``"learned"``: starts as ``"kmeans"`` when ``weight`` is given, else ``"random"``,
      and is re-assigned during training: in training mode :meth:`cross_entropy` gathers
      statistics and :meth:`reassign` (call it every few hundred steps) moves each seen
      token to the code that most increases the likelihood (softmaxkit's rule, derived in
      the module docstring; the paper's could not be verified).
    * a (V,) integer tensor with values in [0, K): a map supplied by the user.

    The codebook starts as the per-code mean of ``weight``'s rows when ``weight`` is given
    (for k-means these are the centroids), else uniform in ``[-1/sqrt(d), 1/sqrt(d)]`` as
    ``nn.Linear`` initialises its weight.

    Parameters: ``K d`` (+ ``K`` with ``bias=True``) against ``V d`` (+ ``V``) for
    ``nn.Linear(d, V)``; see :meth:`num_parameters`. At V = 50257, K = 1024, d = 768:
    786,432 against 38,597,376, a 97.96 % reduction.

    Args:
        hidden_size: d, >= 1.
        vocab_size: V, >= 1.
        codebook_size: K, in [1, V].
        assignment: ``None``, ``"random"``, ``"kmeans"``, ``"learned"`` or a (V,) integer
            map (see above).
        weight: optional pretrained (V, d) output matrix (required by ``"kmeans"``).
        bias: add a learned per-code bias ``b`` (K,) (default False: the paper's ``L_c`` has none).
        kmeans_iters: maximum k-means iterations (default 25).
        kmeans_init: ``"k-means++"`` (default) or ``"random"`` seeding.
        generator: CPU ``torch.Generator`` for the random map, the k-means seeding and the
            codebook initialisation (``None``: torch's global generator).
        device, dtype: of the codebook (and bias); default: ``weight``'s when it is given,
            else torch's defaults. The map is int64 on the same device.

    Shapes: ``hidden`` (..., d) -> logits (..., V); half-precision inputs are computed in
    float32 and returned in the hidden state's dtype.

    FSDP2: :meth:`code_logits`, :meth:`log_prob` and :meth:`cross_entropy` are not
    ``forward``, so on a ``fully_shard``-ed head they see the sharded codebook (and bias):
    it is all-gathered and its gradient averaged over the mesh as FSDP's own reduction (the
    same as :func:`softmaxkit.heads.linear_cross_entropy`; or register them with
    ``torch.distributed.fsdp.register_fsdp_forward_method``). A DTensor ``weight`` (for
    k-means) is all-gathered once, without gradient. ``assignment="learned"`` is not
    synchronised across data-parallel ranks: each rank gathers statistics from its own
    batches, so :meth:`reassign` on every rank would give different maps (broadcast the
    ``mapping`` and ``code_counts`` buffers from one rank after it).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> head = VQLogits(16, 100, 8, generator=g)
        >>> h = torch.randn(4, 16, generator=g)
        >>> head(h).shape
        torch.Size([4, 100])
        >>> torch.equal(head(h), (h @ head.codebook.T)[:, head.mapping])
        True
        >>> head.num_parameters(), VQLogits.linear_num_parameters(16, 100)
        (128, 1600)
    """

    mapping: torch.Tensor
    code_counts: torch.Tensor

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        codebook_size: int,
        *,
        assignment: str | torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        bias: bool = False,
        kmeans_iters: int = 25,
        kmeans_init: str = "k-means++",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        weight = dtensor.full_detached("weight", weight)  # FSDP2 / DTensor: the full matrix
        v.check_int("hidden_size", hidden_size, low=1)
        v.check_int("vocab_size", vocab_size, low=1)
        v.check_int("codebook_size", codebook_size, low=1)
        if codebook_size > vocab_size:
            raise ValueError(
                f"codebook_size must be at most vocab_size={vocab_size}, got {codebook_size}"
            )
        v.check_bool("bias", bias)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        if dtype is not None:
            v.check_floating_dtype("dtype", dtype)
        if weight is not None:
            v.check_floating("weight", weight)
            if tuple(weight.shape) != (vocab_size, hidden_size):
                raise ValueError(
                    f"weight must have shape (vocab_size, hidden_size) = "
                    f"({vocab_size}, {hidden_size}), got {tuple(weight.shape)}"
                )
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.codebook_size = codebook_size
        k = codebook_size

        centroids = None
        if isinstance(assignment, torch.Tensor):
            mapping = self._check_mapping(assignment)
            self.assignment = "given"
        else:
            if assignment is None:
                assignment = "kmeans" if weight is not None else "random"
            v.check_choice("assignment", assignment, ("random", "kmeans", "learned"))
            self.assignment = assignment
            if assignment == "learned":
                assignment = "kmeans" if weight is not None else "random"
            if assignment == "kmeans":
                if weight is None:
                    raise ValueError(
                        "assignment='kmeans' needs weight= (the pretrained (vocab_size, "
                        "hidden_size) output matrix), got None; see VQLogits.from_linear"
                    )
                res = kmeans(weight, k, iters=kmeans_iters, init=kmeans_init, generator=generator)
                mapping, centroids = res.assignment, res.centroids
            else:
                perm = torch.randperm(vocab_size, generator=generator)
                mapping = torch.empty(vocab_size, dtype=torch.long)
                mapping[perm] = torch.arange(vocab_size) % k
        target_device = (
            device if device is not None else (weight.device if weight is not None else None)
        )
        mapping = mapping.to(device=target_device, dtype=torch.long)
        if dtype is not None:
            param_dtype = dtype
        else:
            param_dtype = weight.dtype if weight is not None else torch.get_default_dtype()

        with torch.no_grad():
            if centroids is None and weight is not None:
                w = weight.detach().to(device=mapping.device, dtype=compute_dtype(weight))
                counts = torch.bincount(mapping, minlength=k).clamp_min(1).to(w.dtype)
                sums = torch.zeros(k, hidden_size, dtype=w.dtype, device=w.device)
                centroids = sums.index_add_(0, mapping, w) / counts[:, None]
            if centroids is None:
                bound = 1.0 / math.sqrt(hidden_size)
                centroids = torch.rand(k, hidden_size, generator=generator) * (2 * bound) - bound
        self.codebook = nn.Parameter(centroids.to(device=target_device, dtype=param_dtype))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.zeros(k, device=target_device, dtype=param_dtype)
            )
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mapping", mapping)
        self.register_buffer("code_counts", torch.bincount(mapping, minlength=k))
        # statistics of the learned map (s, m, Q of the module docstring), allocated by the
        # first training-mode cross_entropy and released by reassign(); not saved
        self._token_sums: torch.Tensor | None = None
        self._token_counts: torch.Tensor | None = None
        self._code_mass: torch.Tensor | None = None

    def _check_mapping(self, mapping: torch.Tensor) -> torch.Tensor:
        v.check_tensor("assignment", mapping)
        if mapping.dtype.is_floating_point or mapping.dtype == torch.bool or mapping.is_complex():
            raise TypeError(
                f"assignment must be 'random', 'kmeans', 'learned' or an integer tensor, got dtype "
                f"{mapping.dtype}"
            )
        if tuple(mapping.shape) != (self.vocab_size,):
            raise ValueError(
                f"assignment must have shape (vocab_size,) = ({self.vocab_size},), "
                f"got {tuple(mapping.shape)}"
            )
        lo, hi = int(mapping.min()), int(mapping.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(
                f"assignment must hold code indices in [0, {self.codebook_size - 1}], "
                f"got {lo if lo < 0 else hi}"
            )
        return mapping.detach().clone()

    @classmethod
    def from_linear(
        cls,
        linear_or_weight: nn.Linear | torch.Tensor,
        codebook_size: int,
        *,
        bias: bool | None = None,
        iters: int = 25,
        init: str = "k-means++",
        generator: torch.Generator | None = None,
    ) -> VQLogits:
        """A VQ-Logits head from a pretrained output layer, by k-means of its rows.

        The rows of the (V, d) weight (``nn.Linear(d, V).weight`` or the tensor itself) are
        clustered into ``codebook_size`` clusters (:func:`kmeans` with ``iters``, ``init``,
        ``generator``); the codebook is the centroids and the map the cluster of each
        token. Cost: k-means++ seeding is K sequential (V, d) mat-vecs and each iteration a
        (V, K, d) distance product (at V = 50257, K = 1024, d = 768 on one loaded CPU thread:
        about 28 s of seeding and 3 s per iteration). With ``bias`` (default: whether the
        linear layer has one) the code bias is
        the per-cluster mean of the linear bias (zeros for a tensor). The codebook has the
        weight's dtype and device.

        Example:
            >>> lin = torch.nn.Linear(8, 50)
            >>> head = VQLogits.from_linear(lin, 10, generator=torch.Generator().manual_seed(0))
            >>> head.codebook.shape, head.mapping.shape, head.bias.shape
            (torch.Size([10, 8]), torch.Size([50]), torch.Size([10]))
        """
        lin_bias = None
        if isinstance(linear_or_weight, nn.Linear):
            weight = linear_or_weight.weight
            lin_bias = linear_or_weight.bias
        elif isinstance(linear_or_weight, torch.Tensor):
            weight = linear_or_weight
        else:
            raise TypeError(
                "linear_or_weight must be an nn.Linear or a (vocab_size, hidden_size) tensor, "
                f"got {type(linear_or_weight).__name__}"
            )
        weight = dtensor.full_detached("linear_or_weight", weight)  # FSDP2 / DTensor: full
        lin_bias = dtensor.full_detached("linear_or_weight.bias", lin_bias)
        v.check_floating("linear_or_weight", weight)
        if weight.ndim != 2:
            raise ValueError(
                "linear_or_weight must be a (vocab_size, hidden_size) matrix, got shape "
                f"{tuple(weight.shape)}"
            )
        bias = lin_bias is not None if bias is None else v.check_bool("bias", bias)
        vocab_size, hidden_size = weight.shape
        head = cls(
            hidden_size,
            vocab_size,
            codebook_size,
            assignment="kmeans",
            weight=weight,
            bias=bias,
            kmeans_iters=iters,
            kmeans_init=init,
            generator=generator,
            device=weight.device,
            dtype=weight.dtype,
        )
        if bias and lin_bias is not None:
            with torch.no_grad():
                b = lin_bias.detach().to(compute_dtype(lin_bias))
                sums = torch.zeros(codebook_size, dtype=b.dtype, device=b.device)
                sums.index_add_(0, head.mapping, b)
                mean = sums / head.code_counts.clamp_min(1).to(b.dtype)
                assert head.bias is not None  # built with bias=True
                head.bias.copy_(mean.to(head.bias.dtype))
        return head

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        dtensor.refuse("hidden", hidden)
        v.check_floating("hidden", hidden)
        if hidden.ndim < 1 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden must have shape (..., hidden_size={self.hidden_size}), "
                f"got {tuple(hidden.shape)}"
            )

    def _check_target(
        self, target: torch.Tensor, hidden: torch.Tensor, ignore_index: int | None
    ) -> torch.Tensor:
        """Class indices of shape ``hidden.shape[:-1]`` in [0, V) (or ``ignore_index``), of
        any integer dtype; returned as int64."""
        shape = _ShapeOnly(hidden.shape[:-1], self.vocab_size)
        target = v.check_class_target(
            target,
            shape,  # type: ignore[arg-type]  # a stand-in: check_class_target reads only .shape
            hidden.ndim - 1,
            -100 if ignore_index is None else ignore_index,
        )
        checkable = target.device.type == "cpu" and not torch.compiler.is_compiling()
        if ignore_index is None and checkable and target.numel() > 0 and int(target.min()) < 0:
            raise ValueError(
                f"target must hold class indices in [0, {self.vocab_size - 1}], "
                f"got {int(target.min())}"
            )
        return target

    def _code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Code logits in the compute dtype (float32 for half inputs/parameters).

        Half ``hidden`` and codebook of one dtype on a device with native half matmuls
        (CUDA; ``ce_ops.fast_half_matmul``): the matmul runs in that dtype and is upcast
        after (as ``linear_cross_entropy`` does); otherwise both are upcast first."""
        # outside forward, FSDP2 leaves the parameters sharded: all-gathered (_ops/dtensor)
        codebook = dtensor.full_weight("codebook", self.codebook)
        bias = dtensor.full_weight("bias", self.bias)
        dt = compute_dtype(hidden, codebook)
        b = None if bias is None else bias.to(dt)
        if hidden.dtype == codebook.dtype and ce_ops.fast_half_matmul(codebook):
            z = F.linear(hidden, codebook).to(dt)
            return z if b is None else z + b
        return F.linear(hidden.to(dt), codebook.to(dt), b)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Code logits ``L_c = h C^T (+ b)``: (..., d) -> (..., K), in ``hidden``'s dtype.

        Example:
            >>> head = VQLogits(4, 10, 3, generator=torch.Generator().manual_seed(0))
            >>> head.code_logits(torch.randn(2, 4)).shape
            torch.Size([2, 3])
        """
        self._check_hidden(hidden)
        return self._code_logits(hidden).to(hidden.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``L_v[..., i] = L_c[..., M(i)]``: (..., d) -> (..., V).

        Computed as the (..., K) code logits gathered by the map; the gradient reaches the
        codebook (and bias) by the gather's scatter-add. Half inputs are computed in float32
        and returned in ``hidden``'s dtype.
        """
        self._check_hidden(hidden)
        return self._code_logits(hidden).index_select(-1, self.mapping).to(hidden.dtype)

    def log_prob(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log P(target)`` under softmax over the V logits, without a (..., V) tensor.

        ``log P(i) = L_c[M(i)] - logsumexp_k(L_c[k] + log n_k)``, codes with ``n_k = 0``
        dropping out. ``hidden`` (..., d), ``target`` (...) integer in [0, V); returns (...)
        in ``hidden``'s dtype.

        Example:
            >>> head = VQLogits(4, 10, 3, generator=torch.Generator().manual_seed(0))
            >>> h, t = torch.randn(2, 4), torch.tensor([1, 7])
            >>> torch.allclose(head.log_prob(h, t), head(h).log_softmax(-1)[[0, 1], t])
            True
        """
        self._check_hidden(hidden)
        lc = self._code_logits(hidden)
        target = self._check_target(target, hidden, None)
        return self._log_prob(lc, target).to(hidden.dtype)

    def _log_prob(self, lc: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        stats = self._row_stats(lc, target.clamp(0, self.vocab_size - 1).reshape(-1))
        assert stats.target_logit is not None  # _row_stats sets it
        return (stats.target_logit - stats.lse).reshape(target.shape)

    def _row_stats(self, lc: torch.Tensor, index: torch.Tensor) -> ce_ops.RowStats:
        """The rows' ``lse = logsumexp_k(L_c[k] + log n_k)`` and target logit ``L_c[M(y)]``
        (``index``: flat class indices in [0, V))."""
        rows = lc.reshape(-1, self.codebook_size)
        code = self.mapping[index]
        return ce_ops.RowStats(
            torch.logsumexp(rows + self.code_counts.to(lc.dtype).log(), dim=-1),
            target_logit=rows.gather(-1, code.unsqueeze(-1)).squeeze(-1),
        )

    def cross_entropy(
        self,
        hidden: torch.Tensor,
        target: torch.Tensor,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> torch.Tensor:
        """``F.cross_entropy(self(hidden), target)`` without the (..., V) logits.

        Same ``reduction`` ("mean" over non-ignored targets, "sum", "none") and
        ``ignore_index`` semantics as ``torch.nn.functional.cross_entropy`` (class indices
        of any integer dtype, no class weights or label smoothing), except that a batch
        whose targets are all ignored gives 0 with zero gradient for every reduction
        (torch's "mean" gives NaN), the library's convention. ``hidden`` (..., d), ``target`` (...).
        With ``assignment="learned"`` in training mode it also adds this batch to the
        statistics that :meth:`reassign` uses (the non-ignored rows; no gradient).

        Example:
            >>> head = VQLogits(4, 10, 3, generator=torch.Generator().manual_seed(0))
            >>> h, t = torch.randn(5, 4), torch.tensor([1, 7, 0, 9, 3])
            >>> torch.allclose(head.cross_entropy(h, t), F.cross_entropy(head(h), t))
            True
        """
        self._check_hidden(hidden)
        v.check_reduction(reduction)
        v.check_int("ignore_index", ignore_index)
        target = self._check_target(target, hidden, ignore_index)
        lc = self._code_logits(hidden)
        kept = target != ignore_index
        if self.training and self.assignment == "learned":
            self._accumulate(hidden, lc, target, kept)
        # the cross-entropy rules over the row statistics lse = logsumexp_k(L_c[k] + log n_k)
        # and the target logit L_c[M(y)]; differentiated by autograd
        o = ce_ops.CrossEntropyOptions(
            reduction=reduction, ignore_index=ignore_index, vocab_total=self.vocab_size
        )
        flat_kept = kept.reshape(-1)
        index = torch.where(flat_kept, target.reshape(-1), 0)
        targets = ce_ops.index_targets(index, flat_kept, None, lc.dtype)
        stats = self._row_stats(lc, index)
        blk = ce_ops.block(targets, slice(None), self.vocab_size, o)
        den = ce_ops.mean_denominators(targets, index.shape[0], lc.dtype, o)
        loss = ce_ops.reduce_loss(ce_ops.row_loss(stats, blk, o), stats.lse, targets, den, o)
        if reduction == "none":
            loss = loss.reshape(target.shape)
        return loss.to(hidden.dtype)

    @torch.no_grad()
    def _accumulate(
        self, hidden: torch.Tensor, lc: torch.Tensor, target: torch.Tensor, kept: torch.Tensor
    ) -> None:
        """Add a batch to ``s`` (per-token hidden sums), ``m`` (counts), ``Q`` (code mass)."""
        lc = lc.detach().reshape(-1, self.codebook_size)
        dt = lc.dtype
        if self._token_sums is None:
            self._token_sums = lc.new_zeros(self.vocab_size, self.hidden_size)
            self._token_counts = lc.new_zeros(self.vocab_size)
            self._code_mass = lc.new_zeros(self.codebook_size)
        assert self._token_counts is not None and self._code_mass is not None  # with the sums
        keep = kept.reshape(-1, 1).to(dt)
        token = torch.where(kept, target, 0).reshape(-1)
        self._token_sums.index_add_(0, token, hidden.detach().reshape(-1, self.hidden_size) * keep)
        self._token_counts.index_add_(0, token, keep.squeeze(1))
        log_q = lc - torch.logsumexp(lc + self.code_counts.to(dt).log(), dim=-1, keepdim=True)
        self._code_mass.add_((log_q.exp() * keep).sum(0))

    @torch.no_grad()
    def reassign(self) -> int:
        """Move every token seen since the last call to its best-scoring code (``"learned"``).

        Scores ``S[i, k] = s_i . c_k + m_i b_k - Q_k`` (module docstring: the first-order
        change of the training log-likelihood when token ``i`` moves to code ``k``) from the
        statistics gathered by :meth:`cross_entropy` in training mode with the *current*
        codebook; token ``i`` moves when some code scores strictly higher than its own
        (unseen tokens keep their code; a code may become empty, and then drops out of the
        softmax). Updates ``mapping`` and ``code_counts`` in place and releases the
        statistics. Evaluated in chunks of tokens (no (V, K) tensor). Returns the number
        of tokens moved.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> head = VQLogits(8, 40, 4, assignment="learned", generator=g)
            >>> h, t = torch.randn(64, 8, generator=g), torch.randint(0, 40, (64,), generator=g)
            >>> head.cross_entropy(h, t).backward()  # training mode: statistics gathered
            >>> moved = head.reassign()
            >>> 0 <= moved <= 40 and int(head.code_counts.sum()) == 40
            True
        """
        if self.assignment != "learned":
            raise RuntimeError(
                f"reassign() needs a head built with assignment='learned', this one has "
                f"assignment={self.assignment!r}"
            )
        if self._token_sums is None:
            return 0
        sums, counts, mass = self._token_sums, self._token_counts, self._code_mass
        assert counts is not None and mass is not None  # allocated with the sums
        codebook = dtensor.full_detached("codebook", self.codebook).to(sums.dtype)
        bias = dtensor.full_detached("bias", self.bias)
        bias = None if bias is None else bias.detach().to(sums.dtype)
        new = self.mapping.clone()
        step = max(1, 2**22 // self.codebook_size)
        for lo in range(0, self.vocab_size, step):
            rows = slice(lo, min(lo + step, self.vocab_size))
            score = sums[rows] @ codebook.T - mass
            if bias is not None:
                score.addcmul_(counts[rows, None], bias)
            best_score, best = score.max(1)
            own = score.gather(1, self.mapping[rows, None]).squeeze(1)
            move = (counts[rows] > 0) & (best_score > own)
            new[rows] = torch.where(move, best, self.mapping[rows])
        moved = int((new != self.mapping).sum())
        self.mapping.copy_(new)
        self.code_counts.copy_(torch.bincount(new, minlength=self.codebook_size))
        self._token_sums = self._token_counts = self._code_mass = None
        return moved

    def num_parameters(self) -> int:
        """Learned parameters: ``K d`` (+ ``K`` with a bias). The map is a buffer of V int64
        (not counted).

        Example:
            >>> VQLogits(768, 50257, 1024).num_parameters()
            786432
        """
        return self.codebook_size * self.hidden_size + (
            self.codebook_size if self.bias is not None else 0
        )

    @staticmethod
    def linear_num_parameters(hidden_size: int, vocab_size: int, bias: bool = False) -> int:
        """Parameters of ``nn.Linear(hidden_size, vocab_size, bias=bias)``: ``V d`` (+ ``V``).

        Example:
            >>> VQLogits.linear_num_parameters(768, 50257)
            38597376
        """
        v.check_bool("bias", bias)
        return vocab_size * hidden_size + (vocab_size if bias else 0)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, vocab_size={self.vocab_size}, "
            f"codebook_size={self.codebook_size}, assignment={self.assignment!r}, "
            f"bias={self.bias is not None}"
        )


class _ShapeOnly:
    """Stand-in for a (..., V) logits tensor in ``check_class_target``: it reads only the
    shape (never allocates (..., V))."""

    def __init__(self, batch_shape: torch.Size, vocab_size: int) -> None:
        self.shape = torch.Size(tuple(batch_shape) + (vocab_size,))
