r"""Equiangular Basis Vectors: a fixed, nearly orthogonal class basis and its classifier.

Paper: Y. Shen, X. Sun, X.-S. Wei, "Equiangular Basis Vectors", CVPR 2023, arXiv:2303.11637.
Official code: aassxun/Equiangular-Basis-Vectors (``Generate_EBV/Generate_EBV.py`` generates
the basis, ``ImageNet_Validation_Experiment/EBV_ImageNet.py`` trains with it).

Generation (official code, 1000 classes x 1000 dims): rows of :math:`B \sim \mathcal N(0, 1)`
normalised, then repeated SGD steps (lr 1e-3, no momentum, up to 100000 steps, seed 42) on

.. math:: L(B) = \sum_{i \ne j} \mathrm{relu}\big(|\hat b_i \cdot \hat b_j| - t\big)

with the rows re-normalised before every step, stopping as soon as
:math:`\max_{i \ne j} |\hat b_i \cdot \hat b_j| \le t + 10^{-4}` (``t`` = 0.002 there).
Differences from the official code: the whole Gram matrix is formed at once instead of in
row slices of 130 (the slices only saved GPU memory; the summed gradient is the same) and the
gradient is written out, :math:`\nabla_B L = 2 S B` with
:math:`S_{ij} = \mathrm{sign}(\hat b_i \cdot \hat b_j)\,[|\hat b_i \cdot \hat b_j| > t]`
(:math:`i \ne j`), instead of autograd; the seed drives a private ``torch.Generator`` (on the
CPU, so a basis is the same on every device) instead of the global RNG.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit.losses import cosine_logits

__all__ = ["equiangular_basis", "EquiangularHead"]

#: the official generator's settings (Generate_EBV.py)
DEFAULT_THRESHOLD = 0.002
DEFAULT_LR = 1e-3
DEFAULT_MAX_STEPS = 100_000
DEFAULT_SEED = 42
STOP_SLACK = 1e-4


def welch_bound(num_classes: int, dim: int) -> float:
    r"""The smallest possible :math:`\max_{i \ne j} |\cos|` of ``num_classes`` unit vectors in
    ``dim`` dimensions: :math:`\sqrt{(N - d) / (d (N - 1))}` for :math:`N > d`, else 0."""
    if num_classes <= dim:
        return 0.0
    return math.sqrt((num_classes - dim) / (dim * (num_classes - 1)))


def _max_abs_cos(gram: torch.Tensor) -> torch.Tensor:
    return gram.abs().fill_diagonal_(0.0).max() if gram.shape[0] > 1 else gram.new_zeros(())


def equiangular_basis(
    num_classes: int,
    dim: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    lr: float = DEFAULT_LR,
    max_steps: int = DEFAULT_MAX_STEPS,
    seed: int = DEFAULT_SEED,
    on_failure: str = "warn",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Generate ``num_classes`` unit vectors in ``dim`` dimensions whose pairwise
    :math:`|\cos|` stays below ``threshold`` (the EBV basis).

    Minimises :math:`\sum_{i \ne j} \mathrm{relu}(|\hat b_i \cdot \hat b_j| - t)` by plain
    SGD (gradient :math:`2 S B`, see the module docstring), re-normalising the rows before
    each step, until :math:`\max_{i \ne j} |\hat b_i \cdot \hat b_j| \le t + 10^{-4}`. Every
    step is one (N, N) Gram matrix: no Python loop over rows.

    Paper: Y. Shen, X. Sun, X.-S. Wei, "Equiangular Basis Vectors", CVPR 2023,
    arXiv:2303.11637. Defaults are the official ``Generate_EBV.py``'s: ``threshold=0.002``
    (set there for 1000 x 1000), ``lr=1e-3``, ``max_steps=100000``, ``seed=42``.

    When ``dim < num_classes`` no basis beats the Welch bound
    :math:`\sqrt{(N - d) / (d (N - 1))}` (0.031 for 1000 x 512): a ``threshold`` below it
    raises ``ValueError`` at once (the official loop would run all its steps). A threshold
    that is feasible but not reached within ``max_steps`` warns (``on_failure="warn"``,
    the basis is still returned) or raises ``RuntimeError`` (``"raise"``); both report the
    max :math:`|\cos|` reached.

    Args:
        num_classes: N >= 1 vectors.
        dim: d >= 1 dimensions.
        threshold: target max :math:`|\cos|`, in [0, 1).
        lr: SGD step size (> 0).
        max_steps: the step budget (>= 0).
        seed: seeds the CPU generator of the initial Gaussian draw.
        on_failure: ``"warn"`` or ``"raise"`` when the budget runs out.
        dtype: a floating dtype of the result (half types are generated in float32).
        device: where the optimisation runs and the result lives.

    Returns:
        (N, d) tensor with unit rows.

    Example:
        >>> from softmaxkit.heads import equiangular_basis
        >>> b = equiangular_basis(10, 16, threshold=0.05)
        >>> b.shape, bool((b @ b.T - torch.eye(10)).abs().max() <= 0.05 + 1e-4)
        (torch.Size([10, 16]), True)
    """
    num_classes = v.check_int("num_classes", num_classes, low=1)
    dim = v.check_int("dim", dim, low=1)
    threshold = v.check_number("threshold", threshold, low=0.0, high=1.0, high_open=True)
    lr = v.check_number("lr", lr, low=0.0, low_open=True)
    max_steps = v.check_int("max_steps", max_steps, low=0)
    seed = v.check_int("seed", seed)
    on_failure = v.check_choice("on_failure", on_failure, ("warn", "raise"))
    dtype = v.check_floating_dtype("dtype", dtype)
    bound = welch_bound(num_classes, dim)
    if threshold + STOP_SLACK < bound:
        raise ValueError(
            f"threshold={threshold} cannot be reached: {num_classes} unit vectors in {dim} "
            f"dimensions have a max |cos| of at least the Welch bound {bound:.4f}"
        )
    work = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(num_classes, dim, generator=g, dtype=work).to(device)
    eye = torch.eye(num_classes, dtype=torch.bool, device=basis.device)
    reached = float("inf")
    for step in range(max_steps + 1):
        basis = torch.nn.functional.normalize(basis, dim=1)
        gram = (basis @ basis.T).masked_fill_(eye, 0.0)
        reached = float(_max_abs_cos(gram))
        if reached <= threshold + STOP_SLACK:
            return basis.to(dtype)
        if step == max_steps:
            break
        s = torch.where(gram.abs() > threshold, gram.sign(), 0.0)
        basis = basis - (2.0 * lr) * (s @ basis)
    message = (
        f"equiangular_basis({num_classes}, {dim}): max |cos| {reached:.5f} after "
        f"max_steps={max_steps} steps, above threshold={threshold} (+{STOP_SLACK})"
    )
    if on_failure == "raise":
        raise RuntimeError(message)
    warnings.warn(message + "; returning the basis reached", RuntimeWarning, stacklevel=2)
    return basis.to(dtype)


