"""Entry point of the ``softmaxkit`` console script.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs. ``softmaxkit
demo NAME`` runs the experiment ``NAME`` of :data:`softmaxkit.cli.demo.EXPERIMENTS` (its own
module, same interface); plain ``softmaxkit demo`` is the grokking experiment.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "demo": "run a paper's experiment on built-in data: grokking (default), icl or ood",
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


def experiment_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``softmaxkit demo NAME``."""
    from softmaxkit.cli.demo import EXPERIMENTS

    module = importlib.import_module(EXPERIMENTS[name][0])
    parser = argparse.ArgumentParser(prog=f"softmaxkit demo {name}")
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from softmaxkit.cli.demo import EXPERIMENTS

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "demo" and argv[1] in EXPERIMENTS:
        module = importlib.import_module(EXPERIMENTS[argv[1]][0])
        return int(module.run(experiment_parser(argv[1]).parse_args(argv[2:])) or 0)
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"softmaxkit.cli.{args.command}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
