"""A shaped network link between two private network namespaces.

Layout (all three namespaces are created here and deleted on exit)::

    miglab-src-<id>                 miglab-mid-<id>                     miglab-dst-<id>
    eth0 10.199.1.1 ── tbf ──▶ to-src 10.199.1.2   to-dst 10.199.2.2 ◀── tbf ── eth0 10.199.2.1
                                   └── delay forwarder (rtt/2 each way) ──┘

* **Rate** is a ``tbf`` qdisc on the egress of each end's ``eth0`` (one per
  direction), so the bottleneck sits *before* the delay, as on a real link
  where the sender serialises at the line rate and the bits then propagate.
* **Delay**: this kernel has no ``netem``, so one-way delay is added by a small
  user-space TCP forwarder running in the middle namespace. It reads whatever
  arrives, stamps it, and writes it on ``rtt/2`` later, in each direction. The
  output is the input shifted in time, so throughput is preserved; it holds up
  to ``max(4 MiB, 4 x rate x delay)`` bytes per direction before it stops
  reading (back-pressure). A consequence worth knowing: TCP's own round trip
  on each hop is ~0, so window growth never limits throughput (as with a
  well-tuned real WAN TCP stack), while application-level round trips
  (post-copy page requests, the return path) see the full RTT.
* With ``rtt_s == 0`` no forwarder runs; the middle namespace simply routes.

Addresses exist only inside these namespaces: no veth end is ever in the root
namespace, and nothing has a default route, so traffic cannot leave.

Standalone use (measures what the link really achieves)::

    miglab harness link --bandwidth 200Mbit/s --rtt 10ms

``python -m harness.link forward|sink|probe`` are the link's own helper
processes, started inside the namespaces; they are not meant to be typed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harness import runstate
from sim.errors import ConfigError, MiglabError
from sim.interrupt import sigterm_as_interrupt
from sim.units import format_duration

log = logging.getLogger(__name__)

NETNS_PREFIX = "miglab-"
SRC_IP = "10.199.1.1"
MID_SRC_IP = "10.199.1.2"
MID_DST_IP = "10.199.2.2"
DST_IP = "10.199.2.1"
PREFIX_LEN = 24
CHUNK_BYTES = 256 * 1024
MIN_FORWARD_BUFFER_BYTES = 4 * 2**20
READY_TIMEOUT_S = 10.0
FORWARDER_RT_PRIORITY = 10
TIMER_CENTRING_S = 0.0005
PROBE_THROUGHPUT_PORT = 5201
PROBE_ECHO_PORT = 5202


class LinkError(MiglabError):
    """The link could not be built (no root, no iproute2, no namespaces...)."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an external command (argv list, never a shell); failures become LinkError."""
    log.debug("run %s", " ".join(argv))
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LinkError("command not found (install iproute2)", where=argv[0]) from None
    if check and proc.returncode != 0:
        raise LinkError(proc.stderr.strip() or f"exit {proc.returncode}", where=" ".join(argv))
    return proc


def netns_exec(ns: str) -> list[str]:
    """argv prefix that runs a command inside namespace ``ns`` (``ip netns exec`` execs, so pids stay)."""
    return ["ip", "netns", "exec", ns]