class EquiangularHead(nn.Module):
    r"""A linear projection to ``dim`` followed by cosine logits against a fixed EBV basis.

    .. math:: z_c = \frac{1}{\tau}\,\frac{f}{\lVert f \rVert} \cdot \hat e_c, \qquad
              f = W x + b

    where :math:`\hat e_c` are the rows of :func:`equiangular_basis` (a buffer, never
    trained: it is saved in ``state_dict`` so a reloaded head predicts the same). Train with
    ``F.cross_entropy(head(x), y)``; the official ImageNet recipe adds
    ``label_smoothing=0.1`` (plus mixup 0.2 / cutmix 1.0), which lives in the training loop,
    not here. Inference is ``argmax`` of the logits (the temperature does not change it).

    Paper: Y. Shen, X. Sun, X.-S. Wei, "Equiangular Basis Vectors", CVPR 2023,
    arXiv:2303.11637; :math:`\tau = 0.07` from the official ``EBV_ImageNet.py``. In the
    official code the backbone's last layer outputs ``dim`` features directly; here that layer
    is the head's ``proj`` (an ``nn.Linear`` with bias, like a ResNet's ``fc``). The logits
    are :func:`softmaxkit.losses.cosine_logits`.

    Args:
        in_features: input size.
        num_classes: number of basis vectors.
        dim: basis dimension (experiments use 100..2000 for 1000 classes).
        temperature: :math:`\tau > 0`.
        threshold, seed, max_steps: passed to :func:`equiangular_basis`.
        basis: a precomputed (num_classes, dim) basis (rows are normalised, dtype kept),
            skipping the generation.

    Shape: input (..., in_features) -> logits (..., num_classes).

    Example:
        >>> from softmaxkit.heads import EquiangularHead
        >>> head = EquiangularHead(8, 5, dim=6, threshold=0.05)
        >>> head(torch.randn(3, 8)).shape
        torch.Size([3, 5])
    """

    basis: torch.Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        dim: int,
        temperature: float = 0.07,
        threshold: float = DEFAULT_THRESHOLD,
        seed: int = DEFAULT_SEED,
        max_steps: int = DEFAULT_MAX_STEPS,
        basis: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        in_features = v.check_int("in_features", in_features, low=1)
        num_classes = v.check_int("num_classes", num_classes, low=1)
        dim = v.check_int("dim", dim, low=1)
        self.temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
        if basis is None:
            basis = equiangular_basis(
                num_classes, dim, threshold=threshold, seed=seed, max_steps=max_steps
            )
        else:
            basis = v.check_floating("basis", basis)
            if tuple(basis.shape) != (num_classes, dim):
                raise ValueError(
                    f"basis must have shape ({num_classes}, {dim}), got {tuple(basis.shape)}"
                )
            basis = torch.nn.functional.normalize(basis.detach(), dim=1)
        self.proj = nn.Linear(in_features, dim)
        self.register_buffer("basis", basis.clone())
        self.in_features, self.num_classes, self.dim = in_features, num_classes, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = v.check_floating("x", x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension {self.in_features}, got shape {tuple(x.shape)}"
            )
        f = self.proj(x.to(self.proj.weight.dtype))
        lead = f.shape[:-1]
        z = cosine_logits(f.reshape(-1, self.dim), self.basis, temperature=self.temperature)
        return z.reshape(*lead, self.num_classes)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, dim={self.dim}, "
            f"temperature={self.temperature}"
        )
