"""What ``simulate`` and ``compare`` print and write: the strategy table, one row per simulated migration,
and the result document (the result, the host constants it used, and its provenance)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sim.hostinfo import HostSource
    from sim.result import Result

HEADER = ("strategy", "converged", "rounds", "total time", "downtime", "sent", "pc faults", "pc stall", "why")


def summary_row(name: str, s: dict[str, Any]) -> list[str]:
    """One table row from ``Result.summary()``; a migration that did not finish says what it had done by then."""
    from sim.units import format_bytes, format_duration

    why = s["reason"]
    if not s["converged"]:
        why += (f" (at the cancel: {format_bytes(s['bytes_sent'])} sent, {s['dirty_sync_count']} dirty syncs, "
                f"{s['rounds']} rounds)")
    return [name, "yes" if s["converged"] else "NO", str(s["rounds"]), format_duration(s["total_time_s"]),
            format_duration(s["downtime_s"]), format_bytes(s["bytes_sent"]),
            f"{s['postcopy_faults']:.0f}", format_duration(s["postcopy_stall_s"]), why]


def print_table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Rows under :data:`HEADER`, columns padded to their widest cell."""
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in [list(HEADER), *rows]) for i in range(len(HEADER))]
    for r in [list(HEADER), ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def run_provenance(results: list[Result], host: HostSource) -> dict[str, Any]:
    """The provenance of a simulator verb's output: :func:`sim.provenance.provenance` with seed, input hashes
    and the host constants (one call, shared by ``simulate`` and ``compare``)."""
    from sim.provenance import provenance
    from sim.trace import file_sha256

    paths = {r.scenario.workload.path for r in results if r.scenario.workload.path}
    if host.path and host.calibrated and not host.origin.startswith("scenario"):
        paths.add(str(host.path))
    inputs = {p: file_sha256(p) for p in sorted(paths)}  # sha256 of each file read: trace or model, host file
    seeds = {r.scenario.seed for r in results}
    return provenance(seed=seeds.pop() if len(seeds) == 1 else None, inputs=inputs,
                      extra={"host_constants": host.to_dict()})


def result_document(r: Result, host: HostSource) -> dict[str, Any]:
    """``simulate``'s JSON: ``Result.to_dict()`` plus ``host_constants`` and ``provenance``."""
    doc = r.to_dict()
    doc["host_constants"] = host.to_dict()
    doc["provenance"] = run_provenance([r], host)
    return doc


__all__ = ["HEADER", "summary_row", "print_table", "run_provenance", "result_document"]
