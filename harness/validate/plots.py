"""The validation plots: predicted against measured per metric (on y = x), and the error distributions.

Each plot is one PNG under ``OUT/plots/``, written atomically; the report
links them and ``notebooks/validation.ipynb`` redraws them interactively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.validate.compare import COMPARED, MODEL_HELDOUT, MODELS

PLOTS_DIR = "plots"
#: Held-out miglab (coloured by strategy) and the baselines (grey), with their markers.
_SCATTER_MODELS: tuple[tuple[str, str], ...] = ((MODEL_HELDOUT, "o"), ("geometric", "x"), ("simgrid", "+"),
                                                ("qemu-expected-downtime", "^"))
#: Metrics that may span decades; their axes become logarithmic when they do.
_LOG_METRICS: tuple[str, ...] = ("total_time_s", "downtime_s", "bytes_sent", "postcopy_requests")


def write_plots(table: Any, out: Path) -> list[Path]:
    """Predicted vs measured (y = x) per metric, and the error distributions, as PNGs under ``out/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    pdir = out / PLOTS_DIR
    pdir.mkdir(parents=True, exist_ok=True)
    paths = []
    d = table[np.isfinite(table["predicted"]) & (table["metric"] != "converged")]
    for metric in [m for m in COMPARED if m != "converged"]:
        dm = d[(d["metric"] == metric)]
        if len(dm):
            paths.append(_plot_pred_vs_meas(dm, metric, pdir / f"pred_vs_meas_{metric}.png"))
    metrics = [m for m in _LOG_METRICS if m in set(d["metric"])]
    if metrics:
        paths.append(_plot_error_distribution(d, metrics, pdir / "error_distribution.png"))
    return paths


def _plot_pred_vs_meas(dm: Any, metric: str, path: Path) -> Path:
    """One metric's rows (finite predictions): held-out miglab per strategy and the baselines, against y = x."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for model, marker in _SCATTER_MODELS:
        g = dm[dm["model"] == model]
        if not len(g):
            continue
        if model == MODEL_HELDOUT:
            for strat, gs in g.groupby("strategy"):
                ax.scatter(gs["measured"], gs["predicted"], marker=marker, s=18, label=f"miglab {strat}")
        else:
            ax.scatter(g["measured"], g["predicted"], marker=marker, s=22, c="grey", alpha=0.6, label=model)
    vals = np.concatenate([dm["measured"].to_numpy(), dm["predicted"].to_numpy()])
    vals = vals[np.isfinite(vals)]
    pos = vals[vals > 0]
    log_axes = metric in _LOG_METRICS and len(pos) and pos.max() / max(pos.min(), 1e-12) > 20
    lo, hi = (pos.min() * 0.8, pos.max() * 1.25) if log_axes else (min(0.0, vals.min()), vals.max() * 1.1 or 1)
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    if log_axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured {metric}")
    ax.set_ylabel(f"predicted {metric}")
    ax.set_title(f"{metric}: predicted vs measured (held-out)")
    ax.legend(fontsize=6, loc="upper left")
    return _save(fig, path)


def _plot_error_distribution(d: Any, metrics: list[str], path: Path) -> Path:
    """Box plots of the relative error of every model, one panel per metric."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        dm = d[d["metric"] == metric]
        models = [m for m in MODELS if m in set(dm["model"])]
        data = []
        for m in models:
            v = dm[dm["model"] == m]["rel_error"].to_numpy(dtype=float)
            data.append(np.clip(v[np.isfinite(v)], -2, 2))  # measured 0 (e.g. no requests) has no ratio
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(models) + 1), models, rotation=60, fontsize=7)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(metric, fontsize=9)
        ax.set_ylabel("relative error (pred - meas) / meas, clipped to +-2")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from sim.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
