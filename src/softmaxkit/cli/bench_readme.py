"""The README table of ``softmaxkit bench``: a results file as Markdown.

``softmaxkit bench --update-readme [README] [--from FILE ...]`` replaces the text between
:data:`README_START` and :data:`README_END` by :func:`markdown_table` of the results.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softmaxkit.cli.bench_cases import BenchError, find_cases_dir

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def fmt_diff(d: Any) -> str:
    if d is None:
        return "-"
    return d if isinstance(d, str) else f"{d:.1e}"


def ratio_of(res: dict[str, Any], kind: str, mode: str) -> float | None:
    entry = (res.get(kind) or {}).get(mode)
    return entry["ratio"] if entry else None


def peer_kinds(results: Sequence[dict[str, Any]]) -> list[str]:
    """The peer names that appear in ``results``, in order of first appearance."""
    kinds: list[str] = []
    for res in results:
        for name in res.get("peers") or {}:
            if name not in kinds:
                kinds.append(name)
    return kinds


def peer_cell(res: dict[str, Any], kind: str) -> str:
    """A peer's time ratio: fwd+bwd where timed, else the forward's with "(fwd)"; "skip" or
    "error" when it did not run, "-" when the case has no such peer."""
    info = (res.get("peers") or {}).get(kind)
    if info is None:
        return "-"
    if info.get("status") != "ok":
        return "skip" if info.get("status") == "skipped" else "error"
    for mode, suffix in (("fwdbwd", ""), ("fwd", " (fwd)")):
        entry = (((res.get("time") or {}).get(mode) or {}).get("peers") or {}).get(kind)
        if entry is not None:
            return fmt_ratio(entry["ratio"]) + suffix
    return "-"


def floor_cell(res: dict[str, Any]) -> str:
    """Ours' forward time as a multiple of the allocation-and-copy floor of its output."""
    floor = ((res.get("time") or {}).get("fwd") or {}).get("floor")
    return "-" if floor is None else fmt_ratio(floor["ratio"].get("ours"))


