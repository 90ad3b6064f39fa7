"""``softmaxkit report``: calibration and out-of-distribution report for a file of logits.

Usage::

    softmaxkit report [INPUT] [--ood OOD_INPUT] [--out DIR] [--n-bins 15] [--seed 0]

Input files (INPUT and OOD_INPUT), chosen by extension:

* ``.pt``: a dict saved with ``torch.save`` and read back with
  ``torch.load(..., weights_only=True)`` (tensors, NumPy arrays are not allowed there);
* ``.npz``: a NumPy archive (``numpy.savez``), read with ``allow_pickle=False``;
* ``.csv``: a header row, then one row per sample. Columns ``label`` (the class index),
  ``logit_0`` ... ``logit_{C-1}`` and optionally ``feature_0`` ... ``feature_{d-1}``, in any
  order; no other column. Blank lines are skipped.

The ``.pt`` / ``.npz`` keys are ``logits`` (N, C), ``labels`` (N,) integer class indices in
``[0, C-1]`` and optionally ``features`` (N, d), e.g. a network's penultimate layer. The OOD
input needs ``logits`` with the same C, and ``features`` with the same d when INPUT has
features; its labels are optional and never used. All values must be finite. float64
values are kept in float64; any other dtype (float16, bfloat16, integers) is read as
float32.

What is computed (numbers in ``DIR/report.json``, tables and plots in ``DIR/report.html``,
a single file with the PNG plots inlined as base64):

* on all of INPUT: accuracy, NLL, Brier score, ECE (l1 with uniform bins, l1 with adaptive
  equal-mass bins, l2 and max with uniform bins), classwise ECE, and the Softmax Collapse
  fraction (rows whose float32 softmax is exactly one-hot, Prieto et al. 2025,
  arXiv:2501.04697);
* calibration: INPUT is split in two halves by a seeded permutation (``--seed``);
  temperature, vector and matrix scaling are fitted (NLL) on the first half and every
  metric is reported on the second half, before and after each method, with the fitted
  parameters; reliability diagrams and confidence histograms of the second half before and
  after temperature scaling;
* with ``--ood``: the scores MSP, max logit, energy (T = 1) and, when features are given,
  Mahalanobis (class means and tied covariance fitted on the first half, the covariance
  shrunk by Ledoit-Wolf: the paper's plain estimate is singular whenever features are
  dead or outnumber the samples) and kNN
  (bank = the first half; k = ``--knn-k``, by default the ratio k / bank of Sun et al.
  2022's CIFAR-10 setting, k = 50 for 50,000 images, i.e. ``max(1, round(bank / 1000))``;
  the ratio rule is ours), all "higher = more in-distribution"; in-distribution = the
  second half of INPUT, out-of-distribution = all of OOD_INPUT; AUROC, AUPR-in, AUPR-out
  and FPR at 95% TPR of each score.

Without INPUT the report runs on a built-in task: scikit-learn's bundled digits (8x8
images, no download); the images of classes 0-7 are split (seeded) into a small train
set (15%, about 27 per class, so that the network overfits and is over-confident, as
Guo et al. 2017 found of modern networks) and a test set; a 64-128-8 ReLU MLP is trained
on the train set (full batch, Adam, seeded, one thread) and the report covers the test
set (features = the 128 hidden units) with classes 8 and 9 as the out-of-distribution
data. About 3 s on two CPU cores.

The command is split by job: :mod:`~softmaxkit.cli.report_inputs` reads and checks the
files, :mod:`~softmaxkit.cli.report_task` is the built-in task,
:mod:`~softmaxkit.cli.report_scores` is the registry of OOD scores (add one there and it is
in the report), :mod:`~softmaxkit.cli.report_analysis` computes the numbers and
:mod:`~softmaxkit.cli.report_html` draws the plots and writes the page, the JSON and the
terminal summary; this module holds the command line.

Exit status: 0 on success, 1 when an optional dependency (matplotlib; scikit-learn for
the built-in task; ``pip install 'softmaxkit[report]'``) is missing, 2 on a usage error,
a bad input file, a report that cannot be written, or any error of the analysis (e.g. a
scaler's fit that diverges). Errors are one line on stderr: ``softmaxkit report: error:
...``. ``report.json`` and ``report.html`` are replaced together or not at all: both are
written to temporary files in DIR and renamed into place only when both were written, so
a failed run leaves the previous pair as it was and no temporary file behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from softmaxkit import _validation as V
from softmaxkit.cli.report_analysis import DEFAULT_N_BINS, analyse, ood_scores, split_halves
from softmaxkit.cli.report_html import METRIC_LABELS, make_plots, summary_text, write_report
from softmaxkit.cli.report_inputs import Data, ReportError, check_ood, first_line, load_input
from softmaxkit.cli.report_scores import OOD_SCORES, default_knn_k
from softmaxkit.cli.report_task import _threads, builtin_task

# the command's entry points, and the pieces of the report (one module per job) that the
# tests and `softmaxkit demo` reach through this module
__all__ = [
    "DEFAULT_N_BINS",
    "METRIC_LABELS",
    "OOD_SCORES",
    "Data",
    "MissingDependencyError",
    "ReportError",
    "add_arguments",
    "build_report",
    "builtin_task",
    "check_ood",
    "default_knn_k",
    "load_input",
    "ood_scores",
    "run",
    "split_halves",
    "summary_text",
]

PROG = "softmaxkit report"
EXIT_MISSING_DEPENDENCY = 1
EXIT_BAD_INPUT = 2
SMALL_INPUT = 1 << 18  # logits entries up to which the report runs on one thread
INPUT_FORMAT = """input files (INPUT, OOD_INPUT), chosen by extension:
  .pt   a dict saved with torch.save (read with torch.load(weights_only=True))
  .npz  a numpy.savez archive (read with allow_pickle=False)
        keys: logits (N, C) floating, labels (N,) class indices in [0, C-1],
        optional features (N, d)
  .csv  header row, then one row per sample; columns: label, logit_0 .. logit_{C-1},
        optional feature_0 .. feature_{d-1} (any order, no other column)
