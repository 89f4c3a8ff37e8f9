"""Two cross-validation schemes for the host constants: by scenario (k-fold) and leave one workload out.

By scenario (:func:`sim.hostfit.assign_folds`), every training fold holds runs of every workload, so
its error says how the model does on a *scenario* it never saw, not on a *workload* it never saw.
Leaving one workload out (:func:`sim.hostfit.block_folds`), workload W's runs are predicted with
constants fit only on the runs of the other workloads. What W's prediction still takes from W is
its input, not a fitted constant: W's own trace (the replay is W's dirty model: per-page write
rates inferred from the trace itself, see :mod:`sim.dirty`), and each run's scenario and the rate
its workload reported in the warm-up *before* migrating (``workload.intensity``, see
:func:`harness.validate.compare.sim_scenario`). :func:`leak_check` verifies per fold that no
training run is of W and that no trace is shared between W and the training runs.

:func:`calibrations` fits both schemes (and the in-sample fit on every run) once; the headline
scheme's held-out predictions are the table's ``miglab`` rows, the other's are added as
``miglab-cv-<scheme>`` rows (:func:`other_scheme_rows`). :func:`cv_summary` compares them metric by
metric beside the repetition spread; :func:`render_section` is the report's section.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.validate.calibration import Calibration, calibrate, from_fold_fits, observation
from harness.validate.compare import (
    MODEL_HELDOUT,
    ValidatedRun,
    comparison_rows,
    measured_metrics,
    sim_scenario,
)
from harness.validate.scores import target_verdicts
from sim.errors import ConfigError

#: The cross-validation schemes: leave one workload out, and k-fold by scenario (the original one).
SCHEMES: tuple[str, ...] = ("workload", "scenario")
#: ``auto``: leave one workload out when the campaign has at least two workloads, else by scenario.
CHOICES: tuple[str, ...] = ("auto", *SCHEMES)
DEFAULT_CHOICE = "auto"
#: Metrics compared side by side (``converged`` is the convergence verdict).
CV_METRICS: tuple[str, ...] = ("bytes_sent", "total_time_s", "downtime_s", "postcopy_requests",
                               "dirty_sync_count", "converged")


def other_model(scheme: str) -> str:
    """The table's model name for a scheme's held-out rows when it is not the headline one."""
    return f"{MODEL_HELDOUT}-cv-{scheme}"


@dataclass
class CrossValidation:
    """The calibrations of one report: the headline scheme's, and the other scheme's (if any)."""

    headline_scheme: str  # "workload", "scenario" or "fixed"
    headline: Calibration
    others: dict[str, Calibration]
    note: str = ""

    def model_of(self, scheme: str) -> str:
        return MODEL_HELDOUT if scheme == self.headline_scheme else other_model(scheme)

    @property
    def schemes(self) -> list[str]:
        return [self.headline_scheme, *self.others]

    def calibration(self, scheme: str) -> Calibration:
        return self.headline if scheme == self.headline_scheme else self.others[scheme]


def _resolve(choice: str, runs: Sequence[ValidatedRun]) -> tuple[str, str]:
    if choice not in CHOICES:
        raise ConfigError(f"--cv {choice}: choose one of {', '.join(CHOICES)}")
    workloads = sorted({r.workload for r in runs})
    if len(workloads) >= 2:
        return ("workload" if choice == "auto" else choice), ""
    if choice == "workload":
        raise ConfigError(f"--cv workload: the runs have one workload ({workloads[0]}); leaving it out leaves "
                          "nothing to fit on (use --cv scenario)")
    return "scenario", (f"only one workload ({workloads[0]}): leave-one-workload-out is impossible, "
                        "so the held-out figures are by scenario")


def calibrations(runs: Sequence[ValidatedRun], folds: int, host_json: str | None = None, *,
                 choice: str = DEFAULT_CHOICE, progress: bool = True) -> CrossValidation:
    """Fit the constants of both schemes (or read ``host_json``: then there is no cross-validation).

    The headline scheme is ``choice`` (``auto``: leave one workload out when there are two or more
    workloads). The by-scenario calibration is exactly what :func:`harness.validate.calibration.calibrate`
    gives, so ``choice="scenario"`` reproduces the earlier reports.
    """
    if host_json:
        return CrossValidation("fixed", calibrate(runs, folds, host_json, progress), {})
    headline, note = _resolve(choice, runs)
    from tqdm import tqdm

    from sim import hostfit

    obs = [observation(r) for r in runs]
    blocks = {r.scenario: r.workload for r in runs}
    schemes = [headline] + [s for s in SCHEMES if s != headline and (s != "workload" or len(set(blocks.values())) > 1)]
    n_fits = sum(len(set(blocks.values())) if s == "workload" else folds for s in schemes) + 1
    bar = tqdm(total=n_fits, desc="calibrate", unit="fit", disable=not progress, file=sys.stderr)

    def fold_done(s: str) -> None:
        bar.set_postfix_str(s)
        bar.update(1)

    fits: dict[str, Any] = {}
    for s in schemes:
        fits[s] = hostfit.cross_validate(obs, folds, progress=fold_done, blocks=blocks if s == "workload" else None)
    full = hostfit.fit(obs)
    bar.update(1)
    bar.close()
    methods = {"workload": "leave-one-workload-out cross-validation",
               "scenario": f"{folds}-fold cross-validation by scenario"}
    cals = {s: from_fold_fits(methods[s], fits[s], full) for s in schemes}
    return CrossValidation(headline, cals.pop(headline), cals, note)


def other_scheme_rows(runs: Sequence[ValidatedRun], cv: CrossValidation) -> list[dict[str, Any]]:
    """Held-out rows (:func:`comparison_rows`) of every non-headline scheme, named :func:`other_model`."""
    from sim import hostfit

    rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, str], dict[str, float]] = {}
    for scheme, cal in cv.others.items():
        for run in runs:
            consts = cal.heldout.get(run.scenario)
            if consts is None:
                continue
            sc = sim_scenario(run)
            key = (sc.to_json(), json.dumps(consts, sort_keys=True))
            if key not in cache:
                cache[key] = hostfit.predict(sc, consts)
            rows += comparison_rows(run, other_model(scheme), cal.fold_of.get(run.scenario), cache[key])
    return rows


def with_other_schemes(table: Any, runs: Sequence[ValidatedRun], cv: CrossValidation) -> Any:
    """``table`` with the other schemes' held-out rows appended."""
    import pandas as pd

    rows = other_scheme_rows(runs, cv)
    if not rows:
        return table
    return pd.concat([table, pd.DataFrame(rows, columns=list(table.columns))], ignore_index=True)


