"""The one L-BFGS set-up of the package's small convex fits (calibration scalers, the
Mahalanobis ensemble's logistic regression, GLAD's M-step).

Each fit minimises a smooth objective of a few float64 parameters with
``torch.optim.LBFGS`` at learning rate 1 and a strong-Wolfe line search; only the
iteration cap, the tolerances and the history length differ between callers, and each
caller states its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def lbfgs(
    params: Iterable[torch.Tensor],
    *,
    max_iter: int,
    tolerance_grad: float,
    tolerance_change: float,
    history_size: int = 100,
) -> torch.optim.LBFGS:
    """``torch.optim.LBFGS(params, lr=1, line_search_fn="strong_wolfe")`` with the given
    iteration cap (per ``step``), tolerances and history (default 100, torch's)."""
    return torch.optim.LBFGS(
        list(params),
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )
