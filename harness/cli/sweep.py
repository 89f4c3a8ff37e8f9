"""``miglab sweep``: every scenario of a sweep TOML into one Parquet table (resumable, checkpointed).

Like ``simulate`` and ``compare``, the runs use the bundled calibrated host constants unless given
``--host FILE`` or ``--uncalibrated`` / ``--host none``; a field the sweep sets itself (say
``host.switchover_s`` in its ``[base]``) wins over them. The choice is printed first and stored as
``host_constants`` in the table's provenance.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from harness.cli import hostflag, options

if TYPE_CHECKING:
    from sim.hostinfo import HostSource


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
    hostflag.add_host_arguments(p)
    options.add_quiet(p, "--no-progress")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sim import hostinfo
    from sim.errors import ConfigError
    from sim.sweep import Sweep, _InputHashes, _remove_parts, parts_dir_for, run_sweep, scenario_id

    host = hostinfo.choose(args.host, uncalibrated_flag=args.uncalibrated)
    sweep = Sweep.from_toml(args.sweep, max_runs=args.max_runs, host_overrides=dict(host.overrides))
    out = Path(args.output) if args.output else Path("results/sweeps") / f"{sweep.name}.parquet"
    if out.suffix != ".parquet":
        raise ConfigError(f"{out}: the output of a sweep must be a .parquet file")
    if args.dry_run:
        input_sha = _InputHashes()
        for config, scenario in sweep.scenarios():
            print(scenario_id(scenario, input_sha(scenario)), json.dumps(config, default=str))
        return 0
    print(_host_statement(sweep, host))
    _warn_outside_fit(sweep, host)
    if args.fresh:
        _remove_parts(parts_dir_for(out))
        out.unlink(missing_ok=True)
    with options.sigterm_guard():  # an orderly stop that checkpoints
        table = run_sweep(sweep, out, jobs=args.jobs, scheduler=args.scheduler, progress=not args.quiet,
                          checkpoint_rows=args.checkpoint_every, host=_host_dict(sweep, host))
    print(f"{out}: {len(table)} runs")
    return 0


def _own_host_fields(sweep: Any) -> list[str]:
    """The host constants the sweep sets itself (they win over ``--host``)."""
    return sorted(k for k in sweep.own_fields() if k.startswith("host.") and k != "host.hypervisor"
                  or k in sweep.host_overrides)


def _host_statement(sweep: Any, host: HostSource) -> str:
    own = _own_host_fields(sweep)
    return host.label() + (f"; the sweep sets {', '.join(own)} itself" if own else "")


def _host_dict(sweep: Any, host: HostSource) -> dict[str, Any]:
    doc = host.to_dict()
    own = _own_host_fields(sweep)
    if own:
        doc["set_by_sweep"] = own
        doc["label"] = _host_statement(sweep, host)
    return doc


def _warn_outside_fit(sweep: Any, host: HostSource) -> None:
    """Warnings, on stderr, for the runs outside the constants' (or a model's) fit: each kind once, with its run
    count and the first run's values (a sweep of 100,000 runs would otherwise warn 100,000 times)."""
    import re
    import sys

    from sim.hostinfo import range_warnings

    seen: dict[tuple[Any, ...], list[str]] = {}
    kinds: dict[str, list[Any]] = {}  # the warning with its values blanked -> [first line, runs]
    runs = sweep.scenarios()
    for _, sc in runs:  # the fit checks read the size, link, hypervisor and model only: once per combination
        key = (sc.workload.memory_bytes, sc.link.bandwidth_Bps, sc.link.rtt_s, sc.host.hypervisor,
               sc.workload.kind, sc.workload.path, sc.workload.scaling)
        if key not in seen:
            seen[key] = range_warnings(sc, host)
        for line in seen[key]:
            kind = re.sub(r"[0-9.]+ (?:[KMGT]iB|[MG]bit/s|ms)", "#", line)
            kinds.setdefault(kind, [line, 0])[1] += 1
    for first, n in kinds.values():
        body = first.removeprefix("warning: ")
        print(first if n == 1 else f"warning: {n} of {len(runs)} runs, e.g. {body}", file=sys.stderr)
