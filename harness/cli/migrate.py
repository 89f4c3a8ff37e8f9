"""``miglab migrate``: one real migration (QEMU over a shaped link, or bhyve between two hosts), recorded."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, cast

from harness.cli import bhyve_options, options

if TYPE_CHECKING:
    from sim.scenario import Scenario


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hypervisor", choices=("qemu", "bhyve"), default="qemu",
                   help="qemu: two local TCG guests in namespaces (default); bhyve: see the bhyve flags below")
    options.add_scenario_flags(p, ("scenario",), scenario="scenario TOML to start from (flags override its fields)")
    p.add_argument("--workload", metavar=options.SPEC,
                   help="workload spec, e.g. hotcold:hot=64MiB,rate=5000 (or redis, idle)")
    options.add_scenario_flags(p, ("memory",), memory="guest memory (default 512MiB)")
    p.add_argument("--strategy", metavar="NAME", help="precopy | postcopy | hybrid")
    options.add_scenario_flags(
        p, ("bandwidth", "rtt", "downtime_limit", "postcopy_after", "auto_converge", "xbzrle_cache"),
        bandwidth="link rate, e.g. 200Mbit/s (default 1Gbit/s)", rtt="link round-trip time, e.g. 10ms (default 0)",
        downtime_limit="QEMU downtime-limit (default 300ms)",
        postcopy_after="hybrid: switch to post-copy after N completed passes",
        auto_converge="enable auto-converge (CPU throttling)",
        xbzrle_cache="enable XBZRLE with this cache size, e.g. 64MiB")
    p.add_argument("--multifd", type=int, metavar=options.N, help="multifd channels (pre-copy only)")
    options.add_scenario_flags(p, ("max_bandwidth",), max_bandwidth="QEMU max-bandwidth cap (default: the link rate)")
    p.add_argument("--max-rounds", type=int, metavar="K",
                   help="round cap: once K pre-copy rounds have ended (dirty-sync-count K+1), raise downtime-limit "
                        "so QEMU's next check completes (guestperf's max_iters); QEMU's threshold still applies "
                        "before that. --stop-rule bhyve instead runs bhyve's fixed rounds without a threshold")
    p.add_argument("--stop-rule", choices=("qemu", "bhyve"),
                   help="qemu: QEMU's threshold (default); bhyve: exactly --bhyve-rounds rounds, then switch over")
    p.add_argument("--bhyve-rounds", type=int, metavar="K", help="with --stop-rule bhyve: the rounds (default 4)")
    p.add_argument("--timeout", metavar=options.TIME,
                   help="cancel a pre-copy that has not converged after this long (default 120s)")
    p.add_argument("--verify-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the destination paused after switchover and compare RAM page by page; any "
                        "differing page fails the run (default: on for pre-copy guests up to 1 GiB, where it "
                        "costs about 3 %% of the run; post-copy only on request, since a paused destination "
                        "cannot fault pages in)")
    p.add_argument("--warmup", default="2s", metavar=options.TIME,
                   help="workload run time before migrating (default 2s)")
    p.add_argument("--name", metavar="NAME", help="scenario name (default: the output file's stem)")
    p.add_argument("--campaign", default="scratch", metavar="NAME",
                   help="results/<campaign>/<name>.json when -o is not given")
    options.add_output(p, "run record JSON path")
    options.add_output_file(p, "--keep-logs", "copy the guests' console and QEMU logs into this directory",
                            metavar=options.DIR)
    options.add_output_file(p, "--qemu-trace", "write the source QEMU's migration trace events to LOG: every "
                            "pending estimate and exact check, bitmap sync and bandwidth window (threshold), with "
                            "host timestamps", metavar="LOG")
    options.add_quiet(p, "--no-progress")
    bhyve_options.add_migrate_arguments(p)


def migrate_scenario(args: argparse.Namespace) -> Scenario:
    """The Scenario a QEMU run measures: the shared flags on the runner's defaults, named after the output."""
    from harness.migrate import RUNNER_STRATEGIES, validate_for_qemu, verify_memory_by_default
    from harness.preflight import check_migration
    from sim.errors import ConfigError
    from sim.scenario import Link, Scenario, Strategy, Workload
    from sim.units import parse_bandwidth

    # A real run needs a guest small enough to boot here, a link, and a cancel QEMU itself lacks.
    runner_defaults = Scenario(workload=Workload(memory_bytes=512 << 20),
                               link=Link(bandwidth_Bps=parse_bandwidth("1Gbit/s")),
                               strategy=Strategy(timeout_s=120.0))
    for flag, value in (("--max-rounds", getattr(args, "max_rounds", None)),
                        ("--bhyve-rounds", getattr(args, "bhyve_rounds", None))):
        if value is not None and value < 1:
            raise ConfigError(f"must be at least 1, not {value}", flag=flag)
    scenario = options.scenario_from_args(args, base=runner_defaults, require_workload=True,
                                          strategies=RUNNER_STRATEGIES)
    if getattr(args, "max_rounds", None) is not None:
        # A real cap forces the switchover (QEMU has no cancel-at-K of its own to model).
        scenario = scenario.replace(**{"strategy.on_round_limit": "switchover"})
    if getattr(args, "bhyve_rounds", None) is not None:
        if scenario.strategy.stop_rule != "bhyve":
            raise ConfigError("needs --stop-rule bhyve", flag="--bhyve-rounds")
        scenario = scenario.replace(**{"strategy.bhyve_rounds": args.bhyve_rounds})
    if not args.name and args.output:
        scenario = scenario.replace(name=Path(args.output).stem)
    memory_flag = "--memory" if getattr(args, "memory", None) is not None else None
    try:
        workload = validate_for_qemu(scenario)  # one-line errors before anything starts
    except ConfigError as e:
        if e.key == "workload.memory_bytes":  # say which flag (or file) set the size
            raise e.at(flag=memory_flag, where=None if memory_flag else getattr(args, "scenario", None)) from None
        raise
    # The guests must fit this host: refused here, naming --memory, before any namespace or process exists
    # (run_migration checks again, for callers that are not this CLI).
    verify = args.verify_memory if args.verify_memory is not None else verify_memory_by_default(scenario)
    check_migration(scenario.workload.memory_bytes, workload, verify_memory=verify, flag=memory_flag)
    return scenario


