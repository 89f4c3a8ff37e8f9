"""The real migration runner: two QEMU guests in two namespaces, a shaped link, QMP.

:func:`run_migration` takes the same :class:`sim.scenario.Scenario` the
simulator takes and returns a :class:`harness.record.RunRecord`::

    from harness.migrate import MigrateOptions, run_migration
    record = run_migration(scenario, MigrateOptions(timeout_s=60))
    print(record.outcome, record.stats.downtime_s)

What happens:

1. A :class:`harness.link.ShapedLink` joins ``miglab-src-<id>`` and
   ``miglab-dst-<id>`` (tbf for rate, a delay forwarder for RTT).
2. The source guest boots in the source namespace and runs the workload; the
   destination QEMU starts in the destination namespace with ``-incoming
   defer``. After a warm-up the workload's steady rate is recorded.
3. Capabilities go to both sides (``postcopy-ram`` for post-copy and hybrid,
   ``auto-converge``, ``xbzrle``, ``multifd``), parameters to the source
   (``downtime-limit``, ``max-bandwidth``, throttle steps, XBZRLE cache,
   multifd channels). The destination listens (``migrate-incoming``) and the
   source migrates through the link.
4. ``query-migrate`` is polled at 20 Hz into the timeline. Post-copy switches
   over at the first poll that sees the migration ``active`` (within ~50 ms
   of the start); hybrid after ``postcopy_after_rounds``
   completed passes (``dirty-sync-count`` counts the sync that *starts* each
   pass, so the switch happens when it reaches ``N + 1``).
5. A pre-copy that has not finished at ``strategy.timeout_s`` is cancelled
   (``migrate_cancel``); the source keeps running and the outcome is
   ``cancelled: did not converge``. A post-copy cannot be cancelled without
   losing the guest, so one still running at the timeout is a failure.
6. After completion the destination console must keep printing workload
   lines (the guest runs on). With ``verify_memory`` the destination starts
   with ``-S`` (it stays paused after the switchover; post-copy then completes
   by background push alone, without faults), both RAM files are compared
   page by page, and only then is the destination resumed and watched. Any
   differing page fails the run (``failed: memory differs ...``).
   ``verify_memory=None`` (the default) verifies what it can verify cheaply
   without changing what is measured (:func:`verify_memory_by_default`):
   pre-copy runs of guests up to ``VERIFY_MEMORY_MAX_BYTES``.

``max-bandwidth``: QEMU's default is 128 MiB/s, which would silently cap fast
links. It is set to ``link.migration_cap_Bps`` when the scenario has one,
else to the link rate itself; the stream's payload never reaches the wire
rate (TCP/IP framing takes ~4.5 % at MTU 1500), so then the link, not QEMU,
is the bottleneck, as the simulator assumes. The final stop-and-copy is not
rate-limited by QEMU in either case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.guest import GuestImage, GuestWorkload, parse_workload
from harness.link import LinkHealth, ShapedLink, cleanup_stale
from harness.preflight import check_migration
from harness.qmp import QMPError
from harness.record import (
    OUTCOME_COMPLETED,
    OUTCOME_INTERRUPTED,
    OUTCOME_LINK_LOST,
    OUTCOME_NOT_CONVERGED,
    HostInfo,
    MemoryCheck,
    MigrationStats,
    Poll,
    RunRecord,
    WorkloadRate,
    utc_now,
)
from harness.roundcap import RoundCap
from harness.vm import VM, Console, VMConfig, find_qemu, guest_memory_problem
from sim.errors import ConfigError, MiglabError
from sim.scenario import Scenario, Strategy
from sim.units import (
    PAGE_SIZE_BYTES,
    format_bytes,
    format_duration,
)

log = logging.getLogger(__name__)

RUNNER_STRATEGIES: tuple[str, ...] = ("precopy", "postcopy", "hybrid")
#: Stop rules QEMU can run: its own threshold, and bhyve's fixed rounds through a round cap (harness.roundcap).
RUNNER_STOP_RULES: tuple[str, ...] = ("qemu", "bhyve")
#: The live downtime-limit under the ``bhyve`` rule: QEMU's smallest, so that its threshold (bandwidth x limit)
#: practically never ends the live phase before the round cap does -- bhyve has no threshold.
BHYVE_LIVE_DOWNTIME_LIMIT_MS = 1
MIGRATION_PORT = 4444
POLL_INTERVAL_S = 0.05  # 20 Hz, like guestperf's 50 ms
FINAL_STATUSES = ("completed", "failed", "cancelled")
DEST_DEATH_GRACE_S = 5.0
CANCEL_WAIT_S = 10.0
DEST_START_TIMEOUT_S = 15.0
#: Memory verification is on by default for pre-copy guests up to this size. Measured on 512 MiB guests on
#: 2 shared cores: the page-by-page comparison took 0.57-0.79 s alone (load 8.7), and 1.65 s of a 42.5 s
#: run at load 9 (3.9 %; a 22 s run at load 7 spends about 3 %); it grows with guest size as the run does; post-copy and hybrid are verified only on request, because a destination
#: kept paused for the comparison cannot fault pages in (the run would no longer measure post-copy).
VERIFY_MEMORY_MAX_BYTES = 1 << 30
#: No byte moved for this long during a transfer: look at the link (a stall alone is not a link failure).
LINK_STALL_S = 3.0
#: query-migrate states in which bytes should be moving.
TRANSFER_STATES = ("active", "postcopy-active", "postcopy-paused", "device")
_PROGRESS_LINE = re.compile(r"^miglab-(load|redis|idle) t=([0-9.]+)(?:.*?\brate=([0-9.]+))?")


@dataclass(frozen=True)
class MigrateOptions:
    """Runner settings that are not part of the scenario.

    ``on_poll`` is called with every :class:`Poll` and the live
    :class:`MigrationRun` (tests use it to inject faults, e.g. kill the
    destination mid-transfer). ``timeout_s`` overrides
    ``scenario.strategy.timeout_s`` when set.
    """

    timeout_s: float | None = None
    verify_memory: bool | None = None  # None: verify_memory_by_default(scenario)
    warmup_s: float = 2.0
    watch_after_s: float = 3.0
    boot_timeout_s: float = 90.0
    poll_interval_s: float = POLL_INTERVAL_S
    smp: int = 1
    progress: bool = False
    image: GuestImage | None = None
    keep_logs_in: Path | None = None
    #: Extra source-QEMU arguments, e.g. ``("-trace", "enable=migrat*", "-D", "trace.log")`` to log the
    #: migration thread's own decisions (pending estimates, thresholds, bitmap syncs).
    src_extra_args: tuple[str, ...] = ()
    on_poll: Callable[[Poll, MigrationRun], None] | None = field(default=None, compare=False)


class MigrationInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run; everything is torn down and ``record`` (outcome ``interrupted``) says
    what had happened until then. A KeyboardInterrupt, so callers that do not care still stop."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(record.outcome)
        self.record = record


class _InterruptOnce:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt; later ones are noted and ignored, so the teardown
    that the first one starts runs to the end (a second Ctrl-C used to cut it short, leaving RAM files)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str = ""
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.received:
            return
        self.received = signal.Signals(signum).name
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_InterruptOnce]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for signum, h in self._previous.items():
                signal.signal(signum, h)


@dataclass
class MigrationRun:
    """The live pieces of one run, handed to ``on_poll`` hooks."""

    link: ShapedLink
    src: VM
    dst: VM
    t0: float = 0.0


@dataclass
class _Rates:
    """Workload progress lines seen on one console, with the host time they were read."""

    samples: list[tuple[float, float, float | None]] = field(default_factory=list)  # (host_t, guest_t, rate)

    def feed(self, console: Console) -> int:
        now = time.monotonic()
        n = 0
        for line in console.new_lines():
            m = _PROGRESS_LINE.match(line.strip())
            if m:
                self.samples.append((now, float(m.group(2)), float(m.group(3)) if m.group(3) else None))
                n += 1
        return n

    def mean(self, t_from: float, t_to: float = float("inf")) -> float | None:
        r = [rate for host_t, _, rate in self.samples if t_from <= host_t < t_to and rate is not None]
        return float(np.mean(r)) if r else None

    def interval(self) -> float:
        """Median host time between progress lines seen before (1 s if too few)."""
        t = [h for h, _, _ in self.samples]
        return float(np.median(np.diff(t))) if len(t) >= 3 else 1.0

    def since(self, t_from: float) -> list[tuple[float, float, float | None]]:
        return [s for s in self.samples if s[0] >= t_from]


def validate_for_qemu(scenario: Scenario) -> GuestWorkload:
    """Check that QEMU can run this scenario; return the guest workload. Raises ConfigError."""
    s = scenario.strategy
    if s.kind not in RUNNER_STRATEGIES:
        raise ConfigError(f"strategy {s.kind!r} cannot be run on QEMU (choose from {', '.join(RUNNER_STRATEGIES)})")
    w = scenario.workload
    if w.kind != "synthetic":
        raise ConfigError(f"a real guest runs a workload spec, not a {w.kind} ({w.path}); give --workload SPEC")
    if w.page_size_bytes != PAGE_SIZE_BYTES:
        raise ConfigError(f"the QEMU guest has {PAGE_SIZE_BYTES}-byte pages, not {w.page_size_bytes}")
    problem = guest_memory_problem(w.memory_bytes)
    if problem:  # the VM would refuse it only after the link's namespaces exist
        raise ConfigError(f"a QEMU guest's memory {problem}", key="workload.memory_bytes", value=w.memory_bytes)
    if s.multifd_channels < 1:
        raise ConfigError("multifd channels must be at least 1")
    if s.multifd_channels > 1 and s.xbzrle_cache_bytes:
        raise ConfigError("QEMU cannot combine multifd with xbzrle; choose one")
    if s.multifd_channels > 1 and s.kind != "precopy":
        raise ConfigError("QEMU cannot combine multifd with post-copy; use --strategy precopy")
    if s.stop_rule not in RUNNER_STOP_RULES:
        raise ConfigError(f"stop rule {s.stop_rule!r} cannot be run on QEMU (choose from "
                          f"{', '.join(RUNNER_STOP_RULES)}; bhyve's fixed rounds run as a round cap)")
    capped = s.stop_rule == "bhyve" or s.max_rounds is not None
    if capped and s.kind != "precopy":
        raise ConfigError("a round cap (--max-rounds, stop rule bhyve) runs on QEMU with --strategy precopy only")
    if s.max_rounds is not None and s.stop_rule == "qemu" and s.on_round_limit != "switchover":
        raise ConfigError("max_rounds: the QEMU runner applies a round cap as a forced switchover; "
                          "set strategy.on_round_limit = \"switchover\" (miglab migrate --max-rounds does)")
    return parse_workload(w.spec, w.memory_bytes)


def verify_memory_by_default(scenario: Scenario) -> bool:
    """Whether a run verifies memory when not told: pre-copy, guest up to VERIFY_MEMORY_MAX_BYTES, RAM in /dev/shm."""
    from harness.preflight import choose_backing

    mem = scenario.workload.memory_bytes
    return (scenario.strategy.kind == "precopy" and mem <= VERIFY_MEMORY_MAX_BYTES
            and choose_backing(mem) == "shm")


def round_cap_for(strategy: Strategy) -> RoundCap | None:
    """The round cap a scenario asks for, or None.

    ``stop_rule = "bhyve"``: ``bhyve_rounds`` rounds and no threshold (the
    live downtime-limit is :data:`BHYVE_LIVE_DOWNTIME_LIMIT_MS`). Otherwise
    ``max_rounds`` with ``on_round_limit = "switchover"``: QEMU's threshold
    as usual, and a switchover after ``max_rounds`` rounds at the latest. In
    both cases, once ``dirty-sync-count`` shows K rounds ended (K + 1, the
    setup sync included), ``downtime-limit`` is raised to QEMU's maximum and
    QEMU's next iteration check completes -- guestperf's way of ending a
    migration after ``max_iters``.
    """
    if strategy.kind != "precopy":
        return None
    if strategy.stop_rule == "bhyve":
        return RoundCap(int(strategy.bhyve_rounds))
    if strategy.max_rounds is not None and strategy.on_round_limit == "switchover":
        return RoundCap(int(strategy.max_rounds))
    return None


def _capabilities(strategy: Strategy) -> dict[str, bool]:
    # "events": MIGRATION state events, so the destination says when it finished loading (guest_pause)
    return {
        "events": True,
        "postcopy-ram": strategy.kind in ("postcopy", "hybrid"),
        "auto-converge": strategy.auto_converge,
        "xbzrle": strategy.xbzrle_cache_bytes > 0,
        "multifd": strategy.multifd_channels > 1,
    }


def migration_parameters(scenario: Scenario) -> dict[str, Any]:
    """The ``migrate-set-parameters`` arguments for a scenario (QMP names and units)."""
    s, link = scenario.strategy, scenario.link
    cap = link.migration_cap_Bps if link.migration_cap_Bps is not None else link.bandwidth_Bps
    limit_ms = BHYVE_LIVE_DOWNTIME_LIMIT_MS if s.stop_rule == "bhyve" else max(1, int(round(s.downtime_limit_s * 1000)))
    params: dict[str, Any] = {
        "downtime-limit": limit_ms,
        "max-bandwidth": int(cap),
    }
    if s.auto_converge:
        params["cpu-throttle-initial"] = int(max(1, min(99, s.ac_initial_pct)))
        params["cpu-throttle-increment"] = int(max(1, min(99, s.ac_increment_pct)))
        params["max-cpu-throttle"] = int(max(1, min(99, s.ac_max_pct)))
    if s.xbzrle_cache_bytes:
        params["xbzrle-cache-size"] = int(s.xbzrle_cache_bytes)
    if s.multifd_channels > 1:
        params["multifd-channels"] = int(s.multifd_channels)
    return params


def compare_memory(src_path: Path, dst_path: Path, page_size: int = PAGE_SIZE_BYTES,
                   chunk_bytes: int = 64 << 20) -> MemoryCheck:
    """Compare two RAM files page by page (numpy, in chunks); both guests must be stopped."""
    a = np.memmap(src_path, dtype=np.uint64, mode="r")
    b = np.memmap(dst_path, dtype=np.uint64, mode="r")
    if a.size != b.size:
        raise MiglabError(f"RAM files differ in size: {src_path} {a.nbytes} B, {dst_path} {b.nbytes} B")
    words = page_size // 8
    n_pages = a.size // words
    step = max(1, chunk_bytes // page_size) * words
    differing: list[np.ndarray] = []
    count = nonzero = 0
    for lo in range(0, n_pages * words, step):
        hi = min(lo + step, n_pages * words)
        pa = a[lo:hi].reshape(-1, words)
        diff = np.any(pa != b[lo:hi].reshape(-1, words), axis=1)
        nonzero += int(np.count_nonzero(np.any(pa != 0, axis=1)))
        idx = np.flatnonzero(diff) + lo // words
        count += idx.size
        if sum(d.size for d in differing) < 32:
            differing.append(idx[:32])
    first = tuple(int(i) for i in np.concatenate(differing)[:32]) if differing else ()
    del a, b
    return MemoryCheck(pages_compared=int(n_pages), pages_differing=int(count), first_differing=first,
                       nonzero_pages=nonzero)


def _progress_bar(enabled: bool) -> Any:
    """Bytes sent so far (no total: zero pages are skipped, so RAM size is not a bound)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="migrating", leave=False,
                file=sys.stderr)


def run_migration(scenario: Scenario, options: MigrateOptions | None = None) -> RunRecord:
    """Run ``scenario`` as a real QEMU migration over a shaped link and return its record.

    The run never raises for a migration that goes wrong (that is the
    outcome); it raises :class:`sim.errors.ConfigError` for a scenario QEMU
    cannot run and :class:`sim.errors.MiglabError` when the environment
    cannot host a run at all (no QEMU, no root, the source does not boot).
    Every process, namespace and RAM file is gone when it returns or raises,
    including on KeyboardInterrupt.

    Phases: start and warm up (:func:`_start_guests`, :func:`_warm_up`),
    configure (:func:`_configure`), poll until the end (:func:`_poll_loop`),
    classify (:func:`classify_outcome`, pure), check that the guest runs on
    (:func:`_check_guest`).
    """
    opts = options or MigrateOptions()
    if opts.smp < 1:
        raise ConfigError(f"a guest needs at least 1 vCPU, not {opts.smp}", key="smp", value=opts.smp)
    workload = validate_for_qemu(scenario)
    verify_auto = opts.verify_memory is None
    if verify_auto:
        opts = dataclasses.replace(opts, verify_memory=verify_memory_by_default(scenario))
    check_migration(scenario.workload.memory_bytes, workload, verify_memory=bool(opts.verify_memory))  # before booting
    timeout_s = opts.timeout_s if opts.timeout_s is not None else scenario.strategy.timeout_s
    if timeout_s is None:  # a scenario without a cancel: a real run still needs a guard (the former default)
        timeout_s = 600.0
    qemu = find_qemu()
    host = HostInfo.collect(qemu.path)
    cleanup_stale()
    started = utc_now()
    wall0 = time.monotonic()
    params = migration_parameters(scenario)
    caps = _capabilities(scenario.strategy)
    options_record = _options_record(opts, timeout_s, caps, params, workload, qemu.version_line)
    options_record["verify_memory_default"] = verify_auto
    cap = round_cap_for(scenario.strategy)
    events: list[tuple[float, str]] = []
    timeline: list[Poll] = []
    src_rates, dst_rates = _Rates(), _Rates()

    pause: tuple[float, str] | None = None
    live: dict[str, Any] = {}  # what the poll loop has seen so far, for a record of an interrupted run
    guard = _InterruptOnce()
    with guard.installed():
        try:
            with contextlib.ExitStack() as stack:
                run = _start_guests(stack, scenario, workload, opts, options_record)
                live["run"] = run
                before = live["before"] = _warm_up(run.src, src_rates, opts)
                target = _configure(run, caps, params)
                end = _poll_loop(run, target, scenario.strategy, opts, timeout_s, timeline, events,
                                 (src_rates, dst_rates), cap, live)
                if cap is not None:
                    options_record["round_cap"] = _round_cap_record(cap, params, events)
                t_start, t_end = run.t0, time.monotonic()
                if end.status != "completed" and not end.dst_exit and not run.dst.is_running():
                    # The source often notices the broken stream before a poll sees the destination gone.
                    end = dataclasses.replace(end, dst_exit=_dst_exit(run.dst))
                    events.append((round(t_end - t_start, 4), end.dst_exit))
                check = _check_guest(run, opts, classify_outcome(end), src_rates, dst_rates, events)
                # A post-copy destination held paused (-S) never runs the guest during post-copy: no pause to tell.
                held = bool(opts.verify_memory)
                if not (held and scenario.strategy.kind != "precopy"):
                    pause = guest_pause(_all_events(run.src), _all_events(run.dst), dst_held=held)
                if pause is not None:
                    options_record["guest_pause"] = {"end": pause[1], "start": "source STOP event"}
                rate = _workload_rate(workload, before, src_rates, dst_rates, check.guest_side, t_start, t_end)
                # the stack closes: QEMU processes, RAM files, run directories, namespaces, forwarders
        except KeyboardInterrupt:
            # Everything is torn down (the stack unwound with further signals ignored); say what happened.
            run_ = live.get("run")
            t_rel = round(time.monotonic() - run_.t0, 4) if run_ is not None and run_.t0 else 0.0
            events.append((t_rel, f"interrupted by {guard.received or 'KeyboardInterrupt'}; torn down"))
            if cap is not None:
                options_record["round_cap"] = _round_cap_record(cap, params, events)
            last = live.get("last_known") or {}
            stats = _stats(last, timeline) if last else MigrationStats()
            record = RunRecord(scenario=scenario, outcome=OUTCOME_INTERRUPTED, hypervisor="qemu", host=host,
                               timeline=tuple(timeline), stats=stats, raw_query_migrate=live.get("final") or {},
                               workload_rate=WorkloadRate(before=live.get("before")), guest_continues=None,
                               events=tuple(events), options=options_record, started_utc=started,
                               wall_time_s=round(time.monotonic() - wall0, 3))
            raise MigrationInterrupted(record) from None

    final = end.final
    # QEMU leaves the RAM figures out of a cancelled or failed migration's answer: keep the last ones it gave.
    source = final if final.get("ram") else end.last_known
    stats = _stats(source, timeline) if source else MigrationStats()
    stats = _fix_postcopy_downtime(stats, timeline, dst_rates, t_start, t_end, events)
    if pause is not None:
        stats = dataclasses.replace(stats, guest_pause_s=round(pause[0], 6))
    return RunRecord(scenario=scenario, outcome=check.outcome, hypervisor="qemu", host=host, timeline=tuple(timeline),
                     stats=stats, raw_query_migrate=final, workload_rate=rate, guest_continues=check.guest_continues,
                     guest_side=check.guest_side, memory_check=check.memory_check, events=tuple(events),
                     options=options_record, started_utc=started, wall_time_s=round(time.monotonic() - wall0, 3))


