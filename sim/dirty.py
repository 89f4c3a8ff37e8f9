"""Sources of dirty pages and the migration's pending-page state.

Two representations, one interface, so every strategy runs on either:

* :class:`ExpectedPages` keeps expected pending page *counts* per page class of
  a :class:`~sim.model.DirtyModel`. Cost is O(classes) per step, independent of
  guest size: this is what makes 1 TiB guests and 10,000-scenario sweeps cheap.
* :class:`ExactPages` keeps a boolean page map and replays page-exact dirty
  sets, from a recorded trace (:class:`TraceDirt`) or sampled from a model
  (:class:`SampledDirt`). All set work is vectorised numpy.

Time inside a dirty source is *guest time*: it advances only while the guest
runs, and slower when it is throttled or stalled. The engine converts.

Within a trace interval the collector only knows *that* a page changed, not
when, nor how often. How often is inferred from the trace itself: a page
changed in a share f of all intervals is taken as written by a Poisson process
of rate lambda with lambda x interval = -ln(1 - f), so given that it changed in
an interval it was written m = lambda I / (1 - exp(-lambda I)) times there on
average. Each (interval, page) pair gets round(m) writes (stochastically
rounded) at independent hashed instants. A window covering part of an
interval then sees a hot page with probability ~ 1 - exp(-lambda w) instead
of w / I: a page written every 10 ms is in every 50 ms window, not in
one in ten. Adjacent windows still cover the interval's pages exactly; only a
page's repeats can fall into several of them. (``within_interval="once"``
gives every page a single instant, the linear share.)
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

from .model import DirtyModel, PageClass
from .scenario import WithinInterval
from .trace import Trace

#: Most writes one page gets in one interval (m stays below ln(2 x intervals) + 1, so this never binds
#: for traces under ~10^20 intervals); also the stride that keys a page's write instants.
WRITE_SLOTS = 64
_WRITES_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
#: ``ndarray.sum`` without its Python wrapper (the same reduction): post-copy sums 3-element arrays 1,600 times a run.
_sum = np.add.reduce


def _hash_bits(pages: np.ndarray, interval: int, seed: int) -> np.ndarray:
    """Deterministic 64 random bits per (page, interval, seed); splitmix64-style, vectorised."""
    x = pages.astype(np.uint64) * _GOLD + np.uint64((interval * 0x632BE59BD9B4E019 + seed * 0x94D049BB133111EB)
                                                    & 0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(30)
    x *= _MIX
    x ^= x >> np.uint64(27)
    return x


def _unit_hash(pages: np.ndarray, interval: int, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per (page, interval, seed): the top 53 of :func:`_hash_bits`."""
    return (_hash_bits(pages, interval, seed) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


class DirtSource(Protocol):
    """Page-exact dirty events in guest time."""

    n_pages: int
    looped: bool

    def window(self, g0: float, g1: float) -> tuple[np.ndarray, np.ndarray]:
        """Pages dirtied in guest time [g0, g1) and the instant of each (may repeat pages)."""
        ...


class TraceDirt:
    """Replays a trace; loops it when the migration outlasts it (and says so via ``looped``)."""

    def __init__(self, trace: Trace, seed: int = 0, time_scale: float = 1.0,
                 within_interval: WithinInterval = "poisson") -> None:
        if within_interval not in ("poisson", "once"):
            raise ValueError(f"within_interval must be 'poisson' or 'once', not {within_interval!r}")
        self.trace = trace
        self.n_pages = trace.n_pages
        self.seed = seed
        self.within_interval = within_interval
        self._writes: tuple[np.ndarray, np.ndarray] | None = None
        # time_scale > 1 plays the trace faster: used to model reads on top of writes.
        self.time_scale = time_scale
        self.t0 = float(trace.t_start_s[0])
        self.period = float(trace.t_end_s[-1]) - self.t0
        self.starts = trace.t_start_s - self.t0
        self.ends = trace.t_end_s - self.t0
        self.looped = False
        self._all: np.ndarray | None = None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _writes_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Per page, the mean writes m per interval it changed in: whole part (uint8), fraction in 1/65536 (uint16)."""
        if self._writes is None:
            key = self.trace.sha256
            self._writes = _WRITES_CACHE.get(key) if key else None
        if self._writes is None:
            n = self.trace.n_intervals
            count = np.zeros(self.n_pages, np.uint16 if n < 65535 else np.uint32)
            for i in range(n):
                count[self.trace.pages(i)] += 1
            share = np.minimum(count / max(n, 1), 1.0 - 0.5 / max(n, 1))  # a page in every interval: rate unknown
            lam_i = -np.log1p(-share)
            with np.errstate(invalid="ignore", divide="ignore"):
                m = np.where(lam_i > 1e-12, lam_i / -np.expm1(-lam_i), 1.0)
            m = np.clip(m, 1.0, WRITE_SLOTS).astype(np.float32)
            whole = np.floor(m)
            self._writes = (whole.astype(np.uint8),
                            np.minimum(np.round((m - whole) * 65536.0), 65535).astype(np.uint16))
            if self.trace.sha256:  # a sweep replays one trace thousands of times: infer the rates once
                while len(_WRITES_CACHE) >= 4:
                    _WRITES_CACHE.pop(next(iter(_WRITES_CACHE)))
                _WRITES_CACHE[self.trace.sha256] = self._writes
        return self._writes

    def _interval(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded pages of interval ``i`` and their write instants; short rounds revisit the same intervals."""
        hit = self._cache.get(i)
        if hit is None:
            pages = self.trace.pages(i)
            s, e = self.starts[i], self.ends[i]
            if self.within_interval == "once":
                hit = (pages, s + _unit_hash(pages, i, self.seed) * (e - s))
            else:
                # Write j of a page is at hash(page x WRITE_SLOTS + j): independent uniform instants, as the
                # Poisson reading implies. The low 16 bits of write 0's hash round m stochastically, so the
                # common case (one write) costs one hash per page.
                whole, frac = self._writes_table()
                bits = _hash_bits(pages * WRITE_SLOTS, i, self.seed)
                k = whole[pages] + ((bits & np.uint64(0xFFFF)) < frac[pages])
                t = s + (bits >> np.uint64(11)).astype(np.float64) * ((e - s) / 2**53)
                more = k > 1
                if more.any():
                    km = k[more].astype(np.int64) - 1
                    rep = np.repeat(pages[more], km)
                    j = 1 + np.arange(len(rep)) - np.repeat(np.cumsum(km) - km, km)
                    u = _unit_hash(rep * WRITE_SLOTS + j, i, self.seed)
                    pages, t = np.concatenate([pages, rep]), np.concatenate([t, s + u * (e - s)])
                hit = (pages, t)
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = hit
        return hit

    def _all_pages(self) -> np.ndarray:
        if self._all is None:
            self._all = np.flatnonzero(self.trace.mask(range(self.trace.n_intervals)))
        return self._all

    def window(self, g0: float, g1: float) -> tuple[np.ndarray, np.ndarray]:
        g0, g1 = g0 * self.time_scale, g1 * self.time_scale
        if g1 <= g0 or self.trace.n_intervals == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        if g1 > self.period:
            self.looped = True
        if g1 - g0 >= self.period:  # a window longer than the trace sees every page the trace ever touched
            pages = self._all_pages()
            return pages, np.full(len(pages), g0 / self.time_scale)
        out_p: list[np.ndarray] = []
        out_t: list[np.ndarray] = []
        cycle = np.floor(g0 / self.period)
        while True:
            base = cycle * self.period
            lo, hi = g0 - base, g1 - base
            if lo >= self.period:
                cycle += 1
                continue
            a = int(np.searchsorted(self.ends, max(lo, 0.0), side="right"))
            b = int(np.searchsorted(self.starts, hi, side="left"))
            for i in range(a, b):
                pages, t = self._interval(i)
                s, e = self.starts[i], self.ends[i]
                if s < lo or e > hi:
                    keep = (t >= lo) & (t < hi)
                    pages, t = pages[keep], t[keep]
                out_p.append(pages)
                out_t.append((t + base) / self.time_scale)
            if hi <= self.period:
                break
            cycle += 1
        if not out_p:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(out_p), np.concatenate(out_t)


class SampledDirt:
    """Page-exact sets sampled from a model: each class a contiguous page range,
    each page dirtied in a window of length T with probability D_k(T)/n_k."""

    def __init__(self, model: DirtyModel, seed: int = 0, time_scale: float = 1.0) -> None:
        self.model = model
        self.n_pages = model.n_pages
        self.rng = np.random.default_rng([seed, 0xD1127])
        self.time_scale = time_scale
        self.looped = False

    def window(self, g0: float, g1: float) -> tuple[np.ndarray, np.ndarray]:
        from .calibrate import sample_dirty_pages  # geometric-skip sampler: no O(class size) draws

        T = (g1 - g0) * self.time_scale
        if T <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        pages = sample_dirty_pages(self.model, T, self.rng)
        return pages, g0 + self.rng.random(len(pages)) * (g1 - g0)


class ExpectedPages:
    """Expected pending pages per class. Pages are assumed independent within a class.

    The pending total is cached beside the per-class array, so :meth:`count` (which the engine
    calls several times per round) costs no reduction. Assigning :attr:`pending` (``pages.pending
    -= take`` included) drops the cache; change the array only through that attribute.
    """

    exact = False

    def __init__(self, model: DirtyModel, time_scale: float = 1.0) -> None:
        self.model = model
        self.n, self.lam, self.sweep = _class_arrays(model.classes, time_scale)
        self._any_sweep = bool(self.sweep.any())
        self._pending = np.zeros_like(self.n)
        self._total: float | None = 0.0
        self.n_pages = model.n_pages
        self.looped = False

    @property
    def pending(self) -> np.ndarray:
        """Expected pending pages per class."""
        return self._pending

    @pending.setter
    def pending(self, value: np.ndarray) -> None:
        self._pending = value
        self._total = None

    def fraction_dirtied(self, T: float) -> np.ndarray:
        x = self.lam * max(T, 0.0)
        if not self._any_sweep:
            return -np.expm1(-x)
        return np.where(self.sweep, np.minimum(1.0, x), -np.expm1(-x))

    def set_all(self) -> None:
        self._pending = self.n.copy()
        self._total = float(_sum(self._pending))

    def count(self) -> float:
        if self._total is None:
            self._total = float(_sum(self._pending))
        return self._total

    def add_dirty(self, g0: float, g1: float) -> float:
        """Union the pages dirtied in [g0, g1) into pending; return how many were new."""
        new = (self.n - self._pending) * self.fraction_dirtied(g1 - g0)
        self._pending += new
        self._total = float(_sum(self._pending))
        return float(_sum(new))

    def send(self, k: float) -> float:
        total = self.count()
        k = min(k, total)
        if total > 0:
            self._pending *= 1.0 - k / total
            self._total = float(_sum(self._pending))
        return float(k)

    def fresh_count(self) -> float:
        """Pending pages not written since :meth:`set_all`. Counts alone cannot tell: all pending."""
        return self.count()

    def send_counted(self, k: float) -> tuple[float, float]:
        """Send ``k`` pages; return (pages sent, how many of them were fresh)."""
        sent = self.send(k)
        return sent, sent

    def clear(self) -> None:
        self._pending[:] = 0.0
        self._total = 0.0


@functools.lru_cache(maxsize=256)
def _class_arrays(classes: tuple[PageClass, ...], time_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class pages, write rates and sweep flags (read-only: shared by every run of one model)."""
    n = np.array([c.pages for c in classes], dtype=np.float64)
    lam = np.array([c.rate_per_page_per_s for c in classes], dtype=np.float64) * time_scale
    sweep = np.array([c.kind == "sweep" for c in classes], dtype=bool)
    for a in (n, lam, sweep):
        a.flags.writeable = False
    return n, lam, sweep


class ExactPages:
    """A page-exact pending map over a :class:`DirtSource`, sent in cyclic address order like QEMU's scan."""

    exact = True

    def __init__(self, source: DirtSource) -> None:
        self.source = source
        self.n_pages = source.n_pages
        self.pending = np.zeros(self.n_pages, dtype=bool)
        # Pending pages not written since the migration started: only these can still be zero pages.
        # Kept alongside pending (every method that clears a pending page clears it here too), so that
        # counting it is one pass with no temporaries.
        self.fresh = np.zeros(self.n_pages, dtype=bool)
        self.scan_pos = 0

    @property
    def looped(self) -> bool:
        return self.source.looped

    def set_all(self) -> None:
        self.pending[:] = True
        self.fresh[:] = True

    def count(self) -> float:
        return float(np.count_nonzero(self.pending))

    def fresh_count(self) -> float:
        """Pending pages not written since :meth:`set_all` (the first pass's pages still unsent and untouched)."""
        return float(np.count_nonzero(self.fresh))

    def add_dirty(self, g0: float, g1: float) -> float:
        pages, _ = self.source.window(g0, g1)
        if len(pages) == 0:
            return 0.0
        self.fresh[pages] = False
        # Counting before and after is cheaper than de-duplicating the page list (a sort or hash).
        before = np.count_nonzero(self.pending)
        self.pending[pages] = True
        return float(np.count_nonzero(self.pending) - before)

    def _next(self, k: float) -> np.ndarray:
        """The next ``k`` pending pages in scan order (not yet removed)."""
        k = int(round(k))
        if k <= 0:
            return np.zeros(0, np.int64)
        ahead = np.flatnonzero(self.pending[self.scan_pos:]) + self.scan_pos
        if len(ahead) < k:
            ahead = np.concatenate([ahead, np.flatnonzero(self.pending[: self.scan_pos])])
        return ahead[:k]

    def discard(self, pages: np.ndarray) -> None:
        """Remove ``pages`` from pending (sent, or delivered on a fault)."""
        self.pending[pages] = False
        self.fresh[pages] = False

    def _scan_past(self, sel: np.ndarray) -> np.ndarray:
        """Remove ``sel`` (scan-order pages) and move the scan past them; return ``sel``."""
        self.discard(sel)
        if len(sel):
            self.scan_pos = int(sel[-1] + 1) % self.n_pages
        return sel

    def take(self, k: float) -> np.ndarray:
        """Remove and return the next ``k`` pending pages in scan order."""
        return self._scan_past(self._next(k))

    def send(self, k: float) -> float:
        return float(len(self.take(k)))

    def send_counted(self, k: float) -> tuple[float, float]:
        """Send ``k`` pages in scan order; return (pages sent, how many of them were fresh)."""
        sel = self._next(k)
        fresh_sent = float(np.count_nonzero(self.fresh[sel]))
        return float(len(self._scan_past(sel))), fresh_sent

    def clear(self) -> None:
        self.pending[:] = False
        self.fresh[:] = False
