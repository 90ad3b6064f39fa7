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
  Mahalanobis (class means and tied covariance fitted on the first half) and kNN
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

Exit status: 0 on success, 1 when an optional dependency (matplotlib; scikit-learn for
the built-in task; ``pip install 'softmaxkit[report]'``) is missing, 2 on a usage error
or a bad input file. Errors are one line on stderr: ``softmaxkit report: error: ...``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import html
import io
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from softmaxkit import _validation as V

PROG = "softmaxkit report"
EXIT_MISSING_DEPENDENCY = 1
EXIT_BAD_INPUT = 2
EXTENSIONS = (".pt", ".npz", ".csv")
DEFAULT_N_BINS = 15
KNN_K = 50  # Sun et al. 2022 (arXiv:2204.06507), CIFAR-10: k = 50 ...
KNN_BANK = 50_000  # ... for its 50,000 training images; we keep the ratio k / bank
BUILTIN_HELD_OUT = (8, 9)
SMALL_INPUT = 1 << 18  # logits entries up to which the report runs on one thread
BUILTIN_HIDDEN = 128
BUILTIN_EPOCHS = 500
BUILTIN_TRAIN_FRACTION = 0.15  # small: the MLP overfits and is over-confident
BUILTIN_LR = 0.01
METRIC_LABELS = {
    "accuracy": "accuracy",
    "nll": "NLL",
    "brier": "Brier",
    "ece_l1_uniform": "ECE (l1, uniform)",
    "ece_l1_adaptive": "ECE (l1, adaptive)",
    "ece_l2": "ECE (l2)",
    "ece_max": "ECE (max)",
    "classwise_ece": "classwise ECE",
}
METHOD_LABELS = {
    "uncalibrated": "uncalibrated",
    "temperature": "temperature scaling",
    "vector": "vector scaling",
    "matrix": "matrix scaling",
}
OOD_METRIC_LABELS = {
    "auroc": "AUROC",
    "aupr_in": "AUPR-in",
    "aupr_out": "AUPR-out",
    "fpr_at_95_tpr": "FPR@95%TPR",
}
SCORE_LABELS = {
    "msp": "MSP (max softmax probability)",
    "max_logit": "max logit",
    "energy": "energy (T = 1)",
    "mahalanobis": "Mahalanobis (tied covariance)",
    "knn": "kNN (normalised features)",
}
SPLIT_NOTE = (
    "The scaling methods are fitted (NLL) on one half of the input, chosen by a permutation "
    "seeded with --seed {seed} ({n_fit} rows), and every calibration metric, plot and "
    "OOD score is evaluated on the other half ({n_eval} rows)."
)
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


class ReportError(Exception):
    """A bad input or argument, reported as one line on stderr (exit status 2)."""


class MissingDependencyError(Exception):
    """An optional dependency is not installed (exit status 1)."""


@dataclass(frozen=True)
class Data:
    """Logits (N, C), labels (N,) or None, features (N, d) or None, and where they came from."""

    logits: torch.Tensor
    labels: torch.Tensor | None
    features: torch.Tensor | None
    source: str


# --------------------------------------------------------------------------- reading files


