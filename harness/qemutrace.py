"""Read the source QEMU's migration trace log (``miglab migrate --qemu-trace LOG``).

QEMU's own trace events show the decisions that ``query-migrate`` polls can
only hint at: every bandwidth window with the threshold it sets
(``migrate_transferred``: bytes, window length, ``max_size`` = bandwidth x
downtime-limit), and every exact pending check with the bitmap sync before it
(``migration_bitmap_sync_end``, ``migrate_pending_exact``). :func:`syncs`
turns a log into one row per dirty-bitmap sync, which lines up with the
simulator's ``Result.rounds_table`` (``pending_pages_after``,
``threshold_bytes``).

Log lines (QEMU's ``log`` trace backend) look like
``5350@1795677019.707416:migrate_pending_exact exact pending size 21774336 (pre = 21774336 post=0)``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sim.errors import ConfigError

log = logging.getLogger(__name__)

_LINE = re.compile(r"^\d+@(?P<t>\d+\.\d+):(?P<event>\w+)\s?(?P<args>.*)$")
_INT = re.compile(r"(\w[\w ]*?)\s+(\d+)")

#: Columns of :func:`syncs`.
SYNC_COLUMNS = ("sync", "t_s", "new_dirty_pages_period", "pending_bytes", "threshold_bytes", "window_bandwidth_Bps",
                "state")


def _fields(args: str) -> dict[str, int]:
    return {k.strip().split()[-1]: int(v) for k, v in _INT.findall(args)}


def events(path: str | Path) -> list[tuple[float, str, str]]:
    """``(host time s, event, argument text)`` for every trace line of ``path`` (other lines skipped)."""
    p = Path(path)
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read QEMU trace log ({e.strerror})", where=p) from None
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((float(m["t"]), m["event"], m["args"]))
    if not out:
        raise ConfigError(f"no QEMU trace events (was the source started with -trace ... -D {p.name}?)", where=p)
    return out


def syncs(path: str | Path) -> Any:
    """One row per dirty-bitmap sync (pandas DataFrame, :data:`SYNC_COLUMNS`).

    ``t_s`` counts from the migration's ``setup`` state. ``pending_bytes`` is
    the exact pending QEMU compared with the threshold right after the sync
    (NaN for the setup sync and the completion sync, which are not checks);
    ``threshold_bytes`` and ``window_bandwidth_Bps`` are those of the last
    bandwidth window before it; ``new_dirty_pages_period`` is QEMU's count of
    newly dirty pages, accumulated over its ~1 s dirty-rate period (it
    restarts at each period). ``state`` is the migration state at the sync
    (``active`` for checks, ``device`` for the completion sync).
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    t0: float | None = None
    state = ""
    threshold = bandwidth = float("nan")
    for t, ev, args in events(path):
        if ev == "migrate_set_state":
            state = args.split()[-1]
            if state == "setup" and t0 is None:
                t0 = t
        elif ev == "migrate_transferred":
            f = _fields(args)
            threshold = float(f.get("max_size", float("nan")))
            bandwidth = float(f.get("bandwidth", float("nan"))) * 1000.0  # QEMU's unit is bytes/ms
        elif ev == "migration_bitmap_sync_end":
            rows.append({"sync": len(rows) + 1, "t_s": t - (t0 if t0 is not None else t),
                         "new_dirty_pages_period": _fields(args).get("dirty_pages", 0),
                         "pending_bytes": float("nan"), "threshold_bytes": threshold,
                         "window_bandwidth_Bps": bandwidth, "state": state})
        elif ev == "migrate_pending_exact" and rows:
            rows[-1]["pending_bytes"] = float(_fields(args).get("size", float("nan")))
    return pd.DataFrame(rows, columns=list(SYNC_COLUMNS))


__all__ = ["SYNC_COLUMNS", "events", "syncs"]
