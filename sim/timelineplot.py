"""Strategy timelines as one figure: bytes still to move against time, pauses shaded.

``miglab compare -o DIR`` writes this as ``timeline.png``; notebooks can call
:func:`plot_timelines` on any ``{name: Result}`` mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .units import format_duration


def _densify(t: Any, y: Any, per_segment: int = 24) -> tuple[Any, Any]:
    """Between marks the stream drains at a constant rate: fill in points so a log axis shows that."""
    import numpy as np

    if len(t) < 2:
        return t, y
    frac = np.linspace(0.0, 1.0, per_segment, endpoint=False)
    tt = (t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac).ravel()
    yy = (y[:-1, None] + (y[1:] - y[:-1])[:, None] * frac).ravel()
    return np.append(tt, t[-1]), np.append(yy, y[-1])


def plot_timelines(results: dict[str, Any], path: Path, host: Any = None) -> None:
    """Bytes still to move against time, one line per strategy, downtime shaded.

    ``host`` (a :class:`sim.hostinfo.HostSource`) is named in the title; by default it is
    recognised from the scenario (:func:`sim.hostinfo.of_scenario`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    switch_times, ends = [], []
    for i, (name, r) in enumerate(results.items()):
        color = f"C{i}"
        t, y = _densify(r.timeline["t_s"].to_numpy(), r.timeline["remaining_bytes"].to_numpy() / 2**20)
        stops = r.rounds_table[r.rounds_table["phase"].isin(["stopcopy", "switchover", "cold"])]
        for ax in axes:
            # Strategies share the first pass; thinner lines on top keep each one visible.
            ax.plot(t, y, color=color, lw=3.2 - 0.6 * i, label=f"{name} (downtime {format_duration(r.downtime_s)})")
            for _, row in stops.iterrows():
                ax.axvspan(row["t_start_s"], row["t_start_s"] + max(row["duration_s"], 1e-9), color=color, alpha=0.2)
                ax.axvline(row["t_start_s"], color=color, ls=":", lw=1)
        switch_times += list(stops["t_start_s"])
        ends.append(r.total_time_s)
    w = next(iter(results.values())).scenario.workload
    from .hostinfo import of_scenario

    host = host if host is not None else of_scenario(next(iter(results.values())).scenario)
    axes[0].set_title(f"{Path(w.path).name if w.path else w.spec}: bytes remaining (shaded: guest paused)")
    fig.suptitle(host.short_label(), fontsize=9)
    if switch_times:
        # Stop-and-copy and post-copy switch at the start (after setup): zoom on the switchovers that
        # follow a live phase.
        late = [x for x in switch_times if x > 0.05 * max(ends)] or switch_times
        lo, hi = min(late), max(ends)
        axes[1].set_xlim(lo - 0.25 * (hi - lo) - 1e-3, hi + 0.05 * (hi - lo) + 1e-3)
    axes[1].set_title("around the switchover")
    for ax in axes:
        ax.set_xlabel("time since migration start (s)")
        ax.set_ylabel("memory still to transfer (MiB)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


__all__ = ["plot_timelines"]
