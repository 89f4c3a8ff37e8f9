"""Page-exact dirty traces from QEMU's own dirty log: a pre-copy that never ends, into a local sink.

``collect_dirtylog("hotcold:hot=10%,rate=5000,fill=0.25", memory_bytes=32 << 30, interval_s=0.5,
seconds=60, out="traces/big.npz")``

How it works. The guest (anonymous ``reserve=off`` RAM, so a 64 GiB guest costs
what it touches) is migrated to ``miglab-streamsink``, a small C program
(``harness/workload/miglab-streamsink.c``) that parses QEMU's migration stream
and writes one record per RAM page it is sent, in stream order. The migration
is set up so that it iterates for ever and each pass sends exactly the pages
dirtied before the sync that started it:

* ``avail-switchover-bandwidth`` = 1000 B/s and ``downtime-limit`` = 1 s make
  QEMU's threshold 1000 bytes, less than one page: QEMU syncs the dirty bitmap
  only once the pass before has sent every page (pending == 0), so passes
  never overlap;
* the ``switchover-ack`` capability (with ``return-path``) makes QEMU wait for
  an acknowledgement the sink never sends, so it never switches over, even
  when a sync finds nothing dirty;
* ``max-bandwidth`` is high, so nothing but the guest's own speed paces a pass.

QEMU's ``migrate_pending_exact`` trace event, logged right after each sync
(to a FIFO the collector reads, with QEMU's clock), gives the sync's time and
the pages it found dirty, ``n_k``. Pass 0 sends every page of every RAM block;
pass k sends exactly ``n_k`` records. Cutting the record sequence at those
counts splits it into passes exactly, with no timing guesswork: pass k holds
the pages written between sync k-1 and sync k (every write QEMU's dirty log
saw, whether or not it changed the content). Consecutive passes are merged
into windows of at least ``interval_s`` (the union of exact sets is exact),
and the windows are written in the existing trace format with their real
start and end times (``sim.trace``; intervals need not be uniform).

The pass-0 window (pages written while QEMU sent the whole guest once) lasts
as long as that first pass, which grows with guest size; it is left out by
default (``keep_first_pass``) and described in the metadata. Reading the
FIFO slowly (``max_syncs_per_s``) paces QEMU's sync loop, which otherwise
spins when the guest writes little.

Compared with the content-diff collector (:mod:`harness.collect`) this sees
writes that leave content unchanged, costs no host copy of guest RAM, and
works for any guest whose resident part fits the host.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import preflight
from harness.collect import checked_request
from harness.guest import GuestWorkload, cache_root
from harness.vm import VM, VMConfig
from sim import trace as trace_fmt
from sim.errors import MiglabError
from sim.units import PAGE_SIZE_BYTES

log = logging.getLogger(__name__)


METHOD = "dirty-log"
BLIND_SPOT = "none for guest writes: QEMU's dirty log sees every write; DMA by devices is not tracked here"
SINK_SOURCE = Path(__file__).with_name("workload") / "miglab-streamsink.c"
RAM_BLOCK = "ram0"  # the memory-backend id harness.vm gives guest RAM
TRACE_EVENTS = ("migrate_pending_exact", "migrate_set_state")
#: QEMU's threshold = avail-switchover-bandwidth x downtime-limit = 1000 B: below one page, so a sync
#: happens only when the previous pass has sent everything.
MIGRATION_PARAMETERS: dict[str, Any] = {"downtime-limit": 1000, "avail-switchover-bandwidth": 1000,
                                        "max-bandwidth": 64 << 30}
CAPABILITIES = {"return-path": True, "switchover-ack": True}
PAGE_BITS = (1 << 40) - 1
ZERO_BIT = 1 << 40
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 4096
_LOG_LINE = re.compile(r"^\d+@(?P<t>\d+\.\d+):(?P<event>\w+)\s?(?P<args>.*)$")
_PENDING = re.compile(r"exact pending size (\d+)")


class DirtyLogError(MiglabError):
    """The dirty-log collection could not run or its stream and log disagree."""


# ---------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncLog:
    """What QEMU's trace log said: when the migration went active and every exact sync after that."""

    t_active_s: float | None
    sync_t_s: np.ndarray  # float64, QEMU's clock (epoch seconds)
    sync_pages: np.ndarray  # int64, pages each sync found dirty

    @classmethod
    def parse(cls, lines: list[str], page_size: int = PAGE_SIZE_BYTES) -> SyncLog:
        t_active = None
        ts: list[float] = []
        pages: list[int] = []
        for line in lines:
            m = _LOG_LINE.match(line)
            if not m:
                continue
            if m["event"] == "migrate_set_state" and m["args"].split()[-1:] == ["active"] and t_active is None:
                t_active = float(m["t"])
            elif m["event"] == "migrate_pending_exact" and t_active is not None:
                p = _PENDING.search(m["args"])
                if p:
                    ts.append(float(m["t"]))
                    pages.append(int(p.group(1)) // page_size)
        return cls(t_active, np.asarray(ts, dtype=np.float64), np.asarray(pages, dtype=np.int64))


def pass_ends(first_pass_records: int, sync_pages: np.ndarray, n_records: int) -> np.ndarray:
    """Record index where each complete pass ends (pass 0, then one per sync), given ``n_records`` received."""
    ends = first_pass_records + np.concatenate([[0], np.cumsum(sync_pages, dtype=np.int64)])
    return ends[ends <= n_records]


def window_groups(bounds_s: np.ndarray, interval_s: float) -> list[tuple[int, int]]:
    """Group consecutive passes into windows of at least ``interval_s``.

    ``bounds_s[j]`` is the time of the sync that ends pass j's dirtying window
    (``bounds_s[0]`` the start). Returns ``(first, last)`` pass-window indexes
    (inclusive) per window, ``j`` meaning the span ``[bounds_s[j], bounds_s[j + 1]]``;
    a final group shorter than ``interval_s`` is dropped.
    """
    groups: list[tuple[int, int]] = []
    start = 0
    n = len(bounds_s) - 1
    while start < n:
        # first j >= start with bounds_s[j + 1] - bounds_s[start] >= interval_s
        j = int(np.searchsorted(bounds_s, bounds_s[start] + interval_s - 1e-9, side="left")) - 1
        j = max(j, start)
        if j >= n:
            break
        groups.append((start, j))
        start = j + 1
    return groups


@dataclass
class Windows:
    """Dirty windows cut from a record sequence (what a trace is made of)."""

    t_start_s: list[float] = field(default_factory=list)
    t_end_s: list[float] = field(default_factory=list)
    pages: list[np.ndarray] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)  # passes merged into each window
    records: list[int] = field(default_factory=list)  # pages QEMU sent for the window (all blocks, repeats none)


