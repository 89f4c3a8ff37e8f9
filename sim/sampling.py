"""Sampled page-exact mode: draw the pages a :class:`~sim.model.DirtyModel` dirties in one window.

:class:`sim.dirty.SampledDirt` calls :func:`sample_dirty_pages` for every
window the engine asks about; the expected size of a draw is
``model.working_set(window_s)``. Page layout: class ``k`` occupies the
contiguous range :func:`class_ranges` gives (classes back to back from page 0);
pages beyond the classes are never dirtied.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .errors import ConfigError
from .model import DirtyModel

#: Sampling draws at most this many random numbers per batch (bounds memory).
SAMPLE_BATCH = 1 << 23
#: Above this per-page probability one uint32 draw per page beats geometric skips.
DIRECT_DRAW_P = 0.08


def class_ranges(model: DirtyModel) -> list[tuple[int, int]]:
    """Page range ``[lo, hi)`` each class of ``model`` occupies, in class order.

    Classes sit back to back from page 0; fractional page counts are rounded
    at the cumulative boundaries, so the ranges tile ``[0, round(sum pages))``.
    """
    edges = np.rint(np.concatenate([[0.0], np.cumsum([c.pages for c in model.classes])])).astype(np.int64)
    edges = np.minimum(edges, model.n_pages)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield sorted batches of the indices in ``[0, n)`` kept by independent Bernoulli(p) trials.

    Geometric skips: the gap to the next success is Geometric(p), so the cost
    is O(n p), not O(n), and each batch holds at most SAMPLE_BATCH indices.
    """
    if n <= 0 or p <= 0.0:
        return
    if p >= 1.0:
        for a in range(0, n, SAMPLE_BATCH):
            yield np.arange(a, min(n, a + SAMPLE_BATCH), dtype=np.int64)
        return
    pos = -1
    while True:
        expect = (n - 1 - pos) * p
        size = int(min(SAMPLE_BATCH, expect + 6 * math.sqrt(expect + 1) + 16))
        gaps = rng.geometric(p, size=size)
        idx = pos + np.cumsum(gaps, dtype=np.int64)
        if idx[-1] >= n:
            yield idx[idx < n]
            return
        yield idx
        pos = int(idx[-1])


def sample_dirty_pages(model: DirtyModel, window_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted page numbers (int64) ``model`` dirties in one window of ``window_s`` seconds.

    * poisson class: every page is dirtied independently with
      ``p = 1 - exp(-rate * window_s)``. Below ``p = DIRECT_DRAW_P`` the draw
      uses geometric skips (cost O(pages dirtied)); above, one uint32 per page
      (probability resolution 2**-32).
    * sweep class: a contiguous run of ``pages * min(1, rate * window_s)``
      pages (stochastically rounded) starting at a uniformly random phase,
      wrapping within the class.

    Disjoint windows are independent draws, which is exact for poisson
    classes (memoryless) and an approximation for sweeps. Memory is 8 bytes
    per page returned plus ``SAMPLE_BATCH`` draws at a time.
    """
    out = list(sample_page_batches(model, window_s, rng))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def sample_page_batches(model: DirtyModel, window_s: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """:func:`sample_dirty_pages` as sorted batches of at most :data:`SAMPLE_BATCH` pages.

    The same draws in the same order, but memory is one batch instead of 8 bytes per dirtied page:
    a window of a 1 TiB guest can dirty hundreds of millions of pages.
    """
    if window_s < 0 or not math.isfinite(window_s):
        raise ConfigError(f"window_s must be finite and >= 0, got {window_s}")
    for c, (lo, hi) in zip(model.classes, class_ranges(model), strict=True):
        n = hi - lo
        x = c.rate_per_page_per_s * window_s
        if n <= 0 or x <= 0:
            continue
        if c.kind == "sweep":
            run_f = n * min(1.0, x)
            run = int(run_f) + int(rng.random() < run_f - int(run_f))
            start = int(rng.integers(n))
            first = min(run, n - start)
            yield np.arange(lo, lo + run - first, dtype=np.int64)
            yield np.arange(lo + start, lo + start + first, dtype=np.int64)
            continue
        p = -math.expm1(-x)
        if p < DIRECT_DRAW_P:
            for batch in _bernoulli_positions(n, p, rng):
                yield batch + lo
            continue
        thr = int(round(p * 2.0**32))
        for a in range(lo, hi, SAMPLE_BATCH):
            b = min(a + SAMPLE_BATCH, hi)
            if thr >= 2**32:
                yield np.arange(a, b, dtype=np.int64)
            else:
                hit = rng.integers(0, 2**32, size=b - a, dtype=np.uint32) < np.uint32(thr)
                yield a + np.flatnonzero(hit)
