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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import inputs
from .errors import ConfigError
from .units import parse_bandwidth, parse_duration, parse_size

SCHEMA_VERSION = 1

StrategyKind = Literal["precopy", "postcopy", "hybrid", "stopcopy"]
StopRule = Literal["qemu", "bhyve", "xen", "simgrid", "xen-ratio"]
WorkloadKind = Literal["trace", "model", "synthetic"]
ScalingLaw = Literal["absolute", "proportional"]
ModelMode = Literal["expected", "sampled"]
Prepaging = Literal["qemu", "linear", "follow", "bubbling"]
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
    ``device_load_s`` is the destination's own part of the pause: loading the
    device state and starting the vCPUs once the last byte has landed. It is in
    ``guest_pause_s`` (source STOP to destination RESUME), not in QEMU's
    ``downtime``, which is taken on the source.

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
    device_load_s: float = 0.0
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

    ``prepaging`` is the post-copy background push order: ``qemu`` (the
    default) is what QEMU does: without postcopy-preempt ``get_queued_page``
    moves the background scan to each requested page, with it the scan is not
    moved; ``linear`` pushes in address order regardless of faults; ``follow``
    always carries the scan on from the page the guest last requested;
    ``bubbling`` pushes the ``bubble_pages`` pages after each fault first
    (Hines & Gopalan). ``postcopy_preempt`` is QEMU's ``postcopy-preempt``
    capability (QEMU 8+, off by default there too): requested pages go on a
    channel of their own instead of queueing behind the background stream
    (see :mod:`sim.postcopy`).
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
    timeout_s: float | None = None  # no cancel unless asked (QEMU has no timeout of its own)
    bhyve_rounds: int = 4
    xen_max_iters: int = 29
    xen_max_factor: float = 3.0
    xen_min_dirty_pages: int = 50
    simgrid_threshold_s: float = 0.03
    postcopy_after_rounds: int = 1
    stall_detector: bool = False
    stall_ratio: float = 0.95
    prepaging: Prepaging = "qemu"
    postcopy_preempt: bool = False
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
            raise ConfigError(f"version {version!r} is not supported (expected {SCHEMA_VERSION})", where=source,
                              key="schema_version", value=version)
        return _build(cls, data, source)

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Read a scenario TOML file (tables ``[workload]``, ``[link]``, ``[host]``, ``[strategy]``)."""
        return cls.from_dict(load_toml(path), source=str(path))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file (bounded, regular files only, UTF-8), every failure one error naming the file."""
    return inputs.load_toml(path)


def load_json(path: str | Path) -> Any:
    """Read a JSON file (bounded, regular files only, UTF-8), every failure one error naming the file."""
    return inputs.load_json(path)


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