def list_namespaces(prefix: str = NETNS_PREFIX) -> list[str]:
    """Names of existing network namespaces starting with ``prefix``."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def _kill_namespace_processes(ns: str) -> None:
    """Kill whatever still runs in one of *our* namespaces (only we start processes there)."""
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def delete_namespace(ns: str) -> None:
    """Kill the processes left in ``ns`` and delete it (deleting it removes its veth ends)."""
    _kill_namespace_processes(ns)
    _run(["ip", "netns", "del", ns], check=False)


def cleanup_stale() -> list[str]:
    """Clean up after runners that died without cleaning up (SIGKILL); return what was removed.

    First what dead runs wrote down (:mod:`harness.runstate`: their processes,
    namespaces, RAM files and run directories, by name, whatever the names).
    Then, for runs older than the state files, by name:
    Namespaces ``miglab-<role>-<pid>-<hex>`` whose creating pid is gone are
    deleted, with the guests still running in them; then that dead runner's
    guest RAM files ``/dev/shm/miglab-<pid>-*`` and run directories
    ``<tmp>/miglab-<pid>-*`` (the naming of :mod:`harness.vm`) go too. The pid
    in the names keeps a live run's link and files out of reach.
    """
    removed: list[str] = _cleanup_recorded()
    dead: set[str] = set()
    for ns in list_namespaces():
        m = re.fullmatch(r"miglab-[a-z]+-(\d+)-[0-9a-f]+", ns)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            delete_namespace(ns)
            removed.append(ns)
            dead.add(m.group(1))
    for pid in sorted(dead):
        for path in [*Path("/dev/shm").glob(f"miglab-{pid}-*"), *Path(tempfile.gettempdir()).glob(f"miglab-{pid}-*")]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


def _cleanup_recorded() -> list[str]:
    """Remove everything the state files of dead runs list; return what was removed."""
    removed: list[str] = []
    for path, data in runstate.stale_states():
        for pid, marker in data.get("pids") or []:
            if runstate.process_matches(int(pid), str(marker)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
                removed.append(f"process {pid}")
        existing = set(list_namespaces())
        for ns in data.get("namespaces") or []:
            if ns in existing:
                delete_namespace(ns)
                removed.append(ns)
        for item in data.get("paths") or []:
            p = Path(item)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))
            elif p.exists():
                p.unlink(missing_ok=True)
                removed.append(str(p))
        runstate.remove_file(path)
    return removed


@dataclass(frozen=True)
class LinkMeasurement:
    """What a link really achieved: payload throughput (receiver side) and application RTT.

    ``rtt_s`` is the median idle round trip; ``rtt_loaded_s`` the median while a
    bulk transfer fills the link in the same direction (the shaper's queue adds
    to it, as on a real bottleneck).
    """

    configured_bandwidth_Bps: float
    configured_rtt_s: float
    throughput_Bps: float
    rtt_s: float
    rtt_min_s: float
    rtt_max_s: float
    rtt_loaded_s: float | None
    bytes_received: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LinkHealth:
    """What :meth:`ShapedLink.health` saw: ends that are not up, and the packets out of the source and
    into the destination (each counts both directions' traffic at that end: data out, acks in)."""

    down: tuple[str, ...]
    src_tx_packets: int
    dst_rx_packets: int

    def evidence_against(self, earlier: LinkHealth | None) -> str:
        """Why the link is lost, compared with an ``earlier`` look ("" when nothing says so)."""
        if self.down:
            return "; ".join(self.down)
        if earlier is not None and self.src_tx_packets > earlier.src_tx_packets \
                and self.dst_rx_packets == earlier.dst_rx_packets:
            return (f"the source sent {self.src_tx_packets - earlier.src_tx_packets} packets, the destination "
                    "received none")
        return ""


class ShapedLink:
    """Three namespaces, two veth pairs, tbf for rate and a delay forwarder for RTT.

    Use as a context manager; on exit (normal, exception or KeyboardInterrupt)
    every forwarder is killed, every process left in the namespaces is killed
    and the namespaces are deleted::

        with ShapedLink(bandwidth_Bps=25e6, rtt_s=0.010) as link:
            host, port = link.forward(4444)       # src connects here
            ...                                   # dst listens on link.dst_ip:4444
    """

    def __init__(self, bandwidth_Bps: float, rtt_s: float = 0.0, *, link_id: str | None = None) -> None:
        if bandwidth_Bps <= 0:
            raise ConfigError(f"link bandwidth must be positive, not {bandwidth_Bps!r}")
        if rtt_s < 0:
            raise ConfigError(f"link rtt must not be negative, not {rtt_s!r}")
        self.bandwidth_Bps = float(bandwidth_Bps)
        self.rtt_s = float(rtt_s)
        self.id = link_id or f"{os.getpid()}-{secrets.token_hex(3)}"
        self.src_ns = f"{NETNS_PREFIX}src-{self.id}"
        self.mid_ns = f"{NETNS_PREFIX}mid-{self.id}"
        self.dst_ns = f"{NETNS_PREFIX}dst-{self.id}"
        self.src_ip = SRC_IP
        self.dst_ip = DST_IP
        self._forwarders: dict[int, subprocess.Popen[bytes]] = {}
        self._created: list[str] = []
        self._up = False

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> ShapedLink:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.src_ns, self.mid_ns, self.dst_ns)

    def create(self) -> None:
        """Build the namespaces, veths, addresses, routes and qdiscs."""
        if os.geteuid() != 0:
            raise LinkError("a shaped link needs root (network namespaces and tc)")
        for ns in self.namespaces:
            runstate.add("namespaces", ns)  # before it exists: a kill right after still leaves it findable
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Create the veth pairs inside the namespaces so no interface ever
        # appears (or clashes by name) in the root namespace.
        _run(["ip", "-n", self.src_ns, "link", "add", "eth0", "type", "veth",
              "peer", "name", "to-src", "netns", self.mid_ns])
        _run(["ip", "-n", self.dst_ns, "link", "add", "eth0", "type", "veth",
              "peer", "name", "to-dst", "netns", self.mid_ns])
        for ns, dev, ip in ((self.src_ns, "eth0", SRC_IP), (self.mid_ns, "to-src", MID_SRC_IP),
                            (self.mid_ns, "to-dst", MID_DST_IP), (self.dst_ns, "eth0", DST_IP)):
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", self.src_ns, "route", "add", f"{DST_IP.rsplit('.', 1)[0]}.0/{PREFIX_LEN}",
              "via", MID_SRC_IP])
        _run(["ip", "-n", self.dst_ns, "route", "add", f"{SRC_IP.rsplit('.', 1)[0]}.0/{PREFIX_LEN}",
              "via", MID_DST_IP])
        # Routing through the middle (used when there is no delay). /proc/sys/net belongs to the
        # writer's namespace; Python instead of sysctl(8), which minimal hosts lack.
        _run([*netns_exec(self.mid_ns), sys.executable, "-c",
              "open('/proc/sys/net/ipv4/ip_forward', 'w').write('1')"])
        for ns in (self.src_ns, self.dst_ns):
            _run(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", *self.tbf_args()])
        self._up = True
        log.info("link %s up: %.1f Mbit/s, rtt %s", self.id, self.bandwidth_Bps * 8 / 1e6,
                 format_duration(self.rtt_s))

    def tbf_args(self) -> list[str]:
        """``tbf`` parameters for this rate.

        The bucket holds 2 ms of traffic (at least 32 KiB) so the shaper's
        timer granularity does not cost rate. The queue holds 3 ms (at least
        64 KiB): a bulk sender keeps it full, so a small message queued behind
        it waits that long, as behind a real bottleneck (measured: +2.5 ms at
        400 Mbit/s, +5 ms at 100 Mbit/s). Halving it cost 8-17 % throughput.
        """
        rate_bits = int(self.bandwidth_Bps * 8)
        burst = max(32 * 1024, int(self.bandwidth_Bps * 0.002))
        limit = max(64 * 1024, int(self.bandwidth_Bps * 0.003))
        return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "limit", str(limit)]

    def close(self) -> None:
        """Kill forwarders and everything left in our namespaces; delete the namespaces. Idempotent."""
        for proc in self._forwarders.values():
            _stop(proc)
            runstate.discard("pids", [proc.pid, "harness.link"])
        self._forwarders.clear()
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created.clear()
        for ns in self.namespaces:
            runstate.discard("namespaces", ns)
        self._up = False

    # -- health ----------------------------------------------------------------------
    def interfaces(self) -> tuple[tuple[str, str], ...]:
        """(namespace, device) of every link end, source to destination."""
        return ((self.src_ns, "eth0"), (self.mid_ns, "to-src"), (self.mid_ns, "to-dst"), (self.dst_ns, "eth0"))

    def health(self) -> LinkHealth:
        """The link's own view of itself: which ends are not up, and the packet counters at both ends."""
        down: list[str] = []
        stats: dict[tuple[str, str], dict[str, Any]] = {}
        for ns, dev in self.interfaces():
            out = _run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev], check=False).stdout
            try:
                info = json.loads(out)[0]
            except (ValueError, IndexError, KeyError):
                down.append(f"{ns}/{dev} missing")
                continue
            stats[(ns, dev)] = info.get("stats64") or info.get("stats") or {}
            # operstate LOWERLAYERDOWN / DOWN: this end, or its veth peer, is down
            if "UP" not in info.get("flags", ()) or info.get("operstate") not in ("UP", "UNKNOWN"):
                down.append(f"{dev} in {ns.split('-')[1]} {str(info.get('operstate', '?')).lower()}")

        def packets(ns: str, dev: str, way: str) -> int:
            return int(((stats.get((ns, dev)) or {}).get(way) or {}).get("packets", 0))

        return LinkHealth(tuple(down), packets(self.src_ns, "eth0", "tx"), packets(self.dst_ns, "eth0", "rx"))

    def cut(self) -> None:
        """Take the middle's two ends down, as a failed switch or cable would (fault injection)."""
        for ns, dev in ((self.mid_ns, "to-src"), (self.mid_ns, "to-dst")):
            _run(["ip", "-n", ns, "link", "set", dev, "down"])

    # -- use -------------------------------------------------------------------------
    def forward(self, port: int) -> tuple[str, int]:
        """Make ``DST_IP:port`` reachable from the source side; return the address the source must use.

        With a non-zero RTT this starts the delay forwarder in the middle
        namespace (listening on ``MID_SRC_IP:port``); with zero RTT packets are
        routed straight through and the destination address is returned.
        """
        if not self._up:
            raise LinkError("link is not up")
        if self.rtt_s == 0:
            return (DST_IP, port)
        if port in self._forwarders:
            return (MID_SRC_IP, port)
        argv = [*netns_exec(self.mid_ns), sys.executable, "-m", "harness.link", "forward",
                "--listen", f"{MID_SRC_IP}:{port}", "--connect", f"{DST_IP}:{port}",
                "--delay", repr(self.rtt_s / 2), "--bandwidth", repr(self.bandwidth_Bps)]
        proc = _start_ready(argv, f"forwarder for port {port}")
        runstate.add("pids", [proc.pid, "harness.link"])
        self._forwarders[port] = proc
        return (MID_SRC_IP, port)

    def run_in(self, side: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the ``src``, ``mid`` or ``dst`` namespace (the caller owns the process)."""
        ns = {"src": self.src_ns, "mid": self.mid_ns, "dst": self.dst_ns}[side]
        return subprocess.Popen([*netns_exec(ns), *argv], **popen)

    def measure(self, seconds: float = 3.0, pings: int = 20) -> LinkMeasurement:
        """Send bulk data src→dst for ``seconds`` and time ``pings`` small round trips through the link."""
        t_addr = self.forward(PROBE_THROUGHPUT_PORT)
        e_addr = self.forward(PROBE_ECHO_PORT)
        sink = _start_ready([*netns_exec(self.dst_ns), sys.executable, "-m", "harness.link", "sink",
                             "--listen", f"{DST_IP}:{PROBE_THROUGHPUT_PORT}",
                             "--echo", f"{DST_IP}:{PROBE_ECHO_PORT}"], "probe sink")
        try:
            out = _run([*netns_exec(self.src_ns), sys.executable, "-m", "harness.link", "probe",
                        "--throughput", f"{t_addr[0]}:{t_addr[1]}", "--echo", f"{e_addr[0]}:{e_addr[1]}",
                        "--seconds", repr(seconds), "--pings", str(pings)]).stdout
        finally:
            _stop(sink)
        r = json.loads(out)
        return LinkMeasurement(configured_bandwidth_Bps=self.bandwidth_Bps, configured_rtt_s=self.rtt_s,
                               throughput_Bps=r["bytes"] / r["seconds"], rtt_s=statistics.median(r["rtts"]),
                               rtt_min_s=min(r["rtts"]), rtt_max_s=max(r["rtts"]),
                               rtt_loaded_s=statistics.median(r["rtts_loaded"]) if r["rtts_loaded"] else None,
                               bytes_received=r["bytes"], seconds=r["seconds"])


def _start_ready(argv: list[str], what: str) -> subprocess.Popen[bytes]:
    """Start a helper that prints ``ready`` once listening; wait for that line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        buf += chunk
        if b"ready" in buf:
            os.set_blocking(proc.stdout.fileno(), True)
            return proc
        if proc.poll() is not None:
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            raise LinkError(f"{what} failed to start: {err.splitlines()[-1] if err else f'exit {proc.returncode}'}")
        time.sleep(0.02)
    _stop(proc)
    raise LinkError(f"{what} did not become ready in {READY_TIMEOUT_S:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


# -- the helpers that run inside the namespaces ---------------------------------------

def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the runner dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _realtime() -> None:
    """Run the forwarder under SCHED_FIFO so its delay timers fire on time.

    Two TCG guests keep both cores of a small host busy; as an ordinary task
    the forwarder then wakes late and inflates the RTT by several ms. It
    sleeps almost all the time, so a real-time priority costs the guests
    little (and the kernel's RT throttling bounds it anyway).
    """
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FORWARDER_RT_PRIORITY))


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]


