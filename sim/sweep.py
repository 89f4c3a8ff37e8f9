"""Named parameter sweeps: many :func:`sim.simulate` runs into one tidy Parquet table.

A sweep is a named comparison in the shape of QEMU guestperf's: a ``[base]``
scenario, a ``[vary]`` table of dotted field paths each with a list of values
(crossed), and optionally ``[[variants]]``, named groups of overrides that go
together (a strategy with its settings), crossed with ``[vary]``::

    name = "downtime-limit-vs-bandwidth"

    [base.workload]
    kind = "synthetic"
    spec = "hotcold:hot=48MiB,rate=4000"

    [vary]
    "strategy.downtime_limit_s" = ["100ms", "300ms", "1s"]
    "link.bandwidth_Bps" = ["1Gbit/s", "10Gbit/s"]
    seed = [0, 1, 2]

    [[variants]]
    name = "qemu"
    "strategy.stop_rule" = "qemu"

    [[variants]]
    name = "bhyve"
    "strategy.stop_rule" = "bhyve"

Any scenario field can be varied; values take the same unit strings as a
scenario file. ``[vary.strategy]`` with ``downtime_limit_s = [...]`` is the
same as the quoted dotted key. Trace and model paths are taken as written
(relative to the working directory), as in scenario files; their content hash
is part of each run's ``scenario_id``, so a changed trace means new runs.

Runs execute in a local process pool (or on a dask.distributed cluster given
its scheduler address). Finished runs are checkpointed in batches as Parquet
part files in ``OUT.parts/``; a re-run skips every run whose key (scenario id
and miglab version) is already in the checkpoint or in the existing output
table, so an interrupted sweep loses nothing and an extended sweep only runs
what is new. At the end the table is assembled in sweep order, written
atomically, and the checkpoint is removed.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .atomic import atomic_path
from .errors import ConfigError, MiglabError
from .provenance import provenance, write_parquet
from .scenario import SCHEMA_VERSION, Scenario, flatten, load_toml, with_fields
from .scenario import _as_dict as scenario_table_dict
from .trace import file_sha256

log = logging.getLogger(__name__)

#: Columns every sweep table has before the flattened scenario fields.
ID_COLUMNS: tuple[str, ...] = ("sweep", "variant", "scenario_id")
#: Provenance columns added to every row.
PROVENANCE_COLUMNS: tuple[str, ...] = ("miglab_version", "trace_sha256")

_SWEEP_KEYS = {"name", "description", "base", "vary", "variants"}
_CHECKPOINT_ROWS = 500
_CHECKPOINT_INTERVAL_S = 10.0
#: Chunks in flight per worker process: enough that no worker waits for work, few enough to bound memory.
_POOL_WINDOW_PER_JOB = 4


# --------------------------------------------------------------------------- ids
def _file_sha256(path: str) -> str:
    try:
        return file_sha256(path)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", where=path) from None


def scenario_id(scenario: Scenario, input_sha256: str = "", *, json_text: str | None = None) -> str:
    """A stable 16-hex-digit id of a scenario (and the content of its trace/model file, if given).

    Two scenarios get the same id exactly when their canonical JSON (and input
    file hash) are equal, so the id survives re-ordering a sweep, renaming it,
    or moving the output. ``json_text``, if given, is ``scenario.to_json()`` already computed.
    """
    payload = (scenario.to_json() if json_text is None else json_text) + "\n" + input_sha256
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class _ScenarioJson:
    """``Scenario.to_json()`` for many scenarios that share tables: each table object's JSON is made
    once (sweep runs share every table they do not vary), and the top level is joined around them.

    ``json.dumps(d, sort_keys=True)`` writes a nested dict exactly as it writes that dict alone, so
    the text is the same; the tables are kept referenced while cached, so an ``id`` is never reused.
    """

    def __init__(self) -> None:
        self._tables: dict[int, tuple[Any, str]] = {}
        self._layout: dict[type, list[tuple[str, str, bool]]] = {}
        self._scalars: dict[tuple[type, Any], str] = {}  # a sweep's names and seeds repeat
        self._n_fields: dict[type, int] = {}

    def __call__(self, scenario: Scenario) -> str:
        layout = self._layout.get(type(scenario))
        if layout is None:  # (field, its JSON key, is a table) in sorted key order, schema_version included
            names = [f.name for f in dataclasses.fields(scenario)] + ["schema_version"]
            layout = [(n, json.dumps(n) + ": ", dataclasses.is_dataclass(getattr(scenario, n, None)))
                      for n in sorted(names)]
            self._layout[type(scenario)] = layout
        parts = []
        for name, key, is_table in layout:
            if name == "schema_version":
                parts.append(key + json.dumps(SCHEMA_VERSION))
                continue
            value = getattr(scenario, name)
            if is_table and dataclasses.is_dataclass(value):
                hit = self._tables.get(id(value))
                if hit is None or hit[0] is not value:
                    hit = (value, json.dumps(self._table_dict(value), sort_keys=True))
                    self._tables[id(value)] = hit
                parts.append(key + hit[1])
            else:
                memo = (type(value), value) if type(value) in (str, int, bool) else None
                text = self._scalars.get(memo) if memo else None
                if text is None:
                    text = json.dumps(value, sort_keys=True)
                    if memo and len(self._scalars) < 4096:
                        self._scalars[memo] = text
                parts.append(key + text)
        return "{" + ", ".join(parts) + "}"

    def _table_dict(self, table: Any) -> dict[str, Any]:
        """The dict ``Scenario.to_dict`` holds for ``table``: its ``__dict__`` itself when every field is a
        plain scalar (what ``_as_dict`` would copy out field by field), else ``_as_dict``."""
        cls = type(table)
        n = self._n_fields.get(cls)
        if n is None:
            n = self._n_fields[cls] = len(dataclasses.fields(table))
        d = getattr(table, "__dict__", None)
        if d is not None and len(d) == n and all(type(v) in _SCALARS for v in d.values()):
            return d
        return scenario_table_dict(table)


_SCALARS = frozenset({int, float, str, bool, type(None)})


class _InputHashes:
    """sha256 of trace/model files, read once per path."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, scenario: Scenario) -> str:
        w = scenario.workload
        if w.kind not in ("trace", "model") or not w.path:
            return ""
        if w.path not in self._cache:
            self._cache[w.path] = _file_sha256(w.path)
        return self._cache[w.path]


