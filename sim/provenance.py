"""Provenance of a result file, in the manner of pyperf: where, when, how and from what it was made.

One call, :func:`provenance`, returns a plain JSON-able dict::

    {"provenance_version": 1, "date": "2026-12-02T07:03:35+00:00", "host": "runner-7",
     "platform": "Linux-6.1.0-x86_64-with-glibc2.36", "cpu_model": "AMD EPYC 7763 64-Core Processor",
     "cpu_count": 4, "load_average": [0.52, 0.61, 0.7], "command": ["miglab", "sweep", "s.toml"],
     "git_commit": "a456df9...", "git_dirty": false,
     "versions": {"miglab": "0.1.0", "python": "3.12.3", "numpy": "2.2.1", "simpy": "4.1.1"},
     "seed": 7, "inputs": {"traces/x.npz": "<sha256>"}}

``git_commit`` is the commit of the checkout this code runs from, or
``"not a checkout"`` (an installed wheel, no git, a tarball): it never fails.
``versions.qemu``, ``seed`` and ``inputs`` appear only when the caller passes
them. The parts that cannot change within a process (host, CPU, git, versions)
are computed once; a call afterwards costs a clock read and ``getloadavg``.

Where it goes: JSON results carry it under a ``provenance`` key; a CSV gets a
sidecar ``<file>.meta.json`` (:func:`write_sidecar`); a Parquet table carries it
in its schema metadata under :data:`PARQUET_KEY` (:func:`write_parquet`,
:func:`read_parquet_provenance`).

This module imports only the standard library (pyarrow only inside the Parquet
helpers), so it costs nothing to a caller that does not use pandas.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .atomic import atomic_open
from .errors import ConfigError

log = logging.getLogger(__name__)

PROVENANCE_VERSION = 1
NOT_A_CHECKOUT = "not a checkout"
#: Schema metadata key of a Parquet table's provenance (JSON text).
PARQUET_KEY = b"miglab.provenance"
SIDECAR_SUFFIX = ".meta.json"
_GIT_TIMEOUT_S = 5.0
_PACKAGE_DIR = Path(__file__).resolve().parent


def provenance(*, seed: int | None = None, inputs: Mapping[str, str] | None = None,
               qemu_version: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where, when and from what a result is being made (a fresh dict; see the module docstring).

    ``inputs`` maps an input's name (usually its path) to its sha256;
    ``qemu_version`` is the version of the hypervisor a real run used;
    ``extra`` adds caller-specific keys (they must not shadow the standard ones).
    """
    static = _static()
    out: dict[str, Any] = {
        "provenance_version": PROVENANCE_VERSION,
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "host": static["host"],
        "platform": static["platform"],
        "cpu_model": static["cpu_model"],
        "cpu_count": static["cpu_count"],
        "load_average": _load_average(),
        "command": list(sys.argv),
        "git_commit": static["git_commit"],
        "git_dirty": static["git_dirty"],
        "versions": dict(static["versions"]),
    }
    if qemu_version is not None:
        out["versions"]["qemu"] = str(qemu_version)
    if seed is not None:
        out["seed"] = int(seed)
    if inputs:
        out["inputs"] = {str(k): str(v) for k, v in inputs.items()}
    for key, value in (extra or {}).items():
        if key in out:
            raise ValueError(f"provenance: extra key {key!r} would replace a standard key")
        out[key] = value
    return out


def describe(meta: Mapping[str, Any] | None) -> str:
    """One line for a report header: ``commit a456df92e702 on vm (AMD EPYC, 2 cores), miglab 0.1.0, 2026-12-02``."""
    if not meta:
        return "no provenance recorded"
    commit = str(meta.get("git_commit") or NOT_A_CHECKOUT)
    commit = commit if commit == NOT_A_CHECKOUT else f"commit {commit[:12]}"
    if meta.get("git_dirty"):
        commit += " (uncommitted changes)"
    machine = [str(meta[k]) for k in ("cpu_model",) if meta.get(k)]
    if meta.get("cpu_count"):
        machine.append(f"{meta['cpu_count']} cores")
    host = str(meta.get("host") or "unknown host") + (f" ({', '.join(machine)})" if machine else "")
    version = (meta.get("versions") or {}).get("miglab")
    date = str(meta.get("date", ""))[:10]
    parts = [f"{commit} on {host}"]
    if version:
        parts.append(f"miglab {version}")
    if date:
        parts.append(date)
    return ", ".join(parts)


