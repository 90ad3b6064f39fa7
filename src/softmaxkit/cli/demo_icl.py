r"""``softmaxkit demo icl``: in-context linear regression with multi-head softmax attention.

Reproduces, scaled to two CPU cores, the setting of J. He, X. Pan, S. Chen, Z. Yang,
"In-Context Linear Regression Demystified: Training Dynamics and Mechanistic
Interpretability of Multi-Head Softmax Attention", ICML 2025, arXiv:2503.12734
(official code: github.com/XintianPan/ICL_linear, ``icl_linear.ipynb``,
``utils/data_utils.py``, ``utils/funcs.py``).

**Data** (official ``LinearReg``): a prompt holds :math:`L` examples and a query,
:math:`x_1, \dots, x_L, x_q \sim \mathcal N(0, I_d)`, a task
:math:`\beta \sim \mathcal N(0, I_d / d)` per prompt (the code divides by :math:`\sqrt d`;
the notebook's text says :math:`\mathcal N(0, I_d)`, the code is followed),
:math:`y_\ell = \beta^\top x_\ell + \epsilon_\ell`, :math:`\epsilon_\ell \sim \mathcal
N(0, \sigma^2)`, :math:`\sigma^2 = 0.1`. The embedding is
:math:`Z = [z_1, \dots, z_L]`, :math:`z_\ell = (x_\ell, y_\ell) \in \mathbb R^{d+1}`,
and the query token :math:`z_q = (x_q, 0)`.

**Model** (one layer, :math:`H` heads, the paper's merged key-query and output-value
parametrisation :math:`W_{KQ}^{(h)}, W_{OV}^{(h)} \in \mathbb R^{(d+1)\times(d+1)}`):

.. math::
    \hat y = \sum_{h=1}^{H} e_{d+1}^\top W_{OV}^{(h)} \sum_{\ell=1}^{L} z_\ell\,
    \mathrm{softmax}_\ell\bigl(z_\ell^\top W_{KQ}^{(h)} z_q\bigr),

the last entry of the query position's output; the query attends to the :math:`L`
examples, not to itself (as the official single-layer model). The linear-attention
transformer is the same with the softmax replaced by the identity:
:math:`\hat y = \sum_h e_{d+1}^\top W_{OV}^{(h)} \frac{1}{L_{\rm train}} \sum_\ell z_\ell\,
z_\ell^\top W_{KQ}^{(h)} z_q`, the constant :math:`1/L_{\rm train}` being a fixed
reparametrisation of :math:`W_{OV}` that only conditions the optimisation (the trained
model therefore sums, without renormalising, over a longer prompt). The length table also
shows the same trained linear weights divided by the actual length :math:`1/L'` instead
(``linear, 1/L' rescaled``), which a user could do by hand. Loss: squared error on the
query's noisy :math:`y_q`, a fresh full batch every step, Adam from a small random
initialisation.

**Emergent patterns** (paper Sec. 3; measured by :func:`_patterns`): the :math:`x`-block
of each :math:`W_{KQ}^{(h)}` becomes :math:`\omega_h I_d` (diagonal and homogeneous), the
last row of each :math:`W_{OV}^{(h)}` becomes :math:`(0, \dots, 0, \mu_h)` (last-entry-only)
with :math:`\sum_h \mu_h \approx 0` (zero-sum). Expanding the softmax to first order in
:math:`\omega_h`, such a model predicts

.. math::
    \hat y \approx \Bigl(\sum_h \mu_h\Bigr) \bar y
    + \frac{\eta}{L} \sum_{\ell=1}^{L} y_\ell (x_\ell - \bar x)^\top x_q,
    \qquad \eta = \sum_h \omega_h \mu_h,

so the zero-sum pattern removes the bias term and leaves the **debiased gradient-descent
predictor** (official ``TFEst.DGDEst``, with :math:`\eta = 2\omega\mu` for the two-head
solution :math:`(\omega, \mu), (-\omega, -\mu)`)

.. math::
    \hat y_{\rm dGD} = \frac{\eta}{L} \sum_{\ell=1}^{L} y_\ell\, (x_\ell - \bar x)^\top x_q,
    \qquad \bar x = \frac1L \sum_\ell x_\ell .

Its step :math:`\eta` is fitted by least squares on held-out prompts at the training
length (``eta_fitted``, the table's row); the step read off the trained model,
:math:`\sum_h \omega_h \mu_h` (``eta_model``), and the small-:math:`\omega` optimum of the
official code's approximate loss ``TFEst.approx_loss``,
:math:`\eta = L / (L + (1 + \sigma^2) d)` (derived here from that code, not quoted from the
paper's text), are printed and saved beside it. The Bayes-optimal predictor is the
posterior mean of :math:`\beta` under the true prior and noise, ridge regression with
:math:`\lambda = d \sigma^2`: :math:`\hat y = x_q^\top (X^\top X + d\sigma^2 I)^{-1}
X^\top y` (official ``TFEst.RidgeEst``).

Errors are :math:`\mathbb E[(\hat y - \beta^\top x_q)^2]` on fresh prompts (the same
prompts for every predictor); the expected loss on the noisy :math:`y_q` (the training
loss, and the quantity the official plots show) is this plus :math:`\sigma^2` (the table's
``loss on y_q`` column).

Defaults are the official notebook's :math:`d = 5`, :math:`L = 8d = 40`, :math:`H = 4`,
:math:`\sigma^2 = 0.1`. Departures, each to train three models in about a minute on two
CPU cores:

* Adam with lr 0.01 (the lr × 0.1 for the last quarter of the steps) for 3,000 steps of
  512 fresh prompts; the official run uses lr 0.001, batch 256 and 500,000 steps;
* merged :math:`W_{KQ}, W_{OV}` initialised :math:`\mathcal N(0, 0.01^2)`; the official
  model has separate :math:`Q, K, V, O` projections (``nn.Linear`` default initialisation)
  and a :math:`1/\sqrt{d+1}` logit scale, which the merged :math:`W_{KQ}` absorbs;
* the linear-attention baseline's normalisation is stated above (not verified against the
  paper's own linear transformer).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
from torch import nn

from softmaxkit import _validation as V
from softmaxkit.cli.demo import ProgressBar, write_json
from softmaxkit.functional import softmax

DESCRIPTION = (
    "in-context linear regression with multi-head softmax attention "
    "(He et al. 2025, arXiv:2503.12734)"
)
PAPER = (
    "He, Pan, Chen, Yang, In-Context Linear Regression Demystified: Training Dynamics and "
    "Mechanistic Interpretability of Multi-Head Softmax Attention, ICML 2025, arXiv:2503.12734"
)
RUNS = ("multi_head", "single_head", "linear")
LABELS = {
    "multi_head": "multi-head softmax",
    "single_head": "single-head softmax",
    "linear": "linear attention",
    "linear_rescaled": "linear, 1/L' rescaled",
    "debiased_gd": "debiased GD, fitted eta",
    "debiased_gd_model": "debiased GD, model's eta",
    "ridge": "Bayes-optimal ridge",
}
INIT_STD = 0.01
DECAY_AT = 0.75  # fraction of the steps after which the lr is divided by 10
TARGET_POINTS = 20
EVAL_CHUNK = 2048
ACTIVE = 0.1  # a head is active when |omega mu| is at least this share of the largest


@dataclass(frozen=True)
class _Setting:
    d: int
    length: int
    noise: float  # sigma^2


@dataclass(frozen=True)
class _Prompts:
    z: torch.Tensor  # (B, L, d + 1): rows z_l = (x_l, y_l)
    zq: torch.Tensor  # (B, d + 1): (x_q, 0)
    target: torch.Tensor  # (B,): beta^T x_q, noiseless
    yq: torch.Tensor  # (B,): beta^T x_q + noise


def _sample(s: _Setting, batch: int, length: int, gen: torch.Generator) -> _Prompts:
    """Fresh prompts: x ~ N(0, I_d), beta ~ N(0, I_d / d), y = beta^T x + N(0, sigma^2)."""
    x = torch.randn(batch, length + 1, s.d, generator=gen)
    beta = torch.randn(batch, s.d, generator=gen) / math.sqrt(s.d)
    clean = torch.einsum("bld,bd->bl", x, beta)
    noisy = clean + math.sqrt(s.noise) * torch.randn(batch, length + 1, generator=gen)
    z = torch.cat([x[:, :length], noisy[:, :length, None]], dim=-1)
    zq = torch.cat([x[:, length], torch.zeros(batch, 1)], dim=-1)
    return _Prompts(z, zq, clean[:, length], noisy[:, length])


class _Attention(nn.Module):
    """One layer of H-head attention read at the query's last entry (see module docstring)."""

    def __init__(self, d: int, heads: int, kind: str, train_length: int) -> None:
        super().__init__()
        self.kind, self.train_length = kind, train_length
        self.kq = nn.Parameter(INIT_STD * torch.randn(heads, d + 1, d + 1))
        self.ov = nn.Parameter(INIT_STD * torch.randn(heads, d + 1, d + 1))

    def forward(self, z: torch.Tensor, zq: torch.Tensor, rescale: bool = False) -> torch.Tensor:
        query = torch.einsum("hij,bj->bhi", self.kq, zq)  # W_KQ z_q per head: (B, H, d + 1)
        scores = torch.bmm(query, z.transpose(1, 2))  # z_l^T W_KQ z_q: (B, H, L)
        if self.kind == "softmax":
            weights = softmax(scores, dim=-1)
        else:
            weights = scores / (z.shape[1] if rescale else self.train_length)
        mixed = torch.bmm(weights, z)  # sum_l weight_l z_l: (B, H, d + 1)
        return (mixed * self.ov[:, -1, :]).sum(dim=(1, 2))  # last rows of the W_OV


