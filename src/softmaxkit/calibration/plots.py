"""Reliability diagram and confidence histogram (matplotlib, an optional extra).

Both draw on a ``matplotlib.figure.Figure`` (or a given ``Axes``) without touching
pyplot's global state, so they are safe under the Agg backend, in threads and in
servers. matplotlib is imported inside the functions; without it they raise an
``ImportError`` naming the extra to install (``pip install 'softmaxkit[plot]'``).
"""

from __future__ import annotations

from typing import Any

import torch

from softmaxkit import _validation as V
from softmaxkit.calibration.metrics import (
    _check_inputs,
    _top_label,
    expected_calibration_error,
    reliability_curve,
)

__all__ = ["plot_confidence_histogram", "plot_reliability_diagram"]


def _figure_and_axes(ax: Any, caller: str) -> tuple[Any, Any]:
    try:
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"{caller} requires matplotlib: pip install 'softmaxkit[plot]'") from err
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5))
        return fig, fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.figure, ax


def _check_title(title: object) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")


def plot_reliability_diagram(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    binning: str = "uniform",
    from_logits: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Reliability diagram: accuracy per confidence bin against the diagonal.

    The plot of Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
    arXiv:1706.04599, Fig. 1 (bottom row): one bar per bin (spanning the bin's edges,
    so adaptive bins get their own widths) with height = accuracy of the bin, the
    identity line of perfect calibration, and the gap between accuracy and mean
    confidence shaded; the legend gives the ECE (l1, same bins). Empty bins draw nothing.
    Data from :func:`~softmaxkit.calibration.reliability_curve`.

    Args:
        input: ``(N, C)`` float logits (``from_logits=True``) or probabilities.
        target: ``(N,)`` integer class indices.
        n_bins: number of bins. Default 15.
        binning: ``"uniform"`` or ``"adaptive"``. Default ``"uniform"``.
        from_logits: whether ``input`` holds logits. Default True.
        ax: a matplotlib ``Axes`` to draw on, or None for a new ``Figure``.
        title: optional axes title.

    Returns:
        The ``matplotlib.figure.Figure`` drawn on.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import plot_reliability_diagram
        >>> fig = plot_reliability_diagram(torch.randn(100, 4), torch.randint(0, 4, (100,)))
        >>> type(fig).__name__
        'Figure'
    """
    _check_title(title)
    curve = reliability_curve(
        input, target, n_bins=n_bins, binning=binning, from_logits=from_logits
    )
    ece = expected_calibration_error(
        input, target, n_bins=n_bins, binning=binning, from_logits=from_logits
    )
    fig, axes = _figure_and_axes(ax, "plot_reliability_diagram")
    edges = curve.bin_edges.detach().double().cpu()
    left, width = edges[:-1], edges[1:] - edges[:-1]
    full = curve.count.cpu() > 0
    acc = curve.accuracy.detach().double().cpu()[full]
    conf = curve.confidence.detach().double().cpu()[full]
    bar_left, bar_width = left[full].tolist(), width[full].tolist()
    axes.bar(
        bar_left,
        acc.tolist(),
        width=bar_width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="Accuracy",
    )
    axes.bar(
        bar_left,
        (conf - acc).tolist(),
        bottom=acc.tolist(),
        width=bar_width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.5,
        label="Gap",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="Perfect calibration")
    axes.plot([], [], " ", label=f"ECE = {float(ece):.4f}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("Confidence")
    axes.set_ylabel("Accuracy")
    axes.legend(loc="upper left")
    if title is not None:
        axes.set_title(title)
    return fig


def plot_confidence_histogram(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    from_logits: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Histogram of top-label confidences with the mean confidence and the accuracy.

    The plot of Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
    arXiv:1706.04599, Fig. 1 (top row): the fraction of samples per equal-width
    confidence bin on [0, 1], and vertical lines at the accuracy and the average
    confidence (a gap between them means mis-calibration on average). Arguments and
    result as :func:`plot_reliability_diagram`, the ``n_bins`` bins always of equal width.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration import plot_confidence_histogram
        >>> fig = plot_confidence_histogram(torch.randn(100, 4), torch.randint(0, 4, (100,)))
        >>> fig.axes[0].get_xlabel()
        'Confidence'
    """
    _check_title(title)
    input, target = _check_inputs(input, target, from_logits)
    V.check_int("n_bins", n_bins, low=1)
    fig, axes = _figure_and_axes(ax, "plot_confidence_histogram")
    conf, pred = _top_label(input, from_logits)
    n = conf.numel()
    conf64 = conf.detach().double().cpu()
    weights = torch.full_like(conf64, 1.0 / max(n, 1))
    axes.hist(
        conf64.numpy(),
        bins=n_bins,
        range=(0.0, 1.0),
        weights=weights.numpy(),
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
    )
    if n > 0:
        accuracy = float((pred == target).double().mean())
        mean_conf = float(conf64.mean())
        axes.axvline(accuracy, color="black", linestyle="--", label=f"Accuracy = {accuracy:.3f}")
        axes.axvline(
            mean_conf, color="tab:red", linestyle="--", label=f"Avg. confidence = {mean_conf:.3f}"
        )
        axes.legend(loc="upper left")
    axes.set_xlim(0, 1)
    axes.set_xlabel("Confidence")
    axes.set_ylabel("Fraction of samples")
    if title is not None:
        axes.set_title(title)
    return fig
