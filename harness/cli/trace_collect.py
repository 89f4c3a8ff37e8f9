"""``miglab trace collect``: record a guest's dirty pages into a trace (QEMU here, or a running bhyve VM)."""

from __future__ import annotations

import argparse

from harness.cli import bhyve_options, options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hypervisor", choices=("qemu", "bhyve"), default="qemu",
                   help="qemu: boot a guest here (default); bhyve: read /dev/vmm/NAME on this FreeBSD host")
    p.add_argument("--workload", metavar=options.SPEC,
                   help="e.g. hotcold:hot=64MiB,rate=5000 | zipf:rate=5000,s=1.1 | redis:keys=100000,value=1KiB")
    p.add_argument("--memory", default="512MiB", metavar=options.SIZE, help="guest RAM (default 512MiB)")
    p.add_argument("--interval", default="0.5s", metavar=options.TIME, help="diff interval (default 0.5s)")
    p.add_argument("--seconds", default="60s", metavar=options.TIME,
                   help="collection length after the workload starts (default 60s)")
    p.add_argument("--smp", type=int, default=1, metavar=options.N, help="guest vCPUs (default 1)")
    # --method is added with the bhyve flags (one flag, each hypervisor's own choices)
    p.add_argument("--keep-first-pass", action="store_true",
                   help="dirty-log: keep the window of QEMU's first pass (pages written while it sent the whole "
                        "guest once; as long as that pass) as the trace's first interval")
    options.add_output(p, "trace file to write (.npz)", required=True)
    options.add_quiet(p, "--no-progress")
    bhyve_options.add_collect_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.hypervisor == "bhyve":
        return bhyve_options.collect_main(args)
    from sim.errors import ConfigError
    from sim.units import parse_duration, parse_size

    if not args.workload:
        raise ConfigError("--workload SPEC is required with --hypervisor qemu")
    memory = options.parse_flag(args.memory, parse_size, "--memory")
    interval = options.parse_flag(args.interval, parse_duration, "--interval/--seconds")
    seconds = options.parse_flag(args.seconds, parse_duration, "--interval/--seconds")
    from harness.guest import parse_workload

    parse_workload(args.workload, memory)  # fail on a bad spec before anything boots
    if args.method not in ("content-diff", "dirty-log"):
        raise ConfigError(f"--method {args.method}: bhyve only; QEMU has content-diff and dirty-log")
    if args.smp < 1:
        raise ConfigError(f"need at least 1 vCPU, not {args.smp}", flag="--smp")
    if args.keep_first_pass and args.method != "dirty-log":
        raise ConfigError("only with --method dirty-log", flag="--keep-first-pass")
    options.require_harness_extra("trace collect")
    if args.method == "dirty-log":
        from harness.dirtylog import collect_dirtylog

        t = collect_dirtylog(args.workload, memory_bytes=memory, interval_s=interval, seconds=seconds,
                             out=args.output, smp=args.smp, keep_first_pass=args.keep_first_pass)
    else:
        from harness.collect import collect

        t = collect(args.workload, memory_bytes=memory, interval_s=interval, seconds=seconds, out=args.output,
                    smp=args.smp, progress=not args.quiet)
    counts = t.counts
    m = t.meta
    print(f"{args.output} ({t.meta.get('method', args.method)}): {t.n_intervals} intervals of {interval:g} s, {t.n_pages} pages; dirty pages/interval "
          f"mean {counts.mean():.0f} (min {counts.min()}, max {counts.max()}); workload achieved "
          f"{m.get('workload_achieved_rate') or float('nan'):.1f} {m.get('workload_achieved_rate_unit')}; "
          f"zero pages {m.get('zero_page_fraction', 0) * 100:.1f}%; sha256 {t.sha256[:16]}")
    return 0
