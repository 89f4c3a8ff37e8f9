"""``miglab trace plot``: heat map of pages against time beside the working-set curve (and its fit)."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar=options.FILE, help="trace file (.npz)")
    options.add_output(p, "image to write (.png)", required=True)
    p.add_argument("--classes", type=int, default=3, metavar="K", help="page classes in the overlaid fit (3)")
    p.add_argument("--no-fit", action="store_true", help="do not overlay a fitted model")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sim.errors import ConfigError
    from sim.trace import load
    from sim.traceview import plot_trace

    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a directory")
    if args.classes < 1 or args.classes > 6:
        raise ConfigError(f"--classes must be between 1 and 6, got {args.classes}")
    plot_trace(load(args.file), out, max_classes=args.classes, fit=not args.no_fit)
    print(f"wrote {out}")
    return 0
