"""softmaxkit: everything at and around the softmax, from recent papers, for PyTorch.

The maps of :mod:`softmaxkit.functional` are re-exported here; the other parts are
sub-packages (:mod:`softmaxkit.losses`, :mod:`softmaxkit.heads`,
:mod:`softmaxkit.attention`, :mod:`softmaxkit.quant`, :mod:`softmaxkit.distributed`,
:mod:`softmaxkit.dynamics`, :mod:`softmaxkit.labels`, :mod:`softmaxkit.ood`,
:mod:`softmaxkit.calibration`, :mod:`softmaxkit.moe`, :mod:`softmaxkit.sparsity`).
``softmaxkit.set_backend("compile")`` (or ``with softmaxkit.use_backend("compile"):``) runs
every map and loss through ``torch.compile``, compiled once per shape, eager where no
compiler is available; :func:`softmaxkit.get_backend` reads the setting.
"""

import re as _re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path as _Path

from softmaxkit import (
    attention,
    calibration,
    distributed,
    dynamics,
    functional,
    heads,
    labels,
    losses,
    moe,
    ood,
    quant,
    sparsity,
)
from softmaxkit._ops.backend import get_backend, set_backend, use_backend
from softmaxkit.functional import *  # noqa: F403
from softmaxkit.functional import __all__ as _functional_all


def _version() -> str:
    """The version, written only in pyproject.toml: read from it in a source checkout
    (so an older editable install's metadata cannot disagree), else from the installed
    distribution's metadata (a wheel carries no pyproject.toml)."""
    pyproject = _Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        if _re.search(r'^name = "softmaxkit"$', text, _re.M):
            found = _re.search(r'^version = "([^"]+)"$', text, _re.M)
            if found:
                return found.group(1)
    try:
        return version("softmaxkit")
    except PackageNotFoundError:  # neither a checkout nor installed
        return "0.0.0+unknown"


__version__ = _version()

__all__ = [
    "functional",
    "losses",
    "heads",
    "attention",
    "quant",
    "distributed",
    "dynamics",
    "labels",
    "ood",
    "calibration",
    "moe",
    "sparsity",
    "__version__",
    "set_backend",
    "get_backend",
    "use_backend",
    *_functional_all,
]
