"""``python -m harness.bhyve collect|migrate ...``: the bhyve verbs without the full miglab CLI.

Useful on a FreeBSD host where only numpy is installed; ``miglab trace collect
--hypervisor bhyve`` and ``miglab migrate --hypervisor bhyve`` do the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sim.errors import MiglabError

from .cli import add_collect_arguments, add_migrate_arguments, collect_main, migrate_main


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m harness.bhyve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    c = sub.add_parser("collect", help="collect a dirty-page trace from /dev/vmm/NAME")
    add_collect_arguments(c, shared=True)
    c.set_defaults(func=collect_main)
    m = sub.add_parser("migrate", help="run and measure one bhyve migration")
    add_migrate_arguments(m, shared=True)
    m.set_defaults(func=migrate_main)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