def _event_time(e: dict[str, Any]) -> float | None:
    ts = e.get("timestamp") or {}
    if "seconds" not in ts:
        return None
    return float(ts["seconds"]) + float(ts.get("microseconds", 0)) * 1e-6


def _all_events(vm: VM) -> list[dict[str, Any]]:
    """Every QMP event ``vm`` sent so far (one more command first, so the last ones are read off the socket)."""
    try:
        if vm.is_running():
            vm.qmp.status()
        return vm.qmp.events()
    except MiglabError:
        return []


def guest_pause(src_events: Sequence[dict[str, Any]], dst_events: Sequence[dict[str, Any]],
                dst_held: bool = False) -> tuple[float, str] | None:
    """The pause the guest sees, in seconds, and what ended it; None when it cannot be told.

    From the source's last ``STOP`` event (the guest stops for the switchover) to the destination's first
    ``RESUME`` after it (the guest runs again there). Both QEMUs stamp events with the host's real-time clock
    (``g_get_real_time``), and both run on this host, so the two stamps are on one clock. A destination kept
    paused for memory verification (``-S``, ``dst_held``) never resumes by itself: then the end is its ``MIGRATION``
    ``completed`` event, which QEMU sends right where it would have resumed the guest
    (``process_incoming_migration_bh``).
    """
    stops = [t for e in src_events if e.get("event") == "STOP" and (t := _event_time(e)) is not None]
    if not stops:
        return None
    t_stop = stops[-1]
    resumes = [t for e in dst_events if e.get("event") == "RESUME" and (t := _event_time(e)) is not None
               and t >= t_stop]
    done = [t for e in dst_events if e.get("event") == "MIGRATION" and (e.get("data") or {}).get("status")
            == "completed" and (t := _event_time(e)) is not None and t >= t_stop]
    if dst_held:
        if not done:
            return None
        return done[0] - t_stop, "destination MIGRATION completed event (kept paused: -S)"
    if resumes:
        return resumes[0] - t_stop, "destination RESUME event"
    return None


