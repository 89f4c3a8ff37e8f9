"""What varies in a migration, as frozen, typed dataclasses.

In the shape of QEMU's guestperf: the :class:`Link` and :class:`Host` are the
hardware, the :class:`Strategy` is the migration algorithm and its tunables,
and the :class:`Workload` is what the guest does. A :class:`Scenario` bundles
one of each and is the single input of :func:`sim.simulate`.

Units are in field names (``bandwidth_Bps``, ``rtt_s``, ``memory_bytes``).
Scenarios round-trip through JSON and TOML via :meth:`Scenario.to_dict` and
:meth:`Scenario.from_dict`; string values with units are accepted wherever the
field's suffix says what the unit is (``"1Gbit/s"`` for ``*_Bps``,
``"300ms"`` for ``*_s``, ``"4GiB"`` for ``*_bytes``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .units import parse_bandwidth, parse_duration, parse_size

SCHEMA_VERSION = 1

StrategyKind = Literal["precopy", "postcopy", "hybrid", "stopcopy"]
StopRule = Literal["qemu", "bhyve", "xen", "simgrid", "xen-ratio"]
WorkloadKind = Literal["trace", "model", "synthetic"]
ScalingLaw = Literal["absolute", "proportional"]
ModelMode = Literal["expected", "sampled"]
Prepaging = Literal["linear", "follow", "bubbling"]
WithinInterval = Literal["poisson", "once"]

STRATEGIES: tuple[str, ...] = typing.get_args(StrategyKind)
STOP_RULES: tuple[str, ...] = typing.get_args(StopRule)


@dataclass(frozen=True)
class Workload:
    """What the guest does to its memory.

    ``kind`` selects the source of dirty pages: a recorded ``trace`` (page-exact
    replay), a calibrated ``model`` (JSON from ``miglab calibrate``), or a
    ``synthetic`` spec such as ``hotcold:hot=48MiB,rate=4000``.

    Traces record writes only. Post-copy needs reads too: the guest is assumed
    to touch ``1 + read_write_ratio`` times as many distinct pages as it
    writes, the extra reads drawn from the same page distribution. This is a
    documented modelling assumption, not a measurement.

    ``intensity`` replays the trace or model that much faster: the workload
    runs at a different speed than when it was recorded (e.g. a CPU-bound
    program traced on a busier host), as measured before migrating.

    ``within_interval`` is how a trace replay places a page's writes inside
    an interval, which matters for rounds shorter than the interval:
    ``poisson`` (default) infers each page's write rate from how many
    intervals it changed in, so a short window sees hot pages more often than
    its linear share; ``once`` gives each page one instant (the linear share).
    See :mod:`sim.dirty`.

    ``cpu_utilization`` is the share of its vCPU time the workload needs to
    hold its dirty rate. Throttling (auto-converge) only slows dirtying once
    it takes away more than the spare time: a paced workload using 20 % of a
    vCPU is untouched by a 30 % throttle (measured under TCG here), a
    CPU-bound one (1.0) slows in proportion.

    ``write_dispersion`` is how much more variable the pages a window's writes
    dirty are than independent pages (variance over mean; 1: independent;
    writes in clusters of ``k`` pages: ``E[k^2] / E[k]``). Only the
    expected-value mode uses it, where Xen's rate test compares two rounds'
    counts by their spread; the page-exact sources draw pages independently.
    """

    kind: WorkloadKind = "synthetic"
    spec: str = "uniform:rate=30MiB/s"
    path: str = ""
    memory_bytes: int = 4 * 2**30
    page_size_bytes: int = 4096
    scaling: ScalingLaw = "absolute"
    mode: ModelMode = "expected"
    zero_page_fraction: float | None = None
    read_write_ratio: float = 0.0
    xbzrle_delta_fraction: float = 0.1
    trace_seconds: float = 60.0
    interval_s: float = 0.5
    cpu_utilization: float = 1.0
    intensity: float = 1.0
    within_interval: WithinInterval = "poisson"
    write_dispersion: float = 1.0


@dataclass(frozen=True)
class Link:
    """The network between source and destination.

    ``bandwidth_Bps`` is the raw link rate. ``migration_cap_Bps`` is QEMU's
    ``max-bandwidth``: it limits the live phase only, never the final
    stop-and-copy, which runs at ``bandwidth_Bps`` (measured here: 30 MB left in
    24 ms through a link capped at 100 MiB/s). ``header_bytes_per_page`` is the
    per-page framing overhead on the wire.
    """

    bandwidth_Bps: float = 119.2 * 2**20
    rtt_s: float = 0.0
    header_bytes_per_page: int = 0
    migration_cap_Bps: float | None = None


@dataclass(frozen=True)
class Host:
    """Host constants that the validation loop calibrates from real runs.

    ``switchover_s`` is the fixed cost of pausing, saving device state and
    resuming at the end of a pre-copy. ``postcopy_switch_s`` is the fixed cost
    of the post-copy switchover (stop, discard bitmap, device-state package):
    a different code path in QEMU, and one whose downtime clock stops when the
    source has sent the package, so the link delay is not in ``downtime_s``
    (the guest still resumes ``rtt/2`` later, which the timeline keeps).
    ``None`` means the same as ``switchover_s``; ``calibrate-host`` fits it.
    ``throughput_efficiency`` scales the link to the throughput the
    migration stream really achieves. ``dirty_rate_factor`` scales the guest's
    dirty rate while it is being migrated (TCG slows a guest under migration).
    ``page_send_cost_s`` is a per-page CPU cost on the sender.
    ``postcopy_queue_bytes`` is how much background-push data a post-copy page
    request waits behind (socket buffers without QEMU's postcopy-preempt). The
    same backlog delays a completion whenever QEMU's return path is open
    (``postcopy-ram`` on: post-copy and hybrid strategies): its downtime clock
    stops only when the destination has read the whole stream and replied.

    ``hypervisor`` selects the copy mechanics. ``qemu``: zero pages elided,
    XBZRLE and auto-converge available. ``bhyve`` (FreeBSD-UPB patches): every
    page sent, each in its own socket send (``bhyve_page_send_s``), copied in
    chunks of ``bhyve_chunk_pages`` with the vCPUs paused for each chunk
    (``bhyve_chunk_pause_s``), lowmem (below 3 GiB) and highmem (from 4 GiB)
    segments, wired memory only; ``bhyve_lowmem_only`` reproduces the first
    versions, which migrated lowmem alone.

    The last round's mechanics: ``final_copy_rate_Bps`` is the rate the final
    stop-and-copy achieves (None: the link rate times
    ``throughput_efficiency``, or for the ``xen`` rule Xen's maximum rate);
    ``resume_s`` is a fixed cost after it, until the guest runs on the
    destination (Clark et al. report it apart: "an additional 9 ms elapse
    while the VM starts up"), added to ``switchover_s``.
    ``final_copy_burst_bytes`` is credit a rate limiter has banked when the
    final copy starts: that many bytes go at the link's rate before a
    ``final_copy_rate_Bps`` (or Xen's rate) below it applies. Xen 2.0's
    ``xcio_ratewrite`` never caps its budget, so every moment its writer
    waits (above all the suspend before the last iteration) is credit.
    Together they let QEMU, Xen and bhyve hosts each carry their own
    last-round constants.

    ``bhyve_sticky_dirty`` reproduces the early live-migration versions
    (D30954), which left ``VPO_VMM_DIRTY`` set once a page was dirtied, so the
    page is sent again in every later round. ``bhyve_dirty_search_s_per_page``
    is the vCPU pause while ``search_dirty_pages`` (usr.sbin/bhyve/migration.c,
    called from ``live_migrate_send`` between ``vm_vcpu_pause`` and
    ``vm_vcpu_resume``) walks the guest's pages at the start of every round
    after the first; in the final round the vCPUs are already paused, so it
    adds to the downtime. Neither constant has been calibrated on a bhyve host.
    """

    switchover_s: float = 0.0
    postcopy_switch_s: float | None = None
    device_state_bytes: int = 0
    throughput_efficiency: float = 1.0
    dirty_rate_factor: float = 1.0
    page_send_cost_s: float = 0.0
    setup_s: float = 0.0
    cold_restart_s: float = 30.0
    postcopy_queue_bytes: int = 256 * 1024
    hypervisor: Literal["qemu", "bhyve"] = "qemu"
    wired_memory: bool = True
    bhyve_chunk_pages: int = 10
    bhyve_chunk_pause_s: float = 20e-6
    bhyve_page_send_s: float = 2e-6
    bhyve_lowmem_only: bool = False
    final_copy_rate_Bps: float | None = None
    resume_s: float = 0.0
    final_copy_burst_bytes: int = 0
    bhyve_sticky_dirty: bool = False
    bhyve_dirty_search_s_per_page: float = 0.0
    #: Costs that grow with guest size (issue 9; 0 = not modelled, as before). ``zero_page_cost_s``: QEMU
    #: reads every page it elides (buffer_is_zero in save_zero_page), on the sender's time.
    #: ``sync_s_per_GiB``: each dirty-bitmap sync walks the bitmap of all of RAM (migration_bitmap_sync),
    #: live after every round, with the vCPUs paused at completion. ``setup_s_per_GiB``: ram_save_setup
    #: allocates and fills the per-GiB bitmaps and starts dirty logging before the first page moves.
    zero_page_cost_s: float = 0.0
    sync_s_per_GiB: float = 0.0
    setup_s_per_GiB: float = 0.0


@dataclass(frozen=True)
class Strategy:
    """The migration algorithm and its tunables.

    * ``stopcopy``: pause, copy everything, resume (``cold=True``: shut down and
      boot on the destination; no memory moves).
    * ``precopy``: rounds while the guest runs, ended by ``stop_rule``.
    * ``postcopy``: switch over at once; the destination faults pages in while
      a background push sends the rest.
    * ``hybrid``: pre-copy for ``postcopy_after_rounds`` rounds (or until the
      convergence-stall detector fires), then post-copy.

    ``qemu_sync`` chooses how the ``qemu`` rule syncs the dirty bitmap:
    ``iteration`` is what QEMU does (every ``qemu_iteration_s`` of sending it
    checks pending bytes and syncs as soon as they fall below the threshold, so
    a round leaves up to a threshold's worth unsent); ``pass`` is the textbook
    model (send the whole dirty set, then sync), which the geometric closed
    form assumes.

    ``prepaging`` is the post-copy background push order: ``linear`` pushes
    in address order regardless of faults; ``follow`` carries the scan on from
    the page the guest last requested (one reading of QEMU without
    postcopy-preempt); ``bubbling`` pushes the ``bubble_pages`` pages after
    each fault first (Hines & Gopalan). Against 54 real QEMU post-copy and
    hybrid runs, ``linear`` predicted the page requests better (held-out
    median error 20 % against 31 % for ``follow``), so it is the default.
    ``max_rounds`` is a guard: ``on_round_limit`` says whether
    hitting it cancels the migration (QEMU has no forced switchover) or
    switches over anyway (Xen-style).

    The ``xen`` rule is xc_domain_save's loop (see :mod:`sim.xen`): each pass
    skips pages dirtied again before their turn (checked once per batch of
    ``xen_batch_pages``), the live rate starts at ``xen_min_rate_Bps`` and
    after a round whose dirtying rate exceeded it becomes that rate plus
    ``xen_rate_increment_Bps``, capped at ``xen_max_rate_Bps`` (defaults: Xen's
    100, 50 and 500 "Mbit/s", where Xen's Mbit is 2**20 bits); and it stops on
    ``xen_max_iters``, ``xen_max_factor``, ``xen_min_dirty_pages`` or a round
    that sent more than the one before at the maximum rate.
    ``xen_rate_adaptation=False`` is the later Xen built without
    ``ADAPTIVE_SAVE``: no rate limit, and no rate-at-maximum stop.
    ``xen_skip_redirtied=False`` turns the skip off (an ablation).
    ``xen-ratio`` is miglab's earlier approximation of Xen (see
    :mod:`sim.stoprules`).
    """

    kind: StrategyKind = "precopy"
    stop_rule: StopRule = "qemu"
    downtime_limit_s: float = 0.3
    max_rounds: int | None = None
    timeout_s: float = 600.0
    bhyve_rounds: int = 4
    xen_max_iters: int = 29
    xen_max_factor: float = 3.0
    xen_min_dirty_pages: int = 50
    simgrid_threshold_s: float = 0.03
    postcopy_after_rounds: int = 1
    stall_detector: bool = False
    stall_ratio: float = 0.95
    prepaging: Prepaging = "linear"
    bubble_pages: int = 64
    auto_converge: bool = False
    ac_initial_pct: float = 20.0
    ac_increment_pct: float = 10.0
    ac_max_pct: float = 99.0
    ac_trigger_pct: float = 50.0
    xbzrle_cache_bytes: int = 0
    multifd_channels: int = 1
    cold: bool = False
    on_round_limit: Literal["cancel", "switchover"] = "cancel"
    qemu_sync: Literal["iteration", "pass"] = "iteration"
    qemu_iteration_s: float = 0.05
    xen_min_rate_Bps: float = 100 * 131072.0
    xen_rate_increment_Bps: float = 50 * 131072.0
    xen_max_rate_Bps: float = 500 * 131072.0
    xen_rate_adaptation: bool = True
    xen_skip_redirtied: bool = True
    xen_batch_pages: int = 1024


@dataclass(frozen=True)
class Scenario:
    """One migration to simulate (or run): workload x link x host x strategy."""

    workload: Workload = field(default_factory=Workload)
    link: Link = field(default_factory=Link)
    host: Host = field(default_factory=Host)
    strategy: Strategy = field(default_factory=Strategy)
    name: str = ""
    seed: int = 0

    def replace(self, **changes: Any) -> Scenario:
        """Return a copy with dotted fields changed: ``replace(**{"link.rtt_s": 0.01})``."""
        return with_fields(self, changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/TOML-ready) with a ``schema_version`` key."""
        d = _as_dict(self)
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        """TOML text; fields that are None (every optional field defaults to None) are left out."""
        import tomli_w

        def drop_none(d: dict[str, Any]) -> dict[str, Any]:
            return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

        return tomli_w.dumps(drop_none(self.to_dict()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "scenario") -> Scenario:
        """Build from a (possibly partial) dict; unknown keys and bad values raise ConfigError."""
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{source}: schema_version {version} is not supported (expected {SCHEMA_VERSION})")
        return _build(cls, data, source)

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Read a scenario TOML file (tables ``[workload]``, ``[link]``, ``[host]``, ``[strategy]``)."""
        return cls.from_dict(load_toml(path), source=str(path))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into one ConfigError line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning every failure into one ConfigError line."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved type of each field of a dataclass, in field order (``get_type_hints`` compiles the
    string annotations each call: a 100,000-run sweep spent most of its planning there)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _nested_fields(cls: type) -> frozenset[str]:
    """Fields of a dataclass whose type is itself a dataclass (the tables of a scenario)."""
    return frozenset(name for name, tp in _field_types(cls).items() if dataclasses.is_dataclass(tp))


@functools.cache
def _plain(cls: type) -> bool:
    """Whether ``cls`` can be copied field by field: no ``__post_init__`` or slots to honour."""
    return not hasattr(cls, "__post_init__") and "__slots__" not in cls.__dict__


_CONTAINERS = (list, dict, tuple)


def _as_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` for these dataclasses: scalar leaves are shared, not deep-copied."""
    cls: type = type(obj)  # a plain `type`: mypy does not see type[Any] as Hashable for the caches
    nested = _nested_fields(cls)
    out: dict[str, Any] = {}
    for name in _field_types(cls):
        value = getattr(obj, name)
        if name in nested and dataclasses.is_dataclass(value):
            value = _as_dict(value)
        elif type(value) in _CONTAINERS:
            value = copy.deepcopy(value)
        out[name] = value
    return out


def _replace(obj: Any, updates: dict[str, Any]) -> Any:
    """``dataclasses.replace`` without re-running ``__init__`` on fields that did not change."""
    cls: type = type(obj)
    if not _plain(cls):
        return dataclasses.replace(obj, **updates)
    new: Any = object.__new__(cls)
    state = new.__dict__
    state.update(obj.__dict__)
    state.update(updates)
    return new


@functools.lru_cache(maxsize=4096)
def _parse_unit(suffix: str, text: str) -> Any:
    """A unit string parsed by the field's suffix (cached: a sweep repeats its few values thousands of times)."""
    if suffix == "_Bps":
        return parse_bandwidth(text)
    if suffix == "_s":
        return parse_duration(text)
    if suffix == "_bytes":
        return parse_size(text)
    return text


def _coerce(name: str, tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: unknown {name} {value!r} (choose from {', '.join(map(str, args))})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str):
            try:
                suffix = "_Bps" if name.endswith("_Bps") else "_s" if name.endswith("_s") else (
                    "_bytes" if name.endswith("_bytes") else "")
                value = _parse_unit(suffix, value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {name}: {e}") from None
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{where}: {name} must be a number, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {name} must be a number, not {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {name} must be finite, not {value!r}")
        if tp is int:
            if float(value) != int(value):
                raise ConfigError(f"{where}: {name} must be a whole number, not {value!r}")
            return int(value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string, not {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, typing.cast(type, tp)):  # is_dataclass narrowed tp to "instance or class"
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        return _build(typing.cast(type, tp), value, where)
    raise AssertionError(f"unhandled field type {tp!r}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = _field_types(cls)
    names = hints.keys()
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} in {cls.__name__} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(k, hints[k], v, where) for k, v in data.items()}
    obj = cls(**kwargs)
    validate(obj, where)
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys: ``{"link": {"rtt_s": 0}}`` -> ``{"link.rtt_s": 0}``.

    The inverse of the dotted paths :func:`with_fields` takes.
    """
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def with_fields(obj: Any, changes: dict[str, Any], where: str = "override") -> Any:
    """Return ``obj`` with dotted-path fields replaced, values coerced like from_dict."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    hints = _field_types(typing.cast(type, type(obj)))
    names = hints.keys()
    updates: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown field {key!r} in {type(obj).__name__}")
        updates[key] = _coerce(key, hints[key], value, where)
    for key, sub in nested.items():
        if key not in names or not dataclasses.is_dataclass(hints[key]):
            raise ConfigError(f"{where}: unknown table {key!r} in {type(obj).__name__}")
        updates[key] = with_fields(getattr(obj, key), sub, where)
    new = _replace(obj, updates)
    validate(new, where)
    return new


def validate(obj: Any, where: str = "scenario") -> None:
    """Range checks that the type system cannot express."""
    if isinstance(obj, Link):
        if obj.bandwidth_Bps <= 0:
            raise ConfigError(f"{where}: bandwidth must be positive, not {obj.bandwidth_Bps!r}")
        if obj.rtt_s < 0:
            raise ConfigError(f"{where}: rtt must not be negative")
        if obj.migration_cap_Bps is not None and obj.migration_cap_Bps <= 0:
            raise ConfigError(f"{where}: migration bandwidth cap must be positive")
        if obj.header_bytes_per_page < 0:
            raise ConfigError(f"{where}: header_bytes_per_page must not be negative")
    elif isinstance(obj, Workload):
        if obj.memory_bytes <= 0:
            raise ConfigError(f"{where}: memory must be positive")
        if obj.page_size_bytes <= 0 or obj.page_size_bytes & (obj.page_size_bytes - 1):
            raise ConfigError(f"{where}: page size must be a power of two")
        if obj.zero_page_fraction is not None and not 0 <= obj.zero_page_fraction <= 1:
            raise ConfigError(f"{where}: zero_page_fraction must lie in [0, 1]")
        if obj.read_write_ratio < 0:
            raise ConfigError(f"{where}: read_write_ratio must not be negative")
        if obj.intensity < 0:
            raise ConfigError(f"{where}: intensity must not be negative")
        if not 0 < obj.cpu_utilization <= 1:
            raise ConfigError(f"{where}: cpu_utilization must lie in (0, 1]")
        if not obj.write_dispersion >= 1:
            raise ConfigError(f"{where}: write_dispersion must be at least 1")
        if obj.kind in ("trace", "model") and not obj.path:
            raise ConfigError(f"{where}: a {obj.kind} workload needs a path")
    elif isinstance(obj, Host):
        if (obj.switchover_s < 0 or (obj.postcopy_switch_s or 0.0) < 0 or obj.setup_s < 0
                or obj.page_send_cost_s < 0):
            raise ConfigError(f"{where}: host times must not be negative")
        if not 0 < obj.throughput_efficiency <= 1.5:
            raise ConfigError(f"{where}: throughput_efficiency must lie in (0, 1.5]")
        if obj.dirty_rate_factor < 0:
            raise ConfigError(f"{where}: dirty_rate_factor must not be negative")
        if obj.final_copy_rate_Bps is not None and obj.final_copy_rate_Bps <= 0:
            raise ConfigError(f"{where}: final_copy_rate_Bps must be positive")
        if (obj.resume_s < 0 or obj.bhyve_dirty_search_s_per_page < 0 or obj.zero_page_cost_s < 0
                or obj.sync_s_per_GiB < 0 or obj.setup_s_per_GiB < 0):
            raise ConfigError(f"{where}: host times must not be negative")
        if obj.final_copy_burst_bytes < 0:
            raise ConfigError(f"{where}: final_copy_burst_bytes must not be negative")
    elif isinstance(obj, Strategy):
        if obj.downtime_limit_s <= 0:
            raise ConfigError(f"{where}: downtime limit must be positive")
        if obj.max_rounds is not None and obj.max_rounds < 1:
            raise ConfigError(f"{where}: max_rounds must be at least 1")
        if obj.timeout_s <= 0:
            raise ConfigError(f"{where}: timeout must be positive")
        if obj.postcopy_after_rounds < 0 or obj.bhyve_rounds < 1:
            raise ConfigError(f"{where}: round counts must be positive")
        if not 0 <= obj.ac_initial_pct <= 100 or not 0 <= obj.ac_max_pct <= 100:
            raise ConfigError(f"{where}: throttle percentages must lie in [0, 100]")
        if obj.xbzrle_cache_bytes < 0:
            raise ConfigError(f"{where}: xbzrle cache must not be negative")
        if not 0 < obj.xen_min_rate_Bps <= obj.xen_max_rate_Bps or obj.xen_rate_increment_Bps < 0:
            raise ConfigError(f"{where}: Xen rates need 0 < xen_min_rate_Bps <= xen_max_rate_Bps "
                              "and a non-negative xen_rate_increment_Bps")
        if obj.xen_batch_pages < 1 or obj.xen_max_iters < 1:
            raise ConfigError(f"{where}: xen_batch_pages and xen_max_iters must be at least 1")
