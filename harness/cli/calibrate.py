"""``miglab calibrate``: fit a page-class working-set model to a trace and save it as JSON."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Fit D(T), the distinct pages dirtied in a window of T seconds, "
                     "as page classes n_k pages at rate lambda_k per page.")
    p.add_argument("trace", metavar=options.FILE, help="trace file (.npz)")
    options.add_output(p, "where to write the model (JSON)", required=True)
    p.add_argument("--classes", type=int, default=3, metavar="K", help="maximum number of page classes (3)")
    p.add_argument("--poisson-only", action="store_true",
                   help="fit only poisson classes n (1 - exp(-lambda T)), no sweep classes n min(1, lambda T)")
    p.add_argument("--memory", metavar=options.SIZE, help="rescale the model to this guest size, e.g. 1TiB")
    p.add_argument("--scaling", choices=("absolute", "proportional"),
                   help="scaling law for --memory (default absolute: the hot set keeps its size)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sim.calibrate import DEFAULT_KINDS, calibrate, format_classes
    from sim.errors import ConfigError
    from sim.trace import load
    from sim.units import parse_size

    if args.classes < 1 or args.classes > 6:
        raise ConfigError(f"--classes must be between 1 and 6, got {args.classes}")
    if args.scaling is not None and args.memory is None:
        raise ConfigError("--scaling needs --memory")
    memory = options.parse_flag(args.memory, parse_size, "--memory") if args.memory is not None else None
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a directory")
    trace = load(args.trace)
    kinds = ("poisson",) if args.poisson_only else DEFAULT_KINDS
    model = calibrate(trace, args.classes, kinds=kinds)
    print(f"calibrated {args.trace} (sha256 {trace.sha256[:12]}...)")
    print(format_classes(model))
    if memory is not None:
        model = model.rescale(memory, args.scaling or "absolute")
        print(f"\nrescaled to {memory / 2**30:.4g} GiB ({args.scaling or 'absolute'}):")
        print(format_classes(model).split("\nfit over")[0])
    model.save(out)
    print(f"wrote {out}")
    return 0
