"""What ``simulate`` and ``compare`` print and write: the strategy table, one row per simulated migration,
and the result document (the result, the host constants it used, and its provenance)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sim.hostinfo import HostSource
    from sim.result import Result

HEADER = ("strategy", "converged", "rounds", "total time", "downtime", "guest pause", "sent", "pc faults", "pc stall", "why")


def summary_row(name: str, s: dict[str, Any]) -> list[str]:
    """One table row from ``Result.summary()``; a migration that did not finish says what it had done by then."""
    from sim.units import format_bytes, format_duration

    why = s["reason"]
    if not s["converged"]:
        why += f" (by then {format_bytes(s['bytes_sent'])} sent, {s['dirty_sync_count']} syncs)"
    return [name, "yes" if s["converged"] else "NO", str(s["rounds"]), format_duration(s["total_time_s"]),
            format_duration(s["downtime_s"]), format_duration(s.get("guest_pause_s", float("nan"))),
            format_bytes(s["bytes_sent"]),
            f"{s['postcopy_faults']:.0f}", format_duration(s["postcopy_stall_s"]), why]


def print_table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Rows under :data:`HEADER`, columns padded to their widest cell."""
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in [list(HEADER), *rows]) for i in range(len(HEADER))]
    for r in [list(HEADER), ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def verdict(results: dict[str, Result]) -> str:
    """One line: the strategy whose guest waits least (downtime plus post-copy fault stall; then the shortest
    migration), and what the others cost by that measure."""
    from sim.units import format_duration

    def waits(r: Result) -> float:
        return r.downtime_s + r.postcopy_stall_s

    done = {k: r for k, r in results.items() if r.converged}
    if not done:
        return "pick: none of these strategies completes"
    best = min(done, key=lambda k: (waits(done[k]), done[k].total_time_s))
    b = done[best]
    head = f"pick {best}: the guest waits {format_duration(waits(b))}"
    if b.postcopy_stall_s > 0:
        head += f" ({format_duration(b.downtime_s)} paused + {format_duration(b.postcopy_stall_s)} of post-copy faults)"
    others = []
    for k, r in results.items():
        if k == best:
            continue
        others.append(f"{k} waits {format_duration(waits(r))}" if r.converged else f"{k} does not converge")
    return head + ("; " + ", ".join(others) if others else "")


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


__all__ = ["HEADER", "summary_row", "print_table", "verdict", "run_provenance", "result_document"]
