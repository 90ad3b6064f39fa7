"""Training dynamics: Softmax Collapse detection and the perpendicular-gradient optimizer."""

from softmaxkit.dynamics.collapse import (
    SoftmaxCollapse,
    softmax_collapse,
    softmax_collapse_fraction,
)
from softmaxkit.dynamics.perpgrad import PerpGrad

__all__ = ["softmax_collapse_fraction", "softmax_collapse", "SoftmaxCollapse", "PerpGrad"]
