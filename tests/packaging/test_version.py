"""The version is written once (pyproject.toml); everything else agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import softmaxkit
from softmaxkit.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version = "([^"]+)"$', text, re.M).group(1)


def test_package_version_is_the_pyproject_version():
    assert softmaxkit.__version__ == _pyproject_version()


def test_changelog_top_version_is_the_package_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    top = re.search(r"^## \[?(\d+\.\d+\.\d+[^\]\s]*)", text, re.M)
    assert top, "CHANGELOG.md has no '## <version>' heading"
    assert top.group(1) == softmaxkit.__version__


def test_cli_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"softmaxkit {softmaxkit.__version__}"


def test_the_softmaxkit_command_is_declared():
    """The console script the README's commands run (a merge once dropped it silently)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?:\n\[|\Z)", text, re.M | re.S)
    assert scripts and 'softmaxkit = "softmaxkit.cli.main:main"' in scripts.group(1)
