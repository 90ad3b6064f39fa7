"""Training dynamics: Softmax Collapse detection and monitoring, the perpendicular-gradient
optimizer, and the key-space diagnostics of a softmax output layer."""

from softmaxkit.dynamics.collapse import (
    SoftmaxCollapse,
    softmax_collapse,
    softmax_collapse_fraction,
)
from softmaxkit.dynamics.key_space import KeySpaceReport, KeySpaceSummary, key_space_report
from softmaxkit.dynamics.monitor import CollapseMonitor, CollapseRecord
from softmaxkit.dynamics.perpgrad import PerpGrad

__all__ = [
    "softmax_collapse_fraction",
    "softmax_collapse",
    "SoftmaxCollapse",
    "PerpGrad",
    "key_space_report",
    "KeySpaceReport",
    "KeySpaceSummary",
    "CollapseMonitor",
    "CollapseRecord",
]