# --------------------------------------------------------------------------- sweep definition
@dataclass(frozen=True)
class Sweep:
    """A named cross product of scenarios (see the module docstring for the TOML form)."""

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    vary: dict[str, list[Any]] = field(default_factory=dict)
    variants: tuple[tuple[str, dict[str, Any]], ...] = ()
    description: str = ""
    source: str = "sweep"
    #: Refuse a cross product of more runs than this before building any (``miglab sweep --max-runs``).
    max_runs: int = field(default=1_000_000, repr=False, compare=False)
    #: Host constants under the sweep (dotted overrides, e.g. :attr:`sim.hostinfo.HostSource.overrides`):
    #: every run gets them unless the sweep sets that field itself (in [base], [vary] or a variant).
    host_overrides: dict[str, Any] = field(default_factory=dict)
    _runs: tuple[tuple[dict[str, Any], Scenario], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Validate everything up front (a bad sweep must fail before any run or output) and keep the result:
        # building 10,000 scenarios takes seconds.
        if len(self) > self.max_runs:
            from .errors import ResourceError

            raise ResourceError(f"the cross product is {len(self):,} runs, more than the {self.max_runs:,} allowed "
                                "(raise it with --max-runs)", estimate=len(self), where=self.source)
        object.__setattr__(self, "_runs", tuple(self._checked_scenarios()))

    @classmethod
    def from_toml(cls, path: str | Path, **kw: Any) -> Sweep:
        """Read a sweep TOML file; any problem raises one ConfigError naming the file."""
        return cls.from_dict(load_toml(path), source=str(path), **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "sweep", max_runs: int = 1_000_000,
                  host_overrides: dict[str, Any] | None = None) -> Sweep:
        """Build from the parsed TOML/JSON form (keys name, description, base, vary, variants).

        ``host_overrides`` are host constants put under the sweep (``miglab sweep`` passes the bundled
        calibration unless told otherwise); fields the sweep sets itself win.
        """
        if not isinstance(data, dict):
            raise ConfigError("a sweep must be a table", where=source)
        unknown = sorted(set(data) - _SWEEP_KEYS)
        if unknown:
            raise ConfigError(f"unknown sweep key {unknown[0]!r} (known: {', '.join(sorted(_SWEEP_KEYS))})",
                              where=source)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("a sweep needs a non-empty string 'name'", where=source)
        if any(c in name for c in "/\\\n"):
            raise ConfigError(f"sweep name {name!r} must not contain slashes or newlines", where=source)
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise ConfigError("[base] must be a table", where=source)
        vary_raw = data.get("vary", {})
        if not isinstance(vary_raw, dict):
            raise ConfigError("[vary] must be a table", where=source)
        vary: dict[str, list[Any]] = {}
        for key, values in flatten(vary_raw).items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"[vary] {key!r} must be a non-empty list of values", where=source)
            vary[key] = values
        variants_raw = data.get("variants", [])
        if not isinstance(variants_raw, list) or not all(isinstance(v, dict) for v in variants_raw):
            raise ConfigError("variants must be an array of tables ([[variants]])", where=source)
        variants: list[tuple[str, dict[str, Any]]] = []
        for i, v in enumerate(variants_raw):
            v = dict(v)
            vname = v.pop("name", f"v{i}")
            if not isinstance(vname, str) or not vname:
                raise ConfigError(f"variant {i} needs a string name", where=source)
            overrides = flatten(v)
            if not overrides:
                raise ConfigError(f"variant {vname!r} overrides nothing", where=source)
            clash = sorted(set(overrides) & set(vary))
            if clash:
                raise ConfigError(f"{clash[0]!r} is set both in variant {vname!r} and in [vary]", where=source)
            variants.append((vname, overrides))
        names = [n for n, _ in variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"variant name {dupes[0]!r} is used twice", where=source)
        description = data.get("description", "")
        if not isinstance(description, str):
            raise ConfigError("description must be a string", where=source)
        return cls(name=name, base=base, vary=vary, variants=tuple(variants), description=description,
                   source=source, max_runs=max_runs, host_overrides=dict(host_overrides or {}))

    def own_fields(self) -> set[str]:
        """Every dotted field the sweep itself sets: in [base], [vary] or a variant."""
        keys = set(flatten(self.base)) | set(self.vary)
        for _, overrides in self.variants:
            keys |= set(overrides)
        return keys

    def base_scenario(self) -> Scenario:
        sc = Scenario.from_dict(self.base, source=f"{self.source}: [base]")
        under = {k: v for k, v in self.host_overrides.items() if k not in self.own_fields()}
        return sc.replace(**under) if under else sc

    def scenarios(self) -> list[tuple[dict[str, Any], Scenario]]:
        """Every run: ``(config, scenario)``, variants outermost, then [vary] keys in file order.

        ``config`` holds the sweep's labels for the run: ``variant`` (if the
        sweep has variants) and the varied values as written in the file.
        """
        return [(dict(config), scenario) for config, scenario in self._runs]

    def _checked_scenarios(self) -> list[tuple[dict[str, Any], Scenario]]:
        try:
            return self._scenarios()
        except ConfigError as e:
            # unit parsers do not know which file they parse; every error must name it
            raise e.at(where=self.source) from None

    def _scenarios(self) -> list[tuple[dict[str, Any], Scenario]]:
        base = self.base_scenario()
        variants = self.variants or (("", {}),)
        keys = list(self.vary)
        runs: list[tuple[dict[str, Any], Scenario]] = []
        where = f"{self.source}: [vary]"
        for vname, overrides in variants:
            vwhere = f"{self.source}: variant {vname!r}" if vname else self.source
            vbase = with_fields(base, overrides, vwhere) if overrides else base
            # The product varies its last key fastest, so the scenario of every prefix of a combination
            # is shared by all the runs below it: each run costs one field change, not len(keys), and
            # runs share their unchanged tables (less memory, and :func:`_scenario_json` reuses their JSON).
            prefix: list[tuple[Any, Scenario]] = []  # (value, scenario with keys[:i + 1] set) per level
            for combo in itertools.product(*(self.vary[k] for k in keys)):
                changes = dict(zip(keys, combo, strict=True))
                scenario = self._build_run(vbase, keys, combo, prefix, changes, where) if changes else vbase
                config: dict[str, Any] = {"variant": vname} if self.variants else {}
                config.update(changes)
                runs.append((config, scenario))
        return runs

    @staticmethod
    def _build_run(vbase: Scenario, keys: list[str], combo: tuple[Any, ...], prefix: list[tuple[Any, Scenario]],
                   changes: dict[str, Any], where: str) -> Scenario:
        """``with_fields(vbase, changes)``, built from the longest prefix of ``combo`` already built.

        The same scenario either way (each field is coerced on its own, and every table is validated
        after its last change); should a partial combination not validate, the whole one is built at
        once, so errors (and their text) are those of building it at once.
        """
        i = 0
        while i < len(prefix) and _same_value(prefix[i][0], combo[i]):
            i += 1
        del prefix[i:]
        try:
            scenario = prefix[-1][1] if prefix else vbase
            for j in range(i, len(keys)):
                scenario = with_fields(scenario, {keys[j]: combo[j]}, where)
                prefix.append((combo[j], scenario))
            return scenario
        except ConfigError:
            prefix.clear()
            return with_fields(vbase, changes, where)

    def __len__(self) -> int:
        return len(self.variants or ((),)) * _product_len(self.vary.values())