# --------------------------------------------------------------------------- checks and scores
def leak_check(runs: Sequence[ValidatedRun], cal: Calibration) -> dict[str, dict[str, Any]]:
    """Per held-out workload of a leave-one-workload-out calibration: what its fold trained on.

    Raises if a training scenario is of the held-out workload or shares its trace (either would be
    W's own measurement in its own fold).
    """
    workload_of = {r.scenario: r.workload for r in runs}
    traces_of: dict[str, set[str]] = {}
    for r in runs:
        traces_of.setdefault(r.workload, set()).add(str(r.trace))
    out: dict[str, dict[str, Any]] = {}
    for f in cal.folds:
        w = f.get("heldout_workload")
        if not w:
            continue
        train_w = sorted({workload_of[g] for g in f["train_scenarios"] if g in workload_of})
        train_traces = set().union(*(traces_of[x] for x in train_w)) if train_w else set()
        shared = sorted(train_traces & traces_of.get(w, set()))
        own = [g for g in f["train_scenarios"] if workload_of.get(g) == w]
        if own or shared or w in train_w:
            raise AssertionError(f"leave-one-workload-out fold {f['fold']} ({w}) trained on its own workload: "
                                 f"scenarios {own[:3]}, traces {shared[:3]}")
        out[w] = {"fold": f["fold"], "train_workloads": train_w, "train_runs": f["train_runs"],
                  "heldout_scenarios": len(f["heldout_scenarios"]),
                  "train_scenarios_of_heldout_workload": 0, "traces_shared_with_training": 0}
    return out


def _value(metric: str, d: Any) -> dict[str, Any]:
    """One scheme's figure for a metric on rows ``d`` (finite predictions)."""
    n = int(len(d))
    if not n:
        return {"n": 0, "value": math.nan, "text": "-"}
    if metric == "dirty_sync_count":
        v = float((d["error"] == 0).mean())
        within = float((d["abs_error"] <= 1).mean())
        return {"n": n, "value": v, "within_one": within, "text": f"{v * 100:.0f} % exact ({within * 100:.0f} % within 1)"}
    if metric == "converged":
        v = float((d["error"] == 0).mean())
        return {"n": n, "value": v, "text": f"{v * 100:.0f} % right"}
    rel, ab = float(d["abs_rel_error"].median()), float(d["abs_error"].median())
    if metric == "downtime_s":
        return {"n": n, "value": rel, "abs_value": ab, "text": f"{rel * 100:.1f} % ({ab * 1e3:.1f} ms)"}
    return {"n": n, "value": rel, "text": f"{rel * 100:.1f} %"}