def _stats(info: dict[str, Any], timeline: Sequence[Poll]) -> MigrationStats:
    """Statistics from a query-migrate answer, with the highest throttle and last expected downtime seen."""
    max_throttle = max((p.throttle_pct for p in timeline), default=0.0)
    last_expected = next((p.expected_downtime_s for p in reversed(timeline) if p.expected_downtime_s is not None),
                         None)
    return MigrationStats.from_query_migrate(info, max_throttle, last_expected)


def _options_record(opts: MigrateOptions, timeout_s: float, caps: dict[str, bool], params: dict[str, Any],
                    workload: GuestWorkload, qemu_version: str) -> dict[str, Any]:
    """The runner settings as the record keeps them (``RunRecord.options``)."""
    record: dict[str, Any] = {
        "timeout_s": timeout_s, "verify_memory": opts.verify_memory, "warmup_s": opts.warmup_s,
        "poll_interval_s": opts.poll_interval_s, "smp": opts.smp, "capabilities": caps, "parameters": params,
        "workload_argv": list(workload.argv), "qemu": qemu_version,
    }
    if opts.src_extra_args:
        record["src_extra_args"] = list(opts.src_extra_args)
    return record


# -- phase 1: boot and warm up ------------------------------------------------------
def _start_guests(stack: contextlib.ExitStack[Any], scenario: Scenario, workload: GuestWorkload,
                  opts: MigrateOptions, options_record: dict[str, Any]) -> MigrationRun:
    """The shaped link, the source guest (booted, workload running) and the waiting destination."""
    link = stack.enter_context(ShapedLink(scenario.link.bandwidth_Bps, scenario.link.rtt_s))
    options_record["link"] = {"id": link.id, "tbf": link.tbf_args(), "delay_each_way_s": link.rtt_s / 2,
                              "delay": "user-space forwarder" if link.rtt_s > 0 else "none"}
    common: dict[str, Any] = dict(memory_bytes=scenario.workload.memory_bytes, workload=workload, smp=opts.smp,
                  keep_logs_in=opts.keep_logs_in)
    src = stack.enter_context(VM(VMConfig(name="src", netns=link.src_ns, extra_args=opts.src_extra_args,
                                          **common), opts.image))
    dst = stack.enter_context(VM(VMConfig(name="dst", netns=link.dst_ns, incoming=True,
                                          extra_args=("-S",) if opts.verify_memory else (), **common),
                                 src.image))
    assert src.console is not None and dst.console is not None
    src.wait_for_workload(opts.boot_timeout_s)
    return MigrationRun(link, src, dst)


