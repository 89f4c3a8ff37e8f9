"""Prediction against measurement: the tidy comparison table of every validated run and model.

:func:`validated_runs` reads the records ``miglab validate`` wrote and
resolves their traces; :func:`compare` predicts each run with the
simulator (held-out, in-sample and default host constants) and with the
baselines, and puts both sides into one row per (run, model, metric)
(:data:`TABLE_COLUMNS`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from harness.record import RunRecord
from harness.validate.campaign import RUNS_DIR
from sim.errors import ConfigError
from sim.scenario import Scenario

if TYPE_CHECKING:
    from harness.validate.calibration import Calibration

log = logging.getLogger(__name__)

MODEL_HELDOUT = "miglab"
MODEL_TRAIN = "miglab-train"
MODEL_DEFAULT = "miglab-uncalibrated"
MODEL_SIZE_CV = "miglab-size-cv"  # constants fit on every other guest size (a scale campaign's cv = "size")
BASELINES: tuple[str, ...] = ("geometric", "simgrid", "qemu-expected-downtime")
MODELS: tuple[str, ...] = (MODEL_HELDOUT, MODEL_TRAIN, MODEL_DEFAULT, *BASELINES)
COMPARED: tuple[str, ...] = ("total_time_s", "downtime_s", "guest_pause_s", "bytes_sent", "dirty_sync_count",
                             "postcopy_requests", "converged")
TABLE_COLUMNS: tuple[str, ...] = ("scenario", "workload", "link", "strategy", "strategy_kind", "repetition", "run",
                                  "outcome", "model", "fold", "metric", "predicted", "measured", "error",
                                  "abs_error", "rel_error", "abs_rel_error")


@dataclass(frozen=True)
class ValidatedRun:
    """A run record with its validation metadata resolved."""

    path: Path
    record: RunRecord
    scenario: str
    repetition: int
    workload: str
    link: str
    strategy: str
    trace: Path


def validated_runs(paths: Iterable[str | Path]) -> list[ValidatedRun]:
    """Records written by ``miglab validate`` (files or directories of them), with their traces resolved."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            sub = p / RUNS_DIR if (p / RUNS_DIR).is_dir() else p
            files.extend(sorted(sub.glob("*.json")))
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError("no such file or directory", where=p)
    out = []
    for f in files:
        rec = RunRecord.load(f)
        meta = rec.options.get("validation")
        if not isinstance(meta, dict) or "trace" not in meta:
            raise ConfigError("not a validation run (no options.validation.trace); run it through "
                              "`miglab validate`", where=f)
        trace = (f.parent / str(meta["trace"])).resolve()
        if not trace.exists():
            raise ConfigError(f"its trace {trace} is missing", where=f)
        out.append(ValidatedRun(f, rec, str(meta["scenario"]), int(meta["repetition"]), str(meta["workload"]),
                                str(meta["link"]), str(meta["strategy"]), trace))
    if not out:
        raise ConfigError(f"no run records found in {', '.join(map(str, paths))}")
    return out


def sim_scenario(run: ValidatedRun) -> Scenario:
    """The scenario the simulator replays for a run: the run's own, with its trace as the workload."""
    from sim.trace import load

    t = load(run.trace)
    changes: dict[str, Any] = {
        "workload.kind": "trace", "workload.path": str(run.trace), "workload.spec": "",
        "workload.memory_bytes": t.memory_bytes, "workload.page_size_bytes": t.page_size}
    # A CPU-bound workload (redis) runs at whatever CPU share its guest gets, so its speed when traced and
    # when migrated differ. The rate it achieved in the warm-up before migrating is known before the
    # migration starts; replay the trace at that speed.
    before, traced = run.record.workload_rate.before, t.meta.get("workload_achieved_rate")
    if before and traced and run.record.workload_rate.unit == t.meta.get("workload_achieved_rate_unit"):
        changes["workload.intensity"] = float(before) / float(traced)
    return run.record.scenario.replace(**changes)


def trace_summary(path: Path) -> dict[str, float]:
    """What the baselines need of a trace: mean dirty rate (B/s), zero-page share, page count and size."""
    import numpy as np

    from sim.trace import load

    t = load(path)
    interval = float(np.mean(np.asarray(t.t_end_s) - np.asarray(t.t_start_s)))
    zero = float(t.meta.get("zero_page_fraction") or 0.0)
    return {"dirty_Bps": float(np.mean(t.counts)) / interval * t.page_size, "zero_fraction": zero,
            "n_pages": float(t.n_pages), "page_size": float(t.page_size)}