def dirty_windows(records: np.ndarray, ram_block: int, n_pages: int, first_pass_records: int, sync: SyncLog,
                  interval_s: float, *, keep_first_pass: bool = False) -> tuple[Windows, dict[str, Any]]:
    """Cut the sink's records into dirty windows of at least ``interval_s``; times from the sync log.

    Pass j >= 1 (the records after sync j) is the set of pages written
    between sync j-1 and sync j; sync 0 is the migration going active. The
    result holds only guest-RAM pages (block ``ram_block``), sorted and unique
    per window; the second value describes the first pass and checks the
    stream against the log (a page twice in one pass means they disagree).
    """
    if sync.t_active_s is None:
        raise DirtyLogError("QEMU's trace log has no 'active' migration state")
    ends = pass_ends(first_pass_records, sync.sync_pages, len(records))
    if len(ends) < 2:
        raise DirtyLogError(f"no complete pass after the first ({len(records)} records, "
                            f"{len(sync.sync_pages)} syncs)")
    starts = np.concatenate([[0], ends[:-1]])
    n_complete = len(ends) - 1  # passes 1..n_complete are complete
    bounds = np.concatenate([[sync.t_active_s], sync.sync_t_s[:n_complete]])  # pass j window: bounds[j-1..j]
    t0 = float(sync.t_active_s)
    block = (records >> np.uint64(48)).astype(np.int64)
    page = (records & np.uint64(PAGE_BITS)).astype(np.int64)
    first = slice(0, int(ends[0]))
    in_ram0 = block[first] == ram_block
    zero0 = (records[first] & np.uint64(ZERO_BIT)) != 0
    info: dict[str, Any] = {
        "first_pass_s": float(bounds[1] - bounds[0]),
        "first_pass_zero_page_fraction": float(zero0[in_ram0].mean()) if in_ram0.any() else None,
        "first_pass_dirty_pages": int(np.count_nonzero(block[starts[1]:ends[1]] == ram_block)),
        "passes": n_complete, "syncs_logged": int(len(sync.sync_pages)),
        "records_received": int(len(records)), "records_in_complete_passes": int(ends[-1]),
    }
    first_window = 0 if keep_first_pass else 1
    out = Windows()
    rel = bounds - t0
    _check_passes(block[:int(ends[-1])], page[:int(ends[-1])], starts, ends)
    for a, b in window_groups(rel[first_window:], interval_s):
        a += first_window
        b += first_window
        lo, hi = int(starts[a + 1]), int(ends[b + 1])  # pass j window is pass j+1 in record terms
        sel = block[lo:hi] == ram_block
        pg = page[lo:hi][sel]
        uniq = np.unique(pg)
        if len(uniq) and uniq[-1] >= n_pages:
            raise DirtyLogError(f"page {uniq[-1]} beyond the guest's {n_pages} pages")
        out.t_start_s.append(float(rel[a]))
        out.t_end_s.append(float(rel[b + 1]))
        out.pages.append(uniq)
        out.passes.append(b - a + 1)
        out.records.append(hi - lo)
    return out, info


