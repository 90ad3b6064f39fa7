"""Top-k sparse softmax (the gate of sparse mixture-of-experts)."""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, from_rows, maybe_any, upcast
from softmaxkit.functional.two_pass import normalize as normalize_rows

NORMALIZATIONS = ("topk_then_softmax", "softmax_then_topk")


def _stable_topk(z2: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of each row in the stable order (value descending,
    index ascending; NaN the largest, as torch.topk). float32: one topk over int64 keys
    (the value's bits mapped to an order-preserving integer, times the width, plus the
    reversed index); float64: the entries above the k-th value, then the lowest-index ones
    equal to it, sorted by value."""
    n = z2.shape[1]
    if z2.dtype == torch.float32:
        z = torch.where(z2.isnan(), float("nan"), z2 + 0.0)  # one NaN, and -0.0 -> +0.0
        bits = z.view(torch.int32).to(torch.int64)
        ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the value
        reverse = torch.arange(n - 1, -1, -1, device=z2.device)
        return torch.topk(ordered * n + reverse, k, dim=1).indices
    kth = torch.topk(z2, k, dim=1).values[:, k - 1 : k]
    above = (z2 > kth) | z2.isnan()
    equal = z2 == kth
    kept = above | (equal & (equal.cumsum(1) <= k - above.sum(1, keepdim=True)))
    chosen = torch.topk(kept.to(z2.dtype), k, dim=1).indices.sort(dim=1).values
    by_value = z2.gather(1, chosen).sort(dim=1, descending=True, stable=True).indices
    return chosen.gather(1, by_value)


def topk_indices(z2: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of each row of a 2-D tensor, by value descending,
    ties at the boundary broken towards the lower index (``torch.topk`` leaves that
    implementation-defined). Rows with such ties are re-selected with a stable sort."""
    n = z2.shape[1]
    values, idx = torch.topk(z2, min(k + 1, n), dim=1)
    if k == n:
        return idx
    idx = idx[:, :k]
    tied = values[:, k] == values[:, k - 1]  # the first entry left out ties the last one kept
    if torch.compiler.is_compiling():
        # no data-dependent row selection under torch.compile: the tied rows take the
        # stable order (value descending, index ascending: the eager path's indices) for
        # every row, computed without a sort of the whole row
        return torch.where(tied.unsqueeze(1), _stable_topk(z2, k), idx)
    if maybe_any(tied):
        rows = tied.nonzero().squeeze(1)
        idx[rows] = torch.sort(z2[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return idx


@overload
def topk_softmax(
    x: torch.Tensor,
    k: int,
    dim: int = ...,
    *,
    normalize: str = ...,
    return_indices: Literal[False] = ...,
) -> torch.Tensor: ...
@overload
def topk_softmax(
    x: torch.Tensor,
    k: int,
    dim: int = ...,
    *,
    normalize: str = ...,
    return_indices: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def topk_softmax(
    x: torch.Tensor,
    k: int,
    dim: int = ...,
    *,
    normalize: str = ...,
    return_indices: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


@backend_op
def topk_softmax(
    x: torch.Tensor,
    k: int,
    dim: int = -1,
    *,
    normalize: str = "topk_then_softmax",
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Softmax restricted to the k largest entries; exact zeros elsewhere (dense output).

    ``normalize="topk_then_softmax"`` (the paper's gate):

    .. math:: G(x) = \mathrm{softmax}(\mathrm{TopK}(x, k)), \qquad
              \mathrm{TopK}(x, k)_i = x_i \text{ if } x_i \text{ is among the } k
              \text{ largest, else } -\infty

    so the selected weights sum to 1 (equal to taking the softmax, keeping the top k
    and renormalising). ``"softmax_then_topk"`` keeps the top k probabilities of the
    full softmax without renormalising (rows sum to less than 1). Only the selected
    logits receive gradient in the first mode; in the second every logit does, through
    the full normaliser.

    Ties at the k-th value are broken towards the lower index, deterministically on
    every device. Rows with fewer than k finite entries spread the weight over the
    finite ones; a row of ``-inf`` gives zeros and zero gradient.

    Paper: H. Nguyen, P. Akbarian, F. Yan, N. Ho, "Statistical Perspective of Top-K
    Sparse Softmax Gating Mixture of Experts", ICLR 2024, arXiv:2309.13850.

    Args:
        x: logits of any shape; float16/bfloat16 computed in float32, returned in the
            input dtype.
        k: number of entries kept, ``1 <= k <= x.shape[dim]``.
        dim: the axis of the softmax.
        normalize: "topk_then_softmax" or "softmax_then_topk".
        return_indices: also return the kept indices, shape ``x.shape`` with ``dim``
            of size k, by value descending.

    Example:
        >>> import torch
        >>> from softmaxkit import topk_softmax
        >>> topk_softmax(torch.tensor([1.0, 3.0, 2.0, 3.0]), k=2)
        tensor([0.0000, 0.5000, 0.0000, 0.5000])
    """
    v.check_floating("x", x)
    dim = v.check_dim("dim", dim, x.ndim)
    size = x.shape[dim] if x.ndim else 1
    k = v.check_int("k", k, low=1, high=max(size, 1))
    v.check_choice("normalize", normalize, NORMALIZATIONS)
    v.check_bool("return_indices", return_indices)
    k = min(k, size)  # an empty axis keeps nothing
    z2 = as_rows(upcast(x), dim)
    idx = topk_indices(z2.detach(), k)
    picked = z2.gather(1, idx)
    if normalize == "topk_then_softmax":
        weights = normalize_rows(picked, 1, False, None)
    else:
        dead = picked[:, :1] == -math.inf  # the row's largest entry is -inf
        if maybe_any(dead):  # keep the normaliser of such rows finite (their weights are 0)
            z2 = z2.masked_fill(dead, 0.0)
        weights = torch.exp(picked - torch.logsumexp(z2, 1, keepdim=True))
    out2 = torch.zeros(z2.shape, dtype=x.dtype, device=x.device).scatter_(
        1, idx, weights.to(x.dtype)
    )
    out = from_rows(out2, x, dim)
    if not return_indices:
        return out
    index_shape = list(x.movedim(dim, -1).shape) if x.ndim else [1]
    index_shape[-1] = k
    indices = idx.view(index_shape).movedim(-1, dim) if x.ndim else idx.view(k)
    return out, indices


class TopKSoftmax(nn.Module):
    """Module twin of :func:`topk_softmax`: ``TopKSoftmax(k, dim, normalize=...)(x)``."""

    def __init__(self, k: int, dim: int = -1, *, normalize: str = "topk_then_softmax") -> None:
        super().__init__()
        self.k = v.check_int("k", k, low=1)
        self.dim = dim
        self.normalize = v.check_choice("normalize", normalize, NORMALIZATIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return topk_softmax(x, self.k, self.dim, normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, normalize={self.normalize!r}"
