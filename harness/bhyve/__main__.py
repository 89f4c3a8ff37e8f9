"""``python -m harness.bhyve collect|migrate ...``: the bhyve verbs without the full miglab CLI.

Useful on a FreeBSD host where only numpy is installed; ``miglab trace collect
--hypervisor bhyve`` and ``miglab migrate --hypervisor bhyve`` do the same.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from harness.cli import Parser, run
from harness.cli.bhyve_options import add_collect_arguments, add_migrate_arguments, collect_main, migrate_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m harness.bhyve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    c = sub.add_parser("collect", help="collect a dirty-page trace from /dev/vmm/NAME")
    add_collect_arguments(c, shared=True)
    c.set_defaults(func=collect_main)
    m = sub.add_parser("migrate", help="run and measure one bhyve migration")
    add_migrate_arguments(m, shared=True)
    m.set_defaults(func=migrate_main)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
