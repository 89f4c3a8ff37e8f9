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
   page by page, and only then is the destination resumed and watched.

``max-bandwidth``: QEMU's default is 128 MiB/s, which would silently cap fast
links. It is set to ``link.migration_cap_Bps`` when the scenario has one,
else to the link rate itself; the stream's payload never reaches the wire
rate (TCP/IP framing takes ~4.5 % at MTU 1500), so then the link, not QEMU,
is the bottleneck, as the simulator assumes. The final stop-and-copy is not
rate-limited by QEMU in either case.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.guest import GuestImage, GuestWorkload, parse_workload
from harness.link import ShapedLink, cleanup_stale
from harness.qmp import QMPError
from harness.record import (
    OUTCOME_COMPLETED,
    OUTCOME_NOT_CONVERGED,
    HostInfo,
    MemoryCheck,
    MigrationStats,
    Poll,
    RunRecord,
    WorkloadRate,
    record_path,
    utc_now,
)
from harness.vm import VM, Console, VMConfig, find_qemu
from sim.atomic import atomic_open
from sim.errors import ConfigError, MiglabError
from sim.scenario import Link, Scenario, Strategy, Workload
from sim.units import (
    PAGE_SIZE_BYTES,
    format_bytes,
    format_duration,
    parse_bandwidth,
    parse_duration,
    parse_size,
)

log = logging.getLogger(__name__)

RUNNER_STRATEGIES: tuple[str, ...] = ("precopy", "postcopy", "hybrid")
MIGRATION_PORT = 4444
POLL_INTERVAL_S = 0.05  # 20 Hz, like guestperf's 50 ms
FINAL_STATUSES = ("completed", "failed", "cancelled")
DEST_DEATH_GRACE_S = 5.0
CANCEL_WAIT_S = 10.0
DEST_START_TIMEOUT_S = 15.0
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
    verify_memory: bool = False
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
    if s.multifd_channels < 1:
        raise ConfigError("multifd channels must be at least 1")
    if s.multifd_channels > 1 and s.xbzrle_cache_bytes:
        raise ConfigError("QEMU cannot combine multifd with xbzrle; choose one")
    if s.multifd_channels > 1 and s.kind != "precopy":
        raise ConfigError("QEMU cannot combine multifd with post-copy; use --strategy precopy")
    return parse_workload(w.spec, w.memory_bytes)


def _capabilities(strategy: Strategy) -> dict[str, bool]:
    return {
        "postcopy-ram": strategy.kind in ("postcopy", "hybrid"),
        "auto-converge": strategy.auto_converge,
        "xbzrle": strategy.xbzrle_cache_bytes > 0,
        "multifd": strategy.multifd_channels > 1,
    }


