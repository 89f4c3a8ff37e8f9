"""Faults injected into real migrations, and what the record must say about each (issue 12).

Every run that starts leaves a record with its true reason and the last known statistics; SIGTERM tears
everything down; ``miglab harness cleanup`` finds a dead run's leftovers by what it wrote. The ``vm``
tests boot 256 MiB TCG guests over a 100 Mbit/s link (a first pass of ~6 s, so faults land mid-pre-copy).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import link as linkmod
from harness import runstate
from harness.link import LinkHealth
from harness.migrate import MigrateOptions, MigrationRun, run_migration
from harness.record import OUTCOME_INTERRUPTED, OUTCOME_LINK_LOST, Poll, RunRecord
from sim.scenario import Scenario

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
SPEC = "hotcold:hot=32MiB,rate=3000,total=64MiB"


def _scenario(**changes: object) -> Scenario:
    base = {"workload.spec": SPEC, "workload.memory_bytes": "256MiB", "link.bandwidth_Bps": "100Mbit/s",
            "link.rtt_s": 0.004, "strategy.kind": "precopy", "strategy.downtime_limit_s": 0.3,
            "strategy.timeout_s": 40.0}
    base.update(changes)
    return Scenario().replace(**base)


def _leftovers_of(pid: int) -> dict[str, list[str]]:
    """Everything a runner with this pid could have left: QEMU, RAM files, run dirs, namespaces, state."""
    from harness.vm import leftovers

    left = leftovers(pid)
    tmp = Path(tempfile.gettempdir())
    return {"qemu": left["qemu"], "shm": left["shm"],
            "run_dirs": sorted(str(p) for p in tmp.glob(f"miglab-{pid}-*")),
            "namespaces": [ns for ns in linkmod.list_namespaces() if f"-{pid}-" in ns],
            "state": [str(p) for p in runstate.state_dir().glob(f"{pid}.json")]}


NOTHING = {"qemu": [], "shm": [], "run_dirs": [], "namespaces": [], "state": []}


@pytest.fixture
def image(guest_image):
    if os.geteuid() != 0:
        pytest.skip("real migrations need root (namespaces)")
    return guest_image


# -- no VM ---------------------------------------------------------------------------

def test_link_evidence_needs_a_down_end_or_lost_packets() -> None:
    before = LinkHealth((), 100, 90)
    assert LinkHealth((), 100, 90).evidence_against(before) == ""  # a quiet link is not a lost one
    assert "down" in LinkHealth(("to-dst in mid down",), 100, 90).evidence_against(before)
    assert "received none" in LinkHealth((), 140, 90).evidence_against(before)
    assert LinkHealth((), 140, 95).evidence_against(before) == ""


def test_cleanup_finds_a_dead_runs_leftovers_by_its_state_file(tmp_path: Path) -> None:
    # A "run" that wrote its state and died: its leftovers have names without any pid in them.
    victim_dir = tmp_path / "renamed-run-dir"
    victim_dir.mkdir()
    victim_file = tmp_path / "some-ram-file"
    victim_file.write_bytes(b"\0" * 4096)
    sleeper = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(60)  # {victim_dir}"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = runstate.state_dir() / f"{dead.pid}.json"
    state.parent.mkdir(mode=0o700, exist_ok=True)
    state.write_text(json.dumps({"pid": dead.pid, "start_time": "1", "namespaces": [],
                                 "paths": [str(victim_dir), str(victim_file)],
                                 "pids": [[sleeper.pid, str(victim_dir)], [os.getpid(), "not-on-my-cmdline"]]}))
    try:
        removed = linkmod.cleanup_stale()
        assert str(victim_dir) in removed and str(victim_file) in removed
        assert not victim_dir.exists() and not victim_file.exists() and not state.exists()
        assert sleeper.wait(timeout=30) == -signal.SIGKILL
        # a pid whose command line does not carry the marker is never killed (here: this test process)
        assert f"process {os.getpid()}" not in removed
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        state.unlink(missing_ok=True)


# -- real guests -----------------------------------------------------------------------

@pytest.mark.vm
def test_destination_killed_mid_precopy_keeps_the_last_known_stats(image) -> None:
    seen: dict[str, object] = {}

    def kill_destination(poll: Poll, run: MigrationRun) -> None:
        if not seen and poll.transferred_bytes > 8 * MiB:
            assert run.src.shm_path is not None and run.src.run_dir is not None
            seen["modes"] = (os.stat(run.src.shm_path).st_mode & 0o777, os.stat(run.src.run_dir).st_mode & 0o777)
            seen["sent"] = poll.transferred_bytes
            assert run.dst.pid is not None
            os.kill(run.dst.pid, signal.SIGKILL)

    rec = run_migration(_scenario(), MigrateOptions(image=image, warmup_s=1.0, on_poll=kill_destination))
    assert seen["modes"] == (0o600, 0o700)  # guest RAM and the run dir are the runner's alone
    assert rec.outcome.startswith("failed: destination QEMU exited"), rec.outcome
    assert rec.guest_side == "source" and rec.guest_continues
    # not zeros: the last answer that had RAM figures
    assert rec.stats.bytes_sent >= seen["sent"] and rec.stats.total_time_s and rec.stats.dirty_sync_count >= 1
    assert _leftovers_of(os.getpid()) == NOTHING


@pytest.mark.vm
def test_link_cut_mid_precopy_is_a_lost_link(image) -> None:
    cut: list[float] = []

    def cut_link(poll: Poll, run: MigrationRun) -> None:
        if not cut and poll.transferred_bytes > 8 * MiB:
            run.link.cut()
            cut.append(poll.t_s)

    rec = run_migration(_scenario(), MigrateOptions(image=image, warmup_s=1.0, on_poll=cut_link))
    assert cut
    assert rec.outcome.startswith(OUTCOME_LINK_LOST), rec.outcome
    assert "down" in rec.outcome  # the evidence: the ends the cut took down
    assert rec.guest_side == "source" and rec.guest_continues  # pre-copy cancelled, the source runs on
    assert rec.stats.bytes_sent > 8 * MiB and rec.stats.total_time_s
    # found well before the 40 s timeout would have cancelled it as "did not converge"
    assert rec.timeline[-1].t_s < 40.0
    assert _leftovers_of(os.getpid()) == NOTHING


@pytest.mark.vm
def test_sigterm_to_migrate_writes_the_record_and_leaves_nothing(image, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    argv = [sys.executable, "-m", "harness.cli", "migrate", "--workload", SPEC, "--memory", "256MiB",
            "--bandwidth", "100Mbit/s", "--rtt", "4ms", "--timeout", "40s", "--warmup", "1s", "-o", str(out),
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        # The delay forwarder starts right before the migrate command: then pre-copy is under way.
        deadline = time.monotonic() + 600
        while not any(marker == "harness.link" for _, marker in runstate.holdings(proc.pid)["pids"]):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the migration never started"
            time.sleep(0.2)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in stderr.decode(), stderr
    rec = RunRecord.load(out)
    assert rec.outcome == OUTCOME_INTERRUPTED
    assert rec.stats.bytes_sent > 0 and rec.timeline  # how far it got
    assert any("SIGTERM" in text for _, text in rec.events)
    assert _leftovers_of(proc.pid) == NOTHING


@pytest.mark.vm
def test_a_differing_page_fails_the_run(image, monkeypatch) -> None:
    from harness import migrate

    real = migrate.compare_memory

    def corrupt_then_compare(src_path: Path, dst_path: Path, *args: object, **kw: object):
        with open(dst_path, "r+b") as f:  # the destination is paused: flip one byte of page 1000
            f.seek(1000 * 4096 + 17)
            b = f.read(1)
            f.seek(1000 * 4096 + 17)
            f.write(bytes([b[0] ^ 0xFF]))
        return real(src_path, dst_path, *args, **kw)

    monkeypatch.setattr(migrate, "compare_memory", corrupt_then_compare)
    # verification is on by default for a small pre-copy guest
    rec = run_migration(_scenario(**{"link.bandwidth_Bps": "400Mbit/s"}), MigrateOptions(image=image, warmup_s=0.5))
    assert rec.options["verify_memory"] is True and rec.options["verify_memory_default"] is True
    assert rec.memory_check is not None and rec.memory_check.pages_differing == 1
    assert rec.memory_check.first_differing == (1000,)
    assert rec.outcome.startswith("failed: memory differs: 1 of 65536 pages"), rec.outcome
    assert not rec.completed
    assert _leftovers_of(os.getpid()) == NOTHING


@pytest.mark.vm
def test_link_cut_after_the_postcopy_switch_is_a_lost_link(image) -> None:
    cut: list[float] = []

    def cut_link(poll: Poll, run: MigrationRun) -> None:
        if not cut and poll.status == "postcopy-active" and poll.transferred_bytes > 8 * MiB:
            run.link.cut()
            cut.append(poll.t_s)

    rec = run_migration(_scenario(**{"strategy.kind": "postcopy"}),
                        MigrateOptions(image=image, warmup_s=1.0, on_poll=cut_link))
    assert cut
    assert rec.outcome.startswith(OUTCOME_LINK_LOST) and rec.outcome.endswith("after the post-copy switch"), \
        rec.outcome
    assert rec.stats.bytes_sent > 8 * MiB  # the last known figures, not zeros
    assert rec.timeline[-1].t_s < 40.0  # not the timeout
    assert _leftovers_of(os.getpid()) == NOTHING
