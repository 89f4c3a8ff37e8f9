"""The shaped link: namespaces + veth + tbf + delay forwarder, and its cleanup."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import link as linkmod
from harness.link import ShapedLink
from sim.errors import ConfigError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _ours(link: ShapedLink) -> list[str]:
    return [ns for ns in linkmod.list_namespaces() if link.id in ns]


@pytest.mark.netns
@needs_root
def test_link_caps_the_rate_and_adds_the_delay() -> None:
    with ShapedLink(bandwidth_Bps=200e6 / 8, rtt_s=0.010) as link:
        assert sorted(_ours(link)) == sorted(link.namespaces)
        m = link.measure(seconds=2.0, pings=15)
        forwarders = [p.pid for p in link._forwarders.values()]
        assert forwarders
    # What holds however loaded the machine is: tbf never lets more than the
    # configured rate through, and no round trip is shorter than the added delay.
    # How close a busy host gets to the rate and RTT is a speed figure:
    # benchmarks/bench_link.py reports it.
    assert m.bytes_received > 0 and m.throughput_Bps <= 1.05 * 25e6, m
    assert m.rtt_min_s >= 0.009 and m.rtt_s >= m.rtt_min_s, m
    assert _ours(link) == []
    for pid in forwarders:
        assert not os.path.exists(f"/proc/{pid}"), f"forwarder {pid} survived"


@pytest.mark.netns
@needs_root
def test_sub_millisecond_delays_are_added_in_full() -> None:
    # A 1 ms RTT is 0.5 ms each way, below epoll's millisecond: the forwarder once aimed half a
    # millisecond early and so added nothing (0.17 ms measured). No round trip may be shorter than the delay.
    with ShapedLink(bandwidth_Bps=100e6 / 8, rtt_s=0.001) as link:
        m = link.measure(seconds=0.5, pings=15)
    assert m.rtt_min_s >= 0.001, m


@pytest.mark.netns
@needs_root
def test_zero_rtt_link_routes_without_forwarder() -> None:
    with ShapedLink(bandwidth_Bps=400e6 / 8, rtt_s=0.0) as link:
        assert link.forward(4444) == (linkmod.DST_IP, 4444)
        m = link.measure(seconds=2.0, pings=5)
        assert link._forwarders == {}
    assert m.bytes_received > 0 and m.throughput_Bps <= 1.05 * 50e6, m
    # No forwarder, so nothing adds delay; the RTT it gets is a speed figure (benchmarks/bench_link.py).


@pytest.mark.netns
@needs_root
def test_traffic_stays_inside_namespaces() -> None:
    with ShapedLink(bandwidth_Bps=10e6, rtt_s=0.002) as link:
        # No route out of the source namespace: only the link's own subnets.
        routes = subprocess.run(["ip", "-n", link.src_ns, "route"], capture_output=True, text=True).stdout
        assert "default" not in routes
        # Our addresses are not in the root namespace.
        root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert linkmod.SRC_IP not in root and linkmod.DST_IP not in root
        qdisc = subprocess.run(["tc", "-n", link.src_ns, "qdisc", "show", "dev", "eth0"],
                               capture_output=True, text=True).stdout
        assert "tbf" in qdisc and "80Mbit" in qdisc


@pytest.mark.netns
@needs_root
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_cleanup_on_failure_and_interrupt(exc: type[BaseException]) -> None:
    link = ShapedLink(bandwidth_Bps=10e6, rtt_s=0.004)
    with pytest.raises(exc), link:
        link.forward(4444)
        proc = link.run_in("dst", ["sleep", "60"])
        raise exc()
    assert _ours(link) == []
    assert proc.wait(timeout=60) != 0  # killed with its namespace (the timeout only guards a hang)


def test_bad_link_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ShapedLink(bandwidth_Bps=0)
    with pytest.raises(ConfigError):
        ShapedLink(bandwidth_Bps=1e6, rtt_s=-1)


@pytest.mark.netns
@needs_root
def test_cleanup_stale_removes_only_dead_owners() -> None:
    dead_pid = 2**22 - 3  # above pid_max defaults; no such process
    while os.path.exists(f"/proc/{dead_pid}"):
        dead_pid -= 1
    stale = f"miglab-src-{dead_pid}-abc123"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    ram = Path(f"/dev/shm/miglab-{dead_pid}-0badc0de")
    ram.write_bytes(b"\0" * 4096)
    live_ram = Path(f"/dev/shm/miglab-{os.getpid()}-keepme")
    live_ram.write_bytes(b"\0")
    try:
        with ShapedLink(bandwidth_Bps=10e6) as link:
            removed = linkmod.cleanup_stale()
            assert stale in removed and str(ram) in removed
            assert not ram.exists() and live_ram.exists()
            assert sorted(_ours(link)) == sorted(link.namespaces)
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        ram.unlink(missing_ok=True)
        live_ram.unlink(missing_ok=True)
