"""``miglab trace import SOURCE -o OUT.npz``: bring in a dirty-page trace collected elsewhere.

The layouts (CSV ``interval,page`` rows, NPZ page lists, dense or packed bitmaps) are documented in
``traces/README.md`` and validated by :mod:`sim.traceimport`; the written trace records its source.
"""

from __future__ import annotations

import argparse

from harness.cli import options

LAYOUTS = ("csv", "npz-pages", "npz-dense", "npz-bitmap")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar=options.FILE, help="the foreign trace (.csv or .npz)")
    options.add_output(p, "where to write the miglab trace (.npz)", required=True)
    p.add_argument("--layout", choices=LAYOUTS, help="input layout (default: from the file name and content)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--times", metavar=options.FILE, help="CSV of interval end times (t_end_s column)")
    when.add_argument("--interval", metavar=options.TIME, help="uniform interval length, e.g. 500ms")
    p.add_argument("--intervals", type=int, metavar=options.N, help="number of intervals (with --interval)")
    p.add_argument("--t0", metavar=options.TIME, help="start time of the first interval (default 0s)")
    p.add_argument("--memory", metavar=options.SIZE, help="guest memory size, e.g. 4GiB")
    p.add_argument("--page-size", type=int, metavar=options.N, help="page size in bytes (default 4096)")


def run(args: argparse.Namespace) -> int:
    from sim.traceimport import import_trace
    from sim.units import parse_duration, parse_size

    interval_s = options.parse_flag(args.interval, parse_duration, "--interval") if args.interval else None
    t0_s = options.parse_flag(args.t0, parse_duration, "--t0") if args.t0 else 0.0
    memory = options.parse_flag(args.memory, parse_size, "--memory") if args.memory else None
    t = import_trace(args.source, args.output, layout=args.layout, times=args.times, interval_s=interval_s,
                     n_intervals=args.intervals, t0_s=t0_s, memory_bytes=memory, page_size=args.page_size)
    print(f"{args.output}: {t.n_intervals} intervals, {t.n_pages} pages, sha256 {t.sha256[:16]}")
    return 0
