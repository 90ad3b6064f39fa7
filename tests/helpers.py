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


def numeric_grad(fn, row, h=1e-6):
    """Central differences of the float64 reference ``fn(row) -> value`` w.r.t. the finite
    entries of ``row`` (0 at the -inf ones)."""
    out = np.zeros_like(row)
    for k in np.flatnonzero(np.isfinite(row)):
        hi, lo = row.copy(), row.copy()
        hi[k] += h
        lo[k] -= h
        out[k] = (float(fn(hi)) - float(fn(lo))) / (2 * h)
    return out


def spy_fallback(monkeypatch, module):
    """Record the rows each fast kernel call hands to the exact kernel."""
    flagged, real = [], module.redo_rows

    def redo_rows(bad, values, exact):
        flagged.append(bad.clone())
        real(bad, values, exact)

    monkeypatch.setattr(module, "redo_rows", redo_rows)
    return flagged


def loss_and_grads(fn, weights, *inputs):
    """Per-row losses and the gradients of their ``weights``-weighted sum over finite rows."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(*xs)
    finite = torch.isfinite(loss)
    grads = torch.autograd.grad((loss[finite] * weights[finite]).sum(), xs)
    return loss.detach(), grads
