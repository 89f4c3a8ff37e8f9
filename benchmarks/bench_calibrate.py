"""Benchmarks for calibration: working-set curve, trace load into bitmaps, fit and sampling.

Not part of ``make test``. Run ``.venv/bin/python benchmarks/bench_calibrate.py [--quick]``.

1. ``working_set_curve`` on a synthetic 16 GiB trace (4 Mi pages, 120 intervals,
   5 % of pages dirty per interval): seconds and peak traced memory.
2. A 256 GiB-guest trace (64 Mi pages, 5 % dirty per interval, a few intervals):
   save, ``load`` and building every interval's bitmap (``Trace.bitmap`` and
   ``interval_bitmaps``), then the streamed ``working_set_curve``.
3. ``fit_classes`` on the 16 GiB curve, and ``sample_dirty_pages`` on a 1 TiB guest.

Peak memory is measured with ``tracemalloc`` (numpy reports its buffers to it),
in a separate repetition from the timing so tracing does not skew the seconds.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.bitmap import interval_bitmaps  # noqa: E402
from sim.calibrate import fit_classes, working_set_curve  # noqa: E402
from sim.model import DirtyModel, PageClass  # noqa: E402
from sim.sampling import sample_dirty_pages  # noqa: E402
from sim.trace import Trace, load, make_trace, save  # noqa: E402

MiB = 2**20


def uniform_trace(n_pages: int, n_intervals: int, dirty_fraction: float, interval_s: float = 1.0,
                  seed: int = 0) -> Trace:
    """Every page dirtied independently with ``dirty_fraction`` per interval (drawn with sample_dirty_pages)."""
    rate = -math.log1p(-dirty_fraction) / interval_s
    model = DirtyModel(n_pages, 4096, (PageClass(n_pages, rate),))
    rng = np.random.default_rng(seed)
    lists = [sample_dirty_pages(model, interval_s, rng) for _ in range(n_intervals)]
    t = np.arange(n_intervals) * interval_s
    return make_trace(lists, t, t + interval_s, n_pages=n_pages, meta={"workload": f"bench:{dirty_fraction}"})


def measure(label: str, fn: Callable[[], Any], *, memory: bool = True) -> Any:
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = ""
    if memory:
        tracemalloc.start()
        fn()
        _, p = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = f"  peak {p / MiB:8.1f} MiB"
    print(f"{label:<58} {dt:8.3f} s{peak}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller guests (a smoke run)")
    ap.add_argument("--big-intervals", type=int, default=8, help="intervals of the 256 GiB trace (8)")
    args = ap.parse_args()
    scale = 16 if args.quick else 1

    # 1. 16 GiB trace
    n16 = 4 * 2**20 // scale
    g16 = n16 * 4096 // 2**30
    t0 = time.perf_counter()
    tr16 = uniform_trace(n16, 120, 0.05)
    print(f"built {n16 * 4096 / 2**30:.0f} GiB trace: 120 intervals, {int(tr16.counts.mean())} pages each "
          f"({time.perf_counter() - t0:.1f} s)")
    window_s, pages = measure(f"working_set_curve, {g16} GiB x 120 (default ~4/octave windows)",
                              lambda: working_set_curve(tr16, progress=False))
    pow2 = 2 ** np.arange(7)
    measure(f"working_set_curve, {g16} GiB x 120 (k = 1, 2, 4, ... 64)",
            lambda: working_set_curve(tr16, pow2, progress=False))
    measure(f"working_set_curve, {g16} GiB x 120, 32 MiB budget (column chunks)",
            lambda: working_set_curve(tr16, budget_bytes=32 * MiB, progress=False))
    classes, rep = measure("fit_classes on that curve", lambda: fit_classes(window_s, pages, n16), memory=False)
    print(f"  fit: {[(round(c.pages), round(c.rate_per_page_per_s, 5)) for c in classes]}, max rel. error "
          f"{100 * rep['max_rel_error']:.3f} %  (truth: {n16} pages at {-math.log(0.95):.5f}/s)")
    tr16 = None  # free the 16 GiB trace before building the big one

    # 2. 256 GiB guest
    n256 = 64 * 2**20 // scale
    g256 = n256 * 4096 // 2**30
    k = args.big_intervals
    t0 = time.perf_counter()
    tr256 = uniform_trace(n256, k, 0.05)
    print(f"built {n256 * 4096 / 2**30:.0f} GiB trace: {k} intervals, {int(tr256.counts.mean())} pages each "
          f"({time.perf_counter() - t0:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="miglab-bench-") as d:
        path = Path(d) / "t256.npz"
        measure(f"save (compressed npz), {k} intervals", lambda: save(tr256, path), memory=False)
        print(f"  file size {path.stat().st_size / MiB:.1f} MiB")
        tr256 = None  # only the file remains
        loaded = measure("load (read + validate)", lambda: load(path))
        measure(f"load + Trace.bitmap for all {k} intervals",
                lambda: (lambda t: [t.bitmap(i) for i in range(k)][-1])(load(path)), memory=False)
        measure(f"Trace.bitmap for all {k} intervals (loaded)",
                lambda: [loaded.bitmap(i) for i in range(k)][-1], memory=False)
        measure(f"interval_bitmaps, all {k} intervals ({k * n256 / 8 / MiB:.0f} MiB of bitmaps)",
                lambda: interval_bitmaps(loaded))
        measure(f"working_set_curve, {g256} GiB x {k} (all k)",
                lambda: working_set_curve(loaded, np.arange(1, k + 1), progress=False))

    # 3. sampling a 1 TiB guest
    tib = DirtyModel(2**28 // scale, 4096, (PageClass(12288, 20.0), PageClass(2**28 // scale - 12288, 0.01)))
    rng = np.random.default_rng(1)
    for w in (0.1, 1.0, 30.0):
        got = measure(f"sample_dirty_pages, {tib.memory_bytes / 2**40:g} TiB guest, window {w:g} s",
                      lambda w=w: sample_dirty_pages(tib, w, rng))
        print(f"  {len(got)} pages (expected {float(tib.working_set(w)):.0f})")

    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
