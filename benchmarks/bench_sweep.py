"""Throughput of ``miglab sweep`` (not part of ``make test``).

Run: ``.venv/bin/python benchmarks/bench_sweep.py [--runs 10000] [--jobs 2]``.

Target from issue 6: 10,000 calibrated-model scenarios in <= 5 minutes on 2 cores.

The sweep is the shape of the beyond-14-GiB study: a calibrated page-class
model (here the exact model of ``hotcold:hot=48MiB,rate=4000`` with 30 % zero
pages, saved as model JSON and loaded as ``workload.kind = "model"``, the
engine's expected-value path) rescaled from 4 GiB to 1 TiB under both scaling
laws, crossed with bandwidth, downtime limit, RTT and four strategies (QEMU
pre-copy, bhyve's 4 rounds, post-copy, hybrid). The figures reported are wall
seconds for building and validating the scenarios, for running them in the
process pool, and for a second invocation that finds every run finished (the
resume path), plus the number of rows in the final Parquet table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from sim.sweep import Sweep, run_sweep  # noqa: E402
from sim.workload import parse_spec, spec_model  # noqa: E402

TARGET_S = 300.0
GiB = 2**30

VARY = {
    "workload.memory_bytes": ["4GiB", "8GiB", "16GiB", "32GiB", "64GiB", "128GiB", "256GiB", "512GiB", "768GiB",
                              "1TiB"],
    "workload.scaling": ["absolute", "proportional"],
    "link.bandwidth_Bps": ["1Gbit/s", "10Gbit/s", "25Gbit/s", "40Gbit/s", "100Gbit/s"],
    "strategy.downtime_limit_s": ["50ms", "100ms", "300ms", "500ms", "1s"],
    "link.rtt_s": ["0ms", "1ms", "5ms", "20ms", "50ms"],
}
VARIANTS = [
    {"name": "qemu-precopy", "strategy": {"kind": "precopy", "stop_rule": "qemu"}},
    {"name": "bhyve-precopy", "strategy": {"kind": "precopy", "stop_rule": "bhyve"}, "host": {"hypervisor": "bhyve"}},
    {"name": "postcopy", "strategy": {"kind": "postcopy"}},
    {"name": "hybrid", "strategy": {"kind": "hybrid", "postcopy_after_rounds": 2}},
]


def make_sweep(model_path: Path, runs: int) -> Sweep:
    """The benchmark sweep, cut down (last [vary] keys first) when fewer than 10,000 runs are asked for."""
    vary = dict(VARY)
    full = len(VARIANTS)
    for values in vary.values():
        full *= len(values)
    if runs > full:
        raise SystemExit(f"--runs: at most {full}")
    # Trim value lists from the end until the product fits.
    keys = list(vary)
    while True:
        n = len(VARIANTS)
        for values in vary.values():
            n *= len(values)
        if n <= runs:
            break
        for k in reversed(keys):
            if len(vary[k]) > 1:
                vary[k] = vary[k][:-1]
                break
    return Sweep.from_dict({
        "name": "bench-model-scaling",
        "base": {"workload": {"kind": "model", "path": str(model_path), "memory_bytes": "4GiB"},
                 "host": {"switchover_s": "20ms"}},
        "vary": vary,
        "variants": VARIANTS,
    }, source="bench_sweep")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000, help="scenarios (default 10000, the issue's target)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2, the issue's target)")
    ap.add_argument("--keep", metavar="DIR", help="keep the model and the Parquet table in DIR")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="miglab-bench-sweep-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = spec_model(parse_spec("hotcold:hot=48MiB,rate=4000", 4 * GiB), 4 * GiB // 4096)
        model = type(model)(model.n_pages, model.page_size, model.classes, zero_page_fraction=0.3,
                            source={"spec": "hotcold:hot=48MiB,rate=4000", "note": "bench_sweep"})
        model_path = work / "hotcold-4GiB.model.json"
        model.save(model_path)
        out = work / "bench-model-scaling.parquet"
        for stale in (out, out.with_name(out.name + ".parts")):
            if stale.is_file():
                stale.unlink()

        t0 = time.perf_counter()
        sweep = make_sweep(model_path, args.runs)
        n = len(sweep.scenarios())
        t_build = time.perf_counter() - t0

        t0 = time.perf_counter()
        table = run_sweep(sweep, out, jobs=args.jobs, progress=True)
        t_run = time.perf_counter() - t0

        t0 = time.perf_counter()
        again = run_sweep(sweep, out, jobs=args.jobs, progress=False)
        t_resume = time.perf_counter() - t0
        assert len(again) == len(table) == n

        size = out.stat().st_size
        converged = float(table["converged"].mean())
        by = table.groupby("variant")["converged"].mean().round(3).to_dict()
    figures = {
        "runs": n, "jobs": args.jobs, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "build_s": round(t_build, 2), "sweep_s": round(t_run, 2), "runs_per_s": round(n / t_run, 1),
        "resume_noop_s": round(t_resume, 2), "parquet_bytes": size, "converged_fraction": round(converged, 3),
        "converged_by_variant": by, "target_s": TARGET_S, "within_target": t_run <= TARGET_S,
    }
    print(json.dumps(figures, indent=1))
    print(pd.Series({k: v for k, v in figures.items() if not isinstance(v, dict)}).to_string(), file=sys.stderr)
    return 0 if t_run <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
