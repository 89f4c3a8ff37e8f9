"""Migration regression checks for CI: ``miglab regress CURRENT --baseline BASELINE.json``.

Two kinds of suite, two kinds of comparison:

* **Simulated** suites (a suite TOML run through :func:`sim.simulate`) are
  deterministic, so they are compared exactly, metric by metric and scenario
  by scenario. Any difference fails until the baseline is rewritten with
  ``--update-baseline`` (in the same commit as the change that caused it).
  ``--rtol`` allows a relative tolerance for floating-point noise across
  platforms; it is 0 by default.
* **Real-run** suites (the harness's JSON run records, N >= 5 repetitions per
  scenario) are compared statistically, in the shape of asv/pyperf: a metric
  regresses only when it is *significant and over the threshold*, i.e. all of
  the median ratio current/baseline exceeds ``ratio`` (1.10), a one-sided
  Mann-Whitney U test says current > baseline at ``alpha`` (0.05), and the
  median increase exceeds the metric's absolute floor (5 ms for downtime).

A suite TOML is either a sweep (see :mod:`sim.sweep`) or a list of named
scenarios with optional shared defaults::

    name = "miglab-sim"

    [defaults.workload]          # deep-merged under every scenario
    memory_bytes = "1GiB"

    [[scenario]]
    name = "precopy-qemu-hotcold"
    strategy.kind = "precopy"
    workload.spec = "hotcold:hot=48MiB,rate=4000"

A baseline (and the result of running a suite) is JSON with ``format =
"miglab-baseline"``, ``kind`` ``simulated`` or ``real``, and per scenario its
definition and metrics: scalars for simulated suites, lists of samples for
real-run suites.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .atomic import atomic_open
from .errors import ConfigError
from .provenance import describe, provenance
from .scenario import Scenario, flatten, load_json, load_toml

log = logging.getLogger(__name__)

BASELINE_FORMAT = "miglab-baseline"
BASELINE_VERSION = 1
SuiteKind = Literal["simulated", "real"]

#: Metrics compared for real-run suites unless ``--metric`` says otherwise.
DEFAULT_REAL_METRICS: tuple[str, ...] = ("downtime_s", "total_time_s")
#: Absolute floors below which a median increase is never a regression (units of the metric).
DEFAULT_FLOORS: dict[str, float] = {"downtime_s": 0.005, "total_time_s": 0.05, "bytes_sent": float(2**20)}
#: Metrics always shown (and exported as benchmark series) for simulated suites.
KEY_METRICS: tuple[str, ...] = ("downtime_s", "total_time_s", "bytes_sent")
DEFAULT_RATIO = 1.10
DEFAULT_ALPHA = 0.05
MIN_RUNS = 5
_RECORD_SCHEMA_VERSION = 1  # harness.record.RECORD_SCHEMA_VERSION (sim must not import harness)


def metric_unit(metric: str) -> str:
    """The unit of a metric, from its name: ``*_s`` seconds, ``*bytes*`` bytes, else empty."""
    if metric.endswith("_s"):
        return "s"
    if "bytes" in metric:
        return "bytes"
    return ""


# --------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Suite:
    """Named scenarios to simulate and compare as one regression suite."""

    name: str
    scenarios: tuple[tuple[str, Scenario], ...]
    source: str = "suite"

    @classmethod
    def from_toml(cls, path: str | Path) -> Suite:
        """Read a suite TOML file: ``[[scenario]]`` entries (with ``[defaults]``) or a sweep."""
        data = load_toml(path)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "suite") -> Suite:
        if "base" in data or "vary" in data or "variants" in data:
            from .sweep import Sweep

            sweep = Sweep.from_dict(data, source=source)
            named = []
            for config, scenario in sweep.scenarios():
                label = " ".join(f"{k}={v}" if k != "variant" else str(v) for k, v in config.items()) or sweep.name
                named.append((label, scenario))
            return cls._checked(sweep.name, named, source)
        unknown = sorted(set(data) - {"name", "description", "defaults", "scenario"})
        if unknown:
            raise ConfigError(f"unknown suite key {unknown[0]!r} (known: name, description, defaults, "
                              "scenario; or a sweep's base/vary/variants)", where=source)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("a suite needs a non-empty string 'name'", where=source)
        defaults = data.get("defaults", {})
        entries = data.get("scenario")
        if not isinstance(defaults, dict):
            raise ConfigError("[defaults] must be a table", where=source)
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ConfigError("a suite needs at least one [[scenario]] table", where=source)
        named = []
        for i, entry in enumerate(entries):
            sname = entry.get("name")
            if not isinstance(sname, str) or not sname:
                raise ConfigError(f"[[scenario]] number {i + 1} needs a non-empty string name", where=source)
            merged = _deep_merge(defaults, entry)
            where = f"{source}: scenario {sname!r}"
            try:
                named.append((sname, Scenario.from_dict(merged, source=where)))
            except ConfigError as e:
                raise e.at(where=where) from None
        return cls._checked(name, named, source)

    @classmethod
    def _checked(cls, name: str, named: list[tuple[str, Scenario]], source: str) -> Suite:
        names = [n for n, _ in named]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"scenario name {dupes[0]!r} is used twice", where=source)
        return cls(name=name, scenarios=tuple(named), source=source)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def run_suite(suite: Suite, progress: bool = False) -> dict[str, Any]:
    """Simulate every scenario of ``suite``; return it in baseline form (kind ``simulated``)."""
    from tqdm.auto import tqdm

    from .sweep import run_metrics, scenario_id

    scenarios: dict[str, Any] = {}
    for name, scenario in tqdm(suite.scenarios, desc=suite.name, unit="scenario", disable=not progress):
        # NaN (e.g. no expected downtime) is not JSON and never equals itself: store it as null
        metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in run_metrics(scenario).items()}
        # the version is recorded once per document (a notice, not a failure, when it differs)
        metrics.pop("miglab_version", None)
        scenarios[name] = {"scenario_id": scenario_id(scenario), "scenario": scenario.to_dict(),
                           "metrics": metrics}
    return _baseline_doc("simulated", suite.name, scenarios)


def _baseline_doc(kind: SuiteKind, suite: str, scenarios: dict[str, Any]) -> dict[str, Any]:
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "kind": kind, "suite": suite,
            "miglab_version": __version__, "scenarios": scenarios, "provenance": provenance()}


# --------------------------------------------------------------------------- real-run records
def _record_paths(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        paths = sorted(p.rglob("*.json"))
    elif any(c in spec for c in "*?["):
        paths = sorted(Path(x) for x in glob.glob(spec, recursive=True) if x.endswith(".json"))
    elif p.is_file():
        paths = [p]
    else:
        raise ConfigError("no such file, directory or glob match", where=spec)
    if not paths:
        raise ConfigError("no JSON run records found", where=spec)
    return paths


def _record_stats(record: dict[str, Any]) -> dict[str, Any]:
    """The final statistics of a harness RunRecord (its ``stats`` table; harness/record.py)."""
    stats = record.get("stats")
    return stats if isinstance(stats, dict) else {}


def _record_ok(record: dict[str, Any]) -> bool:
    # RunRecord.outcome is "completed", "failed: <reason>" or "cancelled: did not converge".
    return str(record.get("outcome", "")).strip().lower() == "completed"


def load_records(spec: str | Iterable[str], metrics: Iterable[str]) -> dict[str, Any]:
    """Read harness run records (a directory, glob or files) into baseline form (kind ``real``).

    Records are grouped by scenario name (or, without a name, by scenario id).
    Records whose outcome is not a finished migration are counted in
    ``failed`` and left out of the samples.
    """
    from .sweep import scenario_id

    specs = [spec] if isinstance(spec, str) else list(spec)
    metrics = list(metrics)
    scenarios: dict[str, Any] = {}
    for path in (p for s in specs for p in _record_paths(s)):
        record = load_json(path)  # bounded, regular files only, UTF-8; one line naming the file
        if not isinstance(record, dict) or not isinstance(record.get("scenario"), dict):
            raise ConfigError("not a run record (no 'scenario' table)", where=path)
        if record.get("schema_version") != _RECORD_SCHEMA_VERSION:
            raise ConfigError(f"run record schema_version {record.get('schema_version')!r} is not "
                              f"supported (expected {_RECORD_SCHEMA_VERSION})", where=path)
        sc = record["scenario"]
        name = sc.get("name") or ""
        if not name:
            try:
                name = scenario_id(Scenario.from_dict(sc, source=str(path)))
            except ConfigError:
                name = hashlib.sha256(json.dumps(sc, sort_keys=True).encode()).hexdigest()[:16]
        entry = scenarios.setdefault(name, {"scenario": sc, "metrics": {m: [] for m in metrics}, "failed": 0,
                                            "records": 0, "first": str(path)})
        if entry["scenario"] != sc:
            raise ConfigError(f"scenario {name!r} differs from the one in {entry['first']} "
                              "(repetitions of a scenario must be the same scenario)", where=path)
        entry["records"] += 1
        stats = _record_stats(record)
        if not _record_ok(record):
            entry["failed"] += 1
            continue
        for m in metrics:
            value = stats.get(m)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"metric {m!r} is missing or not a number ({value!r})", where=path)
            entry["metrics"][m].append(float(value))
    for entry in scenarios.values():
        del entry["first"]
    return _baseline_doc("real", "", scenarios)


# --------------------------------------------------------------------------- baselines
def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline JSON file (format ``miglab-baseline``)."""
    if not Path(path).exists():
        raise ConfigError("no such baseline (create it with --update-baseline)", where=path)
    doc = load_json(path)
    _check_doc(doc, str(path))
    return doc


