"""``miglab simulate``: predict one migration and print its summary (or the full result as JSON)."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_scenario_arguments(p)
    p.add_argument("--strategy", choices=options.strategies(), help="migration strategy")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_output(p, "also write the full result as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from sim.atomic import atomic_open
    from sim.engine import simulate

    from .tables import print_table, summary_row

    sc = options.scenario_from_args(args)
    r = simulate(sc)
    if args.output:
        with atomic_open(args.output) as f:
            json.dump(r.to_dict(), f, indent=2, default=str)
    if args.json:
        json.dump(r.to_dict(), sys.stdout, indent=2, default=str)
        print()
    else:
        print_table([summary_row(sc.strategy.kind, r.summary())])
        if r.trace_looped:
            print("note: the migration outlasted the trace, which was looped")
    return 0 if r.converged else 1
