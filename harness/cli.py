"""The ``miglab`` command: a thin argparse shell over the library.

Each verb lives beside the code it drives and registers itself through a
``register(groups)`` function; ``groups`` maps ``""`` (top level), ``"trace"``
and ``"harness"`` to argparse sub-parser collections. A handler takes the
parsed namespace and returns an exit code. Any :class:`sim.MiglabError`
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sim import __version__
from sim.errors import MiglabError

# Modules that contribute verbs. sim's verbs come first; harness verbs may add
# to the "trace" group (``trace collect``).
VERB_MODULES: tuple[str, ...] = (
    "sim.cli",
    "sim.calibrate",
    "sim.traceview",
    "sim.sweep",
    "sim.regress",
    "harness.guest",
    "harness.collect",
    "harness.link",
    "harness.migrate",
    "harness.validate",
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> None:  # argparse's usage dump is noise for a one-line error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="miglab", description="Simulate and measure live migration of virtual machines.")
    parser.add_argument("--version", action="version", version=f"miglab {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeat for debug)")
    top = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)
    trace = top.add_parser("trace", help="collect, synthesise, inspect and plot dirty-page traces")
    trace_sub = trace.add_subparsers(dest="trace_verb", required=True, metavar="ACTION", parser_class=Parser)
    harness = top.add_parser("harness", help="build the guest and manage the harness")
    harness_sub = harness.add_subparsers(dest="harness_verb", required=True, metavar="ACTION", parser_class=Parser)
    groups = {"": top, "trace": trace_sub, "harness": harness_sub}
    for name in VERB_MODULES:
        importlib.import_module(name).register(groups)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging and dispatch to ``args.func``, turning user errors into one line and exit 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one line (or --help / --version)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MiglabError as e:
        print(f"miglab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("miglab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``miglab``; return the exit code (0 ok, 1 the run's outcome was bad, 2 user error)."""
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
