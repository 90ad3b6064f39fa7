"""Reading the input files of ``softmaxkit report`` and checking them.

Files are chosen by extension: ``.pt`` (``torch.load(..., weights_only=True)``), ``.npz``
(``allow_pickle=False``) and ``.csv`` (a header row ``label,logit_0,...[,feature_0,...]``);
see :mod:`softmaxkit.cli.report` for the format. Every problem is a :class:`ReportError`
with a one-line message naming the file, the key or column, and the row.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXTENSIONS = (".pt", ".npz", ".csv")


class ReportError(Exception):
    """A bad input or argument, reported as one line on stderr (exit status 2)."""


@dataclass(frozen=True)
class Data:
    """Logits (N, C), labels (N,) or None, features (N, d) or None, and where they came from."""

    logits: torch.Tensor
    labels: torch.Tensor | None
    features: torch.Tensor | None
    source: str


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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_pt(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file
        raise ReportError(
            f"cannot read {what} {str(path)!r} as a torch file: {first_line(exc)}"
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
            f"cannot read {what} {str(path)!r} as an .npz archive: {first_line(exc)}"
        ) from None


_LOGIT_COLUMN = re.compile(r"logit_(\d+)")
_FEATURE_COLUMN = re.compile(r"feature_(\d+)")


def _numbered_columns(
    header: list[str], pattern: re.Pattern[str], prefix: str, where: str
) -> list[int]:
    found: dict[int, int] = {}
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
        raise ReportError(f"cannot read {where} as CSV: {first_line(exc)}") from None
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
