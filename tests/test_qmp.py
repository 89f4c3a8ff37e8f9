"""The QMP adapter and the VM launcher against real QEMU (plus the no-VM error paths)."""

from __future__ import annotations

import os
import stat
import time

import pytest

from harness.qmp import QMP, QMPCommandError, QMPConnectError, QMPDisconnectedError, QMPError
from harness.vm import VM, VMConfig, VMError, find_qemu, leftovers
from sim.errors import MiglabError

MiB = 1 << 20


def test_qmp_errors_are_miglab_errors():
    for cls in (QMPCommandError, QMPConnectError, QMPDisconnectedError):
        assert issubclass(cls, QMPError) and issubclass(cls, MiglabError)


@pytest.mark.timeout(30)  # fails at its connect timeout instead of retrying for ever (a scaled hang guard)
def test_connect_to_missing_socket_fails_fast(tmp_path):
    with pytest.raises(QMPConnectError, match="cannot connect"):
        QMP(tmp_path / "nope.sock", connect_timeout_s=0.5)


def test_old_qemu_is_refused_with_a_pointer_to_install_deps(tmp_path):
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)'\n")
    fake.chmod(0o755)
    with pytest.raises(VMError, match=r"QEMU 7\.2\.0.*install-deps\.sh"):
        find_qemu(str(fake))


@pytest.mark.vm
def test_vm_runs_qmp_commands_and_cleans_up(guest_image, timeout_scale_factor):
    with VM(VMConfig(memory_bytes=128 * MiB, workload="idle", name="qmptest")) as vm:
        run_dir, shm = vm.run_dir, vm.shm_path
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        assert shm.exists() and shm.name.startswith(f"miglab-{os.getpid()}-")
        assert shm.stat().st_size == 128 * MiB
        vm.wait_for_console(r"^miglab-idle t=", timeout_s=90 * timeout_scale_factor)
        q = vm.qmp
        assert q.status() == "running" and int(q.query_version().split(".")[0]) >= 9
        q.stop()
        assert q.query_status() == {**q.query_status(), "running": False, "status": "paused"}
        q.cont()
        assert q.status() == "running"
        q.migrate_set_capabilities({"auto-converge": True, "xbzrle": True})
        caps = q.query_migrate_capabilities()
        assert caps["auto-converge"] and caps["xbzrle"] and not caps["postcopy-ram"]
        q.migrate_set_parameters(max_bandwidth=50 * MiB, downtime_limit=250)
        params = q.query_migrate_parameters()
        assert params["max-bandwidth"] == 50 * MiB and params["downtime-limit"] == 250
        assert q.query_migrate() == {}  # nothing migrated yet
        with pytest.raises(QMPCommandError) as e:
            q.execute("no-such-command")
        assert e.value.error_class == "CommandNotFound"
        with pytest.raises(QMPCommandError):
            q.migrate_set_parameters(downtime_limit=-1)
        r = q.measure_dirty_rate(1)
        assert r["status"] == "measured" and r["dirty-rate"] >= 0
        # the RAM file is the guest's memory: the kernel's banner is in there
        assert b"Linux version" in vm.read_ram().tobytes()
        q.quit()
        vm.proc.wait(10)
        with pytest.raises(QMPDisconnectedError):
            q.status()
    assert not run_dir.exists() and not shm.exists()
    assert leftovers() == {"shm": [], "qemu": []}


@pytest.mark.vm
def test_vm_cleans_up_when_the_owner_raises(guest_image):
    with pytest.raises(RuntimeError, match="boom"):
        with VM(VMConfig(memory_bytes=128 * MiB, workload="idle", name="boom")) as vm:
            pid, shm = vm.pid, vm.shm_path
            raise RuntimeError("boom")
    assert not shm.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.vm
def test_vm_that_fails_to_start_reports_qemu_error(guest_image):
    with pytest.raises(VMError, match="QEMU exited"):
        with VM(VMConfig(memory_bytes=128 * MiB, extra_args=("-device", "no-such-device"), name="bad")):
            pass


@pytest.mark.vm
def test_local_precopy_migration_keeps_the_workload_running(tmp_path, guest_image, timeout_scale_factor):
    """The API the migration runner builds on: source + ``-incoming defer`` destination, migrate over a socket."""
    spec = "hotcold:hot=8MiB,rate=1000,total=32MiB"
    sock = tmp_path / "mig.sock"
    with VM(VMConfig(memory_bytes=128 * MiB, workload=spec, name="src")) as src, \
            VM(VMConfig(memory_bytes=128 * MiB, workload=spec, name="dst", incoming=True)) as dst:
        src.wait_for_workload(90 * timeout_scale_factor)
        assert dst.qmp.status() == "inmigrate"
        dst.qmp.migrate_incoming(f"unix:{sock}")
        src.qmp.migrate_set_parameters(max_bandwidth=512 * MiB)
        src.qmp.migrate(f"unix:{sock}")
        deadline = time.monotonic() + 60 * timeout_scale_factor
        while (info := src.qmp.query_migrate())["status"] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, info
            time.sleep(0.1)
        assert info["status"] == "completed", info
        assert info["ram"]["total"] >= 128 * MiB and info["downtime"] >= 0
        assert src.qmp.status() == "postmigrate"
        deadline = time.monotonic() + 10 * timeout_scale_factor
        while dst.qmp.status() != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # the destination's console starts empty: progress lines there mean the guest continued after the move
        line = dst.wait_for_workload(30 * timeout_scale_factor)
        assert line.startswith("miglab-load t=")
