"""Peak memory of one run of an op, measured in a fresh interpreter.

:func:`memory_child` starts ``python -m softmaxkit.cli.bench --_child SPEC`` for one
(case, implementation, mode); the child (:func:`child_main`) warms the op up on the small
inputs, builds the real ones (and the cotangent), returns freed heap memory to the
kernel, resets the high-water mark (``/proc/self/clear_refs``), runs the op once
(:func:`measure_peak`) and prints its report as one JSON line after
:data:`CHILD_MARKER`. The figure is VmHWM minus VmRSS before the run: the peak above the
inputs; without the reset it is ``None`` with a note.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from softmaxkit.cli.bench_cases import (
    SETUP_SEED,
    Case,
    call_op,
    cases_of,
    impl_fn,
    make_cotangent,
    to_device,
)

CHILD_FLAG = "--_child"
CHILD_MARKER = "SOFTMAXKIT_BENCH_CHILD "
CHILD_TIMEOUT_S = 600


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


def measure_peak(
    fn: Callable[..., Any], args: tuple[Any, ...], mode: str, cotangent: torch.Tensor | None
) -> dict[str, Any]:
    """Peak RSS above what is resident now, for one run of ``fn`` (call in a fresh process);
    with CUDA inputs, the peak of ``torch.cuda.max_memory_allocated`` above the allocated
    memory before the run."""
    if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
        return _measure_cuda_peak(fn, args, mode, cotangent)
    gc.collect()
    _malloc_trim()
    note = _reset_peak()
    before = _status_bytes("VmRSS")
    out = call_op(fn, args, mode, cotangent)
    hwm = _status_bytes("VmHWM")
    del out
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss *= 1 if sys.platform == "darwin" else 1024
    if note is None and (before is None or hwm is None):
        note = "no /proc/self/status: peak above inputs unavailable"
    # note is None only with both readings
    above = hwm - before if note is None and hwm is not None and before is not None else None
    return {
        "peak_above_inputs_bytes": above,
        "rss_before_bytes": before,
        "peak_rss_bytes": maxrss,
        "note": note,
    }


def _measure_cuda_peak(
    fn: Callable[..., Any], args: tuple[Any, ...], mode: str, cotangent: torch.Tensor | None
) -> dict[str, Any]:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call_op(fn, args, mode, cotangent)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return {
        "peak_above_inputs_bytes": peak - before,
        "cuda_allocated_before_bytes": before,
        "cuda_peak_bytes": peak,
        "note": None,
    }


def child_main(argv: Sequence[str]) -> int:
    """``python -m softmaxkit.cli.bench --_child SPEC``: one memory measurement."""
    spec = json.loads(argv[1])
    torch.set_num_threads(spec["threads"])
    cases = cases_of(Path(spec["file"]))
    case = next(c for c in cases if c.name == spec["case"])
    impl, on = spec["impl"], spec.get("on")
    fn = impl_fn(case, impl)
    peer = case.peer(impl) if impl in case.peers else None
    # a compiled peer (or one that compiles on its first call) compiles per shape: warm it
    # up on the real inputs, so that the compiler's memory is not counted as the op's
    real_warmup = peer is not None and (peer.compile or peer.warmup)
    if not real_warmup:
        # Warm up on the small inputs first: the first call of an op (the first backward
        # above all, ~36 MB) pages in library code, which is not the op's allocation.
        small = to_device(tuple(case.setup(True)), on)
        with torch.no_grad():
            ones = torch.ones_like(fn(*small)) if spec["mode"] == "fwdbwd" else None
        call_op(fn, small, spec["mode"], ones)
        del small, ones
    torch.manual_seed(SETUP_SEED)
    args = to_device(tuple(case.setup(spec["quick"])), on)
    cotangent = None
    if spec["mode"] == "fwdbwd":
        cotangent = make_cotangent(spec["shape"], getattr(torch, spec["dtype"]), spec["device"])
    if real_warmup:
        call_op(fn, args, spec["mode"], cotangent)
        for arg in args:
            if isinstance(arg, torch.Tensor):
                arg.grad = None
    result = measure_peak(fn, args, spec["mode"], cotangent)
    result["warmup"] = (
        "one run on the same inputs (compiled)"
        if real_warmup
        else "one run on setup(quick=True) inputs"
    )
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0


def _child_env() -> dict[str, str]:
    import softmaxkit

    env = dict(os.environ)
    src = str(Path(softmaxkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def memory_child(
    file: Path,
    case: Case,
    impl: str,
    mode: str,
    quick: bool,
    cotangent: tuple[Any, ...] | None,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Run :func:`measure_peak` in a fresh interpreter and return its report; ``impl`` is
    "ours", "baseline" or a peer's name, ``cotangent`` is ``(shape, dtype, device)`` for
    fwd+bwd, ``None`` for fwd; ``device``: where the child puts the inputs."""
    shape, dtype, cot_device = cotangent or (None, None, None)
    spec = {
        "file": str(file),
        "case": case.name,
        "impl": impl,
        "mode": mode,
        "quick": quick,
        "threads": torch.get_num_threads(),
        "shape": None if shape is None else list(shape),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "device": None if cot_device is None else str(cot_device),
        "on": device,
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
            report: dict[str, Any] = json.loads(line[len(CHILD_MARKER) :])
            return report
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {
        "peak_above_inputs_bytes": None,
        "note": f"child failed (exit {proc.returncode}): {tail}",
    }
