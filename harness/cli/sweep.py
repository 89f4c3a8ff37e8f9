"""``miglab sweep``: every scenario of a sweep TOML into one Parquet table (resumable, checkpointed)."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sim.sweep import _CHECKPOINT_INTERVAL_S as CHECKPOINT_INTERVAL_S
    from sim.sweep import _CHECKPOINT_ROWS as CHECKPOINT_ROWS

    p.description = "Run every scenario of SWEEP.toml (resumable) into one Parquet table."
    p.add_argument("sweep", metavar="SWEEP.toml", help="sweep definition: name, [base], [vary], [[variants]]")
    options.add_output(p, "output table (default results/sweeps/NAME.parquet); checkpoint in OUT.parquet.parts/",
                       metavar="OUT.parquet")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar=options.N,
                   help="local worker processes (default: all cores)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this dask.distributed cluster")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_ROWS, metavar="RUNS",
                   help=f"checkpoint after this many finished runs (default {CHECKPOINT_ROWS}; also every "
                        f"{CHECKPOINT_INTERVAL_S:g} s and on interrupt)")
    p.add_argument("--fresh", action="store_true", help="discard finished runs and the checkpoint first")
    p.add_argument("--dry-run", action="store_true", help="list the runs (scenario id and labels) and exit")
    p.add_argument("--max-runs", type=int, default=1_000_000, metavar=options.N,
                   help="refuse a sweep of more runs than this before building any (default 1000000)")
    options.add_quiet(p, "--no-progress")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sim.errors import ConfigError
    from sim.sweep import Sweep, _InputHashes, _remove_parts, parts_dir_for, run_sweep, scenario_id

    sweep = Sweep.from_toml(args.sweep, max_runs=args.max_runs)
    out = Path(args.output) if args.output else Path("results/sweeps") / f"{sweep.name}.parquet"
    if out.suffix != ".parquet":
        raise ConfigError(f"{out}: the output of a sweep must be a .parquet file")
    if args.dry_run:
        input_sha = _InputHashes()
        for config, scenario in sweep.scenarios():
            print(scenario_id(scenario, input_sha(scenario)), json.dumps(config, default=str))
        return 0
    if args.fresh:
        _remove_parts(parts_dir_for(out))
        out.unlink(missing_ok=True)
    with options.sigterm_guard():  # an orderly stop that checkpoints
        table = run_sweep(sweep, out, jobs=args.jobs, scheduler=args.scheduler, progress=not args.quiet,
                          checkpoint_rows=args.checkpoint_every)
    print(f"{out}: {len(table)} runs")
    return 0
