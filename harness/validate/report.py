"""The validation report: ``table.csv`` and friends, ``summary.json`` and ``report.md``.

:func:`build_report` rebuilds every output of a validation directory from
its run records (calibrate, compare, score, plot, write), so a report always
matches the records and today's model. :func:`render_report` writes the
Markdown, one section per phase.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.validate import crossval
from harness.validate.calibration import Calibration, calibrate
from harness.validate.campaign import RUNS_DIR, Campaign
from harness.validate.compare import (
    BASELINES,
    COMPARED,
    MODEL_HELDOUT,
    MODEL_TRAIN,
    MODELS,
    ValidatedRun,
    compare,
    validated_runs,
)
from harness.validate.plots import write_plots
from harness.validate.scores import (
    error_summary,
    measurement_spread,
    memory_check_summary,
    noise_summary,
    round_cap_summary,
    target_verdicts,
)
from sim.atomic import atomic_open


def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x * 100:.1f} %"


def _fmt_metric(metric: str, v: float) -> str:
    from sim.units import format_bytes, format_duration

    if v is None or not math.isfinite(v):
        return "-"
    if metric.endswith("_s"):
        return format_duration(v)
    if metric == "bytes_sent":
        return format_bytes(v)
    return f"{v:.0f}"


def build_report(out_dir: str | Path, campaign: Campaign | None = None, *, host_json: str | None = None,
                 progress: bool = True, cv: str = crossval.DEFAULT_CHOICE) -> dict[str, Any]:
    """Rebuild ``table.csv``, ``spread.csv``, ``hostfit.json``, ``host.json``, ``summary.json``, plots and
    ``report.md`` from the records under ``out_dir/runs``; return the summary.

    ``cv`` is the headline cross-validation scheme (:data:`harness.validate.crossval.CHOICES`); the
    other scheme's held-out rows are in the table too, as ``miglab-cv-<scheme>``."""
    out = Path(out_dir)
    if campaign is None and (out / "campaign.toml").exists():
        campaign = Campaign.load(out / "campaign.toml")
    folds = campaign.folds if campaign else 3
    runs = validated_runs([out / RUNS_DIR])
    train_max = getattr(campaign, "train_max_memory_bytes", 0) if campaign else 0
    if train_max and not host_json:
        # A scale campaign: the honest split is by guest size (small guests train, bigger ones are judged).
        cvs = crossval.CrossValidation("size", calibrate(runs, folds, host_json, progress,
                                                         train_max_memory_bytes=train_max,
                                                         cv=getattr(campaign, "cv", "")), {})
    else:
        cvs = crossval.calibrations(runs, folds, host_json, choice=cv, progress=progress)
    cal = cvs.headline
    table = crossval.with_other_schemes(compare(runs, cal, progress=progress), runs, cvs)
    spread = measurement_spread(runs)
    errs = error_summary(table)
    _write_tables(out, table, spread, errs, cal, campaign, crossval.hostfit_schemes(cvs))
    plots = write_plots(table, out)
    summary = _summary(out, campaign, runs, cal, table, spread, plots)
    summary["cross_validation"] = crossval.cv_summary(table, runs, cvs)
    with atomic_open(out / "summary.json") as f:
        json.dump(summary, f, indent=1, default=float)
    with atomic_open(out / "report.md") as f:
        f.write(render_report(campaign, runs, cal, table, spread, errs, summary))
    return summary


def _write_tables(out: Path, table: Any, spread: Any, errs: Any, cal: Calibration, campaign: Campaign | None,
                  schemes: dict[str, Any] | None = None) -> None:
    """The CSV tables, the constants per fold and (when fitted here) ``host.json``."""
    with atomic_open(out / "table.csv") as f:
        table.to_csv(f, index=False)
    with atomic_open(out / "spread.csv") as f:
        spread.to_csv(f, index=False)
    with atomic_open(out / "errors.csv") as f:
        errs.to_csv(f, index=False)
    with atomic_open(out / "hostfit.json") as f:
        json.dump({"method": cal.method, "host_json": cal.host_json, "folds": cal.folds,
                   "scenario_fold": cal.fold_of, "schemes": schemes or {}}, f, indent=1, default=float)
    if cal.train is not None:
        from sim.hostfit import host_json_constants
        from sim.hostinfo import fit_range_of_runs

        fit: dict[str, Any] = {"method": "fit on every completed run of this campaign (in-sample); the report's "
                                         "held-out errors use per-fold constants (hostfit.json)",
                               "campaign": campaign.name if campaign else ""}
        if (out / "runs").is_dir():  # where these constants hold: the sizes and links they were fitted on
            fit["range"] = {**fit_range_of_runs([out / "runs"]),
                            "derived_from": "runs/ beside this file (sim.hostinfo.fit_range_of_runs)"}
        fit["provenance"] = _provenance(out, campaign)
        with atomic_open(out / "host.json") as f:
            json.dump({"constants": host_json_constants(cal.train), "fit": fit}, f, indent=1)


