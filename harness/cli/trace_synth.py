"""``miglab trace synth``: write a synthetic page-exact trace from a workload spec."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar=options.SPEC, help="workload spec, e.g. hotcold:hot=48MiB,rate=4000")
    p.add_argument("--memory", default="512MiB", metavar=options.SIZE, help="guest memory (default 512MiB)")
    p.add_argument("--seconds", default="60s", metavar=options.TIME, help="trace length (default 60s)")
    p.add_argument("--interval", default="0.5s", metavar=options.TIME, help="interval length (default 0.5s)")
    options.add_seed(p, default=options.DEFAULT_SYNTH_SEED)
    p.add_argument("--zero-fraction", type=float, default=0.0, metavar="FRACTION",
                   help="share of guest pages that are zero")
    options.add_output(p, "trace file to write (.npz)", required=True)


def run(args: argparse.Namespace) -> int:
    from sim import trace
    from sim.errors import ConfigError
    from sim.units import parse_duration, parse_size
    from sim.workload import synth_trace

    flags = {"seconds": "--seconds", "interval_s": "--interval", "memory_bytes": "--memory",
             "zero_page_fraction": "--zero-fraction"}
    try:
        t = synth_trace(args.spec, options.parse_flag(args.memory, parse_size, "--memory"),
                        seconds=options.parse_flag(args.seconds, parse_duration, "--seconds"),
                        interval_s=options.parse_flag(args.interval, parse_duration, "--interval"), seed=args.seed,
                        zero_page_fraction=args.zero_fraction)
    except ConfigError as e:  # the library names the argument; say which flag set it
        if e.key in flags:
            raise ConfigError(e.problem, flag=flags[e.key], value=e.value) from None
        raise
    sha = trace.save(t, args.output)
    rate = t.counts.mean() / (t.t_end_s - t.t_start_s).mean()
    print(f"wrote {args.output}: {t.n_intervals} intervals, {rate:.0f} changed pages/s, sha256 {sha[:12]}")
    return 0
