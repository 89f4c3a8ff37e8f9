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
                       "folds", "host", "trace_dirs", "workload", "link", "strategy", "size", "trace_method",
                       "train_max_memory", "cv"})
FAILED_DIR = "failed"  # one JSON per (scenario, repetition) that could not be run; retried on the next invocation
TRACE_METHODS = ("auto", "content", "dirty-log")
#: ``trace_method = "auto"``: guests above this get QEMU dirty-log traces (a content-diff scan reads all of RAM).
DIRTYLOG_AUTO_MIN_BYTES = 2 << 30
_SIZE_KEYS = frozenset({"memory", "repetitions", "timeout", "trace_seconds", "workloads", "links", "strategies"})


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
    memory_bytes: int = 0  # the guest size of this cell (the campaign's ``memory`` when it has no [[size]])
    size: str = ""  # the size's label in scenario names ("16GiB"); empty without [[size]] tables


@dataclass(frozen=True)
class CampaignSize:
    """One guest size of a scale campaign (a ``[[size]]`` table), with what is run at it.

    Empty ``workloads``/``links``/``strategies`` mean all of the campaign's;
    ``repetitions``, ``timeout_s`` and ``trace_seconds`` of None the campaign's.
    The biggest guests are trimmed here (fewer repetitions, one link).
    """

    memory_bytes: int
    label: str
    repetitions: int | None = None
    timeout_s: float | None = None
    trace_seconds: float | None = None
    workloads: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()


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
    sizes: tuple[CampaignSize, ...] = ()
    trace_method: str = "auto"
    #: The honest split of a scale campaign: host constants and workload models fit on runs of guests up to
    #: this size only, judged on the bigger ones (0: the k-fold split by scenario, as before).
    train_max_memory_bytes: int = 0
    #: ``"size"``: also leave-one-size-out cross-validation (see :func:`sim.hostfit.leave_one_size_out`).
    cv: str = ""

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
                trace_dirs=tuple(trace_dirs), source=where,
                sizes=tuple(_load_sizes(d.get("size"), where, workloads, links, strategies)),
                trace_method=str(d.get("trace_method", "auto")),
                train_max_memory_bytes=int(num("train_max_memory", parse_size, 0)), cv=str(d.get("cv", "")))
        if c.trace_method not in TRACE_METHODS:
            raise ConfigError(f"{where}: trace_method must be one of {', '.join(TRACE_METHODS)}")
        if c.cv not in ("", "size"):
            raise ConfigError(f"{where}: cv must be \"size\" (leave-one-size-out) or absent")
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
            for mem in self.memory_sizes():
                try:
                    parse_workload(w.spec, mem)
                except ConfigError as e:
                    at = f" at {_size_label(mem)}" if self.sizes else ""
                    raise ConfigError(f"[[workload]] {w.name}{at}: {e}", where=self.source) from None
        for sc in self.scenarios():
            try:
                validate_for_qemu(sc.scenario)
            except ConfigError as e:
                raise ConfigError(f"scenario {sc.name}: {e}", where=self.source) from None

    def memory_sizes(self) -> list[int]:
        """The guest sizes run: the ``[[size]]`` tables' in order, else the one ``memory``."""
        return [z.memory_bytes for z in self.sizes] or [self.memory_bytes]

    def scenarios(self) -> list[CampaignScenario]:
        """The cross product (sizes x) workloads x links x strategies, in a stable order.

        Without ``[[size]]`` tables names are ``workload__link__strategy`` as before; with them
        ``workload__SIZE__link__strategy``, smallest size first, each size's own subset.
        """
        if not self.sizes:
            return self._cells(self.memory_bytes, "", self.workloads, self.links, self.strategies, self.timeout_s)
        out = []
        for z in self.sizes:
            def pick(items: tuple[Any, ...], names: tuple[str, ...]) -> tuple[Any, ...]:
                return tuple(x for x in items if not names or x.name in names)
            out += self._cells(z.memory_bytes, z.label, pick(self.workloads, z.workloads), pick(self.links, z.links),
                               pick(self.strategies, z.strategies),
                               z.timeout_s if z.timeout_s is not None else self.timeout_s)
        return out

    def _cells(self, memory_bytes: int, label: str, workloads: tuple[CampaignWorkload, ...],
               links: tuple[CampaignLink, ...], strategies: tuple[CampaignStrategy, ...],
               timeout_s: float) -> list[CampaignScenario]:
        out = []
        for w in workloads:
            for lk in links:
                for s in strategies:
                    name = f"{w.name}__{label}__{lk.name}__{s.name}" if label else f"{w.name}__{lk.name}__{s.name}"
                    changes: dict[str, Any] = {f"strategy.{k}": v for k, v in s.fields}
                    changes.setdefault("strategy.timeout_s", timeout_s)
                    sc = Scenario(workload=Workload(kind="synthetic", spec=w.spec, memory_bytes=memory_bytes,
                                                    interval_s=self.trace_interval_s),
                                  link=Link(bandwidth_Bps=lk.bandwidth_Bps, rtt_s=lk.rtt_s), name=name)
                    out.append(CampaignScenario(name, w, lk, s, sc.replace(**changes), memory_bytes, label))
        return out

    def size_of(self, sc: CampaignScenario) -> CampaignSize | None:
        return next((z for z in self.sizes if z.label == sc.size), None) if sc.size else None

    def repetitions_of(self, sc: CampaignScenario) -> int:
        z = self.size_of(sc)
        return z.repetitions if z is not None and z.repetitions is not None else self.repetitions

    def trace_seconds_of(self, memory_bytes: int) -> float:
        z = next((z for z in self.sizes if z.memory_bytes == memory_bytes), None)
        return z.trace_seconds if z is not None and z.trace_seconds is not None else self.trace_seconds

    def trace_method_of(self, memory_bytes: int) -> str:
        """``content`` or ``dirty-log`` for a guest of ``memory_bytes`` (``auto``: dirty-log above 2 GiB)."""
        if self.trace_method != "auto":
            return self.trace_method
        return "dirty-log" if memory_bytes > DIRTYLOG_AUTO_MIN_BYTES else "content"

    def runs(self) -> list[tuple[CampaignScenario, int]]:
        """Every (scenario, repetition): repetition-major; with sizes, size-major first (small guests first)."""
        if not self.sizes:
            return [(sc, r) for r in range(self.repetitions) for sc in self.scenarios()]
        scs = self.scenarios()
        out = []
        for z in self.sizes:
            mine = [sc for sc in scs if sc.size == z.label]
            reps = z.repetitions if z.repetitions is not None else self.repetitions
            out += [(sc, r) for r in range(reps) for sc in mine]
        return out


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


