"""The record of one real migration: what was asked, what the host was, what happened.

A :class:`RunRecord` is the measured counterpart of :class:`sim.result.Result`:
it holds the same :class:`sim.scenario.Scenario` the simulator would be given,
and its final statistics use the simulator's metric names wherever they mean
the same thing (``total_time_s``, ``downtime_s``, ``bytes_sent``,
``dirty_sync_count``, ...). The QEMU runner writes it; the bhyve runner reuses
the schema with ``hypervisor="bhyve"``.

Files live at ``results/<campaign>/<scenario>.json`` (see :func:`record_path`)
and are written atomically (temp file + rename), so a crash never leaves a
half-written record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sim import __version__
from sim.errors import ConfigError
from sim.scenario import Scenario

log = logging.getLogger(__name__)

RECORD_SCHEMA_VERSION = 1
OUTCOME_COMPLETED = "completed"
OUTCOME_NOT_CONVERGED = "cancelled: did not converge"
OUTCOME_INTERRUPTED = "interrupted"  # SIGINT or SIGTERM to the runner; everything was torn down
OUTCOME_LINK_LOST = "failed: link lost"

_MS = 1e-3


def _ms(info: dict[str, Any], key: str) -> float | None:
    v = info.get(key)
    return None if v is None else float(v) * _MS


@dataclass(frozen=True)
class HostInfo:
    """The machine a run happened on: enough to tell two runs' hosts apart."""

    cpu_model: str = ""
    cpu_count: int = 0
    kernel: str = ""
    os: str = ""
    hypervisor_version: str = ""
    accelerator: str = ""
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    memory_bytes: int = 0
    python: str = ""

    @classmethod
    def collect(cls, hypervisor_binary: str | None = "qemu-system-x86_64", accelerator: str = "tcg") -> HostInfo:
        """Read this host's CPU, kernel, load and (if given) hypervisor version."""
        cpu = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            cpu = platform.processor()
        mem = 0
        try:
            m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
            mem = int(m.group(1)) * 1024 if m else 0
        except OSError:
            pass
        version = ""
        if hypervisor_binary:
            try:
                out = subprocess.run([hypervisor_binary, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout
                version = out.splitlines()[0].strip() if out else ""
            except (OSError, subprocess.TimeoutExpired):
                version = ""
        return cls(cpu_model=cpu, cpu_count=os.cpu_count() or 0, kernel=platform.release(),
                   os=f"{platform.system()} {platform.version()}", hypervisor_version=version,
                   accelerator=accelerator, loadavg=tuple(os.getloadavg()),  # type: ignore[arg-type]
                   memory_bytes=mem, python=platform.python_version())


@dataclass(frozen=True)
class Poll:
    """One ``query-migrate`` sample, ``t_s`` seconds after the migration was started."""

    t_s: float
    status: str
    transferred_bytes: int = 0
    remaining_bytes: int = 0
    total_bytes: int = 0
    duplicate_pages: int = 0
    normal_pages: int = 0
    dirty_sync_count: int = 0
    dirty_pages_rate: float = 0.0
    mbps: float = 0.0
    throttle_pct: float = 0.0
    expected_downtime_s: float | None = None
    postcopy_requests: int = 0

    @classmethod
    def from_query_migrate(cls, t_s: float, info: dict[str, Any]) -> Poll:
        ram = info.get("ram", {})
        return cls(t_s=round(t_s, 4), status=str(info.get("status", "none")),
                   transferred_bytes=int(ram.get("transferred", 0)), remaining_bytes=int(ram.get("remaining", 0)),
                   total_bytes=int(ram.get("total", 0)), duplicate_pages=int(ram.get("duplicate", 0)),
                   normal_pages=int(ram.get("normal", 0)), dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
                   dirty_pages_rate=float(ram.get("dirty-pages-rate", 0)), mbps=float(ram.get("mbps", 0.0)),
                   throttle_pct=float(info.get("cpu-throttle-percentage", 0)),
                   expected_downtime_s=_ms(info, "expected-downtime"),
                   postcopy_requests=int(ram.get("postcopy-requests", 0)))


@dataclass(frozen=True)
class MigrationStats:
    """Final statistics of a migration, named like :class:`sim.result.Result`'s summary."""

    total_time_s: float | None = None
    downtime_s: float | None = None
    setup_time_s: float | None = None
    bytes_sent: int | None = 0  # None: not measured (a bhyve run without an interface counter)
    ram_total_bytes: int = 0
    duplicate_pages: int = 0
    normal_pages: int = 0
    normal_bytes: int = 0
    dirty_sync_count: int = 0
    postcopy_requests: int = 0
    throttle_pct: float = 0.0
    expected_downtime_s: float | None = None
    mbps: float = 0.0
    precopy_bytes: int = 0
    postcopy_bytes: int = 0
    downtime_bytes: int = 0
    xbzrle_cache_miss: int = 0
    xbzrle_bytes: int = 0
    #: The pause the guest sees: the source's STOP event to the destination's RESUME event, both stamped by
    #: QEMU on this host's one clock (see :func:`harness.migrate.guest_pause`); None when not measurable.
    guest_pause_s: float | None = None

    @classmethod
    def from_query_migrate(cls, info: dict[str, Any], max_throttle_pct: float = 0.0,
                           last_expected_downtime_s: float | None = None) -> MigrationStats:
        """Map QEMU's final ``query-migrate`` (times in ms) onto seconds and simulator names.

        QEMU drops ``cpu-throttle-percentage`` and ``expected-downtime`` once
        the migration has completed, so the runner passes the highest throttle
        and the last expected downtime from its timeline.
        """
        ram = info.get("ram", {})
        xb = info.get("xbzrle-cache", {})
        return cls(total_time_s=_ms(info, "total-time"), downtime_s=_ms(info, "downtime"),
                   setup_time_s=_ms(info, "setup-time"), bytes_sent=int(ram.get("transferred", 0)),
                   ram_total_bytes=int(ram.get("total", 0)), duplicate_pages=int(ram.get("duplicate", 0)),
                   normal_pages=int(ram.get("normal", 0)), normal_bytes=int(ram.get("normal-bytes", 0)),
                   dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
                   postcopy_requests=int(ram.get("postcopy-requests", 0)),
                   throttle_pct=max(float(info.get("cpu-throttle-percentage", 0)), max_throttle_pct),
                   expected_downtime_s=_ms(info, "expected-downtime") if "expected-downtime" in info
                   else last_expected_downtime_s, mbps=float(ram.get("mbps", 0.0)),
                   precopy_bytes=int(ram.get("precopy-bytes", 0)), postcopy_bytes=int(ram.get("postcopy-bytes", 0)),
                   downtime_bytes=int(ram.get("downtime-bytes", 0)),
                   xbzrle_cache_miss=int(xb.get("cache-miss", 0)), xbzrle_bytes=int(xb.get("bytes", 0)))


@dataclass(frozen=True)
class WorkloadRate:
    """What the in-guest workload achieved, from its once-a-second console lines.

    ``unit`` is ``pages/s`` for the synthetic patterns and ``ops/s`` for redis.
    ``before`` is the mean over the warm-up before migrating, ``during`` while
    the migration ran (on the source, then on the destination for post-copy),
    ``after`` on the destination (or on the source when the migration did not
    complete) over ``lines_after`` lines.
    """

    unit: str = "pages/s"
    configured: float | None = None
    before: float | None = None
    during: float | None = None
    after: float | None = None
    lines_after: int = 0


@dataclass(frozen=True)
class MemoryCheck:
    """Page-by-page comparison of source and destination RAM after both were stopped."""

    pages_compared: int
    pages_differing: int
    first_differing: tuple[int, ...] = ()
    nonzero_pages: int = 0  # pages of the source that are not all zero: each must have crossed the link
    seconds: float = 0.0  # wall time of the comparison (its cost to the run)

    @property
    def identical(self) -> bool:
        return self.pages_differing == 0


@dataclass(frozen=True)
class RunRecord:
    """One measured migration: scenario, host, timeline, final statistics and outcome.

    ``outcome`` is ``"completed"``, ``"failed: <reason>"`` (``"failed: link
    lost ..."`` when the transfer stalled with the link down),
    ``"cancelled: did not converge"`` or ``"interrupted"`` (the runner got
    SIGINT or SIGTERM). For a run that did not complete, ``stats`` holds the
    last known values, from the last ``query-migrate`` answer that had them. ``options`` holds runner settings that
    are not part of the scenario (timeout, whether memory was verified, the
    ``max-bandwidth`` actually set, ...). ``events`` are ``(t_s, text)`` marks
    such as the switch to post-copy. ``guest_continues`` says whether the
    guest's workload kept printing progress afterwards on ``guest_side``
    (``destination`` after a completed migration, ``source`` otherwise).
    """

    scenario: Scenario
    outcome: str
    hypervisor: str = "qemu"
    host: HostInfo = field(default_factory=HostInfo)
    timeline: tuple[Poll, ...] = ()
    stats: MigrationStats = field(default_factory=MigrationStats)
    raw_query_migrate: dict[str, Any] = field(default_factory=dict)
    workload_rate: WorkloadRate = field(default_factory=WorkloadRate)
    guest_continues: bool | None = None
    guest_side: str = ""
    memory_check: MemoryCheck | None = None
    events: tuple[tuple[float, str], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    started_utc: str = ""
    wall_time_s: float = 0.0
    miglab_version: str = __version__
    schema_version: int = RECORD_SCHEMA_VERSION

    @property
    def completed(self) -> bool:
        return self.outcome == OUTCOME_COMPLETED

    def summary(self) -> dict[str, Any]:
        """Flat metrics with :meth:`sim.result.Result.summary` names, plus the outcome."""
        d = dataclasses.asdict(self.stats)
        d["outcome"] = self.outcome
        d["converged"] = self.completed
        d["hypervisor"] = self.hypervisor
        return d

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["scenario"] = self.scenario.to_dict()
        for k in ("host", "stats", "workload_rate", "memory_check"):
            d[k] = None if d[k] is None else dataclasses.asdict(d[k])
        d["timeline"] = [dataclasses.asdict(p) for p in self.timeline]
        d["events"] = [list(e) for e in self.events]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "run record") -> RunRecord:
        """Rebuild a record; a wrong schema version or malformed content raises ConfigError."""
        version = data.get("schema_version")
        if version != RECORD_SCHEMA_VERSION:
            raise ConfigError(f"run record schema_version {version!r} is not supported "
                              f"(expected {RECORD_SCHEMA_VERSION})", where=source)
        try:
            d = dict(data)
            d["scenario"] = Scenario.from_dict(d["scenario"], source=source)
            host = dict(d.get("host") or {})
            host["loadavg"] = tuple(host.get("loadavg", (0.0, 0.0, 0.0)))
            d["host"] = HostInfo(**host)
            d["timeline"] = tuple(Poll(**p) for p in d.get("timeline", ()))
            d["stats"] = MigrationStats(**(d.get("stats") or {}))
            d["workload_rate"] = WorkloadRate(**(d.get("workload_rate") or {}))
            mc = d.get("memory_check")
            if mc is not None:
                mc = dict(mc)
                mc["first_differing"] = tuple(mc.get("first_differing", ()))
                d["memory_check"] = MemoryCheck(**mc)
            d["events"] = tuple((float(t), str(text)) for t, text in d.get("events", ()))
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"malformed run record: {e}", where=source) from None

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON atomically (temp file in the same directory, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Read a record written by :meth:`save`; every failure is one ConfigError line."""
        from sim.inputs import load_json

        data = load_json(path)  # regular files only, bounded, UTF-8: one line naming the file
        if not isinstance(data, dict):
            raise ConfigError("not a run record", where=path)
        return cls.from_dict(data, source=str(path))

    def timeline_frame(self) -> Any:
        """The timeline as a pandas DataFrame (one row per poll)."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(p) for p in self.timeline])


_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def record_path(campaign: str, scenario_name: str, root: str | Path = "results") -> Path:
    """``results/<campaign>/<scenario>.json`` with both parts made filesystem-safe."""
    c = _SAFE.sub("_", campaign).strip("._") or "default"
    s = _SAFE.sub("_", scenario_name).strip("._") or "run"
    return Path(root) / c / f"{s}.json"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
