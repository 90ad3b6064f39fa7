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

Exit status: 0 when every case was measured (missed targets included: this is a
measurement tool), 1 when a case file failed to import, a case raised or its outputs
disagreed with the baseline beyond ``atol``, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

TARGET_KEYS = ("time_fwd", "time_fwdbwd", "mem_fwd", "mem_fwdbwd")
MODES = ("fwd", "fwdbwd")
MODE_LABELS = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
IMPLS = ("ours", "baseline")
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
SCHEMA_VERSION = 1
CHILD_FLAG = "--_child"
CHILD_MARKER = "SOFTMAXKIT_BENCH_CHILD "
CHILD_TIMEOUT_S = 600
COTANGENT_SEED = 0x5EED
SETUP_SEED = 0
# Time budget per mode (ours + baseline together) and bounds on the repeat count.
FULL_BUDGET_S, FULL_REPEATS = 1.0, (7, 200)
QUICK_BUDGET_S, QUICK_REPEATS = 0.1, (3, 50)


class BenchError(Exception):
    """A harness error (bad arguments, no cases folder, malformed case file)."""


@dataclass(frozen=True)
class Case:
    """One benchmark: our op against the code a user would otherwise write.

    ``setup(quick)`` returns the argument tuple (seeded; ``quick=True`` gives CI-sized
    inputs); ``ours(*args)`` and ``baseline(*args)`` each return a tensor. ``targets``
    maps ``time_fwd``/``time_fwdbwd``/``mem_fwd``/``mem_fwdbwd`` to the largest allowed
    ratio ours / baseline. ``atol``: the outputs must agree to this (``None``: different
    functions, not compared). ``requires``: modules that must import, else the case is
    skipped with a note.
    """

    name: str
    setup: Callable[[bool], tuple]
    ours: Callable[..., torch.Tensor]
    baseline: Callable[..., torch.Tensor]
    baseline_name: str
    backward: bool = True
    targets: Mapping[str, float] = field(default_factory=dict)
    atol: float | None = None
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Case.name must be a non-empty string, got {self.name!r}")
        for attr in ("setup", "ours", "baseline"):
            if not callable(getattr(self, attr)):
                raise TypeError(f"Case {self.name!r}: {attr} must be callable")
        for key, value in self.targets.items():
            if key not in TARGET_KEYS:
                raise ValueError(
                    f"Case {self.name!r}: unknown target {key!r}; expected one of {TARGET_KEYS}"
                )
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Case {self.name!r}: target {key} must be > 0, got {value!r}")
            if key.endswith("fwdbwd") and not self.backward:
                raise ValueError(f"Case {self.name!r}: target {key} needs backward=True")
        if self.atol is not None and not self.atol >= 0:
            raise ValueError(f"Case {self.name!r}: atol must be None or >= 0, got {self.atol!r}")
        if isinstance(self.requires, str):
            raise TypeError(f"Case {self.name!r}: requires must be a tuple of module names")
        object.__setattr__(self, "requires", tuple(self.requires))


# --------------------------------------------------------------------------- discovery


def find_cases_dir(explicit: str | None = None) -> Path:
    """The folder holding ``cases_*.py``: ``explicit``, else ``./benchmarks``, else the one
    next to the source tree (editable install)."""
    if explicit is not None:
        folder = Path(explicit)
        if not folder.is_dir():
            raise BenchError(f"--cases {explicit}: not a directory")
        if not any(folder.glob("cases_*.py")):
            raise BenchError(f"--cases {explicit}: no cases_*.py files there")
        return folder
    import softmaxkit

    candidates = [
        Path.cwd() / "benchmarks",
        Path(softmaxkit.__file__).resolve().parents[2] / "benchmarks",
    ]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("cases_*.py")):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise BenchError(
        f"no benchmarks folder with cases_*.py found (looked in {looked}); "
        "run from the repository root or pass --cases DIR"
    )


def _import_file(path: Path) -> Any:
    name = f"_softmaxkit_bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _cases_of(path: Path) -> list[Case]:
    module = _import_file(path)
    cases = getattr(module, "CASES", None)
    if not isinstance(cases, (list, tuple)):
        raise TypeError(f"CASES must be a list of Case, got {type(cases).__name__}")
    for case in cases:
        if not isinstance(case, Case):
            raise TypeError(f"CASES holds a {type(case).__name__}, expected Case")
    return list(cases)


