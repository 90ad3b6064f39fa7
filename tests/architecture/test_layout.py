"""The layout rules of DESIGN.md, read from the source with ``ast``.

* Dependencies point one way: ``_ops`` and ``_validation`` import nothing else of the
  package; ``functional`` imports only them and itself; any other package imports another
  package's names only through that package's ``__all__`` (never a private module or an
  unexported helper).
* No function takes more than 6 positional parameters (``self``, ``cls`` and an autograd
  ``ctx`` not counted): an autograd ``forward`` takes its tensors and one options object.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import softmaxkit

SRC = Path(softmaxkit.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))
BASE = {"_ops", "_validation"}
MAX_POSITIONAL = 6


def _package(path: Path) -> str:
    """The first component below softmaxkit ('' for softmaxkit/__init__.py)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return "" if parts == ("__init__",) else parts[0]


def _imports(tree: ast.AST, path: Path):
    """(target module, imported names or None) of every import of softmaxkit code."""
    here = path.relative_to(SRC).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("softmaxkit"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = ("softmaxkit", *here[: len(here) - node.level])
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            if module == "softmaxkit":  # from softmaxkit import _validation, losses, __version__
                for alias in node.names:
                    sub = SRC / alias.name
                    if sub.is_dir() or sub.with_suffix(".py").is_file():
                        yield f"softmaxkit.{alias.name}", None, node.lineno
                    else:
                        yield module, [alias.name], node.lineno
            elif module.startswith("softmaxkit"):
                yield module, [a.name for a in node.names], node.lineno


def _violation(importer: str, module: str, names: list[str] | None) -> str | None:
    parts = module.split(".")[1:]  # below softmaxkit
    target = parts[0] if parts else ""
    if target in BASE or (target and target == importer):
        return None
    if importer in BASE:
        return f"{importer} may import only _ops and _validation"
    if importer == "functional":
        return "functional may import only _ops, _validation and itself"
    if any(part.startswith("_") for part in parts):
        return "a private module of another package"
    if names is None:
        return None if len(parts) <= 1 else "import the package, not its module"
    # from softmaxkit[.pkg[.module]] import name: the name must be in softmaxkit[.pkg].__all__
    package = f"softmaxkit.{target}" if target else "softmaxkit"
    public = set(importlib.import_module(package).__all__)
    public |= {"*", "__all__", "__version__"}  # re-exporting a package's public names
    hidden = [n for n in names if n not in public]
    return f"not in softmaxkit.{target}.__all__: {hidden}" if hidden else None


def test_no_private_import_crosses_a_package_line():
    bad = []
    for path in MODULES:
        importer = _package(path)
        tree = ast.parse(path.read_text(), str(path))
        for module, names, line in _imports(tree, path):
            why = _violation(importer, module, names)
            if why:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {module} {names}: {why}")
    assert not bad, "\n".join(bad)


def _positional(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if names and names[0] in ("self", "cls", "ctx"):
        names = names[1:]
    return len(names)


def test_no_function_takes_more_than_six_positional_parameters():
    bad = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            functions = (ast.FunctionDef, ast.AsyncFunctionDef)
            if isinstance(node, functions) and _positional(node) > MAX_POSITIONAL:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("importer", "module", "names", "allowed"),
    [
        ("losses", "softmaxkit._ops.blocks", ["as_rows"], True),
        ("losses", "softmaxkit.functional", ["softmax"], True),
        ("losses", "softmaxkit.functional.stablemax", ["s_map"], False),
        ("losses", "softmaxkit.functional._softmax", ["softmax"], False),
        ("distributed", "softmaxkit.heads.linear_ce", ["default_chunk_size"], False),
        ("functional", "softmaxkit.losses", ["z_loss"], False),
        ("_ops", "softmaxkit.functional", ["softmax"], False),
        ("cli", "softmaxkit.calibration", None, True),
        ("cli", "softmaxkit", ["__version__"], True),
        ("cli", "softmaxkit.heads.linear_ce", None, False),
        ("heads", "softmaxkit.heads.linear_ce", ["_chunk"], True),
    ],
)
def test_the_rule_itself(importer, module, names, allowed):
    assert (_violation(importer, module, names) is None) == allowed