def _rows(table: Any, model: str, metric: str, workload: str | None = None) -> Any:
    import numpy as np

    d = table[(table["model"] == model) & (table["metric"] == metric)]
    if metric == "dirty_sync_count":
        d = d[d["strategy_kind"] == "precopy"]
    if workload is not None:
        d = d[d["workload"] == workload]
    return d[np.isfinite(d["predicted"])]


def repetition_floor(runs: Sequence[ValidatedRun], metric: str, workload: str | None = None) -> dict[str, Any]:
    """What the repetitions alone allow: how well one repetition predicts another of the same scenario.

    Per run, |x - median of the scenario's *other* repetitions| (relative to x, like a prediction
    error); for the sync count and the convergence verdict the share of runs equal to their
    scenario's most common value (the best any one number per scenario can do, in-sample).
    Also the usual spread (max - min) / median, median over scenarios with >= 2 values.
    """
    import numpy as np

    by: dict[str, list[float]] = {}
    for r in runs:
        if workload is not None and r.workload != workload:
            continue
        if metric == "dirty_sync_count" and r.record.scenario.strategy.kind != "precopy":
            continue
        v = measured_metrics(r).get(metric)
        if v is not None and math.isfinite(v):
            by.setdefault(r.scenario, []).append(float(v))
    groups = [np.array(v) for v in by.values() if len(v) >= 2]
    if not groups:
        return {"n": 0, "value": math.nan, "text": "-"}
    n = int(sum(len(g) for g in groups))
    spread = float(np.median([(g.max() - g.min()) / np.median(g) if np.median(g) else 0.0 for g in groups]))
    if metric in ("dirty_sync_count", "converged"):
        agree = []
        for g in groups:
            vals, counts = np.unique(g, return_counts=True)
            agree.append(counts.max() / len(g))
        share = float(sum(a * len(g) for a, g in zip(agree, groups, strict=True)) / n)
        word = "at the mode" if metric == "dirty_sync_count" else "agree with the majority"
        return {"n": n, "value": share, "spread_rel": spread,
                "text": f"{share * 100:.0f} % {word}" + (f"; spread {spread * 100:.0f} %"
                                                          if metric == "dirty_sync_count" else "")}
    # Each repetition predicted by the median of its siblings (leave one repetition out), so a run
    # never predicts itself.
    ab_l: list[float] = []
    rel_l: list[float] = []
    for g in groups:
        for i in range(len(g)):
            ref = float(np.median(np.delete(g, i)))
            ab_l.append(abs(g[i] - ref))
            if g[i] > 0:
                rel_l.append(abs(g[i] - ref) / g[i])
    value = float(np.median(rel_l)) if rel_l else math.nan
    abs_value = float(np.median(ab_l))
    unit = f" ({abs_value * 1e3:.1f} ms)" if metric == "downtime_s" else ""
    return {"n": n, "value": value, "abs_value": abs_value, "spread_rel": spread,
            "text": f"{value * 100:.1f} %{unit}; spread {spread * 100:.0f} %"}


def cv_summary(table: Any, runs: Sequence[ValidatedRun], cv: CrossValidation) -> dict[str, Any]:
    """``summary.json``'s ``cross_validation``: both schemes per metric (and per workload), the repetition
    floor beside them, the targets under each scheme, and the leak check of leaving a workload out."""
    workloads = sorted({r.workload for r in runs})
    schemes: dict[str, Any] = {}
    for s in cv.schemes:
        model = cv.model_of(s)
        cal = cv.calibration(s)
        schemes[s] = {"method": cal.method, "model": model,
                      "metrics": {m: _value(m, _rows(table, model, m)) for m in CV_METRICS},
                      "per_workload": {w: {m: _value(m, _rows(table, model, m, w)) for m in CV_METRICS}
                                       for w in workloads},
                      "targets": target_verdicts(table, model) if model != MODEL_HELDOUT else "see targets"}
    doc: dict[str, Any] = {
        "headline": cv.headline_scheme, "note": cv.note, "schemes": schemes,
        "repetition_floor": {"all": {m: repetition_floor(runs, m) for m in CV_METRICS},
                             **{w: {m: repetition_floor(runs, m, w) for m in CV_METRICS} for w in workloads}},
        "inputs_of_the_heldout_workload": [
            "its own trace (the replay is the workload's dirty model; nothing in it is fitted across runs)",
            "each run's own scenario (link, strategy, guest size)",
            "workload.intensity: the rate the run's workload reported in its warm-up before migrating, over the "
            "trace's rate (known before the migration starts)"],
    }
    wl = cv.calibration("workload") if "workload" in cv.schemes else None
    if wl is not None:
        doc["leak_check"] = leak_check(runs, wl)
    return doc


