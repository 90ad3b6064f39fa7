"""``softmaxkit demo ood``: PALM against cross-entropy training for OOD detection.

Lu et al., "Learning with Mixture of Prototypes for Out-of-Distribution Detection", ICLR
2024, arXiv:2402.02653, claim that an encoder trained with PALM (:class:`softmaxkit.ood.
PALMLoss`) and scored with SSD+ on its penultimate features detects OOD inputs better than
the scores of a cross-entropy classifier. This demo runs that comparison on the built-in
task of ``softmaxkit report``:

- **Data.** scikit-learn's bundled digits (8x8, pixels / 16); classes 0-7 in-distribution,
  8 and 9 held out as OOD; the classes 0-7 split (seeded) into a train set (``--train-
  fraction``, default 0.15 as the report's task) and a test set, exactly as
  :func:`softmaxkit.cli.report.builtin_task`.
- **Encoder.** The report's MLP body, 64-``--hidden`` ReLU, trained twice from the same
  seeded initialisation, full batch, Adam (lr 0.01), ``--epochs`` steps:
  (a) cross-entropy through a linear head to 8 classes; (b) PALM through the official
  projection head (Linear-ReLU-Linear to ``--feat-dim``, L2-normalised) with two augmented
  views per image, :class:`~softmaxkit.ood.PALMLoss` at the official run's defaults
  (6 prototypes per class, k 5, EMA 0.999, temperature 0.1). The official code trains
  ResNets with SGD (lr 0.5, batch 512, 500 epochs); Adam on the full batch is the
  report task's recipe, kept for both arms.
- **Augmentation** (ours, for 8x8 digits; the official code's random resized crops and
  flips do not suit them): a random shift of up to one pixel in each direction (zero
  padding) and Gaussian pixel noise (std 0.05), clamped to [0, 1]. The cross-entropy arm
  sees one augmented view per step (the official code's CE baseline trains on the same
  augmentation), PALM two.
- **Scores.** The test set's rows are split in halves as ``softmaxkit report`` does
  (``split_halves``, ``--seed``); the feature scores are fitted on the fit half
  (penultimate features: the encoder's output for both arms, as PALM's evaluation) and
  every score is judged on the other half (ID) against classes 8 and 9 (OOD), with the
  report's own code (:func:`softmaxkit.cli.report.ood_scores`: MSP, max logit, energy,
  Mahalanobis, kNN) plus SSD+ (:class:`softmaxkit.ood.SSDScore`, PALM's published score)
  and, for PALM, the prototype mixture (:class:`softmaxkit.ood.PrototypeScore` on the
  projected features; our construction). PALM has no classifier: its logit scores and ID
  accuracy do not exist (the nearest-prototype accuracy is reported instead).

Writes ``<out>/results.json`` (atomically) and ``<out>/auroc.png`` (when matplotlib is
installed). Numbers are whatever the run gives: on digits PALM's SSD+ need not win.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as V
from softmaxkit import ood as O
from softmaxkit.cli.demo import ProgressBar, write_json
from softmaxkit.cli.report import Data, ood_scores, split_halves
from softmaxkit.cli.report_scores import SCORE_LABELS
from softmaxkit.cli.report_task import (
    BUILTIN_HELD_OUT,
    BUILTIN_HIDDEN,
    BUILTIN_LR,
    BUILTIN_TRAIN_FRACTION,
    _threads,
    builtin_images,
)

DESCRIPTION = (
    "PALM (Lu et al. 2024) against cross-entropy training: OOD scores on digits 0-7 vs 8-9"
)
PROG = "softmaxkit demo ood"
PAPER = (
    "Lu et al., Learning with Mixture of Prototypes for Out-of-Distribution Detection, "
    "ICLR 2024, arXiv:2402.02653"
)
DEFAULT_EPOCHS = 500
DEFAULT_FEAT_DIM = 128
SHIFT = 1  # pixels, each direction
NOISE_STD = 0.05
EXTRA_LABELS = {
    "ssd_plus": "SSD+ (PALM's score, empirical covariance)",
    "prototype": "prototype mixture (PALM prototypes; ours)",
}
TABLE_ORDER = ["msp", "max_logit", "energy", "mahalanobis", "knn", "ssd_plus", "prototype"]


# ------------------------------------------------------------------------------ data


def load_task(seed: int, train_fraction: float) -> dict[str, torch.Tensor]:
    """The report task's images: train / test of classes 0-7 (seeded split) and 8-9 (OOD)."""
    images = builtin_images(seed, train_fraction, "softmaxkit demo ood")
    x_in, y_in, train, test = images["x_in"], images["y_in"], images["train"], images["test"]
    return {
        "x_train": x_in[train],
        "y_train": y_in[train],
        "x_test": x_in[test],
        "y_test": y_in[test],
        "x_ood": images["x_ood"],
    }


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift of up to ``SHIFT`` pixels per axis (zero padding) and Gaussian noise
    of std ``NOISE_STD``, clamped to [0, 1]; ``x`` is (N, 64) of 8x8 images."""
    n = x.shape[0]
    side = 8 + 2 * SHIFT
    padded = F.pad(x.view(n, 8, 8), (SHIFT, SHIFT, SHIFT, SHIFT))
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n, 1), generator=generator)
    rows = (dy + torch.arange(8))[:, :, None]
    cols = (dx + torch.arange(8))[:, None, :]
    shifted = padded.view(n, side, side)[torch.arange(n)[:, None, None], rows, cols]
    noise = NOISE_STD * torch.randn(shifted.shape, generator=generator)
    return (shifted + noise).clamp(0.0, 1.0).reshape(n, 64)


# --------------------------------------------------------------------------- training


def _encoder(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU())


def _train(
    label: str,
    modules: list[nn.Module],
    step: Callable[[torch.Generator], torch.Tensor],
    epochs: int,
    seed: int,
    err: TextIO,
) -> tuple[list[float], float]:
    """Full-batch Adam on ``modules``' parameters; ``step(gen)`` returns the loss."""
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=BUILTIN_LR)
    gen = torch.Generator().manual_seed(seed + 1)
    bar = ProgressBar(label, epochs, err)
    losses: list[float] = []
    start = time.monotonic()
    for epoch in range(epochs):
        loss = step(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update(epoch + 1)
    bar.update(epochs, force=True)
    bar.clear()
    return losses, time.monotonic() - start


def train_ce(
    task: dict[str, torch.Tensor], hidden: int, epochs: int, seed: int, err: TextIO
) -> dict[str, Any]:
    encoder = _encoder(hidden, seed)
    head = nn.Linear(hidden, 8)
    x, y = task["x_train"], task["y_train"]

    def step(gen: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(head(encoder(augment(x, gen))), y)

    losses, seconds = _train("ce", [encoder, head], step, epochs, seed, err)
    with torch.no_grad():
        f_test, f_ood = encoder(task["x_test"]), encoder(task["x_ood"])
        logits_test, logits_ood = head(f_test), head(f_ood)
    return {
        "features": (f_test, f_ood),
        "logits": (logits_test, logits_ood),
        "losses": losses,
        "seconds": seconds,
        "id_accuracy": (logits_test.argmax(1) == task["y_test"]).double().mean().item(),
    }


def train_palm(
    task: dict[str, torch.Tensor],
    hidden: int,
    feat_dim: int,
    epochs: int,
    seed: int,
    err: TextIO,
) -> dict[str, Any]:
    encoder = _encoder(hidden, seed)
    proj = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, feat_dim))
    criterion = O.PALMLoss(8, feat_dim)  # official defaults; prototypes from the seeded RNG
    x, y = task["x_train"], task["y_train"]
    parts: dict[str, float] = {}

    def step(gen: torch.Generator) -> torch.Tensor:
        views = torch.stack([augment(x, gen), augment(x, gen)], 1)  # (B, 2, 64)
        z = F.normalize(proj(encoder(views)), dim=-1)  # the official model's output
        out: O.PALMLossOutput = criterion(z, y)
        parts["mle"], parts["proto_contra"] = out.mle.item(), out.proto_contra.item()
        return out.loss

    losses, seconds = _train("palm", [encoder, proj], step, epochs, seed, err)
    criterion.eval()
    with torch.no_grad():
        f_test, f_ood = encoder(task["x_test"]), encoder(task["x_ood"])
        z_test, z_ood = proj(f_test), proj(f_ood)
    proto = O.PrototypeScore(criterion.prototypes, num_classes=8, temperature=0.1)
    with torch.no_grad():
        nearest = proto.class_scores(z_test).argmax(1)
    return {
        "features": (f_test, f_ood),
        "projected": (z_test, z_ood),
        "prototype_score": proto,
        "losses": losses,
        "final_parts": dict(parts),
        "seconds": seconds,
        "prototype_accuracy": (nearest == task["y_test"]).double().mean().item(),
    }


# ---------------------------------------------------------------------------- scoring


def _metrics(s_in: torch.Tensor, s_out: torch.Tensor) -> dict[str, float]:
    """The metric set of ``softmaxkit report`` for one extra score."""
    return {
        "auroc": O.auroc(s_in, s_out).item(),
        "aupr_in": O.aupr_in(s_in, s_out).item(),
        "aupr_out": O.aupr_out(s_in, s_out).item(),
        "fpr_at_95_tpr": O.fpr_at_tpr(s_in, s_out, tpr=0.95).item(),
    }


def _with_warnings(fn: Callable[[], dict[str, float]], notes: list[str]) -> dict[str, float]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    notes.extend(dict.fromkeys(str(w.message) for w in caught))
    return result


def score_arm(
    name: str,
    arm: dict[str, Any],
    y_test: torch.Tensor,
    fit: torch.Tensor,
    evaluate: torch.Tensor,
) -> dict[str, Any]:
    """The report's OOD table of one arm (its features, and logits for CE) plus SSD+ (and
    the prototype score for PALM)."""
    f_test, f_ood = arm["features"]
    if name == "ce":
        logits_test, logits_ood = arm["logits"]
    else:  # PALM has no classifier: placeholder logits, whose rows are dropped below
        logits_test, logits_ood = torch.zeros(len(f_test), 8), torch.zeros(len(f_ood), 8)
    data = Data(logits_test, y_test, f_test, f"{name} test set")
    ood = Data(logits_ood, None, f_ood, "digits 8 and 9")
    part = ood_scores(data, ood, fit, evaluate)
    part.pop("_raw")
    scores: dict[str, Any] = dict(part["scores"])
    notes: dict[str, list[str]] = dict(part["warnings"])
    if name != "ce":
        for key in ("msp", "max_logit", "energy"):
            scores.pop(key, None)
            notes.pop(key, None)
    ssd_notes: list[str] = []

    def ssd() -> dict[str, float]:
        detector = O.SSDScore().fit(f_test[fit])
        return _metrics(detector.score(f_test[evaluate]), detector.score(f_ood))

    scores["ssd_plus"] = _with_warnings(ssd, ssd_notes)
    if ssd_notes:
        notes["ssd_plus"] = ssd_notes
    if name == "palm":
        z_test, z_ood = arm["projected"]
        proto = arm["prototype_score"]
        scores["prototype"] = _metrics(proto.score(z_test[evaluate]), proto.score(z_ood))
    return {
        "n_fit": len(fit),
        "n_in": part["n_in"],
        "n_out": part["n_out"],
        "knn_k": part["knn_k"],
        "scores": scores,
        "skipped": part["skipped"],
        "warnings": notes,
    }


# ------------------------------------------------------------------------------ output


def _label(key: str) -> str:
    return SCORE_LABELS.get(key) or EXTRA_LABELS[key]


def table(results: dict[str, Any]) -> str:
    arms = results["arms"]
    width = max(len(_label(k)) for k in TABLE_ORDER)
    head = f"{'score':<{width}}  {'CE AUROC':>8}  {'FPR@95':>6}  {'PALM AUROC':>10}  {'FPR@95':>6}"
    lines = [head, "-" * len(head)]
    for key in TABLE_ORDER:
        cells = []
        for arm, w in (("ce", 8), ("palm", 10)):
            s = arms[arm]["ood"]["scores"].get(key)
            if s is None:
                cells += [f"{'-':>{w}}", f"{'-':>6}"]
            else:
                cells += [f"{s['auroc']:>{w}.3f}", f"{s['fpr_at_95_tpr']:>6.3f}"]
        lines.append(f"{_label(key):<{width}}  " + "  ".join(cells))
    ce, palm = arms["ce"], arms["palm"]
    lines.append("")
    lines.append(
        f"ID accuracy (test set): CE {ce['id_accuracy']:.3f}; PALM has no classifier "
        f"(nearest-prototype accuracy {palm['prototype_accuracy']:.3f}, our construction). "
        "'-': the score needs a classifier's logits (or PALM's prototypes)."
    )
    verdict = results["claim"]
    lines.append(
        f"Paper's claim (PALM's SSD+ beats the CE scores): PALM SSD+ AUROC "
        f"{verdict['palm_ssd_plus_auroc']:.3f} vs best CE score {verdict['best_ce_score']} "
        f"{verdict['best_ce_auroc']:.3f}: {'holds' if verdict['holds'] else 'does not hold'} "
        "on this run."
    )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    """Grouped bars of every score's AUROC for both arms; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(8.0, 3.8), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    arms = results["arms"]
    lowest = min(s["auroc"] for a in arms.values() for s in a["ood"]["scores"].values())
    for offset, (arm, label) in ((-0.2, ("ce", "cross-entropy")), (0.2, ("palm", "PALM"))):
        xs, ys = [], []
        for i, key in enumerate(TABLE_ORDER):
            s = arms[arm]["ood"]["scores"].get(key)
            if s is not None:
                xs.append(i + offset)
                ys.append(s["auroc"])
        ax.bar(xs, ys, width=0.4, label=label)
    ax.set_xticks(range(len(TABLE_ORDER)))
    ax.set_xticklabels([_label(k).split(" (")[0] for k in TABLE_ORDER], fontsize=8)
    ax.set_ylabel("AUROC (ID: digits 0-7, OOD: 8, 9)")
    ax.set_ylim(min(0.5, lowest - 0.05), 1.0)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("softmaxkit demo ood: PALM vs cross-entropy", fontsize=9)
    canvas.print_png(str(path))  # type: ignore[no-untyped-call]  # unannotated in matplotlib
    return True


# ------------------------------------------------------------------------ command line


def _checked(fn: Callable[[], Any], text: str) -> Any:
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None


def _positive_int(text: str) -> int:
    return int(_checked(lambda: V.check_int("value", int(text), low=1), text))


def _fraction(text: str) -> float:
    return float(
        _checked(
            lambda: V.check_number(
                "value", float(text), low=0, high=1, low_open=True, high_open=True
            ),
            text,
        )
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "PALM (Lu et al. 2024, arXiv:2402.02653) against cross-entropy training on the "
        "built-in digits task of `softmaxkit report` (classes 8 and 9 held out as OOD): "
        "the same encoder trained both ways, the report's OOD table plus SSD+."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("softmaxkit-demo") / "ood",
        help="output folder for results.json and auroc.png (default softmaxkit-demo/ood)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init, views (0)")
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help=f"full-batch Adam steps of each arm (default {DEFAULT_EPOCHS}, the report's)",
    )
    parser.add_argument(
        "--train-fraction",
        type=_fraction,
        default=BUILTIN_TRAIN_FRACTION,
        help=f"share of classes 0-7 used for training (default {BUILTIN_TRAIN_FRACTION}, "
        "the report's)",
    )
    parser.add_argument(
        "--hidden",
        type=_positive_int,
        default=BUILTIN_HIDDEN,
        help=f"encoder width (default {BUILTIN_HIDDEN}, the report's)",
    )
    parser.add_argument(
        "--feat-dim",
        type=_positive_int,
        default=DEFAULT_FEAT_DIM,
        help=f"PALM's projected feature width (default {DEFAULT_FEAT_DIM}, the official)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        task = load_task(args.seed, args.train_fraction)
    except ImportError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 1
    n_train, n_test = len(task["y_train"]), len(task["y_test"])
    if n_train < 8 or n_test < 4 or len(task["y_train"].unique()) < 8:
        print(
            f"{PROG}: error: --train-fraction {args.train_fraction} leaves {n_train} train / "
            f"{n_test} test images; every class 0-7 needs a training image and the test set "
            "at least 4",
            file=err,
        )
        return 2
    print(
        f"Digits 0-7 (ID): {n_train} train / {n_test} test images; digits 8, 9 (OOD): "
        f"{len(task['x_ood'])}. Encoder MLP 64-{args.hidden} ReLU, full-batch Adam "
        f"lr {BUILTIN_LR}, {args.epochs} steps, seed {args.seed}",
        file=out,
        flush=True,
    )
    with _threads(1):  # tiny models: one thread, and results independent of the machine
        ce = train_ce(task, args.hidden, args.epochs, args.seed, err)
        print(f"  -> cross-entropy: {ce['seconds']:.1f}s", file=out, flush=True)
        palm = train_palm(task, args.hidden, args.feat_dim, args.epochs, args.seed, err)
        print(f"  -> PALM: {palm['seconds']:.1f}s", file=out, flush=True)
        fit, evaluate = split_halves(n_test, args.seed)
        scored = {
            name: score_arm(name, arm, task["y_test"], fit, evaluate)
            for name, arm in (("ce", ce), ("palm", palm))
        }
    ce_scores = scored["ce"]["scores"]
    best = max(ce_scores, key=lambda k: ce_scores[k]["auroc"])
    palm_ssd = scored["palm"]["scores"]["ssd_plus"]["auroc"]
    results: dict[str, Any] = {
        "paper": PAPER,
        "task": {
            "dataset": "scikit-learn load_digits (bundled, 8x8, pixels / 16)",
            "in_distribution_classes": list(range(8)),
            "ood_classes": list(BUILTIN_HELD_OUT),
            "n_train": n_train,
            "n_test": n_test,
            "n_ood": len(task["x_ood"]),
            "train_fraction": args.train_fraction,
            "seed": args.seed,
            "scoring": "test set split in halves (split_halves, seed): feature scores fitted "
            "on the fit half, every score judged on the other half (ID) vs all of 8 and 9",
        },
        "settings": {
            "epochs": args.epochs,
            "optimizer": f"Adam lr {BUILTIN_LR}, full batch",
            "encoder": f"Linear(64, {args.hidden}) + ReLU (features = its output)",
            "ce_head": f"Linear({args.hidden}, 8)",
            "palm_head": f"Linear({args.hidden}, {args.hidden}) + ReLU + "
            f"Linear({args.hidden}, {args.feat_dim}), L2-normalised",
            "palm_loss": "PALMLoss(8, feat_dim): cache_size 6, k 5, proto_m 0.999, "
            "temperature 0.1, epsilon 0.05, 3 Sinkhorn sweeps, lambda_pcon 1",
            "augmentation": f"random shift up to {SHIFT} px per axis (zero padding) + "
            f"Gaussian noise std {NOISE_STD}, clamped to [0, 1]; CE 1 view, PALM 2 views",
        },
        "arms": {
            "ce": {
                "final_loss": ce["losses"][-1],
                "first_loss": ce["losses"][0],
                "seconds": ce["seconds"],
                "id_accuracy": ce["id_accuracy"],
                "ood": scored["ce"],
            },
            "palm": {
                "final_loss": palm["losses"][-1],
                "first_loss": palm["losses"][0],
                "final_parts": palm["final_parts"],
                "seconds": palm["seconds"],
                "id_accuracy": None,
                "prototype_accuracy": palm["prototype_accuracy"],
                "ood": scored["palm"],
            },
        },
        "claim": {
            "statement": "PALM's SSD+ on penultimate features beats cross-entropy-based scores",
            "palm_ssd_plus_auroc": palm_ssd,
            "best_ce_score": best,
            "best_ce_auroc": ce_scores[best]["auroc"],
            "holds": palm_ssd > ce_scores[best]["auroc"],
        },
    }
    print("\n" + table(results), file=out)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / "results.json"
        write_json(results, json_path)
    except OSError as exc:
        print(f"{PROG}: error: cannot write the results: {exc}", file=err)
        return 2
    print(f"\nResults: {json_path}", file=out)
    png_path = args.out / "auroc.png"
    if plot(results, png_path):
        print(f"Plot:    {png_path}", file=out)
    else:
        print("Plot:    skipped (matplotlib is not installed; pip install matplotlib)", file=out)
    return 0
