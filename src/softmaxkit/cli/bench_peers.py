"""The peers of ``softmaxkit bench``: the code a user would pick instead of ours, as columns.

Case files attach them with :func:`with_peers` (after their ``CASES``, so that the case
definitions above stay as they are):

* :func:`compiled_naive` -- ``torch.compile(naive, dynamic=False)`` of the plain formula,
  column ``compile(naive)``, compiled once per case before timing;
* :func:`backend_compile` -- ours run inside ``softmaxkit.use_backend("compile")``, column
  ``ours backend=compile``;
* :func:`torch_linear_ce` -- torch's chunked ``F.linear_cross_entropy``, column
  ``F.linear_ce`` (skipped on a torch without it);
* :func:`cce_torch_compile` -- cut-cross-entropy's ``linear_cross_entropy(...,
  impl="torch_compile")``, column ``cce torch_compile`` (a benchmark-only package: skipped
  when it is not installed). Its package ``__init__`` imports the Triton kernels of its
  default ``impl="cce"``, so on a machine without Triton the ``torch_compile`` entry
  (``cut_cross_entropy.torch_compile``, which needs only torch) is imported on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch

from softmaxkit.cli.bench_cases import Case, Peer

COMPILE_NAIVE = "compile(naive)"
BACKEND_COMPILE = "ours backend=compile"
TORCH_LCE = "F.linear_ce"
CCE_TORCH_COMPILE = "cce torch_compile"


def with_peers(
    cases: Iterable[Case], peers_of: Callable[[Case], Mapping[str, Peer] | None]
) -> list[Case]:
    """``cases`` in the same order, each with the peers ``peers_of(case)`` added to its own."""
    out = []
    for case in cases:
        extra = peers_of(case) or {}
        out.append(dataclasses.replace(case, peers={**case.peers, **extra}) if extra else case)
    return out


def compiled_naive(naive: Callable[..., Any], atol: float | None = None) -> Peer:
    """``torch.compile(naive, dynamic=False)``, compiled once per case, untimed."""
    return Peer(naive, compile=True, atol=atol)


def _compile_backend() -> AbstractContextManager[Any]:
    import softmaxkit

    return softmaxkit.use_backend("compile")


def backend_compile(ours: Callable[..., Any], atol: float | None = 1e-5) -> Peer:
    """Ours inside ``softmaxkit.use_backend("compile")`` (first calls compile: untimed)."""
    return Peer(
        ours,
        context=_compile_backend,
        variant=True,
        warmup=True,
        atol=atol,
    )


def map_and_loss_peers(
    ours: Callable[..., Any], naive: Callable[..., Any] | None, atol: float | None = None
) -> dict[str, Peer]:
    """The two columns of a map or loss case: ``compile(naive)`` (when a naive formula of
    the same function is given; ``atol``: compare it with ours) and ours under the compile
    backend."""
    peers = {BACKEND_COMPILE: backend_compile(ours)}
    if naive is not None:
        peers = {COMPILE_NAIVE: compiled_naive(naive, atol), **peers}
    return peers


# --------------------------------------------------------------------------- fused head


def _no_torch_lce() -> str | None:
    if not hasattr(torch.nn.functional, "linear_cross_entropy") or not hasattr(
        torch.nn, "LinearCrossEntropyOptions"
    ):
        return f"torch {torch.__version__} has no F.linear_cross_entropy with options"
    return None


def _torch_lce(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    options = torch.nn.LinearCrossEntropyOptions()  # absent before torch 2.13
    out: torch.Tensor = torch.nn.functional.linear_cross_entropy(x, w, y, options=options)
    return out


def torch_linear_ce(atol: float | None = 1e-4) -> Peer:
    """torch's own chunked ``F.linear_cross_entropy(x, w, y, options=...)``."""
    return Peer(_torch_lce, atol=atol, available=_no_torch_lce)


@functools.cache
def load_cce_torch_compile() -> Callable[..., torch.Tensor]:
    """cut-cross-entropy's ``linear_cross_entropy(e, c, targets, impl="torch_compile")``.

    The package ``__init__`` imports its Triton kernels; where Triton is missing, the
    ``torch_compile`` module (which ``impl="torch_compile"`` dispatches to, and which needs
    only torch) is imported under a bare package object instead.
    """
    try:
        cce = importlib.import_module("cut_cross_entropy").linear_cross_entropy
    except ModuleNotFoundError as exc:
        if exc.name != "triton":
            raise
        spec = importlib.util.find_spec("cut_cross_entropy")
        if spec is None or not spec.submodule_search_locations:
            raise
        package = types.ModuleType("cut_cross_entropy")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["cut_cross_entropy"] = package
        module = importlib.import_module("cut_cross_entropy.torch_compile")
        entry: Callable[..., torch.Tensor] = module.torch_compile_linear_cross_entropy
        return entry

    def call(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = cce(e, c, targets, impl="torch_compile")
        return out

    return call


def _no_cce() -> str | None:
    if "cut_cross_entropy" not in sys.modules and not importlib.util.find_spec("cut_cross_entropy"):
        return "cut-cross-entropy is not installed (pip install cut-cross-entropy --no-deps)"
    try:
        load_cce_torch_compile()
    except Exception as exc:
        return f"cut-cross-entropy does not load: {type(exc).__name__}: {exc}"
    return None


def _cce(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return load_cce_torch_compile()(x, w, y)


def cce_torch_compile(atol: float | None = 1e-4) -> Peer:
    """cut-cross-entropy's ``impl="torch_compile"`` path (it compiles on its first call,
    with ``dynamic=True, fullgraph=True``: that call is untimed)."""
    return Peer(_cce, warmup=True, atol=atol, available=_no_cce)


def fused_head_peers() -> dict[str, Peer]:
    """The columns of a fused linear + cross-entropy case (args ``x, w, y``)."""
    return {TORCH_LCE: torch_linear_ce(), CCE_TORCH_COMPILE: cce_torch_compile()}
