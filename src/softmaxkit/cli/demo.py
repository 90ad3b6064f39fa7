"""``softmaxkit demo``: grokking, Softmax Collapse, ⊥Grad and StableMax on modular addition.

Reproduces the setting of Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of
Numerical Stability", ICLR 2025, arXiv:2501.04697 (Fig. 1, Secs. 2-5), on built-in data:
(a + b) mod p, p = 113, the two operands one-hot and concatenated (2p inputs), an MLP
with two hidden ReLU layers of width 200 and no biases (the official ``get_model`` for
this dataset), full batch, float32, no weight decay, 40% of the p² pairs for training
(seeded split). Three runs start from the same seeded initialisation:

* ``softmax``: softmax cross-entropy (float32) with AdamW. The model fits the training
  set, the logits keep growing along the weights (naïve loss minimisation), the Softmax
  Collapse fraction of the training rows climbs and test accuracy stays near chance.
* ``perpgrad``: the same with :class:`softmaxkit.dynamics.PerpGrad` around AdamW: test
  accuracy passes 95% within a few hundred epochs (paper Fig. 1a, 300 epochs).
* ``stablemax``: StableMax cross-entropy (float64, as the official code) with AdamW: it
  overfits first, but its loss never reaches exactly 0, so every row keeps its gradient
  (zero-loss 0%; a *softmax* of its fast-growing logits does collapse, which is harmless
  here); the paper reports grokking after tens of thousands of epochs (Figs. 1b and 4,
  80,000 epochs). The default run shows the first part; ``--long`` runs StableMax until
  test accuracy passes 95% at a log point (every 500 epochs; at most the paper's 80,000
  epochs) on 60% of the pairs, a fraction of the paper's Fig. 2: measured with seed 42,
  it passes 95% at epoch 9,500 (7.2 minutes on two idle CPU cores), while the Fig. 1
  fraction 0.4 needs 61,500 epochs (181 s on an H200 with ``--device cuda``, about half
  an hour on two cores); ``--train-fraction 0.4 --long`` runs that.

Hyperparameters are the official run script's (``run_main_experiments.sh``, Fig. 1) and
driver defaults (``grokking_experiments.py``): lr 0.01, weight decay 0, AdamW
``betas=(0.9, 0.99), eps=1e-25`` for the softmax run (driver defaults), ``beta2=0.999``
for StableMax (its Fig. 1 line), and for ⊥AdamW the torch defaults
``betas=(0.9, 0.999), eps=1e-8`` that the driver's AdamW effectively ran with (see
``PerpGrad``). Departures, each to fit a few minutes on two CPU cores:

* epochs: softmax 2,000 (with seed 42 the collapse sets in at ~1,600 and reaches ~50% by
  2,000; the paper trains 80,000 with a float64 softmax), ⊥AdamW 300 (as the paper), StableMax
  500 by default (it has fitted the training set by then) and the paper's 80,000 with
  ``--long``;
* the softmax run uses the driver's default float32 softmax (``--softmax_precision 32``;
  the Fig. 1 line uses 64) so that the collapse shows within the budget;
* the driver re-shuffles the full batch every epoch, which changes only the rounding;
  we keep the order fixed;
* seed 42 (the driver's default), but torch's random streams make the split and the
  initialisation differ from the official ones.

The model's input layer reads the one-hot pairs as a lookup (the same function and
gradients at a third less arithmetic: :class:`PairMLP`); ``--device cuda`` trains on a GPU.

Logged every ``--log-every`` epochs: training loss, train/test accuracy, the Softmax
Collapse fraction of the training logits in float32
(:func:`softmaxkit.dynamics.softmax_collapse_fraction`) and the fraction of training
rows whose loss (the run's own) is exactly 0. Curves go to ``<out>/curves.json`` and,
when matplotlib is importable, ``<out>/curves.png``.

The demo ends with ``softmaxkit report`` on its built-in task (digits, classes 8 and 9
held out as out-of-distribution; see :mod:`softmaxkit.cli.report`), written to
``<out>/report/report.html`` and ``report.json`` (about 3 s; ``--no-report`` leaves it
out); it is skipped with a note when matplotlib or scikit-learn is missing
(``pip install 'softmaxkit[report]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as V

# ``softmaxkit demo NAME``: the module that runs experiment NAME and a one-line description
EXPERIMENTS = {
    "grokking": (
        "softmaxkit.cli.demo",
        "grokking, Softmax Collapse, ⊥Grad and StableMax (default)",
    ),
    "icl": (
        "softmaxkit.cli.demo_icl",
        "in-context linear regression with multi-head softmax attention",
    ),
    "ood": (
        "softmaxkit.cli.demo_ood",
        "PALM vs cross-entropy training for OOD detection on digits",
    ),
}
RUNS = ("softmax", "perpgrad", "stablemax")
DEFAULT_EPOCHS = {"softmax": 2000, "perpgrad": 300, "stablemax": 500}
LONG_STABLEMAX_EPOCHS = 80_000
LONG_LOG_EVERY = 500
TRAIN_FRACTION = 0.4  # the paper's Fig. 1
LONG_TRAIN_FRACTION = 0.6  # its Fig. 2: StableMax groks in ~9.5k epochs instead of ~61.5k
GROKKED = 0.95  # --long stops at the first logged epoch with test accuracy above this
HIDDEN = 200
LR = 0.01
TARGET_POINTS = 25  # default log steps per run
NOTE = (
    "SC: training rows whose float32 softmax is exactly one-hot (Softmax Collapse). "
    "zero-loss: training rows\n"
    "whose own loss is exactly 0, so they give no gradient. StableMax never reaches a zero "
    "loss, so a softmax\nof its (large) logits may collapse without harm."
)


@dataclass(frozen=True)
class Data:
    p: int
    x_train: torch.Tensor  # (n, 2p) one-hot a ++ one-hot b, as the official dataset
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def pairs(self, split: str) -> torch.Tensor:
        """(n, 2) indices of the two ones in each row of ``x_<split>``: a and p + b."""
        x = self.x_train if split == "train" else self.x_test
        return torch.stack([x[:, : self.p].argmax(1), x[:, self.p :].argmax(1) + self.p], 1)

    def to(self, device: torch.device) -> Data:
        return Data(
            self.p, *(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test))
        )


def make_data(p: int, train_fraction: float, seed: int) -> Data:
    """All p² pairs (a, b) -> (a + b) mod p, one-hot a ++ one-hot b, seeded split."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).to(torch.float32)
    y = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * p * p)  # as the official split_dataset
    train, test = order[:n_train], order[n_train:]
    return Data(p, x[train], y[train], x[test], y[test])


