"""The ``miglab`` command: one module per verb, imported only when that verb runs.

:data:`VERBS` is the static table of verbs: group (``""`` top level,
``"trace"`` or ``"harness"``), name, module in this package, one-line help.
``miglab --help`` and ``miglab trace --help`` are built from the table
alone; ``miglab simulate ...`` imports ``harness.cli.simulate`` and nothing
of the harness. A verb module defines ``add_arguments(p)`` and
``run(args) -> int``, and imports at module level only the standard library
and :mod:`harness.cli.options` (numpy, pandas, qemu.qmp, ``sim.*``,
``harness.*`` are imported inside ``run``). Verbs of the ``trace`` group live
in ``trace_<name>.py``.

Exit codes: 0 ok, 1 the run's outcome was bad (did not converge, regression,
failed migration), 2 user error. Any :class:`sim.errors.MiglabError` that
escapes a verb becomes one line rendered from the error's location fields,
``miglab: <file>: <key>: <problem>`` or ``miglab: --flag: <problem>``, and
exit 2 (see :mod:`sim.errors`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections import namedtuple
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import NoReturn

log = logging.getLogger(__name__)


class Verb(namedtuple("Verb", "group name module help")):  # not a dataclass: `dataclasses` costs --help 40 ms
    """One row of the verb table: group ("" top level, "trace" or "harness"), name as typed
    ("calibrate-host"), module in this package ("calibrate_host"), one-line help."""

    __slots__ = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.name)


GROUPS: dict[str, str] = {
    "trace": "collect, synthesise, inspect and plot dirty-page traces",
    "harness": "build the guest and manage the harness",
}

VERBS: tuple[Verb, ...] = (
    Verb("", "simulate", "simulate", "predict one migration"),
    Verb("", "compare", "compare", "run several strategies on the same workload and link, and plot them"),
    Verb("", "calibrate", "calibrate", "fit a page-class working-set model to a trace"),
    Verb("", "sweep", "sweep", "run a named cross product of scenarios into a Parquet table"),
    Verb("", "regress", "regress", "compare a suite's migration metrics against a baseline (CI)"),
    Verb("", "migrate", "migrate", "run a real migration over a shaped link (QEMU) or between two FreeBSD hosts "
                                   "(bhyve) and record it"),
    Verb("", "validate", "validate", "predict, run for real and compare a campaign of migrations"),
    Verb("", "calibrate-host", "calibrate_host", "fit host constants to validation runs (train / held-out)"),
    Verb("trace", "synth", "trace_synth", "generate a synthetic trace"),
    Verb("trace", "import", "trace_import", "bring in a dirty-page trace collected elsewhere (CSV or NPZ)"),
    Verb("trace", "info", "trace_info", "shape, dirty rate and working-set summary of a trace"),
    Verb("trace", "plot", "trace_plot", "heat map of pages against time and the working-set curve"),
    Verb("trace", "collect", "trace_collect", "record a guest's dirty pages: boot a QEMU guest running a "
                                              "workload, or watch a running bhyve VM (--hypervisor bhyve)"),
    Verb("harness", "build-guest", "build_guest", "build the QEMU guest (kernel + initramfs) into the cache"),
    Verb("harness", "link", "link", "build a shaped link (namespaces + tbf + delay) and measure it"),
    Verb("harness", "cleanup", "cleanup", "remove namespaces, guests and RAM files of miglab runs that were "
                                          "killed (their pid is gone)"),
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:  # argparse's usage dump is noise for a one-line error
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """``--version``, reading the version only when asked (sim's ``__init__`` is not needed otherwise)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from sim import __version__

        print(f"miglab {__version__}")
        parser.exit(0)


#: ``-v/--verbose``'s help, the same before the verb (``miglab -v simulate``) and after it.
VERBOSE_HELP = "log at INFO; -vv DEBUG (the modules' loggers, on stderr)"


def add_verbose(p: argparse.ArgumentParser, *, dest: str = "verbose") -> None:
    """``-v/--verbose``, counted: WARNING by default, INFO once, DEBUG twice (see :func:`log_level`).

    The top-level parser and every verb take it (``dest`` ``verbose`` and ``verb_verbose``), so
    ``miglab -v sweep ...`` and ``miglab sweep ... -v`` mean the same and the counts add up.
    """
    p.add_argument("-v", "--verbose", action="count", default=0, dest=dest, help=VERBOSE_HELP)


def log_level(args: argparse.Namespace) -> int:
    """The :mod:`logging` level the ``-v`` flags of ``args`` ask for."""
    n = int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "verb_verbose", 0) or 0)
    return [logging.WARNING, logging.INFO, logging.DEBUG][min(n, 2)]


def verb_module(verb: Verb) -> ModuleType | None:
    """The verb's module, or None when this installation lacks it (a partial checkout)."""
    name = f"{__name__}.{verb.module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


def selected(argv: Sequence[str]) -> Verb | None:
    """The verb ``argv`` names, found without parsing (the top-level flags take no value)."""
    words = [w for w in argv if not w.startswith("-")]
    if not words:
        return None
    key = (words[0], words[1]) if words[0] in GROUPS and len(words) > 1 else ("", words[0])
    return next((v for v in VERBS if v.key == key), None)


def build_parser(verbs: Iterable[Verb] | None = None) -> argparse.ArgumentParser:
    """The whole parser; the arguments of ``verbs`` only (default: every verb), the rest named with their help."""
    wanted = {v.key for v in (VERBS if verbs is None else verbs)}
    parser = Parser(prog="miglab", description="Simulate and measure live migration of virtual machines.")
    parser.add_argument("--version", action=_Version)
    add_verbose(parser)
    top = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)
    groups = {"": top}
    for group, help_ in GROUPS.items():
        g = top.add_parser(group, help=help_)
        groups[group] = g.add_subparsers(dest=f"{group}_verb", required=True, metavar="ACTION", parser_class=Parser)
    for verb in VERBS:
        p = groups[verb.group].add_parser(verb.name, help=verb.help)
        p.set_defaults(verb_spec=verb)
        add_verbose(p, dest="verb_verbose")
        if verb.key not in wanted:
            continue
        module = verb_module(verb)
        if module is None:  # run() says so
            continue
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging and dispatch to ``args.func``, turning user errors into one line and exit 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one line (or --help / --version)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    logging.basicConfig(level=log_level(args),
                        format="%(levelname)s %(name)s: %(message)s")
    from sim.errors import MiglabError

    if not hasattr(args, "func"):  # parsed with a parser that did not load this verb
        return _missing(args.verb_spec)
    try:
        from harness.cli.options import check_output

        check_output(args)  # a bad -o is refused before the verb spends anything
        return int(args.func(args) or 0)
    except MiglabError as e:
        print(f"miglab: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("miglab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def one_line(e: BaseException) -> str:
    """``str(e)`` on one line: a problem quoting a file's text must not break the one-line contract."""
    return " ".join(str(e).split()) or type(e).__name__


def _missing(verb: Verb) -> int:
    print(f"miglab: error: {verb.name}: this installation has no module harness.cli.{verb.module}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``miglab``; return the exit code (0 ok, 1 the run's outcome was bad, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = selected(argv)
    if verb is not None and "-h" not in argv and "--help" not in argv and verb_module(verb) is None:
        return _missing(verb)
    parser = build_parser([verb] if verb is not None else [])
    return run(parser, argv)


__all__ = ["VERBS", "GROUPS", "Verb", "Parser", "build_parser", "run", "main", "selected", "verb_module", "VERBOSE_HELP",
           "add_verbose", "log_level"]
