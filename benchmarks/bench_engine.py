"""Speed and memory of the simulator (not part of `make test`).

Run: ``.venv/bin/python benchmarks/bench_engine.py``. Each figure is measured in one run and also
given as a ratio to a reference (one 4 GiB expected-value pre-copy) so that results from this noisy,
shared machine can be compared across runs.

Targets from the core issue: calibrated-model pre-copy of a 1 TiB guest <= 0.1 s; trace replay of
a 16 GiB trace <= 10 s; peak memory under 2 GiB for a 1 TiB guest.
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim import Scenario, simulate  # noqa: E402
from sim.trace import make_trace, save  # noqa: E402


def best_of(fn, n=5):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def big_trace(path: Path, n_pages: int, intervals: int, dirty_share: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    hot = n_pages // 20
    lists = []
    for _ in range(intervals):
        k = int(n_pages * dirty_share)
        pages = np.concatenate([rng.integers(0, hot, k // 2), rng.integers(0, n_pages, k - k // 2)])
        lists.append(np.unique(pages))
    t = np.arange(intervals + 1) * 0.5
    save(make_trace(lists, t[:-1], t[1:], n_pages=n_pages), path)


def main() -> None:
    ref_sc = Scenario().replace(**{"workload.spec": "hotcold:hot=256MiB,rate=20000", "workload.memory_bytes": "4GiB",
                                   "link.bandwidth_Bps": "10Gbit/s"})
    ref, _ = best_of(lambda: simulate(ref_sc), 20)
    rows = [("reference: 4 GiB expected-value pre-copy", ref, None)]
    tib = ref_sc.replace(**{"workload.memory_bytes": "1TiB", "workload.spec": "hotcold:hot=8GiB,rate=400000",
                            "link.bandwidth_Bps": "25Gbit/s"})
    for kind in ("precopy", "postcopy", "hybrid"):
        best, med = best_of(lambda k=kind: simulate(tib.replace(**{"strategy.kind": k})), 10)
        rows.append((f"1 TiB calibrated-model {kind} (target <= 0.1 s)", best, med))
    zipf = tib.replace(**{"workload.spec": "zipf:s=1.1,rate=2000000"})
    rows.append(("1 TiB zipf model pre-copy", *best_of(lambda: simulate(zipf), 5)))
    rss_model = peak_rss_mib()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t16g.npz"
        n_pages = 16 * 2**30 // 4096
        t = time.perf_counter()
        big_trace(path, n_pages, 120, 0.05)
        gen = time.perf_counter() - t
        sc16 = Scenario().replace(**{"workload.kind": "trace", "workload.path": str(path),
                                     "link.bandwidth_Bps": "10Gbit/s"})
        simulate(sc16.replace(**{"strategy.kind": "stopcopy"}))  # load and cache the trace: not counted
        for bw in ("25Gbit/s", "10Gbit/s"):
            for within in ("poisson", "once"):  # what the per-page write-rate inference costs
                sc_bw = sc16.replace(**{"link.bandwidth_Bps": bw, "workload.within_interval": within})
                t = time.perf_counter()
                r = simulate(sc_bw)
                replay = time.perf_counter() - t
                what = "converged" if r.converged else "did not converge in 600 s"
                rows.append((f"16 GiB replay ({within}) pre-copy at {bw}: {r.rounds} rounds, {what}", replay, None))
        t = time.perf_counter()
        r = simulate(sc16.replace(**{"strategy.kind": "postcopy"}))
        rows.append((f"16 GiB trace replay post-copy, {r.postcopy_faults:.0f} faults", time.perf_counter() - t, None))
    print(f"(16 GiB trace generation took {gen:.1f} s, not counted)")
    print(f"{'benchmark':64s} {'best s':>10s} {'median s':>10s} {'x ref':>10s}")
    for name, best, med in rows:
        print(f"{name:64s} {best:10.4f} {med if med is not None else float('nan'):10.4f} {best / ref:10.1f}")
    print(f"peak RSS after the 1 TiB model runs: {rss_model:.0f} MiB (target < 2048); after all: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