def _summarise_qemu_trace(log_path: Path) -> None:
    """Write ``LOG.syncs.csv`` (one row per bitmap sync) beside the log and say where."""
    from harness.qemutrace import syncs
    from sim.atomic import atomic_open

    table = syncs(log_path)
    dest = log_path.with_name(log_path.name + ".syncs.csv")
    with atomic_open(dest) as f:
        table.to_csv(f, index=False)
    print(f"QEMU trace: {len(table)} bitmap syncs -> {dest}")


def _cap_note(cap: dict[str, object]) -> str:
    if cap.get("fired_sync_count") is None:
        return f"; round cap {cap['max_rounds']} not reached"
    return f"; round cap {cap['max_rounds']} fired at sync {cap['fired_sync_count']}"


def run(args: argparse.Namespace) -> int:
    if args.hypervisor == "bhyve":
        return bhyve_options.migrate_main(args)
    import sys

    options.require_harness_extra("migrate")
    from harness.migrate import MigrateOptions, MigrationInterrupted, qemu_trace_args, run_migration
    from harness.record import record_path
    from sim.units import format_bytes, format_duration, parse_duration

    scenario = migrate_scenario(args)
    out = Path(args.output) if args.output else record_path(args.campaign, scenario.name or "run")
    opts = MigrateOptions(timeout_s=None, verify_memory=args.verify_memory, warmup_s=parse_duration(args.warmup),
                          progress=not args.quiet and sys.stderr.isatty(),
                          keep_logs_in=Path(args.keep_logs) if args.keep_logs else None,
                          src_extra_args=qemu_trace_args(Path(args.qemu_trace)) if args.qemu_trace else ())
    try:
        with options.sigterm_guard():  # so every context manager of the running migration cleans up
            record = run_migration(scenario, opts)
    except MigrationInterrupted as e:
        # Torn down already; the record says how far it got. One line, no traceback.
        e.record.save(out)
        print(f"miglab: interrupted ({e.record.events[-1][1] if e.record.events else 'torn down'}); "
              f"record -> {out}", file=sys.stderr)
        return 130
    record.save(out)
    if args.qemu_trace:
        _summarise_qemu_trace(Path(args.qemu_trace))
    s = record.stats
    print(f"{record.outcome}: total {format_duration(s.total_time_s or float('nan'))}, downtime "
          f"{format_duration(s.downtime_s or float('nan'))}"
          + (f" (guest paused {format_duration(s.guest_pause_s)})" if s.guest_pause_s is not None else "")
          + f", sent {format_bytes(cast(int, s.bytes_sent))}, "
          f"{s.dirty_sync_count} syncs, {s.postcopy_requests} post-copy requests; guest continues on "
          f"{record.guest_side or '-'}: {record.guest_continues}"
          + (f"; {record.memory_check.pages_differing} pages differ" if record.memory_check else "")
          + (_cap_note(record.options["round_cap"]) if "round_cap" in record.options else "")
          + f" -> {out}")
    return 0 if record.completed and record.guest_continues else 1
