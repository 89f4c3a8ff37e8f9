"""The validation loop: predict, run for real, compare. ``miglab validate`` and ``miglab calibrate-host``.

``miglab validate CAMPAIGN.toml -o results/validation/NAME/`` crosses the
campaign's workloads, links and strategies, and for every scenario

1. collects a dirty-page trace of the workload (:func:`harness.collect.collect`)
   or reuses a matching one (same spec, guest memory and interval, long
   enough), cached under ``OUT/traces/`` (and looked up in the campaign's
   ``trace_dirs``);
2. runs the real migration ``repetitions`` times (:func:`harness.migrate.run_migration`),
   one :class:`harness.record.RunRecord` JSON per run under ``OUT/runs/``;
3. simulates the same scenario with the trace as the workload
   (:func:`sim.simulate`), with host constants that were never fitted on the
   run being judged (``--host host.json``, or k-fold cross-validation by
   scenario, see :mod:`sim.hostfit`), and the baselines (geometric closed
   form, SimGrid's equations, QEMU's own ``expected-downtime``);
4. writes the comparison (layout below; the notebook reads it).

Resumable: a run whose record exists is never repeated; traces are reused.
The comparison is rebuilt from the records every time (``--report-only``
rebuilds it without running anything).

Output layout of ``OUT/`` (stable; ``notebooks/validation.ipynb`` reads it):

* ``campaign.toml`` -- the campaign as run;
* ``traces/<workload>-<key>.npz`` -- the traces used;
* ``runs/<scenario>__r<k>.json`` -- one RunRecord per run; ``options["validation"]``
  holds the campaign, scenario, repetition and the trace (path relative to the
  record's directory, sha256);
* ``table.csv`` -- tidy: one row per (scenario, repetition, model, metric) with
  ``predicted``, ``measured``, ``error`` (predicted - measured),
  ``abs_error``, ``rel_error`` (error / measured) and ``abs_rel_error``;
  ``model`` is ``miglab`` (held-out constants), ``miglab-train`` (constants fit
  on every run, in-sample), ``miglab-uncalibrated`` (default constants),
  ``geometric``, ``simgrid`` or ``qemu-expected-downtime``;
* ``spread.csv`` -- per scenario and metric: the measurements' median, min,
  max and relative spread ((max - min) / median);
* ``hostfit.json`` -- the constants per fold, which scenarios trained and
  judged them, and the constants fit on all runs (also in ``host.json``);
* ``summary.json`` -- the headline numbers and the target verdicts;
* ``report.md`` and ``plots/*.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.record import RunRecord
from sim.atomic import atomic_open
from sim.errors import ConfigError, MiglabError
from sim.scenario import Link, Scenario, Strategy, Workload, load_toml, with_fields
from sim.units import parse_bandwidth, parse_duration, parse_size

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
TRACES_DIR = "traces"
PLOTS_DIR = "plots"
_SAFE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


# --------------------------------------------------------------------------- campaign
@dataclass(frozen=True)
class CampaignWorkload:
    """A workload of the campaign: a short name and the harness spec (synthetic pattern or ``redis``)."""

    name: str
    spec: str


@dataclass(frozen=True)
class CampaignLink:
    """A link of the campaign: rate and round-trip time."""

    name: str
    bandwidth_Bps: float
    rtt_s: float


@dataclass(frozen=True)
class CampaignStrategy:
    """A strategy of the campaign: a name and ``strategy.*`` fields (``kind``, ``downtime_limit_s``, ...)."""

    name: str
    fields: tuple[tuple[str, Any], ...]

    @property
    def kind(self) -> str:
        return str(dict(self.fields).get("kind", "precopy"))


@dataclass(frozen=True)
class CampaignScenario:
    """One cell of the cross product; ``scenario`` is what the real runner gets (synthetic spec)."""

    name: str
    workload: CampaignWorkload
    link: CampaignLink
    strategy: CampaignStrategy
    scenario: Scenario


@dataclass(frozen=True)
class Campaign:
    """A validation campaign (TOML); see ``campaigns/*.toml`` for the format."""

    name: str
    workloads: tuple[CampaignWorkload, ...]
    links: tuple[CampaignLink, ...]
    strategies: tuple[CampaignStrategy, ...]
    memory_bytes: int = 512 << 20
    repetitions: int = 3
    trace_seconds: float = 40.0
    trace_interval_s: float = 0.5
    warmup_s: float = 2.0
    timeout_s: float = 40.0
    folds: int = 3
    host: str = ""
    trace_dirs: tuple[str, ...] = ()
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Campaign:
        """Read and check a campaign TOML; every problem is one ConfigError naming the file."""
        d = load_toml(path)
        where = str(path)
        known = {"name", "memory", "repetitions", "trace_seconds", "trace_interval", "warmup", "timeout", "folds",
                 "host", "trace_dirs", "workload", "link", "strategy"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")

        def num(key: str, parse: Any, default: Any) -> Any:
            if key not in d:
                return default
            v = d[key]
            try:
                return parse(v) if isinstance(v, str) else v
            except ConfigError as e:
                raise ConfigError(f"{where}: {key}: {e}") from None

        def table_list(key: str) -> list[dict[str, Any]]:
            items = d.get(key)
            if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
                raise ConfigError(f"{where}: needs at least one [[{key}]] table")
            return items

        workloads = []
        for i, w in enumerate(table_list("workload")):
            if "spec" not in w:
                raise ConfigError(f"{where}: [[workload]] #{i + 1} needs spec = \"...\"")
            extra = sorted(set(w) - {"name", "spec"})
            if extra:
                raise ConfigError(f"{where}: [[workload]] #{i + 1}: unknown key {extra[0]!r}")
            workloads.append(CampaignWorkload(_safe_name(str(w.get("name") or w["spec"].split(":")[0])), str(w["spec"])))
        links = []
        for i, lk in enumerate(table_list("link")):
            extra = sorted(set(lk) - {"name", "bandwidth", "rtt"})
            if extra or "bandwidth" not in lk:
                raise ConfigError(f"{where}: [[link]] #{i + 1} needs bandwidth (and optional rtt, name)"
                                  + (f"; unknown key {extra[0]!r}" if extra else ""))
            try:
                bw = parse_bandwidth(str(lk["bandwidth"]))
                rtt = parse_duration(str(lk.get("rtt", "0s")))
            except ConfigError as e:
                raise ConfigError(f"{where}: [[link]] #{i + 1}: {e}") from None
            links.append(CampaignLink(_safe_name(str(lk.get("name") or f"{lk['bandwidth']}-{lk.get('rtt', '0s')}")),
                                      bw, rtt))
        strategies = []
        for i, s in enumerate(table_list("strategy")):
            s = dict(s)
            name = s.pop("name", None)
            if not name:
                raise ConfigError(f"{where}: [[strategy]] #{i + 1} needs a name")
            try:
                with_fields(Strategy(), s, where=f"{where}: [[strategy]] {name}")
            except ConfigError:
                raise
            strategies.append(CampaignStrategy(_safe_name(str(name)), tuple(sorted(s.items()))))
        for kind, items in (("workload", workloads), ("link", links), ("strategy", strategies)):
            names = [x.name for x in items]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ConfigError(f"{where}: two [[{kind}]] tables are named {sorted(dup)[0]!r}")
        trace_dirs = d.get("trace_dirs", [])
        if not isinstance(trace_dirs, list) or not all(isinstance(x, str) for x in trace_dirs):
            raise ConfigError(f"{where}: trace_dirs must be a list of directories")
        c = cls(name=_safe_name(str(d.get("name") or Path(path).stem)), workloads=tuple(workloads),
                links=tuple(links), strategies=tuple(strategies),
                memory_bytes=int(num("memory", parse_size, 512 << 20)),
                repetitions=int(num("repetitions", int, 3)),
                trace_seconds=float(num("trace_seconds", parse_duration, 40.0)),
                trace_interval_s=float(num("trace_interval", parse_duration, 0.5)),
                warmup_s=float(num("warmup", parse_duration, 2.0)),
                timeout_s=float(num("timeout", parse_duration, 40.0)),
                folds=int(num("folds", int, 3)), host=str(d.get("host", "")),
                trace_dirs=tuple(trace_dirs), source=where)
        if c.repetitions < 1 or c.folds < 2:
            raise ConfigError(f"{where}: repetitions must be >= 1 and folds >= 2")
        if c.trace_interval_s <= 0 or c.trace_seconds <= 0 or c.timeout_s <= 0:
            raise ConfigError(f"{where}: trace_interval, trace_seconds and timeout must be positive")
        from harness.guest import parse_workload

        for w in c.workloads:
            try:
                parse_workload(w.spec, c.memory_bytes)  # one-line error for a bad spec before anything boots
            except ConfigError as e:
                raise ConfigError(f"{where}: [[workload]] {w.name}: {e}") from None
        for sc in c.scenarios():
            from harness.migrate import validate_for_qemu

            try:
                validate_for_qemu(sc.scenario)
            except ConfigError as e:
                raise ConfigError(f"{where}: scenario {sc.name}: {e}") from None
        return c

    def scenarios(self) -> list[CampaignScenario]:
        """The cross product workloads x links x strategies, in a stable order."""
        out = []
        for w in self.workloads:
            for lk in self.links:
                for s in self.strategies:
                    name = f"{w.name}__{lk.name}__{s.name}"
                    changes: dict[str, Any] = {f"strategy.{k}": v for k, v in s.fields}
                    changes.setdefault("strategy.timeout_s", self.timeout_s)
                    sc = Scenario(workload=Workload(kind="synthetic", spec=w.spec, memory_bytes=self.memory_bytes,
                                                    interval_s=self.trace_interval_s),
                                  link=Link(bandwidth_Bps=lk.bandwidth_Bps, rtt_s=lk.rtt_s), name=name)
                    out.append(CampaignScenario(name, w, lk, s, sc.replace(**changes)))
        return out

    def runs(self) -> list[tuple[CampaignScenario, int]]:
        return [(sc, r) for r in range(self.repetitions) for sc in self.scenarios()]


def _safe_name(text: str) -> str:
    out = "".join(ch if ch in _SAFE_CHARS else "-" for ch in text).strip("-.")
    return out or "x"


def run_path(out_dir: Path, scenario_name: str, rep: int) -> Path:
    return out_dir / RUNS_DIR / f"{scenario_name}__r{rep}.json"


# --------------------------------------------------------------------------- traces
def trace_key(spec: str, memory_bytes: int, interval_s: float) -> str:
    """What makes two traces interchangeable: the workload spec, guest memory and interval."""
    return hashlib.sha256(json.dumps([spec, int(memory_bytes), round(float(interval_s), 6)]).encode()).hexdigest()[:12]


def find_trace(spec: str, memory_bytes: int, interval_s: float, min_seconds: float,
               dirs: Iterable[Path]) -> Path | None:
    """A complete trace of ``spec`` on a ``memory_bytes`` guest at ``interval_s``, at least ``min_seconds`` long."""
    from sim.errors import TraceError
    from sim.trace import load

    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.npz")):
            try:
                t = load(p)
            except (TraceError, MiglabError, OSError):
                continue
            m = t.meta
            if (m.get("workload") == spec and int(m.get("guest_memory_bytes") or t.memory_bytes) == memory_bytes
                    and abs(float(m.get("interval_s") or 0) - interval_s) < 1e-6 and m.get("complete", True)
                    and float(m.get("collected_seconds") or 0) >= min_seconds - interval_s):
                return p
    return None


def ensure_trace(campaign: Campaign, w: CampaignWorkload, out_dir: Path, *, progress: bool = True) -> Path:
    """The trace for ``w``: reused when one matches, else collected into ``OUT/traces/``."""
    key = trace_key(w.spec, campaign.memory_bytes, campaign.trace_interval_s)
    own = out_dir / TRACES_DIR
    dirs = [own, *(Path(d) for d in campaign.trace_dirs)]
    found = find_trace(w.spec, campaign.memory_bytes, campaign.trace_interval_s, campaign.trace_seconds, dirs)
    if found is not None:
        if found.parent.resolve() != own.resolve():
            own.mkdir(parents=True, exist_ok=True)
            dest = own / f"{w.name}-{key}.npz"
            shutil.copyfile(found, dest)  # the output directory is self-contained
            log.info("reusing trace %s for %s (copied to %s)", found, w.spec, dest)
            return dest
        return found
    from harness.collect import collect

    dest = own / f"{w.name}-{key}.npz"
    log.info("collecting a %.0f s trace of %s into %s", campaign.trace_seconds, w.spec, dest)
    collect(w.spec, memory_bytes=campaign.memory_bytes, interval_s=campaign.trace_interval_s,
            seconds=campaign.trace_seconds, out=dest, progress=progress)
    return dest


# --------------------------------------------------------------------------- running
@dataclass
class CampaignOutcome:
    """What :func:`run_campaign` did."""

    ran: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def run_campaign(campaign: Campaign, out_dir: str | Path, *, progress: bool = True,
                 only: Sequence[str] = ()) -> CampaignOutcome:
    """Collect traces and run every (scenario, repetition) that has no record yet.

    Repetition-major order (all scenarios once, then again), so an interrupted
    campaign has every scenario covered before it has many repetitions of
    any. Environment failures of one run (e.g. a guest that did not boot) are
    logged and counted; the run is retried on the next invocation.
    """
    from tqdm import tqdm

    from harness.migrate import MigrateOptions, run_migration

    out = Path(out_dir)
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    _write_campaign_copy(campaign, out)
    todo = [(sc, r) for sc, r in campaign.runs() if not only or sc.name in only]
    result = CampaignOutcome()
    traces: dict[str, Path] = {}
    pending = [(sc, r) for sc, r in todo if not _finished(run_path(out, sc.name, r))]
    result.skipped = len(todo) - len(pending)
    for w in {sc.workload for sc, _ in pending}:
        traces[w.name] = ensure_trace(campaign, w, out, progress=progress)
    bar = tqdm(total=len(todo), initial=result.skipped, unit="run", desc=f"validate {campaign.name}",
               disable=not progress, file=sys.stderr)
    try:
        for sc, rep in pending:
            bar.set_postfix_str(f"{sc.name} r{rep}")
            trace = traces[sc.workload.name]
            try:
                record = run_migration(sc.scenario, MigrateOptions(warmup_s=campaign.warmup_s))
            except ConfigError:
                raise
            except MiglabError as e:
                log.warning("%s r%d: %s (will be retried on the next run)", sc.name, rep, e)
                result.errors.append(f"{sc.name} r{rep}: {e}")
                bar.update(1)
                continue
            path = run_path(out, sc.name, rep)
            from sim.trace import load

            meta = {"campaign": campaign.name, "scenario": sc.name, "repetition": rep,
                    "workload": sc.workload.name, "link": sc.link.name, "strategy": sc.strategy.name,
                    "trace": str(Path("..") / TRACES_DIR / trace.name), "trace_sha256": load(trace).sha256}
            record = dataclasses.replace(record, options={**record.options, "validation": meta})
            record.save(path)
            result.ran += 1
            bar.update(1)
            log.info("%s r%d: %s", sc.name, rep, record.outcome)
    finally:
        bar.close()
    return result


def _finished(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        RunRecord.load(path)
    except ConfigError:
        log.warning("%s is unreadable; running it again", path)
        return False
    return True


def _write_campaign_copy(campaign: Campaign, out: Path) -> None:
    if campaign.source and Path(campaign.source).is_file():
        src = Path(campaign.source).read_text()
        dest = out / "campaign.toml"
        if not dest.exists() or dest.read_text() != src:
            with atomic_open(dest) as f:
                f.write(src)


def load_runs(out_dir: str | Path) -> list[tuple[Path, RunRecord]]:
    """Every run record under ``OUT/runs/`` (sorted by file name)."""
    runs = []
    for p in sorted((Path(out_dir) / RUNS_DIR).glob("*.json")):
        runs.append((p, RunRecord.load(p)))
    return runs


# --------------------------------------------------------------------------- comparison
MODEL_HELDOUT = "miglab"
MODEL_TRAIN = "miglab-train"
MODEL_DEFAULT = "miglab-uncalibrated"
BASELINES: tuple[str, ...] = ("geometric", "simgrid", "qemu-expected-downtime")
MODELS: tuple[str, ...] = (MODEL_HELDOUT, MODEL_TRAIN, MODEL_DEFAULT, *BASELINES)
COMPARED: tuple[str, ...] = ("total_time_s", "downtime_s", "bytes_sent", "dirty_sync_count", "postcopy_requests",
                             "converged")
TABLE_COLUMNS: tuple[str, ...] = ("scenario", "workload", "link", "strategy", "strategy_kind", "repetition", "run",
                                  "outcome", "model", "fold", "metric", "predicted", "measured", "error",
                                  "abs_error", "rel_error", "abs_rel_error")
#: (metric, threshold on the median absolute relative error, description); see :func:`target_verdicts`.
TARGETS: tuple[tuple[str, float, str], ...] = (
    ("bytes_sent", 0.05, "median |rel. error| <= 5 %"),
    ("total_time_s", 0.10, "median |rel. error| <= 10 %"),
    ("downtime_s", 0.25, "median |error| <= max(25 %, 20 ms)"),
    ("dirty_sync_count", 0.90, "exact in >= 90 % of pre-copy runs"),
    ("postcopy_requests", 0.30, "median |rel. error| <= 30 %"),
)
DOWNTIME_FLOOR_S = 0.020


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
            raise ConfigError(f"{p}: no such file or directory")
    out = []
    for f in files:
        rec = RunRecord.load(f)
        meta = rec.options.get("validation")
        if not isinstance(meta, dict) or "trace" not in meta:
            raise ConfigError(f"{f}: not a validation run (no options.validation.trace); run it through "
                              "`miglab validate`")
        trace = (f.parent / str(meta["trace"])).resolve()
        if not trace.exists():
            raise ConfigError(f"{f}: its trace {trace} is missing")
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


def observation(run: ValidatedRun) -> Any:
    """A :class:`sim.hostfit.Observation` of a validated run."""
    from sim.hostfit import Observation

    s = run.record.stats
    kind = run.record.scenario.strategy.kind
    m: dict[str, float] = {"bytes_sent": float(s.bytes_sent), "dirty_sync_count": float(s.dirty_sync_count),
                           "normal_pages": float(s.normal_pages), "duplicate_pages": float(s.duplicate_pages),
                           "normal_bytes": float(s.normal_bytes)}
    for k in ("total_time_s", "downtime_s", "setup_time_s"):
        v = getattr(s, k)
        if v is not None:
            m[k] = float(v)
    if kind in ("postcopy", "hybrid"):
        m["postcopy_requests"] = float(s.postcopy_requests)
    wr = run.record.workload_rate
    hints = {"rate_ratio": wr.during / wr.before} if wr.during and wr.before else {}
    return Observation(run_id=run.path.stem, group=run.scenario, scenario=sim_scenario(run), measured=m,
                       completed=run.record.completed,
                       xbzrle=run.record.scenario.strategy.xbzrle_cache_bytes > 0, hints=hints)


def _trace_stats(path: Path) -> dict[str, float]:
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
    last = [p for p in run.record.timeline if p.status == "active" and p.expected_downtime_s is not None]
    if last:
        out["qemu-expected-downtime"] = {"downtime_s": float(last[-1].expected_downtime_s)}
    return out


def _measured(run: ValidatedRun) -> dict[str, float]:
    s = run.record.stats
    kind = run.record.scenario.strategy.kind
    m: dict[str, float] = {"converged": float(run.record.completed)}
    if run.record.completed:
        for k in ("total_time_s", "downtime_s"):
            v = getattr(s, k)
            if v is not None:
                m[k] = float(v)
        m["bytes_sent"] = float(s.bytes_sent)
        m["dirty_sync_count"] = float(s.dirty_sync_count)
        if kind in ("postcopy", "hybrid"):
            m["postcopy_requests"] = float(s.postcopy_requests)
    return m


def comparison_rows(run: ValidatedRun, model: str, fold: int | None, predicted: dict[str, float]
                    ) -> list[dict[str, Any]]:
    """Tidy rows (one per metric both sides have) for one run and one model."""
    rows = []
    meas = _measured(run)
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


@dataclass
class Calibration:
    """Which constants judge which run: fixed (``--host``) or per cross-validation fold."""

    method: str
    heldout: dict[str, dict[str, float]]  # scenario -> constants that never saw it
    fold_of: dict[str, int]
    train: dict[str, float] | None
    folds: list[dict[str, Any]]
    host_json: str = ""


def calibrate(runs: Sequence[ValidatedRun], folds: int, host_json: str | None = None,
              progress: bool = True) -> Calibration:
    """Held-out constants for every run: from ``host_json``, or k-fold cross-validation by scenario."""
    from sim import hostfit

    groups = sorted({r.scenario for r in runs})
    if host_json:
        from sim.hostconst import load_host_json

        consts = {k: float(v) for k, v in load_host_json(host_json).items()}
        return Calibration("fixed", {g: consts for g in groups}, {g: -1 for g in groups}, None,
                           [{"fold": -1, "constants": consts, "source": str(host_json)}], str(host_json))
    obs = [observation(r) for r in runs]
    from tqdm import tqdm

    bar = tqdm(total=folds + 1, desc="calibrate", unit="fit", disable=not progress, file=sys.stderr)
    fold_fits = hostfit.cross_validate(obs, folds, progress=lambda s: bar.set_postfix_str(s) or bar.update(1))
    full = hostfit.fit(obs)
    bar.update(1)
    bar.close()
    heldout: dict[str, dict[str, float]] = {}
    fold_of: dict[str, int] = {}
    for ff in fold_fits:
        for g in ff.heldout_groups:
            heldout[g] = ff.fit.constants
            fold_of[g] = ff.fold
    info = [{"fold": ff.fold, "constants": ff.fit.constants, "train_scenarios": list(ff.fit.train_groups),
             "heldout_scenarios": list(ff.heldout_groups), "train_runs": ff.fit.n_train_runs, "loss": ff.fit.loss,
             "evaluations": ff.fit.evaluations} for ff in fold_fits]
    info.append({"fold": "all", "constants": full.constants, "train_scenarios": list(full.train_groups),
                 "heldout_scenarios": [], "train_runs": full.n_train_runs, "loss": full.loss,
                 "evaluations": full.evaluations})
    return Calibration(f"{folds}-fold cross-validation by scenario", heldout, fold_of, full.constants, info)


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
        if run.trace not in tstats:
            tstats[run.trace] = _trace_stats(run.trace)
        for model, p in baseline_predictions(run, consts or {}, tstats[run.trace]).items():
            rows += comparison_rows(run, model, cal.fold_of.get(run.scenario), p)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


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
            v = np.array([_measured(r).get(metric, np.nan) for r in rs], dtype=float)
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


def _median_abs(df: Any, metric: str) -> tuple[float, float, int]:
    """(median |rel. error|, median |error|, n) over finite rows of one metric."""
    import numpy as np

    d = df[(df["metric"] == metric) & np.isfinite(df["predicted"])]
    if metric == "dirty_sync_count":
        return float((d["error"] != 0).mean()) if len(d) else math.nan, float(d["abs_error"].median()), len(d)
    return float(d["abs_rel_error"].median()), float(d["abs_error"].median()), len(d)


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


def write_plots(table: Any, out: Path) -> list[Path]:
    """Predicted vs measured (y = x) per metric, and the error distributions, as PNGs under ``out/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sim.atomic import atomic_path

    pdir = out / PLOTS_DIR
    pdir.mkdir(parents=True, exist_ok=True)
    paths = []
    d = table[np.isfinite(table["predicted"]) & (table["metric"] != "converged")]
    for metric in [m for m in COMPARED if m != "converged"]:
        dm = d[(d["metric"] == metric)]
        if not len(dm):
            continue
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for model, marker in ((MODEL_HELDOUT, "o"), ("geometric", "x"), ("simgrid", "+"),
                              ("qemu-expected-downtime", "^")):
            g = dm[dm["model"] == model]
            if not len(g):
                continue
            if model == MODEL_HELDOUT:
                for strat, gs in g.groupby("strategy"):
                    ax.scatter(gs["measured"], gs["predicted"], marker=marker, s=18, label=f"miglab {strat}")
            else:
                ax.scatter(g["measured"], g["predicted"], marker=marker, s=22, c="grey", alpha=0.6, label=model)
        vals = np.concatenate([dm["measured"].to_numpy(), dm["predicted"].to_numpy()])
        vals = vals[np.isfinite(vals)]
        pos = vals[vals > 0]
        log_axes = metric in ("total_time_s", "downtime_s", "bytes_sent", "postcopy_requests") and len(pos) and \
            pos.max() / max(pos.min(), 1e-12) > 20
        lo, hi = (pos.min() * 0.8, pos.max() * 1.25) if log_axes else (min(0.0, vals.min()), vals.max() * 1.1 or 1)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
        if log_axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"measured {metric}")
        ax.set_ylabel(f"predicted {metric}")
        ax.set_title(f"{metric}: predicted vs measured (held-out)")
        ax.legend(fontsize=6, loc="upper left")
        fig.tight_layout()
        p = pdir / f"pred_vs_meas_{metric}.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(p)
    metrics = [m for m in ("total_time_s", "downtime_s", "bytes_sent", "postcopy_requests") if m in set(d["metric"])]
    if metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            dm = d[d["metric"] == metric]
            models = [m for m in MODELS if m in set(dm["model"])]
            data = []
            for m in models:
                v = dm[dm["model"] == m]["rel_error"].to_numpy(dtype=float)
                data.append(np.clip(v[np.isfinite(v)], -2, 2))  # measured 0 (e.g. no requests) has no ratio
            ax.boxplot(data, showfliers=True)
            ax.set_xticks(range(1, len(models) + 1), models, rotation=60, fontsize=7)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_title(metric, fontsize=9)
            ax.set_ylabel("relative error (pred - meas) / meas, clipped to +-2")
        fig.tight_layout()
        p = pdir / "error_distribution.png"
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(p)
    return paths


def build_report(out_dir: str | Path, campaign: Campaign | None = None, *, host_json: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Rebuild ``table.csv``, ``spread.csv``, ``hostfit.json``, ``host.json``, ``summary.json``, plots and
    ``report.md`` from the records under ``out_dir/runs``; return the summary."""
    out = Path(out_dir)
    if campaign is None and (out / "campaign.toml").exists():
        campaign = Campaign.load(out / "campaign.toml")
    folds = campaign.folds if campaign else 3
    runs = validated_runs([out / RUNS_DIR])
    cal = calibrate(runs, folds, host_json, progress)
    table = compare(runs, cal, progress=progress)
    spread = measurement_spread(runs)
    errs = error_summary(table)
    verdicts = target_verdicts(table)
    train_verdicts = target_verdicts(table, MODEL_TRAIN) if cal.train is not None else []
    with atomic_open(out / "table.csv") as f:
        table.to_csv(f, index=False)
    with atomic_open(out / "spread.csv") as f:
        spread.to_csv(f, index=False)
    with atomic_open(out / "errors.csv") as f:
        errs.to_csv(f, index=False)
    with atomic_open(out / "hostfit.json") as f:
        json.dump({"method": cal.method, "host_json": cal.host_json, "folds": cal.folds,
                   "scenario_fold": cal.fold_of}, f, indent=1, default=float)
    if cal.train is not None:
        from sim.hostfit import host_json_constants

        with atomic_open(out / "host.json") as f:
            json.dump({"constants": host_json_constants(cal.train),
                       "fit": {"method": "fit on every completed run of this campaign (in-sample); the report's "
                                         "held-out errors use per-fold constants (hostfit.json)",
                               "campaign": campaign.name if campaign else ""}}, f, indent=1)
    plots = write_plots(table, out)
    outcomes: dict[str, int] = {}
    for r in runs:
        key = r.record.outcome.split(":")[0]
        outcomes[key] = outcomes.get(key, 0) + 1
    summary = {"campaign": campaign.name if campaign else out.name, "n_runs": len(runs),
               "n_scenarios": len({r.scenario for r in runs}), "outcomes": outcomes, "calibration": cal.method,
               "targets": verdicts, "targets_in_sample": train_verdicts,
               "noise": _noise_summary(spread), "plots": [str(p.relative_to(out)) for p in plots]}
    with atomic_open(out / "summary.json") as f:
        json.dump(summary, f, indent=1, default=float)
    with atomic_open(out / "report.md") as f:
        f.write(render_report(campaign, runs, cal, table, spread, errs, summary))
    return summary


def _noise_summary(spread: Any) -> dict[str, Any]:
    """Median and max relative spread (max - min) / median of the repetitions, per metric."""
    out = {}
    for metric, g in spread[spread["n"] >= 2].groupby("metric"):
        out[metric] = {"median_spread_rel": float(g["spread_rel"].median()),
                       "max_spread_rel": float(g["spread_rel"].max()), "scenarios": int(len(g))}
    return out


def render_report(campaign: Campaign | None, runs: Sequence[ValidatedRun], cal: Calibration, table: Any,
                  spread: Any, errs: Any, summary: dict[str, Any]) -> str:
    """The Markdown report."""
    import numpy as np

    from sim import __version__

    lines: list[str] = []
    w = lines.append
    host = runs[0].record.host
    name = summary["campaign"]
    w(f"# Validation report: {name}\n")
    w(f"miglab {__version__}; {summary['n_runs']} real migrations of {summary['n_scenarios']} scenarios "
      f"({', '.join(f'{v} {k}' for k, v in sorted(summary['outcomes'].items()))}); host {host.cpu_model}, "
      f"{host.cpu_count} CPUs, {host.hypervisor_version} ({host.accelerator}), kernel {host.kernel}; runs from "
      f"{min(r.record.started_utc for r in runs)} to {max(r.record.started_utc for r in runs)}.\n")
    if campaign:
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
    w("## What is compared\n")
    w("QEMU's `query-migrate` after completion against `sim.simulate` replaying the workload's trace over the same "
      "link with the same strategy. Definitions (both sides, from when to when): `docs/definitions.md`. In short: "
      "**total time** = QEMU `total-time` (migrate command to completion, setup included; for post-copy until the "
      "last page arrived); **downtime** = QEMU `downtime` (source stopped to destination running); **bytes** = "
      "`ram.transferred` (every page header, zero-page marker and page payload put on the stream); **rounds** = "
      "`dirty-sync-count` (bitmap syncs: setup, one per pass, completion); **post-copy requests** = "
      "`postcopy-requests` against the simulator's page faults. Errors are predicted - measured; relative errors "
      "divide by the measurement.\n")
    w(f"Host constants: **{cal.method}**. "
      + ("Each run is predicted with constants fit only on *other* scenarios (all repetitions of a scenario are in "
         "the same fold), so no constant was tuned on the runs that judge it. `miglab-train` rows use constants fit "
         "on every run (in-sample, for contrast); `miglab-uncalibrated` uses the simulator's defaults."
         if cal.train is not None else f"Every run is predicted with `{cal.host_json}`, fit on other runs.") + "\n")
    w("## Targets (held-out)\n")
    w("| metric | target | miglab held-out | met | n | in-sample | " + " | ".join(BASELINES) + " |")
    w("|---|---|---|---|---|---|" + "---|" * len(BASELINES))
    train_by = {t["metric"]: t for t in summary.get("targets_in_sample", [])}
    for t in summary["targets"]:
        cells = []
        for b in BASELINES:
            bb = t["baselines"].get(b)
            if not bb:
                cells.append("-")
            elif t["metric"] == "dirty_sync_count":
                cells.append(f"{(1 - bb['baseline']) * 100:.0f} % exact (miglab {(1 - bb['miglab']) * 100:.0f} %, "
                             f"n={bb['n']})" + ("" if bb["better"] else " **baseline better**"))
            else:
                cells.append(f"{_pct(bb['baseline'])} (miglab {_pct(bb['miglab'])}, n={bb['n']})"
                             + ("" if bb["better"] else " **baseline better**"))
        tr = train_by.get(t["metric"])
        w(f"| {t['metric']} | {t['target']} | {t.get('value_text', '-')} | {'yes' if t['met'] else '**no**'} | "
          f"{t['n']} | {tr.get('value_text', '-') if tr else '-'} | " + " | ".join(cells) + " |")
    missed = [t for t in summary["targets"] if not t["met"] and t["n"]]
    if missed:
        w("\nMissed: " + "; ".join(
            f"{t['metric']} by {t['shortfall'] * 100:.1f} percentage points" for t in missed) + ".")
    w("\nBaseline columns: the baseline's median |rel. error| (share of exact rounds for dirty_sync_count) on the "
      "pre-copy runs it can answer, next to miglab's on the same runs. Baselines get the same calibrated link "
      "efficiency, switchover cost and header size as miglab; their dirty rate is the trace's mean rate of "
      "distinct pages per interval. `qemu-expected-downtime` is QEMU's own estimate at the last poll before "
      "switchover.\n")
    noise = summary["noise"]
    if noise:
        w("## Measurement noise\n")
        w("Spread of the repetitions of one scenario, (max - min) / median, over scenarios with >= 2 completed "
          "repetitions. An error below the spread is as good as it gets.\n")
        w("| metric | median spread | max spread | scenarios |\n|---|---|---|---|")
        for metric, v in noise.items():
            w(f"| {metric} | {_pct(v['median_spread_rel'])} | {_pct(v['max_spread_rel'])} | {v['scenarios']} |")
        w("")
    w("## Error per metric and strategy\n")
    w("Median and 90th percentile of |relative error| (downtime also in absolute terms; dirty_sync_count as the "
      "share of runs predicted exactly) over completed runs.\n")
    for metric in [m for m in COMPARED if m != "converged"]:
        e = errs[errs["metric"] == metric] if len(errs) else errs
        if not len(e):
            continue
        w(f"### {metric}\n")
        models = [m for m in MODELS if m in set(e["model"])]
        w("| strategy | " + " | ".join(models) + " |")
        w("|---|" + "---|" * len(models))
        for strat in sorted(set(e["strategy"])):
            cells = []
            for m in models:
                r = e[(e["strategy"] == strat) & (e["model"] == m)]
                if not len(r):
                    cells.append("-")
                    continue
                r = r.iloc[0]
                if metric == "dirty_sync_count":
                    cells.append(f"{r['exact_share'] * 100:.0f} % exact, median |err| {r['median_abs']:.0f} "
                                 f"(n={r['n']})")
                elif metric == "downtime_s":
                    cells.append(f"{_pct(r['median_abs_rel'])} / {_pct(r['p90_abs_rel'])}; "
                                 f"{r['median_abs'] * 1e3:.1f} / {r['p90_abs'] * 1e3:.1f} ms (n={r['n']})")
                else:
                    cells.append(f"{_pct(r['median_abs_rel'])} / {_pct(r['p90_abs_rel'])} (n={r['n']})")
            w(f"| {strat} | " + " | ".join(cells) + " |")
        w("")
    conv = table[(table["metric"] == "converged") & (table["model"] == MODEL_HELDOUT)]
    if len(conv):
        agree = float((conv["error"] == 0).mean())
        w(f"Convergence (completed vs cancelled) predicted correctly in {agree * 100:.0f} % of {len(conv)} runs.\n")
    w("## Per scenario (held-out prediction vs median measurement)\n")
    w("| scenario | runs ok | total time pred / meas | downtime pred / meas | bytes pred / meas | syncs pred / meas "
      "| pc requests pred / meas |")
    w("|---|---|---|---|---|---|---|")
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
        w(f"| {sc} | {sum(r.record.completed for r in rs)}/{len(rs)} | " + " | ".join(cells) + " |")
    w("\n## Host constants\n")
    w("| fold | judged scenarios | " + " | ".join(sorted(next(iter(cal.folds))["constants"])) + " |")
    w("|---|---|" + "---|" * len(next(iter(cal.folds))["constants"]))
    for f_ in cal.folds:
        keys = sorted(f_["constants"])
        w(f"| {f_['fold']} | {len(f_.get('heldout_scenarios', [])) or '-'} | "
          + " | ".join(f"{f_['constants'][k]:.4g}" for k in keys) + " |")
    w("\n## Files\n")
    w("`table.csv` (tidy: scenario x repetition x model x metric), `errors.csv` (the tables above), `spread.csv` "
      "(measurement spread), `hostfit.json` (constants per fold and which scenarios they judge), `host.json` "
      "(constants fit on every run, for `--host`), `summary.json`, `runs/*.json` (RunRecords), `traces/*.npz`, "
      "`plots/`: " + ", ".join(f"[{p}]({p})" for p in summary["plots"]) + ".\n")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def _sigterm_to_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so every context manager of the running migration cleans up


def _cmd_validate(args: argparse.Namespace) -> int:
    campaign = Campaign.load(args.campaign)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is not a directory")
    host = args.host if args.host is not None else campaign.host
    if host:
        from sim.hostconst import load_host_json

        load_host_json(host)  # one-line error before anything runs
    progress = not args.quiet
    errors: list[str] = []
    if not args.report_only:
        old = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        try:
            outcome = run_campaign(campaign, out, progress=progress, only=args.only or ())
        finally:
            signal.signal(signal.SIGTERM, old)
        errors = outcome.errors
        print(f"{campaign.name}: {outcome.ran} runs done, {outcome.skipped} already there, "
              f"{len(errors)} failed to run" + (f" (first: {errors[0]})" if errors else ""))
    if args.no_report:
        return 1 if errors else 0
    summary = build_report(out, campaign, host_json=host or None, progress=progress)
    print(f"{out / 'report.md'}: {summary['n_runs']} runs; " + "; ".join(
        f"{t['metric']} {'met' if t['met'] else 'MISSED'}" for t in summary["targets"]))
    return 1 if errors else 0


def calibrate_host(paths: Sequence[str | Path], *, heldout_every: int = 3, maxfev: int | None = None
                   ) -> dict[str, Any]:
    """Fit host constants on a training subset of validation runs; judge them on the held-out rest.

    The split is by scenario (every ``heldout_every``-th scenario in sha256
    order is held out, see :func:`sim.hostfit.train_heldout`), so no
    repetition of a judging scenario is ever seen by the fit. Returns the
    ``host.json`` document: ``constants`` plus ``fit`` (scenarios and runs on
    each side, median errors on each side).
    """
    from sim import hostfit

    runs = validated_runs(paths)
    obs = [observation(r) for r in runs]
    train_g, held_g = hostfit.train_heldout((o.group for o in obs), heldout_every)
    train = [o for o in obs if o.group in train_g]
    held = [o for o in obs if o.group in held_g]
    if not any(o.completed for o in train):
        raise ConfigError("calibrate-host: no completed run in the training subset")
    result = hostfit.fit(train, **({"maxfev": maxfev} if maxfev else {}))
    doc = result.to_json_dict()
    doc["fit"].update({
        "split": f"by scenario: every {heldout_every}th scenario in sha256 order is held out",
        "heldout_scenarios": sorted(held_g), "heldout_runs": len(held),
        "train_median_abs_rel_error": hostfit.evaluate(train, result.constants),
        "heldout_median_abs_rel_error": hostfit.evaluate(held, result.constants) if held else {},
        "note": "dirty_sync_count: share of runs NOT predicted exactly"})
    return doc


def _cmd_calibrate_host(args: argparse.Namespace) -> int:
    if args.heldout_every < 2:
        raise ConfigError("--heldout-every must be at least 2")
    doc = calibrate_host(args.runs, heldout_every=args.heldout_every)
    with atomic_open(args.output) as f:
        json.dump(doc, f, indent=1)
    c, fit_ = doc["constants"], doc["fit"]
    print(f"{args.output}: " + ", ".join(f"{k}={v:.4g}" for k, v in c.items()))
    for side in ("train", "heldout"):
        e = fit_.get(f"{side}_median_abs_rel_error") or {}
        runs = fit_["train_runs"] if side == "train" else fit_["heldout_runs"]
        print(f"  {side:8s} ({runs} runs): " + ", ".join(
            f"{k} {v * 100:.1f} %" for k, v in e.items() if isinstance(v, float) and math.isfinite(v)))
    return 0


def register(groups: dict[str, Any]) -> None:
    """``miglab validate`` and ``miglab calibrate-host``."""
    p = groups[""].add_parser("validate", help="predict, run for real and compare a campaign of migrations")
    p.add_argument("campaign", metavar="CAMPAIGN.toml", help="campaign file (see campaigns/)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (resumable)")
    p.add_argument("--host", metavar="JSON", default=None,
                   help="fixed host constants (from calibrate-host on other runs) instead of cross-validation")
    p.add_argument("--only", action="append", metavar="SCENARIO", help="run only this scenario (repeatable)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the records; run nothing")
    p.add_argument("--no-report", action="store_true", help="run, but do not build the report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_validate)

    c = groups[""].add_parser("calibrate-host", help="fit host constants to validation runs (train / held-out)")
    c.add_argument("runs", nargs="+", metavar="RUNS", help="run records of `miglab validate` (files or directories)")
    c.add_argument("-o", "--output", required=True, metavar="host.json", help="where to write the constants")
    c.add_argument("--heldout-every", type=int, default=3, metavar="K",
                   help="hold out every K-th scenario (by hash) for judging (default 3)")
    c.set_defaults(func=_cmd_calibrate_host)
