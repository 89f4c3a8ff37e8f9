"""The real migration runner: QEMU guests in namespaces over a shaped link.

The ``vm`` tests boot real TCG guests (512 MiB, a 64 MiB working region) and
migrate them over a 400 Mbit/s, 10 ms link; each takes 15-20 s.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from harness import link as linkmod
from harness import qemutrace
from harness.cli import main
from harness.migrate import (
    STOP_CANCEL_STUCK,
    STOP_FINAL,
    STOP_POSTCOPY_TIMEOUT,
    STOP_SOURCE_LOST,
    LoopEnd,
    MigrateOptions,
    MigrationRun,
    classify_outcome,
    compare_memory,
    migration_parameters,
    qemu_trace_args,
    run_migration,
)
from harness.record import OUTCOME_COMPLETED, OUTCOME_NOT_CONVERGED, MigrationStats, Poll, RunRecord
from sim.errors import ConfigError
from sim.scenario import Scenario

MiB = 1 << 20
LINK_BPS = 400e6 / 8


def _scenario(**changes: object) -> Scenario:
    base = {"workload.spec": "hotcold:hot=32MiB,rate=3000,total=64MiB", "workload.memory_bytes": "512MiB",
            "link.bandwidth_Bps": LINK_BPS, "link.rtt_s": 0.010, "strategy.kind": "precopy",
            "strategy.downtime_limit_s": 0.3, "strategy.timeout_s": 60.0}
    base.update(changes)
    return Scenario().replace(**base)


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("PPid:") and int(line.split()[1]) == pid:
                    kids.append(int(d.name))
    return kids


@pytest.fixture
def clean_host():
    """After the test: no QEMU, RAM file, namespace or helper process of ours is left."""
    from harness.vm import leftovers

    before_ns = set(linkmod.list_namespaces())
    yield
    left = leftovers()
    assert left == {"shm": [], "qemu": []}, left
    new_ns = set(linkmod.list_namespaces()) - before_ns
    assert not {ns for ns in new_ns if f"-{os.getpid()}-" in ns}, new_ns
    assert _children(os.getpid()) == []


@pytest.fixture
def image(guest_image):
    if os.geteuid() != 0:
        pytest.skip("real migrations need root (namespaces)")
    return guest_image


# -- no VM -------------------------------------------------------------------------

def test_compare_memory_counts_differing_and_nonzero_pages(tmp_path: Path) -> None:
    a = np.zeros(1024 * 512, dtype=np.uint64)  # 1024 pages
    a[5 * 512 + 7] = 1
    a[900 * 512] = 3
    b = a.copy()
    b[900 * 512] = 4
    b[1000 * 512 + 511] = 9
    (tmp_path / "a").write_bytes(a.tobytes())
    (tmp_path / "b").write_bytes(b.tobytes())
    m = compare_memory(tmp_path / "a", tmp_path / "b", chunk_bytes=256 * 4096)
    assert (m.pages_compared, m.pages_differing, m.first_differing, m.nonzero_pages) == (1024, 2, (900, 1000), 2)


def test_parameters_set_max_bandwidth_explicitly() -> None:
    p = migration_parameters(_scenario())
    assert p["max-bandwidth"] == int(LINK_BPS) and p["downtime-limit"] == 300
    capped = migration_parameters(_scenario(**{"link.migration_cap_Bps": "10MiB/s", "strategy.auto_converge": True,
                                               "strategy.xbzrle_cache_bytes": "64MiB"}))
    assert capped["max-bandwidth"] == 10 * MiB
    assert capped["cpu-throttle-initial"] == 20 and capped["xbzrle-cache-size"] == 64 * MiB


@pytest.mark.parametrize("argv, needle", [
    (["--workload", "bogus:rate=5"], "unknown pattern 'bogus'"),
    (["--workload", "hotcold:rate=5"], "hotcold needs hot=SIZE"),
    (["--workload", "uniform:rate=100", "--strategy", "teleport"], "--strategy: unknown strategy 'teleport'"),
    (["--workload", "uniform:rate=100", "--bandwidth", "fast"], "--bandwidth"),
    (["--workload", "uniform:rate=100", "--strategy", "postcopy", "--multifd", "4"], "multifd"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], needle: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(["migrate", *argv, "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def _miglab_namespaces() -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith("miglab")}
    except FileNotFoundError:
        return set()


@pytest.mark.parametrize("memory, needle", [
    ("1PiB", "--memory: pre-flight: a 1048576.0 GiB migration needs"),  # does not fit this host
    ("32MiB", "--memory: a QEMU guest's memory must be a whole number of MiB and at least 64 MiB"),
    ("1000001KiB", "--memory: a QEMU guest's memory must be a whole number of MiB"),  # not MiB-aligned
    ("4097KiB", "--memory: a QEMU guest's memory must be a whole number of MiB"),
])
def test_guest_size_is_refused_before_anything_starts(memory: str, needle: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.migrate as runner

    def started(*a: object, **k: object) -> None:
        raise AssertionError("the run went past its input checks")

    for name in ("find_qemu", "cleanup_stale", "ShapedLink", "VM"):  # what a run starts first
        monkeypatch.setattr(runner, name, started)
    before = _miglab_namespaces()
    out = tmp_path / "r.json"
    assert main(["migrate", "--workload", "idle", "--memory", memory, "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("miglab: ") and needle in err and err.count("\n") == 1, err
    assert _miglab_namespaces() == before and not out.exists()


def test_zero_vcpus_are_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.migrate as runner

    monkeypatch.setattr(runner, "find_qemu", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ConfigError, match="at least 1 vCPU") as e:
        run_migration(_scenario(), MigrateOptions(smp=0))
    assert e.value.key == "smp"


def test_cli_flags_map_onto_the_scenario() -> None:
    from harness.cli import build_parser
    from harness.cli.migrate import migrate_scenario as scenario_from_args

    args = build_parser().parse_args([
        "migrate", "--workload", "zipf:rate=4000,s=1.2", "--memory", "256MiB", "--strategy", "hybrid",
        "--postcopy-after", "2", "--bandwidth", "200Mbit/s", "--rtt", "10ms", "--downtime-limit", "50ms",
        "--auto-converge", "--xbzrle-cache", "64MiB", "--max-bandwidth", "20MiB/s", "--timeout", "90s",
        "-o", "results/c/zipf-hybrid.json"])
    s = scenario_from_args(args)
    assert (s.workload.kind, s.workload.spec, s.workload.memory_bytes) == ("synthetic", "zipf:rate=4000,s=1.2",
                                                                         256 * MiB)
    assert s.link.bandwidth_Bps == pytest.approx(25e6) and s.link.rtt_s == pytest.approx(0.010)
    assert s.link.migration_cap_Bps == 20 * MiB
    st = s.strategy
    assert (st.kind, st.postcopy_after_rounds, st.auto_converge, st.xbzrle_cache_bytes) == ("hybrid", 2, True, 64 * MiB)
    assert st.downtime_limit_s == pytest.approx(0.05) and st.timeout_s == pytest.approx(90.0)
    assert s.name == "zipf-hybrid"


def test_postcopy_downtime_slip_is_corrected_only_on_evidence() -> None:
    from harness.migrate import SUBMS_DOWNTIME_S, _fix_postcopy_downtime, _Rates

    timeline = [Poll(0.05, "active"), Poll(0.10, "postcopy-active"), Poll(4.30, "completed")]
    slipped = MigrationStats(total_time_s=4.35, downtime_s=4.29)
    ran, idle = _Rates(), _Rates()
    ran.samples = [(100.0 + 1.5, 7.0, 4800.0), (100.0 + 2.5, 8.0, 4900.0)]
    events: list[tuple[float, str]] = []
    fixed = _fix_postcopy_downtime(slipped, timeline, ran, 100.0, 104.35, events)
    assert fixed.downtime_s == SUBMS_DOWNTIME_S and "sub-ms" in events[-1][1]
    # No progress line (a post-copy phase shorter than the workload's print interval), but the
    # figure starts at the switch, between the polls: the overwrite's own signature.
    events = []
    assert _fix_postcopy_downtime(slipped, timeline, idle, 100.0, 104.35, events).downtime_s == SUBMS_DOWNTIME_S
    assert "post-copy switch" in events[-1][1]
    # Neither evidence: QEMU's figure stands.
    late = MigrationStats(total_time_s=4.35, downtime_s=4.0)
    assert _fix_postcopy_downtime(late, timeline, idle, 100.0, 104.35, []) == late
    # A normal post-copy downtime is left alone.
    fine = MigrationStats(total_time_s=4.35, downtime_s=0.004)
    assert _fix_postcopy_downtime(fine, timeline, ran, 100.0, 104.35, []) == fine
    # Pre-copy never reaches postcopy-active.
    pre = [Poll(0.05, "active"), Poll(3.0, "completed")]
    assert _fix_postcopy_downtime(slipped, pre, ran, 100.0, 104.35, []) == slipped


@pytest.mark.parametrize("end, outcome", [
    (LoopEnd(STOP_FINAL, "completed", {"status": "completed"}), OUTCOME_COMPLETED),
    # QEMU's own failure, with the destination's exit named first when it was seen
    (LoopEnd(STOP_FINAL, "failed", {"status": "failed", "error-desc": " Unable to write to socket "}),
     "failed: Unable to write to socket"),
    (LoopEnd(STOP_FINAL, "failed", {"status": "failed"}, dst_exit="destination QEMU exited (status -9)"),
     "failed: destination QEMU exited (status -9): QEMU reported failure"),
    # cancelled by our timeout: did not converge, even though the destination then exits
    (LoopEnd(STOP_FINAL, "cancelled", {"status": "cancelled"}, timed_out=True), OUTCOME_NOT_CONVERGED),
    (LoopEnd(STOP_FINAL, "cancelled", {"status": "cancelled"}, timed_out=True,
             dst_exit="destination QEMU exited (status 1)"), OUTCOME_NOT_CONVERGED),
    # cancelled because the destination died: that is the cause
    (LoopEnd(STOP_FINAL, "cancelled", {"status": "cancelled"}, dst_exit="destination QEMU exited (status -9)"),
     "failed: destination QEMU exited (status -9)"),
    # post-copy cannot be cancelled: still running at the timeout is a failure
    (LoopEnd(STOP_POSTCOPY_TIMEOUT, "postcopy-active", {"status": "postcopy-active"}, timeout_s=60.0),
     "failed: post-copy still running at the 60.00 s timeout"),
    (LoopEnd(STOP_CANCEL_STUCK, "cancelling", {"status": "cancelling"}, timed_out=True),
     "failed: migration still cancelling 10 s after migrate_cancel"),
    (LoopEnd(STOP_SOURCE_LOST, "active", {}, source_error="source QEMU exited (status -9): connection reset"),
     "failed: source QEMU exited (status -9): connection reset"),
])
def test_outcome_classifier(end: LoopEnd, outcome: str) -> None:
    assert classify_outcome(end) == outcome


def test_trace_workloads_cannot_run_on_a_real_guest() -> None:
    s = _scenario(**{"workload.kind": "trace", "workload.path": "traces/x.npz"})
    with pytest.raises(ConfigError, match="workload spec"):
        run_migration(s)


QEMU_LOG = """\
5325@1795677012.296652:migrate_set_state new state setup
5350@1795677012.297951:migration_bitmap_sync_start
5350@1795677012.298557:migration_bitmap_sync_end dirty_pages 0
5350@1795677012.298621:migrate_set_state new state active
5350@1795677018.210000:migrate_transferred transferred 6307884 time_spent 108 bandwidth 58406 switchover_bw 0 max_size 17521900
5350@1795677018.291433:migration_bitmap_sync_end dirty_pages 16270
5350@1795677018.291438:migrate_pending_exact exact pending size 83079168 (pre = 83079168 post=0)
5350@1795677019.700000:migrate_transferred transferred 6307884 time_spent 100 bandwidth 63078 switchover_bw 0 max_size 18923652
5350@1795677019.707414:migration_bitmap_sync_end dirty_pages 1281
5350@1795677019.707416:migrate_pending_exact exact pending size 17690624 (pre = 17690624 post=0)
5350@1795677019.807854:migrate_set_state new state device
5350@1795677019.807883:migration_bitmap_sync_end dirty_pages 1281
"""


def test_qemu_trace_log_becomes_one_row_per_sync(tmp_path: Path) -> None:
    log = tmp_path / "q.log"
    log.write_text("qemu-system-x86_64: some warning\n" + QEMU_LOG)
    t = qemutrace.syncs(log)
    assert list(t["sync"]) == [1, 2, 3, 4]
    assert list(t["state"]) == ["setup", "active", "active", "device"]
    assert t["t_s"].iloc[1] == pytest.approx(5.994781)
    assert list(t["pending_bytes"].iloc[1:3]) == [83079168, 17690624] and t["pending_bytes"].isna().iloc[[0, 3]].all()
    assert list(t["threshold_bytes"].iloc[1:3]) == [17521900, 18923652]
    assert t["window_bandwidth_Bps"].iloc[2] == 63078000
    empty = tmp_path / "empty.log"
    empty.write_text("nothing traced\n")
    with pytest.raises(ConfigError, match="no QEMU trace events"):
        qemutrace.syncs(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        qemutrace.syncs(tmp_path / "missing.log")


def test_qemu_trace_args_enable_the_decision_events(tmp_path: Path) -> None:
    args = qemu_trace_args(tmp_path / "t.log")
    assert args[-4:] == ("-D", str((tmp_path / "t.log").resolve()), "-msg", "timestamp=on")
    assert "enable=migrat*" in args and "enable=-migration_transferred_bytes" in args


# -- real guests ---------------------------------------------------------------------

@pytest.mark.vm
def test_precopy_completes_with_identical_memory(image, clean_host, tmp_path: Path) -> None:
    trace_log = tmp_path / "qemu-trace.log"
    rec = run_migration(_scenario(name="precopy"), MigrateOptions(image=image, verify_memory=True, warmup_s=1.5,
                                                                  src_extra_args=qemu_trace_args(trace_log)))
    assert rec.outcome == OUTCOME_COMPLETED, rec.outcome
    assert rec.guest_side == "destination" and rec.guest_continues
    assert rec.workload_rate.lines_after >= 2
    assert rec.memory_check is not None and rec.memory_check.pages_differing == 0
    s = rec.stats
    # Every page that is non-zero at the end crossed the link at least once.
    assert rec.memory_check.nonzero_pages > (64 * MiB) // 4096
    assert s.bytes_sent >= rec.memory_check.nonzero_pages * 4096
    assert s.normal_pages >= rec.memory_check.nonzero_pages
    assert s.duplicate_pages > 0  # most of 512 MiB is zero pages
    assert 0 < s.downtime_s < s.total_time_s  # how short it is depends on the host's load: a benchmark's job
    # the pause the guest saw, from QEMU's own event stamps (the destination was held for the comparison)
    assert s.guest_pause_s is not None and 0 < s.guest_pause_s < s.total_time_s
    assert "MIGRATION completed" in rec.options["guest_pause"]["end"]
    assert s.dirty_sync_count >= 2
    # No faster than the link (how much slower is the host's load).
    assert s.total_time_s >= 0.9 * s.bytes_sent / LINK_BPS
    # The workload ran before the migration, paced: never above its configured rate (a loaded host slows it).
    assert 0 < rec.workload_rate.before <= 3000 * 1.05
    # The timeline is sampled over the whole run, in order (its rate is the poller's, which load slows).
    t = np.array([p.t_s for p in rec.timeline])
    assert len(t) >= 10 and (np.diff(t) > 0).all()
    assert rec.timeline[-1].status == "completed"
    # The record survives a JSON round trip.
    assert RunRecord.load(rec.save(tmp_path / "r.json")) == rec
    # QEMU's own trace: one row per sync, and the stop rule the simulator implements -- every exact check
    # but the last found pending at or above bandwidth x downtime-limit, the last one below it.
    syncs = qemutrace.syncs(trace_log)
    assert len(syncs) == s.dirty_sync_count
    assert list(syncs["state"].iloc[[0, -1]]) == ["setup", "device"]
    checks = syncs[syncs["state"] == "active"]
    assert len(checks) == s.dirty_sync_count - 2 and checks["pending_bytes"].notna().all()
    assert (checks["pending_bytes"].iloc[:-1] >= checks["threshold_bytes"].iloc[:-1]).all()
    assert checks["pending_bytes"].iloc[-1] < checks["threshold_bytes"].iloc[-1]
    assert checks["threshold_bytes"].iloc[-1] == pytest.approx(
        checks["window_bandwidth_Bps"].iloc[-1] * 0.3, rel=0.01)  # the scenario's 300 ms downtime-limit


@pytest.mark.vm
def test_postcopy_completes_with_page_requests(image, clean_host) -> None:
    rec = run_migration(_scenario(**{"strategy.kind": "postcopy", "workload.spec":
                                     "hotcold:hot=48MiB,rate=5000,total=64MiB"}),
                        MigrateOptions(image=image, warmup_s=1.0))
    assert rec.outcome == OUTCOME_COMPLETED, rec.outcome
    assert rec.guest_side == "destination" and rec.guest_continues
    assert any(text == "migrate-start-postcopy" for _, text in rec.events)
    assert any(p.status == "postcopy-active" for p in rec.timeline)
    s = rec.stats
    assert s.postcopy_requests > 0  # the running destination faulted pages in over the link
    assert s.guest_pause_s is not None and 0 < s.guest_pause_s < s.total_time_s
    assert rec.options["guest_pause"]["end"] == "destination RESUME event"
    assert s.postcopy_bytes > 32 * MiB
    assert 0 < s.downtime_s < s.total_time_s
    assert s.total_time_s >= 0.9 * s.bytes_sent / LINK_BPS


@pytest.mark.vm
def test_hybrid_switches_to_postcopy_after_one_pass(image, clean_host) -> None:
    # The first pass leaves ~48 MiB dirty (30 MB/s over a 48 MiB span), far above the
    # 300 ms x 50 MB/s threshold, so the migration is still in pre-copy when pass 2 opens.
    s = _scenario(**{"strategy.kind": "hybrid", "strategy.postcopy_after_rounds": 1,
                     "workload.spec": "uniform:rate=30MB/s,span=48MiB,total=64MiB"})
    rec = run_migration(s, MigrateOptions(image=image, warmup_s=1.0))
    assert rec.outcome == OUTCOME_COMPLETED, rec.outcome
    assert rec.guest_side == "destination" and rec.guest_continues
    switch = [t for t, text in rec.events if text.startswith("migrate-start-postcopy after 1 passes")]
    assert len(switch) == 1
    before = [p for p in rec.timeline if p.t_s <= switch[0]]
    after = [p for p in rec.timeline if p.t_s > switch[0]]
    assert before[-1].dirty_sync_count == 2  # the second sync opened pass 2: one pass was complete
    assert all(p.status == "active" for p in before[1:])
    assert any(p.status == "postcopy-active" for p in after)
    assert rec.stats.precopy_bytes > 48 * MiB and rec.stats.postcopy_bytes > 0


@pytest.mark.vm
def test_destination_killed_during_precopy(image, clean_host) -> None:
    killed: list[int] = []

    def kill_destination(poll: Poll, run: MigrationRun) -> None:
        if not killed and poll.transferred_bytes > 8 * MiB:
            assert run.dst.pid is not None
            os.kill(run.dst.pid, signal.SIGKILL)
            killed.append(run.dst.pid)

    # A slower link so the first pass is still running when the destination dies.
    s = _scenario(**{"link.bandwidth_Bps": "100Mbit/s"})
    rec = run_migration(s, MigrateOptions(image=image, warmup_s=1.0, on_poll=kill_destination))
    assert killed
    assert rec.outcome.startswith("failed: "), rec.outcome
    assert "destination" in rec.outcome
    assert rec.guest_side == "source" and rec.guest_continues
    assert rec.timeline[-1].status in ("failed", "cancelled")


@pytest.mark.vm
def test_never_converging_precopy_is_cancelled_at_timeout(image, clean_host) -> None:
    # 20 MB/s of distinct pages against a 40 Mbit/s (5 MB/s) link cannot converge.
    s = _scenario(**{"workload.spec": "uniform:rate=20MB/s,span=48MiB,total=64MiB",
                     "link.bandwidth_Bps": "40Mbit/s", "link.rtt_s": 0.002,
                     "strategy.downtime_limit_s": 0.02, "strategy.timeout_s": 4.0})
    rec = run_migration(s, MigrateOptions(image=image, warmup_s=1.0))
    assert rec.outcome == OUTCOME_NOT_CONVERGED, rec.outcome
    assert rec.guest_side == "source" and rec.guest_continues
    assert any("timeout" in text for _, text in rec.events)
    assert rec.timeline[-1].status == "cancelled"
    assert rec.timeline[-1].t_s >= 4.0


@pytest.mark.vm
def test_source_killed_is_recorded_and_interrupt_cleans_up(image, clean_host) -> None:
    def kill_source(poll: Poll, run: MigrationRun) -> None:
        if poll.transferred_bytes > 4 * MiB and run.src.pid is not None:
            os.kill(run.src.pid, signal.SIGKILL)

    s = _scenario(**{"link.bandwidth_Bps": "100Mbit/s"})
    rec = run_migration(s, MigrateOptions(image=image, warmup_s=0.5, on_poll=kill_source))
    assert rec.outcome.startswith("failed: source QEMU exited"), rec.outcome
    assert rec.guest_side == "source" and rec.guest_continues is False

    def interrupt(poll: Poll, run: MigrationRun) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_migration(s, MigrateOptions(image=image, warmup_s=0.5, on_poll=interrupt))
    # clean_host checks that QEMU, RAM files, namespaces and forwarders are gone


@pytest.mark.vm
def test_round_cap_completes_a_migration_that_would_not_converge(image, clean_host) -> None:
    # bhyve's rule, K = 2: live downtime-limit 1 ms, 20 MB/s of distinct pages over a 100 Mbit/s link -- QEMU's
    # threshold alone would never end it. Passes take seconds here, so the poll sees every sync.
    k = 2
    s = _scenario(**{"workload.spec": "uniform:rate=20MB/s,span=48MiB,total=64MiB", "workload.memory_bytes": "256MiB",
                     "link.bandwidth_Bps": "100Mbit/s", "link.rtt_s": 0.002, "strategy.stop_rule": "bhyve",
                     "strategy.bhyve_rounds": k, "strategy.timeout_s": 60.0})
    rec = run_migration(s, MigrateOptions(image=image, warmup_s=1.0))
    assert rec.outcome == OUTCOME_COMPLETED, rec.outcome
    assert rec.guest_side == "destination" and rec.guest_continues
    cap = rec.options["round_cap"]
    assert cap["max_rounds"] == k and cap["fired_sync_count"] == k + 1  # the setup sync + K pass-ending syncs
    assert cap["live_downtime_limit_ms"] == 1 and cap["raised_downtime_limit_ms"] == 2_000_000
    assert rec.options["parameters"]["downtime-limit"] == 1
    # It completes within K + 1 passes: the setup sync, K pass-ending syncs, then at most the exact sync of the
    # pass the cap cut short and the completion sync.
    assert k + 2 <= rec.stats.dirty_sync_count <= k + 3, rec.stats.dirty_sync_count
    assert max(p.dirty_sync_count for p in rec.timeline if p.status == "active") <= k + 2
    assert any(text.startswith(f"round cap {k}:") for _, text in rec.events)


def test_memory_is_verified_by_default_where_it_is_cheap_and_harmless() -> None:
    from harness.migrate import VERIFY_MEMORY_MAX_BYTES, verify_memory_by_default

    assert verify_memory_by_default(_scenario())  # pre-copy, 512 MiB
    assert not verify_memory_by_default(_scenario(**{"strategy.kind": "postcopy"}))  # a paused dst cannot fault
    assert not verify_memory_by_default(_scenario(**{"strategy.kind": "hybrid"}))
    assert not verify_memory_by_default(_scenario(**{"workload.memory_bytes": 2 * VERIFY_MEMORY_MAX_BYTES}))


def test_guest_pause_is_source_stop_to_destination_resume_on_one_clock() -> None:
    from harness.migrate import guest_pause

    def ev(name: str, t: float, **data: object) -> dict[str, object]:
        return {"event": name, "timestamp": {"seconds": int(t), "microseconds": round((t % 1) * 1e6)},
                "data": data}

    src = [ev("STOP", 100.250000)]
    dst = [ev("RESUME", 99.0), ev("MIGRATION", 100.30, status="completed"), ev("RESUME", 100.331500)]
    pause = guest_pause(src, dst)
    assert pause is not None and pause[0] == pytest.approx(0.0815) and "RESUME" in pause[1]
    # held paused for memory verification: the end is where it finished loading
    held = guest_pause(src, [ev("MIGRATION", 100.30, status="completed"), ev("RESUME", 102.0)], dst_held=True)
    assert held is not None and held[0] == pytest.approx(0.05) and "MIGRATION completed" in held[1]
    assert guest_pause([], dst) is None and guest_pause(src, [ev("RESUME", 99.0)]) is None