def markdown_table(report: dict[str, Any]) -> str:
    """The README table for a results report: one column per peer kind that appears, and
    an "x floor" column when some case times the floor."""
    kinds = peer_kinds(report["cases"])
    has_floor = any(floor_cell(res) != "-" for res in report["cases"])
    extra = [f"x {k}" for k in kinds] + (["x floor"] if has_floor else [])
    head = ["op/shape", "baseline", "fwd", "fwd+bwd", *extra, "memory", "target", "verdict"]
    align = ["---", "---", "---:", "---:", *(["---:"] * len(extra)), "---:", "---", "---"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for res in report["cases"]:
        mem_mode = "fwdbwd" if ratio_of(res, "memory", "fwdbwd") is not None else "fwd"
        mem = ratio_of(res, "memory", mem_mode)
        mem_cell = "-" if mem is None else f"{mem:.2f}" + (" (fwd)" if mem_mode == "fwd" else "")
        targets = ", ".join(f"{k} ≤ {v['target']:.3g}" for k, v in res.get("verdicts", {}).items())
        verdict = res["verdict"]
        if res["status"] == "failed":
            verdict += f" (max diff {fmt_diff(res['max_abs_diff'])} > atol {res['atol']:g})"
        cells = [
            f"`{res['name']}`",
            res["baseline_name"],
            fmt_ratio(ratio_of(res, "time", "fwd")),
            fmt_ratio(ratio_of(res, "time", "fwdbwd")),
            *[peer_cell(res, k) for k in kinds],
            *([floor_cell(res)] if has_floor else []),
            mem_cell,
            targets or "-",
            verdict,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    m = report["machine"]
    date = report["created"][:10]
    size = " (quick sizes)" if report.get("quick") else ""
    lines.append("")
    lines.append(
        f"Ratios are ours / baseline, lower is better{size}: median time (fwd under no_grad, "
        "fwd+bwd with a fixed random cotangent) and peak RSS above the inputs, fwd+bwd. "
        f"Measured {date} on {m.get('cpu_model')} ({m.get('threads')} threads), "
        f"torch {m.get('torch')}, {m.get('platform')}"
        + (f", {m['gpu']} (inputs on {report.get('device')})" if m.get("gpu") else "")
        + "."
    )
    if kinds or has_floor:
        lines.append("")
        lines.append(peer_legend(kinds, has_floor))
    if report.get("skipped"):
        names = ", ".join(f"`{s['name']}` ({s['reason']})" for s in report["skipped"])
        lines.append("")
        lines.append(f"Skipped: {names}.")
    return "\n".join(lines)


PEER_LEGEND = {
    "compile(naive)": "ours / `torch.compile(naive formula, dynamic=False)`, compiled once "
    "per case before timing (the compile time is in the JSON as `compile_s`)",
    "ours backend=compile": 'ours inside `softmaxkit.use_backend("compile")` / baseline '
    "(first calls untimed)",
    "F.linear_ce": "ours / torch's chunked `F.linear_cross_entropy(..., "
    "options=LinearCrossEntropyOptions())`",
    "cce torch_compile": "ours / cut-cross-entropy's `linear_cross_entropy(..., "
    'impl="torch_compile")` (first call untimed)',
}


def peer_legend(kinds: Sequence[str], floor: bool) -> str:
    """The paragraph under the table that says what each extra column is."""
    parts = [f"x {k}: {PEER_LEGEND.get(k, 'ours / ' + k)}" for k in kinds]
    if floor:
        parts.append(
            "x floor: ours' forward time as a multiple of allocating and copying its output "
            "(`torch.empty_like(out).copy_(x)`, timed in the same interleaved run)"
        )
    return (
        "Peer columns (fwd+bwd unless marked; skip: not installed or not available here): "
        + "; ".join(parts)
        + "."
    )


def update_readme(readme: Path, results: Path | Sequence[Path]) -> None:
    """Replace the text between the bench markers of ``readme`` by the table of ``results``
    (several results files are listed in one table, under the first file's machine)."""
    files = [results] if isinstance(results, Path) else list(results)
    if not readme.is_file():
        raise BenchError(f"--update-readme: {readme} does not exist")
    for path in files:
        if not path.is_file():
            raise BenchError(f"--from: {path} does not exist (run `softmaxkit bench` first)")
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0 or end < start:
        raise BenchError(
            f"{readme} has no '{README_START}' ... '{README_END}' markers; "
            "add them where the table should go"
        )
    try:
        reports = [json.loads(path.read_text()) for path in files]
        report = {**reports[0], "cases": [c for r in reports for c in r["cases"]]}
        report["skipped"] = [s for r in reports for s in r.get("skipped", [])]
        table = markdown_table(report)
    except (ValueError, KeyError, TypeError) as exc:
        names = ", ".join(str(p) for p in files)
        raise BenchError(f"{names}: not a softmaxkit bench results file ({exc})") from exc
    head = text[: start + len(README_START)]
    readme.write_text(head + "\n" + table + "\n" + text[end:])


def add_readme_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``softmaxkit bench --update-readme``."""
    parser.add_argument(
        "--update-readme",
        nargs="?",
        const="README.md",
        metavar="README",
        help="rewrite the table between the bench markers of README (default README.md) "
        "from a results file, without running anything",
    )
    parser.add_argument(
        "--from",
        dest="from_file",
        action="append",
        metavar="FILE",
        help="results file for --update-readme, repeatable to list several in one table "
        "(default benchmarks/results/latest.json)",
    )


def run_update_readme(args: argparse.Namespace) -> int:
    """``softmaxkit bench --update-readme``: redraw the table from the results files."""
    results = (
        [Path(f) for f in args.from_file]
        if args.from_file
        else [find_cases_dir(args.cases) / "results" / "latest.json"]
    )
    update_readme(Path(args.update_readme), results)
    print(f"updated {args.update_readme} from {', '.join(str(p) for p in results)}")
    return 0