def load_cases(folder: Path) -> tuple[list[tuple[Path, Case]], list[dict]]:
    """All cases of ``folder/cases_*.py`` as ``(file, case)``, and the files that failed."""
    found: list[tuple[Path, Case]] = []
    errors: list[dict] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("cases_*.py")):
        try:
            cases = _cases_of(path)
        except Exception as exc:  # a broken file must not hide the others' results
            errors.append({"file": str(path), "error": f"{type(exc).__name__}: {exc}"})
            continue
        for case in cases:
            if case.name in seen:
                raise BenchError(
                    f"duplicate case name {case.name!r} in {seen[case.name]} and {path}"
                )
            seen[case.name] = path
            found.append((path, case))
    return found, errors


def select(cases: list[tuple[Path, Case]], patterns: Sequence[str] | None) -> list:
    """Cases whose name contains any of ``patterns`` (case-insensitive); all when none."""
    if not patterns:
        return list(cases)
    lowered = [p.lower() for p in patterns]
    return [(f, c) for f, c in cases if any(p in c.name.lower() for p in lowered)]


def missing_requirement(case: Case) -> str | None:
    for module in case.requires:
        try:
            importlib.import_module(module)
        except Exception as exc:
            return f"requires {module!r}: {type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- running ops


def _grad_leaves(args: tuple) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def _sync(args: tuple) -> None:
    if torch.cuda.is_available() and any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
        torch.cuda.synchronize()


def _call(fn: Callable, args: tuple, mode: str, cotangent: torch.Tensor | None) -> Any:
    """One run: the forward under no_grad, or forward then ``backward(cotangent)``."""
    if mode == "fwd":
        with torch.no_grad():
            return fn(*args)
    out = fn(*args)
    out.backward(cotangent)
    return out


def _cotangent(shape: Sequence[int], dtype: torch.dtype, device: Any) -> torch.Tensor:
    """The fixed random cotangent for an output of this shape (same for ours and baseline)."""
    g = torch.Generator().manual_seed(COTANGENT_SEED)
    cotangent = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    return cotangent.to(dtype=dtype, device=device)


def _time_once(fn: Callable, args: tuple, mode: str, cotangent, leaves: list) -> float:
    for leaf in leaves:
        leaf.grad = None
    _sync(args)
    start = time.perf_counter()
    out = _call(fn, args, mode, cotangent)
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


def _summary_ms(samples_s: list[float]) -> dict:
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
    case: Case, args: tuple, mode: str, cotangents: dict, quick: bool, repeats: int | None
) -> dict:
    """Interleaved timing of ours and the baseline for one mode."""
    fns = {"ours": case.ours, "baseline": case.baseline}
    leaves = _grad_leaves(args)
    # Warm-up, once each; its time sizes the repeat count.
    estimate = sum(_time_once(fns[i], args, mode, cotangents.get(i), leaves) for i in IMPLS)
    n = plan_repeats(estimate, quick, repeats)
    samples: dict[str, list[float]] = {i: [] for i in IMPLS}
    for _ in range(n):
        for impl in IMPLS:
            samples[impl].append(_time_once(fns[impl], args, mode, cotangents.get(impl), leaves))
    result: dict[str, Any] = {impl: _summary_ms(samples[impl]) for impl in IMPLS}
    base = result["baseline"]["median_ms"]
    result["ratio"] = result["ours"]["median_ms"] / base if base > 0 else None
    paired = [o / b for o, b in zip(samples["ours"], samples["baseline"], strict=True) if b > 0]
    if paired:
        q1, med, q3 = _quartiles(paired)
        result["paired_ratio_median"] = med
        result["paired_ratio_iqr"] = q3 - q1
    return result


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


