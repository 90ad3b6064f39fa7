"""softmaxkit: everything at and around the softmax, from recent papers, for PyTorch.

The maps of :mod:`softmaxkit.functional` are re-exported here; the other parts are
sub-packages (:mod:`softmaxkit.losses`, :mod:`softmaxkit.heads`,
:mod:`softmaxkit.attention`, :mod:`softmaxkit.quant`, :mod:`softmaxkit.distributed`,
:mod:`softmaxkit.dynamics`, :mod:`softmaxkit.labels`, :mod:`softmaxkit.ood`,
:mod:`softmaxkit.calibration`, :mod:`softmaxkit.moe`, :mod:`softmaxkit.sparsity`).
"""

from importlib.metadata import PackageNotFoundError, version

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
from softmaxkit.functional import *  # noqa: F403
from softmaxkit.functional import __all__ as _functional_all

try:
    __version__ = version("softmaxkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

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
    *_functional_all,
]
