"""Dirty-page trace collector for a real QEMU guest, by content diff of guest RAM.

``miglab trace collect --workload SPEC --memory 512MiB --interval 0.5s --seconds 60 -o traces/NAME.npz``

The guest's RAM is a ``memory-backend-file`` in ``/dev/shm``; the collector
maps it read-only and, every interval, copies it into a snapshot buffer
(about 0.05 s for 512 MiB) and compares the snapshot with the previous one as
``uint64`` rows of one page each (about 0.1 s). Pages whose content differs
are that interval's dirty pages. Because the copy always sweeps RAM in the
same order, every page is observed exactly ``interval`` apart, so each write
is attributed to exactly one interval.

Blind spot (recorded in the trace metadata): a write that leaves a page's
content unchanged, or two writes that restore it within one interval, is not
seen. QEMU's own dirty log would count those; the simulator's question --
which pages must be resent -- is the content question.

Metadata beside the page lists: method and blind spot, hypervisor and QEMU
version, host, guest memory and workload (spec and resolved parameters),
interval, collection time, the fraction of all-zero pages at the start (and
at the end), QEMU's page-sampling ``calc-dirty-rate`` over the first seconds
with the content-diff rate over the same window as a cross-check, and the
workload's own achieved rate parsed from the guest console.

A trace is written atomically at the end, every ``CHECKPOINT_S`` seconds on
the way, and on Ctrl-C, SIGTERM or an error: it always holds every complete
interval so far (``meta["complete"]`` says whether the run finished).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from harness.guest import GuestWorkload, parse_workload
from harness.qmp import QMPError
from harness.vm import VM, Console, VMConfig
from sim import trace as trace_fmt
from sim.errors import ConfigError
from sim.interrupt import sigterm_as_interrupt
from sim.units import PAGE_SIZE_BYTES

log = logging.getLogger(__name__)

CHECKPOINT_S = 10.0
METHOD = "content-diff"
BLIND_SPOT = "a write that leaves content unchanged is not seen"
PROGRESS_LINE = re.compile(r"^miglab-(load|redis) t=(?P<t>[0-9.]+) (?:pages|ops)=(?P<n>\d+) rate=(?P<rate>[0-9.]+)")


@dataclass
class Collection:
    """Intervals gathered so far (what a partial trace is made of)."""

    t_start_s: list[float] = field(default_factory=list)
    t_end_s: list[float] = field(default_factory=list)
    pages: list[np.ndarray] = field(default_factory=list)
    scan_s: list[float] = field(default_factory=list)
    console_rates: list[float] = field(default_factory=list)
    console_lines: list[str] = field(default_factory=list)
    dirty_rate_check: dict[str, Any] | None = None
    zero_page_fraction: float | None = None  # at the start of the collection
    zero_page_fraction_end: float | None = None


def changed_pages(prev: np.ndarray, cur: np.ndarray, page_size: int = PAGE_SIZE_BYTES,
                  chunk_pages: int = 32768) -> np.ndarray:
    """Sorted indices of pages whose content differs between two RAM snapshots (vectorised, chunked)."""
    if prev.shape != cur.shape:
        raise ValueError("snapshots differ in size")
    words = page_size // 8
    a = prev.view(np.uint64).reshape(-1, words)
    b = cur.view(np.uint64).reshape(-1, words)
    mask = np.empty(a.shape[0], dtype=bool)
    for s in range(0, a.shape[0], chunk_pages):  # chunks keep the temporary bool matrix small
        np.any(a[s:s + chunk_pages] != b[s:s + chunk_pages], axis=1, out=mask[s:s + chunk_pages])
    return np.flatnonzero(mask)


def zero_page_fraction(ram: np.ndarray, page_size: int = PAGE_SIZE_BYTES) -> float:
    """Fraction of pages that are entirely zero (what QEMU sends as ``ram.duplicate``)."""
    rows = ram.view(np.uint64).reshape(-1, page_size // 8)
    nonzero = np.zeros(rows.shape[0], dtype=bool)
    for s in range(0, rows.shape[0], 32768):
        np.any(rows[s:s + 32768] != 0, axis=1, out=nonzero[s:s + 32768])
    return float(1.0 - nonzero.mean())


def _host_meta() -> dict[str, Any]:
    cpu = ""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "cpu": cpu, "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in load]}


def _meta(vm_cfg: VMConfig, wl: GuestWorkload, interval_s: float, seconds: float, c: Collection,
          vm: VM | None, started_utc: str, complete: bool, reason: str) -> dict[str, Any]:
    rates = np.asarray(c.console_rates, dtype=float)
    scan = np.asarray(c.scan_s, dtype=float)
    counts = np.array([len(p) for p in c.pages], dtype=float)
    qemu = vm.qemu if vm is not None else None
    return {
        "hypervisor": "qemu",
        "qemu_version": qemu.version if qemu else None,
        "qemu_version_line": qemu.version_line if qemu else None,
        "accel": "tcg",
        "host": _host_meta(),
        "collector": METHOD,
        "blind_spot": BLIND_SPOT,
        "guest_memory_bytes": vm_cfg.memory_bytes,
        "guest_smp": vm_cfg.smp,
        "guest_kernel": vm.image.kernel_version if vm is not None and vm.image else None,
        "guest_image_key": vm.image.key if vm is not None and vm.image else None,
        "workload": wl.spec,
        "workload_pattern": wl.pattern,
        "workload_params": wl.params,
        "workload_configured_rate_pages_per_s": wl.rate_pages_per_s,
        "workload_achieved_rate": float(rates.mean()) if len(rates) else None,
        "workload_achieved_rate_unit": "ops/s" if wl.kind == "redis" else "pages/s",
        "workload_console_tail": c.console_lines[-5:],
        "interval_s": interval_s,
        "requested_seconds": seconds,
        "collected_seconds": (c.t_end_s[-1] - c.t_start_s[0]) if c.t_end_s else 0.0,
        "collected_at": started_utc,
        "complete": complete,
        "stopped_reason": reason,
        "mean_dirty_pages_per_interval": float(counts.mean()) if len(counts) else None,
        "zero_page_fraction": c.zero_page_fraction,
        "zero_page_fraction_end": c.zero_page_fraction_end,
        "scan_s_mean": float(scan.mean()) if len(scan) else None,
        "scan_s_max": float(scan.max()) if len(scan) else None,
        "qemu_dirty_rate_check": c.dirty_rate_check,
    }


def _save(out: Path, vm_cfg: VMConfig, wl: GuestWorkload, interval_s: float, seconds: float, c: Collection,
          vm: VM | None, started_utc: str, complete: bool, reason: str) -> str | None:
    n = len(c.pages)
    if n == 0:
        return None
    tr = trace_fmt.make_trace(c.pages[:n], c.t_start_s[:n], c.t_end_s[:n], n_pages=vm_cfg.memory_bytes // PAGE_SIZE_BYTES,
                              page_size=PAGE_SIZE_BYTES,
                              meta=_meta(vm_cfg, wl, interval_s, seconds, c, vm, started_utc, complete, reason))
    return trace_fmt.save(tr, out)


def _dirty_rate_window(c: Collection, t0: float, t1: float, page_size: int) -> float | None:
    """Content-diff unique-page rate (MiB/s) over [t0, t1] from the intervals inside it."""
    idx = [i for i, (a, b) in enumerate(zip(c.t_start_s, c.t_end_s, strict=True)) if a >= t0 - 1e-6 and b <= t1 + 1e-6]
    if not idx:
        return None
    union = np.unique(np.concatenate([c.pages[i] for i in idx]))
    span = c.t_end_s[idx[-1]] - c.t_start_s[idx[0]]
    return float(len(union) * page_size / span / 2**20)


def checked_request(workload: str, memory_bytes: int, interval_s: float, seconds: float,
                    out: str | os.PathLike[str]) -> tuple[GuestWorkload, Path]:
    """What every trace collector checks before it boots anything: the guest workload and the output path."""
    if not interval_s > 0 or not seconds > 0:
        raise ConfigError(f"--interval and --seconds must be positive (got {interval_s}, {seconds})")
    if memory_bytes % (1 << 20) or memory_bytes < (128 << 20):
        raise ConfigError(f"--memory must be a whole number of MiB and at least 128 MiB (got {memory_bytes} bytes)")
    wl = parse_workload(workload, memory_bytes)
    out_path = Path(out)
    if out_path.is_dir():
        raise ConfigError(f"-o {out_path}: is a directory")
    return wl, out_path


def collect(workload: str, *, memory_bytes: int = 512 << 20, interval_s: float = 0.5, seconds: float = 60.0,
            out: str | os.PathLike[str], smp: int = 1, progress: bool = True, dirty_rate_calc_s: float = 5.0,
            boot_timeout_s: float = 120.0, on_interval: Callable[[int, np.ndarray], None] | None = None,
            vm_config: VMConfig | None = None) -> trace_fmt.Trace:
    """Boot a guest running ``workload``, collect ``seconds`` of dirty pages, write the trace to ``out``.

    Returns the loaded trace. Interrupts and errors still write the complete
    intervals so far (``meta["complete"] == False``) before propagating.
    """
    wl, out_path = checked_request(workload, memory_bytes, interval_s, seconds, out)
    # content diff reads guest RAM from the shm file and holds two snapshots of it (the pre-flight counts them)
    cfg = vm_config or VMConfig(memory_bytes=memory_bytes, workload=wl, smp=smp, name="collect",
                                ram_backing="shm", host_bytes=2 * memory_bytes)
    n_target = max(1, int(round(seconds / interval_s)))
    c = Collection()
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    reason = "interrupted"
    complete = False
    vm: VM | None = None
    last_checkpoint = time.monotonic()

    term_guard = contextlib.ExitStack()  # SIGTERM stops like Ctrl-C, so the complete intervals are saved
    term_guard.enter_context(sigterm_as_interrupt())
    bar = None
    try:
        with VM(cfg) as vm:
            vm.wait_for_workload(boot_timeout_s)
            live = vm.ram_view()
            prev = np.empty(memory_bytes, dtype=np.uint8)
            cur = np.empty(memory_bytes, dtype=np.uint8)
            np.copyto(cur, live)  # fault both buffers in before timing starts
            np.copyto(prev, cur)
            t_zero = time.monotonic()
            np.copyto(prev, live)
            c.zero_page_fraction = zero_page_fraction(prev)
            calc_pending = False
            calc_window = (0.0, min(dirty_rate_calc_s, seconds))
            try:
                vm.qmp.calc_dirty_rate(calc_window[1])
                calc_pending = True
            except QMPError as e:
                c.dirty_rate_check = {"error": str(e)}
            bar = tqdm(total=n_target, unit="interval", disable=not progress, desc="collect", leave=False)
            for k in range(1, n_target + 1):
                wake = t_zero + k * interval_s
                delay = wake - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                t_snap = time.monotonic()
                np.copyto(cur, live)
                pages = changed_pages(prev, cur)
                # a guest that died during the interval did not run all of it: keep only complete intervals
                vm.check_alive()
                c.scan_s.append(time.monotonic() - t_snap)
                prev, cur = cur, prev
                c.t_start_s.append(c.t_end_s[-1] if c.t_end_s else 0.0)
                c.t_end_s.append(t_snap - t_zero)
                c.pages.append(pages)
                if on_interval is not None:
                    on_interval(k, pages)
                for line in cast(Console, vm.console).new_lines():  # set when the guest started
                    m = PROGRESS_LINE.match(line)
                    if m:
                        c.console_rates.append(float(m.group("rate")))
                        c.console_lines.append(line)
                if calc_pending and t_snap - t_zero > calc_window[1] + 0.5:
                    calc_pending = _finish_dirty_rate(vm, c, calc_window)
                bar.update(1)
                bar.set_postfix(dirty=len(pages), rate=f"{len(pages) / interval_s:.0f}/s")
                if time.monotonic() - last_checkpoint > CHECKPOINT_S:
                    _save(out_path, cfg, wl, interval_s, seconds, c, vm, started_utc, False, "checkpoint")
                    last_checkpoint = time.monotonic()
                if delay < -interval_s:
                    log.warning("collector fell behind by %.2f s (scan %.2f s)", -delay, c.scan_s[-1])
            if calc_pending:
                _finish_dirty_rate(vm, c, calc_window, wait_s=calc_window[1] + 5.0)
            c.zero_page_fraction_end = zero_page_fraction(prev)
            complete, reason = True, "completed"
    except KeyboardInterrupt:
        reason = "interrupted"
        raise
    except BaseException as e:
        reason = f"error: {type(e).__name__}: {e}"
        raise
    finally:
        if bar is not None:
            bar.close()
        term_guard.close()
        if c.pages:
            sha = _save(out_path, cfg, wl, interval_s, seconds, c, vm, started_utc, complete, reason)
            log.info("wrote %s (%d intervals, %s, sha256 %s)", out_path, len(c.pages), reason, sha)
    return trace_fmt.load(out_path)


def _finish_dirty_rate(vm: VM, c: Collection, window: tuple[float, float], wait_s: float = 0.0) -> bool:
    """Record QEMU's page-sampling result beside ours; return True while still pending."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            r = vm.qmp.query_dirty_rate()
        except QMPError as e:
            c.dirty_rate_check = {"error": str(e)}
            return False
        if r.get("status") == "measured" or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if r.get("status") != "measured":
        return wait_s == 0.0
    c.dirty_rate_check = {
        "mode": r.get("mode", "page-sampling"),
        "calc_time_s": r.get("calc-time"),
        "sample_pages_per_GiB": r.get("sample-pages"),
        "qemu_dirty_rate_MiBps": r.get("dirty-rate"),
        "content_diff_unique_rate_MiBps": _dirty_rate_window(c, *window, PAGE_SIZE_BYTES),
        "window_s": list(window),
        "note": "QEMU hashes a sample of pages at the window's start and end; both count a page once per window",
    }
    return False
