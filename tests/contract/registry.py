"""The registry of the contract harness: one :class:`Case` per public callable.

A case names the public callable, builds small seeded sample inputs in a given dtype, points
to a float64 oracle from ``tests/reference/`` and declares which shared contract tests apply
(reductions, ignore_index, probability targets, ``dim``, empty inputs, compile, gradcheck,
bad arguments). The shared tests in ``test_contract.py`` run over :func:`all_cases`; the
completeness test in ``test_registry.py`` checks that every name in every ``__all__`` is here.

The case modules are ``tests/contract/cases_*.py``; each calls :func:`register` at import.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Sample:
    """One call: positional ``args`` (built for one dtype), ``kwargs``, and the positions in
    ``args`` that gradcheck differentiates (float64 leaf tensors; ``()`` = not differentiable).
    """

    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad: tuple[int, ...] = ()


@dataclass
class Bad:
    """A bad call built from the first sample: keyword overrides ``kwargs`` and positional
    replacements ``args`` ({position: value}); it must raise ``error`` naming ``name``."""

    kwargs: dict
    error: type
    name: str
    args: dict = field(default_factory=dict)


@dataclass
class Case:
    """One public callable and what the shared contract tests may check of it."""

    name: str
    op: Callable
    samples: Callable[[torch.dtype], list[Sample]]
    reference: Callable | None = None
    no_reference: str = ""
    dtypes: tuple = FLOAT_DTYPES
    reductions: tuple[str, ...] = ()
    ignore_index: bool = False
    target_arg: int | None = None
    prob_targets: bool = False
    dim: bool = False
    noncontiguous: bool = True
    empty: Callable[[], Sample] | None = None
    compile: bool = True
    gradcheck: bool = True
    bad: list[Bad] = field(default_factory=list)
    tol: dict = field(default_factory=dict)
    skip: dict = field(default_factory=dict)
    # optional fields (defaults keep the shape above)
    main: Callable | None = None  # output -> the tensor the shared tests compare (default:
    #                               the output itself, or its first element for a tuple)
    baseline: Callable | None = None  # torch's own op on the same args, for the
    #                                   low-precision assertion
    num_classes: Callable | None = None  # Sample -> the class count for one-hot probability
    #                                      targets (default: args[0].shape[-1])
    keeps_dtype: bool = True  # a floating input of dtype d gives a floating output of dtype d
    prob_axis: int = 1  # the class axis of a probability target of more than one dimension
    labels: dict = field(default_factory=dict)  # {position: argument name} of the args that
    #   hold class indices: every integer dtype gives the int64 result, bool/float a TypeError
    magnitude: tuple[int, ...] = ()  # positions of floating args (logits, features) that the
    #   extreme-magnitude test scales to 1e19, 1e30, 3e38 (float32) and near float16/bfloat16's
    #   maximum: the output must be finite and close to float64 wherever float64's is finite
    beyond_max: str = ""  # why test (l) does not run at 3e38: the per-row (or per-term)
    #   values there exceed the dtype's range and only their average is finite (as with
    #   torch's own cross_entropy); the other magnitudes still run
    masked_row: str | None = None  # what a row of all -inf in args[0] gives: "zeros" (a
    #   probability map) or "-inf" (a log map), the other rows unchanged, no NaN gradient


REGISTRY: dict[str, Case] = {}


def register(*cases: Case) -> None:
    """Add ``cases`` to :data:`REGISTRY`; a name registered twice is an error."""
    for case in cases:
        if case.name in REGISTRY:
            raise ValueError(f"contract case {case.name!r} is registered twice")
        REGISTRY[case.name] = case


def _import_case_modules() -> None:
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("cases_"):
            importlib.import_module(f"{__package__}.{info.name}")


def all_cases() -> list[Case]:
    """Every registered case, sorted by name, after importing every ``cases_*.py`` module."""
    _import_case_modules()
    return [REGISTRY[name] for name in sorted(REGISTRY)]
