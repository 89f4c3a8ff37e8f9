"""Strategy timelines as one figure: what each strategy costs the guest, and how the memory moves.

Top: one lane per strategy against time: the live phase (guest runs while memory is
copied), the pause (downtime: the guest is stopped) and the post-copy phase (the guest
runs on the destination, stalling on faults for ``postcopy_stall_s`` in all), each
labelled with its cost. Bottom: memory still to transfer against time, in GiB for
big guests. The title names the scenario and the host constants.

``miglab compare -o DIR`` writes this as ``timeline.png``; notebooks can call
:func:`plot_timelines` on any ``{name: Result}`` mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .units import format_bytes, format_duration

#: Lane colours: the same meaning in every figure.
LIVE_COLOR, PAUSE_COLOR, POSTCOPY_COLOR = "#9ecae1", "#d62728", "#fdae6b"


def _densify(t: Any, y: Any, per_segment: int = 24) -> tuple[Any, Any]:
    """Between marks the stream drains at a constant rate: fill in points so a log axis shows that."""
    import numpy as np

    if len(t) < 2:
        return t, y
    frac = np.linspace(0.0, 1.0, per_segment, endpoint=False)
    tt = (t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac).ravel()
    yy = (y[:-1, None] + (y[1:] - y[:-1])[:, None] * frac).ravel()
    return np.append(tt, t[-1]), np.append(yy, y[-1])


def scenario_title(sc: Any) -> str:
    """``redis-512M.npz model at 64 GiB (proportional), 10 Gbit/s, 1 ms RTT, limit 300 ms``."""
    w, link = sc.workload, sc.link
    what = Path(w.path).name if w.path else w.spec
    if w.kind == "model":
        what = f"model {what} at {format_bytes(w.memory_bytes)} ({w.scaling} scaling)"
    else:
        what = f"{what}, {format_bytes(w.memory_bytes)} guest"
    bits = link.bandwidth_Bps * 8
    rate = f"{bits / 1e9:g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:.4g} Mbit/s"
    return (f"{what}, {rate} link, {format_duration(link.rtt_s)} RTT, "
            f"downtime limit {format_duration(sc.strategy.downtime_limit_s)}")


def _cost(r: Any) -> str:
    if not r.converged:
        return f"does not converge ({format_bytes(r.bytes_sent)} sent in {format_duration(r.total_time_s)})"
    text = f"pause {format_duration(r.downtime_s)}"
    if r.postcopy_stall_s > 0:
        text += f", stall {format_duration(r.postcopy_stall_s)}"
    return text + f"; done {format_duration(r.total_time_s)}, {format_bytes(r.bytes_sent)}"


def plot_timelines(results: dict[str, Any], path: Path, host: Any = None, note: str = "") -> None:
    """The cost lanes and the remaining-memory curves of ``results`` (``{name: Result}``), saved as PNG.

    ``host`` (a :class:`sim.hostinfo.HostSource`) is named in the title; by default it is
    recognised from the scenario (:func:`sim.hostinfo.of_scenario`); ``note`` (e.g. which strategy to pick)
    is a third title line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .hostinfo import of_scenario

    first = next(iter(results.values()))
    host = host if host is not None else of_scenario(first.scenario)
    big = first.memory_bytes >= 4 * 2**30
    unit, scale = ("GiB", 2**30) if big else ("MiB", 2**20)
    n = len(results)
    fig, (lanes, curves) = plt.subplots(2, 1, figsize=(13, 1.4 + 0.55 * n + 3.2), dpi=100, sharex=True,
                                        gridspec_kw={"height_ratios": [0.55 * n + 0.6, 3.2]})
    done = [r.total_time_s for r in results.values() if r.converged]
    # A pre-copy that never converges would stretch the axis over what the others do: show it cut.
    end = min(max(r.total_time_s for r in results.values()), 1.3 * max(done)) if done else \
        max(r.total_time_s for r in results.values())
    for i, (name, r) in enumerate(results.items()):
        y = n - 1 - i
        stops = r.rounds_table[r.rounds_table["phase"].isin(["stopcopy", "switchover", "cold"])]
        pause_start = float(stops["t_start_s"].iloc[0]) if len(stops) else r.total_time_s
        # live phase, then the pause, then post-copy (the guest runs on the destination)
        lanes.broken_barh([(0.0, min(pause_start, end * 1.02))], (y - 0.3, 0.6), color=LIVE_COLOR)
        for _, row in stops.iterrows():
            # at least 0.4 % of the axis, so a 1 ms pause is visible beside a 30 s one
            lanes.broken_barh([(row["t_start_s"], max(row["duration_s"], 0.004 * end))], (y - 0.3, 0.6),
                              color=PAUSE_COLOR)
        if r.postcopy_time_s > 0:
            lanes.broken_barh([(r.total_time_s - r.postcopy_time_s, r.postcopy_time_s)], (y - 0.3, 0.6),
                              color=POSTCOPY_COLOR, hatch="//", edgecolor="#a0522d", lw=0)
        if not r.converged and r.total_time_s <= end:
            lanes.plot([r.total_time_s], [y], marker="x", color="black", ms=10, mew=2)
        elif not r.converged:
            lanes.annotate(f"still copying at {format_duration(r.total_time_s)}", (end * 1.01, y), ha="right",
                           va="center", fontsize=8)
        lanes.text(1.01, y, f"{name}: {_cost(r)}", transform=lanes.get_yaxis_transform(), va="center",
                   fontsize=8.5, weight="bold" if r.converged else "normal")
        t, rem = _densify(r.timeline["t_s"].to_numpy(), r.timeline["remaining_bytes"].to_numpy() / scale)
        curves.plot(t, rem, color=f"C{i}", lw=3.0 - 2.0 * i / max(n - 1, 1), label=name)
    lanes.set_yticks(range(n), list(reversed(results)))
    lanes.set_ylim(-0.6, n - 0.4)
    lanes.grid(axis="x", alpha=0.3)
    lanes.legend(handles=[Patch(color=LIVE_COLOR, label="live copy (guest runs on the source)"),
                          Patch(color=PAUSE_COLOR, label="guest paused (downtime)"),
                          Patch(facecolor=POSTCOPY_COLOR, hatch="//", edgecolor="#a0522d",
                                label="post-copy (guest runs on the destination, stalls on faults)")],
                 loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False)
    curves.set_xlabel("time since migration start (s)")
    curves.set_ylabel(f"memory still to transfer ({unit})")
    curves.set_yscale("symlog", linthresh=0.01 if big else 1.0)
    curves.set_ylim(bottom=0)
    curves.set_xlim(0, end * 1.02)
    curves.text(0.01, 0.02, "shared first pass; then each strategy's own ending", transform=curves.transAxes,
                fontsize=8, color="0.4")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8, loc="upper right")
    fig.suptitle("\n".join(x for x in (scenario_title(first.scenario), host.short_label(), note) if x), fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(right=0.6, hspace=0.12)
    fig.savefig(path, format="png")
    plt.close(fig)


__all__ = ["plot_timelines", "scenario_title", "LIVE_COLOR", "PAUSE_COLOR", "POSTCOPY_COLOR"]
