"""What a running miglab process holds, written down so that a dead run's leftovers can be found.

Every process that builds namespaces, starts QEMU or helper processes, or
creates guest RAM files and run directories lists them in one state file,
``<tmp>/miglab-state/<pid>.json``, as it creates them, and takes each entry
out again as it removes it; the file goes when the last entry does. A run
killed by SIGKILL (or the machine losing power mid-run) leaves its file
behind, and :func:`stale_states` finds it: the owner pid is gone, or is now
another process (its start time differs). ``miglab harness cleanup``
(:func:`harness.link.cleanup_stale`) then removes exactly what the file lists,
whether or not the names still carry the dead pid.

Entries: ``namespaces`` (names), ``paths`` (files and directories) and
``pids`` (``[pid, marker]``: the process is killed only while ``marker``
still appears in its command line, so a reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("namespaces", "paths", "pids")
_LOCK = threading.Lock()


def state_dir() -> Path:
    return Path(tempfile.gettempdir()) / "miglab-state"


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat), or "" if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _path(pid: int | None = None) -> Path:
    return state_dir() / f"{os.getpid() if pid is None else pid}.json"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(data: dict[str, Any]) -> None:
    path = _path()
    if not any(data.get(k) for k in KINDS):
        path.unlink(missing_ok=True)
        return
    d = state_dir()
    d.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current() -> dict[str, Any]:
    data = _load(_path())
    pid = os.getpid()
    if data is None or data.get("pid") != pid or data.get("start_time") != _start_time(pid):
        data = {"pid": pid, "start_time": _start_time(pid), **{k: [] for k in KINDS}}
    return data


def add(kind: str, item: Any) -> None:
    """Note that this process now holds ``item`` (a namespace name, a path, or ``[pid, marker]``)."""
    assert kind in KINDS
    with _LOCK:
        try:
            data = _current()
            entry = list(item) if isinstance(item, tuple) else item
            if entry not in data[kind]:
                data[kind].append(entry)
            _write(data)
        except OSError as e:  # bookkeeping must never stop a run
            log.warning("cannot write the run state file: %s", e)


def discard(kind: str, item: Any) -> None:
    """Note that ``item`` is gone."""
    assert kind in KINDS
    with _LOCK:
        try:
            data = _current()
            entry = list(item) if isinstance(item, tuple) else item
            data[kind] = [x for x in data[kind] if x != entry]
            _write(data)
        except OSError as e:
            log.warning("cannot write the run state file: %s", e)


def stale_states() -> list[tuple[Path, dict[str, Any]]]:
    """State files whose owner is dead (or whose pid now belongs to another process)."""
    out: list[tuple[Path, dict[str, Any]]] = []
    d = state_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        data = _load(p)
        if data is None:
            continue
        pid = int(data.get("pid", -1))
        if pid == os.getpid() and data.get("start_time") == _start_time(pid):
            continue
        if _start_time(pid) and _start_time(pid) == data.get("start_time"):
            continue  # its owner still runs
        out.append((p, data))
    return out


def process_matches(pid: int, marker: str) -> bool:
    """Does ``pid`` still run a command line that contains ``marker``?"""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmd


def holdings(pid: int | None = None) -> dict[str, list[Any]]:
    """What the state file of ``pid`` (default: this process) lists now (empty lists when it has none)."""
    data = _load(_path(pid)) or {}
    return {k: list(data.get(k) or []) for k in KINDS}


def remove_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
