"""The execution backend of the maps and losses: eager (default) or compiled by softmaxkit.

``softmaxkit.set_backend("compile")`` (or ``with softmaxkit.use_backend("compile"):``) makes
every public map and loss run a ``torch.compile``\\ d version of itself. Each public function
is wrapped once, at its definition, by :func:`backend_op`; under ``"compile"`` the wrapper
calls ``torch.compile(fn, dynamic=False)`` of the function, built lazily on its first call
and kept, so torch compiles (and caches) one kernel per input shape and argument set.

What runs inside the compiled function is the function's compile-friendly formulation: the
code paths guarded by ``torch.compiler.is_compiling()`` (one block of all rows instead of
the eager row blocks, no host reads of tensor values, losses differentiated by autograd on
the same ``value`` the eager engine uses; see :mod:`softmaxkit._ops.blocks` and
:mod:`softmaxkit._ops.row_loss`). Values and gradients match eager within float rounding.

Costs and limits, stated once:

* The first call per function and shape pays the compilation: about 2-10 s per function and
  shape on a 2-core CPU with inductor's C++ code generation (forward and backward), seconds
  more when torch's on-disk cache is cold; later calls with the same shapes reuse the
  kernels (and a later process reuses torch's on-disk cache). A function called with more
  distinct shapes than ``torch._dynamo.config.recompile_limit`` runs eagerly for the rest.
* Value checks that need to read tensor values (probabilities in [0, 1], class indices in
  range) are skipped inside the compiled function, as they are under a user's
  ``torch.compile``: call the eager backend to debug bad inputs. Argument checks on Python
  values and shapes still raise.
* When compilation fails (no C++ compiler, an unsupported platform or op), the function
  falls back to eager for the rest of the process, with one warning for the whole
  process. An error that eager raises too (a bad argument) is raised as eager raises it.
* Under a user's own ``torch.compile`` the wrapper steps aside (the user's compiler traces
  the eager function), whatever the backend.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal, ParamSpec, TypeVar

import torch

__all__ = ["set_backend", "get_backend", "use_backend", "backend_op"]

BACKENDS = ("eager", "compile")

P = ParamSpec("P")
R = TypeVar("R")


class _State(threading.local):
    """The backend of the current thread (``use_backend`` in one thread leaves others)."""

    def __init__(self) -> None:
        self.name = _default[0]


_default = ["eager"]  # the backend of new threads: the last set_backend
_state = _State()
_compiled: dict[Callable[..., Any], Callable[..., Any]] = {}
_failed: set[Callable[..., Any]] = set()
_warned = [False]


def _check(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be one of {BACKENDS}, got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"name must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: Literal["eager", "compile"]) -> None:
    """Run every map and loss of softmaxkit eagerly (``"eager"``, the default) or through
    ``torch.compile`` of its compile-friendly formulation (``"compile"``).

    Under ``"compile"`` each function compiles once per input shape on its first call
    (about 2-10 s on a CPU; later calls reuse the kernels) and falls back to eager, with one
    warning per process, where compilation fails. The setting is process-wide;
    :func:`use_backend` sets it for a ``with`` block.

    Example:
        >>> import softmaxkit
        >>> softmaxkit.set_backend("eager")
        >>> softmaxkit.get_backend()
        'eager'
    """
    _default[0] = _state.name = _check(name)


def get_backend() -> str:
    """The current backend: ``"eager"`` or ``"compile"`` (see :func:`set_backend`).

    Example:
        >>> import softmaxkit
        >>> softmaxkit.get_backend()
        'eager'
    """
    return _state.name


@contextlib.contextmanager
def use_backend(name: Literal["eager", "compile"]) -> Iterator[None]:
    """Run the ``with`` block under backend ``name`` (see :func:`set_backend`), then restore
    the previous backend.

    Example:
        >>> import torch, softmaxkit
        >>> with softmaxkit.use_backend("eager"):
        ...     softmaxkit.stablemax(torch.tensor([0.0, 1.0]))
        tensor([0.3333, 0.6667])
    """
    previous = _state.name
    _state.name = _check(name)
    try:
        yield
    finally:
        _state.name = previous


def _compiled_version(fn: Callable[P, R]) -> Callable[P, R]:
    found = _compiled.get(fn)
    if found is None:
        found = torch.compile(fn, dynamic=False)
        _compiled[fn] = found
    return found


def _fallback(fn: Callable[..., Any], error: BaseException) -> None:
    _failed.add(fn)
    if not _warned[0]:
        _warned[0] = True
        warnings.warn(
            f"softmaxkit backend 'compile': torch.compile failed for {fn.__qualname__} "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0][:200]}); it runs "
            "eagerly from now on, as does any other function whose compilation fails "
            "(this warning is shown once)",
            RuntimeWarning,
            stacklevel=3,
        )


def backend_op(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a public map or loss so that it follows :func:`set_backend`.

    Under ``"eager"`` (and inside any ``torch.compile``) the wrapper calls ``fn`` itself;
    under ``"compile"`` it calls ``torch.compile(fn, dynamic=False)``, built on first use.
    If the compiled call raises, ``fn`` runs eagerly: an error eager raises too is the
    caller's (raised unchanged); otherwise the compiler failed, and ``fn`` stays eager.
    """

    @functools.wraps(fn)
    def dispatch(*args: P.args, **kwargs: P.kwargs) -> R:
        if torch.compiler.is_compiling() or _state.name == "eager" or fn in _failed:
            return fn(*args, **kwargs)
        try:
            return _compiled_version(fn)(*args, **kwargs)
        except Exception as error:  # the compiler's failure, or the caller's bad input
            result = fn(*args, **kwargs)  # raises the caller's error as eager does
            _fallback(fn, error)
            return result

    return dispatch