def _warm_up(src: VM, src_rates: _Rates, opts: MigrateOptions) -> float | None:
    """Let the workload run for ``warmup_s``, and at least until one progress line measured its steady rate."""
    assert src.console is not None
    src_rates.feed(src.console)
    t_warm = time.monotonic()
    while (time.monotonic() - t_warm < opts.warmup_s
           or (not src_rates.since(t_warm) and time.monotonic() - t_warm < opts.warmup_s + 3.0)):
        time.sleep(0.1)
        src_rates.feed(src.console)
    return src_rates.mean(t_warm)


# -- phase 2: configure -------------------------------------------------------------
def _configure(run: MigrationRun, caps: dict[str, bool], params: dict[str, Any]) -> str:
    """Capabilities on both sides, parameters on the source, the destination listening; the source's URI."""
    src, dst, link = run.src, run.dst, run.link
    for vm in (src, dst):
        vm.qmp.migrate_set_capabilities(caps)
    src.qmp.migrate_set_parameters(params)
    if caps["multifd"]:
        dst.qmp.migrate_set_parameters({"multifd-channels": params["multifd-channels"]})
    dst.qmp.migrate_incoming(f"tcp:{link.dst_ip}:{MIGRATION_PORT}")
    host_addr, port = link.forward(MIGRATION_PORT)
    return f"tcp:{host_addr}:{port}"


# -- phase 3: the poll loop ---------------------------------------------------------
#: Why the poll loop stopped.
STOP_FINAL = "final"  # QEMU reported a final status
STOP_POSTCOPY_TIMEOUT = "postcopy-timeout"  # post-copy still running at the timeout (it cannot be cancelled)
STOP_CANCEL_STUCK = "cancel-stuck"  # still not final CANCEL_WAIT_S after migrate_cancel
STOP_SOURCE_LOST = "source-lost"  # the source stopped answering QMP
STOP_LINK_LOST = "link-lost"  # the link died during post-copy (which cannot be cancelled)


@dataclass(frozen=True)
class LoopEnd:
    """How the poll loop ended: everything :func:`classify_outcome` needs, and nothing live."""

    stop: str
    status: str  # the last status seen
    final: dict[str, Any] = field(default_factory=dict)  # the last query-migrate answer ({} if the source is lost)
    timeout_s: float = 0.0
    timed_out: bool = False  # we cancelled at our timeout (not because the destination died)
    dst_exit: str = ""  # "destination QEMU exited (status N)" once seen
    source_error: str = ""  # for STOP_SOURCE_LOST: what the source's QMP said (and its exit status)
    link_lost: str = ""  # "link lost (no byte moved for N s; evidence)" once the link was found dead
    last_known: dict[str, Any] = field(default_factory=dict)  # the last answer that had RAM figures


@dataclass
class _LoopState:
    """What the poll loop has seen and done so far."""

    status: str = ""
    postcopy_requested: bool = False
    cancelled: bool = False  # migrate_cancel sent: at our timeout, or after the destination died
    timed_out: bool = False
    cancelled_at: float | None = None
    dst_dead_since: float | None = None
    dst_exit: str = ""
    progress_bytes: int = -1
    progress_t: float | None = None  # when transferred bytes last grew
    stall_health: LinkHealth | None = None  # the link's counters early in the current stall
    link_lost: str = ""
    last_known: dict[str, Any] = field(default_factory=dict)

    def end(self, stop: str, final: dict[str, Any], timeout_s: float, source_error: str = "") -> LoopEnd:
        return LoopEnd(stop, self.status, final, timeout_s, self.timed_out, self.dst_exit, source_error,
                       self.link_lost, self.last_known)