def _size_label(memory_bytes: int) -> str:
    """``1GiB``, ``512MiB``: a size as it appears in scenario names."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if memory_bytes % (1 << shift) == 0:
            return f"{memory_bytes >> shift}{unit}"
    return f"{memory_bytes}B"


def _load_sizes(tables: Any, where: str, workloads: list[CampaignWorkload], links: list[CampaignLink],
                strategies: list[CampaignStrategy]) -> list[CampaignSize]:
    """The ``[[size]]`` tables (none: a one-size campaign), smallest first, names checked against the axes."""
    if tables is None:
        return []
    if not isinstance(tables, list) or not tables or not all(isinstance(x, dict) for x in tables):
        raise ConfigError(f"{where}: size must be [[size]] tables")
    known = {"workloads": {w.name for w in workloads}, "links": {lk.name for lk in links},
             "strategies": {s.name for s in strategies}}
    out = []
    for i, t in enumerate(tables):
        at = f"{where}: [[size]] #{i + 1}"
        extra = sorted(set(t) - _SIZE_KEYS)
        if extra or "memory" not in t:
            raise ConfigError(f"{at} needs memory = \"SIZE\"" + (f"; unknown key {extra[0]!r}" if extra else ""))
        mem = int(_number(t, "memory", parse_size, 0, at))
        if mem <= 0:
            raise ConfigError(f"{at}: memory must be positive")
        reps = t.get("repetitions")
        if reps is not None and (not isinstance(reps, int) or reps < 1):
            raise ConfigError(f"{at}: repetitions must be an integer >= 1")
        subsets = {}
        for key, names in known.items():
            v = t.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{at}: {key} must be a list of names")
            bad = [x for x in v if x not in names]
            if bad:
                raise ConfigError(f"{at}: {key}: no [[{key[:-1] if key != 'strategies' else 'strategy'}]] "
                                  f"named {bad[0]!r}")
            subsets[key] = tuple(v)
        timeout = _number(t, "timeout", parse_duration, None, at)
        seconds = _number(t, "trace_seconds", parse_duration, None, at)
        out.append(CampaignSize(mem, _size_label(mem), reps, None if timeout is None else float(timeout),
                                None if seconds is None else float(seconds), **subsets))
    mems = [z.memory_bytes for z in out]
    if len(set(mems)) != len(mems):
        raise ConfigError(f"{where}: two [[size]] tables have the same memory")
    return sorted(out, key=lambda z: z.memory_bytes)


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

    from harness.guest import parse_workload
    from harness.migrate import MigrateOptions, MigrationInterrupted, run_migration
    from harness.preflight import PreflightError, check_migration

    out = Path(out_dir)
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    _write_campaign_copy(campaign, out)
    todo = [(sc, r) for sc, r in campaign.runs() if not only or sc.name in only]
    result = CampaignOutcome()
    traces: dict[tuple[str, int], Path | None] = {}
    pending = [(sc, r) for sc, r in todo if not _finished(run_path(out, sc.name, r))]
    result.skipped = len(todo) - len(pending)
    if not campaign.sizes:  # one size: every trace first, as before
        for w in {sc.workload for sc, _ in pending}:
            traces[(w.name, campaign.memory_bytes)] = ensure_trace(campaign, w, out, progress=progress)
    bar = tqdm(total=len(todo), initial=result.skipped, unit="run", desc=f"validate {campaign.name}",
               disable=not progress, file=sys.stderr)
    try:
        for sc, rep in pending:
            bar.set_postfix_str(f"{sc.name} r{rep}")
            mem = sc.memory_bytes or campaign.memory_bytes
            tkey = (sc.workload.name, mem)
            if tkey not in traces:  # a scale campaign collects each size's trace just before its first run
                try:
                    traces[tkey] = ensure_trace(campaign, sc.workload, out, progress=progress, memory_bytes=mem)
                except ConfigError as e:
                    if not isinstance(e, PreflightError):
                        raise
                    traces[tkey] = None
                    _record_failure(out, f"trace__{sc.workload.name}__{sc.size}", "trace", e, result)
                except MiglabError as e:
                    traces[tkey] = None
                    _record_failure(out, f"trace__{sc.workload.name}__{sc.size}", "trace", e, result)
            trace = traces[tkey]
            if trace is None:  # its trace could not be collected: the run is left for the next invocation
                result.errors.append(f"{sc.name} r{rep}: no trace of {sc.workload.name} at {mem >> 20} MiB")
                bar.update(1)
                continue
            try:
                if campaign.sizes:  # the resident-memory pre-flight, now (other jobs may have taken memory)
                    check_migration(mem, parse_workload(sc.workload.spec, mem))
                record = run_migration(sc.scenario, MigrateOptions(warmup_s=campaign.warmup_s))
            except MigrationInterrupted as e:
                # Kept apart from runs/ so the run is repeated next time, but never lost.
                e.record.save(out / INTERRUPTED_DIR / f"{sc.name}__r{rep}.json")
                raise
            except PreflightError as e:  # this run does not fit now; the others may
                _record_failure(out, f"{sc.name}__r{rep}", "pre-flight", e, result)
                bar.update(1)
                continue
            except ConfigError:
                raise
            except MiglabError as e:
                log.warning("%s r%d: %s (will be retried on the next run)", sc.name, rep, e)
                _record_failure(out, f"{sc.name}__r{rep}", "run", e, result)
                bar.update(1)
                continue
            except Exception as e:  # noqa: BLE001 - one broken run must not end an unattended campaign
                if not campaign.sizes:
                    raise
                log.exception("%s r%d: unexpected error", sc.name, rep)
                _record_failure(out, f"{sc.name}__r{rep}", "run", e, result)
                bar.update(1)
                continue
            path = run_path(out, sc.name, rep)
            from sim.trace import load

            meta = {"campaign": campaign.name, "scenario": sc.name, "repetition": rep,
                    "workload": sc.workload.name, "link": sc.link.name, "strategy": sc.strategy.name,
                    "trace": str(Path("..") / TRACES_DIR / trace.name), "trace_sha256": load(trace).sha256}
            if sc.size:
                meta["size"] = sc.size
            record = dataclasses.replace(record, options={**record.options, "validation": meta})
            record.save(path)
            (out / FAILED_DIR / f"{sc.name}__r{rep}.json").unlink(missing_ok=True)
            result.ran += 1
            bar.update(1)
            log.info("%s r%d: %s", sc.name, rep, record.outcome)
    finally:
        bar.close()
    return result


def _record_failure(out: Path, name: str, stage: str, error: BaseException, result: CampaignOutcome) -> None:
    """Keep why a run (or trace) could not be done under ``OUT/failed/``; the campaign goes on."""
    import json
    import time

    text = f"{type(error).__name__}: {error}"
    result.errors.append(f"{name}: {text}")
    (out / FAILED_DIR).mkdir(parents=True, exist_ok=True)
    with atomic_open(out / FAILED_DIR / f"{name}.json") as f:
        json.dump({"name": name, "stage": stage, "error": text,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
        f.write("\n")


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


