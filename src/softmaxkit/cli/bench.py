"""``softmaxkit bench``: time and memory of our ops against the plain torch code they replace.

Benchmark cases live in ``benchmarks/cases_*.py``; each file defines ``CASES``, a list of
:class:`Case`. For every case the harness

* checks correctness: ours and the baseline on the same inputs, compared in float64;
* times, in this process, the forward (under :func:`torch.no_grad`, i.e. inference) and,
  when ``backward`` is set, forward + backward (``out.backward(cotangent)`` with a fixed
  random cotangent), interleaving ours and the baseline (A B A B ...) so that both see the
  same machine noise; median over the repeats, ratio = ours / baseline;
* measures memory in a fresh subprocess per (case, implementation, mode): the child builds
  the inputs (and the cotangent), resets the kernel's high-water mark
  (``/proc/self/clear_refs``), runs the op once and reports the peak RSS above the inputs;
* compares the ratios with the case's targets (PASS / MISS).

Results go to ``benchmarks/results/bench-<timestamp>.json`` and ``latest.json``;
``--update-readme`` turns a results file into the Markdown table between
``<!-- bench:start -->`` and ``<!-- bench:end -->``.

The command is split by job: :mod:`~softmaxkit.cli.bench_cases` (the :class:`Case`, finding
and importing case files, running an op once), this module (the harness: correctness,
timing, the verdicts, the terminal table, the command line),
:mod:`~softmaxkit.cli.bench_memory` (the memory subprocesses) and
:mod:`~softmaxkit.cli.bench_readme` (the README table).

Exit status: 0 when every case was measured (missed targets included: this is a
measurement tool), 1 when a case file failed to import, a case raised or its outputs
disagreed with the baseline beyond ``atol``, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from softmaxkit.cli.bench_cases import (
    SETUP_SEED,
    TARGET_KEYS,
    BenchError,
    Case,
    Peer,
    call_op,
    find_cases_dir,
    impl_fn,
    load_cases,
    make_cotangent,
    missing_requirement,
    select,
    to_device,
)
from softmaxkit.cli.bench_memory import CHILD_FLAG, child_main, measure_peak, memory_child
from softmaxkit.cli.bench_readme import (
    README_END,
    README_START,
    add_readme_arguments,
    floor_cell,
    fmt_diff,
    fmt_ratio,
    markdown_table,
    peer_cell,
    peer_kinds,
    ratio_of,
    run_update_readme,
    update_readme,
)

# Case and the pieces of the harness, the memory measurement and the README writer, as
# the case files and the tests reach them
__all__ = [
    "README_END",
    "README_START",
    "TARGET_KEYS",
    "BenchError",
    "Case",
    "Peer",
    "add_arguments",
    "find_cases_dir",
    "load_cases",
    "markdown_table",
    "max_abs_diff",
    "measure_peak",
    "memory_child",
    "run",
    "run_case",
    "select",
    "to_device",
    "update_readme",
]

MODES = ("fwd", "fwdbwd")
MODE_LABELS = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
IMPLS = ("ours", "baseline")
SCHEMA_VERSION = 2  # 2: peers, floor, device
# Time budget per mode (ours + baseline together) and bounds on the repeat count.
FULL_BUDGET_S, FULL_REPEATS = 1.0, (7, 200)
QUICK_BUDGET_S, QUICK_REPEATS = 0.1, (3, 50)


# --------------------------------------------------------------------------- running ops


def _grad_leaves(args: tuple[Any, ...]) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def _sync(args: tuple[Any, ...]) -> None:
    if torch.cuda.is_available() and any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
        torch.cuda.synchronize()


def _time_once(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    mode: str,
    cotangent: torch.Tensor | None,
    leaves: list[torch.Tensor],
) -> float:
    for leaf in leaves:
        leaf.grad = None
    _sync(args)
    start = time.perf_counter()
    out = call_op(fn, args, mode, cotangent)
    _sync(args)
    elapsed = time.perf_counter() - start
    del out
    for leaf in leaves:
        leaf.grad = None
    return elapsed


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def _summary_ms(samples_s: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in samples_s]
    q1, med, q3 = _quartiles(ms)
    return {
        "median_ms": med,
        "iqr_ms": q3 - q1,
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": min(ms),
        "repeats": len(ms),
        "samples_ms": [round(x, 4) for x in ms],
    }


def plan_repeats(estimate_s: float, quick: bool, requested: int | None) -> int:
    """Repeats for one mode: ``requested``, else what fits the time budget, bounded."""
    if requested:
        return requested
    budget, (lo, hi) = (QUICK_BUDGET_S, QUICK_REPEATS) if quick else (FULL_BUDGET_S, FULL_REPEATS)
    return max(lo, min(hi, math.ceil(budget / max(estimate_s, 1e-6))))


def time_mode(
    fns: dict[str, Callable[..., Any]],
    args: tuple[Any, ...],
    mode: str,
    cotangents: dict[str, Any],
    quick: bool,
    repeats: int | None,
    *,
    variants: Sequence[str] = (),
    floor: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Interleaved timing of every implementation of ``fns`` (ours, the baseline, the
    peers, then the floor: A B P1 P2 F A B ...) for one mode.

    ``ratio`` is ours / baseline; each peer's ``ratio`` is ours / peer, a variant's (ours
    under another setting) variant / baseline, with ``ratio_to`` its ratio to each other
    peer; ``floor`` (forward only) holds the floor's times and every implementation's
    median as a multiple of it."""
    timed = dict(fns)
    if floor is not None:
        timed["floor"] = floor
    leaves = _grad_leaves(args)
    # Warm-up, once each; its time sizes the repeat count.
    estimate = sum(_time_once(fn, args, mode, cotangents.get(i), leaves) for i, fn in timed.items())
    n = plan_repeats(estimate, quick, repeats)
    samples: dict[str, list[float]] = {i: [] for i in timed}
    for _ in range(n):
        for impl, fn in timed.items():
            samples[impl].append(_time_once(fn, args, mode, cotangents.get(impl), leaves))
    result: dict[str, Any] = {impl: _summary_ms(samples[impl]) for impl in IMPLS}
    med = {impl: statistics.median(xs) for impl, xs in samples.items()}
    result["ratio"] = _div(med["ours"], med["baseline"])
    paired = [o / b for o, b in zip(samples["ours"], samples["baseline"], strict=True) if b > 0]
    if paired:
        q1, mid, q3 = _quartiles(paired)
        result["paired_ratio_median"] = mid
        result["paired_ratio_iqr"] = q3 - q1
    peers = [i for i in fns if i not in IMPLS]
    if peers:
        result["peers"] = {}
        for name in peers:
            entry = _summary_ms(samples[name])
            if name in variants:
                entry["ratio"] = _div(med[name], med["baseline"])
                entry["ratio_to"] = {
                    other: _div(med[name], med[other]) for other in peers if other != name
                }
            else:
                entry["ratio"] = _div(med["ours"], med[name])
            result["peers"][name] = entry
    if floor is not None:
        result["floor"] = _summary_ms(samples["floor"])
        result["floor"]["ratio"] = {impl: _div(med[impl], med["floor"]) for impl in fns}
    return result


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| in float64; equal infinities and NaN-against-NaN count as equal,
    a NaN against a number as infinitely far."""
    if a.shape != b.shape:
        raise ValueError(f"output shapes differ: ours {tuple(a.shape)}, baseline {tuple(b.shape)}")
    a64 = a.detach().to(torch.float64)
    b64 = b.detach().to(torch.float64)
    diff = (a64 - b64).abs_()
    diff.masked_fill_((a64 == b64) | (a64.isnan() & b64.isnan()), 0.0)
    if diff.numel() == 0:
        return 0.0
    if diff.isnan().any():
        return math.inf
    return float(diff.max())


# --------------------------------------------------------------------------- one case


def _verdicts(case: Case, res: dict[str, Any]) -> dict[str, Any]:
    measured = {}
    for mode in MODES:
        t = (res.get("time") or {}).get(mode)
        m = (res.get("memory") or {}).get(mode)
        measured[f"time_{mode}"] = t["ratio"] if t else None
        measured[f"mem_{mode}"] = m["ratio"] if m else None
    out = {}
    for key, target in case.targets.items():
        ratio = measured[key]
        verdict = "n/a" if ratio is None else ("PASS" if ratio <= target else "MISS")
        out[key] = {"target": target, "ratio": ratio, "verdict": verdict}
    return out


def _overall(res: dict[str, Any]) -> str:
    if res["status"] == "error":
        return "ERROR"
    if res["status"] == "failed":
        return "FAIL"
    verdicts = [v["verdict"] for v in res["verdicts"].values()]
    if "MISS" in verdicts:
        return "MISS"
    if "PASS" in verdicts:
        return "PASS"
    return "-"


def _out_spec(impl: str, out: Any) -> tuple[torch.Size, torch.dtype]:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{impl} returned {type(out).__name__}, expected a tensor")
    return out.shape, out.dtype


def _floor_fn(args: tuple[Any, ...], spec: tuple[torch.Size, torch.dtype]) -> Callable[..., Any]:
    """Allocate an output of ours' shape and dtype and copy a tensor of that size into it:
    the least any op producing that output must do."""
    shape, dtype = spec
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if first is not None and first.shape == shape and first.dtype == dtype:
        src = first.detach()
    else:
        device = first.device if first is not None else None
        src = torch.ones(shape, dtype=dtype, device=device)

    def floor(*_: Any) -> torch.Tensor:
        return torch.empty_like(src).copy_(src)

    return floor


def _prepare_peers(
    case: Case,
    args: tuple[Any, ...],
    ours_out: torch.Tensor,
    out_spec: dict[str, tuple[torch.Size, torch.dtype]],
    res: dict[str, Any],
) -> dict[str, Callable[..., Any]]:
    """Check every peer once (first calls timed as ``compile_s`` for compiled ones), compare
    it with ours, and return the ones that run; a peer that cannot run or raises is
    skipped with a note (the case goes on)."""
    active: dict[str, Callable[..., Any]] = {}
    if not case.peers:
        return active
    if any(p.compile for _, p in case.peer_items()):
        torch._dynamo.reset()  # compile once per case, from a clean cache
    res["peers"] = {}
    for name, peer in case.peer_items():
        entry: dict[str, Any] = {"status": "ok", "variant": peer.variant, "compile": peer.compile}
        res["peers"][name] = entry
        reason = missing_requirement(peer)
        if reason is not None:
            entry.update(status="skipped", note=reason)
            res["notes"].append(f"peer {name} skipped: {reason}")
            continue
        try:
            fn = impl_fn(case, name)
            _sync(args)
            start = time.perf_counter()
            with torch.no_grad():
                out = fn(*args)
            _sync(args)
            first = time.perf_counter() - start
            out_spec[name] = _out_spec(name, out)
            if peer.atol is not None:
                diff = max_abs_diff(out, ours_out)
                entry["max_abs_diff"], entry["correct"] = diff, diff <= peer.atol
                if diff > peer.atol:
                    res["notes"].append(
                        f"peer {name}: max |peer - ours| = {diff:.3g} > atol {peer.atol:g}"
                    )
            del out
            if peer.compile or peer.warmup:
                if case.backward:
                    cot = make_cotangent(*out_spec[name], _grad_leaves(args)[0].device)
                    leaves = _grad_leaves(args)
                    first += _time_once(fn, args, "fwdbwd", cot, leaves)
                entry["compile_s"] = first
        except Exception as exc:
            entry.update(status="error", note=f"{type(exc).__name__}: {exc}")
            res["notes"].append(f"peer {name} failed: {type(exc).__name__}: {exc}")
            continue
        active[name] = fn
    return active


def run_case(
    file: Path,
    case: Case,
    *,
    quick: bool,
    repeats: int | None,
    memory: bool,
    progress: Callable[[str], None],
    device: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "name": case.name,
        "file": file.name,
        "baseline_name": case.baseline_name,
        "backward": case.backward,
        "targets": dict(case.targets),
        "atol": case.atol,
        "device": device or "cpu",
        "status": "ok",
        "time": None,
        "memory": None,
        "max_abs_diff": None,
        "correct": None,
        "notes": [],
    }
    out_spec: dict[str, tuple[torch.Size, torch.dtype]] = {}
    try:
        progress("check")
        torch.manual_seed(SETUP_SEED)
        args = to_device(tuple(case.setup(quick)), device)
        with torch.no_grad():
            outs = {"ours": case.ours(*args), "baseline": case.baseline(*args)}
        for impl, out in outs.items():
            out_spec[impl] = _out_spec(impl, out)
        res["output_shape"] = {impl: list(shape) for impl, (shape, _) in out_spec.items()}
        if case.atol is not None:
            diff = max_abs_diff(outs["ours"], outs["baseline"])
            res["max_abs_diff"] = diff
            res["correct"] = diff <= case.atol
            if not res["correct"]:
                res["status"] = "failed"
                res["notes"].append(f"max |ours - baseline| = {diff:.3g} > atol {case.atol:g}")
        if case.peers:
            progress("peers (compile)")
        fns = {"ours": case.ours, "baseline": case.baseline}
        fns.update(_prepare_peers(case, args, outs["ours"], out_spec, res))
        variants = [n for n in fns if n in case.peers and case.peer(n).variant]
        floor = _floor_fn(args, out_spec["ours"]) if case.floor else None
        del outs

        cotangents: dict[str, torch.Tensor] = {}
        grad_device = None
        if case.backward:
            if not _grad_leaves(args):
                raise ValueError("backward=True but setup returned no tensor with requires_grad")
            grad_device = _grad_leaves(args)[0].device
            for impl in fns:
                if impl != "ours" and out_spec[impl] == out_spec["ours"]:
                    cotangents[impl] = cotangents["ours"]
                else:
                    cotangents[impl] = make_cotangent(*out_spec[impl], grad_device)
        on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)

        res["time"] = {}
        for mode in MODES:
            if mode == "fwdbwd" and not case.backward:
                res["time"][mode] = None
                continue
            progress(f"time {MODE_LABELS[mode]}")
            res["time"][mode] = time_mode(
                fns,
                args,
                mode,
                cotangents,
                quick,
                repeats,
                variants=variants,
                floor=floor if mode == "fwd" else None,
            )
        del args, cotangents, floor
        gc.collect()

        if memory:
            res["memory"] = {}
            if on_cuda:
                res["notes"].append("memory is torch.cuda.max_memory_allocated above the inputs")
            for mode in MODES:
                if mode == "fwdbwd" and not case.backward:
                    res["memory"][mode] = None
                    continue
                entry: dict[str, Any] = {}
                for impl in fns:
                    progress(f"memory {MODE_LABELS[mode]} {impl}")
                    cot = (*out_spec[impl], grad_device) if mode == "fwdbwd" else None
                    entry[impl] = memory_child(file, case, impl, mode, quick, cot, device=device)
                    if entry[impl].get("note"):
                        res["notes"].append(f"memory {mode} {impl}: {entry[impl]['note']}")
                peak = {i: e.get("peak_above_inputs_bytes") for i, e in entry.items()}
                entry["ratio"] = _mem_ratio(peak["ours"], peak["baseline"])
                peer_names = [i for i in fns if i not in IMPLS]
                if peer_names:
                    entry["peers"] = {}
                for name in peer_names:
                    child = entry.pop(name)
                    if name in variants:
                        child["ratio"] = _mem_ratio(peak[name], peak["baseline"])
                    else:
                        child["ratio"] = _mem_ratio(peak["ours"], peak[name])
                    entry["peers"][name] = child
                res["memory"][mode] = entry
    except Exception as exc:
        res["status"] = "error"
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()
    res["verdicts"] = _verdicts(case, res)
    res["verdict"] = _overall(res)
    return res


def _mem_ratio(a: int | None, b: int | None) -> float | None:
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_model": cpu or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _fmt_ms(x: float) -> str:
    digits = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 0.1 else 3
    return f"{x:.{digits}f}"


def format_table(results: list[dict[str, Any]]) -> str:
    kinds = peer_kinds(results)
    header = [
        "case",
        "baseline",
        "fwd ms (ours/base)",
        "fwd x",
        "f+b ms (ours/base)",
        "f+b x",
        *[f"x {kind}" for kind in kinds],
        "x floor",
        "mem fwd x",
        "mem f+b x",
        "max diff",
        "verdict",
    ]
    rows = [header]
    for res in results:
        cells = [res["name"], res["baseline_name"]]
        for mode in MODES:
            t = (res.get("time") or {}).get(mode)
            if t:
                ms = f"{_fmt_ms(t['ours']['median_ms'])}/{_fmt_ms(t['baseline']['median_ms'])}"
                cells += [ms, fmt_ratio(t["ratio"])]
            else:
                cells += ["-", "-"]
        cells += [peer_cell(res, kind) for kind in kinds]
        cells.append(floor_cell(res))
        cells += [fmt_ratio(ratio_of(res, "memory", m)) for m in MODES]
        cells.append(fmt_diff(res.get("max_abs_diff")))
        verdicts = " ".join(f"{k}:{v['verdict']}" for k, v in res["verdicts"].items())
        cells.append(f"{res['verdict']} {verdicts}".strip())
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for res in report["cases"]:
        for key, v in res["verdicts"].items():
            if v["verdict"] == "MISS":
                lines.append(f"MISS  {res['name']}: {key} = {v['ratio']:.2f} > {v['target']:g}")
        if res["status"] == "failed":
            lines.append(f"FAIL  {res['name']}: {'; '.join(res['notes'][:1])}")
        if res["status"] == "error":
            lines.append(f"ERROR {res['name']}: {res['error']}")
    for err in report["errors"]:
        lines.append(f"ERROR {err['file']}: {err['error']}")
    for skip in report["skipped"]:
        lines.append(f"SKIP  {skip['name']}: {skip['reason']}")
    return lines


class _Progress:
    """A carriage-return progress bar on stderr (one line per step when not a terminal)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0

    def show(self, label: str) -> None:
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.last))
            self.last = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.last:
            self.stream.write("\r" + " " * self.last + "\r")
            self.stream.flush()


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small (CI-sized) inputs, few repeats")
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        metavar="PATTERN",
        help="only cases whose name contains PATTERN (case-insensitive; repeat for 'or')",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write the JSON results here only (default: "
        "benchmarks/results/bench-<time>.json and latest.json)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="timed repeats per implementation and mode (default: ~1 s per mode, at least "
        f"{FULL_REPEATS[0]}; {QUICK_REPEATS[0]} with --quick)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument(
        "--cases", metavar="DIR", help="folder with the cases_*.py files (default: ./benchmarks)"
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="build the inputs on DEVICE (e.g. cuda): timings synchronize it, memory is "
        "torch.cuda.max_memory_allocated in the child (default: where setup builds them, CPU)",
    )
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    add_readme_arguments(parser)


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings ("inf", "nan"), so that the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _write_report(report: dict[str, Any], out: str | None, folder: Path) -> list[Path]:
    text = json.dumps(_finite(report), indent=1, allow_nan=False) + "\n"
    if out is not None:
        paths = [Path(out)]
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        suffix = "-quick" if report["quick"] else ""
        paths = [
            folder / "results" / f"bench-{stamp}{suffix}.json",
            folder / "results" / f"latest{suffix}.json",
        ]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return paths


def _run(args: argparse.Namespace) -> int:
    if args.update_readme is not None:
        return run_update_readme(args)
    if args.repeats is not None and args.repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise BenchError(f"--device {args.device}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError(f"--device {args.device}: CUDA is not available")

    folder = find_cases_dir(args.cases)
    cases, errors = load_cases(folder)
    chosen = select(cases, args.patterns)
    if args.list:
        for file, case in chosen:
            reason = missing_requirement(case)
            print(f"{case.name}  [{file.name}]" + (f"  (skipped: {reason})" if reason else ""))
        for err in errors:
            print(f"ERROR {err['file']}: {err['error']}", file=sys.stderr)
        return 1 if errors else 0
    if not chosen and not errors:
        raise BenchError(f"no case matches -k {' -k '.join(args.patterns or [])}")

    started = time.perf_counter()
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results, skipped = [], []
    bar = _Progress(len(chosen))
    for file, case in chosen:
        reason = missing_requirement(case)
        if reason is not None:
            skipped.append({"name": case.name, "file": file.name, "reason": reason})
        else:

            def progress(step: str, c: Case = case) -> None:
                bar.show(f"{c.name}: {step}")

            results.append(
                run_case(
                    file,
                    case,
                    quick=args.quick,
                    repeats=args.repeats,
                    memory=not args.no_memory,
                    progress=progress,
                    device=args.device,
                )
            )
        bar.done += 1
        gc.collect()
    bar.show("done")
    bar.finish()

    report = {
        "schema": SCHEMA_VERSION,
        "created": created,
        "duration_s": time.perf_counter() - started,
        "quick": args.quick,
        "repeats": args.repeats,
        "memory": not args.no_memory,
        "patterns": args.patterns,
        "threads": args.threads,
        "device": args.device or "cpu",
        "cases_dir": str(folder),
        "machine": machine_info(),
        "cases": results,
        "skipped": skipped,
        "errors": errors,
    }
    if results:
        print(format_table(results))
    lines = summary_lines(report)
    if lines:
        print()
        print("\n".join(lines))
    for path in _write_report(report, args.out, folder):
        print(f"wrote {path}", file=sys.stderr)
    bad = errors or any(r["status"] in ("error", "failed") for r in results)
    return 1 if bad else 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BenchError as exc:
        print(f"softmaxkit bench: error: {exc}", file=sys.stderr)
        return 2


def _entry(argv: Sequence[str]) -> int:
    if argv[:1] == [CHILD_FLAG]:
        return child_main(argv)
    from softmaxkit.cli.main import main

    return main(["bench", *argv])


if __name__ == "__main__":
    # Re-import under the package name so that case files see the same ``Case`` class.
    from softmaxkit.cli import bench as _bench

    sys.exit(_bench._entry(sys.argv[1:]))
