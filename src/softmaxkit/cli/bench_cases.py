"""A benchmark case of ``softmaxkit bench`` and how cases are found and run.

:class:`Case` is what ``benchmarks/cases_*.py`` files list in ``CASES`` (they import it
from :mod:`softmaxkit.cli.bench`); :func:`find_cases_dir` / :func:`load_cases` find and
import those files; :func:`call_op` runs an op once (the forward under no_grad, or
forward + backward), as both the timing harness and the memory child do.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

TARGET_KEYS = ("time_fwd", "time_fwdbwd", "mem_fwd", "mem_fwdbwd")
COTANGENT_SEED = 0x5EED
SETUP_SEED = 0


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
    setup: Callable[[bool], tuple[Any, ...]]
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


def cases_of(path: Path) -> list[Case]:
    module = _import_file(path)
    cases = getattr(module, "CASES", None)
    if not isinstance(cases, (list, tuple)):
        raise TypeError(f"CASES must be a list of Case, got {type(cases).__name__}")
    for case in cases:
        if not isinstance(case, Case):
            raise TypeError(f"CASES holds a {type(case).__name__}, expected Case")
    return list(cases)


def load_cases(folder: Path) -> tuple[list[tuple[Path, Case]], list[dict[str, Any]]]:
    """All cases of ``folder/cases_*.py`` as ``(file, case)``, and the files that failed."""
    found: list[tuple[Path, Case]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("cases_*.py")):
        try:
            cases = cases_of(path)
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


def select(
    cases: list[tuple[Path, Case]], patterns: Sequence[str] | None
) -> list[tuple[Path, Case]]:
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


def call_op(
    fn: Callable[..., Any], args: tuple[Any, ...], mode: str, cotangent: torch.Tensor | None
) -> Any:
    """One run: the forward under no_grad, or forward then ``backward(cotangent)``."""
    if mode == "fwd":
        with torch.no_grad():
            return fn(*args)
    out = fn(*args)
    out.backward(cotangent)
    return out


def make_cotangent(shape: Sequence[int], dtype: torch.dtype, device: Any) -> torch.Tensor:
    """The fixed random cotangent for an output of this shape (same for ours and baseline)."""
    g = torch.Generator().manual_seed(COTANGENT_SEED)
    cotangent = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    return cotangent.to(dtype=dtype, device=device)