def baseline_predictions(run: ValidatedRun, constants: dict[str, float], trace_stats: dict[str, float]
                         ) -> dict[str, dict[str, float]]:
    """The baselines' answers for a pre-copy run (empty for post-copy and hybrid, which they do not model).

    Both analytic models get what the simulator gets: the pages that must
    cross (non-zero pages at page + header bytes, zero pages at 1 + header),
    the link at the same calibrated efficiency, the same switchover cost and
    one-way delay; the dirty rate is the trace's mean rate of distinct pages
    per interval. The geometric model stops at the downtime limit; SimGrid
    uses its own fixed 30 ms threshold (``simgrid_threshold_s``), as SimGrid does.
    """
    from sim.baselines import geometric_precopy, simgrid_precopy

    sc = run.record.scenario
    out: dict[str, dict[str, float]] = {}
    if sc.strategy.kind != "precopy":
        return out
    expected = [p.expected_downtime_s for p in run.record.timeline
                if p.status == "active" and p.expected_downtime_s is not None]
    if "round_cap" in run.record.options:
        # A fixed-round run: both closed forms stop on a threshold, which this run does not have; QEMU's own
        # estimate of the stop-and-copy still applies.
        if expected:
            out["qemu-expected-downtime"] = {"downtime_s": float(expected[-1])}
        return out
    header = constants.get("link.header_bytes_per_page", 0.0)
    page = trace_stats["page_size"]
    n = trace_stats["n_pages"]
    zero = trace_stats["zero_fraction"]
    mem = n * (1 - zero) * (page + header) + n * zero * (1 + header)
    rate = sc.link.bandwidth_Bps * constants.get("host.throughput_efficiency", 1.0)
    resume = constants.get("host.switchover_s", 0.0) + sc.link.rtt_s / 2
    setup = constants.get("host.setup_s", 0.0)
    g = geometric_precopy(mem, rate, trace_stats["dirty_Bps"], rate * sc.strategy.downtime_limit_s, resume_s=resume)
    out["geometric"] = {"total_time_s": g.total_time_s + setup, "downtime_s": g.downtime_s, "bytes_sent": g.bytes_sent,
                        "dirty_sync_count": float(g.rounds + 2), "converged": float(g.converged)}
    s = simgrid_precopy(mem, rate, trace_stats["dirty_Bps"] / rate, latency_s=sc.link.rtt_s / 2,
                        max_downtime_s=sc.strategy.simgrid_threshold_s)
    out["simgrid"] = {"total_time_s": s.total_time_s + setup + constants.get("host.switchover_s", 0.0),
                      "downtime_s": s.downtime_s + constants.get("host.switchover_s", 0.0),
                      "bytes_sent": s.bytes_sent, "dirty_sync_count": float(s.rounds + 3),
                      "converged": float(s.converged)}
    if expected:
        out["qemu-expected-downtime"] = {"downtime_s": float(expected[-1])}
    return out


def measured_metrics(run: ValidatedRun) -> dict[str, float]:
    """The measured side of the comparison: convergence always, the rest only for a completed run."""
    s = run.record.stats
    kind = run.record.scenario.strategy.kind
    m: dict[str, float] = {"converged": float(run.record.completed)}
    if run.record.completed:
        # guest_pause_s: QMP STOP (source) to RESUME (destination); only records since it was measured have it
        for k in ("total_time_s", "downtime_s", "guest_pause_s"):
            v = getattr(s, k)
            if v is not None:
                m[k] = float(v)
        m["bytes_sent"] = float(cast(int, s.bytes_sent))  # QEMU records always count the bytes
        m["dirty_sync_count"] = float(s.dirty_sync_count)
        if kind in ("postcopy", "hybrid"):
            m["postcopy_requests"] = float(s.postcopy_requests)
    return m


def comparison_rows(run: ValidatedRun, model: str, fold: int | None, predicted: dict[str, float]
                    ) -> list[dict[str, Any]]:
    """Tidy rows (one per metric both sides have) for one run and one model."""
    rows = []
    meas = measured_metrics(run)
    for metric in COMPARED:
        if metric not in meas or metric not in predicted:
            continue
        p, m = float(predicted[metric]), float(meas[metric])
        if metric != "converged" and predicted.get("converged", 1.0) < 0.5:
            p = math.nan  # a prediction that did not converge has no time, downtime or bytes to compare
        err = p - m
        rel = err / m if m != 0 else (0.0 if err == 0 else math.nan)
        rows.append({"scenario": run.scenario, "workload": run.workload, "link": run.link, "strategy": run.strategy,
                     "strategy_kind": run.record.scenario.strategy.kind, "repetition": run.repetition,
                     "run": run.path.stem, "outcome": run.record.outcome, "model": model,
                     "fold": -1 if fold is None else fold, "metric": metric, "predicted": p, "measured": m,
                     "error": err, "abs_error": abs(err), "rel_error": rel, "abs_rel_error": abs(rel)})
    return rows


def compare(runs: Sequence[ValidatedRun], cal: Calibration, *, progress: bool = True) -> Any:
    """The tidy comparison table (pandas DataFrame, :data:`TABLE_COLUMNS`) of every run and model."""
    import pandas as pd
    from tqdm import tqdm

    from sim import hostfit

    cache: dict[tuple[str, str], dict[str, float]] = {}
    tstats: dict[Path, dict[str, float]] = {}

    def pred(sc: Scenario, consts: dict[str, float]) -> dict[str, float]:
        key = (sc.to_json(), json.dumps(consts, sort_keys=True))
        if key not in cache:
            cache[key] = hostfit.predict(sc, consts)
        return cache[key]

    rows: list[dict[str, Any]] = []
    for run in tqdm(runs, desc="compare", unit="run", disable=not progress, file=sys.stderr):
        sc = sim_scenario(run)
        consts = cal.heldout.get(run.scenario)
        if consts is None:  # a scenario no fold could judge (e.g. too few scenarios): no held-out prediction
            log.warning("%s: no held-out constants", run.scenario)
        else:
            rows += comparison_rows(run, MODEL_HELDOUT, cal.fold_of.get(run.scenario), pred(sc, consts))
        if cal.train is not None:
            rows += comparison_rows(run, MODEL_TRAIN, None, pred(sc, cal.train))
        rows += comparison_rows(run, MODEL_DEFAULT, None, pred(sc, {}))
        size_consts = getattr(cal, "size_cv", {}).get(run.scenario)
        if size_consts is not None:
            rows += comparison_rows(run, MODEL_SIZE_CV, None, pred(sc, size_consts))
        if run.trace not in tstats:
            tstats[run.trace] = trace_summary(run.trace)
        for model, p in baseline_predictions(run, consts or {}, tstats[run.trace]).items():
            rows += comparison_rows(run, model, cal.fold_of.get(run.scenario), p)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
