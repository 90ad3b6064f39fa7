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
from contextlib import AbstractContextManager
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
class Peer:
    """A third implementation timed beside ours and the baseline, with a column of its own.

    ``fn(*args)`` returns a tensor like ``ours``. ``compile``: run ``torch.compile(fn,
    dynamic=False)`` instead, compiled once per case before timing (the first calls, forward
    and forward + backward, are timed apart and reported as ``compile_s``). ``context``: a
    factory of a context manager entered around every call (``use_backend("compile")``).
    ``variant``: the peer is ours under another setting (its ratio is to the baseline, as
    ours'), not a competitor (ratio ours / peer). ``warmup``: its first calls do one-off
    work (a compiler of its own): timed apart as ``compile_s`` too. ``atol``: its output
    must agree with ours to this (``None``: not compared). ``requires``: modules that must
    import, ``available()`` a reason it cannot run (``None``: it can); either skips the
    peer with a note.
    """

    fn: Callable[..., Any]
    compile: bool = False
    context: Callable[[], AbstractContextManager[Any]] | None = None
    variant: bool = False
    warmup: bool = False
    atol: float | None = None
    requires: tuple[str, ...] = ()
    available: Callable[[], str | None] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError("Peer.fn must be callable")
        if isinstance(self.requires, str):
            raise TypeError("Peer.requires must be a tuple of module names")
        object.__setattr__(self, "requires", tuple(self.requires))


@dataclass(frozen=True)
class Case:
    """One benchmark: our op against the code a user would otherwise write.

    ``setup(quick)`` returns the argument tuple (seeded; ``quick=True`` gives CI-sized
    inputs); ``ours(*args)`` and ``baseline(*args)`` each return a tensor. ``targets``
    maps ``time_fwd``/``time_fwdbwd``/``mem_fwd``/``mem_fwdbwd`` to the largest allowed
    ratio ours / baseline. ``atol``: the outputs must agree to this (``None``: different
    functions, not compared). ``requires``: modules that must import, else the case is
    skipped with a note. ``peers``: named extra implementations (:class:`Peer`, or a bare
    callable for a plain one), each timed and measured beside the two with a column per
    name. ``floor``: also time the allocation-and-copy floor of ours' output in the forward
    (``torch.empty_like(out).copy_(src)``) and report every forward as a multiple of it.
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
    peers: Mapping[str, Peer | Callable[..., Any]] = field(default_factory=dict)
    floor: bool = False

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
        peers: dict[str, Peer] = {}
        for key, peer in dict(self.peers).items():
            if not isinstance(key, str) or not key or key in ("ours", "baseline", "floor"):
                raise ValueError(f"Case {self.name!r}: bad peer name {key!r}")
            if not isinstance(peer, Peer):
                if not callable(peer):
                    raise TypeError(f"Case {self.name!r}: peer {key!r} must be a Peer or callable")
                peer = Peer(peer)
            peers[key] = peer
        object.__setattr__(self, "peers", peers)

    def peer(self, name: str) -> Peer:
        """The peer called ``name`` (``peers`` holds only :class:`Peer` after construction)."""
        peer = self.peers[name]
        assert isinstance(peer, Peer)
        return peer

    def peer_items(self) -> list[tuple[str, Peer]]:
        """``(name, peer)`` for every peer, in order."""
        return [(name, self.peer(name)) for name in self.peers]


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


def missing_requirement(case: Case | Peer) -> str | None:
    """Why a case (or a peer) cannot run: a module of ``requires`` that does not import, or
    a peer's ``available()`` reason; ``None`` when it can."""
    if isinstance(case, Peer) and case.available is not None:
        reason = case.available()
        if reason:
            return reason
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


def to_device(args: tuple[Any, ...], device: str | torch.device | None) -> tuple[Any, ...]:
    """``args`` with every tensor and module on ``device`` (leaves stay leaves that require
    grad as before); ``None`` leaves them where ``setup`` built them."""
    if device is None:
        return args
    dev = torch.device(device)
    moved: list[Any] = []
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.device != dev:
            if arg.is_leaf:
                arg = arg.detach().to(dev).requires_grad_(arg.requires_grad)
            else:
                arg = arg.to(dev)
        elif isinstance(arg, torch.nn.Module):
            arg = arg.to(dev)
        moved.append(arg)
    return tuple(moved)


def impl_fn(case: Case, impl: str) -> Callable[..., Any]:
    """The callable of ``impl`` ("ours", "baseline" or a peer's name), ready to time: a
    compiled peer is compiled here (lazily, on its first call), a peer's context entered
    around every call."""
    if impl == "ours":
        return case.ours
    if impl == "baseline":
        return case.baseline
    peer = case.peer(impl)
    fn: Callable[..., Any] = peer.fn
    if peer.compile:
        fn = torch.compile(fn, dynamic=False)
    if peer.context is not None:
        fn = _in_context(fn, peer.context)
    return fn


def _in_context(
    fn: Callable[..., Any], context: Callable[[], AbstractContextManager[Any]]
) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        with context():
            return fn(*args)

    return run
