"""``miglab simulate``: predict one migration and print its summary (or the full result as JSON).

Exit status: 0 when the migration completes, 1 when it does not (cancelled at ``--timeout``,
a round limit, no progress possible, bhyve refusing the guest), 2 for bad input.
"""

from __future__ import annotations

import argparse

from harness.cli import hostflag, options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Predict one migration. Exit status 0 when it completes, 1 when it does not converge "
                     "(the summary says why and what was sent by then), 2 for bad input.")
    options.add_scenario_arguments(p)
    hostflag.add_arguments(p)
    p.add_argument("--strategy", choices=options.strategies(), help="migration strategy")
    p.add_argument("--json", action="store_true", help="print the full result as JSON on stdout, not the table")
    options.add_output(p, "also write the full result as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from sim.atomic import atomic_open
    from sim.engine import simulate

    from .tables import print_table, result_document, summary_row

    sc, host = hostflag.scenario_and_host(args)
    r = simulate(sc)
    hostflag.warn(sc, host, r)
    doc = result_document(r, host) if args.output or args.json else None
    if args.output:
        with atomic_open(args.output) as f:
            json.dump(doc, f, indent=2, default=str)
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
    else:
        print(host.label())
        print_table([summary_row(sc.strategy.kind, r.summary())])
        if r.trace_looped:
            print("note: the migration outlasted the trace, which was looped")
    return 0 if r.converged else 1
