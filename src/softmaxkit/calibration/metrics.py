r"""Calibration metrics: ECE family, class-wise ECE, Brier score, NLL, reliability curve.

Every metric takes ``input`` of shape ``(N, C)``: logits by default, probabilities with
``from_logits=False`` (entries in [0, 1], rows summing to 1 within ``sqrt(eps)`` of the
input dtype, at least ``1e-6``), and ``target`` of shape ``(N,)``: class indices of any
integer dtype (int8 ... int64, uint8; bool and floating labels raise ``TypeError``).

**Probabilities passed as logits.** With the default ``from_logits=True``, an input whose
entries all lie in [0, 1] with every row summing to 1 (within the tolerance above, C >= 2)
is almost surely probabilities, which a second softmax would flatten: the metrics then
warn (``UserWarning``, once per call site under Python's default filter) and compute on
the input as logits, as asked. Checked on CPU tensors outside ``torch.compile``.

**Dtypes.** float16/bfloat16 inputs are computed in float32; every metric returns a
float32 tensor for float16/bfloat16/float32 inputs and float64 for float64 inputs. This
departs on purpose from the "return the input dtype" rule of the maps: a metric
summarises many samples, and a half-precision ECE would keep three significant digits
(torchmetrics also returns float32).

**Gradients.** These metrics are evaluation quantities and not differentiable by
contract: binning is piecewise constant, and the inputs are detached.

**Empty input.** ``N = 0`` gives NaN for the mean-type results (as ``torch.mean`` does),
0 for ``reduction="sum"`` and an empty tensor for ``reduction="none"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype

__all__ = [
    "ReliabilityCurve",
    "brier_score",
    "classwise_calibration_error",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_curve",
]

NORMS = ("l1", "l2", "max")
BINNINGS = ("uniform", "adaptive")
#: entries per row block when reducing logits to top-label confidences (8 MiB of float64)
_BLOCK = 1 << 20


class ReliabilityCurve(NamedTuple):
    """Per-bin data of a reliability diagram (an immutable named tuple).

    Attributes:
        bin_edges: ``(n_bins + 1,)`` bin boundaries in [0, 1] (non-decreasing).
        confidence: ``(n_bins,)`` mean top-label confidence of each bin; **NaN for an
            empty bin**.
        accuracy: ``(n_bins,)`` fraction of correct top-label predictions in each bin;
            **NaN for an empty bin**.
        count: ``(n_bins,)`` int64 number of samples in each bin.
    """

    bin_edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor  # type: ignore[assignment]  # public field name; shadows tuple.count


def _check_inputs(
    input: object, target: object, from_logits: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked ``(input, target)``; ``target`` as int64 whatever its integer dtype.

    Logits that look like probabilities (``from_logits=True`` with every entry in [0, 1]
    and rows summing to 1) give a ``UserWarning`` naming ``from_logits=False``.
    """
    V.check_floating("input", input)
    assert isinstance(input, torch.Tensor)
    V.check_bool("from_logits", from_logits)
    if input.ndim != 2:
        raise ValueError(f"input must have shape (N, C), got shape {tuple(input.shape)}")
    if input.shape[1] < 1:
        raise ValueError(f"input must have at least one class (C >= 1), got C = {input.shape[1]}")
    target = V.check_class_indices("target", target, (input.shape[0],), input.shape[1])
    if target.device != input.device:
        raise ValueError(
            f"target must be on the input's device {input.device}, got {target.device}"
        )
    atol = V.probability_atol(input.dtype)
    if from_logits:
        V.check_logit_input("input", input, "from_logits", atol)
    else:
        V.check_probability_rows("input", input, atol)
    return input, target


def _check_binning(n_bins: object, binning: object) -> None:
    V.check_int("n_bins", n_bins, low=1)
    V.check_choice("binning", binning, BINNINGS)