def _check_passes(block: np.ndarray, page: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Raise if a page appears twice within one pass: then the counts from the log do not cut the stream."""
    pass_id = np.repeat(np.arange(len(ends), dtype=np.int64), ends - starts)
    order = np.lexsort((page, block, pass_id))
    same = ((np.diff(pass_id[order]) == 0) & (np.diff(block[order]) == 0) & (np.diff(page[order]) == 0))
    if same.any():
        k = int(pass_id[order][1:][same][0])
        raise DirtyLogError(f"a page was sent twice in pass {k} ({int(same.sum())} repeats in all): "
                            "the stream and QEMU's sync log disagree")


def read_blocks(path: Path) -> dict[str, tuple[int, int]]:
    """The sink's block list: ``{name: (index, used_length_bytes)}``."""
    blocks = {}
    for line in path.read_text().splitlines():
        idx, name, used = line.split()
        blocks[name] = (int(idx), int(used))
    return blocks


# ---------------------------------------------------------------------------
# the sink and the log reader
# ---------------------------------------------------------------------------

def build_sink(cache: Path | None = None) -> Path:
    """Compile miglab-streamsink into the cache (keyed by its source hash); return the binary."""
    src = SINK_SOURCE.read_bytes()
    out = (cache or cache_root()) / "bin" / f"miglab-streamsink-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    p = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(SINK_SOURCE)], capture_output=True, text=True)
    if p.returncode != 0:
        raise DirtyLogError(f"compiling {SINK_SOURCE.name} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    os.replace(tmp, out)
    return out


class LogReader(threading.Thread):
    """Reads QEMU's trace log from a FIFO, at most ``max_lines_per_s`` while pacing (backpressure on QEMU).

    QEMU blocks in the trace call once the FIFO is full; ``migrate_pending_exact``
    is logged outside the big QEMU lock, so pacing slows only the sync loop.
    """

    def __init__(self, fifo: Path, max_lines_per_s: float) -> None:
        super().__init__(name="dirtylog-reader", daemon=True)
        self.fifo = fifo
        self.max_lines_per_s = max_lines_per_s
        self.lines: list[str] = []
        self.pacing = True
        self._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # before QEMU opens it for writing
        # A one-page pipe leaves QEMU only ~40 lines of slack, so pacing spreads the syncs evenly instead of
        # letting a burst of hundreds through and then holding QEMU for seconds.
        fcntl.fcntl(self._fd, F_SETPIPE_SZ, PIPE_BYTES)
        self._halt = threading.Event()

    def run(self) -> None:
        partial = b""
        try:
            while not self._halt.is_set():
                try:
                    chunk = os.read(self._fd, PIPE_BYTES)
                except BlockingIOError:
                    time.sleep(0.005)
                    continue
                if not chunk:  # no writer (yet, or QEMU gone)
                    time.sleep(0.01)
                    continue
                *done, partial = (partial + chunk).split(b"\n")
                self.lines.extend(d.decode(errors="replace") for d in done)
                if self.pacing and done:
                    self._halt.wait(min(len(done) / self.max_lines_per_s, 5.0))
        finally:
            os.close(self._fd)

    def stop(self) -> None:
        self._halt.set()


# ---------------------------------------------------------------------------
# the collector
# ---------------------------------------------------------------------------

def _wait_for(pred: Any, timeout_s: float, what: str, vm: VM) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        vm.check_alive()
        if time.monotonic() > deadline:
            raise DirtyLogError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.05)


def collect_dirtylog(workload: str, *, memory_bytes: int = 512 << 20, interval_s: float = 0.5,
                     seconds: float = 60.0, out: str | Path, smp: int = 1, boot_timeout_s: float = 300.0,
                     warmup_s: float = 2.0, first_pass_timeout_s: float = 600.0, max_syncs_per_s: float = 1000.0,
                     keep_first_pass: bool = False, ram_backing: str = "anon",
                     on_first_pass: Callable[[VM], None] | None = None) -> trace_fmt.Trace:
    """Boot a guest running ``workload``, trace ``seconds`` of its writes after QEMU's first pass, save to ``out``.

    Returns the loaded trace. Refuses in one line (pre-flight) a guest whose
    resident part would not fit this host. ``on_first_pass(vm)`` runs once
    QEMU's first pass is done (e.g. to start a content-diff scan of a
    ``ram_backing="shm"`` guest beside it, as the benchmark does).
    """
    wl, out_path = checked_request(workload, memory_bytes, interval_s, seconds, out)
    sink_bin = build_sink()
    work = Path(tempfile.mkdtemp(prefix=f"miglab-{os.getpid()}-dirtylog-"))
    fifo, sock_path = work / "trace.fifo", work / "migrate.sock"
    pages_path, blocks_path = work / "pages.bin", work / "blocks.txt"
    os.mkfifo(fifo, 0o600)
    trace_args: list[str] = []
    for e in TRACE_EVENTS:
        trace_args += ["-trace", f"enable={e}"]
    # the records file grows 8 bytes per page sent: the whole guest once, then what the guest dirties
    host_bytes = memory_bytes // 512 + (256 << 20)
    cfg = VMConfig(memory_bytes=memory_bytes, workload=wl, smp=smp, name="dirtylog", ram_backing=ram_backing,
                   host_bytes=host_bytes, extra_args=(*trace_args, "-D", str(fifo), "-msg", "timestamp=on"))
    reader = LogReader(fifo, max_syncs_per_s)
    reader.start()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sink: subprocess.Popen[bytes] | None = None
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t_wall0 = time.monotonic()
    timings: dict[str, float] = {}
    try:
        srv.bind(str(sock_path))
        srv.listen(1)
        sink = subprocess.Popen([str(sink_bin), str(srv.fileno()), str(pages_path), str(blocks_path)],
                                pass_fds=(srv.fileno(),), stderr=subprocess.PIPE)
        with VM(cfg) as vm:
            vm.wait_for_workload(boot_timeout_s)
            timings["boot_s"] = time.monotonic() - t_wall0
            time.sleep(warmup_s)
            vm.qmp.migrate_set_capabilities(CAPABILITIES)
            vm.qmp.migrate_set_parameters(MIGRATION_PARAMETERS)
            t_mig = time.monotonic()
            vm.qmp.migrate(f"unix:{sock_path}")
            _wait_for(lambda: (vm.qmp.query_migrate().get("ram") or {}).get("dirty-sync-count", 0) >= 2,
                      first_pass_timeout_s, "QEMU did not finish its first pass", vm)
            timings["first_pass_wall_s"] = time.monotonic() - t_mig
            if on_first_pass is not None:
                on_first_pass(vm)
            deadline = time.monotonic() + seconds + interval_s
            while time.monotonic() < deadline:
                vm.check_alive()
                status = vm.qmp.query_migrate().get("status")
                if status != "active":
                    raise DirtyLogError(f"the migration left 'active' ({status}) while collecting")
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            stats = vm.qmp.query_migrate()
            reader.pacing = False  # drain, so QEMU is not held in a trace call while it cancels
            vm.qmp.migrate_cancel()
            assert sink is not None
            try:
                _, err = sink.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                sink.kill()
                _, err = sink.communicate()
            if sink.returncode != 0:
                raise DirtyLogError(f"stream sink failed: {err.decode(errors='replace').strip()}")
            timings["resident_bytes"] = float(vm.rss_bytes())
            qemu = vm.qemu
            image = vm.image
            vm_backing = vm.backing
        time.sleep(0.1)  # QEMU is gone: the log is complete
        reader.stop()
        reader.join(5)
        sync = SyncLog.parse(reader.lines)
        blocks = read_blocks(blocks_path)
        if RAM_BLOCK not in blocks:
            raise DirtyLogError(f"no RAM block {RAM_BLOCK!r} in the stream ({', '.join(blocks)})")
        ram_index, _ram_bytes = blocks[RAM_BLOCK]
        n_pages = memory_bytes // PAGE_SIZE_BYTES
        first_pass = sum(used for _, used in blocks.values()) // PAGE_SIZE_BYTES
        records = np.fromfile(pages_path, dtype="<u8")
        win, info = dirty_windows(records, ram_index, n_pages, first_pass, sync, interval_s,
                                  keep_first_pass=keep_first_pass)
        if not win.pages:
            raise DirtyLogError(f"no complete window of {interval_s} s after the first pass")
        ram = stats.get("ram") or {}
        meta = {
            "hypervisor": "qemu", "qemu_version": qemu.version, "qemu_version_line": qemu.version_line,
            "accel": "tcg", "collector": METHOD, "method": METHOD, "blind_spot": BLIND_SPOT,
            "guest_memory_bytes": memory_bytes, "guest_smp": smp, "guest_ram_backing": vm_backing,
            "guest_kernel": image.kernel_version if image else None, "guest_image_key": image.key if image else None,
            "workload": wl.spec, "workload_pattern": wl.pattern, "workload_params": wl.params,
            "workload_configured_rate_pages_per_s": wl.rate_pages_per_s,
            "interval_s": interval_s, "intervals_uniform": False,
            "interval_note": "windows are whole QEMU passes merged to at least interval_s; "
                             "t_start_s/t_end_s are the syncs that bound them (QEMU's clock)",
            "requested_seconds": seconds, "collected_seconds": win.t_end_s[-1] - win.t_start_s[0],
            "collected_at": started_utc, "complete": True, "stopped_reason": "completed",
            "first_pass_kept": keep_first_pass, "t_active_epoch_s": float(sync.t_active_s or 0.0), "zero_page_fraction": info["first_pass_zero_page_fraction"],
            "passes_per_window_mean": float(np.mean(win.passes)),
            "qemu_dirty_sync_count": ram.get("dirty-sync-count"), "qemu_ram_normal": ram.get("normal"),
            "qemu_ram_duplicate": ram.get("duplicate"), "migration_parameters": MIGRATION_PARAMETERS,
            "source_resident_bytes": int(timings["resident_bytes"]), "boot_s": timings["boot_s"],
            "first_pass_wall_s": timings["first_pass_wall_s"], **info,
        }
        tr = trace_fmt.make_trace(win.pages, win.t_start_s, win.t_end_s, n_pages=n_pages,
                                  page_size=PAGE_SIZE_BYTES, meta=meta)
        sha = trace_fmt.save(tr, out_path)
        log.info("wrote %s (%d windows from %d passes, sha256 %s)", out_path, len(win.pages), info["passes"], sha)
        return trace_fmt.load(out_path)
    finally:
        reader.stop()
        if sink is not None and sink.poll() is None:
            sink.kill()
            sink.wait()
        srv.close()
        for f in (fifo, sock_path, pages_path, blocks_path):
            f.unlink(missing_ok=True)
        try:
            work.rmdir()
        except OSError:
            log.warning("could not remove %s", work)


def preflight_sides(memory_bytes: int, workload: GuestWorkload | None) -> tuple[preflight.SideEstimate, ...]:
    """The one guest a dirty-log collection runs (anonymous RAM, plus the records file)."""
    from harness.guest import workload_footprint_bytes

    return (preflight.estimate_side("collector", memory_bytes, workload_footprint_bytes(workload, memory_bytes),
                                    "anon", memory_bytes // 512 + (256 << 20)),)
