"""Summaries of the comparison: the targets' verdicts, error statistics and measurement noise.

All of them read the tidy table of :func:`harness.validate.compare.compare`
(or, for the spread, the runs themselves) and return plain data that the
report and ``summary.json`` print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from harness.validate.compare import BASELINES, COMPARED, MODEL_HELDOUT, ValidatedRun, measured_metrics

#: (metric, threshold on the median absolute relative error, description); see :func:`target_verdicts`.
TARGETS: tuple[tuple[str, float, str], ...] = (
    ("bytes_sent", 0.05, "median |rel. error| <= 5 %"),
    ("total_time_s", 0.10, "median |rel. error| <= 10 %"),
    ("downtime_s", 0.25, "median |error| <= max(25 %, 20 ms)"),
    ("dirty_sync_count", 0.90, "exact in >= 90 % of pre-copy runs"),
    ("postcopy_requests", 0.30, "median |rel. error| <= 30 %"),
)
DOWNTIME_FLOOR_S = 0.020


def target_verdicts(table: Any, model: str = MODEL_HELDOUT) -> list[dict[str, Any]]:
    """The issue's targets judged on ``model``'s rows, with every baseline on the same runs."""
    import numpy as np

    out = []
    for metric, limit, text in TARGETS:
        d = table[(table["metric"] == metric) & (table["model"] == model)]
        if metric == "dirty_sync_count":
            d = d[d["strategy_kind"] == "precopy"]
        d = d[np.isfinite(d["predicted"])]
        entry: dict[str, Any] = {"metric": metric, "target": text, "n": int(len(d))}
        if metric == "dirty_sync_count":
            value = float((d["error"] == 0).mean()) if len(d) else math.nan
            met = bool(value >= limit)
            entry.update(value=value, value_text=f"{value * 100:.0f} % exact", shortfall=max(0.0, limit - value))
        else:
            rel = float(d["abs_rel_error"].median()) if len(d) else math.nan
            ab = float(d["abs_error"].median()) if len(d) else math.nan
            if metric == "downtime_s":
                met = bool(rel <= limit or ab <= DOWNTIME_FLOOR_S)
                entry.update(value=rel, abs_value=ab, value_text=f"{rel * 100:.1f} % ({ab * 1e3:.1f} ms)",
                             shortfall=0.0 if met else min(rel - limit, (ab - DOWNTIME_FLOOR_S) / max(ab, 1e-9)))
            else:
                met = bool(rel <= limit)
                entry.update(value=rel, value_text=f"{rel * 100:.1f} %", shortfall=max(0.0, rel - limit))
        entry["met"] = bool(met) if len(d) else False
        # Baselines: the same metric on the runs both answered.
        beats = {}
        for b in BASELINES:
            db = table[(table["metric"] == metric) & (table["model"] == b) & np.isfinite(table["predicted"])]
            if not len(db):
                continue
            common = set(db["run"]) & set(d["run"])
            if not common:
                continue
            mine = d[d["run"].isin(common)]
            theirs = db[db["run"].isin(common)]
            if metric == "dirty_sync_count":
                a, c = float((mine["error"] != 0).mean()), float((theirs["error"] != 0).mean())
            else:
                a, c = float(mine["abs_rel_error"].median()), float(theirs["abs_rel_error"].median())
            beats[b] = {"miglab": a, "baseline": c, "n": len(common), "better": bool(a < c or (a == c == 0))}
        entry["baselines"] = beats
        out.append(entry)
    return out


def error_summary(table: Any) -> Any:
    """Median and p90 of |rel. error| (and of |error|) per metric, strategy and model."""
    import numpy as np
    import pandas as pd

    d = table[np.isfinite(table["predicted"]) & (table["metric"] != "converged")]
    rows = []
    for (metric, strategy, model), g in d.groupby(["metric", "strategy", "model"]):
        if metric == "dirty_sync_count":
            rows.append({"metric": metric, "strategy": strategy, "model": model, "n": len(g),
                         "median_abs_rel": math.nan, "p90_abs_rel": math.nan,
                         "median_abs": float(g["abs_error"].median()), "p90_abs": float(g["abs_error"].quantile(0.9)),
                         "exact_share": float((g["error"] == 0).mean())})
            continue
        rows.append({"metric": metric, "strategy": strategy, "model": model, "n": len(g),
                     "median_abs_rel": float(g["abs_rel_error"].median()),
                     "p90_abs_rel": float(g["abs_rel_error"].quantile(0.9)),
                     "median_abs": float(g["abs_error"].median()), "p90_abs": float(g["abs_error"].quantile(0.9)),
                     "exact_share": math.nan})
    return pd.DataFrame(rows)


def noise_summary(spread: Any) -> dict[str, Any]:
    """Median and max relative spread (max - min) / median of the repetitions, per metric."""
    out = {}
    for metric, g in spread[spread["n"] >= 2].groupby("metric"):
        out[metric] = {"median_spread_rel": float(g["spread_rel"].median()),
                       "max_spread_rel": float(g["spread_rel"].max()), "scenarios": int(len(g))}
    return out


def measurement_spread(runs: Sequence[ValidatedRun]) -> Any:
    """Per scenario and metric: the repetitions' median, min, max and (max - min) / median."""
    import numpy as np
    import pandas as pd

    rows = []
    by: dict[str, list[ValidatedRun]] = {}
    for r in runs:
        by.setdefault(r.scenario, []).append(r)
    for sc, rs in sorted(by.items()):
        for metric in COMPARED:
            if metric == "converged":
                continue
            v = np.array([measured_metrics(r).get(metric, np.nan) for r in rs], dtype=float)
            v = v[np.isfinite(v)]
            if not len(v):
                continue
            med = float(np.median(v))
            rows.append({"scenario": sc, "strategy": rs[0].strategy, "metric": metric, "n": int(len(v)),
                         "median": med, "min": float(v.min()), "max": float(v.max()),
                         "spread_rel": float((v.max() - v.min()) / med) if med else math.nan,
                         "completed": sum(r.record.completed for r in rs), "runs": len(rs)})
    return pd.DataFrame(rows, columns=["scenario", "strategy", "metric", "n", "median", "min", "max", "spread_rel",
                                       "completed", "runs"])




