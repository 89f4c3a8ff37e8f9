"""The bhyve flags of ``miglab trace collect`` and ``miglab migrate``, and what they run.

The shared verbs belong to the QEMU harness; with ``--hypervisor bhyve`` they
hand over to :func:`collect_main` / :func:`migrate_main`.
:func:`add_collect_arguments` and :func:`add_migrate_arguments` add the
bhyve-only flags to those parsers (``shared=False``) or, for
``python -m harness.bhyve``, also the flags the shared verbs already own
(``shared=True``). Like the verb modules, this imports only the standard
library at module level, so it runs on a FreeBSD host with just numpy.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import Any

from harness.cli import options

log = logging.getLogger(__name__)


def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    v = getattr(args, name, None)
    return default if v is None else v


def _prefix(text: str | None, flag: str) -> tuple[str, ...]:
    from sim.errors import ConfigError

    try:
        return tuple(shlex.split(text or ""))
    except ValueError as e:
        raise ConfigError(f"{flag} {text!r}: {e}") from None


# --------------------------------------------------------------------------- trace collect
def add_collect_arguments(parser: argparse.ArgumentParser, *, shared: bool = False) -> None:
    """Add the bhyve flags of ``miglab trace collect``; ``shared=True`` adds --interval/--seconds/-o too."""
    g = parser.add_argument_group("bhyve (FreeBSD host, --hypervisor bhyve)")
    g.add_argument("--vm", metavar="NAME", help="bhyve VM name (/dev/vmm/NAME)")
    g.add_argument("--vmm-dev", metavar="PATH", help="guest memory device (default /dev/vmm/NAME)")
    g.add_argument("--method", choices=("content-diff", "dirty-log", "dirty-page-list"), default="content-diff",
                   help="how dirty pages are found (default content-diff). QEMU: content-diff (pages whose content "
                        "changed between RAM snapshots) or dirty-log (every write QEMU's dirty log sees, from its "
                        "own pre-copy stream to a local sink; scales to big guests). bhyve: content-diff (stock "
                        "FreeBSD) or dirty-page-list (the UPB kernel's VM_GET_DIRTY_PAGE_LIST)")
    g.add_argument("--read", choices=("mmap", "pread"), default="mmap",
                   help="how content-diff reads guest memory (default mmap)")
    g.add_argument("--compare", choices=("copy", "hash"), default="copy",
                   help="content-diff against a full copy (exact) or 8-byte page digests (default copy)")
    g.add_argument("--guest-memory", metavar="SIZE",
                   help="guest memory size: the layout when VM_MMAP_GETNEXT is unavailable, else a cross-check")
    g.add_argument("--workload-desc", metavar="TEXT", default="",
                   help="what the guest runs, stored in the trace metadata")
    if shared:
        parser.add_argument("--interval", default="0.5s", metavar=options.TIME, help="scan interval (default 0.5s)")
        parser.add_argument("--seconds", default="60s", metavar=options.TIME, help="collection length (default 60s)")
        options.add_output(parser, "trace file to write (.npz)", required=True)
        options.add_quiet(parser, "--no-progress")


def collect_main(args: argparse.Namespace) -> int:
    """``miglab trace collect --hypervisor bhyve``: collect a trace on this FreeBSD host."""
    from harness.bhyve.collect import CollectConfig, collect
    from sim.errors import ConfigError
    from sim.units import format_bytes, parse_duration, parse_size

    vm = _get(args, "vm")
    if not vm:
        raise ConfigError("--vm NAME is required with --hypervisor bhyve")
    if _get(args, "method") == "dirty-log":
        raise ConfigError("--method dirty-log: QEMU only; bhyve has content-diff and dirty-page-list")
    output = _get(args, "output")
    if not output:
        raise ConfigError("-o/--output TRACE.npz is required")
    gm = _get(args, "guest_memory")
    workload = _get(args, "workload_desc", "") or str(_get(args, "workload", "") or "")
    cfg = CollectConfig(
        vm=vm, output=str(output), interval_s=parse_duration(_get(args, "interval", "0.5s")),
        seconds=parse_duration(_get(args, "seconds", "60s")), method=_get(args, "method", "content-diff"),
        device=_get(args, "vmm_dev"), read=_get(args, "read", "mmap"), compare=_get(args, "compare", "copy"),
        guest_memory_bytes=parse_size(gm) if gm else None, workload=workload,
        progress=not (_get(args, "no_progress", False) or _get(args, "quiet", False)),
    )
    tr, sha = collect(cfg)
    note = "" if tr.meta.get("complete", True) else " (interrupted)"
    print(f"wrote {output}: {tr.n_intervals} intervals{note}, {format_bytes(tr.memory_bytes)} guest, "
          f"{int(tr.counts.sum())} page changes, sha256 {sha[:16]}")
    return 0


# --------------------------------------------------------------------------- migrate
def add_migrate_arguments(parser: argparse.ArgumentParser, *, shared: bool = False) -> None:
    """Add the bhyve flags of ``miglab migrate``; ``shared=True`` adds -o/--timeout/--memory/--workload too."""
    from harness.bhyve.vmmdev import DEFAULT_MIGRATION_PORT

    g = parser.add_argument_group("bhyve (two FreeBSD hosts with the UPB migration patch, --hypervisor bhyve)")
    g.add_argument("--vm", metavar="NAME", help="bhyve VM name, the same on both hosts")
    g.add_argument("--src-prefix", metavar="CMD", default="",
                   help='how to run commands on the source, e.g. "ssh root@hostA" (default: locally)')
    g.add_argument("--dst-prefix", metavar="CMD", default="",
                   help='how to run commands on the destination, e.g. "ssh root@hostB"')
    g.add_argument("--probe-prefix", metavar="CMD", default="", help="where the downtime probe runs (default: here)")
    g.add_argument("--src-ip", metavar="IPv4", help="source address given to the destination's bhyve -R")
    g.add_argument("--dst-ip", metavar="IPv4", help="destination address given to bhyvectl --migrate-live")
    g.add_argument("--port", type=int, default=DEFAULT_MIGRATION_PORT, metavar=options.N,
                   help=f"migration TCP port (default {DEFAULT_MIGRATION_PORT}, the patch's default)")
    g.add_argument("--warm", action="store_true", help="warm migration (bhyvectl --migrate=): guest paused throughout")
    g.add_argument("--probe", default="none", metavar="SPEC",
                   help='downtime probe: none, "ping:GUEST_IP[,interval=10ms]" or "lines:COMMAND" '
                        "(e.g. lines:cu -l /dev/nmdm0B)")
    g.add_argument("--bhyve", default="bhyve", metavar="PROG", help="bhyve binary on the destination (default bhyve)")
    g.add_argument("--bhyvectl", default="bhyvectl", metavar="PROG", help="bhyvectl binary on both hosts (default bhyvectl)")
    g.add_argument("--bhyve-args", default="", metavar="ARGS",
                   help='destination VM options, identical to the source\'s, e.g. "-c 2 -m 4G -S -s 0,hostbridge '
                        '-s 31,lpc -l com1,/dev/nmdm0A"')
    g.add_argument("--src-iface", default="", metavar="IFACE", help="source interface for the byte counter (netstat -b -I)")
    g.add_argument("--dst-iface", default="", metavar="IFACE", help="destination interface for the byte counter")
    g.add_argument("--vmm-dir", default="/dev/vmm", help=argparse.SUPPRESS)
    g.add_argument("--dst-ready-timeout", default="30s", metavar=options.TIME, help="wait this long for bhyve -R to listen (default 30s)")
    g.add_argument("--poll-interval", default="50ms", metavar=options.TIME, help="completion polling interval (default 50ms)")
    g.add_argument("--keep-destination", action="store_true",
                   help="leave the migrated VM running on the destination (default: destroy it after measuring)")
    g.add_argument("--validation-trace", metavar=options.FILE, default="",
                   help="the trace collected of this workload before migrating (harness.bhyve collect): marks the "
                        "record as a validation run that `miglab calibrate-host` fits bhyve's constants on "
                        "(needs -o or --campaign)")
    g.add_argument("--repetition", type=int, default=1, metavar=options.N,
                   help="repetition number of this scenario, with --validation-trace (default 1)")
    if shared:
        options.add_output(parser, "write the run record (JSON) here")
        parser.add_argument("--timeout", default="600s", metavar=options.TIME,
                            help="give up after this long (default 600s)")
        parser.add_argument("--memory", metavar=options.SIZE, help="guest memory size, for the scenario in the record")
        parser.add_argument("--workload", default="", metavar="TEXT", help="what the guest runs, for the record")
        parser.add_argument("--scenario", metavar=options.FILE, help="scenario TOML to start the record's scenario from")
        parser.add_argument("--name", metavar="NAME", help="scenario name (default: the VM name)")
        parser.add_argument("--campaign", metavar="NAME",
                            help="write results/<campaign>/<name>.json when -o is not given")


def migrate_config(args: argparse.Namespace):
    """The bhyve runner's settings from the flags (one-line ConfigError when one is missing or bad)."""
    from harness.bhyve.runner import MigrateConfig, parse_probe
    from harness.bhyve.vmmdev import DEFAULT_MIGRATION_PORT
    from sim.errors import ConfigError
    from sim.units import parse_duration

    vm = _get(args, "vm")
    if not vm:
        raise ConfigError("--vm NAME is required with --hypervisor bhyve")
    if _get(args, "method") == "dirty-log":
        raise ConfigError("--method dirty-log: QEMU only; bhyve has content-diff and dirty-page-list")
    for flag in ("src_ip", "dst_ip"):
        if not _get(args, flag):
            raise ConfigError(f"--{flag.replace('_', '-')} is required with --hypervisor bhyve")
    return MigrateConfig(
        vm=vm, src_ip=args.src_ip, dst_ip=args.dst_ip, port=int(_get(args, "port", DEFAULT_MIGRATION_PORT)),
        warm=bool(_get(args, "warm", False)),
        src_prefix=_prefix(_get(args, "src_prefix"), "--src-prefix"),
        dst_prefix=_prefix(_get(args, "dst_prefix"), "--dst-prefix"),
        probe_prefix=_prefix(_get(args, "probe_prefix"), "--probe-prefix"),
        bhyve=_get(args, "bhyve", "bhyve"), bhyvectl=_get(args, "bhyvectl", "bhyvectl"),
        bhyve_args=_prefix(_get(args, "bhyve_args"), "--bhyve-args"),
        src_iface=_get(args, "src_iface", ""), dst_iface=_get(args, "dst_iface", ""),
        vmm_dir=_get(args, "vmm_dir", "/dev/vmm"),
        timeout_s=parse_duration(_get(args, "timeout", "600s")),
        dst_ready_timeout_s=parse_duration(_get(args, "dst_ready_timeout", "30s")),
        poll_interval_s=parse_duration(_get(args, "poll_interval", "50ms")),
        probe=parse_probe(str(_get(args, "probe", "none"))),
        keep_destination=bool(_get(args, "keep_destination", False)),
    )


