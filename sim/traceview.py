"""Inspect and draw traces: ``miglab trace info`` and ``miglab trace plot``.

``info`` summarises a trace's shape, its per-interval dirty rate, its
working-set curve D(T) at a few window lengths and its metadata. ``plot``
draws a heat map of the pages dirtied against time (pages binned into about
512 rows, so any guest size fits a figure) above the working-set curve with
the fitted page-class model overlaid.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import fit_classes, working_set_curve
from .errors import ConfigError
from .trace import Trace

log = logging.getLogger(__name__)

HEATMAP_ROWS = 512
#: Above this many intervals the heat map averages neighbouring intervals into one column.
HEATMAP_MAX_COLUMNS = 2000


def summary_windows(n_intervals: int) -> np.ndarray:
    """Window lengths (intervals) shown by ``trace info``: 1, 2, 4, ... and the whole trace."""
    if n_intervals < 1:
        return np.zeros(0, dtype=np.int64)
    ks = 2 ** np.arange(0, int(np.log2(n_intervals)) + 1, dtype=np.int64)
    return np.unique(np.append(ks, n_intervals))


def trace_summary(trace: Trace) -> dict[str, Any]:
    """A JSON-ready summary: shape, dirty rate, working set D(T), unique pages, metadata, sha256."""
    mib = 2**20
    n = trace.n_intervals
    out: dict[str, Any] = {
        "path": trace.path,
        "sha256": trace.sha256,
        "page_size": trace.page_size,
        "n_pages": trace.n_pages,
        "memory_bytes": trace.memory_bytes,
        "n_intervals": n,
        "duration_s": trace.duration_s,
        "interval_s_mean": float(np.mean(trace.t_end_s - trace.t_start_s)) if n else None,
        "meta": trace.meta,
    }
    if n == 0:
        out.update(dirty_rate=None, working_set=[], unique_pages=0, unique_fraction=0.0)
        return out
    rate = trace.counts / (trace.t_end_s - trace.t_start_s)
    stats = {"mean": float(rate.mean()), "median": float(np.median(rate)), "p95": float(np.percentile(rate, 95))}
    out["dirty_rate"] = {
        "pages_per_s": stats,
        "MiB_per_s": {k: v * trace.page_size / mib for k, v in stats.items()},
        "pages_per_interval_mean": float(trace.counts.mean()),
    }
    ks = summary_windows(n)
    window_s, pages = working_set_curve(trace, ks)
    out["working_set"] = [
        {"intervals": int(k), "window_s": float(t), "pages": float(p), "MiB": float(p) * trace.page_size / mib,
         "fraction": float(p) / trace.n_pages}
        for k, t, p in zip(ks, window_s, pages, strict=True)
    ]
    unique = int(round(float(pages[-1])))  # the one window spanning the whole trace
    out["unique_pages"] = unique
    out["unique_fraction"] = unique / trace.n_pages
    return out


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable form of :func:`trace_summary`."""
    gib = 2**30
    lines = [
        f"trace       {s['path']}",
        f"sha256      {s['sha256']}",
        f"guest       {s['n_pages']} pages x {s['page_size']} B = {s['memory_bytes'] / gib:.4g} GiB",
    ]
    if not s["n_intervals"]:
        lines.append("intervals   0 (empty trace)")
    else:
        lines.append(f"intervals   {s['n_intervals']} over {s['duration_s']:.3f} s "
                     f"(mean interval {1e3 * s['interval_s_mean']:.1f} ms)")
        r, rm = s["dirty_rate"]["pages_per_s"], s["dirty_rate"]["MiB_per_s"]
        lines.append("dirty rate  per interval: " + ", ".join(
            f"{k} {r[k]:.0f} pages/s ({rm[k]:.2f} MiB/s)" for k in ("mean", "median", "p95")))
        lines.append("working set D(T), mean distinct pages dirtied in a window of T:")
        lines.append(f"  {'intervals':>9} {'T (s)':>10} {'pages':>14} {'MiB':>12} {'% memory':>9}")
        for w in s["working_set"]:
            lines.append(f"  {w['intervals']:>9} {w['window_s']:>10.3f} {w['pages']:>14.1f} {w['MiB']:>12.2f} "
                         f"{100 * w['fraction']:>8.2f}%")
        lines.append(f"unique      {s['unique_pages']} pages over the whole trace "
                     f"({100 * s['unique_fraction']:.2f} % of memory)")
    if s["meta"]:
        lines.append("metadata")
        for k in sorted(s["meta"]):
            lines.append(f"  {k}: {s['meta'][k]}")
    return "\n".join(lines)


