"""Imports of optional packages that name the extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

#: optional package (import name) -> (distribution name, softmaxkit extra that installs it)
EXTRAS = {
    "matplotlib": ("matplotlib", "plot"),
    "sklearn": ("scikit-learn", "report"),
    "transformers": ("transformers", "hf"),
}


def require(name: str, needed_for: str, extra: str | None = None) -> ModuleType:
    """Import the optional module ``name`` (e.g. ``"sklearn.datasets"``); when it is missing,
    raise an ImportError naming ``pip install 'softmaxkit[<extra>]'``."""
    top = name.partition(".")[0]
    dist, default_extra = EXTRAS[top]
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"{needed_for} requires {dist}, which is not installed: "
            f"pip install 'softmaxkit[{extra or default_extra}]'"
        ) from err