def _poll_loop(run: MigrationRun, target: str, strategy: Strategy, opts: MigrateOptions, timeout_s: float,
               timeline: list[Poll], events: list[tuple[float, str]], rates: tuple[_Rates, _Rates],
               cap: RoundCap | None = None, live: dict[str, Any] | None = None) -> LoopEnd:
    """Start the migration and poll ``query-migrate`` until it ends, switching to post-copy, applying the
    round cap and cancelling."""
    src = run.src
    st = _LoopState()
    if live is not None:
        live["last_known"] = st.last_known  # the same dict, kept up to date
    bar = _progress_bar(opts.progress)
    try:
        t_start = run.t0 = time.monotonic()
        src.qmp.migrate(target)
        events.append((0.0, f"migrate {target}"))
        next_poll = t_start
        while True:
            next_poll += opts.poll_interval_s
            info = src.qmp.query_migrate()
            now = time.monotonic()
            if info.get("ram"):
                st.last_known.clear()
                st.last_known.update(info)
            if live is not None:
                live["final"] = info
            poll = Poll.from_query_migrate(now - t_start, info)
            _record_poll(run, poll, st, timeline, events, rates, bar)
            if st.status in FINAL_STATUSES:
                return st.end(STOP_FINAL, info, timeout_s)
            if opts.on_poll is not None:
                opts.on_poll(poll, run)
            if cap is not None:
                _apply_round_cap(src, cap, info, poll, events)
            _maybe_start_postcopy(src, strategy, poll, st, events)
            _watch_destination(run, now, poll, st, events)
            stop = _watch_link(run, now, poll, st, events)
            if stop:
                return st.end(stop, info, timeout_s)
            stop = _enforce_timeout(src, now - t_start, timeout_s, poll, st, events)
            if stop:
                return st.end(stop, info, timeout_s)
            time.sleep(max(0.0, next_poll - time.monotonic()))
    except QMPError as e:
        # The source itself went away (or stopped answering): the run failed, and says why.
        code = src.proc.returncode if src.proc else "?"
        src_exit = "" if src.is_running() else f"source QEMU exited (status {code}): "
        end = st.end(STOP_SOURCE_LOST, {}, timeout_s, f"{src_exit}{e}")
        events.append((round(time.monotonic() - run.t0, 4), classify_outcome(end)))
        return end
    finally:
        if bar is not None:
            bar.close()


def _record_poll(run: MigrationRun, poll: Poll, st: _LoopState, timeline: list[Poll],
                 events: list[tuple[float, str]], rates: tuple[_Rates, _Rates], bar: Any) -> None:
    """Keep the poll, read both consoles, note a status change, move the progress bar."""
    assert run.src.console is not None and run.dst.console is not None
    timeline.append(poll)
    rates[0].feed(run.src.console)
    rates[1].feed(run.dst.console)
    if poll.status != st.status:
        events.append((poll.t_s, f"status {poll.status}"))
        st.status = poll.status
    if bar is not None:
        bar.n = poll.transferred_bytes
        bar.set_postfix_str(f"{st.status} pass {max(poll.dirty_sync_count, 1)}, "
                            f"{format_bytes(poll.remaining_bytes)} left in pass, {poll.mbps:.0f} Mbit/s",
                            refresh=True)


def _maybe_start_postcopy(src: VM, strategy: Strategy, poll: Poll, st: _LoopState,
                          events: list[tuple[float, str]]) -> None:
    """Post-copy: at the first poll that sees the migration active; hybrid: after the configured passes."""
    if st.postcopy_requested or st.status != "active":
        return
    if strategy.kind == "postcopy":
        src.qmp.migrate_start_postcopy()
        st.postcopy_requested = True
        events.append((poll.t_s, "migrate-start-postcopy"))
    elif strategy.kind == "hybrid" and poll.dirty_sync_count >= strategy.postcopy_after_rounds + 1:
        src.qmp.migrate_start_postcopy()
        st.postcopy_requested = True
        events.append((poll.t_s, f"migrate-start-postcopy after {poll.dirty_sync_count - 1} passes"))


def _apply_round_cap(src: VM, cap: RoundCap, info: dict[str, Any], poll: Poll,
                     events: list[tuple[float, str]]) -> None:
    """Send the round cap's command once it fires (raise downtime-limit: QEMU's next check completes)."""
    cmd = cap.poll_reply(info)
    if cmd is None:
        return
    src.qmp.execute(cmd.execute, cmd.arguments)
    events.append((poll.t_s, f"{cmd.reason}: {cmd.execute} {cmd.arguments}"))


def _round_cap_record(cap: RoundCap, params: dict[str, Any], events: list[tuple[float, str]]) -> dict[str, Any]:
    """What the record keeps of a round cap: the cap, the sync it fired at, and the limit it raised."""
    fired_t = next((t for t, text in events if text.startswith(f"round cap {cap.max_rounds}:")), None)
    return {"max_rounds": cap.max_rounds, "action": cap.action, "trigger_sync_count": cap.trigger_count,
            "fired_sync_count": cap.fired_sync_count, "fired_t_s": fired_t,
            "live_downtime_limit_ms": params["downtime-limit"],
            "raised_downtime_limit_ms": cap.limit_ms if cap.fired and cap.action == "raise-limit" else None}


def _watch_destination(run: MigrationRun, now: float, poll: Poll, st: _LoopState,
                       events: list[tuple[float, str]]) -> None:
    """Note a dead destination; cancel when the source has not noticed after DEST_DEATH_GRACE_S."""
    if run.dst.is_running():
        return
    st.dst_exit = _dst_exit(run.dst)
    if st.dst_dead_since is None:
        st.dst_dead_since = now
        events.append((poll.t_s, st.dst_exit))
    elif now - st.dst_dead_since > DEST_DEATH_GRACE_S and not st.cancelled:
        run.src.qmp.migrate_cancel()
        st.cancelled = True
        st.cancelled_at = now


