"""Small helpers shared by the test files."""

from __future__ import annotations

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def assert_matches(
    actual: torch.Tensor, expected: np.ndarray, atol: float = 1e-12, rtol: float = 1e-10
):
    np.testing.assert_allclose(np64(actual), expected, atol=atol, rtol=rtol)


def grad_of(fn, x: torch.Tensor, cotangent: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of <fn(x), cotangent> w.r.t. x (default cotangent: a fixed random one)."""
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    if cotangent is None:
        cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    (g,) = torch.autograd.grad(y, x, cotangent.to(y.dtype))
    return g
