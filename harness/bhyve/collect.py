"""Dirty-page traces of a running bhyve guest, on the FreeBSD host itself.

Two methods, one trace format (:mod:`sim.trace`):

``content-diff`` (stock FreeBSD)
    Every interval, read all guest memory through ``/dev/vmm/NAME`` (``mmap``
    by default, ``pread`` as an option) and compare it page by page with the
    previous scan, either against a full copy (exact) or against a 64-bit
    per-page digest (8 bytes per page instead of a second copy of the guest).
    Blind spot: a write that leaves a page's content unchanged is not seen,
    and a page changed and changed back between two scans is not seen.

``dirty-page-list`` (UPB migration kernel)
    Every interval, ``VM_GET_DIRTY_PAGE_LIST`` returns one byte per page: the
    ``VPO_VMM_DIRTY`` flag the patch's own migration rounds use.

Page numbers in the trace are dense: lowmem pages first, highmem pages right
after them, exactly the index order of the patch's dirty page list.

This module imports only the standard library, numpy and ``sim.trace`` /
``sim.errors`` / ``sim.units`` (no pandas, SimPy, pyarrow or matplotlib), so it
runs with ``pkg install python311 py311-numpy``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np

from sim import trace as _trace
from sim.errors import ConfigError
from sim.interrupt import sigterm_as_interrupt

from .vmmdev import PAGE_SIZE_BYTES, BhyveError, Segment, VmmDevice

log = logging.getLogger(__name__)

Method = Literal["content-diff", "dirty-page-list"]
ReadMode = Literal["mmap", "pread"]
CompareMode = Literal["copy", "hash"]
METHODS: tuple[str, ...] = ("content-diff", "dirty-page-list")
CHUNK_BYTES = 64 << 20  # bounded reads: a pread holds the guest memory lock (or a vCPU) for its duration
DIRTY_LIST_REVIEWS = "https://reviews.freebsd.org/D30954 (re-split as D34717-D34722)"

BLIND_SPOTS: dict[str, str] = {
    "content-diff": ("a write that leaves a page's content unchanged is not seen; a page changed and changed "
                     "back between two scans is not seen; a page changed several times in one interval counts once"),
    "dirty-page-list": ("reports resident pages whose VPO_VMM_DIRTY flag is set (the flag the UPB patch's own "
                        "rounds use); non-resident pages are never reported; assumes the ioctl clears the flag "
                        "(vm_page_test_vmm_dirty), as the patch's rounds do; writes that leave content unchanged "
                        "are seen"),
}


class Tracker(Protocol):
    """Something that reports the pages changed since it was last asked."""

    n_pages: int

    def prime(self) -> None: ...

    def changed_pages(self) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- trackers
def _page_multipliers(page_size: int) -> np.ndarray:
    # Odd multipliers: a change confined to one 64-bit word always changes the
    # digest (d * m == 0 mod 2**64 only if d == 0 for odd m); wider changes
    # collide with probability about 2**-64.
    rng = np.random.default_rng(0x6D69676C6162)  # fixed: digests must be comparable across scans
    return rng.integers(0, 2**63, size=page_size // 8, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


class ContentDiffTracker:
    """Content diff over ``/dev/vmm/NAME``, chunk by chunk, fully vectorised per chunk."""

    def __init__(self, dev: VmmDevice, segments: tuple[Segment, ...], *, read: ReadMode = "mmap",
                 compare: CompareMode = "copy", chunk_bytes: int = CHUNK_BYTES) -> None:
        if read not in ("mmap", "pread"):
            raise ConfigError(f"{read!r} is not mmap or pread", flag="--read")
        if compare not in ("copy", "hash"):
            raise ConfigError(f"{compare!r} is not copy or hash", flag="--compare")
        self.dev, self.segments, self.read, self.compare = dev, segments, read, compare
        self.n_pages = sum(s.n_pages for s in segments)
        self.chunk_bytes = max(PAGE_SIZE_BYTES, chunk_bytes - chunk_bytes % PAGE_SIZE_BYTES)
        self._mult = _page_multipliers(PAGE_SIZE_BYTES) if compare == "hash" else None
        self._src: list[np.ndarray | None] = []
        for seg in segments:
            self._src.append(np.frombuffer(dev.map_segment(seg), dtype=np.uint8) if read == "mmap" else None)
        self._scratch = np.empty(self.chunk_bytes, dtype=np.uint8) if read == "pread" else None
        self._prev: list[np.ndarray] = []
        self._primed = False

    def describe(self) -> dict[str, Any]:
        return {"read": self.read, "compare": self.compare, "chunk_bytes": self.chunk_bytes}

    def close(self) -> None:
        """Drop the views of the guest mappings and the baseline (lets the device unmap)."""
        self._src = [None] * len(self.segments)
        self._prev = []

    def _chunks(self, i: int):
        """Yield (byte offset in segment, uint8 view of the current content)."""
        seg, src = self.segments[i], self._src[i]
        for a in range(0, seg.length_bytes, self.chunk_bytes):
            b = min(a + self.chunk_bytes, seg.length_bytes)
            if src is not None:
                yield a, src[a:b]
            else:
                buf = cast(np.ndarray, self._scratch)[: b - a]  # no mapping: read is pread, which has it
                self.dev.pread_into(buf, seg.gpa + a)
                yield a, buf

    def _digest(self, words: np.ndarray) -> np.ndarray:
        return (words * self._mult).sum(axis=1, dtype=np.uint64)

    def prime(self) -> None:
        """Take the baseline scan."""
        self._prev = []
        for i, seg in enumerate(self.segments):
            if self.compare == "copy":
                prev = np.empty(seg.length_bytes, dtype=np.uint8)
                for a, cur in self._chunks(i):
                    prev[a:a + len(cur)] = cur
            else:
                prev = np.empty(seg.n_pages, dtype=np.uint64)
                for a, cur in self._chunks(i):
                    p = a // PAGE_SIZE_BYTES
                    words = cur.view(np.uint64).reshape(-1, PAGE_SIZE_BYTES // 8)
                    prev[p:p + len(words)] = self._digest(words)
            self._prev.append(prev)
        self._primed = True

    def changed_pages(self) -> np.ndarray:
        """Sorted dense page numbers whose content differs from the previous scan."""
        if not self._primed:
            raise RuntimeError("prime() first")
        found: list[np.ndarray] = []
        wpp = PAGE_SIZE_BYTES // 8
        for i, seg in enumerate(self.segments):
            prev = self._prev[i]
            for a, cur in self._chunks(i):
                p = a // PAGE_SIZE_BYTES
                words = cur.view(np.uint64).reshape(-1, wpp)
                if self.compare == "copy":
                    # Snapshot first: the guest may write while we compare (mmap is live memory).
                    snap = words.copy()
                    old = prev[a:a + len(cur)].view(np.uint64).reshape(-1, wpp)
                    diff = np.flatnonzero((snap != old).any(axis=1))
                    old[diff] = snap[diff]
                else:
                    dig = self._digest(words)
                    old = prev[p:p + len(dig)]
                    diff = np.flatnonzero(dig != old)
                    old[diff] = dig[diff]
                if len(diff):
                    found.append(diff + (seg.first_page + p))
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class DirtyListTracker:
    """The UPB kernel's ``VM_GET_DIRTY_PAGE_LIST``: one byte per page."""

    def __init__(self, dev: VmmDevice, segments: tuple[Segment, ...]) -> None:
        self.dev, self.segments = dev, segments
        self.n_pages = sum(s.n_pages for s in segments)
        self._buf = np.zeros(self.n_pages, dtype=np.uint8)

    def describe(self) -> dict[str, Any]:
        return {"ioctl": "VM_GET_DIRTY_PAGE_LIST", "request": "struct vm_get_dirty_page_list",
                "review": DIRTY_LIST_REVIEWS}

    def prime(self) -> None:
        # The first call reports everything dirtied since the VM started; discard it.
        self.dev.dirty_page_list(self.segments, self._buf)

    def changed_pages(self) -> np.ndarray:
        self.dev.dirty_page_list(self.segments, self._buf)
        return np.flatnonzero(self._buf)  # the patch itself counts only entries == 1; any non-zero is dirty