def round_cap_summary(runs: Sequence[ValidatedRun], table: Any) -> list[dict[str, Any]]:
    """Per capped scenario: K, how often and at which sync the cap fired, the time from the cap to the
    switchover, and the held-out predictions against the median measurements."""
    import numpy as np

    by: dict[str, list[ValidatedRun]] = {}
    for r in runs:
        if "round_cap" in r.record.options:
            by.setdefault(r.scenario, []).append(r)
    held = table[table["model"] == MODEL_HELDOUT] if len(table) else table
    out = []
    for sc, rs in sorted(by.items()):
        caps = [r.record.options["round_cap"] for r in rs]
        fired = [c for c in caps if c.get("fired_sync_count") is not None]
        lags = []
        for r, c in zip(rs, caps, strict=True):
            t = c.get("fired_t_s")
            after = [p.t_s for p in r.record.timeline if t is not None and p.t_s > t and p.status != "active"]
            if after:
                lags.append(after[0] - t)
        pred: dict[str, float] = {}
        meas: dict[str, float] = {}
        for metric in ("dirty_sync_count", "downtime_s", "bytes_sent", "total_time_s"):
            h = held[(held["scenario"] == sc) & (held["metric"] == metric)] if len(held) else held
            if len(h):
                pred[metric] = float(np.nanmedian(h["predicted"])) if np.isfinite(h["predicted"]).any() else math.nan
                meas[metric] = float(h["measured"].median())
        out.append({"scenario": sc, "max_rounds": int(caps[0]["max_rounds"]), "runs": len(rs),
                    "fired_runs": len(fired),
                    "fired_sync_count": int(np.median([c["fired_sync_count"] for c in fired])) if fired else None,
                    "cap_to_switchover_s": float(np.median(lags)) if lags else math.nan,
                    "predicted": pred, "measured": meas})
    return out


def memory_check_summary(runs: Sequence[ValidatedRun]) -> dict[str, Any]:
    """How many completed runs had their memory compared page by page, and which had differing pages."""
    completed = [r for r in runs if r.record.completed or r.record.memory_check is not None]
    checked = [r for r in runs if r.record.memory_check is not None]
    bad = [r for r in checked if r.record.memory_check is not None and r.record.memory_check.pages_differing]
    return {"completed": sum(r.record.completed for r in runs), "verified": len(checked),
            "differing_runs": len(bad),
            "pages_differing": int(sum(r.record.memory_check.pages_differing for r in bad
                                       if r.record.memory_check is not None)),
            "failed_runs": [r.path.stem for r in bad], "considered": len(completed)}
