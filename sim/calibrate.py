"""Calibrate a :class:`~sim.model.DirtyModel` from a trace.

Three steps, each usable on its own:

1. :func:`working_set_curve` measures D(T), the mean number of *distinct* pages
   dirtied in a window of ``k`` consecutive trace intervals, for a set of ``k``.
   Per-interval packed bitmaps are ORed with a doubling scheme (a sparse table:
   the window of ``2p`` intervals starting at ``i`` is the OR of the windows of
   ``p`` starting at ``i`` and ``i + p``; any other ``k`` is the OR of two
   overlapping power-of-two windows) and counted with ``np.bitwise_count``.
   The page range is split into column chunks so that the working set of
   bitmaps stays under a memory budget however large the guest.
2. :func:`fit_classes` fits ``D(T) = sum_k n_k (1 - exp(-lambda_k T))``
   (poisson classes; sweep classes ``n_k min(1, lambda_k T)`` may take part,
   see ``DEFAULT_KINDS``): NNLS over a log-spaced dictionary of rates finds the
   candidate classes, bounded least squares refines 1..``max_classes`` of
   them, and a penalised criterion (BIC on relative residuals with a 0.1 %
   noise floor) picks the count and the kinds.
3. :func:`calibrate` runs both on a trace and returns the model with its fit
   report and provenance.

Drawing page-exact sets from a fitted model is :mod:`sim.sampling`'s job; the
packed-bitmap primitives are in :mod:`sim.bitmap`.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from scipy.optimize import least_squares, nnls

from .bitmap import row_bytes, set_bits
from .errors import ConfigError, TraceError
from .model import ClassKind, DirtyModel, PageClass
from .trace import Trace

log = logging.getLogger(__name__)

#: Bytes of bitmap rows held at once by :func:`working_set_curve` (default).
WORKING_SET_BUDGET_BYTES = 256 * 2**20
#: Relative residual below which extra classes are not worth their parameters.
FIT_NOISE_FLOOR = 1e-3
#: Rates within this factor of each other (same kind) are one class.
MERGE_RATE_FACTOR = 1.5
#: A class whose rate times the longest window is below this never bends within
#: the trace: only ``pages * rate`` is determined (see :func:`fit_classes`).
LINEAR_REGIME_X = 0.02
#: Class kinds fitted by default. A sweep (each page once per cycle, as in the uniform and
#: seq workloads) is not a mixture of exponentials: poisson classes alone miss it by ~30 %.
#: The criterion only picks a sweep class where it fits better.
DEFAULT_KINDS: tuple[str, ...] = ("poisson", "sweep")


# ---------------------------------------------------------------------------
# Working-set curve
# ---------------------------------------------------------------------------
def default_window_counts(n_intervals: int, per_octave: int = 4) -> np.ndarray:
    """Window lengths in intervals: about ``per_octave`` log-spaced values per doubling, 1 .. n."""
    if n_intervals < 1:
        return np.zeros(0, dtype=np.int64)
    top = math.log2(n_intervals)
    ks = np.unique(np.rint(2.0 ** (np.arange(0, int(top * per_octave) + 1) / per_octave)).astype(np.int64))
    ks = ks[(ks >= 1) & (ks <= n_intervals)]
    return np.unique(np.append(ks, n_intervals))


def window_durations(trace: Trace, ks: np.ndarray) -> np.ndarray:
    """Mean wall-clock span (s) of the windows of ``k`` consecutive intervals, per ``k``."""
    n = trace.n_intervals
    out = np.empty(len(ks), dtype=np.float64)
    for j, k in enumerate(ks):
        out[j] = float(np.mean(trace.t_end_s[k - 1:] - trace.t_start_s[:n - k + 1]))
    return out


def _chunk_plan(trace: Trace, chunk_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every interval's page list at the column-chunk boundaries.

    Returns ``(bounds_pages, idx, base)``: chunk ``c`` covers pages
    ``bounds_pages[c]:bounds_pages[c+1]``; interval ``i``'s pages in it are
    ``base[i, c] + cumsum(deltas[idx[i, c]:idx[i, c+1]])``. Each interval is
    decoded once here, so every later chunk pass decodes only its own slice.
    """
    n = trace.n_intervals
    chunk_bits = 8 * chunk_bytes
    bounds = np.arange(0, trace.n_pages + chunk_bits, chunk_bits, dtype=np.int64)
    bounds[-1] = min(bounds[-1], trace.n_pages)
    bounds = np.unique(np.minimum(bounds, trace.n_pages))
    idx = np.empty((n, len(bounds)), dtype=np.int64)
    base = np.zeros((n, len(bounds)), dtype=np.int64)
    for i in range(n):
        lo = int(trace.indptr[i])
        p = trace.pages(i)
        pos = np.searchsorted(p, bounds, side="left")
        pos[-1] = len(p)
        idx[i] = lo + pos
        has_prev = pos > 0
        base[i, has_prev] = p[pos[has_prev] - 1]
    return bounds, idx, base


