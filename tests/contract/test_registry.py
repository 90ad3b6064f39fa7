"""The registry covers every public name: each function, class and result type in any
``__all__`` of softmaxkit and its sub-packages has a contract case, and every case names a
public object."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import softmaxkit
from tests.contract.registry import all_cases


def public_packages() -> list:
    """softmaxkit and every public sub-package that declares ``__all__``."""
    found = [softmaxkit]
    for info in pkgutil.iter_modules(softmaxkit.__path__, "softmaxkit."):
        if not info.ispkg or info.name.rpartition(".")[2].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            found.append(module)
    return found


def needs_case(value) -> bool:
    """Functions and classes need a case; modules and constants (version strings, tuples
    of method names) do not."""
    return callable(value) and not inspect.ismodule(value)


def required_names() -> set[str]:
    """Dotted names of every public callable: each sub-package's entries, and the top-level
    names that no sub-package exports (a re-export counts as its package's entry:
    ``softmaxkit.softmax`` is covered by ``softmaxkit.functional.softmax``)."""
    required, exported = set(), set()
    for module in public_packages()[1:]:
        for name in module.__all__:
            value = getattr(module, name)
            exported.add(id(value))
            if needs_case(value):
                required.add(f"{module.__name__}.{name}")
    for name in softmaxkit.__all__:
        value = getattr(softmaxkit, name)
        if needs_case(value) and id(value) not in exported:
            required.add(f"softmaxkit.{name}")
    return required


def resolve(dotted: str):
    module_name, _, name = dotted.rpartition(".")
    module = importlib.import_module(module_name)
    assert name in getattr(module, "__all__", ()), f"{dotted} is not in {module_name}.__all__"
    return getattr(module, name)


def test_every_public_name_has_a_case():
    registered = {case.name for case in all_cases()}
    missing = sorted(required_names() - registered)
    assert not missing, f"public names without a contract case: {missing}"


def test_every_case_names_a_public_object():
    for case in all_cases():
        resolve(case.name)


def test_cases_without_reference_say_why():
    for case in all_cases():
        if case.reference is None:
            assert case.no_reference.strip(), f"{case.name}: reference None needs no_reference"


def test_skips_give_reasons():
    for case in all_cases():
        for test, reason in case.skip.items():
            assert isinstance(reason, str) and reason.strip(), f"{case.name}: skip {test}"
