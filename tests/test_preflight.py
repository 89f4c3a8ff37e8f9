"""The pre-flight resident-memory estimate and the RAM backing choice (pure; no VM boots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import preflight
from harness.guest import GuestImage, parse_workload, workload_footprint_bytes
from harness.preflight import (
    GiB,
    MiB,
    PreflightError,
    check_fits,
    choose_backing,
    estimate_side,
    migration_sides,
)

HOST_AVAILABLE = 21 * GiB  # what this 24 GiB host typically has free


def test_an_idle_32GiB_guest_costs_its_page_array_not_its_size():
    src, dst = migration_sides(32 * GiB, 0, "anon")
    assert src.page_array_bytes == 512 * MiB  # 64 bytes per 4 KiB page
    # measured on this kind of host: 0.97 GB source, 0.73 GB destination resident
    assert 0.7 * GiB < src.total_bytes < 1.6 * GiB
    assert check_fits((src, dst), HOST_AVAILABLE, "a 32 GiB migration") == src.total_bytes + dst.total_bytes


def test_a_128GiB_guest_fits_when_it_touches_little():
    wl = parse_workload("hotcold:hot=1GiB,rate=2000,fill=0.02", 128 * GiB)
    sides = migration_sides(128 * GiB, workload_footprint_bytes(wl, 128 * GiB), "anon")
    assert check_fits(sides, HOST_AVAILABLE, "a 128 GiB migration") < 14 * GiB


def test_a_guest_filled_past_the_host_is_refused_in_one_line():
    wl = parse_workload("uniform:rate=1000", 64 * GiB)  # no fill=: miglab-load takes all free memory
    sides = migration_sides(64 * GiB, workload_footprint_bytes(wl, 64 * GiB), "anon")
    with pytest.raises(PreflightError) as e:
        check_fits(sides, HOST_AVAILABLE, "a 64 GiB migration")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("pre-flight: a 64 GiB migration needs about")
    assert "21.0 GiB available" in msg and "fill=" in msg


def test_shm_backing_is_resident_in_full():
    s = estimate_side("collector", 4 * GiB, 0, "shm", host_bytes=8 * GiB)
    assert s.guest_bytes == 4 * GiB and s.total_bytes > 12 * GiB
    with pytest.raises(PreflightError, match="/dev/shm"):
        check_fits((s,), 12 * GiB, "a 4 GiB content-diff collection")


def test_the_margin_is_kept_free():
    s = estimate_side("source", 1 * GiB, 0, "anon")
    need = s.total_bytes
    assert check_fits((s,), need + preflight.margin_bytes(need), "x") == need
    with pytest.raises(PreflightError):
        check_fits((s,), need + preflight.margin_bytes(need) - 1, "x")


def test_backing_choice():
    assert choose_backing(512 * MiB) == "shm"  # small guests as before: host-readable RAM
    assert choose_backing(preflight.SHM_AUTO_MAX_BYTES) == "shm"
    assert choose_backing(4 * GiB) == "anon"
    assert choose_backing(512 * MiB, "anon") == "anon"
    with pytest.raises(preflight.ConfigError, match="RAM backing"):
        choose_backing(512 * MiB, "hugepages")


def test_verify_memory_needs_shm():
    with pytest.raises(PreflightError, match="verify-memory"):
        preflight.check_migration(4 * GiB, None, verify_memory=True)


def test_mem_available_is_read_from_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    assert preflight.mem_available_bytes(f) == 20000000 * 1024
    f.write_text("MemTotal: 1 kB\n")
    with pytest.raises(preflight.ConfigError, match="MemAvailable"):
        preflight.mem_available_bytes(f)


def test_vm_command_line_uses_anonymous_ram_for_big_guests(tmp_path):
    from harness.vm import VM, VMConfig

    image = GuestImage(Path("/k"), Path("/i"), "6.1", "key", {})
    big = VM(VMConfig(memory_bytes=32 * GiB, workload="idle"), image)
    big.run_dir = tmp_path
    argv = big.build_argv()
    assert "memory-backend-ram,id=ram0,size=32768M,reserve=off" in argv and big.shm_path is None
    small = VM(VMConfig(memory_bytes=512 * MiB), image)
    small.run_dir, small.shm_path = tmp_path, Path("/dev/shm/miglab-test-x")
    assert any(a.startswith("memory-backend-file,id=ram0,size=512M,mem-path=/dev/shm/") for a in small.build_argv())