def _provenance(out: Path, campaign: Campaign | None) -> dict[str, Any]:
    """pyperf-style provenance of a report: this process, the campaign file and the traces it replays."""
    from sim.provenance import provenance
    from sim.trace import file_sha256

    files = [out / "campaign.toml", *sorted((out / "traces").glob("*.npz"))]
    inputs = {str(p.relative_to(out)): file_sha256(p) for p in files if p.is_file()}
    versions = sorted({str(v).split("(")[0].strip() for v in _run_versions(out)})
    return provenance(inputs=inputs, qemu_version=", ".join(versions) if versions else None)


def _run_versions(out: Path) -> list[str]:
    """The hypervisor versions the campaign's run records name."""
    found: list[str] = []
    for p in sorted((out / RUNS_DIR).glob("*.json")):
        try:
            host = json.loads(p.read_text()).get("host") or {}
        except (OSError, ValueError):
            continue
        if isinstance(host, dict) and host.get("hypervisor_version"):
            found.append(str(host["hypervisor_version"]))
    return found


def _summary(out: Path, campaign: Campaign | None, runs: Sequence[ValidatedRun], cal: Calibration, table: Any,
             spread: Any, plots: list[Path]) -> dict[str, Any]:
    """The ``summary.json`` document: counts, outcomes, target verdicts, noise and the plots."""
    outcomes: dict[str, int] = {}
    for r in runs:
        key = r.record.outcome.split(":")[0]
        outcomes[key] = outcomes.get(key, 0) + 1
    return {"campaign": campaign.name if campaign else out.name, "n_runs": len(runs),
            "n_scenarios": len({r.scenario for r in runs}), "outcomes": outcomes, "calibration": cal.method,
            "targets": target_verdicts(table),
            "targets_in_sample": target_verdicts(table, MODEL_TRAIN) if cal.train is not None else [],
            "noise": noise_summary(spread), "round_caps": round_cap_summary(runs, table),
            "memory_check": memory_check_summary(runs), "plots": [str(p.relative_to(out)) for p in plots],
            "provenance": _provenance(out, campaign)}


def render_report(campaign: Campaign | None, runs: Sequence[ValidatedRun], cal: Calibration, table: Any,
                  spread: Any, errs: Any, summary: dict[str, Any]) -> str:
    """The Markdown report."""
    lines = [*_intro(campaign, runs, summary), *_what_is_compared(cal), *_targets(summary),
             *crossval.render_section(summary.get("cross_validation")),
             *_noise(summary["noise"]), *_errors(errs, table), *_round_caps(summary), *_memory(summary),
             *_per_scenario(runs, table, spread),
             *_host_constants(cal), *_files(summary)]
    return "\n".join(lines) + "\n"