def migration_parameters(scenario: Scenario) -> dict[str, Any]:
    """The ``migrate-set-parameters`` arguments for a scenario (QMP names and units)."""
    s, link = scenario.strategy, scenario.link
    cap = link.migration_cap_Bps if link.migration_cap_Bps is not None else link.bandwidth_Bps
    params: dict[str, Any] = {
        "downtime-limit": max(1, int(round(s.downtime_limit_s * 1000))),
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
    """
    opts = options or MigrateOptions()
    workload = validate_for_qemu(scenario)
    timeout_s = opts.timeout_s if opts.timeout_s is not None else scenario.strategy.timeout_s
    qemu = find_qemu()
    host = HostInfo.collect(qemu.path)
    cleanup_stale()
    started = utc_now()
    wall0 = time.monotonic()
    mem = scenario.workload.memory_bytes
    params = migration_parameters(scenario)
    caps = _capabilities(scenario.strategy)
    options_record: dict[str, Any] = {
        "timeout_s": timeout_s, "verify_memory": opts.verify_memory, "warmup_s": opts.warmup_s,
        "poll_interval_s": opts.poll_interval_s, "smp": opts.smp, "capabilities": caps, "parameters": params,
        "workload_argv": list(workload.argv), "qemu": qemu.version_line,
    }
    if opts.src_extra_args:
        options_record["src_extra_args"] = list(opts.src_extra_args)
    events: list[tuple[float, str]] = []
    timeline: list[Poll] = []
    src_rates, dst_rates = _Rates(), _Rates()
    final: dict[str, Any] = {}
    outcome = "failed: not started"
    guest_continues: bool | None = None
    guest_side = ""
    memory_check: MemoryCheck | None = None
    t_start = t_end = 0.0

    with contextlib.ExitStack() as stack:
        link = stack.enter_context(ShapedLink(scenario.link.bandwidth_Bps, scenario.link.rtt_s))
        options_record["link"] = {"id": link.id, "tbf": link.tbf_args(), "delay_each_way_s": link.rtt_s / 2,
                                  "delay": "user-space forwarder" if link.rtt_s > 0 else "none"}
        common = dict(memory_bytes=mem, workload=workload, smp=opts.smp, keep_logs_in=opts.keep_logs_in)
        src = stack.enter_context(VM(VMConfig(name="src", netns=link.src_ns, extra_args=opts.src_extra_args,
                                              **common), opts.image))
        dst = stack.enter_context(VM(VMConfig(name="dst", netns=link.dst_ns, incoming=True,
                                              extra_args=("-S",) if opts.verify_memory else (), **common),
                                     src.image))
        run = MigrationRun(link, src, dst)
        assert src.console is not None and dst.console is not None
        src.wait_for_workload(opts.boot_timeout_s)
        src_rates.feed(src.console)
        t_warm = time.monotonic()
        # Warm up for warmup_s, and at least until one progress line measured the steady rate.
        while (time.monotonic() - t_warm < opts.warmup_s
               or (not src_rates.since(t_warm) and time.monotonic() - t_warm < opts.warmup_s + 3.0)):
            time.sleep(0.1)
            src_rates.feed(src.console)
        before = src_rates.mean(t_warm)

        for vm in (src, dst):
            vm.qmp.migrate_set_capabilities(caps)
        src.qmp.migrate_set_parameters(params)
        if caps["multifd"]:
            dst.qmp.migrate_set_parameters({"multifd-channels": params["multifd-channels"]})
        dst.qmp.migrate_incoming(f"tcp:{link.dst_ip}:{MIGRATION_PORT}")
        host_addr, port = link.forward(MIGRATION_PORT)

        bar = _progress_bar(opts.progress)
        postcopy_requested = False
        cancelled_for_timeout = False
        timed_out = False  # cancelled by our timeout (not because the destination died)
        dst_dead_since: float | None = None
        dst_exit = ""
        status = ""
        try:
            t_start = run.t0 = time.monotonic()
            src.qmp.migrate(f"tcp:{host_addr}:{port}")
            events.append((0.0, f"migrate tcp:{host_addr}:{port}"))
            next_poll = t_start
            while True:
                next_poll += opts.poll_interval_s
                info = src.qmp.query_migrate()
                now = time.monotonic()
                poll = Poll.from_query_migrate(now - t_start, info)
                timeline.append(poll)
                src_rates.feed(src.console)
                dst_rates.feed(dst.console)
                if poll.status != status:
                    events.append((poll.t_s, f"status {poll.status}"))
                    status = poll.status
                if bar is not None:
                    bar.n = poll.transferred_bytes
                    bar.set_postfix_str(f"{status} pass {max(poll.dirty_sync_count, 1)}, "
                                        f"{format_bytes(poll.remaining_bytes)} left in pass, {poll.mbps:.0f} Mbit/s",
                                        refresh=True)
                if status in FINAL_STATUSES:
                    final = info
                    break
                if opts.on_poll is not None:
                    opts.on_poll(poll, run)
                if scenario.strategy.kind == "postcopy" and not postcopy_requested and status == "active":
                    # As soon as the outgoing migration is active (the first poll that sees it).
                    src.qmp.migrate_start_postcopy()
                    postcopy_requested = True
                    events.append((poll.t_s, "migrate-start-postcopy"))
                if (scenario.strategy.kind == "hybrid" and not postcopy_requested and status == "active"
                        and poll.dirty_sync_count >= scenario.strategy.postcopy_after_rounds + 1):
                    src.qmp.migrate_start_postcopy()
                    postcopy_requested = True
                    events.append((poll.t_s, f"migrate-start-postcopy after {poll.dirty_sync_count - 1} passes"))
                if not dst.is_running():
                    dst_exit = f"destination QEMU exited (status {dst.proc.returncode if dst.proc else '?'})"
                    if dst_dead_since is None:
                        dst_dead_since = now
                        events.append((poll.t_s, dst_exit))
                    elif now - dst_dead_since > DEST_DEATH_GRACE_S and not cancelled_for_timeout:
                        src.qmp.migrate_cancel()
                        cancelled_for_timeout = True
                if now - t_start > timeout_s and not cancelled_for_timeout:
                    if status.startswith("postcopy"):
                        final = info
                        outcome = f"failed: post-copy still running at the {format_duration(timeout_s)} timeout"
                        break
                    events.append((poll.t_s, "timeout: migrate_cancel"))
                    src.qmp.migrate_cancel()
                    cancelled_for_timeout = timed_out = True
                if cancelled_for_timeout and now - t_start > timeout_s + CANCEL_WAIT_S:
                    final = info
                    outcome = f"failed: migration still {status} {CANCEL_WAIT_S:.0f} s after migrate_cancel"
                    break
                time.sleep(max(0.0, next_poll - time.monotonic()))
        except QMPError as e:
            # The source itself went away (or stopped answering): the run failed, and says why.
            final = {}
            code = src.proc.returncode if src.proc else "?"
            src_exit = "" if src.is_running() else f"source QEMU exited (status {code}): "
            outcome = f"failed: {src_exit}{e}"
            events.append((round(time.monotonic() - t_start, 4), outcome))
        finally:
            if bar is not None:
                bar.close()
        t_end = time.monotonic()
        status = str(final.get("status", status))
        if status != "completed" and not dst_exit and not dst.is_running():
            # The source often notices the broken stream before a poll sees the destination gone.
            dst_exit = f"destination QEMU exited (status {dst.proc.returncode if dst.proc else '?'})"
            events.append((round(t_end - t_start, 4), dst_exit))

        if outcome.startswith("failed: ") and outcome != "failed: not started":
            pass  # already decided in the loop
        elif status == "completed":
            outcome = OUTCOME_COMPLETED
        elif status == "cancelled" and dst_exit and not timed_out:
            # After our own timeout cancel the destination exiting is the normal consequence, not the cause.
            outcome = f"failed: {dst_exit}"
        elif status == "cancelled":
            outcome = OUTCOME_NOT_CONVERGED
        elif status == "failed":
            reason = str(final.get("error-desc", "")).strip() or "QEMU reported failure"
            outcome = f"failed: {dst_exit + ': ' if dst_exit else ''}{reason}"

        if outcome == OUTCOME_COMPLETED:
            guest_side = "destination"
            try:
                if opts.verify_memory:
                    _wait_status(dst, ("paused", "prelaunch"), DEST_START_TIMEOUT_S)
                    assert src.shm_path is not None and dst.shm_path is not None
                    memory_check = compare_memory(src.shm_path, dst.shm_path)
                    events.append((round(time.monotonic() - t_start, 4),
                                   f"memory compared: {memory_check.pages_differing} pages differ"))
                    dst.qmp.cont()
                _wait_status(dst, ("running",), DEST_START_TIMEOUT_S)
                guest_continues = _watch(dst, dst_rates, opts.watch_after_s, src_rates.interval())
            except MiglabError as e:
                outcome = f"failed: destination did not run on: {e}"
                guest_continues = False
        elif src.is_running():
            guest_side = "source"
            try:
                guest_continues = src.qmp.status() == "running" and _watch(src, src_rates, opts.watch_after_s,
                                                                              src_rates.interval())
            except MiglabError as e:
                log.warning("source check failed: %s", e)
                guest_continues = False
        else:
            guest_side, guest_continues = "source", False  # the source is gone and the guest with it
        t_after = t_end
        after = (dst_rates if guest_side == "destination" else src_rates).mean(t_after)
        lines_after = len((dst_rates if guest_side == "destination" else src_rates).since(t_after))
        during_samples = [r for (h, _, r) in src_rates.samples + dst_rates.samples
                          if t_start <= h < t_end and r is not None]
        during = float(np.mean(during_samples)) if during_samples else None
        # the stack closes: QEMU processes, RAM files, run directories, namespaces, forwarders

    max_throttle = max((p.throttle_pct for p in timeline), default=0.0)
    last_expected = next((p.expected_downtime_s for p in reversed(timeline) if p.expected_downtime_s is not None),
                         None)
    stats = MigrationStats.from_query_migrate(final, max_throttle, last_expected) if final else MigrationStats()
    stats = _fix_postcopy_downtime(stats, timeline, dst_rates, t_start, t_end, events)
    rate = WorkloadRate(unit="ops/s" if workload.kind == "redis" else "pages/s",
                        configured=workload.rate_pages_per_s, before=before, during=during, after=after,
                        lines_after=lines_after)
    return RunRecord(scenario=scenario, outcome=outcome, hypervisor="qemu", host=host, timeline=tuple(timeline),
                     stats=stats, raw_query_migrate=final, workload_rate=rate, guest_continues=guest_continues,
                     guest_side=guest_side, memory_check=memory_check, events=tuple(events),
                     options=options_record, started_utc=started, wall_time_s=round(time.monotonic() - wall0, 3))


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


# -- CLI ---------------------------------------------------------------------------

def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Build the Scenario from ``--scenario FILE`` (optional) and the flags given on top of it."""
    base = Scenario.from_toml(args.scenario) if args.scenario else Scenario(
        workload=Workload(memory_bytes=512 << 20), link=Link(bandwidth_Bps=parse_bandwidth("1Gbit/s")),
        strategy=Strategy(timeout_s=120.0))
    changes: dict[str, Any] = {}

    def flag(name: str, key: str, parse: Callable[[Any], Any]) -> None:
        value = getattr(args, name)
        if value is None:
            return
        try:
            changes[key] = parse(value)
        except ConfigError as e:
            raise ConfigError(f"--{name.replace('_', '-')}: {e}") from None

    if args.workload is not None:
        changes["workload.kind"] = "synthetic"
        changes["workload.spec"] = args.workload
        changes["workload.path"] = ""
    elif not args.scenario:
        raise ConfigError("--workload SPEC is required (e.g. hotcold:hot=64MiB,rate=5000)")
    flag("memory", "workload.memory_bytes", parse_size)
    flag("bandwidth", "link.bandwidth_Bps", parse_bandwidth)
    flag("rtt", "link.rtt_s", parse_duration)
    flag("max_bandwidth", "link.migration_cap_Bps", parse_bandwidth)
    flag("downtime_limit", "strategy.downtime_limit_s", parse_duration)
    flag("timeout", "strategy.timeout_s", parse_duration)
    flag("xbzrle_cache", "strategy.xbzrle_cache_bytes", parse_size)
    if args.strategy is not None:
        if args.strategy not in RUNNER_STRATEGIES:
            raise ConfigError(f"--strategy: unknown strategy {args.strategy!r} "
                              f"(choose from {', '.join(RUNNER_STRATEGIES)})")
        changes["strategy.kind"] = args.strategy
    if args.postcopy_after is not None:
        if args.postcopy_after < 0:
            raise ConfigError("--postcopy-after: must not be negative")
        changes["strategy.postcopy_after_rounds"] = args.postcopy_after
    if args.auto_converge:
        changes["strategy.auto_converge"] = True
    if args.multifd is not None:
        if args.multifd < 1:
            raise ConfigError("--multifd: need at least 1 channel")
        changes["strategy.multifd_channels"] = args.multifd
    name = args.name or (Path(args.output).stem if args.output else "") or base.name
    if name:
        changes["name"] = name
    scenario = base.replace(**changes) if changes else base
    validate_for_qemu(scenario)  # one-line errors before anything starts
    return scenario


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so every context manager cleans up


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


def _summarise_qemu_trace(log_path: Path) -> None:
    """Write ``LOG.syncs.csv`` (one row per bitmap sync) beside the log and say where."""
    from harness.qemutrace import syncs

    table = syncs(log_path)
    dest = log_path.with_name(log_path.name + ".syncs.csv")
    with atomic_open(dest) as f:
        table.to_csv(f, index=False)
    print(f"QEMU trace: {len(table)} bitmap syncs -> {dest}")


def _cmd_migrate(args: argparse.Namespace) -> int:
    if args.hypervisor == "bhyve":
        from harness.bhyve import migrate_main

        return migrate_main(args)
    scenario = scenario_from_args(args)
    out = Path(args.output) if args.output else record_path(args.campaign, scenario.name or "run")
    opts = MigrateOptions(timeout_s=None, verify_memory=args.verify_memory, warmup_s=parse_duration(args.warmup),
                          progress=not args.no_progress and sys.stderr.isatty(),
                          keep_logs_in=Path(args.keep_logs) if args.keep_logs else None,
                          src_extra_args=qemu_trace_args(Path(args.qemu_trace)) if args.qemu_trace else ())
    old = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        record = run_migration(scenario, opts)
    finally:
        signal.signal(signal.SIGTERM, old)
    record.save(out)
    if args.qemu_trace:
        _summarise_qemu_trace(Path(args.qemu_trace))
    s = record.stats
    print(f"{record.outcome}: total {format_duration(s.total_time_s or float('nan'))}, downtime "
          f"{format_duration(s.downtime_s or float('nan'))}, sent {format_bytes(s.bytes_sent)}, "
          f"{s.dirty_sync_count} syncs, {s.postcopy_requests} post-copy requests; guest continues on "
          f"{record.guest_side or '-'}: {record.guest_continues}"
          + (f"; {record.memory_check.pages_differing} pages differ" if record.memory_check else "")
          + f" -> {out}")
    return 0 if record.completed and record.guest_continues else 1


def register(groups: dict[str, Any]) -> None:
    """``miglab migrate``: one real QEMU migration over a shaped link, recorded as JSON."""
    p = groups[""].add_parser("migrate", help="run a real migration over a shaped link (QEMU) or between "
                              "two FreeBSD hosts (bhyve) and record it")
    p.add_argument("--hypervisor", choices=("qemu", "bhyve"), default="qemu",
                   help="qemu: two local TCG guests in namespaces (default); bhyve: see the bhyve flags below")
    p.add_argument("--scenario", help="scenario TOML to start from (flags override its fields)")
    p.add_argument("--workload", help="workload spec, e.g. hotcold:hot=64MiB,rate=5000 (or redis, idle)")
    p.add_argument("--memory", help="guest memory (default 512MiB)")
    p.add_argument("--strategy", help="precopy | postcopy | hybrid")
    p.add_argument("--bandwidth", help="link rate, e.g. 200Mbit/s (default 1Gbit/s)")
    p.add_argument("--rtt", help="link round-trip time, e.g. 10ms (default 0)")
    p.add_argument("--downtime-limit", help="QEMU downtime-limit (default 300ms)")
    p.add_argument("--postcopy-after", type=int, help="hybrid: switch to post-copy after N completed passes")
    p.add_argument("--auto-converge", action="store_true", help="enable auto-converge (CPU throttling)")
    p.add_argument("--xbzrle-cache", help="enable XBZRLE with this cache size, e.g. 64MiB")
    p.add_argument("--multifd", type=int, help="multifd channels (pre-copy only)")
    p.add_argument("--max-bandwidth", help="QEMU max-bandwidth cap (default: the link rate)")
    p.add_argument("--timeout", help="cancel a pre-copy that has not converged after this long (default 120s)")
    p.add_argument("--verify-memory", action="store_true",
                   help="keep the destination paused after switchover and compare RAM page by page")
    p.add_argument("--warmup", default="2s", help="workload run time before migrating (default 2s)")
    p.add_argument("--name", help="scenario name (default: the output file's stem)")
    p.add_argument("--campaign", default="scratch", help="results/<campaign>/<name>.json when -o is not given")
    p.add_argument("-o", "--output", help="run record JSON path")
    p.add_argument("--keep-logs", help="copy the guests' console and QEMU logs into this directory")
    p.add_argument("--qemu-trace", metavar="LOG",
                   help="write the source QEMU's migration trace events to LOG: every pending estimate and "
                        "exact check, bitmap sync and bandwidth window (threshold), with host timestamps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from harness.bhyve import add_migrate_arguments

    add_migrate_arguments(p)
    p.set_defaults(func=_cmd_migrate)