def migrate_scenario(args: argparse.Namespace, warm: bool):
    """The Scenario this run measures, with the bhyve strategy.

    Starts from ``--scenario FILE`` when given (the QEMU verb's flag), applies
    ``--memory`` / ``--workload`` / ``--bandwidth`` / ``--rtt`` / ``--name``
    when present. Link and host fields the user did not give stay defaults:
    the real network is whatever connects the two hosts.
    """
    import dataclasses

    from sim.scenario import Scenario, Workload
    from sim.units import parse_bandwidth, parse_duration, parse_size

    path = _get(args, "scenario")
    sc = Scenario.from_toml(path) if path else Scenario()
    wl = sc.workload
    if _get(args, "memory"):
        wl = dataclasses.replace(wl, memory_bytes=parse_size(args.memory))
    if _get(args, "workload"):
        wl = dataclasses.replace(wl, spec=str(args.workload))
    link = sc.link
    if _get(args, "bandwidth"):
        link = dataclasses.replace(link, bandwidth_Bps=parse_bandwidth(args.bandwidth))
    if _get(args, "rtt"):
        link = dataclasses.replace(link, rtt_s=parse_duration(args.rtt))
    st = dataclasses.replace(sc.strategy, kind="stopcopy" if warm else "precopy", stop_rule="bhyve",
                             bhyve_rounds=4)
    host = sc.host
    if hasattr(host, "hypervisor"):  # the engine's bhyve copy mechanics (chunks, per-page sends, wired only)
        host = dataclasses.replace(host, hypervisor="bhyve")
    name = _get(args, "name") or sc.name or str(_get(args, "vm", ""))
    return dataclasses.replace(sc, workload=Workload(**dataclasses.asdict(wl)), link=link, host=host, strategy=st,
                               name=name)


