"""Small seeded inputs for the contract cases: built in float64, then cast, so every dtype
sees the same values (rounded)."""

from __future__ import annotations

import numpy as np
import torch


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def rand(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)


def labels(*shape: int, classes: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(classes, shape, generator=g)


def probs(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 2) -> torch.Tensor:
    return torch.softmax(randn(*shape, seed=seed), -1).to(dtype)


def keep(*shape: int, seed: int = 3, p: float = 0.3) -> torch.Tensor:
    """A boolean keep-mask with about ``p`` of the entries dropped."""
    return rand(*shape, seed=seed) > p


def np64(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)
