"""Which host constants a result used, where they came from, and whether the run is inside their fit.

The simulator's :class:`~sim.scenario.Host` defaults are *uncalibrated*: no
switchover cost, a perfect link, so post-copy and hybrid downtime read as
about zero. The constants calibrated on this project's 126 real QEMU
migrations ship as :data:`BUNDLED_HOST` (``results/validation/full/host.json``),
and the CLI and notebooks use them unless asked for the defaults.

:class:`HostSource` is the one description of that choice: :meth:`HostSource.label`
is the line every table, plot title and result file states, :meth:`HostSource.apply`
puts the constants into a scenario, and :func:`range_warnings` says in one line
each when a run is outside the sizes, link rates and RTTs the constants were
fitted on (``fit.range`` of the host file, see :func:`fit_range_of_runs`), or
uses a calibrated model beyond the guest size or window length it was fitted on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .result import Result
    from .scenario import Scenario

_ROOT = Path(__file__).resolve().parent.parent
#: The host constants fit on results/validation/full (126 QEMU 10 migrations, 3-fold cross-validated).
BUNDLED_HOST = _ROOT / "results" / "validation" / "full" / "host.json"
#: What a label says for the :class:`~sim.scenario.Host` defaults.
UNCALIBRATED = "uncalibrated defaults"
#: ``--host`` values that ask for the uncalibrated defaults.
UNCALIBRATED_WORDS = ("none", "defaults", "uncalibrated")
# A run this much outside a fitted range is reported (link rates and sizes are set, not measured).
_RANGE_SLACK = 0.05


@dataclass(frozen=True)
class HostSource:
    """Host constants and their origin: a host file (``path``) or the uncalibrated defaults (``path`` None).

    ``overrides`` are the dotted scenario overrides the file holds (``host.switchover_s``,
    ``link.header_bytes_per_page``, ...); ``fit`` is the file's ``fit`` section (method,
    campaign, and ``range``: what the constants were fitted on); ``origin`` says how the
    choice was made (``"--host"``, ``"default"``, ``"scenario file"``).
    """

    path: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    fit: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "default"

    @property
    def calibrated(self) -> bool:
        return bool(self.overrides)

    def label(self) -> str:
        """One line: ``host constants: results/validation/full/host.json (fit on 126 QEMU runs: ...)``."""
        if self.path is None:
            return f"host constants: {UNCALIBRATED} (no switchover cost; pass --host FILE)"
        where = _display(self.path)
        if not self.calibrated:
            return f"host constants: {where} (sets none: {UNCALIBRATED})"
        rng = self.fit.get("range") if isinstance(self.fit, Mapping) else None
        return f"host constants: {where} ({describe_range(rng)})" if rng else f"host constants: {where}"

    def short_label(self) -> str:
        """For a plot title: ``host: calibrated (results/validation/full/host.json)`` or ``host: uncalibrated``."""
        if not self.calibrated:
            return "host: uncalibrated defaults"
        return f"host: calibrated ({_display(self.path or '')})"

    def apply(self, scenario: Scenario) -> Scenario:
        """``scenario`` with these constants (unchanged for the defaults)."""
        return scenario.replace(**dict(self.overrides)) if self.overrides else scenario

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a result file's provenance."""
        out: dict[str, Any] = {"source": _display(self.path) if self.path else UNCALIBRATED, "origin": self.origin,
                               "label": self.label()}
        if self.path:
            out["constants"] = dict(self.overrides)
            if self.fit.get("range"):
                out["fit_range"] = dict(self.fit["range"])
        return out


def uncalibrated(origin: str = "asked") -> HostSource:
    """The :class:`~sim.scenario.Host` defaults."""
    return HostSource(None, {}, {}, origin)


def load_host(path: str | os.PathLike[str], origin: str = "--host") -> HostSource:
    """A host file from ``miglab calibrate-host`` (ConfigError naming the file when it is not one)."""
    from .hostconst import load_host_json
    from .scenario import load_json

    overrides = load_host_json(str(path))
    doc = load_json(str(path))
    fit: dict[str, Any] = doc["fit"] if isinstance(doc, dict) and isinstance(doc.get("fit"), dict) else {}
    return HostSource(str(path), overrides, fit, origin)