# --------------------------------------------------------------------------- memory


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the kernel (glibc), so it is not counted as input."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> str | None:
    """Reset VmHWM to the current RSS; a note when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError as exc:
        return f"cannot reset the peak RSS (/proc/self/clear_refs: {exc.strerror or exc})"
    return None


def measure_peak(fn: Callable, args: tuple, mode: str, cotangent) -> dict:
    """Peak RSS above what is resident now, for one run of ``fn`` (call in a fresh process)."""
    gc.collect()
    _malloc_trim()
    note = _reset_peak()
    before = _status_bytes("VmRSS")
    out = _call(fn, args, mode, cotangent)
    hwm = _status_bytes("VmHWM")
    del out
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss *= 1 if sys.platform == "darwin" else 1024
    if note is None and (before is None or hwm is None):
        note = "no /proc/self/status: peak above inputs unavailable"
    above = hwm - before if note is None else None
    return {
        "peak_above_inputs_bytes": above,
        "rss_before_bytes": before,
        "peak_rss_bytes": maxrss,
        "note": note,
    }


def _child_main(argv: Sequence[str]) -> int:
    """``python -m softmaxkit.cli.bench --_child SPEC``: one memory measurement."""
    spec = json.loads(argv[1])
    torch.set_num_threads(spec["threads"])
    cases = _cases_of(Path(spec["file"]))
    case = next(c for c in cases if c.name == spec["case"])
    fn = case.ours if spec["impl"] == "ours" else case.baseline
    # Warm up on the small inputs first: the first call of an op (the first backward
    # above all, ~36 MB) pages in library code, which is not the op's allocation.
    small = case.setup(True)
    with torch.no_grad():
        ones = torch.ones_like(fn(*small)) if spec["mode"] == "fwdbwd" else None
    _call(fn, small, spec["mode"], ones)
    del small, ones
    torch.manual_seed(SETUP_SEED)
    args = case.setup(spec["quick"])
    cotangent = None
    if spec["mode"] == "fwdbwd":
        cotangent = _cotangent(spec["shape"], getattr(torch, spec["dtype"]), spec["device"])
    result = measure_peak(fn, args, spec["mode"], cotangent)
    result["warmup"] = "one run on setup(quick=True) inputs"
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0


def _child_env() -> dict:
    import softmaxkit

    env = dict(os.environ)
    src = str(Path(softmaxkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def memory_child(
    file: Path, case: Case, impl: str, mode: str, quick: bool, cotangent: tuple | None
) -> dict:
    """Run :func:`measure_peak` in a fresh interpreter and return its report;
    ``cotangent`` is ``(shape, dtype, device)`` for fwd+bwd, ``None`` for fwd."""
    shape, dtype, device = cotangent or (None, None, None)
    spec = {
        "file": str(file),
        "case": case.name,
        "impl": impl,
        "mode": mode,
        "quick": quick,
        "threads": torch.get_num_threads(),
        "shape": None if shape is None else list(shape),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "device": None if device is None else str(device),
    }
    cmd = [sys.executable, "-m", "softmaxkit.cli.bench", CHILD_FLAG, json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        return {"peak_above_inputs_bytes": None, "note": f"child timed out ({CHILD_TIMEOUT_S}s)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {
        "peak_above_inputs_bytes": None,
        "note": f"child failed (exit {proc.returncode}): {tail}",
    }


# --------------------------------------------------------------------------- one case


def _verdicts(case: Case, res: dict) -> dict:
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


def _overall(res: dict) -> str:
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


def run_case(
    file: Path,
    case: Case,
    *,
    quick: bool,
    repeats: int | None,
    memory: bool,
    progress: Callable[[str], None],
) -> dict:
    res: dict[str, Any] = {
        "name": case.name,
        "file": file.name,
        "baseline_name": case.baseline_name,
        "backward": case.backward,
        "targets": dict(case.targets),
        "atol": case.atol,
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
        args = tuple(case.setup(quick))
        with torch.no_grad():
            outs = {"ours": case.ours(*args), "baseline": case.baseline(*args)}
        for impl, out in outs.items():
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"{impl} returned {type(out).__name__}, expected a tensor")
            out_spec[impl] = (out.shape, out.dtype)
        res["output_shape"] = {impl: list(shape) for impl, (shape, _) in out_spec.items()}
        if case.atol is not None:
            diff = max_abs_diff(outs["ours"], outs["baseline"])
            res["max_abs_diff"] = diff
            res["correct"] = diff <= case.atol
            if not res["correct"]:
                res["status"] = "failed"
                res["notes"].append(f"max |ours - baseline| = {diff:.3g} > atol {case.atol:g}")
        del outs

        cotangents: dict[str, torch.Tensor] = {}
        device = None
        if case.backward:
            if not _grad_leaves(args):
                raise ValueError("backward=True but setup returned no tensor with requires_grad")
            device = _grad_leaves(args)[0].device
            for impl in IMPLS:
                if impl == "baseline" and out_spec["baseline"] == out_spec["ours"]:
                    cotangents[impl] = cotangents["ours"]
                else:
                    cotangents[impl] = _cotangent(*out_spec[impl], device)
            if device.type != "cpu":
                res["notes"].append("memory is host RSS; accelerator memory is not measured")

        res["time"] = {}
        for mode in MODES:
            if mode == "fwdbwd" and not case.backward:
                res["time"][mode] = None
                continue
            progress(f"time {MODE_LABELS[mode]}")
            res["time"][mode] = time_mode(case, args, mode, cotangents, quick, repeats)
        del args, cotangents
        gc.collect()

        if memory:
            res["memory"] = {}
            for mode in MODES:
                if mode == "fwdbwd" and not case.backward:
                    res["memory"][mode] = None
                    continue
                entry: dict[str, Any] = {}
                for impl in IMPLS:
                    progress(f"memory {MODE_LABELS[mode]} {impl}")
                    cot = (*out_spec[impl], device) if mode == "fwdbwd" else None
                    entry[impl] = memory_child(file, case, impl, mode, quick, cot)
                    if entry[impl].get("note"):
                        res["notes"].append(f"memory {mode} {impl}: {entry[impl]['note']}")
                o = entry["ours"]["peak_above_inputs_bytes"]
                b = entry["baseline"]["peak_above_inputs_bytes"]
                entry["ratio"] = o / b if o is not None and b else None
                res["memory"][mode] = entry
    except Exception as exc:
        res["status"] = "error"
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()
    res["verdicts"] = _verdicts(case, res)
    res["verdict"] = _overall(res)
    return res


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict:
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
    }


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _fmt_ms(x: float) -> str:
    digits = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 0.1 else 3
    return f"{x:.{digits}f}"


def _fmt_diff(d: Any) -> str:
    if d is None:
        return "-"
    return d if isinstance(d, str) else f"{d:.1e}"


def _ratio_of(res: dict, kind: str, mode: str) -> float | None:
    entry = (res.get(kind) or {}).get(mode)
    return entry["ratio"] if entry else None


def format_table(results: list[dict]) -> str:
    header = [
        "case",
        "baseline",
        "fwd ms (ours/base)",
        "fwd x",
        "f+b ms (ours/base)",
        "f+b x",
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
                cells += [ms, _fmt_ratio(t["ratio"])]
            else:
                cells += ["-", "-"]
        cells += [_fmt_ratio(_ratio_of(res, "memory", m)) for m in MODES]
        cells.append(_fmt_diff(res.get("max_abs_diff")))
        verdicts = " ".join(f"{k}:{v['verdict']}" for k, v in res["verdicts"].items())
        cells.append(f"{res['verdict']} {verdicts}".strip())
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
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


# --------------------------------------------------------------------------- README table


def markdown_table(report: dict) -> str:
    """The README table for a results report."""
    lines = [
        "| op/shape | baseline | fwd | fwd+bwd | memory | target | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for res in report["cases"]:
        mem_mode = "fwdbwd" if _ratio_of(res, "memory", "fwdbwd") is not None else "fwd"
        mem = _ratio_of(res, "memory", mem_mode)
        mem_cell = "-" if mem is None else f"{mem:.2f}" + (" (fwd)" if mem_mode == "fwd" else "")
        targets = ", ".join(f"{k} ≤ {v['target']:.3g}" for k, v in res.get("verdicts", {}).items())
        verdict = res["verdict"]
        if res["status"] == "failed":
            verdict += f" (max diff {_fmt_diff(res['max_abs_diff'])} > atol {res['atol']:g})"
        cells = [
            f"`{res['name']}`",
            res["baseline_name"],
            _fmt_ratio(_ratio_of(res, "time", "fwd")),
            _fmt_ratio(_ratio_of(res, "time", "fwdbwd")),
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
        f"torch {m.get('torch')}, {m.get('platform')}."
    )
    if report.get("skipped"):
        names = ", ".join(f"`{s['name']}` ({s['reason']})" for s in report["skipped"])
        lines.append("")
        lines.append(f"Skipped: {names}.")
    return "\n".join(lines)


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
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
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


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings ("inf", "nan"), so that the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _write_report(report: dict, out: str | None, folder: Path) -> list[Path]:
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
        results = (
            [Path(f) for f in args.from_file]
            if args.from_file
            else [find_cases_dir(args.cases) / "results" / "latest.json"]
        )
        update_readme(Path(args.update_readme), results)
        print(f"updated {args.update_readme} from {', '.join(str(p) for p in results)}")
        return 0
    if args.repeats is not None and args.repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

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
            results.append(
                run_case(
                    file,
                    case,
                    quick=args.quick,
                    repeats=args.repeats,
                    memory=not args.no_memory,
                    progress=lambda step, c=case: bar.show(f"{c.name}: {step}"),
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
        return _child_main(argv)
    from softmaxkit.cli.main import main

    return main(["bench", *argv])


if __name__ == "__main__":
    # Re-import under the package name so that case files see the same ``Case`` class.
    from softmaxkit.cli import bench as _bench

    sys.exit(_bench._entry(sys.argv[1:]))
