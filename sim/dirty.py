"""Sources of dirty pages: a recorded trace replayed, or page sets sampled from a model.

The pending-page state they feed is :mod:`sim.pending`.

Two representations, one interface, so every strategy runs on either:

* :class:`ExpectedPages` keeps expected pending page *counts* per page class of
  a :class:`~sim.model.DirtyModel`. Cost is O(classes) per step, independent of
  guest size: this is what makes 1 TiB guests and 10,000-scenario sweeps cheap.
* :class:`ExactPages` keeps packed page bitmaps (one bit per page, uint64
  words) with running counts and replays page-exact dirty sets, from a
  recorded trace (:class:`TraceDirt`) or sampled from a model
  (:class:`SampledDirt`). A set of dirty pages is OR-ed in word by word over
  the words it touches only; a round's sends clear whole word ranges in scan
  order. Over a trace, the pages it touches are kept in their own compact index
  space (1.7 MB for the 14 M pages of the 1 TiB benchmark trace, in cache) and
  the rest as page ranges that only the first pass cuts, so no step after it
  passes over a whole-guest bitmap.

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

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from .bitmap import (
    _ALL,
    _EMPTY,
    _ONE,
    _PAIR,
    PageView,
    WordSet,
    _nth_bit,
    group_words,
    n_words,
    pages_in_range,
)
from .model import DirtyModel
from .sampling import sample_page_batches
from .scenario import WithinInterval
from .trace import Trace

#: Memory a trace replay may spend keeping decoded intervals (16 bytes per touched word).
GROUPED_CACHE_BYTES = 512 * 2**20
#: Memory a trace's index may spend keeping its intervals' pages as compact indices (4 bytes a page).
RANK_CACHE_BYTES = 256 * 2**20
#: Most writes one page gets in one interval (m stays below ln(2 x intervals) + 1, so this never binds
#: for traces under ~10^20 intervals); also the stride that keys a page's write instants.
WRITE_SLOTS = 64
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


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


class _TouchedPages:
    """What a trace's rate inference needs, over the pages it touches only: their union bitmap, a
    rank (prefix popcount per word) to index a page among them, and how many intervals each changed in."""

    def __init__(self, trace: Trace) -> None:
        words = np.zeros(n_words(trace.n_pages), np.uint64)
        for i in range(trace.n_intervals):
            w, bits = group_words(trace.pages(i))
            words[w] |= bits  # words of one interval are distinct
        # Each word beside the count of touched pages before it, so a rank lookup is one gather.
        self._pairs = np.zeros((len(words), 2), np.uint64)
        self._pairs[:, 0] = words
        pc = np.bitwise_count(words)
        np.cumsum(pc[:-1], out=self._pairs[1:, 1], dtype=np.uint64)
        self.words = self._pairs[:, 0]
        self._items = self._pairs.view(_PAIR).reshape(-1)
        del words
        n_touched = int(self._pairs[-1, 1]) + int(pc[-1]) if len(pc) else 0
        self._counts: np.ndarray | None = None
        self._n_touched = n_touched
        self._trace = trace
        self._pages: np.ndarray | None = None
        self._all: np.ndarray | None = None
        self._ranks: dict[int, np.ndarray] = {}
        self._writes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        self._ranks_bytes = 0

    def interval_ranks(self, i: int) -> np.ndarray:
        """Compact indices (int64) of interval ``i``'s pages; kept (as uint32) within
        :data:`RANK_CACHE_BYTES`, since every replay of the trace ranks the same intervals again."""
        hit = self._ranks.get(i)
        if hit is not None:
            return hit.astype(np.int64)
        ranks = self.rank(self._trace.pages(i))
        if self._n_touched <= 2**32 and self._ranks_bytes + 4 * len(ranks) <= RANK_CACHE_BYTES:
            self._ranks[i] = ranks.astype(np.uint32)
            self._ranks_bytes += 4 * len(ranks)
        return ranks

    def interval_writes(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interval ``i``'s pages as compact indices and their mean writes m per interval (whole part
        uint8, fraction in 1/65536 uint16; see :func:`_write_tables`), kept like :meth:`interval_ranks`:
        they depend on the trace alone, not on a replay's seed."""
        ranks = self.interval_ranks(i)
        hit = self._writes.get(i)
        if hit is None:
            if self._tables is None:
                self._tables = _write_tables(self._trace.n_intervals)
            c = self.counts()[ranks]
            hit = (self._tables[0][c], self._tables[1][c])
            if self._ranks_bytes + 3 * len(ranks) <= RANK_CACHE_BYTES:
                self._writes[i] = hit
                self._ranks_bytes += 3 * len(ranks)
        return ranks, hit[0], hit[1]

    @property
    def n_touched(self) -> int:
        """How many pages the trace touches: the size of the compact index space."""
        return self._n_touched

    def rank_at(self, page: int) -> int:
        """How many touched pages lie below ``page`` (0 <= page <= n_pages)."""
        if page >= self._trace.n_pages:
            return self._n_touched
        w = page >> 6
        below = int(self._pairs[w, 0]) & ((1 << (page & 63)) - 1)
        return int(self._pairs[w, 1]) + below.bit_count()

    def is_touched(self, pages: np.ndarray) -> np.ndarray:
        """Whether the trace touches each page (booleans)."""
        return PageView(self.words)[pages]

    def select(self, c: int) -> int:
        """The page of compact index ``c`` (0 <= c < n_touched): the inverse of :meth:`rank`, by a
        binary search over the per-word counts (no list of the touched pages is kept)."""
        lo, hi = 0, len(self._pairs) - 1  # the word holding c: the last whose count before it is <= c
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if int(self._pairs[mid, 1]) <= c:
                lo = mid
            else:
                hi = mid - 1
        return lo * 64 + _nth_bit(int(self._pairs[lo, 0]), c - int(self._pairs[lo, 1]) + 1)

    def pages_in(self, lo: int, hi: int, compact: np.ndarray) -> np.ndarray:
        """The pages of the sorted compact indices ``compact``, all of pages [lo, hi)."""
        if not len(compact):
            return _EMPTY
        return pages_in_range(self.words, lo, hi)[compact - self.rank_at(lo)]

    def all_words(self) -> np.ndarray:
        """Every compact index set, as packed words (read-only)."""
        if self._all is None:
            n = self._n_touched
            words = np.full(n_words(n), _ALL, np.uint64)
            if n & 63:
                words[-1] = np.uint64((1 << (n & 63)) - 1)
            words.flags.writeable = False
            self._all = words
        return self._all

    def rank(self, pages: np.ndarray) -> np.ndarray:
        """Index of each (touched) page among the touched pages, in page order."""
        pair = self._items[pages >> 6].view(np.uint64).reshape(-1, 2)
        below = pair[:, 0] & (np.left_shift(_ONE, (pages & 63).astype(np.uint64)) - _ONE)
        return (pair[:, 1] + np.bitwise_count(below)).astype(np.int64)

    def counts(self) -> np.ndarray:
        """Per touched page, the number of intervals it changed in."""
        if self._counts is None:
            trace = self._trace
            n = trace.n_intervals
            counts = np.zeros(self._n_touched, np.uint16 if n < 65535 else np.uint32)
            for i in range(n):
                counts[self.interval_ranks(i)] += 1  # distinct pages within one interval; kept for replays
            self._counts = counts
        return self._counts