# --------------------------------------------------------------------------- collection
@dataclass
class Collection:
    """Per-interval page lists with their times (seconds since the baseline scan began)."""

    page_lists: list[np.ndarray] = field(default_factory=list)
    t_start_s: list[float] = field(default_factory=list)
    t_end_s: list[float] = field(default_factory=list)
    scan_s: list[float] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:  # tqdm is optional on the FreeBSD path (stdlib + numpy only)
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="interval", desc="collect", leave=False, disable=None)  # None: off without a tty


def collect_intervals(tracker: Tracker, *, interval_s: float, n_intervals: int,
                      clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                      progress: bool = False) -> Collection:
    """Scan every ``interval_s`` for ``n_intervals`` intervals.

    Interval ``i`` spans from the start of scan ``i`` to the start of scan
    ``i + 1`` (scan 0 is the baseline). Ctrl-C (KeyboardInterrupt) stops early
    and keeps every complete interval.
    """
    if interval_s <= 0:
        raise ConfigError(f"--interval must be positive, not {interval_s}")
    if n_intervals <= 0:
        raise ConfigError(f"the collection needs at least one interval (got {n_intervals})")
    out = Collection()
    t0 = clock()
    bar = None
    warned = False
    try:
        tracker.prime()
        bar = _progress(n_intervals, progress)
        prev_start = 0.0
        for i in range(1, n_intervals + 1):
            target = i * interval_s
            now = clock() - t0
            if now < target:
                sleep(target - now)
            elif not warned and now > target + interval_s:
                log.warning("a scan takes longer than --interval %.3f s; intervals stretch to %.3f s",
                            interval_s, now - prev_start)
                warned = True
            start = max(clock() - t0, prev_start + 1e-6)
            pages = tracker.changed_pages()
            out.scan_s.append(clock() - t0 - start)
            out.page_lists.append(np.asarray(pages, dtype=np.int64))
            out.t_start_s.append(prev_start)
            out.t_end_s.append(start)
            prev_start = start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(pages=len(pages))
    except KeyboardInterrupt:
        out.interrupted = True
        log.warning("interrupted: keeping %d complete intervals", len(out.page_lists))
    finally:
        if bar is not None:
            bar.close()
        out.wall_s = clock() - t0
    return out