_CLOCK_MONOTONIC = 1  # time.monotonic() and asyncio's loop.time() read this clock
_TFD_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _DelayTimer:
    """Sleep until an absolute ``loop.time()`` with sub-millisecond precision.

    asyncio's own timers wait in epoll, which counts whole milliseconds,
    rounding up: a 0.5 ms wait becomes 1 ms, and the earlier fix of aiming
    half a millisecond early turned the 0.5 ms each way of a 1 ms RTT link
    into no wait at all (measured 0.17 ms RTT on a 1 ms link). A timerfd
    (Linux, through libc) armed at the absolute deadline on CLOCK_MONOTONIC
    becomes readable exactly then, and the loop wakes on it like on a socket,
    so neither direction ever blocks the other. Without timerfd it falls back
    to asyncio's timer centred on the millisecond grid.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fd = -1
        with contextlib.suppress(OSError, AttributeError):
            self._libc = ctypes.CDLL(None, use_errno=True)
            fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK_CLOEXEC)
            self.fd = fd if isinstance(fd, int) and fd >= 0 else -1

    async def sleep_until(self, due: float) -> None:
        if due <= self.loop.time():
            return
        if self.fd < 0:
            await asyncio.sleep(max(0.0, due - self.loop.time() - TIMER_CENTRING_S))
            return
        sec = int(due)
        spec = _ITimerSpec(0, 0, sec, int((due - sec) * 1e9))
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            await asyncio.sleep(max(0.0, due - self.loop.time()))
            return
        fired = self.loop.create_future()

        def on_expiry() -> None:
            with contextlib.suppress(BlockingIOError):
                os.read(self.fd, 8)
            if not fired.done():
                fired.set_result(None)

        self.loop.add_reader(self.fd, on_expiry)
        try:
            await fired
        finally:
            self.loop.remove_reader(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float,
                max_buffer: int) -> None:
    """Copy reader→writer, each chunk leaving ``delay_s`` after it arrived; EOF is forwarded too."""
    loop = asyncio.get_running_loop()
    timer = _DelayTimer(loop)
    queue: deque[tuple[float, bytes]] = deque()
    queued = 0
    have_data = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def inbound() -> None:
        nonlocal queued
        while True:
            await room.wait()
            data = await reader.read(CHUNK_BYTES)
            queue.append((loop.time() + delay_s, data))
            queued += len(data)
            have_data.set()
            if queued > max_buffer:
                room.clear()
            if not data:
                return

    async def outbound() -> None:
        nonlocal queued
        while True:
            await have_data.wait()
            due, data = queue[0]
            await timer.sleep_until(due)
            queue.popleft()
            if not queue:
                have_data.clear()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            queued -= len(data)
            if queued <= max_buffer:
                room.set()

    try:
        await asyncio.gather(inbound(), outbound())
    finally:
        timer.close()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _forward_main(listen: tuple[str, int], connect: tuple[str, int], delay_s: float,
                        bandwidth_Bps: float) -> None:
    # Enough buffer for the bytes in flight on the delay line, with room for bursts.
    max_buffer = max(MIN_FORWARD_BUFFER_BYTES, int(4 * bandwidth_Bps * delay_s))

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        _nodelay(c_writer)
        try:
            u_reader, u_writer = await asyncio.open_connection(*connect)
        except OSError:
            c_writer.transport.abort()
            return
        _nodelay(u_writer)
        tasks = [asyncio.ensure_future(_pump(c_reader, u_writer, delay_s, max_buffer)),
                 asyncio.ensure_future(_pump(u_reader, c_writer, delay_s, max_buffer))]
        try:
            # A reset on either side ends both directions at once, so a killed
            # destination is seen by the source as a broken connection.
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            await asyncio.gather(*pending)
            c_writer.close()
            u_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            for t in tasks:
                t.cancel()
            c_writer.transport.abort()
            u_writer.transport.abort()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def _sink_main(listen: tuple[str, int], echo: tuple[str, int]) -> None:
    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        first = last = 0.0
        while True:
            data = await reader.read(CHUNK_BYTES)
            if not data:
                break
            last = time.monotonic()
            if not total:
                first = last
            total += len(data)
        # The first chunk's bytes were not timed; leave them out of the rate.
        writer.write(json.dumps({"bytes": total, "seconds": last - first}).encode())
        await writer.drain()
        writer.close()

    async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer)
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    s1 = await asyncio.start_server(sink, *listen, reuse_address=True)
    s2 = await asyncio.start_server(echo_handler, *echo, reuse_address=True)
    print("ready", flush=True)
    async with s1, s2:
        await asyncio.gather(s1.serve_forever(), s2.serve_forever())


def _ping(s: socket.socket) -> float:
    t0 = time.perf_counter()
    s.sendall(b"x" * 64)
    got = 0
    while got < 64:
        got += len(s.recv(64 - got))
    return time.perf_counter() - t0


def _probe(throughput: tuple[str, int], echo: tuple[str, int], seconds: float, pings: int) -> dict[str, Any]:
    """Idle round trips, then a bulk transfer with round trips measured alongside it."""
    import threading

    with socket.create_connection(echo, timeout=10) as e:
        e.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _ping(e)  # the first exchange pays for connection setup in the forwarder
        rtts = [_ping(e) for _ in range(pings)]
        loaded: list[float] = []
        stop = threading.Event()

        def ping_under_load() -> None:
            while not stop.wait(0.05):
                loaded.append(_ping(e))

        block = b"\0" * CHUNK_BYTES
        with socket.create_connection(throughput, timeout=30) as s:
            pinger = threading.Thread(target=ping_under_load, daemon=True)
            end = time.monotonic() + seconds
            s.sendall(block)
            pinger.start()
            while time.monotonic() < end:
                s.sendall(block)
            stop.set()
            pinger.join()
            s.shutdown(socket.SHUT_WR)
            report = b""
            while data := s.recv(4096):
                report += data
    r = json.loads(report)
    # Leave out the first chunk (it started the receiver's clock).
    return {"bytes": r["bytes"] - min(r["bytes"], CHUNK_BYTES), "seconds": r["seconds"], "rtts": rtts,
            "rtts_loaded": loaded}


def format_measurement(m: LinkMeasurement) -> str:
    tp_err = m.throughput_Bps / m.configured_bandwidth_Bps - 1
    return (f"throughput {m.throughput_Bps * 8 / 1e6:.1f} Mbit/s (configured {m.configured_bandwidth_Bps * 8 / 1e6:.1f},"
            f" {tp_err:+.1%}); rtt median {format_duration(m.rtt_s)} (min {format_duration(m.rtt_min_s)}, "
            f"max {format_duration(m.rtt_max_s)}; configured {format_duration(m.configured_rtt_s)}); "
            f"under load {format_duration(m.rtt_loaded_s) if m.rtt_loaded_s is not None else 'n/a'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the link's helper processes (``python -m harness.link forward|sink|probe``)."""
    parser = argparse.ArgumentParser(prog="python -m harness.link")
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--listen", required=True)
    f.add_argument("--connect", required=True)
    f.add_argument("--delay", type=float, required=True)
    f.add_argument("--bandwidth", type=float, required=True)
    s = sub.add_parser("sink")
    s.add_argument("--listen", required=True)
    s.add_argument("--echo", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--throughput", required=True)
    pr.add_argument("--echo", required=True)
    pr.add_argument("--seconds", type=float, required=True)
    pr.add_argument("--pings", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "probe":
        print(json.dumps(_probe(_addr(args.throughput), _addr(args.echo), args.seconds, args.pings)))
        return 0
    _die_with_parent()
    if args.cmd == "forward":
        _realtime()
    with sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):  # SIGTERM: the link is torn down
        if args.cmd == "forward":
            asyncio.run(_forward_main(_addr(args.listen), _addr(args.connect), args.delay, args.bandwidth))
        else:
            asyncio.run(_sink_main(_addr(args.listen), _addr(args.echo)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
