"""Where the pre-copy sync counts of the full campaign differ (NOTES.md, section Rounds).

Re-simulates every completed pre-copy run with the constants that judge it in the report
(``hostfit.json``, headline scheme) and puts the measured sync times (first 20 Hz poll at which
QEMU's ``dirty-sync-count`` reached k) beside the simulated rounds. Writes ``rounds.csv`` (one row
per run) and prints the summaries quoted in NOTES.md.

    PYTHONPATH=. python results/validation/full/rounds_analysis.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.validate import validated_runs
from harness.validate.compare import sim_scenario
from sim.engine import simulate
from sim.hostfit import _coerced

HERE = Path(__file__).resolve().parent


def measured_syncs(rec) -> list[tuple[int, float, float]]:
    """(k, time of the first poll with count >= k, remaining bytes then) for every sync the polls saw."""
    out, seen = [], 0
    for p in rec.timeline:
        while p.dirty_sync_count > seen:
            seen += 1
            out.append((seen, p.t_s, float(p.remaining_bytes)))
    return out


def main() -> None:
    hf = json.loads((HERE / "hostfit.json").read_text())
    folds = {f["fold"]: f["constants"] for f in hf["folds"]}
    rows = []
    cache: dict[str, object] = {}
    for run in validated_runs([HERE / "runs"]):
        rec = run.record
        if rec.scenario.strategy.kind != "precopy" or not rec.completed:
            continue
        consts = folds[hf["scenario_fold"][run.scenario]]
        sc = sim_scenario(run).replace(**_coerced(consts))
        key = sc.to_json()
        if key not in cache:
            cache[key] = simulate(sc)
        r = cache[key]
        rt = r.rounds_table
        live = rt[rt["phase"] == "precopy"] if "phase" in rt else rt
        thr = float(live["threshold_bytes"].iloc[-1]) if len(live) else np.nan
        ms = measured_syncs(rec)
        m_total = int(rec.stats.dirty_sync_count)
        p_total = int(r.dirty_sync_count)
        # Sync 2 ends the first pass (sync 1 is setup); the model's round 0 is the first pass.
        m_t2 = next((t for k, t, _ in ms if k == 2), np.nan)
        p_t2 = float(live["t_start_s"].iloc[0] + live["duration_s"].iloc[0]) if len(live) else np.nan
        pend = live["pending_pages_after"].to_numpy() * 4096.0 if len(live) else np.array([])
        last_ratio = float(pend[-1] / thr) if len(pend) else np.nan
        prev_ratio = float(pend[-2] / thr) if len(pend) >= 2 else np.nan
        rows.append({
            "run": run.path.stem, "workload": run.workload, "link": run.link, "strategy": run.strategy,
            "measured": m_total, "predicted": p_total, "error": p_total - m_total,
            "measured_t_sync2_s": m_t2, "predicted_t_sync2_s": p_t2,
            "measured_total_s": rec.stats.total_time_s, "predicted_total_s": r.total_time_s,
            "threshold_MiB": thr / 2**20, "pred_last_pending_over_threshold": last_ratio,
            "pred_prev_pending_over_threshold": prev_ratio,
            "measured_tail_gap_ms": 1e3 * float(np.median(np.diff([t for _, t, _ in ms[2:]]))) if len(ms) > 4 else np.nan,
            "predicted_tail_gap_ms": 1e3 * float(np.median(live["duration_s"].to_numpy()[1:])) if len(live) > 2 else np.nan,
        })
    df = pd.DataFrame(rows).sort_values("run")
    df.to_csv(HERE / "rounds.csv", index=False)
    pd.set_option("display.width", 250)
    print(df[["run", "measured", "predicted", "error", "measured_t_sync2_s", "predicted_t_sync2_s", "threshold_MiB",
              "pred_last_pending_over_threshold", "pred_prev_pending_over_threshold", "measured_tail_gap_ms",
              "predicted_tail_gap_ms"]].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print("\nexact", (df.error == 0).mean(), "within one", (df.error.abs() <= 1).mean(), "n", len(df))
    print("\nerror by workload x link x strategy (median)")
    print(df.groupby(["workload", "link", "strategy"])["error"].agg(["median", "min", "max"]).to_string())
    print("\nerror counts", df.error.value_counts().sort_index().to_dict())
    print("by link", df.groupby("link")["error"].agg(["mean", "median", lambda e: (e == 0).mean()]).to_string())
    print("by strategy", df.groupby("strategy")["error"].agg(["mean", "median", lambda e: (e == 0).mean()]).to_string())
    print("by workload", df.groupby("workload")["error"].agg(["mean", "median", lambda e: (e == 0).mean()]).to_string())
    # repetitions: how often do the three runs of one scenario agree?
    sc = df.assign(scn=df.run.str.rsplit("__", n=1).str[0]).groupby("scn")["measured"]
    print("\nscenarios whose repetitions agree on the sync count:", int((sc.nunique() == 1).sum()), "of", sc.ngroups)
    print("measured range per scenario:", sc.agg(lambda v: v.max() - v.min()).value_counts().sort_index().to_dict())
    d2 = (df.predicted_t_sync2_s - df.measured_t_sync2_s) / df.measured_t_sync2_s
    print("first pass end (sync 2) time, pred vs meas, median rel", float(d2.median()), "p90 |rel|", float(d2.abs().quantile(0.9)))


if __name__ == "__main__":
    main()