# --------------------------------------------------------------------------- metadata
def host_info() -> dict[str, Any]:
    """Who collected (same keys as the QEMU collector's ``host``, plus ``os`` and versions)."""
    info: dict[str, Any] = {
        "hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
        "cpu": "", "cpus": os.cpu_count(), "os": f"{platform.system()} {platform.version()}",
        "python": platform.python_version(), "numpy": np.__version__,
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    cpu = ""
    if platform.system() == "FreeBSD":
        try:
            cpu = subprocess.run(["sysctl", "-n", "hw.model"], capture_output=True, text=True, timeout=5,
                                 check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            cpu = ""
    else:
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        except OSError:
            cpu = ""
    info["cpu"] = cpu
    return info


@dataclass(frozen=True)
class CollectConfig:
    """What ``miglab trace collect --hypervisor bhyve`` was asked to do."""

    vm: str
    output: str
    interval_s: float = 0.5
    seconds: float = 60.0
    method: Method = "content-diff"
    device: str | None = None
    read: ReadMode = "mmap"
    compare: CompareMode = "copy"
    guest_memory_bytes: int | None = None
    workload: str = ""
    progress: bool = True

    @property
    def n_intervals(self) -> int:
        return max(1, int(round(self.seconds / self.interval_s)))


def make_tracker(cfg: CollectConfig, dev: VmmDevice, segments: tuple[Segment, ...]) -> Tracker:
    if cfg.method == "content-diff":
        return ContentDiffTracker(dev, segments, read=cfg.read, compare=cfg.compare)
    if cfg.method == "dirty-page-list":
        return DirtyListTracker(dev, segments)
    raise ConfigError(f"{cfg.method!r} is not one of {', '.join(METHODS)}", flag="--method")


def trace_meta(cfg: CollectConfig, dev: VmmDevice, segments: tuple[Segment, ...], tracker: Tracker,
               col: Collection, started_at: str) -> dict[str, Any]:
    counts = np.array([len(p) for p in col.page_lists], dtype=float)
    scan = np.asarray(col.scan_s, dtype=float)
    # Key names follow harness/collect.py (the QEMU collector) wherever they mean the same thing.
    return {
        "hypervisor": "bhyve",
        "collector": "harness.bhyve.collect",
        "host": host_info(),
        "method": cfg.method,
        "method_blind_spot": BLIND_SPOTS[cfg.method],
        "method_detail": tracker.describe(),
        "guest_memory_bytes": sum(s.length_bytes for s in segments),
        "workload": cfg.workload,
        "interval_s": cfg.interval_s,
        "requested_seconds": cfg.seconds,
        "collected_seconds": (col.t_end_s[-1] - col.t_start_s[0]) if col.t_end_s else 0.0,
        "collected_at_utc": started_at,
        "complete": not col.interrupted,
        "stopped_reason": "interrupted" if col.interrupted else "",
        "mean_dirty_pages_per_interval": float(counts.mean()) if len(counts) else None,
        "scan_s_mean": float(scan.mean()) if len(scan) else None,
        "scan_s_max": float(scan.max()) if len(scan) else None,
        "vm": cfg.vm,
        "device": dev.path,
        "segments": [s.to_dict() for s in segments],
        "page_numbering": "dense: lowmem pages from gpa 0, then highmem pages from gpa 4 GiB "
                          "(the index order of VM_GET_DIRTY_PAGE_LIST)",
    }


def run_collection(cfg: CollectConfig, *, ioctl=None, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> tuple[_trace.Trace, str]:
    """Collect and save a trace; return it with its sha256. Nothing is written unless an interval completed."""
    out = Path(cfg.output)
    if out.suffix != ".npz":
        raise ConfigError(f"-o {cfg.output}: traces are .npz files")
    if out.exists() and out.is_dir():
        raise ConfigError(f"-o {cfg.output}: is a directory")
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    with VmmDevice(cfg.vm, cfg.device, ioctl=ioctl) as dev:
        segments = dev.segments(cfg.guest_memory_bytes)
        tracker = make_tracker(cfg, dev, segments)
        log.info("bhyve %s: %d pages in %s, %s every %.3f s", cfg.vm, tracker.n_pages,
                 ", ".join(f"{s.name}@{s.gpa:#x}+{s.length_bytes:#x}" for s in segments), cfg.method, cfg.interval_s)
        col = collect_intervals(tracker, interval_s=cfg.interval_s, n_intervals=cfg.n_intervals, clock=clock,
                                sleep=sleep, progress=cfg.progress)
        if not col.page_lists:
            raise BhyveError(f"no complete interval was collected; nothing written to {cfg.output}", where=cfg.vm)
        meta = trace_meta(cfg, dev, segments, tracker, col, started_at)
        if isinstance(tracker, ContentDiffTracker):
            tracker.close()
    tr = _trace.make_trace(col.page_lists, col.t_start_s, col.t_end_s, n_pages=tracker.n_pages,
                           page_size=PAGE_SIZE_BYTES, meta=meta)
    sha = _trace.save(tr, out)
    return tr, sha


def collect(cfg: CollectConfig, **kw: Any) -> tuple[_trace.Trace, str]:
    with sigterm_as_interrupt():  # SIGTERM ends a collection like Ctrl-C: the complete intervals are kept
        return run_collection(cfg, **kw)