def heatmap(trace: Trace, rows: int = HEATMAP_ROWS, max_columns: int = HEATMAP_MAX_COLUMNS,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of pages dirtied per (page bin, time column).

    Pages are binned into ``min(rows, n_pages)`` equal address ranges and
    intervals into at most ``max_columns`` columns (neighbouring intervals
    averaged). Returns ``(fraction[rows, columns], page_edges, time_edges_s)``.
    """
    rows = max(1, min(rows, trace.n_pages))
    n = trace.n_intervals
    page_edges = np.linspace(0, trace.n_pages, rows + 1)
    # Page p goes to row p * rows // n_pages, so row r starts at ceil(r * n_pages / rows).
    r = np.arange(rows + 1, dtype=np.int64)
    bin_pages = np.diff((r * trace.n_pages + rows - 1) // rows).astype(np.float64)
    cols = max(1, min(n, max_columns))
    col_of = np.arange(n) * cols // max(n, 1)
    counts = np.zeros((rows, cols), dtype=np.float64)
    per_col = np.bincount(col_of, minlength=cols).astype(np.float64)
    for i in range(n):
        p = trace.pages(i)
        counts[:, col_of[i]] += np.bincount(p * rows // trace.n_pages, minlength=rows)
    frac = counts / bin_pages[:, None] / np.maximum(per_col, 1)[None, :]
    t0 = float(trace.t_start_s[0]) if n else 0.0
    t1 = float(trace.t_end_s[-1]) if n else 1.0
    return frac, page_edges, np.linspace(t0, t1, cols + 1)


def _atomic_savefig(fig: Any, path: Path) -> None:
    fmt = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"-o {path}: unsupported image type {fmt!r} (use one of {', '.join(sorted(supported))})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp.{fmt}", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_trace(trace: Trace, path: str | os.PathLike[str], *, max_classes: int = 3, fit: bool = True) -> None:
    """Draw the heat map and the working-set curve (with the fitted model) to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    path = Path(path)
    if trace.n_intervals == 0:
        raise ConfigError("has no intervals to plot", where=trace.path or "trace")
    frac, page_edges, time_edges = heatmap(trace)
    window_s, pages = working_set_curve(trace)
    fig, (ax_h, ax_w) = plt.subplots(2, 1, figsize=(10, 9), height_ratios=[3, 2], layout="constrained")
    try:
        mem_unit, div = ("GiB", 2**30) if trace.memory_bytes >= 2**30 else ("MiB", 2**20)
        # Log colour scale: a hot set dirtied every interval and a cold remainder touched once a
        # minute differ by orders of magnitude, and both matter. Empty bins are drawn black.
        positive = frac[frac > 0]
        vmax = float(positive.max()) if len(positive) else 1.0
        vmin = min(max(float(positive.min()) if len(positive) else 1e-4, vmax * 1e-4), vmax / 10)
        cmap = matplotlib.colormaps["magma"].with_extremes(bad="black", under="black")
        im = ax_h.imshow(np.ma.masked_equal(frac, 0.0), aspect="auto", origin="lower", interpolation="nearest",
                         cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax),
                         extent=(time_edges[0], time_edges[-1], 0, trace.memory_bytes / div))
        fig.colorbar(im, ax=ax_h, label="fraction of pages in bin dirtied")
        ax_h.set_xlabel("time (s)")
        ax_h.set_ylabel(f"guest address ({mem_unit})")
        ax_h.set_title(f"{Path(trace.path).name or 'trace'}: pages dirtied per interval")

        mib = 2**20 / trace.page_size
        ax_w.plot(window_s, pages / mib, "o", ms=4, label="measured D(T)")
        if fit and pages.max() > 0:
            classes, report = fit_classes(window_s, pages, trace.n_pages, max_classes)
            t_line = np.geomspace(window_s.min(), window_s.max(), 200)
            fitted = sum((c.dirtied(t_line) for c in classes), np.zeros_like(t_line))
            desc = ", ".join(f"{c.pages / mib:.1f} MiB @ {c.rate_per_page_per_s:.3g}/s" for c in classes)
            ax_w.plot(t_line, fitted / mib, "-", label=f"fit: {desc}\n(max rel. error "
                                                        f"{100 * report['max_rel_error']:.2f} %)")
        ax_w.set_xscale("log")
        if (pages > 0).any():
            ax_w.set_yscale("log")
        ax_w.set_xlabel("window T (s)")
        ax_w.set_ylabel("distinct pages dirtied (MiB)")
        ax_w.set_title("working-set curve")
        ax_w.grid(True, which="both", alpha=0.3)
        ax_w.legend(loc="upper left", fontsize="small")
        _atomic_savefig(fig, path)
    finally:
        plt.close(fig)