def validation_record(rec: Any, scenario: Any, args: argparse.Namespace, out: str) -> Any:
    """The record marked as a validation run (``options["validation"]``, the shape `miglab validate` writes).

    The trace path is stored relative to the record, as `miglab validate` does, so a
    campaign directory can be copied off the FreeBSD host with its traces.
    """
    import dataclasses
    import os

    trace = os.path.relpath(os.path.abspath(args.validation_trace), os.path.dirname(os.path.abspath(out)))
    meta = {"campaign": _get(args, "campaign") or "bhyve", "scenario": scenario.name, "repetition": args.repetition,
            "workload": scenario.workload.spec, "link": "as run", "strategy": scenario.strategy.stop_rule,
            "trace": trace}
    return dataclasses.replace(rec, options={**rec.options, "validation": meta})


def migrate_main(args: argparse.Namespace) -> int:
    """``miglab migrate --hypervisor bhyve``: run and measure one migration; 0 if it completed, 1 if not."""
    from harness.bhyve.runner import run_migration
    from harness.record import record_path
    from sim.units import format_bytes

    cfg = migrate_config(args)
    scenario = migrate_scenario(args, cfg.warm)
    if _get(args, "validation_trace"):
        import os

        from sim.errors import ConfigError

        if not os.path.isfile(args.validation_trace):
            raise ConfigError(f"--validation-trace {args.validation_trace}: no such file")
        if not (_get(args, "output") or _get(args, "campaign")):
            raise ConfigError("--validation-trace needs -o or --campaign (the trace is stored relative to the record)")
        if args.repetition < 1:
            raise ConfigError("--repetition must be at least 1")
    rec = run_migration(cfg, scenario=scenario)
    out = _get(args, "output")
    if not out and _get(args, "campaign"):
        out = record_path(args.campaign, scenario.name or cfg.vm)
    if out and _get(args, "validation_trace"):
        rec = validation_record(rec, scenario, args, out)
    if out:
        rec.save(out)
    s = rec.stats
    where = f" -> {out}" if out else ""
    if rec.completed:
        dt, b = s.downtime_s, s.bytes_sent
        print(f"{cfg.vm}: completed in {s.total_time_s:.3f} s, downtime "
              f"{'n/a' if dt is None else f'{dt * 1000:.0f} ms'}, "
              f"{'bytes n/a' if b is None else format_bytes(b)}{where}")
        return 0
    print(f"{cfg.vm}: {rec.outcome}{where}")
    return 1