def load_input(path: str | Path, *, ood: bool = False) -> Data:
    """Read and validate one input file; raises :class:`ReportError` with a clear message."""
    path = Path(path)
    what = "OOD input" if ood else "input"
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise ReportError(
            f"{what} {str(path)!r} has an unknown extension {path.suffix or '(none)'!r}: "
            f"expected one of {', '.join(EXTENSIONS)}"
        )
    if not path.is_file():
        raise ReportError(f"cannot read {what} {str(path)!r}: no such file")
    if suffix == ".pt":
        arrays = _read_pt(path, what)
    elif suffix == ".npz":
        arrays = _read_npz(path, what)
    else:
        arrays = _read_csv(path, what)
    return _to_data(arrays, path, what, need_labels=not ood)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_pt(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file
        raise ReportError(
            f"cannot read {what} {str(path)!r} as a torch file: {_first_line(exc)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise ReportError(
            f"{what} {str(path)!r} must hold a dict with keys 'logits' and 'labels', "
            f"got {type(obj).__name__}"
        )
    return {str(k): v for k, v in obj.items()}


def _read_npz(path: Path, what: str) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("not an .npz archive")
            return {name: archive[name] for name in archive.files}
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive is a bad file
        raise ReportError(
            f"cannot read {what} {str(path)!r} as an .npz archive: {_first_line(exc)}"
        ) from None


_LOGIT_COLUMN = re.compile(r"logit_(\d+)")
_FEATURE_COLUMN = re.compile(r"feature_(\d+)")


def _numbered_columns(header: list[str], pattern: re.Pattern[str], prefix: str, where: str):
    found = {}
    for position, name in enumerate(header):
        match = pattern.fullmatch(name)
        if match:
            found[int(match.group(1))] = position
    if found and sorted(found) != list(range(len(found))):
        raise ReportError(
            f"{where}: the {prefix}_* columns must be numbered {prefix}_0 .. "
            f"{prefix}_{len(found) - 1}, got numbers {sorted(found)}"
        )
    return [found[i] for i in range(len(found))]


def _read_csv(path: Path, what: str) -> dict[str, Any]:
    where = f"{what} {str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"cannot read {where} as CSV: {_first_line(exc)}") from None
    if not rows:
        raise ReportError(f"{where} is empty: expected a header row label,logit_0,logit_1,...")
    header = [name.strip() for name in rows[0][1]]
    for name in header:
        if header.count(name) > 1:
            raise ReportError(f"{where}: column {name!r} appears more than once")
        if name != "label" and not (
            _LOGIT_COLUMN.fullmatch(name) or _FEATURE_COLUMN.fullmatch(name)
        ):
            raise ReportError(
                f"{where}: unknown column {name!r} (expected label, logit_0 .. logit_<C-1> "
                "and optionally feature_0 .. feature_<d-1>)"
            )
    logit_cols = _numbered_columns(header, _LOGIT_COLUMN, "logit", where)
    feature_cols = _numbered_columns(header, _FEATURE_COLUMN, "feature", where)
    if not logit_cols:
        raise ReportError(f"{where}: no logit_0, logit_1, ... columns in the header {header}")
    if len(rows) == 1:
        raise ReportError(f"{where} has a header row but no data rows")
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise ReportError(
                f"{where}, line {line}: expected {len(header)} fields, got {len(row)}"
            )
    try:  # fast path: numpy parses every cell; the loop below only runs to find an error
        values = np.array([row for _, row in rows[1:]], dtype=np.float64)
        values = values.reshape(len(rows) - 1, len(header))
    except ValueError:
        values = _parse_cells(rows[1:], header, where)
    arrays: dict[str, Any] = {"logits": values[:, logit_cols]}
    if feature_cols:
        arrays["features"] = values[:, feature_cols]
    if "label" in header:
        labels = values[:, header.index("label")]
        missing = np.isnan(labels)
        if missing.any() and not missing.all():
            line = rows[1 + int(np.argmax(missing))][0]
            raise ReportError(f"{where}, line {line}: the label is missing")
        if not missing.all():
            arrays["labels"] = labels
    return arrays


def _parse_cells(rows: list[tuple[int, list[str]]], header: list[str], where: str) -> np.ndarray:
    """Cell by cell: an empty label becomes NaN (missing); any other bad cell is an error."""
    values = np.empty((len(rows), len(header)), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        for j, cell in enumerate(row):
            text = cell.strip()
            if text == "" and header[j] == "label":
                values[i, j] = math.nan  # a missing label; allowed only when all are missing
                continue
            try:
                values[i, j] = float(text)
            except ValueError:
                raise ReportError(
                    f"{where}, line {line}, column {header[j]!r}: {text!r} is not a number"
                ) from None
    return values


def _tensor(value: Any, key: str, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"dtype {array.dtype}")
        return torch.as_tensor(array)
    except Exception:  # noqa: BLE001 - anything that is not a numeric array
        raise ReportError(
            f"{where}: {key!r} must be a numeric array, got {type(value).__name__}"
            + (f" of dtype {np.asarray(value).dtype}" if isinstance(value, np.ndarray) else "")
        ) from None


def _check_finite(t: torch.Tensor, key: str, where: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        row = int(bad.reshape(len(t), -1).any(1).nonzero()[0, 0])
        kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
        count = int(bad.sum())
        raise ReportError(
            f"{where}: {key!r} contains {kind} ({count} non-finite value"
            f"{'s' if count > 1 else ''}, first in row {row}); every value must be finite"
        )


def _to_data(arrays: dict[str, Any], path: Path, what: str, *, need_labels: bool) -> Data:
    where = f"{what} {str(path)!r}"
    wanted = "'logits' and 'labels'" if need_labels else "'logits'"
    for key in ("logits", "labels") if need_labels else ("logits",):
        if key not in arrays:
            have = ", ".join(repr(k) for k in sorted(arrays)) or "none"
            raise ReportError(f"{where} has no {key!r} (needs {wanted}; keys found: {have})")
    logits = _tensor(arrays["logits"], "logits", where)
    if logits.dtype == torch.bool or logits.is_complex():
        raise ReportError(f"{where}: 'logits' must be real numbers, got dtype {logits.dtype}")
    if logits.ndim != 2:
        raise ReportError(f"{where}: 'logits' must have shape (N, C), got {tuple(logits.shape)}")
    n, c = logits.shape
    if c < 2:
        raise ReportError(f"{where}: 'logits' needs at least 2 classes (columns), got {c}")
    if n < (2 if need_labels else 1):
        raise ReportError(
            f"{where}: 'logits' needs at least {2 if need_labels else 1} rows, got {n}"
        )
    if logits.dtype != torch.float64:
        logits = logits.to(torch.float32)
    _check_finite(logits, "logits", where)

    labels = None
    if need_labels:
        raw = _tensor(arrays["labels"], "labels", where)
        if raw.ndim != 1:
            raise ReportError(f"{where}: 'labels' must have shape (N,), got {tuple(raw.shape)}")
        if len(raw) != n:
            raise ReportError(f"{where}: 'labels' has {len(raw)} entries but 'logits' has {n} rows")
        if raw.dtype == torch.bool:
            raise ReportError(f"{where}: 'labels' must be class indices, got dtype bool")
        whole = torch.isfinite(raw) & (raw == raw.round()) if raw.is_floating_point() else None
        if whole is not None and not bool(whole.all()):
            bad = raw[~whole][0].item()
            raise ReportError(
                f"{where}: 'labels' must be whole numbers (class indices), got {bad:g}"
            )
        labels = raw.to(torch.int64)
        out_of_range = (labels < 0) | (labels >= c)
        if bool(out_of_range.any()):
            row = int(out_of_range.nonzero()[0, 0])
            raise ReportError(
                f"{where}: 'labels' must be class indices in [0, {c - 1}] (the logits have "
                f"{c} classes), got {int(labels[row])} in row {row}"
            )

    features = None
    if "features" in arrays:
        features = _tensor(arrays["features"], "features", where)
        if features.ndim != 2 or features.shape[1] < 1:
            raise ReportError(
                f"{where}: 'features' must have shape (N, d), got {tuple(features.shape)}"
            )
        if len(features) != n:
            raise ReportError(
                f"{where}: 'features' has {len(features)} rows but 'logits' has {n} rows"
            )
        if features.dtype == torch.bool or features.is_complex():
            raise ReportError(f"{where}: 'features' must be real numbers, got {features.dtype}")
        if features.dtype != torch.float64:
            features = features.to(torch.float32)
        _check_finite(features, "features", where)
    return Data(logits, labels, features, str(path))


def check_ood(data: Data, ood: Data) -> None:
    """The OOD data must match the input's classes and, when it has features, their size."""
    c, c_ood = data.logits.shape[1], ood.logits.shape[1]
    if c_ood != c:
        raise ReportError(
            f"OOD input {ood.source!r}: 'logits' has {c_ood} classes (columns) but the "
            f"input has {c}"
        )
    if data.features is not None:
        if ood.features is None:
            raise ReportError(
                f"OOD input {ood.source!r} has no 'features', but the input has features "
                "(needed for the Mahalanobis and kNN scores)"
            )
        d, d_ood = data.features.shape[1], ood.features.shape[1]
        if d_ood != d:
            raise ReportError(
                f"OOD input {ood.source!r}: 'features' has {d_ood} columns but the input's "
                f"features have {d}"
            )


# --------------------------------------------------------------------------- built-in task


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def builtin_task(seed: int = 0) -> tuple[Data, Data, dict[str, Any]]:
    """Digits classes 0-7 (the test split: MLP logits and features) and 8-9 as OOD.

    Returns ``(data, ood, description)``; deterministic for a given ``seed`` (the global
    torch RNG is left untouched).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    held_out = torch.isin(y, torch.tensor(BUILTIN_HELD_OUT))
    x_in, y_in, x_out = x[~held_out], y[~held_out], x[held_out]
    num_classes = 10 - len(BUILTIN_HELD_OUT)
    order = torch.randperm(len(y_in), generator=torch.Generator().manual_seed(seed))
    n_train = int(BUILTIN_TRAIN_FRACTION * len(y_in))
    train, test = order[:n_train], order[n_train:]
    # One thread: the model is tiny (threads only contend on a busy machine) and the
    # result does not depend on the machine's core count.
    with _threads(1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            body = nn.Sequential(nn.Linear(x.shape[1], BUILTIN_HIDDEN), nn.ReLU())
            head = nn.Linear(BUILTIN_HIDDEN, num_classes)
        params = [*body.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, lr=BUILTIN_LR)
        for _ in range(BUILTIN_EPOCHS):
            loss = nn.functional.cross_entropy(head(body(x_in[train])), y_in[train])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            feats_in, feats_out = body(x_in), body(x_out)
            logits_in, logits_out = head(feats_in), head(feats_out)
    train_acc = (logits_in[train].argmax(1) == y_in[train]).double().mean().item()
    source = "built-in task: scikit-learn digits"
    data = Data(
        logits_in[test], y_in[test], feats_in[test], source + f", classes 0-{num_classes - 1}"
    )
    ood = Data(logits_out, None, feats_out, source + ", classes 8 and 9 (held out)")
    description = {
        "dataset": "scikit-learn load_digits (bundled, 1797 8x8 images, pixels / 16)",
        "in_distribution_classes": list(range(num_classes)),
        "ood_classes": list(BUILTIN_HELD_OUT),
        "n_train": len(train),
        "n_test": len(test),
        "n_ood": len(x_out),
        "model": f"MLP {x.shape[1]}-{BUILTIN_HIDDEN}-{num_classes}, ReLU, float32",
        "training": f"full-batch Adam, lr {BUILTIN_LR}, {BUILTIN_EPOCHS} epochs, seed {seed}",
        "features": f"the {BUILTIN_HIDDEN} hidden ReLU units",
        "train_accuracy": train_acc,
    }
    return data, ood, description


# --------------------------------------------------------------------------- computing


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into a fit half (n // 2 rows) and an eval half, sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, evaluate = order[: n // 2], order[n // 2 :]
    return fit.sort().values, evaluate.sort().values


def calibration_metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> dict[str, float]:
    """Accuracy, NLL, Brier and the ECE family of ``logits`` (the report's metric set)."""
    from softmaxkit import calibration as C

    def ece(**kw: Any) -> float:
        return C.expected_calibration_error(logits, labels, n_bins=n_bins, **kw).item()

    with torch.no_grad():
        return {
            "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "nll": C.negative_log_likelihood(logits, labels).item(),
            "brier": C.brier_score(logits, labels).item(),
            "ece_l1_uniform": ece(norm="l1", binning="uniform"),
            "ece_l1_adaptive": ece(norm="l1", binning="adaptive"),
            "ece_l2": ece(norm="l2", binning="uniform"),
            "ece_max": ece(norm="max", binning="uniform"),
            "classwise_ece": C.classwise_calibration_error(logits, labels, n_bins=n_bins).item(),
        }


def _parameters(module: nn.Module) -> dict[str, Any]:
    """The fitted values of a scaler's state dict (its floating entries) as lists."""
    return {
        k: v.detach().to(torch.float64).tolist()
        for k, v in module.state_dict().items()
        if v.is_floating_point()
    }


def _fit_info(module: nn.Module) -> dict[str, Any]:
    """The scaler's fit diagnostics (``fit_info``: method, iterations, NLL), JSON-ready."""
    info = getattr(module, "fit_info", None)
    if not isinstance(info, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[str(key)] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def fit_scalers(
    fit_logits: torch.Tensor, fit_labels: torch.Tensor
) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """Temperature, vector and matrix scaling fitted on ``fit_logits``; with their parameters."""
    from softmaxkit import calibration as C

    num_classes = fit_logits.shape[1]
    fitted: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for name, module in (
        ("temperature", C.TemperatureScaling()),
        ("vector", C.VectorScaling(num_classes)),
        ("matrix", C.MatrixScaling(num_classes)),
    ):
        module.fit(fit_logits, fit_labels)
        fitted[name] = (module, _parameters(module))  # temperature: {"temperature": T}
    return fitted


def default_knn_k(bank_size: int) -> int:
    """k of the kNN score: the paper's CIFAR-10 ratio 50 / 50,000, at least 1."""
    return max(1, round(KNN_K * bank_size / KNN_BANK))


def ood_scores(
    data: Data,
    ood: Data,
    fit: torch.Tensor,
    evaluate: torch.Tensor,
    knn_k: int | None = None,
) -> dict[str, Any]:
    """Every score on the eval half (in) and on the OOD data (out), with its metrics."""
    from softmaxkit import ood as O

    z_in, z_out = data.logits[evaluate], ood.logits
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        "msp": (O.msp_score(z_in), O.msp_score(z_out)),
        "max_logit": (O.max_logit_score(z_in), O.max_logit_score(z_out)),
        "energy": (O.energy_score(z_in), O.energy_score(z_out)),
    }
    skipped: dict[str, str] = {}
    k = None
    if data.features is not None and ood.features is not None:
        f_fit, f_in, f_out = data.features[fit], data.features[evaluate], ood.features
        assert data.labels is not None
        try:
            maha = O.Mahalanobis().fit(f_fit, data.labels[fit])
            scores["mahalanobis"] = (maha.score(f_in), maha.score(f_out))
        except ValueError as exc:  # e.g. a class absent from the fit half
            skipped["mahalanobis"] = str(exc).splitlines()[0]
        k = min(default_knn_k(len(f_fit)) if knn_k is None else knn_k, len(f_fit))
        knn = O.KNNScore(k=k).fit(f_fit)
        scores["knn"] = (knn.score(f_in), knn.score(f_out))
    else:
        reason = "no features in the input" if data.features is None else "no OOD features"
        skipped.update(mahalanobis=reason, knn=reason)
    table = {}
    with torch.no_grad():
        for name, (s_in, s_out) in scores.items():
            s_in, s_out = s_in.detach(), s_out.detach()
            table[name] = {
                "auroc": O.auroc(s_in, s_out).item(),
                "aupr_in": O.aupr_in(s_in, s_out).item(),
                "aupr_out": O.aupr_out(s_in, s_out).item(),
                "fpr_at_95_tpr": O.fpr_at_tpr(s_in, s_out, tpr=0.95).item(),
            }
    return {
        "n_in": len(evaluate),
        "n_out": len(z_out),
        "in_distribution": "the evaluation half of the input",
        "convention": "Higher score = more in-distribution; positives = in-distribution",
        "knn_k": k,
        "scores": table,
        "skipped": skipped,
        "_raw": {name: (s[0].detach(), s[1].detach()) for name, s in scores.items()},
    }


def build_report(
    data: Data,
    ood: Data | None,
    *,
    n_bins: int = DEFAULT_N_BINS,
    seed: int = 0,
    knn_k: int | None = None,
) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """All numbers of the report (a JSON-ready dict) and its plots (name -> (caption, PNG))."""
    from softmaxkit import __version__
    from softmaxkit.dynamics import softmax_collapse_fraction

    assert data.labels is not None
    n, c = data.logits.shape
    fit, evaluate = split_halves(n, seed)
    z_fit, y_fit = data.logits[fit], data.labels[fit]
    z_eval, y_eval = data.logits[evaluate], data.labels[evaluate]

    fitted = fit_scalers(z_fit, y_fit)
    methods: dict[str, Any] = {
        "uncalibrated": {"metrics": calibration_metrics(z_eval, y_eval, n_bins)}
    }
    calibrated: dict[str, torch.Tensor] = {}
    for name, (module, params) in fitted.items():
        with torch.no_grad():
            calibrated[name] = module(z_eval).detach()
        methods[name] = {
            "metrics": calibration_metrics(calibrated[name], y_eval, n_bins),
            "parameters": params,
            "fit_info": _fit_info(module),
            "module": repr(module),
        }

    report: dict[str, Any] = {
        "softmaxkit_version": __version__,
        "input": {
            "source": data.source,
            "n": n,
            "num_classes": c,
            "feature_dim": None if data.features is None else data.features.shape[1],
            "ood_source": None if ood is None else ood.source,
            "n_ood": None if ood is None else len(ood.logits),
        },
        "settings": {"n_bins": n_bins, "seed": seed},
        "overall": calibration_metrics(data.logits, data.labels, n_bins),
        "softmax_collapse": {
            "fraction": softmax_collapse_fraction(data.logits, dtype=torch.float32).item(),
            "dtype": "float32",
            "definition": "fraction of rows whose float32 softmax is exactly one-hot "
            "(sum_j exp(z_j - max z) == 1), Prieto et al. 2025, arXiv:2501.04697",
        },
        "calibration": {
            "n_fit": len(fit),
            "n_eval": len(evaluate),
            "split": SPLIT_NOTE.format(seed=seed, n_fit=len(fit), n_eval=len(evaluate)),
            "ece_definitions": "with gap_b = |accuracy - confidence| in bin b and w_b its "
            "share of the rows: l1 = sum_b w_b gap_b, l2 = sqrt(sum_b w_b gap_b^2), max = "
            f"max_b gap_b (non-empty bins); uniform: {n_bins} equal-width confidence bins, "
            f"adaptive: {n_bins} equal-mass bins; classwise: the mean over classes k of the "
            "l1 ECE of p_k against 1[y = k] (uniform bins)",
            "methods": methods,
        },
        "ood": None,
    }
    raw_scores = None
    if ood is not None:
        check_ood(data, ood)
        ood_part = ood_scores(data, ood, fit, evaluate, knn_k)
        raw_scores = ood_part.pop("_raw")
        report["ood"] = ood_part

    plots = make_plots(z_eval, y_eval, calibrated["temperature"], n_bins, raw_scores)
    return report, plots


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def make_plots(
    z_eval: torch.Tensor,
    y_eval: torch.Tensor,
    z_temp: torch.Tensor,
    n_bins: int,
    ood_raw: dict[str, tuple[torch.Tensor, torch.Tensor]] | None,
) -> dict[str, tuple[str, bytes]]:
    """PNG plots: reliability diagrams and confidence histograms before / after temperature
    scaling, and (with OOD data) the distribution of every score, in and out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from softmaxkit import calibration as C

    plots: dict[str, tuple[str, bytes]] = {}
    for key, fn, what in (
        ("reliability", C.plot_reliability_diagram, "reliability diagram"),
        ("confidence", C.plot_confidence_histogram, "confidence histogram"),
    ):
        for when, logits in (("before", z_eval), ("after", z_temp)):
            fig = Figure(figsize=(4.6, 4.0), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            title = f"{what}, {'uncalibrated' if when == 'before' else 'temperature scaled'}"
            fn(logits, y_eval, n_bins=n_bins, ax=ax, title=title)
            plots[f"{key}_{when}"] = (title, _png(fig))
    if ood_raw:
        ncols = min(3, len(ood_raw))
        nrows = -(-len(ood_raw) // ncols)
        fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(ood_raw) :]:
            ax.set_visible(False)
        for ax, (name, (s_in, s_out)) in zip(axes, ood_raw.items()):
            a = s_in.double().numpy()
            b = s_out.double().numpy()
            lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
            ax.hist(a, bins=edges, density=True, alpha=0.55, label="in-distribution")
            ax.hist(b, bins=edges, density=True, alpha=0.55, label="OOD")
            ax.set_title(SCORE_LABELS[name], fontsize=9)
            ax.set_xlabel("score (higher = more in-distribution)", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes[::ncols]:
            ax.set_ylabel("density")
        axes[0].legend(fontsize=7)
        plots["ood_scores"] = ("OOD score distributions", _png(fig))
    return plots


# --------------------------------------------------------------------------- writing


def _json_ready(value: Any) -> Any:
    """NaN / inf become None so that report.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _param_text(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        array = np.asarray(value, dtype=np.float64)
        if array.ndim == 0:
            parts.append(f"{name} = {float(array):.4f}")
        else:
            flat = array.ravel()
            shown = ", ".join(f"{v:.3f}" for v in flat[:8])
            more = f", ... ({flat.size} values)" if flat.size > 8 else ""
            parts.append(f"{name} {tuple(array.shape)}: [{shown}{more}]")
    return "; ".join(parts)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
  max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; text-align: center; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def render_html(report: dict[str, Any], plots: dict[str, tuple[str, bytes]]) -> str:
    """One self-contained HTML page: inline CSS, tables and base64 PNG ``<img>`` tags."""
    e = html.escape
    inp = report["input"]
    cal = report["calibration"]
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>softmaxkit report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>softmaxkit report</h1>",
        f'<p class="note">softmaxkit {e(report["softmaxkit_version"])} &middot; '
        f"input: <code>{e(inp['source'])}</code> ({inp['n']} rows, {inp['num_classes']} classes"
        + (f", {inp['feature_dim']} features" if inp["feature_dim"] else "")
        + ")"
        + (
            f" &middot; OOD: <code>{e(inp['ood_source'])}</code> ({inp['n_ood']} rows)"
            if inp["ood_source"]
            else ""
        )
        + f" &middot; {report['settings']['n_bins']} bins, seed {report['settings']['seed']}</p>",
    ]
    if report.get("builtin"):
        b = report["builtin"]
        out.append(
            f'<p class="note">Built-in task: {e(b["dataset"])}; {e(b["model"])}, '
            f"{e(b['training'])}; {b['n_train']} training images of classes 0-7 "
            f"(train accuracy {_fmt(b['train_accuracy'], 3)}), report on the "
            f"{b['n_test']} test images; features: {e(b['features'])}; classes 8 and 9 "
            f"({b['n_ood']} images) are the OOD data.</p>"
        )

    out.append("<h2>Summary (all input rows)</h2><table><tr>")
    out += [f"<th>{e(label)}</th>" for label in METRIC_LABELS.values()]
    out.append("<th>Softmax Collapse</th></tr><tr>")
    out += [f'<td class="num">{_fmt(report["overall"][k])}</td>' for k in METRIC_LABELS]
    out.append(f'<td class="num">{_fmt(report["softmax_collapse"]["fraction"])}</td></tr></table>')
    out.append(
        f'<p class="note">Softmax Collapse: {e(report["softmax_collapse"]["definition"])}.</p>'
    )

    out.append("<h2>Calibration</h2>")
    out.append(f'<p class="note">{e(cal["split"])} {e(cal["ece_definitions"])}.</p>')
    out.append("<table><tr><th>method</th>")
    out += [f"<th>{e(label)}</th>" for label in METRIC_LABELS.values()]
    out.append("</tr>")
    for name, entry in cal["methods"].items():
        out.append(f"<tr><th>{e(METHOD_LABELS[name])}</th>")
        out += [f'<td class="num">{_fmt(entry["metrics"][k])}</td>' for k in METRIC_LABELS]
        out.append("</tr>")
    out.append("</table><table><tr><th>method</th><th>fitted parameters</th></tr>")
    for name, entry in cal["methods"].items():
        if "parameters" in entry:
            out.append(
                f"<tr><th>{e(METHOD_LABELS[name])}</th>"
                f"<td><code>{e(_param_text(entry['parameters']))}</code></td></tr>"
            )
    out.append('</table><p class="note">All parameters in full: report.json.</p>')

    out.append('<h2>Reliability and confidence</h2><div class="plots">')
    for key, (caption, png) in plots.items():
        if key == "ood_scores":
            continue
        out.append(_figure(caption, png))
    out.append("</div>")

    ood = report.get("ood")
    out.append("<h2>Out-of-distribution detection</h2>")
    if not ood:
        out.append('<p class="note">No OOD data (pass <code>--ood FILE</code>).</p>')
    else:
        out.append(
            f'<p class="note">In-distribution: {e(ood["in_distribution"])} ({ood["n_in"]} '
            f"rows); OOD: {ood['n_out']} rows. {e(ood['convention'])}."
            + (f" kNN uses k = {ood['knn_k']}." if ood["knn_k"] else "")
            + "</p>"
        )
        out.append("<table><tr><th>score</th>")
        out += [f"<th>{e(label)}</th>" for label in OOD_METRIC_LABELS.values()]
        out.append("</tr>")
        for name, row in ood["scores"].items():
            out.append(f"<tr><th>{e(SCORE_LABELS[name])}</th>")
            out += [f'<td class="num">{_fmt(row[k])}</td>' for k in OOD_METRIC_LABELS]
            out.append("</tr>")
        out.append("</table>")
        for name, reason in ood["skipped"].items():
            out.append(f'<p class="note">{e(SCORE_LABELS[name])}: skipped ({e(reason)}).</p>')
        if "ood_scores" in plots:
            out.append(_figure(*plots["ood_scores"]))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(
    report: dict[str, Any], plots: dict[str, tuple[str, bytes]], directory: Path
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory`` (created if needed)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        json_path, html_path = directory / "report.json", directory / "report.html"
        json_path.write_text(json.dumps(_json_ready(report), indent=1, allow_nan=False) + "\n")
        html_path.write_text(render_html(report, plots), encoding="utf-8")
    except OSError as exc:
        raise ReportError(
            f"cannot write the report to {str(directory)!r}: {_first_line(exc)}"
        ) from None
    return json_path, html_path


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
    print(summary_text(report), file=out)
    print(f"\nReport: {html_path}\nNumbers: {json_path}", file=out)
    return 0


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the terminal: the calibration table and the OOD AUROCs."""
    inp = report["input"]
    lines = [
        f"{inp['source']}: {inp['n']} rows, {inp['num_classes']} classes; accuracy "
        f"{report['overall']['accuracy']:.4f}, Softmax Collapse "
        f"{report['softmax_collapse']['fraction']:.4f}",
        f"{'method (eval half)':<22}{'NLL':>9}{'Brier':>9}{'ECE':>9}{'ECE-ad':>9}",
    ]
    for name, entry in report["calibration"]["methods"].items():
        m = entry["metrics"]
        lines.append(
            f"{METHOD_LABELS[name]:<22}{m['nll']:>9.4f}{m['brier']:>9.4f}"
            f"{m['ece_l1_uniform']:>9.4f}{m['ece_l1_adaptive']:>9.4f}"
        )
    if report.get("ood"):
        lines.append(f"{'OOD score':<22}{'AUROC':>9}{'FPR@95':>9}")
        for name, row in report["ood"]["scores"].items():
            lines.append(f"{name:<22}{row['auroc']:>9.4f}{row['fpr_at_95_tpr']:>9.4f}")
    return "\n".join(lines)
