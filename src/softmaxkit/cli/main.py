"""Entry point of the ``softmaxkit`` console script.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "demo": "run the grokking / Softmax Collapse experiment of Prieto et al. 2025",
    "bench": "time our ops against the plain torch code they replace",
    "report": "calibration, Softmax Collapse and OOD report of a file of logits (HTML + JSON)",
}


def build_parser() -> argparse.ArgumentParser:
    from softmaxkit import __version__

    parser = argparse.ArgumentParser(prog="softmaxkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"softmaxkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"softmaxkit.cli.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"softmaxkit.cli.{args.command}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