def _same_value(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def _product_len(lists: Iterable[list[Any]]) -> int:
    n = 1
    for values in lists:
        n *= len(values)
    return n


# --------------------------------------------------------------------------- one run
def run_metrics(scenario: Scenario) -> dict[str, Any]:
    """Simulate one scenario; return its flat summary metrics plus provenance columns."""
    from .engine import simulate

    result = simulate(scenario)
    metrics = {k: v for k, v in result.summary().items() if v is None or isinstance(v, bool | int | float | str)}
    metrics["miglab_version"] = result.miglab_version or __version__
    metrics["trace_sha256"] = result.trace_sha256
    return metrics


def scenario_columns(scenario: Scenario) -> dict[str, Any]:
    """The flattened scenario fields of a sweep row (dotted names, no schema version)."""
    sc = scenario.to_dict()
    sc.pop("schema_version", None)
    return flatten(sc)


def _simulate_chunk(items: list[tuple[str, Scenario]]) -> list[tuple[str, dict[str, Any]]]:
    """Worker entry point (process pool or dask): run a chunk of scenarios.

    Each row holds the flattened scenario and its metrics, so the parent only adds the labels.
    """
    return [(key, {**scenario_columns(scenario), **run_metrics(scenario)}) for key, scenario in items]


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; only the parent should react (and checkpoint).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- checkpoint
class _Checkpoint:
    """Completed rows, flushed in batches to atomically written Parquet part files."""

    def __init__(self, parts_dir: Path, rows_per_part: int, interval_s: float) -> None:
        self.dir = parts_dir
        self.rows_per_part = rows_per_part
        self.interval_s = interval_s
        self.pending: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.rows_per_part or time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        _write_parquet_atomic(pd.DataFrame(self.pending), self.dir / name)
        log.debug("checkpointed %d runs to %s", len(self.pending), self.dir / name)
        self.pending = []


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False)


