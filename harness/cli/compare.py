"""``miglab compare``: several strategies on the same workload and link, as a table and a timeline plot.

``-o DIR`` writes ``summary.csv`` (one row per strategy, with the host constants used),
its provenance beside it (``summary.csv.meta.json``, :mod:`sim.provenance`) and
``timeline.png``. Exit status 0 whether or not each strategy converges (the table says).
"""

from __future__ import annotations

import argparse

from harness.cli import hostflag, options

COMPARE_DEFAULT = ("stopcopy", "precopy", "postcopy", "hybrid")


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_scenario_arguments(p)
    hostflag.add_arguments(p)
    p.add_argument("--strategies", default=",".join(COMPARE_DEFAULT), metavar="LIST",
                   help="comma-separated strategies")
    options.add_output(p, "write summary.csv (+ .meta.json provenance) and timeline.png here", metavar=options.DIR)
    p.set_defaults(strategy=None)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from sim.atomic import atomic_path
    from sim.engine import simulate
    from sim.errors import ConfigError
    from sim.provenance import write_sidecar
    from sim.scenario import STRATEGIES
    from sim.timelineplot import plot_timelines

    from .tables import print_table, run_provenance, summary_row, verdict

    base, host = hostflag.scenario_and_host(args)
    kinds = [k.strip() for k in args.strategies.split(",") if k.strip()]
    if not kinds:
        raise ConfigError(f"no strategy in {args.strategies!r} (e.g. precopy,postcopy)", flag="--strategies")
    for k in kinds:
        if k not in STRATEGIES:
            raise ConfigError(f"unknown strategy {k!r} (choose from {', '.join(STRATEGIES)})", flag="--strategies")
    results = {k: simulate(base.replace(**{"strategy.kind": k})) for k in kinds}
    hostflag.warn(base, host, max(results.values(), key=lambda r: r.precopy_time_s))
    rows = []
    for k, r in results.items():
        rows.append({"strategy": k, **r.summary(), "host_constants": host.label(), "trace_sha256": r.trace_sha256,
                     "miglab_version": r.miglab_version, "scenario": json.dumps(r.scenario.to_dict(), sort_keys=True)})
    print(host.label())
    print_table([summary_row(k, r.summary()) for k, r in results.items()])
    pick = verdict(results)
    print(pick)
    if any(r.trace_looped for r in results.values()):
        print("note: at least one migration outlasted the trace, which was looped")
    if args.output:
        out = Path(args.output)
        with atomic_path(out / "summary.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        write_sidecar(out / "summary.csv", run_provenance(list(results.values()), host))
        with atomic_path(out / "timeline.png") as tmp:
            plot_timelines(results, tmp, host=host, note=pick)
        print(f"wrote {out / 'summary.csv'} (+ .meta.json) and {out / 'timeline.png'}")
    return 0
