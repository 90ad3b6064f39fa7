"""Sphinx configuration of the softmaxkit API reference.

Sphinx (autodoc + napoleon) is used rather than MkDocs because the docstrings are written
in reST with roles such as ``:math:`` and ``:func:``; autodoc reads them as written.

One page per package is generated at build time (into ``docs/api/``, not versioned) from
``PACKAGES`` below, in the order of the life of a softmax layer. The build stops when a
listed package does not import or a public sub-package is missing from the list.

The build fails (a warning, turned into an error by ``-W``) when a public name of a
package's ``__all__`` has no docstring of its own.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import softmaxkit  # noqa: E402

project = "softmaxkit"
author = "softmaxkit authors"
release = version = softmaxkit.__version__

# (page name, title, module) in the order of the life of a softmax layer.
PACKAGES = [
    ("functional", "Maps", "softmaxkit.functional"),
    ("losses", "Losses", "softmaxkit.losses"),
    ("heads", "Heads", "softmaxkit.heads"),
    ("attention", "Attention", "softmaxkit.attention"),
    ("moe", "Gates (mixture of experts)", "softmaxkit.moe"),
    ("quant", "Quantizers", "softmaxkit.quant"),
    ("sparsity", "Sparsity", "softmaxkit.sparsity"),
    ("calibration", "Calibration", "softmaxkit.calibration"),
    ("ood", "Out-of-distribution scores", "softmaxkit.ood"),
    ("labels", "Labels", "softmaxkit.labels"),
    ("dynamics", "Training dynamics", "softmaxkit.dynamics"),
    ("distributed", "Distributed", "softmaxkit.distributed"),
    (
        "integrations",
        "Integrations: Hugging Face transformers",
        "softmaxkit.integrations.transformers",
    ),
]

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # bundles MathJax 3: the site renders math with no network
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_ivar = True
myst_heading_anchors = 3
nitpicky = False


def _check_every_package_listed() -> None:
    listed = {module for _, _, module in PACKAGES}
    listed |= {module.rpartition(".")[0] for module in listed}  # a package shown by one module
    public = {
        info.name
        for info in pkgutil.iter_modules(softmaxkit.__path__, "softmaxkit.")
        if info.ispkg and not info.name.rpartition(".")[2].startswith("_")
    }
    missing = sorted(public - listed - {"softmaxkit.cli"})  # the CLI has its own page
    if missing:
        raise RuntimeError(f"docs/conf.py PACKAGES lacks the public packages {missing}")


def _own_doc(obj) -> str | None:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
    elif inspect.isroutine(obj) or inspect.ismodule(obj):
        doc = getattr(obj, "__doc__", None)
    else:
        return "data"  # constants are documented in their package's docstring
    return doc.strip() if doc else None


def _write_pages() -> list[str]:
    _check_every_package_listed()
    out = HERE / "api"
    out.mkdir(exist_ok=True)
    pages = []
    for page, title, module in PACKAGES:
        mod = importlib.import_module(module)
        lines = [title, "=" * len(title), "", f".. automodule:: {module}", "   :no-members:", ""]
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {module}.{name}", ""]
            elif inspect.isroutine(obj):
                lines += [f".. autofunction:: {module}.{name}", ""]
            else:  # a constant: its type's docstring is not its own
                lines += [
                    f".. py:data:: {module}.{name}",
                    f"   :type: {type(obj).__name__}",
                    "",
                    "   A constant of the package; see the package description above.",
                    "",
                ]
        text = "\n".join(lines)
        path = out / f"{page}.rst"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        pages.append(f"api/{page}")
    (out / "index.rst").write_text(
        "API reference\n=============\n\n.. toctree::\n   :maxdepth: 1\n\n"
        + "".join(f"   {p.removeprefix('api/')}\n" for p in pages)
        + "   cli\n"
    )
    from softmaxkit.cli.main import SUBCOMMANDS, build_parser

    def literal(text: str) -> str:
        return "::\n\n" + "".join(f"   {ln}\n" if ln else "\n" for ln in text.splitlines())

    os.environ["COLUMNS"] = "100"  # argparse wraps --help to the terminal width
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices  # the subcommand parsers
    cli = [
        "Command line\n============\n\n"
        "The ``softmaxkit`` console script; the ``--help`` texts below are captured from its\n"
        "argparse parser at build time.\n\n"
        "``softmaxkit --help``" + literal(parser.format_help())
    ]
    for name in SUBCOMMANDS:
        title = f"softmaxkit {name}"
        cli.append(f"\n{title}\n{'-' * len(title)}\n\n``{title} --help``")
        cli.append(literal(subs[name].format_help()))
    (out / "cli.rst").write_text("".join(cli))
    return pages


PAGES = _write_pages()


def _check_docstrings(app) -> None:
    from sphinx.util import logging

    log = logging.getLogger("softmaxkit.docs")
    for _page, _title, module in PACKAGES:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            if not _own_doc(getattr(mod, name)):
                log.warning("public name %s.%s has no docstring", module, name)


ARXIV = re.compile(r"(?<![`<\w/])arXiv:(\d{4}\.\d{4,5})(?![\w`])")


def _link_papers(app, what, name, obj, options, lines) -> None:
    """Each ``arXiv:NNNN.NNNNN`` a docstring names becomes a link to its abstract page."""
    for i, line in enumerate(lines):
        lines[i] = ARXIV.sub(r"`arXiv:\1 <https://arxiv.org/abs/\1>`__", line)


def setup(app):
    app.connect("builder-inited", _check_docstrings)
    app.connect("autodoc-process-docstring", _link_papers)