class PairMLP(nn.Module):
    """The official MLP ``2p -> 200 -> 200 -> p`` (ReLU, no biases) on index pairs.

    Its input layer reads the one-hot rows as a lookup: for a row with ones at ``a`` and
    ``p + b``, ``x @ W1.T = W1[:, a] + W1[:, p + b]`` exactly (the other terms are zero), so
    the function and its gradients are the one-hot model's, at a third less arithmetic.
    """

    def __init__(self, p: int) -> None:
        super().__init__()
        self.first = nn.Linear(2 * p, HIDDEN, bias=False)
        self.rest = nn.Sequential(
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN, bias=False),
            nn.ReLU(),
            nn.Linear(HIDDEN, p, bias=False),
        )

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.rest(F.embedding(pairs, self.first.weight.t()).sum(1))
        return out


def make_model(p: int) -> PairMLP:
    return PairMLP(p)


def _softmax_ce(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    return F.cross_entropy(logits.to(torch.float32), target, reduction=reduction)


def _stablemax_ce(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    from softmaxkit.losses import stablemax_cross_entropy

    return stablemax_cross_entropy(logits, target, reduction=reduction, dtype=torch.float64)


def make_run(
    name: str, params: Iterable[torch.Tensor]
) -> tuple[torch.optim.Optimizer, Any, dict[str, Any]]:
    """Optimizer, loss and a description of the run (official hyperparameters)."""
    if name == "softmax":
        kw: dict[str, Any] = dict(lr=LR, betas=(0.9, 0.99), eps=1e-25, weight_decay=0.0)
        return torch.optim.AdamW(params, **kw), _softmax_ce, _describe("AdamW", "softmax", kw)
    if name == "perpgrad":
        from softmaxkit.dynamics import PerpGrad

        kw = dict(lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        opt = PerpGrad(params, torch.optim.AdamW, **kw)
        return opt, _softmax_ce, _describe("PerpGrad(AdamW, rescale=True)", "softmax", kw)
    kw = dict(lr=LR, betas=(0.9, 0.999), eps=1e-25, weight_decay=0.0)
    return torch.optim.AdamW(params, **kw), _stablemax_ce, _describe("AdamW", "stablemax", kw)


def _describe(optimizer: str, loss: str, kw: dict[str, Any]) -> dict[str, Any]:
    names = {
        "softmax": "softmax cross-entropy, float32",
        "stablemax": "StableMax cross-entropy, float64",
    }
    return {"optimizer": optimizer, "loss": names[loss], **{k: kw[k] for k in sorted(kw)}}


class ProgressBar:
    """A carriage-return bar on a terminal stream; silent when the stream is not a tty."""

    def __init__(
        self, label: str, total: int, stream: TextIO, width: int = 30, unit: str = "epochs"
    ) -> None:
        self.label, self.total, self.stream, self.width = label, max(total, 1), stream, width
        self.unit = unit
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = -math.inf
        self.shown = ""

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.1):
            return
        self.last = now
        frac = done / self.total
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        self.shown = (
            f"\r{self.label:<9} [{bar}] {done}/{self.total} {self.unit} {elapsed:5.0f}s "
            f"(eta {eta:4.0f}s)"
        )
        self.stream.write(self.shown)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r" + " " * len(self.shown) + "\r")
            self.stream.flush()
            self.shown = ""


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, loss_fn: Callable[..., torch.Tensor]
) -> dict[str, float]:
    from softmaxkit.dynamics import softmax_collapse_fraction

    train_logits = model(data.pairs("train"))
    test_logits = model(data.pairs("test"))
    losses = loss_fn(train_logits, data.y_train, reduction="none")
    return {
        "train_loss": losses.double().mean().item() if losses.numel() else 0.0,
        "train_acc": _accuracy(train_logits, data.y_train),
        "test_acc": _accuracy(test_logits, data.y_test),
        "collapse": softmax_collapse_fraction(train_logits, dtype=torch.float32).item(),
        "zero_loss": (losses == 0).double().mean().item() if losses.numel() else 0.0,
        "weight_norm": math.sqrt(sum(p.double().square().sum().item() for p in model.parameters())),
    }


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    if target.numel() == 0:
        return 0.0
    return (logits.argmax(-1) == target).double().mean().item()


def train(
    name: str,
    data: Data,
    epochs: int,
    log_every: int,
    seed: int,
    *,
    out: TextIO,
    err: TextIO,
    stop_above: float | None = None,
) -> dict[str, Any]:
    """One run; returns its description, curves and final metrics. With ``stop_above`` the
    run ends at the first logged epoch whose test accuracy exceeds it. The model is built on
    the CPU (the same seeded initialisation on every device) and trained on ``data``'s."""
    torch.manual_seed(seed)  # same initialisation for every run
    model = make_model(data.p).to(data.y_train.device)
    opt, loss_fn, config = make_run(name, model.parameters())
    curves: dict[str, list[float]] = {"epoch": []}
    bar = ProgressBar(name, epochs, err)
    start = time.perf_counter()

    def log(epoch: int) -> None:
        metrics = evaluate(model, data, loss_fn)
        curves["epoch"].append(epoch)
        for key, value in metrics.items():
            curves.setdefault(key, []).append(value)
        bar.clear()
        print(
            f"  {name:<9} epoch {epoch:>6}  loss {metrics['train_loss']:.3e}  "
            f"train {100 * metrics['train_acc']:5.1f}%  test {100 * metrics['test_acc']:5.1f}%  "
            f"SC {100 * metrics['collapse']:5.1f}%  zero-loss {100 * metrics['zero_loss']:5.1f}%",
            file=out,
            flush=True,
        )
        bar.update(epoch, force=True)

    pairs = data.pairs("train")
    log(0)
    for epoch in range(1, epochs + 1):
        loss = loss_fn(model(pairs), data.y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if epoch % log_every == 0 or epoch == epochs:
            log(epoch)
            if stop_above is not None and curves["test_acc"][-1] > stop_above:
                break
        else:
            bar.update(epoch)
    bar.clear()
    seconds = time.perf_counter() - start
    config.update(epochs=curves["epoch"][-1], log_every=log_every, stop_above=stop_above)
    return {"config": config, "curves": curves, "seconds": seconds}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    c = result["curves"]
    best = max(range(len(c["test_acc"])), key=lambda i: (c["test_acc"][i], -i))
    over_95 = next((e for e, a in zip(c["epoch"], c["test_acc"]) if a > 0.95), None)
    return {
        "epochs": c["epoch"][-1],
        "train_acc": c["train_acc"][-1],
        "test_acc": c["test_acc"][-1],
        "best_test_acc": c["test_acc"][best],
        "best_test_epoch": c["epoch"][best],
        "first_epoch_test_over_95": over_95,
        "collapse": c["collapse"][-1],
        "max_collapse": max(c["collapse"]),
        "zero_loss": c["zero_loss"][-1],
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'run':<10}{'epochs':>7}{'train':>8}{'test':>8}{'best test (ep)':>17}"
        f"{'test>95% at':>13}{'SC':>8}{'max SC':>8}{'zero-loss':>11}{'time':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        s = r["final"]
        first = "-" if s["first_epoch_test_over_95"] is None else str(s["first_epoch_test_over_95"])
        best = f"{100 * s['best_test_acc']:.1f}% ({s['best_test_epoch']})"
        lines.append(
            f"{name:<10}{s['epochs']:>7}{100 * s['train_acc']:>7.1f}%{100 * s['test_acc']:>7.1f}%"
            f"{best:>17}{first:>13}{100 * s['collapse']:>7.1f}%{100 * s['max_collapse']:>7.1f}%"
            f"{100 * s['zero_loss']:>10.1f}%{r['seconds']:>7.1f}s"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Write the curves as a PNG; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(4.5 * len(results), 3.6), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, r) in zip(axes, results.items()):
        c = r["curves"]
        ax.plot(c["epoch"], [100 * v for v in c["train_acc"]], "--", label="train acc.")
        ax.plot(c["epoch"], [100 * v for v in c["test_acc"]], label="test acc.")
        ax.plot(c["epoch"], [100 * v for v in c["collapse"]], ":", label="Softmax Collapse")
        ax.plot(c["epoch"], [100 * v for v in c["zero_loss"]], "-.", label="zero-loss rows")
        ax.set_title(f"{name}: {r['config']['optimizer']}\n{r['config']['loss']}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-3, 103)
    axes[0].set_ylabel("% of the train / test pairs")
    axes[-1].legend(loc="center right", fontsize=8)
    canvas.print_png(str(path))  # type: ignore[no-untyped-call]  # unannotated in matplotlib
    return True


def _positive_int(text: str) -> int:
    return _checked(lambda: V.check_int("value", int(text), low=1), text)


_T = TypeVar("_T")


def _checked(fn: Callable[[], _T], text: str) -> _T:
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None


def write_json(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file in the folder, renamed), so
    a failed run never leaves a half-written file or destroys the previous one."""
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(payload, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _device(text: str) -> str:
    try:
        device = torch.device(text)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise argparse.ArgumentTypeError(f"device {text!r} is not usable here: {exc}") from None
    return text


def _fraction(text: str) -> float:
    return _checked(
        lambda: V.check_number("value", float(text), low=0, high=1, low_open=True, high_open=True),
        text,
    )


def _runs(text: str) -> list[str]:
    def parse() -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names:
            raise ValueError("expected a comma-separated subset of " + ",".join(RUNS))
        for n in names:
            V.check_choice("run", n, RUNS)
        return list(dict.fromkeys(names))

    return _checked(parse, text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [" + "|".join(EXPERIMENTS) + "] [options]"
    parser.description = (
        "Grokking on modular addition (Prieto et al. 2025, arXiv:2501.04697): softmax "
        "cross-entropy collapses, ⊥Grad generalises at once, StableMax keeps every gradient. "
        "Other experiments: "
        + "; ".join(f"`softmaxkit demo {k}`: {v}" for k, (_, v) in EXPERIMENTS.items())
        + "."
    )
    parser.add_argument("--p", type=_positive_int, default=113, help="modulus (default 113)")
    parser.add_argument(
        "--train-fraction",
        type=_fraction,
        default=None,
        help="fraction of the p^2 pairs used for training (default 0.4, the paper's Fig. 1; "
        f"{LONG_TRAIN_FRACTION} with --long, its Fig. 2)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs for every run (default: softmax 2000, perpgrad 300, stablemax 500)",
    )
    parser.add_argument(
        "--runs",
        type=_runs,
        default=list(RUNS),
        help="comma-separated subset of softmax,perpgrad,stablemax (default: all three)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("softmaxkit-demo"),
        help="output folder for curves.json, curves.png and report/ (default ./softmaxkit-demo)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of split and init (42)")
    parser.add_argument(
        "--long",
        action="store_true",
        help=f"run StableMax with the paper's settings until it groks (test accuracy above "
        f"{GROKKED:.0%} at a log point, every {LONG_LOG_EVERY} epochs) or for the paper's "
        f"{LONG_STABLEMAX_EPOCHS:,} epochs",
    )
    parser.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="torch device to train on, e.g. cuda (default cpu)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="do not end with `softmaxkit report` on its built-in task (written to <out>/report)",
    )
    parser.add_argument(
        "--log-every",
        type=_positive_int,
        default=None,
        help=f"epochs between log lines (default: about {TARGET_POINTS} per run)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    p, fraction = args.p, args.train_fraction
    if fraction is None:
        fraction = LONG_TRAIN_FRACTION if args.long else TRAIN_FRACTION
    if p < 2 or int(fraction * p * p) in (0, p * p):
        print(
            f"softmaxkit demo: --p {p} with --train-fraction {fraction} leaves an empty "
            "train or test set",
            file=err,
        )
        return 2
    device = torch.device(args.device)
    data = make_data(p, fraction, args.seed).to(device)
    print(
        f"Modular addition mod {p}: {len(data.y_train)} train / {len(data.y_test)} test pairs, "
        f"MLP {2 * p}-{HIDDEN}-{HIDDEN}-{p} (no biases), full batch, seed {args.seed}",
        file=out,
    )
    results: dict[str, dict[str, Any]] = {}
    for name in args.runs:
        long = name == "stablemax" and args.long
        epochs = args.epochs or (LONG_STABLEMAX_EPOCHS if long else DEFAULT_EPOCHS[name])
        log_every = args.log_every or (LONG_LOG_EVERY if long else max(1, epochs // TARGET_POINTS))
        stop = GROKKED if long else None
        r = train(name, data, epochs, log_every, args.seed, out=out, err=err, stop_above=stop)
        epochs = r["config"]["epochs"]
        print(
            f"  -> {name}: {r['config']['optimizer']}, {r['config']['loss']}, "
            f"{epochs} epochs in {r['seconds']:.1f}s",
            file=out,
            flush=True,
        )
        r["final"] = summary(r)
        results[name] = r

    print("\n" + table(results), file=out)
    print(NOTE, file=out)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "paper": "Prieto et al., Grokking at the Edge of Numerical Stability, ICLR 2025, "
        "arXiv:2501.04697",
        "task": {
            "p": p,
            "train_fraction": fraction,
            "n_train": len(data.y_train),
            "n_test": len(data.y_test),
            "seed": args.seed,
            "device": str(device),
            "model": f"MLP {2 * p}-{HIDDEN}-{HIDDEN}-{p}, ReLU, no biases, float32",
        },
        "runs": results,
    }
    json_path = args.out / "curves.json"
    write_json(payload, json_path)
    print(f"\nCurves: {json_path}", file=out)
    png_path = args.out / "curves.png"
    if plot(results, png_path):
        print(f"Plot:   {png_path}", file=out)
    else:
        print("Plot:   skipped (matplotlib is not installed; pip install matplotlib)", file=out)
    if getattr(args, "no_report", False):
        return 0
    return run_report(args.out / "report", out, err)


def run_report(directory: Path, out: TextIO, err: TextIO) -> int:
    """``softmaxkit report`` (built-in task, default options) into ``directory``."""
    from softmaxkit.cli import report

    parser = argparse.ArgumentParser(prog=report.PROG)
    report.add_arguments(parser)
    print("\nCalibration / OOD report on the built-in digits task (softmaxkit report):", file=out)
    rc = report.run(parser.parse_args(["--out", str(directory)]), out, err)
    if rc == report.EXIT_MISSING_DEPENDENCY:  # the demo itself worked
        print("Report: skipped (pip install 'softmaxkit[report]')", file=out)
        return 0
    return rc