# --------------------------------------------------------------------------- sidecars and Parquet
def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<file>.meta.json`` beside ``path``."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> Path:
    """Write ``meta`` atomically as ``<path>.meta.json`` (for files that cannot hold metadata, e.g. CSV)."""
    side = sidecar_path(path)
    with atomic_open(side) as f:
        json.dump(dict(meta), f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    return side


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance beside ``path`` (``{}`` when there is no sidecar; ConfigError when it is unreadable)."""
    side = sidecar_path(path)
    try:
        doc = json.loads(side.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"not a readable provenance sidecar ({e})", where=side) from None
    if not isinstance(doc, dict):
        raise ConfigError("not a provenance sidecar (not a JSON object)", where=side)
    return doc


def write_parquet(df: Any, path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Write DataFrame ``df`` to Parquet like ``df.to_parquet(path, index=False)``, with ``meta`` in the schema.

    Not atomic by itself: call it on the temporary path of :func:`sim.atomic.atomic_path`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[PARQUET_KEY] = json.dumps(dict(meta), sort_keys=True, default=str).encode()
    pq.write_table(table.replace_schema_metadata(schema_meta), path)


def read_parquet_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance in a Parquet file's schema metadata (``{}`` when it has none)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(PARQUET_KEY)
    except (OSError, ValueError) as e:
        raise ConfigError(f"not a readable Parquet file ({e})", where=path) from None
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"Parquet metadata {PARQUET_KEY.decode()} is not JSON ({e})", where=path) from None
    return doc if isinstance(doc, dict) else {}


# --------------------------------------------------------------------------- the parts
@functools.cache
def _static() -> dict[str, Any]:
    commit, dirty = _git_state(_PACKAGE_DIR)
    return {"host": socket.gethostname() or platform.node() or "unknown", "platform": platform.platform(),
            "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "git_commit": commit, "git_dirty": dirty,
            "versions": _versions()}


def _versions() -> dict[str, str]:
    from . import __version__

    out = {"miglab": __version__, "python": platform.python_version()}
    # The distributions' metadata, not an import: SimPy need not be loaded to say which one is installed.
    for name, dist in (("numpy", "numpy"), ("simpy", "simpy")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows; or a sandbox without /proc/loadavg
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                # x86 says "model name"; arm64 and others have "Hardware", "cpu model" or "Model"
                if sep and key.strip().lower() in ("model name", "cpu model", "hardware", "model") \
                        and not value.strip().isdigit():
                    return value.strip()
    except OSError:
        pass
    if sys.platform.startswith(("freebsd", "darwin")):
        key = "hw.model" if sys.platform.startswith("freebsd") else "machdep.cpu.brand_string"
        text = _run(["sysctl", "-n", key], Path("/"))
        if text:
            return text
    return platform.processor() or platform.machine() or "unknown"


def _git_state(where: Path) -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout whose ``sim/`` is ``where``; (NOT_A_CHECKOUT, None) otherwise."""
    top = _run(["git", "rev-parse", "--show-toplevel"], where)
    # An installed miglab inside some other repository (a venv in a project checkout) is not our checkout.
    if not top or Path(top).resolve() / where.name != where:
        return NOT_A_CHECKOUT, None
    commit = _run(["git", "rev-parse", "HEAD"], where)
    if not commit:
        return NOT_A_CHECKOUT, None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], where)
    return commit, None if status is None else bool(status)


def _run(cmd: list[str], cwd: Path) -> str | None:
    """stdout of ``cmd`` stripped, or None when it cannot run or fails (never raises)."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.debug("%s: %s", cmd[0], e)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


__all__ = ["provenance", "describe", "sidecar_path", "write_sidecar", "read_sidecar", "write_parquet",
           "read_parquet_provenance", "PARQUET_KEY", "NOT_A_CHECKOUT", "PROVENANCE_VERSION"]
