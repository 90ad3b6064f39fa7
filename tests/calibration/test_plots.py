"""Reliability diagram and confidence histogram: content, Agg-safety, missing matplotlib."""

from __future__ import annotations

import io
import sys

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from softmaxkit.calibration import (  # noqa: E402
    expected_calibration_error,
    plot_confidence_histogram,
    plot_reliability_diagram,
    reliability_curve,
)


def _data(n=400, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / 2, -1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("binning", ["uniform", "adaptive"])
def test_reliability_diagram_content(binning):
    z, y = _data()
    fig = plot_reliability_diagram(z, y, n_bins=10, binning=binning, title="model A")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    curve = reliability_curve(z, y, n_bins=10, binning=binning)
    full = curve.count > 0
    bars = ax.patches
    assert len(bars) == 2 * int(full.sum())  # accuracy bars + gap bars
    acc_bars = bars[: int(full.sum())]
    heights = torch.tensor([b.get_height() for b in acc_bars], dtype=torch.float64)
    assert torch.allclose(heights, curve.accuracy[full].double(), atol=1e-6)
    lefts = torch.tensor([b.get_x() for b in acc_bars], dtype=torch.float64)
    assert torch.allclose(lefts, curve.bin_edges[:-1][full].double(), atol=1e-6)
    gap_bars = bars[int(full.sum()) :]
    tops = torch.tensor([b.get_y() + b.get_height() for b in gap_bars], dtype=torch.float64)
    assert torch.allclose(tops, curve.confidence[full].double(), atol=1e-6)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    ece = expected_calibration_error(z, y, n_bins=10, binning=binning).item()
    assert f"ECE = {ece:.4f}" in labels and "Perfect calibration" in labels
    diagonal = [line for line in ax.get_lines() if list(line.get_xdata()) == [0, 1]]
    assert diagonal and list(diagonal[0].get_ydata()) == [0, 1]
    assert ax.get_title() == "model A"
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # renders without pyplot (Agg)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draws_on_a_given_axes():
    z, y = _data()
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plot_reliability_diagram(z, y, ax=ax) is fig
    assert plot_confidence_histogram(z, y, ax=fig.add_subplot(1, 2, 1)) is fig
    assert len(fig.axes) == 2 and len(ax.patches) > 0


def test_confidence_histogram_content():
    z, y = _data()
    fig = plot_confidence_histogram(z, y, n_bins=8, title="conf")
    (ax,) = fig.axes
    heights = [b.get_height() for b in ax.patches]
    assert len(heights) == 8 and sum(heights) == pytest.approx(1.0)
    p = torch.softmax(z, -1)
    accuracy = (p.argmax(-1) == y).double().mean().item()
    mean_conf = p.amax(-1).double().mean().item()
    xs = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert xs == pytest.approx(sorted([accuracy, mean_conf]), abs=1e-6)
    assert ax.get_xlabel() == "Confidence" and ax.get_title() == "conf"


def test_probabilities_and_empty_input():
    z, y = _data(n=50)
    fig = plot_reliability_diagram(torch.softmax(z, -1), y, from_logits=False)
    assert isinstance(fig, Figure)
    empty = plot_confidence_histogram(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert isinstance(empty.axes[0], Axes)


@pytest.mark.parametrize("fn", [plot_reliability_diagram, plot_confidence_histogram])
def test_missing_matplotlib_gives_a_clear_import_error(fn, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.axes"):
        monkeypatch.setitem(sys.modules, name, None)
    z, y = _data(n=20)
    with pytest.raises(ImportError, match=r"requires matplotlib: pip install 'softmaxkit\[plot\]'"):
        fn(z, y)


@pytest.mark.parametrize("fn", [plot_reliability_diagram, plot_confidence_histogram])
def test_errors(fn):
    z, y = _data(n=20)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None"):
        fn(z, y, ax="left")
    with pytest.raises(TypeError, match="title must be a str or None"):
        fn(z, y, title=3)
    with pytest.raises(ValueError, match=r"n_bins must be in \[1, inf\], got 0"):
        fn(z, y, n_bins=0)
    with pytest.raises(ValueError, match=r"target must have shape \(20,\)"):
        fn(z, y[:3])