def parts_dir_for(out: Path) -> Path:
    """Where the checkpoint of a sweep writing ``out`` lives."""
    return out.with_name(out.name + ".parts")


def _read_existing(out: Path) -> pd.DataFrame:
    """Rows already finished: the existing output table plus every checkpoint part."""
    frames = []
    sources = [out] if out.exists() else []
    parts = parts_dir_for(out)
    if parts.is_dir():
        sources += sorted(parts.glob("part-*.parquet"))
    for path in sources:
        try:
            frames.append(pd.read_parquet(path, engine="pyarrow"))
        except Exception as e:  # a torn or foreign file must not kill a resume; it is re-run instead
            log.warning("ignoring unreadable %s (%s)", path, e)
    frames = [f for f in frames if not f.empty and {"scenario_id", "miglab_version"} <= set(f.columns)]
    if not frames:
        return pd.DataFrame(columns=["scenario_id", "miglab_version"])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- execution
def _chunks(items: Sequence[tuple[str, Scenario]], size: int) -> Iterator[list[tuple[str, Scenario]]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def _chunk_size(n: int, workers: int) -> int:
    # ~8 chunks per worker: balanced load, little per-task overhead, frequent progress (a chunk of
    # 64 model runs is a few tens of milliseconds).
    return max(1, min(64, n // max(1, workers * 8)))


def _execute_inline(chunks: Iterable[list[tuple[str, Scenario]]]) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    for chunk in chunks:
        yield _simulate_chunk(chunk)


def _execute_pool(chunks: list[list[tuple[str, Scenario]]], jobs: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    # forkserver: safe with the threads tqdm and dask start, and cheap after the first fork.
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_ignore_sigint)
    try:
        # A bounded window of chunks in flight, refilled as chunks finish, and each finished future
        # dropped once its rows are yielded: a future keeps its rows, and as_completed over all of
        # them kept every row of the sweep alive in the parent to the end (1.3 GiB at 100,000 runs).
        todo = iter(chunks)
        running = {pool.submit(_simulate_chunk, c) for c in itertools.islice(todo, _POOL_WINDOW_PER_JOB * jobs)}
        while running:
            done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for _ in done:
                nxt = next(todo, None)
                if nxt is not None:
                    running.add(pool.submit(_simulate_chunk, nxt))
            for fut in done:
                yield fut.result()
            del done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _execute_dask(chunks: list[list[tuple[str, Scenario]]], scheduler: str,
                  connect_timeout_s: float) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed (pip install 'miglab[lab]')") from None
    try:
        client = Client(scheduler, timeout=f"{connect_timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConfigError(f"--scheduler {scheduler}: cannot connect ({e})") from None
    try:
        futures = client.map(_simulate_chunk, chunks, pure=False)
        try:
            with client.as_current():  # as_completed looks the client up; do not make it the global default
                for fut in as_completed(futures):
                    yield fut.result()
        finally:
            client.cancel(futures)
    finally:
        client.close()


def run_sweep(sweep: Sweep, out: str | Path, jobs: int | None = None, scheduler: str | None = None,
              progress: bool = True, *, checkpoint_rows: int = _CHECKPOINT_ROWS,
              checkpoint_interval_s: float = _CHECKPOINT_INTERVAL_S,
              connect_timeout_s: float = 10.0, host: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run every scenario of ``sweep`` not already finished; write and return the full table.

    ``jobs`` is the local process count (default: all cores; 1 runs in this
    process); ``scheduler`` (``tcp://host:port``) runs on that dask.distributed
    cluster instead, whose workers must be able to import ``sim`` and read any
    trace/model files at the same paths. Completed runs are checkpointed to
    ``OUT.parts/`` every ``checkpoint_rows`` runs or ``checkpoint_interval_s``
    seconds and on interrupt; a re-run resumes from there. Connecting to the
    scheduler gives up after ``connect_timeout_s``. ``host`` (a :meth:`sim.hostinfo.HostSource.to_dict`)
    is stored as ``host_constants`` in the table's provenance.

    The table has one row per scenario of the sweep, in sweep order: columns
    ``sweep``, ``variant``, ``scenario_id``, the flattened scenario fields
    (dotted names), the summary metrics of :meth:`sim.Result.summary`, and
    ``miglab_version``/``trace_sha256``.
    """
    out = Path(out)
    if out.suffix != ".parquet":
        raise ConfigError("the output of a sweep must be a .parquet file", where=out)
    if out.exists() and not out.is_file():
        raise ConfigError("exists and is not a file", where=out)
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {jobs}")
    if checkpoint_rows < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, not {checkpoint_rows}")
    jobs = jobs or os.cpu_count() or 1

    from tqdm.auto import tqdm

    # The bar comes up before planning: a 100,000-run sweep must show life from its first second.
    bar = tqdm(total=len(sweep), desc=sweep.name, unit="run", disable=not progress, smoothing=0.05)
    try:
        bar.set_postfix_str("planning", refresh=True)
        plan, variant_of = _plan(sweep)
        done = _read_existing(out)
        done = done[done["miglab_version"] == __version__]
        done_ids = set(done["scenario_id"])
        del done
        todo = [(sid, scenario) for sid, scenario in plan if sid not in done_ids]
        log.info("sweep %s: %d runs, %d already done, %d to run", sweep.name, len(plan), len(plan) - len(todo),
                 len(todo))
        bar.total = len(plan)
        bar.n = len(plan) - len(todo)
        bar.set_postfix_str("", refresh=True)
        order = [sid for sid, _ in plan]
        input_paths = sorted({sc.workload.path for _, sc in plan if sc.workload.path})
        columns = _columns(sweep, plan[0][1]) if plan else list(ID_COLUMNS)
        del plan
        if todo:
            _run(sweep, todo, variant_of, out, jobs, scheduler, connect_timeout_s, checkpoint_rows,
                 checkpoint_interval_s, bar)
    finally:
        bar.close()

    table = _assemble(out, order, sweep.name, variant_of, columns)
    with atomic_path(out) as tmp:  # the final table carries its provenance in the Parquet schema metadata
        write_parquet(table, tmp, provenance(inputs={path: file_sha256(path) for path in input_paths},
                                             extra={"sweep": sweep.name,
                                                    **({"host_constants": host} if host else {})}))
    _remove_parts(parts_dir_for(out))
    return table


def _plan(sweep: Sweep) -> tuple[list[tuple[str, Scenario]], dict[str, str]]:
    """Every distinct run of ``sweep`` as ``(scenario_id, scenario)`` in sweep order, and each run's variant."""
    input_sha = _InputHashes()
    as_json = _ScenarioJson()
    plan: list[tuple[str, Scenario]] = []
    variant_of: dict[str, str] = {}
    for config, scenario in sweep._runs:  # read-only here: no copies of 100,000 label dicts
        sid = scenario_id(scenario, input_sha(scenario), json_text=as_json(scenario))
        if sid in variant_of:
            log.warning("%s: duplicate scenario %s (%s) runs once", sweep.source, sid, config)
            continue
        variant_of[sid] = config.get("variant", "")
        plan.append((sid, scenario))
    return plan, variant_of


def _run(sweep: Sweep, todo: list[tuple[str, Scenario]], variant_of: dict[str, str], out: Path, jobs: int,
         scheduler: str | None, connect_timeout_s: float, checkpoint_rows: int, checkpoint_interval_s: float,
         bar: Any) -> None:
    """Run ``todo`` and checkpoint every finished row; rows stream through, none are kept here."""
    checkpoint = _Checkpoint(parts_dir_for(out), checkpoint_rows, checkpoint_interval_s)
    # In-process runs go one by one, so an interrupt loses nothing that finished.
    size = 1 if scheduler is None and jobs == 1 else _chunk_size(len(todo), jobs)
    chunks = list(_chunks(todo, size))
    if scheduler is not None:
        results = _execute_dask(chunks, scheduler, connect_timeout_s)
    elif jobs == 1:
        results = _execute_inline(chunks)
    else:
        results = _execute_pool(chunks, min(jobs, len(chunks)))
    try:
        for chunk_result in results:
            checkpoint.add({"sweep": sweep.name, "variant": variant_of[sid], "scenario_id": sid, **row}
                           for sid, row in chunk_result)
            bar.update(len(chunk_result))
    finally:
        # Runs on success, error and Ctrl-C alike: nothing finished is lost.
        checkpoint.flush()
        if hasattr(results, "close"):
            results.close()


def _columns(sweep: Sweep, scenario: Scenario) -> list[str]:
    """The label and scenario columns of a row, in table order."""
    return [*ID_COLUMNS, *scenario_columns(scenario)]


def _assemble(out: Path, order: list[str], name: str, variant_of: dict[str, str], columns: list[str]) -> pd.DataFrame:
    done = _read_existing(out)
    done = done[done["miglab_version"] == __version__]
    done = done.drop_duplicates("scenario_id", keep="last").set_index("scenario_id", drop=False)
    missing = [sid for sid in order if sid not in done.index]
    if missing:
        raise MiglabError(f"{len(missing)} runs are missing after the sweep (first {missing[0]})", where=out)
    table = done.loc[order].reset_index(drop=True)
    # The sweep's labels may have changed since a run was checkpointed (renamed sweep or variant): the
    # current definition wins. The scenario columns cannot differ: the scenario id is their hash.
    table["sweep"] = name
    table["variant"] = [variant_of[sid] for sid in order]
    first = [c for c in columns if c in table.columns]
    last = [c for c in PROVENANCE_COLUMNS if c in table.columns]
    rest = [c for c in table.columns if c not in first and c not in last]
    return table[first + rest + last]


def _remove_parts(parts: Path) -> None:
    if not parts.is_dir():
        return
    for p in parts.iterdir():
        if p.is_file() and (p.name.startswith("part-") or p.name.startswith(".part-")):
            p.unlink(missing_ok=True)
    try:
        parts.rmdir()
    except OSError:
        log.warning("%s: left in place (holds files miglab did not write)", parts)


__all__ = ["Sweep", "run_sweep", "run_metrics", "scenario_id", "flatten", "parts_dir_for"]