def hostfit_schemes(cv: CrossValidation) -> dict[str, Any]:
    """``hostfit.json``'s ``schemes``: every scheme's folds and which fold judges each scenario."""
    return {s: {"method": cv.calibration(s).method, "model": cv.model_of(s), "folds": cv.calibration(s).folds,
                "scenario_fold": cv.calibration(s).fold_of} for s in cv.schemes if s != "fixed"}


# --------------------------------------------------------------------------- the report's section
_LABEL = {"bytes_sent": "bytes", "total_time_s": "total time", "downtime_s": "downtime",
          "postcopy_requests": "post-copy requests", "dirty_sync_count": "sync count (pre-copy)",
          "converged": "convergence verdict"}
_TITLE = {"workload": "leave one workload out", "scenario": "by scenario"}


def render_section(doc: dict[str, Any] | None) -> list[str]:
    """The report's "Cross-validation: by workload and by scenario" section (empty without both schemes)."""
    if not doc or len(doc.get("schemes", {})) < 2:
        return [f"_{doc['note']}_\n"] if doc and doc.get("note") else []
    schemes = list(doc["schemes"])
    floor = doc["repetition_floor"]
    leaks = ", ".join(f"{w}: fit on {len(v['train_workloads'])} other workloads, {v['train_runs']} runs"
                      for w, v in doc.get("leak_check", {}).items())
    head = " | ".join(f"{_TITLE[s]}{' (headline)' if s == doc['headline'] else ''}" for s in schemes)
    lines = ["## Cross-validation: by workload and by scenario\n",
             "Leave one workload out: each workload's runs are predicted with host constants fit only on the runs "
             "of the other workloads. By scenario: k-fold, every training fold holds runs of every workload. The "
             "headline figures (targets above) are leave-one-workload-out. What a held-out workload's prediction "
             "still takes from that workload is its input, not a fitted constant: its own trace (the trace replay "
             "*is* its dirty model, calibrated from that trace alone), each run's scenario, and the rate its "
             "workload reported in the warm-up before migrating. Checked per fold: no training run is of the "
             "held-out workload and no trace is shared with it "
             f"({leaks}).\n",
             "Median |relative error| (downtime also in ms; sync count: share exact, within one; convergence: share "
             "of runs whose verdict is right). *Repetition floor*: the same figure when each run is predicted by the "
             "median of the *other* repetitions of its scenario (sync count and convergence: the share of runs at "
             "their scenario's most common value, the best one number per scenario can score), and the median "
             "spread (max - min) / median of the repetitions. An error at the floor is as good as the measurements "
             "allow.\n",
             f"| metric | {head} | repetition floor | n |", "|---|" + "---|" * len(schemes) + "---|---|"]
    for m in CV_METRICS:
        cells = [doc["schemes"][s]["metrics"][m]["text"] for s in schemes]
        n = doc["schemes"][schemes[0]]["metrics"][m]["n"]
        lines.append(f"| {_LABEL[m]} | " + " | ".join(cells) + f" | {floor['all'][m]['text']} | {n} |")
    workloads = list(doc["schemes"][schemes[0]]["per_workload"])
    lines += ["\nPer held-out workload (" + " / ".join(_TITLE[s] for s in schemes) + "; repetition floor):\n",
              "| metric | " + " | ".join(workloads) + " |", "|---|" + "---|" * len(workloads)]
    for m in CV_METRICS:
        cells = []
        for w in workloads:
            vals = " / ".join(doc["schemes"][s]["per_workload"][w][m]["text"] for s in schemes)
            cells.append(f"{vals}; {floor[w][m]['text'].split(';')[0]}")
        lines.append(f"| {_LABEL[m]} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines

