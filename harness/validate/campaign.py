"""Validation campaigns: the TOML file, its scenarios, their traces, and running them for real.

A :class:`Campaign` is the cross product of its workloads, links and
strategies (:meth:`Campaign.scenarios`), each run ``repetitions`` times.
:func:`run_campaign` collects or reuses one trace per workload
(:func:`harness.validate.traces.ensure_trace`) and runs every (scenario, repetition) that has no
record under ``OUT/runs/`` yet, so an interrupted campaign resumes where it
stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.record import RunRecord
from harness.validate.traces import TRACES_DIR, ensure_trace
from sim.atomic import atomic_open
from sim.errors import ConfigError, MiglabError
from sim.scenario import Link, Scenario, Strategy, Workload, load_toml, with_fields
from sim.units import parse_bandwidth, parse_duration, parse_size

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
INTERRUPTED_DIR = "interrupted"  # records of runs stopped by SIGINT/SIGTERM (repeated on the next invocation)
_SAFE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
_TOP_KEYS = frozenset({"name", "memory", "repetitions", "trace_seconds", "trace_interval", "warmup", "timeout",
                       "folds", "host", "trace_dirs", "workload", "link", "strategy"})


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
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})", where=where)
        workloads = _load_workloads(_table_list(d, "workload", where), where)
        links = _load_links(_table_list(d, "link", where), where)
        strategies = _load_strategies(_table_list(d, "strategy", where), where)
        for kind, items in (("workload", workloads), ("link", links), ("strategy", strategies)):
            names = [x.name for x in items]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ConfigError(f"two [[{kind}]] tables are named {sorted(dup)[0]!r}", where=where)
        trace_dirs = d.get("trace_dirs", [])
        if not isinstance(trace_dirs, list) or not all(isinstance(x, str) for x in trace_dirs):
            raise ConfigError("trace_dirs must be a list of directories", where=where)

        def num(key: str, parse: Any, default: Any) -> Any:
            return _number(d, key, parse, default, where)

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
            raise ConfigError("repetitions must be >= 1 and folds >= 2", where=where)
        if c.trace_interval_s <= 0 or c.trace_seconds <= 0 or c.timeout_s <= 0:
            raise ConfigError("trace_interval, trace_seconds and timeout must be positive", where=where)
        c._check_runnable()
        return c

    def _check_runnable(self) -> None:
        """One-line errors for a bad spec or a scenario QEMU cannot run, before anything boots."""
        from harness.guest import parse_workload
        from harness.migrate import validate_for_qemu

        for w in self.workloads:
            try:
                parse_workload(w.spec, self.memory_bytes)
            except ConfigError as e:
                raise ConfigError(f"[[workload]] {w.name}: {e}", where=self.source) from None
        for sc in self.scenarios():
            try:
                validate_for_qemu(sc.scenario)
            except ConfigError as e:
                raise ConfigError(f"scenario {sc.name}: {e}", where=self.source) from None

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


def _number(d: dict[str, Any], key: str, parse: Any, default: Any, where: str) -> Any:
    """``d[key]`` parsed when it is a string (``"512MiB"``, ``"2s"``), as given otherwise, ``default`` if absent."""
    if key not in d:
        return default
    v = d[key]
    from sim.inputs import number, whole

    try:
        if parse is int:  # a count: a whole number, not "many", 2.5 or true
            return whole(v, where=where, key=key)
        return parse(v) if isinstance(v, str) else number(v, where=where, key=key, low=0)
    except ConfigError as e:
        raise ConfigError(e.problem, where=where, key=key, value=v) from None


def _table_list(d: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = d.get(key)
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
        raise ConfigError(f"needs at least one [[{key}]] table", where=where)
    return items


def _load_workloads(tables: list[dict[str, Any]], where: str) -> list[CampaignWorkload]:
    workloads = []
    for i, w in enumerate(tables):
        if "spec" not in w:
            raise ConfigError(f"[[workload]] #{i + 1} needs spec = \"...\"", where=where)
        extra = sorted(set(w) - {"name", "spec"})
        if extra:
            raise ConfigError(f"[[workload]] #{i + 1}: unknown key {extra[0]!r}", where=where)
        workloads.append(CampaignWorkload(_safe_name(str(w.get("name") or w["spec"].split(":")[0])), str(w["spec"])))
    return workloads


def _load_links(tables: list[dict[str, Any]], where: str) -> list[CampaignLink]:
    links = []
    for i, lk in enumerate(tables):
        extra = sorted(set(lk) - {"name", "bandwidth", "rtt"})
        if extra or "bandwidth" not in lk:
            raise ConfigError(f"[[link]] #{i + 1} needs bandwidth (and optional rtt, name)"
                              + (f"; unknown key {extra[0]!r}" if extra else ""), where=where)
        try:
            bw = parse_bandwidth(str(lk["bandwidth"]))
            rtt = parse_duration(str(lk.get("rtt", "0s")))
            if not bw > 0:
                raise ConfigError(f"bandwidth must be positive, not {lk['bandwidth']!r}")
        except ConfigError as e:
            raise ConfigError(f"[[link]] #{i + 1}: {e}", where=where) from None
        links.append(CampaignLink(_safe_name(str(lk.get("name") or f"{lk['bandwidth']}-{lk.get('rtt', '0s')}")),
                                  bw, rtt))
    return links


def _load_strategies(tables: list[dict[str, Any]], where: str) -> list[CampaignStrategy]:
    strategies = []
    for i, s in enumerate(tables):
        s = dict(s)
        name = s.pop("name", None)
        if not name:
            raise ConfigError(f"[[strategy]] #{i + 1} needs a name", where=where)
        with_fields(Strategy(), s, where=f"{where}: [[strategy]] {name}")  # its ConfigError names file and table
        strategies.append(CampaignStrategy(_safe_name(str(name)), tuple(sorted(s.items()))))
    return strategies


def _safe_name(text: str) -> str:
    out = "".join(ch if ch in _SAFE_CHARS else "-" for ch in text).strip("-.")
    return out or "x"


def run_path(out_dir: Path, scenario_name: str, rep: int) -> Path:
    return out_dir / RUNS_DIR / f"{scenario_name}__r{rep}.json"


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

    from harness.migrate import MigrateOptions, MigrationInterrupted, run_migration

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
            except MigrationInterrupted as e:
                # Kept apart from runs/ so the run is repeated next time, but never lost.
                e.record.save(out / INTERRUPTED_DIR / f"{sc.name}__r{rep}.json")
                raise
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