def _watch_link(run: MigrationRun, now: float, poll: Poll, st: _LoopState, events: list[tuple[float, str]]) -> str:
    """A transfer stalled for LINK_STALL_S with the link down (or losing every packet) is a lost link.

    Pre-copy is cancelled then (the source runs on); a post-copy cannot be, so polling stops. A stall alone
    is not enough (QEMU may be busy); nor is a dead destination, which :func:`_watch_destination` reports.
    Returns the reason to stop polling, or "".
    """
    if poll.transferred_bytes > st.progress_bytes or poll.status not in TRANSFER_STATES:
        st.progress_bytes, st.progress_t, st.stall_health = poll.transferred_bytes, now, None
        return ""
    if st.link_lost or st.progress_t is None or not run.dst.is_running():
        return ""
    stalled = now - st.progress_t
    if st.stall_health is None and stalled >= LINK_STALL_S / 2:
        st.stall_health = run.link.health()
        return ""
    if stalled < LINK_STALL_S and poll.status != "postcopy-paused":
        return ""
    evidence = run.link.health().evidence_against(st.stall_health)
    if not evidence:
        st.stall_health = None  # look again a while later
        st.progress_t = now - LINK_STALL_S / 2
        return ""
    st.link_lost = f"{OUTCOME_LINK_LOST.removeprefix('failed: ')} (no byte moved for {stalled:.1f} s; {evidence})"
    events.append((poll.t_s, st.link_lost))
    if st.status.startswith("postcopy"):
        return STOP_LINK_LOST
    if not st.cancelled:
        run.src.qmp.migrate_cancel()
        st.cancelled = True
        st.cancelled_at = now
    return ""


def _enforce_timeout(src: VM, elapsed_s: float, timeout_s: float, poll: Poll, st: _LoopState,
                     events: list[tuple[float, str]]) -> str:
    """Cancel a pre-copy at the timeout; the reason to stop polling, or "" to go on."""
    if elapsed_s > timeout_s and not st.cancelled:
        if st.status.startswith("postcopy"):
            return STOP_POSTCOPY_TIMEOUT
        events.append((poll.t_s, "timeout: migrate_cancel"))
        src.qmp.migrate_cancel()
        st.cancelled = st.timed_out = True
        st.cancelled_at = time.monotonic()
    if st.cancelled and st.cancelled_at is not None and time.monotonic() - st.cancelled_at > CANCEL_WAIT_S:
        return STOP_CANCEL_STUCK
    return ""


def _dst_exit(dst: VM) -> str:
    return f"destination QEMU exited (status {dst.proc.returncode if dst.proc else '?'})"


# -- phase 4: the outcome (pure) ----------------------------------------------------
def classify_outcome(end: LoopEnd) -> str:
    """The run's outcome from how the poll loop ended: ``completed``, ``cancelled: ...`` or ``failed: reason``."""
    if end.link_lost and not end.dst_exit and str(end.final.get("status", end.status)) != "completed":
        return f"failed: {end.link_lost}" + (" after the post-copy switch" if end.stop == STOP_LINK_LOST else "")
    if end.stop == STOP_POSTCOPY_TIMEOUT:
        return f"failed: post-copy still running at the {format_duration(end.timeout_s)} timeout"
    if end.stop == STOP_CANCEL_STUCK:
        return f"failed: migration still {end.status} {CANCEL_WAIT_S:.0f} s after migrate_cancel"
    if end.stop == STOP_SOURCE_LOST:
        return f"failed: {end.source_error}"
    status = str(end.final.get("status", end.status))
    if status == "completed":
        return OUTCOME_COMPLETED
    if status == "cancelled" and end.dst_exit and not end.timed_out:
        # After our own timeout cancel the destination exiting is the normal consequence, not the cause.
        return f"failed: {end.dst_exit}"
    if status == "cancelled":
        return OUTCOME_NOT_CONVERGED
    if status == "failed":
        reason = str(end.final.get("error-desc", "")).strip() or "QEMU reported failure"
        return f"failed: {end.dst_exit + ': ' if end.dst_exit else ''}{reason}"
    return "failed: not started"


# -- phase 5: does the guest run on? ------------------------------------------------
@dataclass(frozen=True)
class _GuestCheck:
    outcome: str
    guest_side: str
    guest_continues: bool | None
    memory_check: MemoryCheck | None = None


def _check_guest(run: MigrationRun, opts: MigrateOptions, outcome: str, src_rates: _Rates, dst_rates: _Rates,
                 events: list[tuple[float, str]]) -> _GuestCheck:
    """After completion the destination must run the workload on (memory compared first with
    ``verify_memory``); otherwise the source must, unless it is gone."""
    src, dst = run.src, run.dst
    if outcome == OUTCOME_COMPLETED:
        memory_check = None
        try:
            if opts.verify_memory:
                _wait_status(dst, ("paused", "prelaunch"), DEST_START_TIMEOUT_S)
                assert src.shm_path is not None and dst.shm_path is not None
                t_cmp = time.monotonic()
                memory_check = compare_memory(src.shm_path, dst.shm_path)
                memory_check = dataclasses.replace(memory_check, seconds=round(time.monotonic() - t_cmp, 3))
                events.append((round(time.monotonic() - run.t0, 4),
                               f"memory compared: {memory_check.pages_differing} pages differ "
                               f"({memory_check.seconds:.2f} s)"))
                if not memory_check.identical:
                    # The lab's own reason to exist: a migration that loses guest pages is not a success.
                    return _GuestCheck(f"failed: memory differs: {memory_check.pages_differing} of "
                                       f"{memory_check.pages_compared} pages (first "
                                       f"{', '.join(map(str, memory_check.first_differing[:4]))})",
                                       "destination", None, memory_check)
                dst.qmp.cont()
            _wait_status(dst, ("running",), DEST_START_TIMEOUT_S)
            return _GuestCheck(outcome, "destination", _watch(dst, dst_rates, opts.watch_after_s,
                                                              src_rates.interval()), memory_check)
        except MiglabError as e:
            return _GuestCheck(f"failed: destination did not run on: {e}", "destination", False, memory_check)
    if not src.is_running():
        return _GuestCheck(outcome, "source", False)  # the source is gone and the guest with it
    try:
        runs_on = src.qmp.status() == "running" and _watch(src, src_rates, opts.watch_after_s, src_rates.interval())
    except MiglabError as e:
        log.warning("source check failed: %s", e)
        runs_on = False
    return _GuestCheck(outcome, "source", runs_on)


