"""The strategy table that ``simulate`` and ``compare`` print: one row per simulated migration."""

from __future__ import annotations

import sys
from typing import Any, TextIO

HEADER = ("strategy", "converged", "rounds", "total time", "downtime", "guest pause", "sent", "pc faults", "pc stall", "why")


def summary_row(name: str, s: dict[str, Any]) -> list[str]:
    """One table row from ``Result.summary()``."""
    from sim.units import format_bytes, format_duration

    return [name, "yes" if s["converged"] else "NO", str(s["rounds"]), format_duration(s["total_time_s"]),
            format_duration(s["downtime_s"]), format_duration(s.get("guest_pause_s", float("nan"))),
            format_bytes(s["bytes_sent"]),
            f"{s['postcopy_faults']:.0f}", format_duration(s["postcopy_stall_s"]), s["reason"]]


def print_table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Rows under :data:`HEADER`, columns padded to their widest cell."""
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in [list(HEADER), *rows]) for i in range(len(HEADER))]
    for r in [list(HEADER), ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


__all__ = ["HEADER", "summary_row", "print_table"]
