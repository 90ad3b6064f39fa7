"""The Fourier Head: a categorical output head whose distribution is a smooth Fourier PDF.

Gillman et al., "Fourier Head: Helping Large Language Models Learn Complex Probability
Distributions" (ICLR 2025, arXiv 2410.22269); official code nate-gillman/fourier-head,
``fourier_head.py::Fourier_Head``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit._ops.blocks import compute_dtype, upcast
from softmaxkit._validation import check_choice, check_floating, check_int, check_number

__all__ = ["FourierHead"]

_OUTPUTS = ("log_prob", "prob")


class FourierHead(nn.Module):
    r"""The Fourier Head of Gillman et al.: a linear layer gives N + 1 complex
    autocorrelation parameters, whose autocorrelation are the Fourier coefficients of a
    non-negative PDF on [-1, 1], evaluated at the bin centres and normalised over the bins.

    With :math:`a = W x + b \in \mathbb{C}^{N+1}` (real parts first, then imaginary parts):

    .. math::
        c_k = \sum_{j=0}^{N-k} a_{j+k}\,\overline{a_j},\qquad
        p(x) = \tfrac12 + \operatorname{Re}\sum_{k=1}^{N} \frac{c_k}{c_0}\, e^{i\pi k x}
             = \frac{\bigl|\sum_j a_j e^{i\pi j x}\bigr|^2}{2 c_0} \ge 0,

    .. math::
        P_m = \frac{p(x_m)}{\sum_{m'} p(x_{m'})},\qquad
        \text{output}_m = \log(P_m + \varepsilon),

    with :math:`x_m` the centres of ``num_bins`` equal bins of [-1, 1]. The regulariser
    (Sobolev-type penalty on the un-normalised coefficients), stored after every forward in
    :attr:`regularization_loss` for the caller to add to the loss:

    .. math::
        L_\text{reg} = \gamma \cdot 2\cdot \operatorname{mean}_\text{batch}
        \sum_{k=0}^{N} 2\pi^2 k^2 |c_k|^2 .

    Args:
        in_features: input size.
        num_bins: number of output bins m (>= 1).
        num_frequencies: number of frequencies N (>= 1).
        regularization_gamma: γ of the regulariser. Default 1e-6, the paper's experiments
            (and the official imitation-learning model and demo); the official class
            default is 0.
        eps: ε of the output log(P + ε); default 1e-5 as the official
            ``const_inverse_softmax``. ``eps=0`` gives the exact log P.
        output: ``"log_prob"`` (default, the official output log(P + ε)) or ``"prob"`` (P).

    Shapes: input (..., in_features) -> output (..., num_bins), the input's dtype (float16
    and bfloat16 are computed in float32).

    Paper vs official code, and this module's choices:

    - Autocorrelation convention: the official :math:`c_k = \sum_j a_{j+k}\overline{a_j}`
      (the opposite conjugation mirrors the PDF, x -> -x). Computation (same values as
      the official conv1d, to rounding): the PDF through its Fejér-Riesz form
      :math:`|\sum_j a_j e^{i\pi jx}|^2/(2c_0)` (real matmuls; the :math:`2c_0` cancels in
      the normalisation), and :math:`c_k` for the regulariser by an exact DFT of that
      square at 2N + 1 equispaced points; no complex dtype, no Python loop.
    - Initialisation: PyTorch's default ``nn.Linear`` init, weight and bias each divided by
      100 (official ``init_denominator_weight``/``init_denominator_bias``).
    - Bin centres: midpoints of ``torch.linspace(-1, 1, num_bins + 1)`` (official).
    - The regulariser follows the official code exactly (γ = 1e-6 was tuned with it): it
      uses the un-normalised :math:`c_k` and has an extra factor 2 over the paper's
      :math:`2\pi^2\sum_k k^2|c_k|^2`. On an empty batch it is 0 (the official mean is NaN).
    - Deviations for robustness: a is divided by its largest real/imaginary magnitude per
      row first (the PDF is scale-invariant, so this is exact; large inputs no longer
      overflow to NaN), and a = 0 gives the uniform PDF (official: NaN). p >= 0 holds by
      construction (a square). The official device default ("cuda") and the misspelt
      ``regularizion_gamma`` are not kept.

    Example:
        >>> head = FourierHead(16, num_bins=64, num_frequencies=8)
        >>> logits = head(torch.randn(5, 16))
        >>> logits.shape
        torch.Size([5, 64])
        >>> bool(torch.allclose(head.probabilities(torch.randn(5, 16)).sum(-1), torch.ones(5)))
        True
        >>> loss = F.cross_entropy(logits, torch.randint(0, 64, (5,))) + head.regularization_loss
    """

    _synthesis: torch.Tensor
    _analysis: torch.Tensor

    bin_centers: torch.Tensor
    frequencies: torch.Tensor
    regularization_scalars: torch.Tensor

    def __init__(
        self,
        in_features: int,
        num_bins: int,
        num_frequencies: int,
        *,
        regularization_gamma: float = 1e-6,
        eps: float = 1e-5,
        output: str = "log_prob",
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, low=1)
        self.num_bins = check_int("num_bins", num_bins, low=1)
        self.num_frequencies = check_int("num_frequencies", num_frequencies, low=1)
        self.regularization_gamma = check_number(
            "regularization_gamma", regularization_gamma, low=0.0
        )
        self.eps = check_number("eps", eps, low=0.0)
        self.output = check_choice("output", output, _OUTPUTS)
        n = self.num_frequencies
        self.linear = nn.Linear(self.in_features, 2 * (n + 1))
        with torch.no_grad():
            self.linear.weight.div_(100.0)
            self.linear.bias.div_(100.0)
        edges = torch.linspace(-1.0, 1.0, self.num_bins + 1, dtype=torch.float64)
        self.register_buffer("bin_centers", (edges[:-1] + edges[1:]) / 2, persistent=False)
        k = torch.arange(n + 1, dtype=torch.float64)
        self.register_buffer("frequencies", k, persistent=False)
        self.register_buffer("regularization_scalars", 2 * math.pi**2 * k**2, persistent=False)
        # sum_j a_j e^{i pi j x} at the bin centres and at L = 2N + 1 equispaced points of
        # [-1, 1) (from which the DFT recovers c_k exactly): u = [Re a, Im a] times
        # [[cos, sin], [-sin, cos]] gives [Re, Im] of the sums in one real matmul
        grid = -1.0 + 2.0 * torch.arange(2 * n + 1, dtype=torch.float64) / (2 * n + 1)
        points = torch.cat([self.bin_centers, grid])
        angle = math.pi * k[:, None] * points
        cos, sin = torch.cos(angle), torch.sin(angle)
        synth = torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)], 0)
        self.register_buffer("_synthesis", synth, persistent=False)
        # c_k = (1/L) sum_t q(x_t) e^{-i pi k x_t}: [Re c, Im c] = q @ [cos, -sin] / L
        grid_angle = math.pi * grid[:, None] * k
        analysis = torch.cat([torch.cos(grid_angle), -torch.sin(grid_angle)], 1) / (2 * n + 1)
        self.register_buffer("_analysis", analysis, persistent=False)
        self.regularization_loss: torch.Tensor = torch.zeros(())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_bins={self.num_bins}, "
            f"num_frequencies={self.num_frequencies}, "
            f"regularization_gamma={self.regularization_gamma:g}, eps={self.eps:g}, "
            f"output={self.output!r}"
        )

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        check_floating("input", x)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"input must have last dimension in_features={self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        w, b = self.linear.weight, self.linear.bias
        dtype = compute_dtype(x, w)
        h = F.linear(upcast(x).to(dtype), w.to(dtype), b.to(dtype))
        # split (not slicing): its backward concatenates instead of zero-filling twice
        ar, ai = h.split(self.num_frequencies + 1, -1)
        return ar, ai, dtype

    def _spectrum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """|sum_j a_j e^{i pi j x}|^2 of a / s (s = the row's largest |Re a_j|, |Im a_j|;
        the PDF is scale-invariant, so large inputs stay finite) at the bin centres
        (..., m) and at the DFT grid (..., 2N + 1), and s (..., 1); compute dtype."""
        ar, ai, dtype = self._params(x)
        u = torch.cat([ar, ai], -1)
        scale = u.abs().amax(-1, keepdim=True)
        scale = scale.clamp_min(torch.finfo(dtype).tiny)
        z = (u / scale) @ self._synthesis.to(dtype)
        zr, zi = z.split(z.shape[-1] // 2, -1)
        q = zr * zr + zi * zi
        pdf, grid = q.split([self.num_bins, q.shape[-1] - self.num_bins], -1)
        return pdf, grid, scale

    def _coefficients(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cr, ci = (grid @ self._analysis.to(grid.dtype)).split(self.num_frequencies + 1, -1)
        return cr, ci

    def fourier_coefficients(self, input: torch.Tensor) -> torch.Tensor:
        """The un-normalised Fourier coefficients :math:`c_k`, k = 0..N, of the PDF before
        the division by :math:`c_0`: a complex tensor (..., N + 1) (complex64, or complex128
        for float64 inputs)."""
        _, grid, scale = self._spectrum(input)
        cr, ci = self._coefficients(grid)
        return torch.complex(cr * scale**2, ci * scale**2)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pdf, grid, scale = self._spectrum(x)
        total = pdf.sum(-1, keepdim=True)
        probs = torch.where(
            total > 0, pdf / total.clamp_min(torch.finfo(pdf.dtype).tiny), 1.0 / self.num_bins
        )
        if self.regularization_gamma == 0.0:
            return probs, pdf.new_zeros(())
        cr, ci = self._coefficients(grid)
        summands = self.regularization_scalars.to(pdf.dtype) * (cr * cr + ci * ci)
        per_row = (summands.sum(-1) * scale.squeeze(-1) ** 4).reshape(-1)
        mean = per_row.mean() if per_row.numel() else per_row.sum()
        return probs, self.regularization_gamma * 2.0 * mean

    def probabilities(self, input: torch.Tensor) -> torch.Tensor:
        """The categorical distribution P over the bins, (..., num_bins), in the input's
        dtype; also updates :attr:`regularization_loss`."""
        probs, reg = self._forward(input)
        self.regularization_loss = reg
        return probs.to(input.dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """log(P + eps) (``output="log_prob"``) or P (``output="prob"``), (..., num_bins);
        sets :attr:`regularization_loss` (a 0-d tensor in the compute dtype, with
        gradient)."""
        probs, reg = self._forward(input)
        self.regularization_loss = reg
        if self.output == "prob":
            return probs.to(input.dtype)
        return torch.log(probs + self.eps).to(input.dtype)
