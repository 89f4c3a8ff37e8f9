"""Benchmarks for the QEMU harness: guest boot, RAM scan, collector accuracy.

Not part of ``make test`` (it boots several guests). Run as root on a host with QEMU >= 9::

    .venv/bin/python benchmarks/bench_harness.py [--boots 3] [--memory 512MiB]

1. Boot: from launching QEMU to the QMP connection, to the init script's first
   console line, and to the workload's first progress line (median of ``--boots``).
2. RAM scan of a live guest: copying guest RAM out of the shm file and comparing
   it with the previous copy page by page (``harness.collect.changed_pages``).
3. Collector accuracy: ``uniform`` at several rates (each page written once per
   cycle, so every write should be a changed page): measured changed pages per
   second against the configured rate, and the idle guest's background.
4. ``--sizes 512MiB,1GiB,2GiB,4GiB``: boot time and resident memory against guest
   size (anonymous RAM above 2 GiB), and the dirty-log collector's cost per GiB
   (QEMU's first pass over the whole guest, which every collection pays once).
5. ``--compare``: the dirty-log collector and the content-diff collector on the
   same guest at the same time (a shm-backed guest; the content diff scans it
   while the never-ending pre-copy runs): pages per window from each, and the
   share of content-diff pages the dirty log also saw in the windows covering
   the same time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness.collect import changed_pages, collect
from harness.dirtylog import collect_dirtylog
from harness.guest import build_guest
from harness.vm import VM, VMConfig
from sim.units import parse_size


def bench_boot(memory: int, boots: int) -> None:
    rows = []
    for _ in range(boots):
        t0 = time.monotonic()
        with VM(VMConfig(memory_bytes=memory, workload="uniform:rate=1000,span=16MiB", name="bench")) as vm:
            t_qmp = time.monotonic() - t0
            vm.wait_for_console(r"^miglab-init: up")
            t_init = time.monotonic() - t0
            vm.wait_for_workload()
            t_load = time.monotonic() - t0
        rows.append((t_qmp, t_init, t_load))
    med = [statistics.median(c) for c in zip(*rows, strict=True)]
    print(f"boot ({boots}x, {memory >> 20} MiB): QMP {med[0]:.2f} s, init's first line {med[1]:.2f} s, "
          f"workload's first progress line {med[2]:.2f} s (includes its first 1 s of running)")


def bench_scan(memory: int, reps: int = 10) -> None:
    with VM(VMConfig(memory_bytes=memory, workload="hotcold:hot=64MiB,rate=5000", name="bench")) as vm:
        vm.wait_for_workload()
        live = vm.ram_view()
        prev = np.empty(memory, dtype=np.uint8)
        cur = np.empty(memory, dtype=np.uint8)
        np.copyto(prev, live)
        np.copyto(cur, live)
        copy_s, cmp_s = [], []
        for _ in range(reps):
            time.sleep(0.2)
            t = time.perf_counter()
            np.copyto(cur, live)
            t1 = time.perf_counter()
            changed_pages(prev, cur)
            t2 = time.perf_counter()
            copy_s.append(t1 - t)
            cmp_s.append(t2 - t1)
            prev, cur = cur, prev
        del live
    print(f"RAM scan of {memory >> 20} MiB (median of {reps}): copy {statistics.median(copy_s):.3f} s, "
          f"compare {statistics.median(cmp_s):.3f} s, total {statistics.median(copy_s) + statistics.median(cmp_s):.3f} s")


def bench_accuracy(memory: int, rates: list[int], seconds: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        idle = collect("idle", memory_bytes=memory, interval_s=0.5, seconds=seconds, out=Path(d) / "idle.npz",
                       progress=False)
        background = float(np.mean(idle.counts)) / 0.5
        print(f"idle guest (init forks a date/echo once a second): {background:.0f} changed pages/s")
        for rate in rates:
            # a span the run does not wrap (each write a new page) where the guest has room for it
            span_mib = min(max(64, int(rate * (seconds + 2) * 4096 / 2**20) + 1), int(memory * 0.55) >> 20)
            if span_mib * 2**20 / 4096 / rate < 0.5:
                print(f"uniform rate {rate}/s: skipped, the guest is too small for a span that outlasts an interval")
                continue
            t = collect(f"uniform:rate={rate},span={span_mib}MiB", memory_bytes=memory, interval_s=0.5,
                        seconds=seconds, out=Path(d) / f"u{rate}.npz", progress=False)
            per_s = float(np.mean(t.counts)) / 0.5
            wraps = span_mib * 2**20 / 4096 / rate < seconds
            print(f"uniform rate {rate:>6}/s (span {span_mib} MiB{', wraps' if wraps else ''}): measured "
                  f"{per_s:8.0f}/s ({(per_s / rate - 1) * 100:+.1f} %); workload achieved "
                  f"{t.meta['workload_achieved_rate']:.1f}/s; qemu page-sampling "
                  f"{t.meta['qemu_dirty_rate_check'].get('qemu_dirty_rate_MiBps')} MiB/s vs content-diff "
                  f"{t.meta['qemu_dirty_rate_check'].get('content_diff_unique_rate_MiBps', float('nan')):.1f} MiB/s")


def bench_boot_sizes(sizes: list[int]) -> None:
    print("guest size  backing  boot to workload (s)  QEMU resident (GiB)")
    for memory in sizes:
        t0 = time.monotonic()
        with VM(VMConfig(memory_bytes=memory, workload="idle", name="bench")) as vm:
            vm.wait_for_workload(600)
            boot = time.monotonic() - t0
            time.sleep(1.0)
            rss = vm.rss_bytes()
            backing = vm.backing
        print(f"{memory / 2**30:9.2f}G  {backing:7s}  {boot:20.1f}  {rss / 2**30:19.2f}")


def bench_collector_cost(sizes: list[int], seconds: float) -> None:
    print("guest size  first pass (s)  s per GiB  resident (GiB)  windows  mean dirty pages/window")
    with tempfile.TemporaryDirectory() as d:
        for memory in sizes:
            t = collect_dirtylog("hotcold:hot=32MiB,rate=2000,total=64MiB", memory_bytes=memory, interval_s=0.5,
                                 seconds=seconds, out=Path(d) / "t.npz")
            m = t.meta
            print(f"{memory / 2**30:9.2f}G  {m['first_pass_s']:14.2f}  {m['first_pass_s'] / (memory / 2**30):9.2f}  "
                  f"{m['source_resident_bytes'] / 2**30:14.2f}  {t.n_intervals:7d}  {float(np.mean(t.counts)):.0f}")


def bench_compare(memory: int, spec: str, seconds: float) -> None:
    """Both collectors on one guest at once; see the module docstring (5)."""
    # (copy start, copy end) of the snapshot before and of the one after, and the pages that changed between
    snaps: list[tuple[tuple[float, float], tuple[float, float], np.ndarray]] = []
    stop = threading.Event()

    def content_diff(vm: VM) -> None:
        live = vm.ram_view()
        prev, cur = np.empty(memory, dtype=np.uint8), np.empty(memory, dtype=np.uint8)
        np.copyto(cur, live)  # fault both buffers in first, as the collector does
        t0 = time.time()
        np.copyto(prev, live)
        span_prev = (t0, time.time())
        while not stop.is_set():
            time.sleep(max(0.0, span_prev[0] + 0.5 - time.time()))
            t = time.time()
            np.copyto(cur, live)
            span = (t, time.time())
            snaps.append((span_prev, span, changed_pages(prev, cur)))
            prev, cur, span_prev = cur, prev, span

    threads: list[threading.Thread] = []

    def start(vm: VM) -> None:
        th = threading.Thread(target=content_diff, args=(vm,), daemon=True)
        th.start()
        threads.append(th)

    with tempfile.TemporaryDirectory() as d:
        try:
            # fine dirty-log windows (a few passes each), so a content-diff window's span is matched within ~20 ms
            tr = collect_dirtylog(spec, memory_bytes=memory, interval_s=0.02, seconds=seconds, out=Path(d) / "t.npz",
                                  ram_backing="shm", on_first_pass=start)
        finally:
            stop.set()
            for th in threads:
                th.join(10)
    t0 = tr.meta["t_active_epoch_s"]
    dl_a, dl_b = tr.t_start_s + t0, tr.t_end_s + t0
    inside = [(s0, s1, p) for s0, s1, p in snaps if s0[0] >= dl_a[0] and s1[1] <= dl_b[-1]]
    if not inside:
        print("  no content-diff window inside the dirty log's span")
        return
    seen = total = 0
    cd_n, dl_n, dl_over, copy_s = [], [], [], []
    for s0, s1, p in inside:
        # a page that differs between the copies changed while [copy 1 start, copy 2 end]: the outer span
        outer = np.flatnonzero((dl_b > s0[0]) & (dl_a < s1[1]))
        union = np.unique(np.concatenate([tr.pages(int(i)) for i in outer]))
        seen += int(np.isin(p, union, assume_unique=True).sum())
        total += len(p)
        # the same length of time as the content diff, from copy midpoint to copy midpoint
        m0, m1 = (s0[0] + s0[1]) / 2, (s1[0] + s1[1]) / 2
        mid = np.flatnonzero((dl_a >= m0 - 0.01) & (dl_b <= m1 + 0.01))
        dl_n.append(len(np.unique(np.concatenate([tr.pages(int(i)) for i in mid]))) if len(mid) else 0)
        over = np.flatnonzero((dl_b > m0) & (dl_a < m1))  # the windows overlapping it: a slightly longer span
        dl_over.append(len(np.unique(np.concatenate([tr.pages(int(i)) for i in over]))))
        cd_n.append(len(p))
        copy_s.append(s1[1] - s1[0])
    win_s = np.mean([(s1[0] + s1[1] - s0[0] - s0[1]) / 2 for s0, s1, _ in inside])
    print(f"side by side, {memory >> 20} MiB, {spec}: {len(inside)} content-diff windows of {win_s:.3f} s "
          f"(copy {np.mean(copy_s):.3f} s): content diff {np.mean(cd_n):.0f} pages/window, dirty log inside the "
          f"same spans {np.mean(dl_n):.0f} pages/window ({100 * (np.mean(dl_n) / np.mean(cd_n) - 1):+.1f} %), "
          f"dirty log >= content diff in {sum(d >= c for d, c in zip(dl_n, cd_n, strict=True))}/{len(inside)} "
          f"windows; over the windows overlapping each span {np.mean(dl_over):.0f} pages/window, >= content diff "
          f"in {sum(d >= c for d, c in zip(dl_over, cd_n, strict=True))}/{len(inside)}; content-diff pages the dirty log saw in the windows covering them: "
          f"{seen}/{total} ({100 * seen / max(total, 1):.2f} %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--memory", default="512MiB")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="1000,5000,20000")
    ap.add_argument("--sizes", default="", help="guest sizes for boot time and dirty-log cost, e.g. 512MiB,2GiB")
    ap.add_argument("--compare", action="store_true", help="run both collectors on one guest at once")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the content-diff accuracy sweep")
    a = ap.parse_args()
    memory = parse_size(a.memory)
    t = time.monotonic()
    build_guest()
    print(f"build-guest (cached): {time.monotonic() - t:.2f} s")
    if a.boots:
        bench_boot(memory, a.boots)
        bench_scan(memory)
    if not a.skip_accuracy:
        bench_accuracy(memory, [int(r) for r in a.rates.split(",")], a.seconds)
    if a.sizes:
        sizes = [parse_size(x) for x in a.sizes.split(",")]
        bench_boot_sizes(sizes)
        bench_collector_cost(sizes, a.seconds)
    if a.compare:
        bench_compare(memory, "hotcold:hot=64MiB,rate=5000,total=256MiB", a.seconds)


if __name__ == "__main__":
    main()
