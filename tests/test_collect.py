"""The content-diff collector: diff kernel, accuracy on a real guest, partial traces, CLI errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.collect import changed_pages, collect, zero_page_fraction
from harness.vm import leftovers
from sim import trace as trace_fmt

MiB = 1 << 20


def test_changed_pages_finds_exactly_the_modified_pages():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, 300 * 4096, dtype=np.uint8)
    b = a.copy()
    touched = np.array([0, 7, 8, 150, 299])
    for p in touched:
        b[p * 4096 + rng.integers(0, 4096)] ^= 0x5A  # one byte anywhere in the page
    b[42 * 4096 + 100] = a[42 * 4096 + 100]  # a "write" of the same value: the documented blind spot
    got = changed_pages(a, b, chunk_pages=64)  # chunk boundaries inside the range
    np.testing.assert_array_equal(got, touched)
    assert changed_pages(a, a).size == 0


def test_zero_page_fraction():
    ram = np.zeros(10 * 4096, dtype=np.uint8)
    ram[3 * 4096 + 4095] = 1
    ram[5 * 4096] = 9
    assert zero_page_fraction(ram) == pytest.approx(0.8)


def _miglab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, words", [
    (["--workload", "spiral:rate=5"], "unknown pattern"),
    (["--workload", "uniform:rate=5000", "--memory", "12 parsecs"], "--memory"),
    (["--workload", "uniform:rate=5000", "--interval", "soon"], "--interval"),
    (["--workload", "hotcold:rate=5000"], "hot=SIZE"),
])
def test_collect_cli_bad_input_is_one_line_exit_2(tmp_path, args, words):
    out = tmp_path / "t.npz"
    p = _miglab("trace", "collect", *args, "-o", str(out))
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_content_diff_collection_that_cannot_fit_is_refused_before_booting(tmp_path):
    from harness.preflight import PreflightError

    # the shm file (whole guest) plus two host snapshots: 3 x 16 GiB cannot fit a 24 GiB host
    with pytest.raises(PreflightError) as e:
        collect("idle", memory_bytes=16 << 30, interval_s=0.5, seconds=1, out=tmp_path / "t.npz")
    assert str(e.value).startswith("pre-flight: guest 'collect'") and "\n" not in str(e.value)
    assert "/dev/shm" in str(e.value)
    assert not (tmp_path / "t.npz").exists()
    assert leftovers() == {"shm": [], "qemu": []}


@pytest.mark.vm
def test_collector_dirty_count_matches_configured_rate(tmp_path, guest_image):
    # uniform visits each page of the span once per cycle (64 MiB / 2000 pages/s = 8 s > the run), so every
    # write lands on a page not yet written: content-diff must count ~rate x interval pages per interval,
    # plus the guest kernel's own background writes.
    rate, interval = 2000, 0.5
    out = tmp_path / "u.npz"
    t = collect(f"uniform:rate={rate},span=64MiB", memory_bytes=256 * MiB, interval_s=interval, seconds=3.0,
                out=out, progress=False, dirty_rate_calc_s=2.0)
    assert t.n_intervals == 6 and t.meta["complete"] is True and t.n_pages == 256 * MiB // 4096
    # Against the rate the guest achieved, not the configured one: a loaded host slows the TCG guest, and the
    # collector must count what the guest really wrote (on a quiet host the two agree within 2 %).
    m = t.meta
    achieved = m["workload_achieved_rate"]
    assert 0 < achieved <= rate * 1.02, achieved  # paced: never faster than configured
    per_s = t.counts / np.diff(np.column_stack([t.t_start_s, t.t_end_s]), axis=1)[:, 0]
    assert np.median(per_s) == pytest.approx(achieved, rel=0.10), (t.counts, achieved)
    assert per_s.mean() == pytest.approx(achieved, rel=0.10), (t.counts, achieved)
    # snapshots on the interval grid: contiguous, and none before its time (a late one is only load)
    assert np.array_equal(t.t_start_s[1:], t.t_end_s[:-1]) and t.t_start_s[0] == 0.0
    assert (t.t_end_s >= interval * np.arange(1, t.n_intervals + 1) - 1e-6).all(), t.t_end_s
    assert m["collector"] == "content-diff" and "unchanged" in m["blind_spot"]
    assert m["hypervisor"] == "qemu" and int(m["qemu_version"].split(".")[0]) >= 9
    assert 0.0 < m["zero_page_fraction"] < 1.0 and 0.0 < m["zero_page_fraction_end"] < 1.0
    assert m["qemu_dirty_rate_check"]["qemu_dirty_rate_MiBps"] is not None
    assert trace_fmt.load(out).sha256 == t.sha256


@pytest.mark.vm
def test_interrupted_collector_leaves_a_valid_partial_trace(tmp_path, guest_image):
    out = tmp_path / "partial.npz"

    def ctrl_c_after_three(k, pages):
        if k == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect("hotcold:hot=16MiB,rate=1000,total=48MiB", memory_bytes=256 * MiB, interval_s=0.25, seconds=30, out=out,
                progress=False, on_interval=ctrl_c_after_three)
    t = trace_fmt.load(out)
    assert t.n_intervals == 3
    assert t.meta["complete"] is False and t.meta["stopped_reason"] == "interrupted"
    assert (t.counts > 0).all()
    assert not leftovers()["qemu"]


@pytest.mark.vm
def test_qemu_crash_mid_collection_keeps_complete_intervals(tmp_path, guest_image):
    out = tmp_path / "crash.npz"

    def kill_qemu(k, pages):
        if k == 2:
            for entry in leftovers()["qemu"]:
                os.kill(int(entry.split(":")[0]), signal.SIGKILL)
            time.sleep(0.5)  # let it die before the next snapshot

    with pytest.raises(Exception, match="QEMU exited"):
        collect("seq:rate=500,total=32MiB", memory_bytes=256 * MiB, interval_s=0.25, seconds=30, out=out, progress=False,
                on_interval=kill_qemu)
    t = trace_fmt.load(out)
    assert t.n_intervals == 2 and t.meta["complete"] is False
    assert t.meta["stopped_reason"].startswith("error: VMError")


@pytest.mark.vm
def test_redis_workload_runs_and_reports(tmp_path, guest_image):
    out = tmp_path / "redis.npz"
    t = collect("redis:keys=20000,value=512", memory_bytes=256 * MiB, interval_s=0.5, seconds=2.0, out=out,
                progress=False, dirty_rate_calc_s=1.0)
    assert t.meta["workload_pattern"] == "redis" and t.meta["workload_achieved_rate_unit"] == "ops/s"
    assert t.meta["workload_achieved_rate"] > 0  # redis-benchmark really drives the server (ops/s is speed)
    assert (t.counts > 50).all()  # a busy server rewrites its pages every interval