def _train(
    name: str,
    model: _Attention,
    s: _Setting,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> dict[str, Any]:
    """Adam on fresh full batches; returns the config, the loss curve and the time."""
    gen = torch.Generator().manual_seed(args.seed)  # the same prompts for every run
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    decay_step = int(DECAY_AT * args.steps)
    log_every = args.log_every or max(1, args.steps // TARGET_POINTS)
    curves: dict[str, list[float]] = {"step": [], "loss": []}
    bar = ProgressBar(name, args.steps, err, unit="steps")
    start = time.perf_counter()
    total, count = 0.0, 0
    for step in range(1, args.steps + 1):
        if step == decay_step + 1:
            for group in opt.param_groups:
                group["lr"] = args.lr / 10
        p = _sample(s, args.batch, s.length, gen)
        loss = (model(p.z, p.zq) - p.yq).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, count = total + loss.item(), count + 1
        if step % log_every == 0 or step == args.steps:
            curves["step"].append(step)
            curves["loss"].append(total / count)
            bar.clear()
            print(f"  {name:<11} step {step:>6}  loss {total / count:.4f}", file=out, flush=True)
            total, count = 0.0, 0
        bar.update(step)
    bar.clear()
    config = {
        "optimizer": "Adam",
        "lr": args.lr,
        "lr_after_decay": args.lr / 10,
        "decay_after_step": decay_step,
        "steps": args.steps,
        "batch": args.batch,
        "init_std": INIT_STD,
        "heads": model.kq.shape[0],
        "attention": model.kind,
    }
    return {"config": config, "curves": curves, "seconds": time.perf_counter() - start}


def _debiased_gd(z: torch.Tensor, zq: torch.Tensor, eta: float) -> torch.Tensor:
    r""":math:`\frac{\eta}{L}\sum_\ell y_\ell (x_\ell - \bar x)^\top x_q` (module docstring)."""
    x, y, xq = z[..., :-1], z[..., -1], zq[..., :-1]
    centred = x - x.mean(dim=1, keepdim=True)
    return eta * torch.einsum("bl,bld,bd->b", y, centred, xq) / z.shape[1]


def _ridge(z: torch.Tensor, zq: torch.Tensor, noise: float) -> torch.Tensor:
    r"""Posterior mean :math:`x_q^\top (X^\top X + d\sigma^2 I)^{-1} X^\top y`."""
    x, y, xq = z[..., :-1].double(), z[..., -1].double(), zq[..., :-1].double()
    d = x.shape[-1]
    gram = x.transpose(1, 2) @ x + d * noise * torch.eye(d, dtype=torch.float64)
    beta = torch.linalg.solve(gram, torch.einsum("bld,bl->bd", x, y))
    return torch.einsum("bd,bd->b", beta, xq).to(z.dtype)


def _fit_eta(s: _Setting, prompts: int, gen: torch.Generator) -> float:
    """Least-squares step of the debiased GD predictor on held-out prompts (length L)."""
    num = den = 0.0
    for n in _chunks(prompts):
        p = _sample(s, n, s.length, gen)
        g = _debiased_gd(p.z, p.zq, 1.0).double()
        num += (g * p.target.double()).sum().item()
        den += g.square().sum().item()
    return num / den


def _eval_generator(seed: int, length: int) -> torch.Generator:
    """Prompts for evaluating at ``length`` (1: fitting eta), apart from the training ones."""
    return torch.Generator().manual_seed(10_000 * (seed + 1) + length)


def _chunks(total: int) -> list[int]:
    return [min(EVAL_CHUNK, total - i) for i in range(0, total, EVAL_CHUNK)]


@torch.no_grad()
def _errors(
    predictors: dict[str, Callable[[_Prompts], torch.Tensor]],
    s: _Setting,
    length: int,
    prompts: int,
    gen: torch.Generator,
) -> dict[str, float]:
    """Mean of (prediction - beta^T x_q)^2 over the same fresh prompts for every predictor."""
    sums = dict.fromkeys(predictors, 0.0)
    for n in _chunks(prompts):
        p = _sample(s, n, length, gen)
        for key, predict in predictors.items():
            sums[key] += (predict(p).double() - p.target.double()).square().sum().item()
    return {key: value / prompts for key, value in sums.items()}


@torch.no_grad()
def _patterns(model: _Attention) -> dict[str, Any]:
    r"""The paper's KQ / OV pattern measures (all ratios; 0 is the ideal pattern).

    * ``kq_offdiag_ratio``: off-diagonal over diagonal Frobenius norm of the x-blocks
      :math:`W_{KQ}^{(h)}[:d, :d]`, pooled over heads (diagonal pattern);
    * ``kq_effective_offdiag_ratio``: the same for :math:`\sum_h \mu_h W_{KQ}^{(h)}[:d, :d]`,
      the matrix that the first-order predictor
      :math:`\frac1L \sum_\ell y_\ell (x_\ell - \bar x)^\top (\sum_h \mu_h W_{KQ}^{(h)})
      x_q` uses (heads sharing a role may cancel each other's off-diagonal noise);
    * ``kq_diag_spread``: norm of each diagonal minus its mean over the diagonal's norm,
      pooled (homogeneous pattern: :math:`\omega_h I_d`);
    * ``kq_y_row_share``: share of :math:`W_{KQ}[:, :d]`'s energy in its last row (the
      :math:`y_\ell` term of the score; the last column meets :math:`z_q`'s zero entry
      and gets no gradient);
    * ``ov_last_entry_share``: share of the last rows' energy in their last entries
      :math:`\mu_h` (last-entry-only; the other rows of :math:`W_{OV}` never reach the
      prediction and keep their initialisation);
    * ``ov_sum_ratio``: :math:`|\sum_h \mu_h| / \sum_h |\mu_h|` (zero-sum).
    """
    kq, ov = model.kq.double(), model.ov.double()
    d = kq.shape[-1] - 1
    block = kq[:, :d, :d]
    diag = block.diagonal(dim1=1, dim2=2)
    off = block - torch.diag_embed(diag)
    omega, mu = diag.mean(dim=1), ov[:, -1, -1]
    spread = diag - omega[:, None]
    effective = torch.einsum("h,hij->ij", mu, block)
    effective_diag = effective.diagonal()
    effective_off = effective - torch.diag(effective_diag)
    product = (omega * mu).abs()
    active = product >= ACTIVE * product.max()
    return {
        "omega": omega.tolist(),
        "mu": mu.tolist(),
        "active_heads": int(active.sum()),
        "kq_offdiag_ratio": (off.norm() / diag.norm()).item(),
        "kq_effective_offdiag_ratio": (effective_off.norm() / effective_diag.norm()).item(),
        "kq_diag_spread": (spread.norm() / diag.norm()).item(),
        "kq_y_row_share": (kq[:, d, :d].square().sum() / kq[:, :, :d].square().sum()).item(),
        "ov_last_entry_share": (mu.square().sum() / ov[:, -1, :].square().sum()).item(),
        "ov_sum_ratio": (mu.sum().abs() / mu.abs().sum()).item(),
        "sum_mu": mu.sum().item(),
        "eta_model": (omega * mu).sum().item(),
    }


def _error_table(errors: dict[str, float], etas: dict[str, float], s: _Setting, heads: int) -> str:
    names = {
        "multi_head": f"multi-head softmax (H={heads})",
        "single_head": "single-head softmax",
        "linear": f"linear attention (H={heads})",
        "debiased_gd": f"debiased GD, fitted eta={etas['fitted']:.3f}",
        "debiased_gd_model": f"debiased GD, model's eta={etas['model']:.3f}",
        "ridge": "Bayes-optimal ridge",
    }
    ridge = errors["ridge"]
    head = f"{'predictor':<36}{'error':>9}{'/ ridge':>9}{'loss on y_q':>13}"
    lines = [head, "-" * len(head)]
    for key, label in names.items():
        e = errors[key]
        lines.append(f"{label:<36}{e:>9.4f}{e / ridge:>9.2f}{e + s.noise:>13.4f}")
    return "\n".join(lines)


def _length_table(lengths: list[int], curves: dict[str, list[float]]) -> str:
    head = f"{'predictor':<26}" + "".join(f"{'L=' + str(n):>10}" for n in lengths)
    lines = [head, "-" * len(head)]
    for key, values in curves.items():
        lines.append(f"{LABELS[key]:<26}" + "".join(f"{v:>10.4f}" for v in values))
    return "\n".join(lines)


def _plot_patterns(model: _Attention, path: Path) -> bool:
    """Heat maps of every head's W_KQ and W_OV (shared colour scale per row)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    kq, ov = model.kq.detach().double(), model.ov.detach().double()
    heads, n = kq.shape[0], kq.shape[-1]
    ticks = [*(f"x{i + 1}" for i in range(n - 1)), "y"]
    fig = Figure(figsize=(2.3 * heads + 0.8, 4.8), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, heads, squeeze=False)
    for row, (name, mats) in enumerate((("W_KQ", kq), ("W_OV", ov))):
        scale = mats.abs().max().item() or 1.0
        images = []
        for h in range(heads):
            ax = axes[row][h]
            images.append(ax.imshow(mats[h].numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale))
            ax.set_title(f"{name}, head {h + 1}", fontsize=9)
            ax.set_xticks(range(n), ticks, fontsize=6)
            ax.set_yticks(range(n), ticks, fontsize=6)
        fig.colorbar(images[-1], ax=list(axes[row]), shrink=0.8)
    canvas.print_png(str(path))  # type: ignore[no-untyped-call]  # unannotated in matplotlib
    return True


def _plot_length(lengths: list[int], curves: dict[str, list[float]], path: Path) -> bool:
    """Error against the prompt length, log-log."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = {"linear_rescaled": ":", "debiased_gd": "--", "debiased_gd_model": "--"}
    for key, values in curves.items():
        ax.plot(lengths, values, styles.get(key, "-"), marker="o", ms=3, label=LABELS[key])
    ax.axvline(lengths[0], color="0.6", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("prompt length L' (training length: the first)")
    ax.set_ylabel("error  E[(y_hat - beta^T x_q)^2]")
    ax.legend(fontsize=7)
    canvas.print_png(str(path))  # type: ignore[no-untyped-call]  # unannotated in matplotlib
    return True


_T = TypeVar("_T")


def _checked(fn: Callable[[], _T], text: str) -> _T:
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        return _checked(lambda: V.check_int("value", int(text), low=low), text)

    return parse


def _positive_float(text: str) -> float:
    return _checked(lambda: V.check_number("value", float(text), low=0, low_open=True), text)


def _factors(text: str) -> list[int]:
    def parse() -> list[int]:
        values = [V.check_int("factor", int(part), low=1) for part in text.split(",") if part]
        if not values:
            raise ValueError("expected comma-separated integers >= 1, e.g. 1,2,4,8")
        return sorted(set(values))

    return _checked(parse, text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "In-context linear regression (He et al. 2025, arXiv:2503.12734): multi-head softmax "
        "attention learns diagonal KQ and zero-sum OV weights, implements debiased gradient "
        "descent and generalises to longer prompts; single-head and linear attention compared."
    )
    parser.add_argument("--d", type=_int_at_least(1), default=5, help="dimension (5, official)")
    parser.add_argument(
        "--length", type=_int_at_least(2), default=40, help="training prompt length L (8d = 40)"
    )
    parser.add_argument(
        "--heads", type=_int_at_least(2), default=4, help="heads of the multi-head runs (4)"
    )
    parser.add_argument(
        "--noise", type=_positive_float, default=0.1, help="noise variance sigma^2 (0.1)"
    )
    parser.add_argument("--steps", type=_int_at_least(1), default=3000, help="Adam steps (3000)")
    parser.add_argument(
        "--batch", type=_int_at_least(1), default=512, help="fresh prompts per step (512)"
    )
    parser.add_argument("--lr", type=_positive_float, default=0.01, help="Adam lr (0.01)")
    parser.add_argument(
        "--eval-prompts",
        type=_int_at_least(1),
        default=8192,
        help="fresh prompts per evaluation length and for fitting eta (8192)",
    )
    parser.add_argument(
        "--length-factors",
        type=_factors,
        default=[1, 2, 4, 8],
        help="evaluate at these multiples of L (default 1,2,4,8)",
    )
    parser.add_argument(
        "--log-every",
        type=_int_at_least(1),
        default=None,
        help=f"steps between log lines (default: about {TARGET_POINTS} per run)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("softmaxkit-demo") / "icl",
        help="output folder for results.json, patterns.png, length.png",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and init (0)")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add synchronisation
    try:
        return _run(args, out, err)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    s = _Setting(args.d, args.length, args.noise)
    print(
        f"In-context linear regression: d={s.d}, L={s.length}, sigma^2={s.noise}, "
        f"beta ~ N(0, I/d); {args.steps} Adam steps of {args.batch} fresh prompts, "
        f"seed {args.seed}",
        file=out,
    )
    models = {}
    results: dict[str, dict[str, Any]] = {}
    for name in RUNS:
        heads = 1 if name == "single_head" else args.heads
        kind = "linear" if name == "linear" else "softmax"
        torch.manual_seed(args.seed)  # multi-head and linear start from the same weights
        models[name] = model = _Attention(s.d, heads, kind, s.length)
        results[name] = _train(name, model, s, args, out, err)
        results[name]["final_loss"] = results[name]["curves"]["loss"][-1]
        print(f"  -> {name}: {results[name]['seconds']:.1f}s", file=out, flush=True)

    patterns = {name: _patterns(models[name]) for name in ("multi_head", "single_head")}
    etas = {
        "fitted": _fit_eta(s, args.eval_prompts, _eval_generator(args.seed, 1)),
        "model": patterns["multi_head"]["eta_model"],
        "approx_loss": s.length / (s.length + (1 + s.noise) * s.d),
    }
    multi, single, linear = models["multi_head"], models["single_head"], models["linear"]
    predictors: dict[str, Callable[[_Prompts], torch.Tensor]] = {
        "multi_head": lambda p: multi(p.z, p.zq),
        "single_head": lambda p: single(p.z, p.zq),
        "linear": lambda p: linear(p.z, p.zq),
        "linear_rescaled": lambda p: linear(p.z, p.zq, rescale=True),
        "debiased_gd": lambda p: _debiased_gd(p.z, p.zq, etas["fitted"]),
        "debiased_gd_model": lambda p: _debiased_gd(p.z, p.zq, etas["model"]),
        "ridge": lambda p: _ridge(p.z, p.zq, s.noise),
    }
    lengths = [f * s.length for f in args.length_factors]
    by_length = {
        n: _errors(predictors, s, n, args.eval_prompts, _eval_generator(args.seed, n))
        for n in sorted({s.length, *lengths})
    }
    at_train = by_length[s.length]
    curves = {key: [by_length[n][key] for n in lengths] for key in predictors}

    p = patterns["multi_head"]
    print(
        f"\nIn-context error E[(y_hat - beta^T x_q)^2] at the training length L={s.length} "
        f"({args.eval_prompts} fresh prompts; the loss on the noisy y_q is error + sigma^2):",
        file=out,
    )
    print(_error_table(at_train, etas, s, args.heads), file=out)
    print(
        f"eta: fitted {etas['fitted']:.3f}, trained model sum_h omega_h mu_h "
        f"{etas['model']:.3f}, approximate-loss optimum L/(L+(1+sigma^2)d) "
        f"{etas['approx_loss']:.3f}",
        file=out,
    )
    active = p["active_heads"]
    print(f"\nPatterns of the trained multi-head model ({active} active heads):", file=out)
    print(
        "  omega_h (mean KQ x-block diagonal): "
        + ", ".join(f"{v:+.3f}" for v in p["omega"])
        + "\n  mu_h (OV last entry):               "
        + ", ".join(f"{v:+.3f}" for v in p["mu"])
        + f"\n  KQ x-block off-diagonal / diagonal norm {p['kq_offdiag_ratio']:.3f} per head, "
        f"{p['kq_effective_offdiag_ratio']:.3f} for sum_h mu_h KQ_h; diagonal spread "
        f"{p['kq_diag_spread']:.3f}; y-row share {p['kq_y_row_share']:.4f}"
        f"\n  OV last-entry share {p['ov_last_entry_share']:.4f}, "
        f"|sum mu| / sum |mu| {p['ov_sum_ratio']:.4f} (sum mu {p['sum_mu']:+.4f})",
        file=out,
    )
    print("\nLength generalisation (same error, trained at the first length):", file=out)
    print(_length_table(lengths, curves), file=out)

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "paper": PAPER,
        "setting": {
            "d": s.d,
            "length": s.length,
            "heads": args.heads,
            "noise_variance": s.noise,
            "beta_prior": "N(0, I/d)",
            "x": "N(0, I)",
            "seed": args.seed,
            "eval_prompts": args.eval_prompts,
            "error": "mean (y_hat - beta^T x_q)^2 on fresh prompts",
        },
        "runs": results,
        "patterns": patterns,
        "eta": etas,
        "error_at_train_length": at_train,
        "length_generalisation": {"lengths": lengths, "error": curves},
    }
    json_path = args.out / "results.json"
    write_json(payload, json_path)
    print(f"\nResults: {json_path}", file=out)
    pattern_png, length_png = args.out / "patterns.png", args.out / "length.png"
    plotted = {
        "Patterns": (pattern_png, _plot_patterns(multi, pattern_png)),
        "Lengths": (length_png, _plot_length(lengths, curves, length_png)),
    }
    for what, (path, done) in plotted.items():
        shown = str(path) if done else "skipped (matplotlib is not installed)"
        print(f"{what + ':':<10}{shown}", file=out)
    return 0