def _workload_rate(workload: GuestWorkload, before: float | None, src_rates: _Rates, dst_rates: _Rates,
                   guest_side: str, t_start: float, t_end: float) -> WorkloadRate:
    """The workload's rate before, during and after the migration (after: on the side that runs on)."""
    side = dst_rates if guest_side == "destination" else src_rates
    during_samples = [r for (h, _, r) in src_rates.samples + dst_rates.samples
                      if t_start <= h < t_end and r is not None]
    return WorkloadRate(unit="ops/s" if workload.kind == "redis" else "pages/s",
                        configured=workload.rate_pages_per_s, before=before,
                        during=float(np.mean(during_samples)) if during_samples else None,
                        after=side.mean(t_end), lines_after=len(side.since(t_end)))


SUBMS_DOWNTIME_S = 0.0005
POLL_CLOCK_SLACK_S = 0.05


def _fix_postcopy_downtime(stats: MigrationStats, timeline: list[Poll], dst_rates: _Rates, t_start: float,
                           t_end: float, events: list[tuple[float, str]]) -> MigrationStats:
    """Undo a QEMU accounting slip for post-copy switchovers shorter than a millisecond.

    QEMU keeps ``downtime`` in whole milliseconds and treats 0 as "not set yet"
    (``migration_downtime_end``), so a sub-millisecond post-copy switchover is
    overwritten at completion with the time since the switchover: the whole
    post-copy phase. When that happened *and* the destination's workload
    demonstrably printed progress during the post-copy phase (so the guest
    was not down), record ``SUBMS_DOWNTIME_S`` (the middle of [0, 1) ms) and
    say so in the events; the raw answer stays in ``raw_query_migrate``.

    The overwritten figure also has a signature of its own: it starts at the
    switch, so ``total-time - downtime`` falls between the last ``active`` poll
    and the first ``postcopy-active`` one. A real switchover downtime cannot
    do that, because ``postcopy_start()`` stops the clock before any post-copy
    phase. That settles short post-copy phases, in which the workload (which
    prints once a second) may print nothing.
    """
    first_pc = next((i for i, p in enumerate(timeline) if p.status == "postcopy-active"), None)
    if first_pc is None or stats.downtime_s is None or stats.total_time_s is None:
        return stats
    hi_s = timeline[first_pc].t_s
    lo_s = max((p.t_s for p in timeline[:first_pc] if p.status == "active"), default=0.0)
    postcopy_s = stats.total_time_s - hi_s
    ran = [g for h, g, _ in dst_rates.samples if t_start + hi_s + 0.2 <= h < t_end]
    starts_s = stats.total_time_s - stats.downtime_s
    # QEMU's clock starts at the migrate command, the polls' a moment later: allow one poll interval.
    at_switch = lo_s - POLL_CLOCK_SLACK_S <= starts_s <= hi_s + POLL_CLOCK_SLACK_S
    if postcopy_s > 0.2 and stats.downtime_s >= 0.9 * postcopy_s and (len(ran) >= 1 or at_switch):
        evidence = (f"the destination ran during post-copy ({len(ran)} progress lines)" if ran else
                    f"it starts at the post-copy switch ({starts_s:.3f} s, between the polls at {lo_s:.3f} "
                    f"and {hi_s:.3f} s) and ends at completion")
        events.append((round(t_end - t_start, 4),
                       f"QEMU reported downtime {stats.downtime_s:.3f} s although {evidence}: a sub-ms "
                       f"switchover read as unset; recorded as {SUBMS_DOWNTIME_S * 1e3} ms"))
        return dataclasses.replace(stats, downtime_s=SUBMS_DOWNTIME_S)
    return stats


def _wait_status(vm: VM, wanted: tuple[str, ...], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        st = vm.qmp.status()
        if st in wanted:
            return st
        vm.check_alive()
        if time.monotonic() > deadline:
            raise MiglabError(f"{vm.config.name} is {st!r}, not {'/'.join(wanted)}, after {timeout_s:.0f} s")
        time.sleep(0.05)


def _watch(vm: VM, rates: _Rates, seconds: float, line_interval_s: float = 1.0) -> bool:
    """Does the workload on ``vm`` keep printing progress, with guest time moving on?

    Watches for ``seconds``, or longer when the workload's lines come slower
    (redis's reporter forks ``redis-cli`` and ``awk``: ~2 s a line under TCG),
    and wants at least two new lines with increasing guest time.
    """
    assert vm.console is not None
    t0 = time.monotonic()
    deadline = t0 + max(seconds, 3.0 * line_interval_s + 0.5)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        rates.feed(vm.console)
        vm.check_alive()
        if len(rates.since(t0)) >= 3 and time.monotonic() - t0 >= seconds:
            break
    fresh = rates.since(t0)
    guest_t = [g for _, g, _ in fresh]
    return len(fresh) >= 2 and all(b > a for a, b in zip(guest_t, guest_t[1:], strict=False))


#: QEMU trace events that show the migration thread's decisions; the per-page and per-write ones are left out
#: (they would log every page sent).
QEMU_TRACE_EVENTS = ("migrat*", "-migration_transferred_bytes", "-migration_bitmap_clear_dirty",
                     "ram_save_iterate_big_wait")


def qemu_trace_args(log_path: Path, events: Sequence[str] = QEMU_TRACE_EVENTS) -> tuple[str, ...]:
    """Source-QEMU arguments that log ``events`` (QEMU's ``-trace`` patterns) to ``log_path``."""
    args: list[str] = []
    for e in events:
        args += ["-trace", f"enable={e}"]
    # -msg timestamp=on makes the log backend prefix each event with pid@seconds, which qemutrace reads.
    return (*args, "-D", str(log_path.resolve()), "-msg", "timestamp=on")
