"""bhyve migration runner against fake ssh/bhyve/bhyvectl/sockstat/netstat/ping (tests/fakes/).

The fake ssh really re-splits the joined command line as a remote shell would,
and runs it in a per-host directory of the test's state dir, so "hostA" and
"hostB" each have their own ``vmm/NAME`` files. Every fake records its argv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.bhyve import runner as rn
from harness.bhyve.vmmdev import VmNameError
from harness.record import RunRecord
from sim.errors import ConfigError
from sim.scenario import Scenario

REPO = Path(__file__).resolve().parents[1]
FAKES = REPO / "tests" / "fakes"
VM = "testvm"
BHYVE_ARGS = ("-c", "2", "-m", "1G", "-S", "-s", "0,hostbridge", "-s", "3,virtio-blk,/vm/disk one.img",
              "-l", "com1,/dev/nmdm0A")


@pytest.fixture
def fake(tmp_path):
    state = tmp_path / "state"
    (state / "hostA" / "vmm").mkdir(parents=True)
    (state / "hostB").mkdir()
    (state / "hostA" / "vmm" / VM).touch()
    env = {**os.environ, "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}", "MIGLAB_FAKE_STATE": str(state)}

    class Fake:
        def __init__(self):
            self.state, self.env = state, env

        def modes(self, **m):
            (state / "modes.json").write_text(json.dumps(m))

        def calls(self, prog=None, host=None):
            log = state / "argv.log"
            rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            return [r for r in rows if (prog is None or r["prog"] == prog) and (host is None or r["host"] == host)]

        def pids(self):
            return [int(p) for f in state.glob("*.pids") for p in f.read_text().split()]

        def alive(self):
            out = []
            for pid in self.pids():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                out.append(pid)
            return out

    f = Fake()
    yield f
    for pid in f.alive():  # never leave a fake behind, even when an assertion failed
        os.kill(pid, 9)


def cfg(**kw) -> rn.MigrateConfig:
    base = dict(vm=VM, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_prefix=("ssh", "root@hostA"),
                dst_prefix=("ssh", "-o", "BatchMode=yes", "root@hostB"), bhyve_args=BHYVE_ARGS, vmm_dir="vmm",
                src_iface="em0", dst_iface="em0", timeout_s=20, dst_ready_timeout_s=5, poll_interval_s=0.02,
                probe=rn.parse_probe("ping:10.0.0.5,interval=10ms"))
    base.update(kw)
    return rn.MigrateConfig(**base)


def test_live_migration_completes_with_exact_argv_and_measurements(fake):
    fake.modes()
    rec = rn.run_migration(cfg(), scenario=Scenario(name="s"), env=fake.env)
    assert rec.outcome == "completed", rec.events
    assert rec.hypervisor == "bhyve" and rec.completed and rec.scenario.name == "s"
    # Destination: bhyve <same options> -R SRC_IP,PORT NAME, through ssh with its options kept.
    (b,) = fake.calls("bhyve")
    assert b["host"] == "hostB"
    assert b["argv"] == [*BHYVE_ARGS, "-R", "10.0.0.1,24983", VM]  # the space in "disk one.img" survived ssh
    # Source: bhyvectl --vm=NAME --migrate-live=DST_IP,PORT (bhyvectl reads the VM only from --vm=).
    migr = [c for c in fake.calls("bhyvectl") if any(a.startswith("--migrate") for a in c["argv"])]
    assert [(c["host"], c["argv"]) for c in migr] == [("hostA", [f"--vm={VM}", "--migrate-live=10.0.0.2,24983"])]
    ssh_hosts = [c["argv"][0] if c["argv"][0] != "-o" else c["argv"][2] for c in fake.calls("ssh")]
    assert set(ssh_hosts) == {"root@hostA", "root@hostB"}
    # Measured from outside.
    s, o = rec.stats, rec.options
    assert s.bytes_sent == 123456789 and o["src_obytes"] == 123456789 and o["dst_ibytes"] == 123456789
    assert s.downtime_s == pytest.approx(0.05)  # echo requests 10..14 unanswered, 10 ms apart
    assert o["probe"]["recovered"] is True and o["probe"]["resolution_s"] == 0.01 and rec.guest_continues
    assert 0.3 <= s.total_time_s < 10 and o["command_s"] <= s.total_time_s + 0.1
    assert s.dirty_sync_count == 4 and o["source_wired"] is True
    assert rec.host.kernel and rec.guest_side == "destination"
    events = [text.split()[0] for _, text in rec.events]
    assert events.index("destination_listening") < events.index("migrate_command_started") \
        < events.index("source_vm_gone") < events.index("destination_destroyed")
    assert not (fake.state / "hostA" / "vmm" / VM).exists()
    assert not fake.alive()
    back = RunRecord.from_dict(json.loads(rec.to_json()))  # the shared schema round-trips
    assert back.stats == rec.stats and back.hypervisor == "bhyve"


def test_warm_migration_uses_migrate_flag(fake):
    fake.modes()
    rec = rn.run_migration(cfg(warm=True, probe=rn.Probe()), env=fake.env)
    assert rec.outcome == "completed"
    migr = [c["argv"] for c in fake.calls("bhyvectl") if any(a.startswith("--migrate") for a in c["argv"])]
    assert migr == [[f"--vm={VM}", "--migrate=10.0.0.2,24983"]]
    assert rec.stats.downtime_s is None and rec.stats.dirty_sync_count == 0


def test_bhyvectl_failure_is_a_failed_record_with_the_reason(fake):
    fake.modes(bhyvectl="fail")
    rec = rn.run_migration(cfg(), env=fake.env)
    assert rec.outcome.startswith("failed: bhyvectl exited 1:")
    assert "Could not connect to the remote host" in rec.outcome
    assert "\n" not in rec.outcome and rec.guest_side == "source"
    assert (fake.state / "hostA" / "vmm" / VM).exists()  # the source VM is untouched
    assert any("--destroy" in c["argv"] for c in fake.calls("bhyvectl", "hostB"))
    assert not fake.alive()


def test_destination_failure_is_reported(fake):
    fake.modes(bhyve="fail")
    rec = rn.run_migration(cfg(), env=fake.env)
    assert rec.outcome.startswith("failed: destination bhyve exited 3")
    assert "Couldn't recv dirty pages" in rec.outcome
    assert not fake.alive()


@pytest.mark.timeout(60)  # the hung fake sleeps an hour: returning at all means it was killed, not waited for
def test_hung_bhyvectl_is_killed_at_the_timeout(fake):
    fake.modes(bhyvectl="hang")
    rec = rn.run_migration(cfg(timeout_s=1.0), env=fake.env)
    assert rec.outcome == "failed: timeout after 1 s: bhyvectl had not returned"
    assert fake.pids() and not fake.alive()  # the hung bhyvectl and the destination bhyve are gone


def test_destination_that_never_listens(fake):
    fake.modes(bhyve="hang")
    rec = rn.run_migration(cfg(dst_ready_timeout_s=0.5), env=fake.env)
    assert rec.outcome == "failed: destination bhyve was not listening on port 24983 after 0.5 s"
    assert not [c for c in fake.calls("bhyvectl", "hostA") if "--get-memmap" not in c["argv"]]  # nothing was sent
    assert not fake.alive()


def test_missing_source_vm(fake):
    (fake.state / "hostA" / "vmm" / VM).unlink()
    rec = rn.run_migration(cfg(), env=fake.env)
    assert rec.outcome == f"failed: VM '{VM}' is not running on the source (vmm/{VM} does not exist)"
    assert not fake.calls("bhyve")


def test_unwired_source_memory_is_refused(fake):
    fake.modes(memmap="unwired")
    rec = rn.run_migration(cfg(), env=fake.env)
    assert rec.outcome.startswith(f"failed: VM '{VM}' memory is not wired on the source (start it with bhyve -S)")
    assert rec.options["source_wired"] is False and not fake.calls("bhyve")


def test_keep_destination_leaves_the_guest_running(fake):
    fake.modes()
    rec = rn.run_migration(cfg(keep_destination=True, probe=rn.Probe()), env=fake.env)
    assert rec.outcome == "completed"
    pid = rec.options["destination_pid"]
    os.kill(pid, 0)  # still running
    assert not any("--destroy" in c["argv"] for c in fake.calls("bhyvectl"))
    os.kill(pid, 15)
    os.waitpid(pid, 0)


# --------------------------------------------------------------------------- configuration and parsing
@pytest.mark.parametrize("kw,exc,needle", [
    (dict(vm="bad/name"), VmNameError, "--vm"),
    (dict(dst_ip="fe80::1"), ConfigError, "IPv4"),
    (dict(src_ip="hostA"), ConfigError, "--src-ip"),
    (dict(port=70000), ConfigError, "--port"),
    (dict(timeout_s=0), ConfigError, "--timeout"),
    (dict(bhyve_args=("-m", "1G", "-R", "x")), ConfigError, "-R"),
])
def test_bad_configuration_is_a_one_line_error(kw, exc, needle):
    with pytest.raises(exc) as ei:
        rn.run_migration(cfg(**kw))
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_remote_quotes_only_for_ssh():
    argv = ["bhyve", "-s", "3,virtio-blk,/vm/a b.img", "vm"]
    assert rn.remote(["ssh", "h"], argv) == ["ssh", "h", "bhyve", "-s", "'3,virtio-blk,/vm/a b.img'", "vm"]
    assert rn.remote(["/usr/bin/ssh", "-p", "22", "h"], ["x;y"]) == ["/usr/bin/ssh", "-p", "22", "h", "'x;y'"]
    assert rn.remote(["doas"], argv) == ["doas", *argv]
    assert rn.remote([], argv) == argv


def test_parse_probe():
    assert rn.parse_probe("none") == rn.Probe()
    assert rn.parse_probe("ping:10.1.2.3") == rn.Probe("ping", target="10.1.2.3", interval_s=0.01)
    assert rn.parse_probe("ping:10.1.2.3,interval=20ms").interval_s == pytest.approx(0.02)
    assert rn.parse_probe("lines:cu -l /dev/nmdm0B").argv == ("cu", "-l", "/dev/nmdm0B")
    for bad in ("ping:guest", "ping:10.0.0.1,every=1s", "lines:", "icmp:10.0.0.1", "ping:10.0.0.1,interval=2s"):
        with pytest.raises(ConfigError):
            rn.parse_probe(bad)


def test_parse_netstat_counts_columns_from_the_right():
    text = ("Name    Mtu Network       Address              Ipkts Ierrs Idrop     Ibytes    Opkts Oerrs     Obytes  Coll\n"
            "lo0   16384 <Link#2>                          42     0     0       4200       42     0       4200     0\n"
            "lo0       - 127.0.0.0/8   127.0.0.1            42     -     -       4200       42     -       4200     -\n")
    assert rn.parse_netstat_bytes(text) == (4200, 4200)
    text2 = text.replace("lo0   16384 <Link#2>                          42     0     0       4200       42     0       4200",
                         "em0    1500 <Link#1>      58:9c:fc:00:00:01   10     0     0        111       20     0        222")
    assert rn.parse_netstat_bytes(text2) == (111, 222)
    with pytest.raises(rn.BhyveError):
        rn.parse_netstat_bytes("netstat: interface em9 does not exist\n")


def test_ping_downtime_from_sequence_numbers():
    lines = [f"64 bytes from 10.0.0.5: icmp_seq={i} ttl=64 time=0.1 ms" for i in [0, 1, 2, 3, 9, 10, 11]]
    d = rn.ping_downtime([*lines, "12 packets transmitted, 7 packets received"], 0.01)
    assert d["downtime_s"] == pytest.approx(0.05) and d["recovered"] is True
    d = rn.ping_downtime([*lines, "40 packets transmitted, 7 packets received"], 0.01)
    assert d["recovered"] is False and d["downtime_s"] == pytest.approx(0.28)  # the guest never came back
    assert rn.ping_downtime([], 0.01)["downtime_s"] is None


def test_lines_downtime_is_the_largest_arrival_gap_in_the_window():
    d = rn.lines_downtime([0.0, 0.1, 0.2, 0.9, 1.0, 5.0], 0.05, 1.5)
    assert d["downtime_s"] == pytest.approx(0.7) and d["lines"] == 4



def test_bytes_moved_prefers_the_sources_output_counter():
    both = rn.bytes_moved(((10, 100), (50, 7)), ((20, 900), (650, 9)))
    assert both == {"src_obytes": 800, "dst_ibytes": 600, "bytes_sent": 800}
    assert rn.bytes_moved((None, (50, 7)), (None, (650, 9))) == {"dst_ibytes": 600, "bytes_sent": 600}
    assert rn.bytes_moved((None, None), (None, None)) == {"bytes_sent": None}  # no interface given

# --------------------------------------------------------------------------- CLI
def test_cli_migrate_writes_a_record(fake, tmp_path):
    fake.modes()
    out = tmp_path / "results" / "run.json"
    out.parent.mkdir()  # an -o FILE's directory must exist
    cp = subprocess.run(
        [sys.executable, "-m", "harness.bhyve", "migrate", "--vm", VM, "--src-prefix", "ssh root@hostA",
         "--dst-prefix", "ssh root@hostB", "--src-ip", "10.0.0.1", "--dst-ip", "10.0.0.2", "--vmm-dir", "vmm",
         "--bhyve-args", "-c 2 -m 1G -S", "--probe", "ping:10.0.0.5", "--src-iface", "em0", "--memory", "1GiB",
         "--workload", "uniform:rate=1000", "--timeout", "20s", "--poll-interval", "20ms", "-o", str(out)],
        capture_output=True, text=True, cwd=REPO, env={**fake.env, "PYTHONPATH": str(REPO)}, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert "completed" in cp.stdout
    rec = RunRecord.load(out)
    assert rec.outcome == "completed" and rec.hypervisor == "bhyve"
    assert rec.scenario.strategy.stop_rule == "bhyve" and rec.scenario.strategy.kind == "precopy"
    assert rec.scenario.workload.memory_bytes == 1 << 30 and rec.scenario.workload.spec == "uniform:rate=1000"
    assert rec.options["config"]["bhyve_args"] == ["-c", "2", "-m", "1G", "-S"]
    assert not fake.alive()


def test_cli_migrate_failure_exits_1_and_bad_flags_exit_2(fake, tmp_path):
    fake.modes(bhyvectl="fail")
    base = [sys.executable, "-m", "harness.bhyve", "migrate", "--vm", VM, "--src-prefix", "ssh root@hostA",
            "--dst-prefix", "ssh root@hostB", "--src-ip", "10.0.0.1", "--vmm-dir", "vmm", "--timeout", "20s"]
    env = {**fake.env, "PYTHONPATH": str(REPO)}
    cp = subprocess.run([*base, "--dst-ip", "10.0.0.2"], capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=120)
    assert cp.returncode == 1 and "failed: bhyvectl exited 1" in cp.stdout
    cp = subprocess.run([*base, "--dst-ip", "::1"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "IPv4" in cp.stderr
    assert not fake.alive()