def _coerce(name: str, tp: Any, value: Any, where: str | None) -> Any:
    """``value`` as field ``name`` of type ``tp``; a ConfigError carries ``where`` and ``key=name``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"unknown {name} {value!r} (choose from {', '.join(map(str, args))})",
                              where=where, key=name, value=value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, not {value!r}", where=where, key=name, value=value)
        return value
    if tp in (int, float):
        if isinstance(value, str):
            try:
                suffix = "_Bps" if name.endswith("_Bps") else "_s" if name.endswith("_s") else (
                    "_bytes" if name.endswith("_bytes") else "")
                value = _parse_unit(suffix, value)
            except ConfigError as e:
                raise ConfigError(e.problem, where=where, key=name, value=value) from None
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"must be a number, not {value!r}", where=where, key=name,
                                      value=value) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"must be a number, not {value!r}", where=where, key=name, value=value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"must be finite, not {value!r}", where=where, key=name, value=value)
        if tp is int:
            if float(value) != int(value):
                raise ConfigError(f"must be a whole number, not {value!r}", where=where, key=name, value=value)
            return int(value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, not {value!r}", where=where, key=name, value=value)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, typing.cast(type, tp)):  # is_dataclass narrowed tp to "instance or class"
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table", where=where, key=name, value=value)
        try:
            return _build(typing.cast(type, tp), value, where)
        except ConfigError as e:
            raise e.at(prefix=name) from None
    raise AssertionError(f"unhandled field type {tp!r}")


def _build(cls: type, data: dict[str, Any], where: str | None) -> Any:
    hints = _field_types(cls)
    names = hints.keys()
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown field in {cls.__name__} (known: {', '.join(sorted(names))})",
                          where=where, key=str(unknown[0]))
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


def with_fields(obj: Any, changes: dict[str, Any], where: str | None = None) -> Any:
    """Return ``obj`` with dotted-path fields replaced, values coerced like from_dict.

    A bad value raises a ConfigError whose ``key`` is the dotted path (``strategy.downtime_limit_s``)
    and whose ``where`` is ``where`` (None: the caller knows where the changes came from and says so
    with :meth:`sim.errors.MiglabError.at`).
    """
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
            raise ConfigError(f"unknown field in {type(obj).__name__}", where=where, key=key, value=value)
        updates[key] = _coerce(key, hints[key], value, where)
    for key, sub in nested.items():
        if key not in names or not dataclasses.is_dataclass(hints[key]):
            raise ConfigError(f"unknown table in {type(obj).__name__}", where=where, key=key)
        try:
            updates[key] = with_fields(getattr(obj, key), sub, where)
        except ConfigError as e:
            raise e.at(prefix=key) from None
    new = _replace(obj, updates)
    validate(new, where)
    return new


def _positive(v: float | None) -> bool:
    return v is None or v > 0


def _not_negative(v: float | None) -> bool:
    return v is None or v >= 0


def _power_of_two(v: int) -> bool:
    return 512 <= v <= 2**30 and not v & (v - 1)


# Range checks per dataclass: (field, test, what the value must be). One row per field, so a refusal
# names the field (the key) and the rule, and the CLI can name the flag that set it.
_RULES: dict[type, tuple[tuple[str, Any, str], ...]] = {}


def _rules() -> dict[type, tuple[tuple[str, Any, str], ...]]:
    if _RULES:
        return _RULES
    positive, not_negative = (_positive, "must be positive"), (_not_negative, "must not be negative")
    unit = (lambda v: v is None or 0 <= v <= 1, "must lie in [0, 1]")
    pct = (lambda v: 0 <= v <= 100, "must lie in [0, 100]")
    at_least_1 = (lambda v: v is None or v >= 1, "must be at least 1")
    _RULES.update({
        Link: (("bandwidth_Bps", *positive), ("rtt_s", *not_negative), ("migration_cap_Bps", *positive),
               ("header_bytes_per_page", *not_negative)),
        Workload: (("memory_bytes", *positive),
                   ("page_size_bytes", _power_of_two, "must be a power of two from 512 to 1GiB"),
                   ("zero_page_fraction", *unit), ("read_write_ratio", *not_negative),
                   ("xbzrle_delta_fraction", *unit), ("trace_seconds", *positive), ("interval_s", *positive),
                   ("intensity", *not_negative),
                   ("cpu_utilization", lambda v: 0 < v <= 1, "must lie in (0, 1]"),
                   ("write_dispersion", lambda v: v >= 1, "must be at least 1")),
        Host: tuple((f, *not_negative) for f in (
            "switchover_s", "postcopy_switch_s", "device_state_bytes", "page_send_cost_s", "setup_s",
            "cold_restart_s", "postcopy_queue_bytes", "bhyve_chunk_pause_s", "bhyve_page_send_s", "resume_s",
            "bhyve_dirty_search_s_per_page", "dirty_rate_factor", "final_copy_burst_bytes", "device_load_s",
            "zero_page_cost_s", "sync_s_per_GiB", "setup_s_per_GiB"))
        + (("throughput_efficiency", lambda v: 0 < v <= 1.5, "must lie in (0, 1.5]"),
           ("final_copy_rate_Bps", *positive), ("bhyve_chunk_pages", *at_least_1)),
        Strategy: (("downtime_limit_s", *positive), ("max_rounds", *at_least_1), ("timeout_s", *positive),
                   ("postcopy_after_rounds", *not_negative), ("bhyve_rounds", *at_least_1),
                   ("ac_initial_pct", *pct), ("ac_max_pct", *pct), ("ac_increment_pct", *pct),
                   ("ac_trigger_pct", *pct), ("xbzrle_cache_bytes", *not_negative),
                   ("multifd_channels", *at_least_1), ("xen_rate_increment_Bps", *not_negative),
                   ("xen_min_rate_Bps", *positive), ("xen_batch_pages", *at_least_1),
                   ("xen_max_iters", *at_least_1), ("xen_max_factor", *positive),
                   ("xen_min_dirty_pages", *not_negative), ("simgrid_threshold_s", *not_negative),
                   ("qemu_iteration_s", *positive), ("bubble_pages", *not_negative)),
    })
    return _RULES


def validate(obj: Any, where: str | None = "scenario") -> None:
    """Range checks that the type system cannot express; a refusal names the field as ``key``."""
    for name, ok, rule in _rules().get(type(obj), ()):
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{rule}, not {value!r}", where=where, key=name, value=value)
    if isinstance(obj, Workload):
        if obj.kind in ("trace", "model") and not obj.path:
            raise ConfigError(f"a {obj.kind} workload needs a path", where=where, key="path")
    elif isinstance(obj, Strategy):
        if obj.xen_min_rate_Bps > obj.xen_max_rate_Bps:
            raise ConfigError(f"must be at least xen_min_rate_Bps ({obj.xen_min_rate_Bps!r}), not "
                              f"{obj.xen_max_rate_Bps!r}", where=where, key="xen_max_rate_Bps",
                              value=obj.xen_max_rate_Bps)