def _intro(campaign: Campaign | None, runs: Sequence[ValidatedRun], summary: dict[str, Any]) -> list[str]:
    """Title, provenance (version, host, dates) and the campaign's workloads, links and strategies."""
    from sim import __version__

    host = runs[0].record.host
    lines = [f"# Validation report: {summary['campaign']}\n",
             f"miglab {__version__}; {summary['n_runs']} real migrations of {summary['n_scenarios']} scenarios "
             f"({', '.join(f'{v} {k}' for k, v in sorted(summary['outcomes'].items()))}); host {host.cpu_model}, "
             f"{host.cpu_count} CPUs, {host.hypervisor_version} ({host.accelerator}), kernel {host.kernel}; runs "
             f"from {min(r.record.started_utc for r in runs)} to {max(r.record.started_utc for r in runs)}.\n"]
    if not campaign:
        return lines
    w = lines.append
    w(f"Campaign: {len(campaign.workloads)} workloads x {len(campaign.links)} links x "
      f"{len(campaign.strategies)} strategies x {campaign.repetitions} repetitions, "
      f"{campaign.memory_bytes >> 20} MiB guests, traces of {campaign.trace_seconds:g} s at "
      f"{campaign.trace_interval_s:g} s intervals, pre-copy timeout {campaign.timeout_s:g} s.\n")
    w("| workload | spec |\n|---|---|")
    for wl in campaign.workloads:
        w(f"| {wl.name} | `{wl.spec}` |")
    w("\n| link | rate | RTT |\n|---|---|---|")
    for lk in campaign.links:
        w(f"| {lk.name} | {lk.bandwidth_Bps * 8 / 1e6:g} Mbit/s | {lk.rtt_s * 1e3:g} ms |")
    w("\n| strategy | settings |\n|---|---|")
    for s in campaign.strategies:
        w(f"| {s.name} | {', '.join(f'{k}={v}' for k, v in s.fields)} |")
    w("")
    return lines


def _what_is_compared(cal: Calibration) -> list[str]:
    """The metric definitions in short, and how the host constants were chosen."""
    return [
        "## What is compared\n",
        "QEMU's `query-migrate` after completion against `sim.simulate` replaying the workload's trace over the same "
        "link with the same strategy. Definitions (both sides, from when to when): `docs/definitions.md`. In short: "
        "**total time** = QEMU `total-time` (migrate command to completion, setup included; for post-copy until the "
        "last page arrived); **downtime** = QEMU `downtime` (source stopped to destination running); **bytes** = "
        "`ram.transferred` (every page header, zero-page marker and page payload put on the stream); **rounds** = "
        "`dirty-sync-count` (bitmap syncs: setup, one per pass, completion); **post-copy requests** = "
        "`postcopy-requests` against the simulator's page faults. Errors are predicted - measured; relative errors "
        "divide by the measurement.\n",
        f"Host constants: **{cal.method}**. "
        + (("Each run is predicted with constants fit only on the runs of *other* workloads, so no constant was "
            "tuned on the workload that judges it (section *Cross-validation* below compares this with k-fold by "
            "scenario). " if "workload" in cal.method else
            "Each run is predicted with constants fit only on *other* scenarios (all repetitions of a scenario are "
            "in the same fold), so no constant was tuned on the runs that judge it. ")
           + "`miglab-train` rows use constants "
           "fit on every run (in-sample, for contrast); `miglab-uncalibrated` uses the simulator's defaults."
           if cal.train is not None else f"Every run is predicted with `{cal.host_json}`, fit on other runs.") + "\n",
    ]