def bundled_host() -> HostSource:
    """The bundled calibrated constants, or the defaults (with that said) when this is not a checkout."""
    if BUNDLED_HOST.is_file():
        return load_host(BUNDLED_HOST, origin="default")
    return HostSource(None, {}, {}, origin=f"default ({_display(BUNDLED_HOST)} is not installed)")


def choose(flag: str | None, *, uncalibrated_flag: bool = False) -> HostSource:
    """The host constants a verb uses: ``--host FILE``, ``--host none`` / ``--uncalibrated``, else the bundled ones."""
    if uncalibrated_flag:
        if flag and flag.lower() not in UNCALIBRATED_WORDS:
            raise ConfigError(f"conflicts with --host {flag}", flag="--uncalibrated")
        return uncalibrated("--uncalibrated")
    if flag is None:
        return bundled_host()
    if flag.lower() in UNCALIBRATED_WORDS:
        return uncalibrated(f"--host {flag}")
    return load_host(flag)


def of_scenario(scenario: Scenario) -> HostSource:
    """Best description of a scenario's host from the scenario alone (for notebooks and plots).

    The bundled constants are recognised by value; other non-default constants are named as custom.
    """
    from .scenario import Host

    if scenario.host == Host(hypervisor=scenario.host.hypervisor):
        return uncalibrated("scenario")
    bundled = bundled_host()
    if bundled.calibrated and bundled.apply(scenario) == scenario:
        return HostSource(bundled.path, bundled.overrides, bundled.fit, "scenario")
    default = Host(hypervisor=scenario.host.hypervisor)
    changed = {f"host.{k}": getattr(scenario.host, k) for k in scenario.host.__dataclass_fields__
               if getattr(scenario.host, k) != getattr(default, k)}
    return HostSource("custom constants of the scenario", changed, {}, "scenario")


