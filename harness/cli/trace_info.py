"""``miglab trace info``: shape, dirty rate and working-set summary of a trace."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar=options.FILE, help="trace file (.npz)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json

    from sim.trace import load
    from sim.traceview import format_summary, trace_summary

    s = trace_summary(load(args.file))
    print(json.dumps(s, indent=2, sort_keys=True, default=str) if args.json else format_summary(s))
    return 0
