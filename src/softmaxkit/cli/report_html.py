"""The page of ``softmaxkit report``: plots, ``report.html``, ``report.json`` and the
terminal summary.

``report.html`` is one self-contained file: inline CSS, tables, and the PNG plots inlined
as base64 ``<img>`` tags (no script, no external resource). ``report.json`` is strict JSON
(NaN / inf become ``null``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softmaxkit.cli.report_inputs import ReportError, first_line
from softmaxkit.cli.report_scores import SCORE_LABELS

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
    from softmaxkit import calibration as C
    from softmaxkit.cli._extras import require

    agg = require("matplotlib.backends.backend_agg", "the report", "report")
    FigureCanvasAgg = agg.FigureCanvasAgg
    Figure = require("matplotlib.figure", "the report", "report").Figure

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


def _table(
    corner: str, columns: Mapping[str, str], rows: Iterable[tuple[str, Mapping[str, Any]]]
) -> list[str]:
    """The lines of a table (left open for the caller to close): a header row of ``corner``
    and the column labels, then one row per ``(label, values)`` with ``values[key]`` for
    each key of ``columns``."""
    e = html.escape
    out = [f"<table><tr><th>{e(corner)}</th>"]
    out += [f"<th>{e(label)}</th>" for label in columns.values()]
    out.append("</tr>")
    for label, values in rows:
        out.append(f"<tr><th>{e(label)}</th>")
        out += [f'<td class="num">{_fmt(values[key])}</td>' for key in columns]
        out.append("</tr>")
    return out


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
    methods = cal["methods"].items()
    out += _table("method", METRIC_LABELS, ((METHOD_LABELS[n], m["metrics"]) for n, m in methods))
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
        rows = ((SCORE_LABELS[name], row) for name, row in ood["scores"].items())
        out += _table("score", OOD_METRIC_LABELS, rows)
        out.append("</table>")
        for name, reason in ood["skipped"].items():
            out.append(f'<p class="note">{e(SCORE_LABELS[name])}: skipped ({e(reason)}).</p>')
        for name, messages in ood.get("warnings", {}).items():
            for message in messages:
                out.append(f'<p class="note">{e(SCORE_LABELS[name])}: warning: {e(message)}</p>')
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


def _open_fresh(final: Path, suffix: str) -> tuple[int, Path]:
    """A new file beside ``final`` (the same folder, so that renames are atomic), named
    ``.report.json.<random><suffix>``, created exclusively with the umask's permissions
    (as ``Path.write_text`` would create ``final``)."""
    while True:
        path = final.with_name(f".{final.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def _write_temporary(final: Path, text: str) -> Path:
    """``text`` in a new temporary file beside ``final``."""
    fd, path = _open_fresh(final, ".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _replace_together(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each temporary file onto its final path, all or none: a final path that is
    a directory (or anything but a file) stops everything before the first rename, and
    if a rename still fails, the files already replaced get their old content back (kept
    as copies until every rename succeeded)."""
    for _, final in pairs:
        if final.exists() and not final.is_file():
            raise IsADirectoryError(f"{str(final)!r} is in the way (not a file)")
    backups: list[tuple[Path, Path | None]] = []
    try:
        for tmp, final in pairs:
            backup = None
            if final.exists():
                fd, backup = _open_fresh(final, ".old")
                os.close(fd)
                try:
                    shutil.copy2(final, backup)
                except BaseException:
                    backup.unlink(missing_ok=True)
                    raise
            backups.append((final, backup))
            os.replace(tmp, final)
    except BaseException:
        for final, backup in reversed(backups):
            if backup is None:
                final.unlink(missing_ok=True)
            else:
                os.replace(backup, final)  # should this fail, the copy stays beside it
        raise
    for _, backup in backups:
        if backup is not None:
            backup.unlink(missing_ok=True)


def write_report(
    report: dict[str, Any], plots: dict[str, tuple[str, bytes]], directory: Path
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory`` (created if needed),
    atomically as a pair: both are rendered, written to temporary files in ``directory``
    and renamed into place only when both were written; on any failure the previous pair
    (if any) is left as it was and no temporary file remains. Raises :class:`ReportError`
    (one line) when the report cannot be written or is not strict JSON."""
    json_path, html_path = directory / "report.json", directory / "report.html"
    try:
        json_text = json.dumps(_json_ready(report), indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ReportError(f"cannot write report.json: {first_line(exc)}") from None
    html_text = render_html(report, plots)
    temporary: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for final, text in ((json_path, json_text), (html_path, html_text)):
            temporary.append(_write_temporary(final, text))
        _replace_together(list(zip(temporary, (json_path, html_path))))
    except OSError as exc:
        raise ReportError(
            f"cannot write the report to {str(directory)!r}: {first_line(exc)}"
        ) from None
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)  # a renamed one is gone already
    return json_path, html_path


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