# --------------------------------------------------------------------------- fit ranges
def fit_range_of_runs(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Sizes, link rates and RTTs of the run records (files or directories) host constants were fitted on.

    Stored as ``fit.range`` in a host file; :func:`range_warnings` compares a scenario against it.
    """
    mem: list[float] = []
    bw: list[float] = []
    rtt: list[float] = []
    hyp: set[str] = set()
    qemu: set[str] = set()
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    used = 0
    for f in files:
        try:
            rec = json.loads(f.read_text())
            sc = rec["scenario"]
            values = (float(sc["workload"]["memory_bytes"]), float(sc["link"]["bandwidth_Bps"]),
                      float(sc["link"]["rtt_s"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a run record (a directory may hold summaries beside them)
        used += 1
        for acc, v in zip((mem, bw, rtt), values, strict=True):
            acc.append(v)
        hyp.add(str(rec.get("hypervisor", "qemu")))
        version = (rec.get("host") or {}).get("hypervisor_version") if isinstance(rec.get("host"), dict) else None
        if version:
            qemu.add(str(version).split("(")[0].strip())  # "QEMU emulator version 10.0.2"
    if not used:
        raise ConfigError(f"fit range: no run records among {len(files)} files")
    out: dict[str, Any] = {"runs": used, "memory_bytes": [min(mem), max(mem)],
                           "bandwidth_Bps": [min(bw), max(bw)], "rtt_s": [min(rtt), max(rtt)],
                           "hypervisor": sorted(hyp)}
    if qemu:
        out["hypervisor_version"] = sorted(qemu)
    return out


def describe_range(rng: Mapping[str, Any]) -> str:
    """``fit on 126 qemu runs: 512 MiB guests, 250-500 Mbit/s, 2-20 ms RTT``."""
    parts = []
    if "memory_bytes" in rng:
        parts.append(_span(rng["memory_bytes"], _size) + " guests")
    if "bandwidth_Bps" in rng:
        parts.append(_span(rng["bandwidth_Bps"], _mbit))
    if "rtt_s" in rng:
        parts.append(_span(rng["rtt_s"], lambda s: f"{s * 1e3:g} ms") + " RTT")
    hyp = "/".join(rng.get("hypervisor") or ["qemu"])
    head = f"fit on {rng['runs']} {hyp} runs" if rng.get("runs") else "fit"
    return f"{head}: {', '.join(parts)}" if parts else head


def range_warnings(scenario: Scenario, host: HostSource, result: Result | None = None) -> list[str]:
    """One line per way ``scenario`` leaves the range its host constants or its model were fitted on."""
    out: list[str] = []
    rng = host.fit.get("range") if host.calibrated and isinstance(host.fit, Mapping) else None
    if rng:
        checks = (("memory_bytes", scenario.workload.memory_bytes, "guest", _size),
                  ("bandwidth_Bps", scenario.link.bandwidth_Bps, "link", _mbit),
                  ("rtt_s", scenario.link.rtt_s, "RTT", lambda s: f"{s * 1e3:g} ms"))
        outside = []
        for key, value, what, fmt in checks:
            lo, hi = (rng.get(key) or [None, None])[:2]
            if lo is not None and hi is not None and not lo * (1 - _RANGE_SLACK) <= value <= hi * (1 + _RANGE_SLACK):
                outside.append(f"{what} {fmt(value)}")
        if scenario.host.hypervisor not in (rng.get("hypervisor") or [scenario.host.hypervisor]):
            outside.append(f"hypervisor {scenario.host.hypervisor}")
        if outside:
            out.append(f"warning: {', '.join(outside)}: outside the fit of the host constants "
                       f"({_display(host.path or '')}, {describe_range(rng)}); extrapolated")
    if scenario.workload.kind == "model" and scenario.workload.path:
        out.extend(_model_warnings(scenario, result))
    return out


def _model_warnings(scenario: Scenario, result: Result | None) -> list[str]:
    from .model import DirtyModel
    from .units import format_duration

    model = DirtyModel.load(scenario.workload.path)
    out = []
    fitted_bytes = (model.source.get("trace_meta") or {}).get("guest_memory_bytes") or model.memory_bytes
    if scenario.workload.memory_bytes != fitted_bytes:
        out.append(f"warning: model {scenario.workload.path} was fitted on a {_size(fitted_bytes)} guest and "
                   f"is rescaled to {_size(scenario.workload.memory_bytes)} "
                   f"({scenario.workload.scaling} scaling); extrapolated")
    windows = [r.get("window_s") for r in model.fit.get("residuals") or () if isinstance(r, dict)]
    longest = max((w for w in windows if isinstance(w, int | float)), default=None)
    if result is not None and longest and result.precopy_time_s > longest * (1 + _RANGE_SLACK):
        out.append(f"warning: model {scenario.workload.path} was fitted on windows up to "
                   f"{format_duration(longest)}; this migration's live phase lasts "
                   f"{format_duration(result.precopy_time_s)}; extrapolated")
    return out


def _span(pair: Any, fmt: Any) -> str:
    """``250-500 Mbit/s`` (one unit when both ends share it), or one value when they are equal."""
    lo, hi = float(pair[0]), float(pair[1])
    if math.isclose(lo, hi):
        return fmt(lo)
    a, b = fmt(lo).split(" ", 1), fmt(hi).split(" ", 1)
    return f"{a[0]}-{fmt(hi)}" if len(a) == len(b) == 2 and a[1] == b[1] else f"{fmt(lo)}-{fmt(hi)}"


def _size(n: float) -> str:
    """``512 MiB``, ``64 GiB``, ``1.5 TiB``: IEC, no trailing zeros."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.4g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _mbit(bps: float) -> str:
    bits = bps * 8
    return f"{bits / 1e9:g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:g} Mbit/s"


def _display(path: str | os.PathLike[str] | None) -> str:
    """A path relative to the checkout when it lies inside it (shorter, and the same on every machine)."""
    if path is None:
        return ""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(_ROOT))
    except (ValueError, OSError):
        return str(path)


__all__ = ["BUNDLED_HOST", "UNCALIBRATED", "UNCALIBRATED_WORDS", "HostSource", "uncalibrated", "load_host",
           "bundled_host", "choose", "of_scenario", "fit_range_of_runs", "describe_range", "range_warnings"]