def _checked_windows(trace: Trace, windows: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """The sorted, distinct window lengths (intervals) to measure; default :func:`default_window_counts`."""
    n = trace.n_intervals
    if n == 0:
        raise TraceError(trace.path or "<trace>", "has no intervals, so no working-set curve")
    ks = default_window_counts(n) if windows is None else np.unique(np.asarray(windows, dtype=np.int64))
    if len(ks) == 0 or ks[0] < 1 or ks[-1] > n:
        raise ConfigError(f"window lengths must be between 1 and {n} intervals, got {list(map(int, ks))}")
    return ks


def _fill_chunk(buf: np.ndarray, trace: Trace, idx: np.ndarray, base: np.ndarray, c: int, p0: int,
                scratch: np.ndarray) -> None:
    """Row ``i`` of ``buf`` becomes interval ``i``'s bitmap of column chunk ``c`` (pages from ``p0``)."""
    buf.fill(0)
    for i in range(trace.n_intervals):
        s, e = int(idx[i, c]), int(idx[i, c + 1])
        if e > s:
            pages = base[i, c] + np.cumsum(trace.deltas[s:e], dtype=np.int64) - p0
            set_bits(buf[i], pages, scratch)


def _count_windows(words: np.ndarray, ks: np.ndarray, sums: np.ndarray, tmp: np.ndarray) -> None:
    """Add to ``sums[j]`` the distinct pages of every window of ``ks[j]`` rows of ``words``, summed over windows.

    ``words`` (one interval's bitmap chunk per row, uint64) is overwritten: by the doubling
    scheme, after step ``p`` row ``i`` holds the window of ``p`` intervals starting at ``i``.
    Any other ``k`` is the OR of two overlapping windows of the power of two below it, built in
    ``tmp`` a block of rows at a time.
    """
    n = len(words)
    block_rows = len(tmp)
    pow2_of = {int(k): 1 << (int(k).bit_length() - 1) for k in ks}
    p = 1  # rows 0..n-p of `words` now hold the windows of p intervals
    while True:
        for j, k in enumerate(ks):
            if pow2_of[int(k)] != p:
                continue
            n_win = n - int(k) + 1
            if k == p:
                sums[j] += int(np.bitwise_count(words[:n_win]).sum(dtype=np.int64))
                continue
            shift = int(k) - p
            for a in range(0, n_win, block_rows):
                r = min(block_rows, n_win - a)
                np.bitwise_or(words[a:a + r], words[a + shift:a + shift + r], out=tmp[:r])
                sums[j] += int(np.bitwise_count(tmp[:r]).sum(dtype=np.int64))
        if 2 * p > ks[-1]:
            return
        # In place, ascending blocks of at most p rows: the rows read (i + p)
        # are still windows of p when row i becomes a window of 2p.
        last = n - 2 * p  # last row that holds a window of 2p
        for a in range(0, last + 1, p):
            r = min(p, last + 1 - a)
            words[a:a + r] |= words[a + p:a + p + r]
        p *= 2


def working_set_curve(trace: Trace, windows: Sequence[int] | np.ndarray | None = None, *,
                      budget_bytes: int = WORKING_SET_BUDGET_BYTES,
                      progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """D(T): mean distinct pages dirtied over all windows of ``k`` consecutive intervals.

    ``windows`` lists the ``k`` (interval counts, 1 <= k <= n_intervals);
    default :func:`default_window_counts` (about four per doubling, up to the
    whole trace). Returns ``(window_s, pages)``: the mean wall-clock span of
    each window length and the mean distinct-page count (float64).

    Cost is O(n_intervals x (log n + len(windows)) x n_pages / 8) byte
    operations. At most ``budget_bytes`` of bitmap rows (plus a small OR
    buffer) are held: larger guests are processed in column chunks.
    """
    from tqdm import tqdm

    ks = _checked_windows(trace, windows)
    n = trace.n_intervals
    sums = np.zeros(len(ks), dtype=np.int64)
    # Column chunk: n rows of chunk_bytes must fit the budget; whole uint64 words.
    chunk_bytes = max(8, min(row_bytes(trace.n_pages), budget_bytes // n // 8 * 8))
    bounds, idx, base = _chunk_plan(trace, chunk_bytes)
    n_chunks = len(bounds) - 1
    buf = np.zeros((n, chunk_bytes), dtype=np.uint8)
    scratch = np.zeros(8 * chunk_bytes, dtype=bool)
    # OR temporaries for non-power-of-two k are built this many rows at a time.
    block_rows = max(1, min(n, (32 * 2**20) // chunk_bytes))
    tmp = np.empty((block_rows, chunk_bytes // 8), dtype=np.uint64)
    quiet = progress is False or (progress is None and (n_chunks < 4 or not sys.stderr.isatty()))
    for c in tqdm(range(n_chunks), desc="working set", unit="chunk", disable=quiet, leave=False):
        _fill_chunk(buf, trace, idx, base, c, int(bounds[c]), scratch)
        _count_windows(buf.view(np.uint64), ks, sums, tmp)
    return window_durations(trace, ks), sums / (n - ks + 1)


# ---------------------------------------------------------------------------
# Fitting page classes
# ---------------------------------------------------------------------------
def _basis(kind: str, rate: np.ndarray, window_s: np.ndarray) -> np.ndarray:
    x = np.outer(window_s, rate)
    return np.minimum(1.0, x) if kind == "sweep" else -np.expm1(-x)


def _curve(params: np.ndarray, kinds: Sequence[str], window_s: np.ndarray) -> np.ndarray:
    k = len(kinds)
    n, rate = params[:k], np.exp(params[k:])
    out = np.zeros_like(window_s)
    for j, kind in enumerate(kinds):
        out += n[j] * _basis(kind, rate[j:j + 1], window_s)[:, 0]
    return out


def _refine(init: list[tuple[str, float, float]], window_s: np.ndarray, pages: np.ndarray, weight: np.ndarray,
            n_pages: int, log_rate_bounds: tuple[float, float]) -> tuple[np.ndarray, list[str], float]:
    """Bounded least squares from ``init`` = [(kind, pages, rate)]; returns (params, kinds, weighted RSS)."""
    kinds = [c[0] for c in init]
    k = len(init)
    lo_r, hi_r = log_rate_bounds
    x0 = np.array([min(max(c[1], 0.0), n_pages) for c in init]
                  + [min(max(math.log(c[2]), lo_r), hi_r) for c in init])
    lower = np.r_[np.zeros(k), np.full(k, lo_r)]
    upper = np.r_[np.full(k, float(n_pages)), np.full(k, hi_r)]
    x0 = np.clip(x0, lower, upper)
    scale_pages = 1.0 / max(float(pages.max()), 1.0)

    def residuals(x: np.ndarray) -> np.ndarray:
        over = max(0.0, float(x[:k].sum()) - n_pages)
        return np.r_[weight * (_curve(x, kinds, window_s) - pages), 10.0 * over * scale_pages]

    sol = least_squares(residuals, x0, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=2000)
    return sol.x, kinds, float(np.sum(sol.fun[:-1] ** 2))


def _nnls_runs(window_s: np.ndarray, pages: np.ndarray, weight: np.ndarray, kinds: Sequence[str],
               rates: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Sparse NNLS over a rate dictionary: runs of adjacent active atoms as ``(kind, weights, rates)``."""
    cols = [_basis(kind, rates, window_s) for kind in kinds]
    a = np.hstack(cols) * weight[:, None]
    x, _ = nnls(a, pages * weight, maxiter=50 * a.shape[1])
    runs = []
    for ki, kind in enumerate(kinds):
        xs = x[ki * len(rates):(ki + 1) * len(rates)]
        act = np.flatnonzero(xs > 1e-9 * max(float(x.max()), 1e-300))
        for g in np.split(act, np.flatnonzero(np.diff(act) != 1) + 1) if len(act) else []:
            runs.append((kind, xs[g], rates[g]))
    runs.sort(key=lambda r: -float(r[1].sum()))
    return runs


def _run_class(kind: str, w: np.ndarray, r: np.ndarray) -> tuple[str, float, float]:
    return kind, float(w.sum()), float(np.exp(np.average(np.log(r), weights=w)))


def _split_run(run: tuple[str, np.ndarray, np.ndarray], pieces: int) -> list[tuple[str, float, float]]:
    """Split one NNLS run into ``pieces`` classes of about equal weight (a broad run hides several classes)."""
    kind, w, r = run
    pieces = min(pieces, len(w))
    cut = np.searchsorted(np.cumsum(w) / w.sum(), np.arange(1, pieces) / pieces)
    return [_run_class(kind, ww, rr) for ww, rr in zip(np.split(w, cut), np.split(r, cut), strict=True)
            if len(ww)]


#: A candidate class before refinement: (kind, pages, rate per page per second).
_Start = tuple[str, float, float]
#: A refined fit: (parameters ``[pages..., log rates...]``, kinds, weighted residual sum of squares).
_Fit = tuple[np.ndarray, list[str], float]
#: NNLS candidates refined per class count: every subset of this many leading ones.
_LEAD_CANDIDATES = 7
#: Size of the log-spaced rate dictionary NNLS chooses from.
_DICTIONARY_RATES = 160


@dataclass(frozen=True)
class _Curve:
    """A validated working-set curve, sorted by window, with the fit's weights and rate bounds."""

    window_s: np.ndarray
    pages: np.ndarray
    n_pages: int

    @property
    def weight(self) -> np.ndarray:
        """Relative weighting: short windows (which decide downtime) count as much as long ones."""
        return 1.0 / np.maximum(self.pages, 1.0)

    @property
    def log_rate_bounds(self) -> tuple[float, float]:
        """Rates from ``1e-3 / T_max`` (never bends) to ``20 / T_min`` (dirty in every window), as logs."""
        return math.log(1e-3 / float(self.window_s[-1])), math.log(20.0 / float(self.window_s[0]))


def _checked_curve(window_s: np.ndarray | Sequence[float], pages: np.ndarray | Sequence[float], n_pages: int,
                   max_classes: int, kinds: Sequence[str]) -> _Curve:
    """Validate :func:`fit_classes`'s arguments and sort the curve by window length."""
    t = np.asarray(window_s, dtype=np.float64)
    d = np.asarray(pages, dtype=np.float64)
    if t.ndim != 1 or t.shape != d.shape or len(t) == 0:
        raise ConfigError("window_s and pages must be non-empty 1-D arrays of equal length")
    if not (np.isfinite(t).all() and np.isfinite(d).all()) or (t <= 0).any() or (d < 0).any():
        raise ConfigError("window_s must be positive and pages non-negative (finite)")
    if n_pages <= 0 or max_classes < 1:
        raise ConfigError(f"need n_pages > 0 and max_classes >= 1 (got {n_pages}, {max_classes})")
    bad = [k for k in kinds if k not in ("poisson", "sweep")]
    if bad or not kinds:
        raise ConfigError(f"unknown class kind(s) {bad} (choose poisson, sweep)")
    order = np.argsort(t)
    return _Curve(t[order], d[order], n_pages)


def _starts(k: int, cands: list[_Start], runs: list[tuple[str, np.ndarray, np.ndarray]], kinds: Sequence[str],
            log_bounds: tuple[float, float], d_max: float) -> list[list[_Start]]:
    """Starting points for a ``k``-class refinement, all of exactly ``k`` classes."""
    inits: list[list[_Start]] = []
    lead = cands[:_LEAD_CANDIDATES]
    for combo in itertools.combinations(range(len(lead)), min(k, len(lead))):
        inits.append([lead[i] for i in combo])
    if runs and len(runs) < k:  # fewer runs than classes: split the heaviest run
        inits.append(cands[1:] + _split_run(runs[0], k - len(runs) + 1))
    # Log-spaced starts cover curves NNLS summarised with fewer atoms.
    for kind in kinds:
        rs = np.exp(np.linspace(log_bounds[0] + 2, log_bounds[1] - 1, k))
        inits.append([(kind, d_max / k, float(r)) for r in rs])
    return [i for i in inits if len(i) == k]


def _best_fits(curve: _Curve, max_classes: int, kinds: Sequence[str]) -> dict[int, _Fit]:
    """Per class count K, the refined fit of least residual whose K classes are all real and distinct."""
    t, d, weight, log_bounds = curve.window_s, curve.pages, curve.weight, curve.log_rate_bounds
    rates = np.exp(np.linspace(*log_bounds, _DICTIONARY_RATES))
    runs = _nnls_runs(t, d, weight, list(kinds), rates)
    cands = [_run_class(*run) for run in runs]
    best: dict[int, _Fit] = {}
    for k in range(1, max_classes + 1):
        for init in _starts(k, cands, runs, kinds, log_bounds, float(d.max())):
            x, ks, rss = _refine(init, t, d, weight, curve.n_pages, log_bounds)
            if (k == 1 or _distinct(x, ks, k)) and (k not in best or rss < best[k][2]):
                best[k] = (x, ks, rss)
    return best


def _criterion(best: dict[int, _Fit], n_windows: int) -> dict[int, float]:
    """BIC per class count on the relative residuals, with the ``FIT_NOISE_FLOOR`` under the residual."""
    m = n_windows
    return {k: m * math.log(rss / m + FIT_NOISE_FLOOR**2) + 2 * k * math.log(max(m, 2))
            for k, (_, _, rss) in best.items()}


def _fit_to_classes(fit: _Fit) -> list[PageClass]:
    """The classes of a refined fit, hottest first, without those under half a page."""
    x, ks, _ = fit
    kk = len(ks)
    classes = [PageClass(float(x[j]), float(math.exp(x[kk + j])), cast(ClassKind, ks[j])) for j in range(kk) if x[j] >= 0.5]
    classes.sort(key=lambda c: -c.rate_per_page_per_s)
    return classes


def _saturated_notes(classes: Sequence[PageClass], log_rate_hi: float) -> list[str]:
    """Notes for classes at the upper rate bound: dirty in every interval, so the rate is only a lower bound."""
    return [f"a class of {c.pages:.0f} pages is dirty in every interval: its rate "
            f"{c.rate_per_page_per_s:.3g}/s is only a lower bound"
            for c in classes if math.log(c.rate_per_page_per_s) >= log_rate_hi - 1e-6]


def _spread_linear_tail(classes: list[PageClass], n_pages: int, t_max: float) -> tuple[list[PageClass], list[str]]:
    """A slowest class that never bends only fixes pages x rate: make it the cold remainder of the guest."""
    if len(classes) <= 1:
        return classes, []
    slow = classes[-1]
    others = sum(c.pages for c in classes[:-1])
    largest = max(c.pages for c in classes)
    free = n_pages - others
    # A sweep stays linear until it wraps (rate x T = 1), a poisson class bends at once.
    linear_x = 1.0 if slow.kind == "sweep" else LINEAR_REGIME_X
    if not (slow.rate_per_page_per_s * t_max < linear_x and slow.pages < largest and free > slow.pages):
        return classes, []
    spread = PageClass(free, slow.pages * slow.rate_per_page_per_s / free, slow.kind)
    note = (f"the slowest class stays linear over the trace ({slow.pages:.0f} pages at "
            f"{slow.rate_per_page_per_s:.3g}/s); only its write rate is determined, so it is "
            f"spread over the {free:.0f} pages no other class holds")
    return [*classes[:-1], spread], [note]


def _sweep_hint(classes: Sequence[PageClass], curve: _Curve, kinds: Sequence[str]) -> list[str]:
    """A poisson-only fit more than 5 % off: suggest allowing sweep classes."""
    if "sweep" in kinds or not classes:
        return []
    t, d = curve.window_s, curve.pages
    fitted = sum((c.dirtied(t) for c in classes), np.zeros_like(t))
    if float(np.max(np.abs(fitted - d) / np.maximum(d, 1.0))) <= 0.05:
        return []
    return ["the fit is off by more than 5 %: if the workload sweeps memory (each page once "
            "per cycle), allow sweep classes (kinds=('poisson', 'sweep'); drop --poisson-only)"]


def _trim_to_guest(classes: list[PageClass], n_pages: int) -> list[PageClass]:
    """Scale the classes down proportionally if the overshoot penalty left a sliver over the guest."""
    total = sum(c.pages for c in classes)
    if total <= n_pages:
        return classes
    return [PageClass(c.pages * n_pages / total, c.rate_per_page_per_s, c.kind) for c in classes]


def fit_classes(window_s: np.ndarray | Sequence[float], pages: np.ndarray | Sequence[float], n_pages: int,
                max_classes: int = 3, *, kinds: Sequence[str] = DEFAULT_KINDS,
                ) -> tuple[tuple[PageClass, ...], dict[str, Any]]:
    """Fit ``D(T) = sum_k n_k (1 - exp(-lambda_k T))`` to a measured working-set curve.

    ``n_k >= 0``, ``sum n_k <= n_pages`` and ``lambda_k > 0``. Residuals are
    weighted by ``1 / max(D, 1)`` so short windows (which decide downtime)
    count as much as long ones. ``kinds`` (default both) allows ``"poisson"``
    classes and ``"sweep"`` classes (``n min(1, lambda T)``: each page written
    once per cycle of ``1 / lambda``, as a sequential or permutation sweep);
    pass ``kinds=("poisson",)`` for the pure exponential form.

    Steps: NNLS over a dictionary of log-spaced rates from ``1e-3 / T_max`` to
    ``20 / T_min`` gives candidate classes; for each class count K up to
    ``max_classes`` bounded least squares refines every K-subset of the
    leading candidates; K is chosen by BIC on the relative residuals, with a
    noise floor of 0.1 % so that a curve already fitted to that precision gets
    no extra classes. Classes whose rates are within a factor 1.5 are merged,
    and classes under half a page dropped. Rates at the upper bound mean "dirty
    in every interval": only a lower bound on the rate is observable. A class
    still linear over the longest window (``rate * T_max < 0.02``; for a
    sweep, one that never wraps, ``rate * T_max < 1``) determines
    only ``pages * rate``; if it is not already the largest class it is spread
    over the pages no other class holds, as the cold remainder (noted in the
    report).

    Returns ``(classes, report)`` with classes sorted hottest first; ``report``
    holds ``rmse_pages``, ``max_rel_error``, ``r2``, ``residuals`` (per window:
    ``window_s``, ``observed``, ``fitted``, ``residual``), ``n_classes``,
    ``criterion`` (BIC per K tried) and ``notes``.
    """
    curve = _checked_curve(window_s, pages, n_pages, max_classes, kinds)
    t, d = curve.window_s, curve.pages
    if d.max() <= 0:
        return (), _report((), t, d, {}, ["the trace dirties no pages"])
    notes: list[str] = []
    if len(t) < 4:
        notes.append(f"only {len(t)} window length(s): a class's pages and rate are barely determined; "
                     "use a trace of more intervals")
    best = _best_fits(curve, max_classes, kinds)
    criterion = _criterion(best, len(t))
    k_best = min(criterion, key=lambda k: (criterion[k], k))
    classes = _fit_to_classes(best[k_best])
    notes += _saturated_notes(classes, curve.log_rate_bounds[1])
    classes, spread = _spread_linear_tail(classes, n_pages, float(t[-1]))
    notes += spread
    notes += _sweep_hint(classes, curve, kinds)
    classes = _trim_to_guest(classes, n_pages)
    return tuple(classes), _report(tuple(classes), t, d, criterion, notes)


def _distinct(x: np.ndarray, kinds: list[str], k: int) -> bool:
    """No negligible class and no two same-kind classes within MERGE_RATE_FACTOR."""
    if (x[:k] < 0.5).any():
        return False
    lr = x[k:]
    for i in range(k):
        for j in range(i + 1, k):
            if kinds[i] == kinds[j] and abs(lr[i] - lr[j]) < math.log(MERGE_RATE_FACTOR):
                return False
    return True


def _report(classes: tuple[PageClass, ...], t: np.ndarray, d: np.ndarray, criterion: dict[int, float],
            notes: list[str]) -> dict[str, Any]:
    fitted = np.zeros_like(t)
    for c in classes:
        fitted = fitted + c.dirtied(t)
    res = fitted - d
    ss_tot = float(np.sum((d - d.mean()) ** 2))
    rel = np.abs(res) / np.maximum(d, 1.0)
    return {
        "model": "D(T) = sum_k n_k f_k(lambda_k T); f = 1 - exp(-x) (poisson) or min(1, x) (sweep)",
        "n_classes": len(classes),
        "n_windows": len(t),
        "rmse_pages": float(np.sqrt(np.mean(res**2))),
        "max_rel_error": float(rel.max()),
        "r2": 1.0 - float(np.sum(res**2)) / ss_tot if ss_tot > 0 else (1.0 if not res.any() else 0.0),
        "weighting": "relative (1 / max(D, 1))",
        "criterion": {str(k): v for k, v in sorted(criterion.items())},
        "residuals": [{"window_s": float(a), "observed": float(b), "fitted": float(c), "residual": float(e)}
                      for a, b, c, e in zip(t, d, fitted, res, strict=True)],
        "notes": notes,
    }


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------
# The metadata keys of traces/README.md worth carrying into a model's provenance.
_META_SUMMARY_KEYS = ("hypervisor", "host", "collector", "guest_memory_bytes", "workload", "collected_at",
                      "interval_s", "zero_page_fraction", "miglab_version")


def calibrate(trace: Trace, max_classes: int = 3, *, kinds: Sequence[str] = DEFAULT_KINDS,
              windows: Sequence[int] | None = None, progress: bool | None = None) -> DirtyModel:
    """Fit a :class:`DirtyModel` to ``trace``'s working-set curve.

    The fitted classes are followed by a rate-zero class holding the pages no
    fitted class holds, so the classes cover the guest (the first pass sends
    them all). ``zero_page_fraction`` comes from the trace metadata key of
    that name when present. ``fit`` is :func:`fit_classes`'s report plus the window lengths in
    intervals; ``source`` records the trace path, its sha256, a summary of its
    metadata and the miglab version.
    """
    from . import __version__

    window_s, pages = working_set_curve(trace, windows, progress=progress)
    classes, report = fit_classes(window_s, pages, trace.n_pages, max_classes, kinds=kinds)
    zpf = trace.meta.get("zero_page_fraction", 0.0)
    try:
        zpf = float(zpf)
        if not 0.0 <= zpf <= 1.0:
            raise ValueError
    except (TypeError, ValueError):
        raise TraceError(trace.path or "<trace>", f"metadata zero_page_fraction {zpf!r} is not in [0, 1]") from None
    interval_s = float(np.mean(trace.t_end_s - trace.t_start_s))
    # The engine sends every class's pages in the first pass, so pages no class holds must
    # still be a class: rate zero, as sim.workload.spec_model does for never-written memory.
    untouched = trace.n_pages - sum(c.pages for c in classes)
    if untouched >= 0.5:
        classes = (*classes, PageClass(float(untouched), 0.0))
    report = {**report, "interval_s": interval_s, "trace_intervals": trace.n_intervals,
              "untouched_pages": max(0.0, float(untouched))}
    source = {
        "trace": trace.path,
        "trace_sha256": trace.sha256,
        "trace_meta": {k: trace.meta[k] for k in _META_SUMMARY_KEYS if k in trace.meta},
        "miglab_version": __version__,
    }
    return DirtyModel(trace.n_pages, trace.page_size, classes, zpf, report, source)


def format_classes(model: DirtyModel) -> str:
    """A plain-text table of ``model``'s classes and fit error."""
    mib = 2**20 / model.page_size
    lines = [f"{'class':<6}{'kind':<9}{'pages':>14}{'MiB':>12}{'rate/page/s':>14}{'dirty MiB/s':>14}"]
    for i, c in enumerate(model.classes):
        lines.append(f"{i:<6}{c.kind:<9}{c.pages:>14.0f}{c.pages / mib:>12.2f}{c.rate_per_page_per_s:>14.4g}"
                     f"{c.pages * c.rate_per_page_per_s / mib:>14.2f}")
    total_w = model.write_rate_pages_per_s
    lines.append(f"guest {model.n_pages} pages ({model.memory_bytes / 2**30:.3g} GiB); implied write rate "
                 f"{total_w:.0f} pages/s = {total_w / mib:.2f} MiB/s")
    f = model.fit
    if f:
        lines.append(f"fit over {f.get('n_windows', '?')} windows: RMSE {f['rmse_pages']:.1f} pages, "
                     f"max relative error {100 * f['max_rel_error']:.2f} %, R^2 {f['r2']:.6f}")
        for note in f.get("notes", []):
            lines.append(f"note: {note}")
    return "\n".join(lines)