def _targets(summary: dict[str, Any]) -> list[str]:
    """The targets table (held-out, in-sample, every baseline on the same runs) and what was missed."""
    lines = ["## Targets (held-out)\n",
             "| metric | target | miglab held-out | met | n | in-sample | " + " | ".join(BASELINES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(BASELINES)]
    train_by = {t["metric"]: t for t in summary.get("targets_in_sample", [])}
    for t in summary["targets"]:
        cells = [_baseline_cell(t["metric"], t["baselines"].get(b)) for b in BASELINES]
        tr = train_by.get(t["metric"])
        lines.append(f"| {t['metric']} | {t['target']} | {t.get('value_text', '-')} | "
                     f"{'yes' if t['met'] else '**no**'} | {t['n']} | {tr.get('value_text', '-') if tr else '-'} | "
                     + " | ".join(cells) + " |")
    missed = [t for t in summary["targets"] if not t["met"] and t["n"]]
    if missed:
        lines.append("\nMissed: " + "; ".join(
            f"{t['metric']} by {t['shortfall'] * 100:.1f} percentage points" for t in missed) + ".")
    lines.append(
        "\nBaseline columns: the baseline's median |rel. error| (share of exact rounds for dirty_sync_count) on the "
        "pre-copy runs it can answer, next to miglab's on the same runs. Baselines get the same calibrated link "
        "efficiency, switchover cost and header size as miglab; their dirty rate is the trace's mean rate of "
        "distinct pages per interval. `qemu-expected-downtime` is QEMU's own estimate at the last poll before "
        "switchover.\n")
    return lines


def _baseline_cell(metric: str, bb: dict[str, Any] | None) -> str:
    if not bb:
        return "-"
    flag = "" if bb["better"] else " **baseline better**"
    if metric == "dirty_sync_count":
        return (f"{(1 - bb['baseline']) * 100:.0f} % exact (miglab {(1 - bb['miglab']) * 100:.0f} %, "
                f"n={bb['n']})" + flag)
    return f"{_pct(bb['baseline'])} (miglab {_pct(bb['miglab'])}, n={bb['n']})" + flag


def _noise(noise: dict[str, Any]) -> list[str]:
    """The repetitions' spread per metric (absent when no scenario has two completed repetitions)."""
    if not noise:
        return []
    lines = ["## Measurement noise\n",
             "Spread of the repetitions of one scenario, (max - min) / median, over scenarios with >= 2 completed "
             "repetitions. An error below the spread is as good as it gets.\n",
             "| metric | median spread | max spread | scenarios |\n|---|---|---|---|"]
    for metric, v in noise.items():
        lines.append(f"| {metric} | {_pct(v['median_spread_rel'])} | {_pct(v['max_spread_rel'])} | "
                     f"{v['scenarios']} |")
    lines.append("")
    return lines


def _errors(errs: Any, table: Any) -> list[str]:
    """One table per metric (strategy x model) of the error statistics, then the convergence agreement."""
    lines = ["## Error per metric and strategy\n",
             "Median and 90th percentile of |relative error| (downtime also in absolute terms; dirty_sync_count as "
             "the share of runs predicted exactly) over completed runs.\n"]
    for metric in [m for m in COMPARED if m != "converged"]:
        e = errs[errs["metric"] == metric] if len(errs) else errs
        if not len(e):
            continue
        models = [m for m in MODELS if m in set(e["model"])]
        lines += [f"### {metric}\n", "| strategy | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for strat in sorted(set(e["strategy"])):
            cells = []
            for m in models:
                r = e[(e["strategy"] == strat) & (e["model"] == m)]
                cells.append(_error_cell(metric, r.iloc[0]) if len(r) else "-")
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        lines.append("")
    conv = table[(table["metric"] == "converged") & (table["model"] == MODEL_HELDOUT)]
    if len(conv):
        agree = float((conv["error"] == 0).mean())
        lines.append(f"Convergence (completed vs cancelled) predicted correctly in {agree * 100:.0f} % of "
                     f"{len(conv)} runs.\n")
    return lines


def _error_cell(metric: str, r: Any) -> str:
    if metric == "dirty_sync_count":
        return f"{r['exact_share'] * 100:.0f} % exact, median |err| {r['median_abs']:.0f} (n={r['n']})"
    if metric in ("downtime_s", "guest_pause_s"):
        return (f"{_pct(r['median_abs_rel'])} / {_pct(r['p90_abs_rel'])}; "
                f"{r['median_abs'] * 1e3:.1f} / {r['p90_abs'] * 1e3:.1f} ms (n={r['n']})")
    return f"{_pct(r['median_abs_rel'])} / {_pct(r['p90_abs_rel'])} (n={r['n']})"


def _round_caps(summary: dict[str, Any]) -> list[str]:
    """Fixed-round runs (a round cap on QEMU): where the cap fired, and the syncs predicted and measured."""
    caps = summary.get("round_caps") or []
    if not caps:
        return []
    lines = ["## Fixed-round runs\n",
             "Scenarios run with a round cap of K rounds (`stop_rule = \"bhyve\"`, `bhyve_rounds = K`, scored with "
             "QEMU's copy mechanics): live downtime-limit 1 ms, and once `dirty-sync-count` reached K + 1 the limit "
             "was raised to QEMU's maximum so its next check completed. The cap fires a poll after the K-th pass "
             "ended, so QEMU sends part of one more pass live and syncs once more than a clean K-round stop. "
             "Compare with the threshold strategies of the same workload and link in the tables above.\n",
             "| scenario | K | runs | cap fired (sync) | cap to switchover | syncs pred / meas | downtime pred / meas "
             "| bytes pred / meas |", "|---|---|---|---|---|---|---|---|"]
    for c in caps:
        lines.append(f"| {c['scenario']} | {c['max_rounds']} | {c['runs']} | {c['fired_runs']}/{c['runs']} "
                     f"(sync {c['fired_sync_count']}) | {_fmt_metric('x_s', c['cap_to_switchover_s'])} | "
                     f"{_fmt_metric('n', c['predicted'].get('dirty_sync_count', math.nan))} / "
                     f"{_fmt_metric('n', c['measured'].get('dirty_sync_count', math.nan))} | "
                     f"{_fmt_metric('downtime_s', c['predicted'].get('downtime_s', math.nan))} / "
                     f"{_fmt_metric('downtime_s', c['measured'].get('downtime_s', math.nan))} | "
                     f"{_fmt_metric('bytes_sent', c['predicted'].get('bytes_sent', math.nan))} / "
                     f"{_fmt_metric('bytes_sent', c['measured'].get('bytes_sent', math.nan))} |")
    lines.append("")
    return lines


def _memory(summary: dict[str, Any]) -> list[str]:
    """Page-by-page memory verification of the completed runs."""
    m = summary.get("memory_check") or {}
    if not m:
        return []
    text = (f"## Memory verification\n\n{m['verified']} of {m['completed']} completed runs had their guest RAM "
            f"compared page by page after the switchover; {m['differing_runs']} had differing pages "
            f"({m['pages_differing']} pages in all)")
    if m["failed_runs"]:
        text += "; failed runs: " + ", ".join(m["failed_runs"][:10])
    return [text + ".\n"]


def _per_scenario(runs: Sequence[ValidatedRun], table: Any, spread: Any) -> list[str]:
    """Held-out prediction against the median measurement (and its range) for every scenario."""
    import numpy as np

    lines = ["## Per scenario (held-out prediction vs median measurement)\n",
             "| scenario | runs ok | total time pred / meas | downtime pred / meas | bytes pred / meas "
             "| syncs pred / meas | pc requests pred / meas |",
             "|---|---|---|---|---|---|---|"]
    held = table[table["model"] == MODEL_HELDOUT]
    for sc in sorted(set(r.scenario for r in runs)):
        rs = [r for r in runs if r.scenario == sc]
        cells = []
        for metric in ("total_time_s", "downtime_s", "bytes_sent", "dirty_sync_count", "postcopy_requests"):
            h = held[(held["scenario"] == sc) & (held["metric"] == metric)]
            if not len(h):
                cells.append("-")
                continue
            sp = spread[(spread["scenario"] == sc) & (spread["metric"] == metric)]
            rng = (f" [{_fmt_metric(metric, float(sp['min'].iloc[0]))}..{_fmt_metric(metric, float(sp['max'].iloc[0]))}]"
                   if len(sp) and sp["n"].iloc[0] > 1 else "")
            cells.append(f"{_fmt_metric(metric, float(np.nanmedian(h['predicted'])))} / "
                         f"{_fmt_metric(metric, float(h['measured'].median()))}{rng}")
        lines.append(f"| {sc} | {sum(r.record.completed for r in rs)}/{len(rs)} | " + " | ".join(cells) + " |")
    return lines


def _host_constants(cal: Calibration) -> list[str]:
    """The constants of every fold (and of the fit on all runs)."""
    first = next(iter(cal.folds))["constants"]
    lines = ["\n## Host constants\n", "| fold | judged scenarios | " + " | ".join(sorted(first)) + " |",
             "|---|---|" + "---|" * len(first)]
    for f_ in cal.folds:
        keys = sorted(f_["constants"])
        lines.append(f"| {f_['fold']} | {len(f_.get('heldout_scenarios', [])) or '-'} | "
                     + " | ".join(f"{f_['constants'][k]:.4g}" for k in keys) + " |")
    return lines


def _files(summary: dict[str, Any]) -> list[str]:
    return ["\n## Files\n",
            "`table.csv` (tidy: scenario x repetition x model x metric), `errors.csv` (the tables above), `spread.csv` "
            "(measurement spread), `hostfit.json` (constants per fold and which scenarios they judge), `host.json` "
            "(constants fit on every run, for `--host`), `summary.json`, `runs/*.json` (RunRecords), `traces/*.npz`, "
            "`plots/`: " + ", ".join(f"[{p}]({p})" for p in summary["plots"]) + ".\n"]