The OOD input needs logits with the same C (labels optional, unused) and features
with the same d when INPUT has features. All values must be finite.

Without INPUT: a built-in task (scikit-learn's bundled digits, classes 8 and 9 held
out as OOD, a small seeded MLP). Writes DIR/report.json and DIR/report.html.
Exit status: 0 ok, 1 missing optional dependency, 2 usage error or bad input."""


class MissingDependencyError(Exception):
    """An optional dependency is not installed (exit status 1)."""


def build_report(
    data: Data,
    ood: Data | None,
    *,
    n_bins: int = DEFAULT_N_BINS,
    seed: int = 0,
    knn_k: int | None = None,
) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """All numbers of the report (a JSON-ready dict) and its plots (name -> (caption, PNG))."""
    report, plot_inputs = analyse(data, ood, n_bins=n_bins, seed=seed, knn_k=knn_k)
    return report, make_plots(*plot_inputs)


# --------------------------------------------------------------------------- command line


def _positive_int(text: str) -> int:
    try:
        return V.check_int("value", int(text), low=1)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Calibration (accuracy, NLL, Brier, the ECE family; temperature, vector and matrix\n"
        "scaling), Softmax Collapse and OOD scores of a file of logits, written as\n"
        "DIR/report.json and a self-contained DIR/report.html."
    )
    parser.epilog = INPUT_FORMAT
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "input",
        nargs="?",
        default=None,
        metavar="INPUT",
        help="logits and labels (.pt, .npz or .csv; see below); default: the built-in task",
    )
    parser.add_argument(
        "--ood", default=None, metavar="OOD_INPUT", help="out-of-distribution logits (and features)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("softmaxkit-report"),
        metavar="DIR",
        help="output folder for report.json and report.html (default ./softmaxkit-report)",
    )
    parser.add_argument(
        "--n-bins",
        type=_positive_int,
        default=DEFAULT_N_BINS,
        help=f"confidence bins of the ECE family and plots (default {DEFAULT_N_BINS})",
    )
    parser.add_argument(
        "--knn-k",
        type=_positive_int,
        default=None,
        help="neighbours of the kNN OOD score (default: max(1, round(bank / 1000)), the "
        "k / bank ratio of Sun et al. 2022 on CIFAR-10; bank = the fit half)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the fit / eval split and the built-in task (0)"
    )


def _check_dependencies(builtin: bool) -> None:
    missing = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("matplotlib")
    if builtin:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            missing.append("scikit-learn")
    if missing:
        raise MissingDependencyError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            f"(needed for the report{' on the built-in task' if 'scikit-learn' in missing else ''}"
            "); install with: pip install 'softmaxkit[report]'"
        )


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        _check_dependencies(builtin=args.input is None)
        builtin = None
        ood: Data | None
        if args.input is None:
            if args.ood is not None:
                raise ReportError(
                    "--ood needs an INPUT file (the built-in task has its own OOD data)"
                )
            data, ood, builtin = builtin_task(args.seed)
        else:
            data = load_input(args.input)
            ood = None if args.ood is None else load_input(args.ood, ood=True)
            if ood is not None:
                check_ood(data, ood)
        # Small inputs: one thread; the many tiny steps of the scalers' L-BFGS fits only
        # pay thread overhead (up to 10x slower on a busy machine).
        small = data.logits.numel() <= SMALL_INPUT
        with _threads(1 if small else None):
            report, plots = build_report(
                data, ood, n_bins=args.n_bins, seed=args.seed, knn_k=args.knn_k
            )
        if builtin is not None:
            report["builtin"] = builtin
        json_path, html_path = write_report(report, plots, args.out)
    except MissingDependencyError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_MISSING_DEPENDENCY
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - whatever escapes the analysis is one line
        # (a scaler's "fit diverged", a linear-algebra failure, a NaN where a number is
        # needed, ...); nothing was written, so the previous report is intact
        print(f"{PROG}: error: the analysis failed: {first_line(exc)}", file=err)
        return EXIT_BAD_INPUT
    print(summary_text(report), file=out)
    print(f"\nReport: {html_path}\nNumbers: {json_path}", file=out)
    return 0