def _check_doc(doc: Any, where: str) -> None:
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise ConfigError(f"not a miglab baseline (format is not {BASELINE_FORMAT!r})", where=where)
    if doc.get("version") != BASELINE_VERSION:
        raise ConfigError(f"baseline version {doc.get('version')!r} is not supported", where=where)
    if doc.get("kind") not in ("simulated", "real"):
        raise ConfigError(f"baseline kind {doc.get('kind')!r} is not simulated or real", where=where)
    if not isinstance(doc.get("scenarios"), dict):
        raise ConfigError("baseline has no scenarios table", where=where)
    real = doc.get("kind") == "real"
    for name, entry in doc["scenarios"].items():
        key = f"scenarios.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise ConfigError("has no metrics table", where=where, key=key)
        for metric, value in entry["metrics"].items():
            values = value if real else [value]
            if real and not isinstance(value, list):
                raise ConfigError("must be a list of numbers (one per run)", where=where,
                                  key=f"{key}.metrics.{metric}")
            for v in values:
                if real and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
                    raise ConfigError(f"must be a finite number, not {v!r}", where=where,
                                      key=f"{key}.metrics.{metric}")


def write_baseline(doc: dict[str, Any], path: str | Path) -> None:
    """Write a baseline atomically (sorted keys, so diffs in review are small).

    The document's ``provenance`` (:mod:`sim.provenance`) says where and from
    which commit its numbers were made. A simulated baseline whose content
    (everything but the provenance) equals the file already at ``path`` is
    left as it was, provenance included, so that re-running
    ``--update-baseline`` without a change changes nothing in review. Real-run
    baselines also get a ``created`` date.
    """
    path = Path(path)
    if doc.get("kind") == "simulated" and _same_content(doc, path):
        log.info("%s: baseline unchanged, left as it was", path)
        return
    if doc.get("kind") == "real":
        doc = {**doc, "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}
    with atomic_open(path) as f:
        json.dump(doc, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")


def _same_content(doc: dict[str, Any], path: Path) -> bool:
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(old, dict):
        return False
    # through JSON, so that tuples and lists (and NaN-free floats) compare as they are stored
    new = json.loads(json.dumps(doc, allow_nan=False))
    new.pop("provenance", None)
    old.pop("provenance", None)
    return new == old


# --------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Comparison:
    """One (scenario, metric) line of a regression report."""

    scenario: str
    metric: str
    baseline: Any
    current: Any
    verdict: str
    failed: bool
    ratio: float | None = None
    p_value: float | None = None
    n_baseline: int = 1
    n_current: int = 1
    spread: float | None = None

    @property
    def unit(self) -> str:
        return metric_unit(self.metric)

    @property
    def changed(self) -> bool:
        """Failed, or moved at all (an improvement, a new scenario): what ``only_changed`` keeps."""
        return self.failed or not (self.verdict == "same" or self.verdict.startswith("ok"))


@dataclass(frozen=True)
class Report:
    """The outcome of comparing a current suite against a baseline."""

    kind: SuiteKind
    rows: tuple[Comparison, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: provenance (sim.provenance) of the current suite's and the baseline's numbers, when recorded
    current_meta: dict[str, Any] | None = None
    baseline_meta: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        """True when CI should fail: a regression, a changed simulated metric, a missing scenario."""
        return any(r.failed for r in self.rows)

    def to_markdown(self, title: str = "Migration regression check", *, only_changed: bool = False) -> str:
        """A Markdown report fit for ``$GITHUB_STEP_SUMMARY``.

        The header says PASS/FAIL, which commit and machine made the current
        and the baseline numbers, and one line per metric; the table lists
        failures first. ``only_changed`` leaves out the comparisons that did
        not move (``same``, ``ok (...)``).
        """
        bad = sum(r.failed for r in self.rows)
        head = (f"### {title}\n\n"
                f"**{'FAIL' if bad else 'PASS'}**: {bad} of {len(self.rows)} comparisons failed "
                f"({self.kind} suite)\n\n"
                f"- current: {_md(describe(self.current_meta))}\n"
                f"- baseline: {_md(describe(self.baseline_meta))}\n\n")
        summary = "".join(f"- {line}\n" for line in self._metric_summaries())
        rows = sorted(self.rows, key=lambda r: not r.failed)  # stable: failures first, each group in suite order
        if only_changed:
            rows = [r for r in rows if r.changed]
        lines = ["| scenario | metric | baseline | current | ratio | p-value | verdict |",
                 "|---|---|---:|---:|---:|---:|---|"]
        for r in rows:
            counts = self.kind == "real" and not r.metric.startswith("(")  # sample sizes of metric rows only
            n = f" (n={r.n_baseline})" if counts else ""
            m = f" (n={r.n_current})" if counts else ""
            verdict = f"**{r.verdict}**" if r.failed else r.verdict
            lines.append(f"| {_md(r.scenario)} | {r.metric} | {_fmt(r.baseline, r.metric)}{n} | "
                         f"{_fmt(r.current, r.metric)}{m} | {_fmt_ratio(r.ratio)} | "
                         f"{'—' if r.p_value is None else f'{r.p_value:.3g}'} | {verdict} |")
        if only_changed:
            hidden = len(self.rows) - len(rows)
            table = ("\n".join(lines) + "\n" if rows else "No comparison changed.\n") + (
                f"\n({hidden} unchanged comparisons not shown)\n" if hidden else "")
        else:
            table = "\n".join(lines) + "\n"
        notes = "".join(f"\n- {n}" for n in self.notes)
        return head + summary + ("\n" if summary else "") + table + (f"\n{notes.strip()}\n" if notes else "")

    def _metric_summaries(self) -> list[str]:
        """One line per metric: how many comparisons failed or moved, and the largest ratio."""
        by_metric: dict[str, list[Comparison]] = {}
        for r in self.rows:
            by_metric.setdefault(r.metric, []).append(r)
        out = []
        for metric, rows in by_metric.items():
            failed = sum(r.failed for r in rows)
            moved = sum(r.changed and not r.failed for r in rows)
            text = f"**{metric}**: {failed} of {len(rows)} failed"
            if moved:
                text += f", {moved} moved without failing"
            ratios = [(r.ratio, r.scenario) for r in rows if r.ratio is not None and r.ratio != 1.0]
            if ratios:
                (lo, lo_name), (hi, hi_name) = min(ratios), max(ratios)
                text += f"; ratio current/baseline {_fmt_ratio(lo)} ({_md(lo_name)})"
                if hi != lo:
                    text += f" to {_fmt_ratio(hi)} ({_md(hi_name)})"
            out.append(text)
        return out

    def to_benchmark_json(self) -> list[dict[str, Any]]:
        """The ``customSmallerIsBetter`` list that github-action-benchmark reads."""
        out = []
        for r in self.rows:
            if isinstance(r.current, bool) or not isinstance(r.current, int | float):
                continue
            entry: dict[str, Any] = {"name": f"{r.scenario} / {r.metric}", "unit": r.unit or "value",
                                     "value": float(r.current)}
            if r.spread is not None:
                entry["range"] = f"± {r.spread:.6g}"
            extra = [f"verdict: {r.verdict}"]
            if isinstance(r.baseline, int | float) and not isinstance(r.baseline, bool):
                extra.append(f"baseline: {r.baseline:.6g}")
            if r.ratio is not None:
                extra.append(f"ratio: {_fmt_ratio(r.ratio)}")
            if r.p_value is not None:
                extra.append(f"p: {r.p_value:.3g}")
            if self.kind == "real":
                extra.append(f"n: {r.n_baseline}/{r.n_current}")
            entry["extra"] = "\n".join(extra)
            out.append(entry)
        return out


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _fmt(value: Any, metric: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _md(str(value))
    unit = metric_unit(metric)
    if unit == "s":
        return f"{value * 1e3:.6g} ms" if abs(value) < 1 else f"{value:.6g} s"
    if unit == "bytes":
        return f"{value / 2**20:.6g} MiB"
    return f"{value:.6g}"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return "∞" if math.isinf(ratio) else f"{ratio:.3f}"


def _ratio(current: float, baseline: float) -> float:
    if baseline == 0:
        return 1.0 if current == 0 else math.inf
    return current / baseline


def _equal(a: Any, b: Any, rtol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return a == b
    if rtol == 0:
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def compare_simulated(current: dict[str, Any], baseline: dict[str, Any], rtol: float = 0.0) -> Report:
    """Exact comparison (or within ``rtol``) of every metric of every scenario.

    Shows the key metrics of every scenario and every metric that changed; a
    changed definition, a new or a missing scenario fails too.
    """
    rows: list[Comparison] = []
    notes: list[str] = []
    if current.get("miglab_version") != baseline.get("miglab_version"):
        notes.append(f"baseline made by miglab {baseline.get('miglab_version')}, current is "
                     f"{current.get('miglab_version')}")
    cur, base = current["scenarios"], baseline["scenarios"]
    for name in list(base) + [n for n in cur if n not in base]:
        if name not in cur:
            rows.append(Comparison(name, "(scenario)", "present", "missing", "MISSING", True))
            continue
        if name not in base:
            rows.append(Comparison(name, "(scenario)", "—", "new", "NEW (no baseline)", True))
            continue
        c, b = cur[name], base[name]
        if c.get("scenario_id") != b.get("scenario_id"):
            was, now = _definition_diff(b.get("scenario"), c.get("scenario"))
            rows.append(Comparison(name, "(definition)", was, now, "CHANGED", True))
        cm, bm = c["metrics"], b["metrics"]
        for metric in list(bm) + [m for m in cm if m not in bm]:
            cv, bv = cm.get(metric), bm.get(metric)
            same = metric in cm and metric in bm and _equal(cv, bv, rtol)
            if same and metric not in KEY_METRICS:
                continue
            ratio = None
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (cv, bv))
            if numeric:
                ratio = _ratio(float(cv), float(bv))
            rows.append(Comparison(name, metric, bv, cv, "same" if same else "CHANGED", not same, ratio=ratio))
    if any(r.failed for r in rows):
        notes.append("simulated suites are deterministic: a change needs `miglab regress ... --update-baseline` "
                     "committed with the change")
    return Report("simulated", tuple(rows), tuple(notes), current.get("provenance"), baseline.get("provenance"))


def compare_real(current: dict[str, Any], baseline: dict[str, Any], metrics: Iterable[str] = DEFAULT_REAL_METRICS,
                 *, ratio: float = DEFAULT_RATIO, alpha: float = DEFAULT_ALPHA,
                 floors: dict[str, float] | None = None, min_runs: int = MIN_RUNS, holm: bool = False,
                 current_name: str = "CURRENT", baseline_name: str = "baseline") -> Report:
    """Statistical comparison: a regression is significant AND over the ratio AND over the floor.

    ``floors`` maps metric to an absolute minimum increase of the median
    (defaults in :data:`DEFAULT_FLOORS`, 0 for others). Fewer than
    ``min_runs`` finished runs of a scenario on either side is a ConfigError.

    Each comparison's false-alarm rate is at most ``alpha``; a report of k
    comparisons can false-alarm up to k times as often. ``holm=True`` applies
    Holm's step-down correction across the report's comparisons so that the
    whole report false-alarms at most ``alpha`` of the time (at some cost in
    power: with N = 5 the smallest possible p-value is 1/252).
    """
    from scipy.stats import mannwhitneyu

    if ratio < 1:
        raise ConfigError(f"--ratio must be at least 1, not {ratio}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must lie in (0, 1), not {alpha}")
    floors = {**DEFAULT_FLOORS, **(floors or {})}
    metrics = list(metrics)
    rows: list[Comparison] = []
    notes: list[str] = []
    cur, base = current["scenarios"], baseline["scenarios"]
    tests: list[dict[str, Any]] = []
    for name in list(base) + [n for n in cur if n not in base]:
        if name not in cur:
            rows.append(Comparison(name, "(scenario)", "present", "missing", "MISSING", True))
            continue
        if name not in base:
            rows.append(Comparison(name, "(scenario)", "—", "new", "new (no baseline)", False))
            continue
        c, b = cur[name], base[name]
        if c.get("scenario") and b.get("scenario") and c["scenario"] != b["scenario"]:
            was, now = _definition_diff(b["scenario"], c["scenario"])
            rows.append(Comparison(name, "(definition)", was, now, "CHANGED (update the baseline)", True))
        if c.get("failed"):
            rows.append(Comparison(name, "(outcome)", f"{b.get('failed', 0)} failed", f"{c['failed']} failed",
                                   "FAILED RUNS", True))
        for metric in metrics:
            cs = [float(x) for x in c["metrics"].get(metric, [])]
            bs = [float(x) for x in b["metrics"].get(metric, [])]
            for samples, side in ((cs, current_name), (bs, baseline_name)):
                if len(samples) < min_runs:
                    raise ConfigError(f"scenario {name!r} has {len(samples)} finished runs with {metric}, "
                                      f"need at least {min_runs}", where=side)
            tests.append({"name": name, "metric": metric, "cs": cs, "bs": bs,
                          "p_up": float(mannwhitneyu(cs, bs, alternative="greater").pvalue),
                          "p_down": float(mannwhitneyu(cs, bs, alternative="less").pvalue)})
    up_alpha = _holm_levels([t["p_up"] for t in tests], alpha) if holm else [alpha] * len(tests)
    down_alpha = _holm_levels([t["p_down"] for t in tests], alpha) if holm else [alpha] * len(tests)
    for t, a_up, a_down in zip(tests, up_alpha, down_alpha, strict=True):
        metric, cs, bs, p_up, p_down = t["metric"], t["cs"], t["bs"], t["p_up"], t["p_down"]
        cmed, bmed = _median(cs), _median(bs)
        r = _ratio(cmed, bmed)
        floor = floors.get(metric, 0.0)
        if r > ratio and p_up < a_up and cmed - bmed > floor:
            verdict, bad, p = "REGRESSION", True, p_up
        elif bmed > 0 and r < 1 / ratio and p_down < a_down and bmed - cmed > floor:
            verdict, bad, p = "improved", False, p_down
        else:
            bad, p = False, p_up
            why = []
            if r <= ratio:
                why.append(f"ratio ≤ {ratio:g}")
            if p_up >= a_up:
                why.append("not significant")
            if cmed - bmed <= floor:
                why.append(f"Δ ≤ floor {_fmt(floor, metric)}")
            verdict = "ok (" + ", ".join(why) + ")"
        rows.append(Comparison(t["name"], metric, bmed, cmed, verdict, bad, ratio=r, p_value=p,
                               n_baseline=len(bs), n_current=len(cs), spread=_iqr(cs) / 2))
    notes.append(f"regression = median ratio > {ratio:g} AND one-sided Mann-Whitney U p < {alpha:g}"
                 f"{' (Holm-corrected over the report)' if holm else ''} AND median increase > floor "
                 f"({', '.join(f'{m} {_fmt(floors.get(m, 0.0), m)}' for m in metrics)})")
    return Report("real", tuple(rows), tuple(notes), current.get("provenance"), baseline.get("provenance"))


#: Changed fields listed in a definition row before the rest are only counted.
_MAX_DIFF_FIELDS = 6


def _definition_diff(baseline: Any, current: Any) -> tuple[str, str]:
    """The fields of a scenario definition that changed, as (baseline's values, current values) text.

    Same fields but a different scenario id means that an input file (trace
    or model) changed content under the same path.
    """
    if not isinstance(baseline, dict) or not isinstance(current, dict):
        return "(not recorded)", "(not recorded)"
    b, c = flatten(baseline), flatten(current)
    keys = sorted(k for k in set(b) | set(c) if b.get(k, _ABSENT) != c.get(k, _ABSENT))
    if not keys:
        return "same fields", "an input file's content changed"
    shown = keys[:_MAX_DIFF_FIELDS]
    more = f"; … {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""

    def side(d: dict[str, Any]) -> str:
        return "; ".join(f"{k} = {_value_text(d.get(k, _ABSENT))}" for k in shown) + more

    return side(b), side(c)


_ABSENT = object()


def _value_text(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return json.dumps(value) if isinstance(value, str) or value is None else str(value)


def _holm_levels(pvalues: list[float], alpha: float) -> list[float]:
    """Per-test significance levels of Holm's step-down procedure (p_i < level_i means rejected).

    Sorted ascending, test k (0-based) is compared with alpha/(m-k) and only
    while every smaller p-value was rejected; after the first acceptance all
    later tests get level 0.
    """
    m = len(pvalues)
    levels = [0.0] * m
    for k, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        level = alpha / (m - k)
        if pvalues[i] >= level:
            break
        levels[i] = level
    return levels


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _iqr(xs: list[float]) -> float:
    import numpy as np

    q1, q3 = np.percentile(xs, [25, 75])
    return float(q3 - q1)


__all__ = ["Suite", "Report", "Comparison", "run_suite", "load_records", "load_baseline", "write_baseline",
           "compare_simulated", "compare_real"]
