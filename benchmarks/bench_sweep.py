"""Throughput of ``miglab sweep`` (not part of ``make test``).

Run: ``.venv/bin/python benchmarks/bench_sweep.py [--runs 100000] [--jobs 2] [--json OUT.json]``.

Targets (issue 11): 100,000 calibrated-model scenarios in <= 5 minutes on 2 cores end to end,
planning (building, validating and hashing the scenarios) <= 5 % of it, both cores busy.

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
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from sim.sweep import Sweep, _plan, _simulate_chunk, run_sweep  # noqa: E402
from sim.workload import parse_spec, spec_model  # noqa: E402

TARGET_S = 300.0
PLANNING_SHARE_TARGET = 0.05
GiB = 2**30

VARY = {
    "workload.memory_bytes": ["4GiB", "8GiB", "16GiB", "32GiB", "64GiB", "128GiB", "256GiB", "512GiB", "768GiB",
                              "1TiB"],
    "workload.scaling": ["absolute", "proportional"],
    "link.bandwidth_Bps": ["1Gbit/s", "10Gbit/s", "25Gbit/s", "40Gbit/s", "100Gbit/s"],
    "strategy.downtime_limit_s": ["50ms", "100ms", "300ms", "500ms", "1s"],
    "link.rtt_s": ["0ms", "1ms", "5ms", "20ms", "50ms"],
    # Last, so a smaller --runs trims it first (to the 20 ms of the 10,000-run shape).
    "host.switchover_s": ["20ms", "5ms", "10ms", "30ms", "50ms", "75ms", "100ms", "150ms", "200ms", "300ms"],
}
VARIANTS = [
    {"name": "qemu-precopy", "strategy": {"kind": "precopy", "stop_rule": "qemu"}},
    {"name": "bhyve-precopy", "strategy": {"kind": "precopy", "stop_rule": "bhyve"}, "host": {"hypervisor": "bhyve"}},
    {"name": "postcopy", "strategy": {"kind": "postcopy"}},
    {"name": "hybrid", "strategy": {"kind": "hybrid", "postcopy_after_rounds": 2}},
]


def make_sweep(model_path: Path, runs: int) -> Sweep:
    """The benchmark sweep, cut down (last [vary] keys first) when fewer than 100,000 runs are asked for."""
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
    ap.add_argument("--runs", type=int, default=100_000, help="scenarios (default 100000, the issue's target)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2, the issue's target)")
    ap.add_argument("--keep", metavar="DIR", help="keep the model and the Parquet table in DIR")
    ap.add_argument("--json", metavar="OUT.json", help="also write the figures to this file")
    ap.add_argument("--sample", type=int, default=2000, help="runs timed in process for the CPU cost per run")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
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
        n = len(sweep)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan, _ = _plan(sweep)  # what run_sweep does first: ids and input hashes
        t_plan = time.perf_counter() - t0
        # CPU seconds per run, from an even sample run here: the workers' CPU is not this process's
        # to count (forkserver children), and on a shared machine wall time is mostly waiting.
        sample = plan[:: max(1, len(plan) // args.sample)]
        c0 = time.process_time()
        _simulate_chunk(sample)
        cpu_per_run = (time.process_time() - c0) / len(sample)
        c0 = time.process_time()
        make_sweep(model_path, args.runs)
        _plan(sweep)
        plan_cpu = time.process_time() - c0
        del plan

        t0, c0 = time.perf_counter(), time.process_time()
        table = run_sweep(sweep, out, jobs=args.jobs, progress=not args.quiet)
        t_run = time.perf_counter() - t0
        # The parent's own CPU in the run (it plans again, collects rows, writes the checkpoint parts and
        # the final table): on 2 cores it competes with the workers, so the projection counts it.
        parent_run_cpu = time.process_time() - c0
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        t0 = time.perf_counter()
        again = run_sweep(sweep, out, jobs=args.jobs, progress=False)
        t_resume = time.perf_counter() - t0
        assert len(again) == len(table) == n

        size = out.stat().st_size
        converged = float(table["converged"].mean())
        by = table.groupby("variant")["converged"].mean().round(3).to_dict()
    end_to_end = t_build + t_run  # run_sweep plans again itself: t_plan is inside t_run
    planning = t_build + t_plan
    figures = {
        "runs": n, "jobs": args.jobs, "cpus": os.cpu_count(), "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "build_s": round(t_build, 2), "plan_s": round(t_plan, 2), "sweep_s": round(t_run, 2),
        "end_to_end_s": round(end_to_end, 2), "planning_share": round(planning / end_to_end, 4),
        "runs_per_s": round(n / end_to_end, 1), "cpu_ms_per_run": round(1e3 * cpu_per_run, 3),
        "planning_cpu_s": round(plan_cpu, 2),
        "parent_run_cpu_s": round(parent_run_cpu, 2),
        # The same work on idle cores: planning in the parent, then the runs and the parent's other work
        # (collecting rows, Parquet parts, the final table) spread over the cores.
        "idle_projection_s": round(plan_cpu + (n * cpu_per_run + max(parent_run_cpu - plan_cpu, 0.0))
                                   / min(args.jobs, os.cpu_count() or 1), 1),
        "idle_planning_share": round(plan_cpu / (plan_cpu + (n * cpu_per_run + max(parent_run_cpu - plan_cpu, 0.0))
                                                 / min(args.jobs, os.cpu_count() or 1)), 4),
        "parent_peak_rss_mib": round(rss_mib), "resume_noop_s": round(t_resume, 2), "parquet_bytes": size,
        "converged_fraction": round(converged, 3), "converged_by_variant": by, "target_s": TARGET_S,
        "planning_share_target": PLANNING_SHARE_TARGET,
        "within_target": end_to_end <= TARGET_S and planning / end_to_end <= PLANNING_SHARE_TARGET,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"sweep of {n} runs: {end_to_end:.1f} s end to end (target {TARGET_S:g} s, ratio "
          f"{end_to_end / TARGET_S:.2f}); planning {planning:.1f} s = {100 * planning / end_to_end:.1f} % "
          f"(target {100 * PLANNING_SHARE_TARGET:g} %); on idle cores: {figures['idle_projection_s']:.0f} s "
          f"({figures['cpu_ms_per_run']:.2f} ms CPU per run, planning {plan_cpu:.1f} s CPU); load "
          f"{load_before:.1f} -> {figures['load_avg_1m_after']}",
          file=sys.stderr)
    return 0 if figures["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
