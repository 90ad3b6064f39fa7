"""A missing optional package raises an ImportError that names the extra to install.
The missing module is simulated with ``sys.modules[name] = None``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from softmaxkit.cli._extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[2]


def _missing(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_every_optional_package_is_a_declared_extra():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for dist, extra in EXTRAS.values():
        line = re.search(rf"^{extra} = \[(.*)\]$", text, re.M)
        assert line and re.search(rf'"{dist}([<>=!~][^"]*)?"', line.group(1)), (extra, dist)


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_require_names_the_extra(monkeypatch, module):
    _missing(monkeypatch, module)
    dist, extra = EXTRAS[module]
    with pytest.raises(ImportError, match=re.escape(f"pip install 'softmaxkit[{extra}]'")):
        require(module, "this feature")


def test_builtin_report_task_without_sklearn(monkeypatch):
    from softmaxkit.cli.report_task import builtin_task

    _missing(monkeypatch, "sklearn", "sklearn.datasets")
    with pytest.raises(ImportError, match=re.escape("pip install 'softmaxkit[report]'")):
        builtin_task()


def test_report_plots_without_matplotlib(monkeypatch):
    import torch

    from softmaxkit.cli.report_html import make_plots

    _missing(monkeypatch, "matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg")
    z = torch.zeros(4, 3)
    with pytest.raises(ImportError, match=re.escape("pip install 'softmaxkit[report]'")):
        make_plots(z, torch.zeros(4, dtype=torch.long), z, 5, None)


def test_report_command_without_matplotlib(monkeypatch, tmp_path, capsys):
    from softmaxkit.cli.main import main

    _missing(monkeypatch, "matplotlib")
    code = main(["report", "--out", str(tmp_path)])
    assert code != 0
    assert "pip install 'softmaxkit[report]'" in capsys.readouterr().err


def test_calibration_plot_without_matplotlib(monkeypatch):
    import torch

    from softmaxkit.calibration import plot_reliability_diagram

    _missing(monkeypatch, "matplotlib", "matplotlib.axes", "matplotlib.figure")
    with pytest.raises(ImportError, match=re.escape("pip install 'softmaxkit[plot]'")):
        plot_reliability_diagram(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