def _probabilities(input: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Softmax (or the given probabilities) in the compute dtype, detached."""
    x = input.detach().to(compute_dtype(input))
    return torch.softmax(x, dim=-1) if from_logits else x


def _row_starts(n: int, c: int) -> tuple[range, int]:
    step = max(1, _BLOCK // max(c, 1))
    return range(0, n, step), step


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    """Bin sums are accumulated in float64 (exact counts, no drift over 10^6 samples),
    except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _per_sample(
    input: torch.Tensor,
    target: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``fn(block, target_block)`` over row blocks in the compute dtype, as an (N,) tensor."""
    x = input.detach()
    dtype = compute_dtype(x)
    out = torch.empty(x.shape[0], dtype=dtype, device=x.device)
    starts, step = _row_starts(*x.shape)
    for start in starts:
        block = x[start : start + step].to(dtype)
        out[start : start + step] = fn(block, target[start : start + step])
    return out


def _top_label(input: torch.Tensor, from_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label confidence ``max_k p_k`` and predicted class, one row block at a time.

    From logits: the max entry of ``softmax`` of each block of rows (a few MiB, so it
    stays in cache and no ``N x C`` probability tensor is ever formed).
    """
    x = input.detach()
    dtype = compute_dtype(x)
    n, c = x.shape
    if not from_logits:
        conf, pred = x.max(dim=-1)
        return conf.to(dtype), pred
    conf = torch.empty(n, dtype=dtype, device=x.device)
    pred = torch.empty(n, dtype=torch.long, device=x.device)
    step = max(1, _BLOCK // max(c, 1))
    for start in range(0, n, step):
        top, arg = torch.softmax(x[start : start + step].to(dtype), dim=-1).max(dim=-1)
        conf[start : start + step] = top
        pred[start : start + step] = arg
    return conf, pred


def _uniform_bins(values: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-width bins on [0, 1]: bin b holds ``edge_b <= v < edge_{b+1}``; v = 1 -> last bin.

    torchmetrics' convention (``bucketize(v, linspace(0, 1, n_bins + 1), right=True) - 1``),
    with the index clamped to ``n_bins - 1`` so that ``v == 1`` joins the last bin
    instead of forming the extra bin torchmetrics allocates for it.
    """
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=values.dtype, device=values.device)
    # bucketize copies a strided input itself, with a performance warning: copy it here
    # (a no-op for the contiguous blocks the metrics usually pass)
    idx = torch.bucketize(values.contiguous(), edges, right=True) - 1
    return edges, idx.clamp_(0, n_bins - 1)


def _adaptive_bins(
    values: torch.Tensor, n_bins: int, dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-mass bins along ``dim``: the sample of rank r (stable sort) goes to bin
    ``floor(r * n_bins / N)``, so each bin holds ``floor(N / n_bins)`` or
    ``ceil(N / n_bins)`` samples (ties may be split between neighbouring bins).

    Edges (for 1-D ``values``): 0, the midpoints between the largest value of one bin and
    the smallest of the next, and 1. With no samples the edges are the uniform ones.
    """
    n = values.shape[dim]
    sorted_vals, order = torch.sort(values, dim=dim, stable=True)
    ranks = torch.arange(n, device=values.device)
    bins_sorted = (ranks * n_bins) // max(n, 1)
    shape = [1] * values.ndim
    shape[dim] = n
    bins_sorted = bins_sorted.view(shape).expand_as(order)
    idx = torch.empty_like(order).scatter_(dim, order, bins_sorted)
    if values.ndim != 1 or n == 0:
        edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=values.dtype, device=values.device)
        return edges, idx
    b = torch.arange(1, n_bins, device=values.device)
    start = (b * n + n_bins - 1) // n_bins  # first rank of bin b
    hi = start.clamp(max=n - 1)
    lo = (start - 1).clamp(min=0, max=n - 1)
    inner = (sorted_vals[lo] + sorted_vals[hi]) / 2
    one = torch.ones(1, dtype=values.dtype, device=values.device)
    edges = torch.cat([one * 0, inner, one])
    return edges, idx


def _bin(values: torch.Tensor, n_bins: int, binning: str) -> tuple[torch.Tensor, torch.Tensor]:
    if binning == "uniform":
        return _uniform_bins(values, n_bins)
    return _adaptive_bins(values, n_bins)


def _bin_sums(
    idx: torch.Tensor, values: torch.Tensor, hits: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scatter pass: per-bin (count, sum of values, sum of hits)."""
    sums = torch.zeros(size, 3, dtype=_accumulation_dtype(values.device), device=values.device)
    _add_to_bins(sums, idx, values, hits)
    return sums[:, 0], sums[:, 1], sums[:, 2]


def _add_to_bins(
    sums: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, hits: torch.Tensor
) -> None:
    v = values.to(sums.dtype)
    src = torch.stack([torch.ones_like(v), v, hits.to(sums.dtype)], dim=-1)
    sums.index_add_(0, idx.reshape(-1), src.reshape(-1, 3))


def _reduce_norm(
    count: torch.Tensor, conf_sum: torch.Tensor, hit_sum: torch.Tensor, n: int, norm: str
) -> torch.Tensor:
    """Calibration error over the last axis of per-bin sums (empty bins contribute 0)."""
    safe = count.clamp(min=1)
    gap = (hit_sum / safe - conf_sum / safe).abs()  # 0 for empty bins
    if n == 0:
        return torch.full(count.shape[:-1], math.nan, dtype=count.dtype, device=count.device)
    weight = count / n
    if norm == "l1":
        return (weight * gap).sum(dim=-1)
    if norm == "l2":
        return (weight * gap.square()).sum(dim=-1).sqrt()
    return gap.amax(dim=-1)


def _top_label_bins(
    input: torch.Tensor, target: torch.Tensor, n_bins: int, binning: str, from_logits: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    conf, pred = _top_label(input, from_logits)
    edges, idx = _bin(conf, n_bins, binning)
    count, conf_sum, hit_sum = _bin_sums(idx, conf, pred == target, n_bins)
    return edges, count, conf_sum, hit_sum


def expected_calibration_error(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    from_logits: bool = True,
) -> torch.Tensor:
    r"""Top-label expected calibration error (ECE) and its l2 / max variants.

    With top-label confidence :math:`c_i = \max_k p_{ik}`, prediction
    :math:`\hat y_i = \arg\max_k p_{ik}`, bins :math:`B_b`, :math:`n_b = |B_b|`,
    :math:`\mathrm{acc}_b = \frac1{n_b}\sum_{i\in B_b} 1[\hat y_i = y_i]` and
    :math:`\mathrm{conf}_b = \frac1{n_b}\sum_{i\in B_b} c_i`:

    * ``"l1"`` (ECE): :math:`\sum_b \frac{n_b}{N}\,|\mathrm{acc}_b - \mathrm{conf}_b|`
    * ``"l2"`` (RMSCE, torchmetrics' definition):
      :math:`\sqrt{\sum_b \frac{n_b}{N}(\mathrm{acc}_b - \mathrm{conf}_b)^2}`
    * ``"max"`` (MCE): :math:`\max_{b:\,n_b>0} |\mathrm{acc}_b - \mathrm{conf}_b|`

    Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
    Binning", AAAI 2015 (ECE, MCE); Guo, Pleiss, Sun & Weinberger, "On Calibration of
    Modern Neural Networks", ICML 2017, arXiv:1706.04599 (15 bins, the default here).

    Binning: ``"uniform"`` = ``n_bins`` equal-width bins on [0, 1] with torchmetrics'
    convention (``multiclass_calibration_error``): bin b holds
    :math:`\mathrm{edge}_b \le c < \mathrm{edge}_{b+1}` with
    ``edges = linspace(0, 1, n_bins + 1)`` in the compute dtype. One difference: a
    confidence of exactly 1 goes to the last bin here, while torchmetrics puts it in an
    extra (n_bins+1)-th bin of its own, so values differ when some ``c_i == 1`` (saturated
    softmax) and agree otherwise. ``"adaptive"`` = equal-mass bins (Nixon et al.,
    "Measuring Calibration in Deep Learning", 2019, arXiv:1904.01685): after a stable sort
    by confidence, bin b holds the samples of rank ``r`` with
    ``floor(r * n_bins / N) == b``, i.e. ``floor`` or ``ceil`` of ``N / n_bins`` each.
    Ties of ``max_k p_k`` pick the class ``torch.max`` returns.

    Args:
        input: ``(N, C)`` float logits (``from_logits=True``) or probabilities.
        target: ``(N,)`` integer class indices in ``[0, C)``.
        n_bins: number of bins, >= 1. Default 15 (Guo et al. 2017; torchmetrics).
        norm: ``"l1"``, ``"l2"`` or ``"max"``. Default ``"l1"``.
        binning: ``"uniform"`` or ``"adaptive"``. Default ``"uniform"``.
        from_logits: whether ``input`` holds logits. Default True.

    Returns:
        0-d tensor in [0, 1] (float32, or float64 for float64 input); NaN when ``N = 0``.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import expected_calibration_error
        >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.7, 0.3], [0.7, 0.3]])
        >>> y = torch.tensor([0, 1, 0, 0])
        >>> expected_calibration_error(p, y, n_bins=5, from_logits=False)
        tensor(0.3500)
    """
    input, target = _check_inputs(input, target, from_logits)
    _check_binning(n_bins, binning)
    V.check_choice("norm", norm, NORMS)
    _, count, conf_sum, hit_sum = _top_label_bins(input, target, n_bins, binning, from_logits)
    ece = _reduce_norm(count, conf_sum, hit_sum, input.shape[0], norm)
    return ece.to(compute_dtype(input))


def reliability_curve(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    binning: str = "uniform",
    from_logits: bool = True,
) -> ReliabilityCurve:
    r"""Per-bin mean confidence, accuracy and count of the top-label prediction.

    The data of a reliability diagram (DeGroot & Fienberg 1983; Niculescu-Mizil & Caruana,
    ICML 2005; Guo et al. 2017, arXiv:1706.04599, Fig. 1), with exactly the bins of
    :func:`expected_calibration_error`, so
    ``ECE = sum_b count_b / N * |accuracy_b - confidence_b|`` over the non-empty bins.

    Args:
        input: ``(N, C)`` float logits (``from_logits=True``) or probabilities.
        target: ``(N,)`` integer class indices in ``[0, C)``.
        n_bins: number of bins, >= 1. Default 15.
        binning: ``"uniform"`` (equal width) or ``"adaptive"`` (equal mass). Default
            ``"uniform"``.
        from_logits: whether ``input`` holds logits. Default True.

    Returns:
        :class:`ReliabilityCurve` ``(bin_edges, confidence, accuracy, count)``;
        ``confidence`` and ``accuracy`` are **NaN for empty bins**. For adaptive bins the
        inner edges are midpoints between neighbouring bins' extreme confidences.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import reliability_curve
        >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.7, 0.3], [0.7, 0.3]])
        >>> curve = reliability_curve(p, torch.tensor([0, 1, 0, 0]), n_bins=5, from_logits=False)
        >>> curve.count
        tensor([0, 0, 0, 2, 2])
        >>> curve.accuracy
        tensor([   nan,    nan,    nan, 1.0000, 0.5000])
    """
    input, target = _check_inputs(input, target, from_logits)
    _check_binning(n_bins, binning)
    edges, count, conf_sum, hit_sum = _top_label_bins(input, target, n_bins, binning, from_logits)
    dtype = compute_dtype(input)
    return ReliabilityCurve(
        edges, (conf_sum / count).to(dtype), (hit_sum / count).to(dtype), count.round().long()
    )


def classwise_calibration_error(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    from_logits: bool = True,
) -> torch.Tensor:
    r"""Class-wise ECE: the mean over classes of the calibration error of ``p_k`` vs ``1[y = k]``.

    .. math::
        \text{cw-ECE} = \frac1C \sum_{k=1}^{C} \sum_b \frac{|B_{k,b}|}{N}
        \Big|\frac{1}{|B_{k,b}|}\sum_{i\in B_{k,b}} 1[y_i = k]
        - \frac{1}{|B_{k,b}|}\sum_{i\in B_{k,b}} p_{ik}\Big|

    where :math:`B_{k,b}` is bin b of the class-k probabilities. Kull, Perello-Nieto,
    Kängsepp, Silva Filho, Song & Flach, "Beyond temperature scaling: Obtaining
    well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS 2019,
    arXiv:1910.12656. ``norm="l2"`` / ``"max"`` replace the inner sum per class as in
    :func:`expected_calibration_error` before the mean over classes.

    Bins are those of :func:`expected_calibration_error` (uniform: ``n_bins`` equal-width
    bins on [0, 1], :math:`\mathrm{edge}_b \le p < \mathrm{edge}_{b+1}`, p = 1 in the last
    bin; adaptive: equal-mass bins per class). The authors' evaluation code
    (dirichletcal/experiments_dnn ``classwise_ECE``) bins with
    ``np.digitize(p, linspace(0, 1, bins))``, i.e. ``bins - 1`` equal-width bins plus a bin
    for p = 1 exactly, and its ``power=2`` variant takes no square root; this function
    follows the paper's definition with ``n_bins`` bins instead. All classes are binned in
    one vectorised scatter over a ``(C, n_bins)`` table, row block by row block for
    uniform bins; adaptive bins sort every class over all N samples, which needs the full
    ``(N, C)`` probabilities and an int64 ``(N, C)`` index in memory.

    Arguments and result as :func:`expected_calibration_error`, with ``n_bins`` bins per
    class (default 15, the paper's experiments).

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import classwise_calibration_error
        >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.7, 0.3], [0.7, 0.3]])
        >>> classwise_calibration_error(p, torch.tensor([0, 1, 0, 0]), n_bins=5, from_logits=False)
        tensor(0.3500)
    """
    input, target = _check_inputs(input, target, from_logits)
    _check_binning(n_bins, binning)
    V.check_choice("norm", norm, NORMS)
    n, c = input.shape
    classes = torch.arange(c, device=input.device)
    offsets = classes * n_bins  # entry (i, k) -> row k * n_bins + bin of the (C, n_bins) table
    sums = torch.zeros(c * n_bins, 3, dtype=_accumulation_dtype(input.device), device=input.device)
    if binning == "uniform":  # row blocks: memory stays at one block of probabilities
        x = input.detach()
        starts, step = _row_starts(n, c)
        for start in starts:
            p = _probabilities(x[start : start + step], from_logits)
            _, idx = _uniform_bins(p, n_bins)
            hits = classes == target[start : start + step].unsqueeze(-1)
            _add_to_bins(sums, idx + offsets, p, hits)
    else:  # equal-mass bins need each class sorted over all N samples
        p = _probabilities(input, from_logits)
        _, idx = _adaptive_bins(p, n_bins, dim=0)
        _add_to_bins(sums, idx + offsets, p, classes == target.unsqueeze(-1))
    count, conf_sum, hit_sum = sums.view(c, n_bins, 3).unbind(-1)
    per_class = _reduce_norm(count, conf_sum, hit_sum, n, norm)
    return per_class.mean().to(compute_dtype(input))


def brier_score(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    from_logits: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multiclass Brier score: :math:`\sum_k (p_k - 1[y = k])^2` per sample.

    Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather
    Review 78(1), 1950. Convention: the squared error is **summed over classes, not
    divided by C** (Brier's original definition, range [0, 2]; scikit-learn's multiclass
    ``brier_score_loss``); some code (e.g. the Dirichlet-calibration experiments) divides
    by C. The difference ``p - onehot`` is formed explicitly, so a near one-hot
    prediction keeps full relative precision.

    Args:
        input: ``(N, C)`` float logits (``from_logits=True``) or probabilities.
        target: ``(N,)`` integer class indices in ``[0, C)``.
        from_logits: whether ``input`` holds logits. Default True.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over samples. Default ``"mean"``.

    Returns:
        0-d tensor, or ``(N,)`` for ``reduction="none"`` (float32, or float64 for float64
        input).

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import brier_score
        >>> p = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
        >>> brier_score(p, torch.tensor([0, 1]), from_logits=False, reduction="none")
        tensor([0.0200, 0.9800])
    """
    input, target = _check_inputs(input, target, from_logits)
    V.check_reduction(reduction)

    def block_brier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(x, dim=-1) if from_logits else x.clone()  # x may be the input
        minus_one = torch.full((x.shape[0], 1), -1.0, dtype=p.dtype, device=p.device)
        return p.scatter_add_(1, t.unsqueeze(-1), minus_one).square().sum(dim=-1)

    per_sample = _per_sample(input, target, block_brier)
    return _reduce(per_sample, reduction)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def negative_log_likelihood(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    from_logits: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Negative log-likelihood of the target class: :math:`-\log p_y`.

    From logits it is :math:`\mathrm{LSE}(z) - z_y` via ``log_softmax`` (exact for logits
    of any magnitude, e.g. +-1e4; a ``-inf`` target logit gives ``inf``). From
    probabilities it is :math:`-\log \max(p_y, \mathrm{tiny})` with ``tiny`` the smallest
    normal number of the compute dtype (float32: 1.18e-38, so at most 87.3; float64:
    2.2e-308, at most 708.4); scikit-learn's ``log_loss`` clips at ``eps`` instead
    (at most 36.0 in float64), so the two differ only where :math:`p_y < 2.2\cdot10^{-16}`.
    Equals ``torch.nn.functional.cross_entropy`` on logits. Arguments and result as
    :func:`brier_score`.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import negative_log_likelihood
        >>> negative_log_likelihood(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor(0.6931)
    """
    input, target = _check_inputs(input, target, from_logits)
    V.check_reduction(reduction)

    def block_nll(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if from_logits:
            return F.cross_entropy(x, t, reduction="none")
        p_y = x.gather(1, t.unsqueeze(-1)).squeeze(-1)
        return -torch.log(p_y.clamp(min=torch.finfo(x.dtype).tiny))

    per_sample = _per_sample(input, target, block_nll)
    return _reduce(per_sample, reduction)