_TOUCHED_CACHE: dict[str, _TouchedPages] = {}


class _ByteBoundedCache:
    """Insertion-ordered cache that drops its oldest entries to stay within ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[tuple[str, int, bool], WordSet] = {}
        self.bytes = 0

    def get(self, key: tuple[str, int, bool]) -> WordSet | None:
        return self.items.get(key)

    def put(self, key: tuple[str, int, bool], value: WordSet) -> None:
        if value.nbytes > self.limit:
            return
        while self.items and self.bytes + value.nbytes > self.limit:
            self.bytes -= self.items.pop(next(iter(self.items))).nbytes
        self.items[key] = value
        self.bytes += value.nbytes


_GROUPED_CACHE = _ByteBoundedCache(GROUPED_CACHE_BYTES)


def _write_tables(n_intervals: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean writes m per interval as a function of how many intervals a page changed in (0..n):
    whole part (uint8) and fraction in 1/65536 (uint16). One entry per count, not per page."""
    n = n_intervals
    count: np.ndarray = np.arange(n + 1, dtype=np.uint16 if n < 65535 else np.uint32)
    share = np.minimum(count / max(n, 1), 1.0 - 0.5 / max(n, 1))  # a page in every interval: rate unknown
    lam_i = -np.log1p(-share)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(lam_i > 1e-12, lam_i / -np.expm1(-lam_i), 1.0)
    m = np.clip(m, 1.0, WRITE_SLOTS).astype(np.float32)
    whole = np.floor(m)
    return whole.astype(np.uint8), np.minimum(np.round((m - whole) * 65536.0), 65535).astype(np.uint16)


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
        self._touched: _TouchedPages | None = None
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
        self._ranks: dict[int, np.ndarray] = {}  # compact indices of the cached intervals' pages
        # Whole intervals as word sets, kept while they fit GROUPED_CACHE_BYTES: a replay that outlasts
        # the trace ORs each interval in again every cycle, without decoding it again. Shared between
        # replays of one trace (keyed by its sha256), as a sweep replays it thousands of times.
        self._grouped: dict[int, WordSet] = {}
        self._grouped_bytes = 0

    def _whole(self, i: int, compact: bool = False) -> WordSet:
        """Interval ``i``'s pages as a :class:`WordSet`, in page numbers or (``compact``) in compact
        indices of :meth:`touched_index` (decoded once per trace while the cache has room)."""
        key = (self.trace.sha256, i, compact) if self.trace.sha256 else None
        local = -1 - i if compact else i
        hit = self._grouped.get(local) or (_GROUPED_CACHE.get(key) if key else None)
        if hit is None:
            hit = WordSet.of_pages(self._touched_pages().interval_ranks(i) if compact else self.trace.pages(i))
            if key:
                _GROUPED_CACHE.put(key, hit)
            elif self._grouped_bytes + hit.nbytes <= GROUPED_CACHE_BYTES:
                self._grouped[local] = hit
                self._grouped_bytes += hit.nbytes
        return hit

    def touched_index(self) -> _TouchedPages:
        """The pages this trace can ever dirty and their compact indices (shared between replays):
        :meth:`compact_sets` speaks in these indices, and :class:`ExactPages` keeps them apart."""
        return self._touched_pages()

    def _touched_pages(self) -> _TouchedPages:
        if self._touched is None:
            key = self.trace.sha256
            hit = _TOUCHED_CACHE.get(key) if key else None
            if hit is None:
                hit = _TouchedPages(self.trace)
                if key:  # a sweep replays one trace thousands of times: infer the rates once
                    while len(_TOUCHED_CACHE) >= 4:
                        _TOUCHED_CACHE.pop(next(iter(_TOUCHED_CACHE)))
                    _TOUCHED_CACHE[key] = hit
            self._touched = hit
        return self._touched

    def _writes_of(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per page, the mean writes m per interval it changed in: whole part (uint8), fraction in 1/65536 (uint16)."""
        touched = self._touched_pages()
        if self._writes is None:
            self._writes = _write_tables(self.trace.n_intervals)
        return self._writes_at(touched.rank(pages))

    def _writes_at(self, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_writes_of` of the pages with compact indices ``ranks``."""
        if self._writes is None:
            self._writes = _write_tables(self.trace.n_intervals)
        c = self._touched_pages().counts()[ranks]
        return self._writes[0][c], self._writes[1][c]

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
                ranks, whole, frac = self._touched_pages().interval_writes(i)
                bits = _hash_bits(pages * WRITE_SLOTS, i, self.seed)
                k = whole + ((bits & np.uint64(0xFFFF)) < frac)
                t = s + (bits >> np.uint64(11)).astype(np.float64) * ((e - s) / 2**53)
                more = k > 1
                if more.any():
                    km = k[more].astype(np.int64) - 1
                    rep = np.repeat(pages[more], km)
                    j = 1 + np.arange(len(rep)) - np.repeat(np.cumsum(km) - km, km)
                    u = _unit_hash(rep * WRITE_SLOTS + j, i, self.seed)
                    pages, t = np.concatenate([pages, rep]), np.concatenate([t, s + u * (e - s)])
                    ranks = np.concatenate([ranks, np.repeat(ranks[more], km)])
                self._ranks[i] = ranks
                hit = (pages, t)
            if len(self._cache) >= 8:
                gone = next(iter(self._cache))
                self._cache.pop(gone)
                self._ranks.pop(gone, None)
            self._cache[i] = hit
        return hit

    def _interval_ranks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_interval`'s pages as compact indices of :meth:`touched_index`, and their instants."""
        pages, t = self._interval(i)
        ranks = self._ranks.get(i)
        if ranks is None:  # "once": no rates were looked up; the repeats of "poisson" are ranked above
            ranks = self._ranks[i] = self._touched_pages().interval_ranks(i)
        return ranks, t

    def union_words(self) -> np.ndarray:
        """Packed bitmap of every page the trace touches (read-only; shared between replays)."""
        return self._touched_pages().words

    def _all_pages(self) -> np.ndarray:
        if self._all is None:
            self._all = pages_in_range(self.union_words(), 0, self.n_pages)
        return self._all

    def _spans(self, g0: float, g1: float) -> Iterator[tuple[int, float, float, float, bool]]:
        """The intervals a (trace-time) window [g0, g1) shorter than the trace covers:
        ``(interval, lo, hi, base, whole)`` with the window as [lo, hi) in cycle time from ``base``."""
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
                yield i, lo, hi, base, not (self.starts[i] < lo or self.ends[i] > hi)
            if hi <= self.period:
                break
            cycle += 1

    def _scaled(self, g0: float, g1: float) -> tuple[float, float, bool]:
        """The window in trace time and whether it is empty; sets ``looped``."""
        g0, g1 = g0 * self.time_scale, g1 * self.time_scale
        if g1 <= g0 or self.trace.n_intervals == 0:
            return g0, g1, True
        if g1 > self.period:
            self.looped = True
        return g0, g1, False

    def window(self, g0: float, g1: float) -> tuple[np.ndarray, np.ndarray]:
        g0, g1, empty = self._scaled(g0, g1)
        if empty:
            return np.zeros(0, np.int64), np.zeros(0)
        if g1 - g0 >= self.period:  # a window longer than the trace sees every page the trace ever touched
            pages = self._all_pages()
            return pages, np.full(len(pages), g0 / self.time_scale)
        out_p: list[np.ndarray] = []
        out_t: list[np.ndarray] = []
        for i, lo, hi, base, whole in self._spans(g0, g1):
            pages, t = self._interval(i)
            if not whole:
                keep = (t >= lo) & (t < hi)
                pages, t = pages[keep], t[keep]
            out_p.append(pages)
            out_t.append((t + base) / self.time_scale)
        if not out_p:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(out_p), np.concatenate(out_t)

    def dirty_sets(self, g0: float, g1: float) -> Iterator[np.ndarray | WordSet]:
        """The pages of :meth:`window` as pieces that are each sorted (repeats allowed), without instants.

        An interval the window covers whole comes as its stored pages already packed, a
        :class:`WordSet` (no hashing, and decoded once while the cache has room); a partial one is
        its pages with an instant in the window, first writes then repeats. A window longer than the
        trace yields the union bitmap itself (uint64 words) in place of a page list.
        """
        g0, g1, empty = self._scaled(g0, g1)
        if empty:
            return
        if g1 - g0 >= self.period:
            yield self.union_words()
            return
        for i, lo, hi, _, whole in self._spans(g0, g1):
            if whole:
                yield self._whole(i)
                continue
            pages, t = self._interval(i)
            keep = (t >= lo) & (t < hi)
            nb = int(self.trace.indptr[i + 1] - self.trace.indptr[i])
            yield pages[:nb][keep[:nb]]
            if len(pages) > nb:
                yield pages[nb:][keep[nb:]]


    def compact_sets(self, g0: float, g1: float) -> Iterator[np.ndarray | WordSet]:
        """:meth:`dirty_sets` in the compact indices of :meth:`touched_index`: the same pieces (sorted,
        repeats allowed) and pages, a window longer than the trace as every index set (uint64 words)."""
        g0, g1, empty = self._scaled(g0, g1)
        if empty:
            return
        if g1 - g0 >= self.period:
            yield self._touched_pages().all_words()
            return
        for i, lo, hi, _, whole in self._spans(g0, g1):
            if whole:
                yield self._whole(i, compact=True)
                continue
            ranks, t = self._interval_ranks(i)
            keep = (t >= lo) & (t < hi)
            nb = int(self.trace.indptr[i + 1] - self.trace.indptr[i])
            yield ranks[:nb][keep[:nb]]
            if len(ranks) > nb:
                yield ranks[nb:][keep[nb:]]


def _skip_doubles(rng: np.random.Generator, n: int) -> None:
    """Advance ``rng`` exactly as ``rng.random(n)`` would, without drawing.

    PCG64 makes one double from each 64-bit output; ``advance`` also drops the buffered 32-bit half
    that ``integers(..., dtype=uint32)`` may hold, which ``random`` keeps, so that is put back.
    """
    bg = rng.bit_generator
    if n <= 0:
        return
    if not isinstance(bg, np.random.PCG64):
        rng.random(n)
        return
    before = bg.state
    bg.advance(n)
    after = bg.state
    after["has_uint32"], after["uinteger"] = before["has_uint32"], before["uinteger"]
    bg.state = after


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
        T = (g1 - g0) * self.time_scale
        if T <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        batches = list(sample_page_batches(self.model, T, self.rng))
        pages = np.concatenate(batches) if batches else np.zeros(0, np.int64)
        return pages, g0 + self.rng.random(len(pages)) * (g1 - g0)

    def dirty_sets(self, g0: float, g1: float) -> Iterator[np.ndarray]:
        """The pages of :meth:`window`, batch by batch, without instants (the generator moves on as
        if it had drawn them, so the stream stays that of :meth:`window`)."""
        T = (g1 - g0) * self.time_scale
        if T <= 0:
            return
        drawn = 0
        for batch in sample_page_batches(self.model, T, self.rng):
            drawn += len(batch)
            yield batch
        _skip_doubles(self.rng, drawn)
