"""Sources of dirty pages and the migration's pending-page state.

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

import functools
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from .model import DirtyModel, PageClass
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


# --------------------------------------------------------------------------- packed page bitmaps
# Page p is bit p & 63 of word p >> 6 (the little-endian bit order of np.packbits(..., bitorder="little")).
_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_EMPTY = np.zeros(0, np.int64)
_PAIR = np.dtype((np.void, 16))  # two uint64 words moved as one item


def n_words(n_pages: int) -> int:
    """uint64 words of a packed bitmap of ``n_pages`` pages."""
    return (n_pages + 63) // 64


def group_words(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (non-decreasing, repeats allowed) pages -> the distinct words they touch and each word's bits."""
    if len(pages) > 1 and not (pages[1:] != pages[:-1]).all():
        pages = pages[np.concatenate(([True], pages[1:] != pages[:-1]))]  # repeats are adjacent
    w = pages >> 6
    bits = np.left_shift(_ONE, (pages & 63).astype(np.uint64))
    if len(w) < 2:
        return w, bits
    # The pages are distinct now, so a word's bits are distinct too and their OR is their sum: a
    # difference of one running sum (exact: uint64 wraps modulo 2**64 and no word's sum exceeds it)
    # where a reduceat costs twice as much.
    last = np.flatnonzero(w[1:] != w[:-1])
    ends = np.append(last, len(w) - 1)
    cs = np.cumsum(bits)
    out = cs[ends]
    out[1:] -= cs[last]
    return w[ends], out


#: Word sets are split into blocks of this many words; a block this full or fuller is kept dense.
DENSE_BLOCK_WORDS = 256
DENSE_MIN_WORDS = DENSE_BLOCK_WORDS // 8
#: More dense runs than this and the set stays sparse (each run costs a few numpy calls per OR).
DENSE_MAX_RUNS = 64


class WordSet:
    """A set of pages as packed words, ready to OR into a bitmap: word ranges the set fills densely as
    ``runs`` of ``(first word, words)``, the rest as distinct ``words`` with their ``bits``.

    A dense run is ORed in as a contiguous slice (a streaming pass); only the sparse rest needs a
    gather and scatter, one cache miss per word in a large guest. ``n_pages`` is the set's size.
    """

    __slots__ = ("words", "bits", "runs", "run_pages", "n_pages", "nbytes")

    def __init__(self, words: np.ndarray, bits: np.ndarray,
                 runs: tuple[tuple[int, np.ndarray], ...] = (), n_pages: int | None = None) -> None:
        self.words, self.bits, self.runs = words, bits, runs
        self.run_pages = tuple(_popcount(r) for _, r in runs)
        self.n_pages = _popcount(bits) + sum(self.run_pages) if n_pages is None else n_pages
        self.nbytes = words.nbytes + bits.nbytes + sum(r.nbytes for _, r in runs)

    def as_bitmap(self, n_words_: int) -> np.ndarray:
        """The set as a packed bitmap of ``n_words_`` words (for checks; replay never builds one)."""
        out = np.zeros(n_words_, np.uint64)
        for lo, run in self.runs:
            out[lo:lo + len(run)] |= run
        out[self.words] |= self.bits
        return out

    @classmethod
    def of_pages(cls, pages: np.ndarray) -> WordSet:
        """The set of sorted (repeats allowed) ``pages``, its dense blocks as runs."""
        w, bits = group_words(pages)
        n = len(pages) if len(pages) < 2 or (pages[1:] != pages[:-1]).all() else None
        if len(w) < DENSE_MIN_WORDS:
            return cls(w, bits, (), n)
        blk = w // DENSE_BLOCK_WORDS
        first = np.flatnonzero(np.concatenate(([True], blk[1:] != blk[:-1])))
        per_block = np.diff(np.append(first, len(w)))
        dense = per_block >= DENSE_MIN_WORDS
        if not dense.any():
            return cls(w, bits, (), n)
        dense_blocks = blk[first[dense]]
        # Runs of dense blocks; a gap of up to two blocks is cheaper to stream than to split at.
        breaks = np.flatnonzero(np.diff(dense_blocks) > 3)
        if len(breaks) + 1 > DENSE_MAX_RUNS:
            return cls(w, bits, (), n)
        lo_b = dense_blocks[np.concatenate(([0], breaks + 1))]
        hi_b = dense_blocks[np.append(breaks, len(dense_blocks) - 1)] + 1
        last_word = int(w[-1]) + 1
        runs = []
        in_run = np.zeros(len(w), bool)
        for a, b in zip(lo_b.tolist(), hi_b.tolist(), strict=True):
            lo, hi = a * DENSE_BLOCK_WORDS, min(b * DENSE_BLOCK_WORDS, last_word)
            i, j = np.searchsorted(w, [lo, hi])
            run = np.zeros(hi - lo, np.uint64)
            run[w[i:j] - lo] = bits[i:j]
            in_run[i:j] = True
            runs.append((lo, run))
        keep = ~in_run
        return cls(w[keep], bits[keep], tuple(runs), n)


def _popcount(words: np.ndarray) -> int:
    return int(np.bitwise_count(words).sum(dtype=np.int64))


def _word_mask(lo_bit: int, hi_bit: int) -> int:
    """Bits [lo_bit, hi_bit) of one word (0 <= lo_bit <= hi_bit <= 64), as a Python int."""
    return ((1 << hi_bit) - 1) ^ ((1 << lo_bit) - 1)


def popcount_range(words: np.ndarray, lo: int, hi: int) -> int:
    """Set bits of pages [lo, hi)."""
    if hi <= lo:
        return 0
    a, b = lo >> 6, (hi - 1) >> 6
    if a == b:
        return (int(words[a]) & _word_mask(lo & 63, ((hi - 1) & 63) + 1)).bit_count()
    head = (int(words[a]) & _word_mask(lo & 63, 64)).bit_count()
    tail = (int(words[b]) & _word_mask(0, ((hi - 1) & 63) + 1)).bit_count()
    return head + _popcount(words[a + 1:b]) + tail


def clear_range(words: np.ndarray, lo: int, hi: int) -> None:
    """Clear the bits of pages [lo, hi)."""
    if hi <= lo:
        return
    a, b = lo >> 6, (hi - 1) >> 6
    if a == b:
        words[a] &= np.uint64(~_word_mask(lo & 63, ((hi - 1) & 63) + 1) & 0xFFFFFFFFFFFFFFFF)
        return
    words[a] &= np.uint64(_word_mask(0, lo & 63))
    words[a + 1:b] = 0
    words[b] &= np.uint64(_word_mask(((hi - 1) & 63) + 1, 64))


def _set_range(words: np.ndarray, lo: int, hi: int) -> None:
    """Set the bits of pages [lo, hi)."""
    if hi <= lo:
        return
    a, b = lo >> 6, (hi - 1) >> 6
    if a == b:
        words[a] |= np.uint64(_word_mask(lo & 63, ((hi - 1) & 63) + 1))
        return
    words[a] |= np.uint64(_word_mask(lo & 63, 64))
    words[a + 1:b] = _ALL
    words[b] |= np.uint64(_word_mask(0, ((hi - 1) & 63) + 1))


def pages_in_range(words: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Sorted page numbers (int64) of the set bits of pages [lo, hi)."""
    if hi <= lo:
        return _EMPTY
    a, b = lo >> 6, (hi + 63) >> 6
    chunk = words[a:b]
    nz = np.flatnonzero(chunk)
    if not len(nz):
        return _EMPTY
    bits = np.unpackbits(chunk[nz].view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    r, c = np.nonzero(bits)
    pages = (nz[r] + a) * 64 + c
    return pages[(pages >= lo) & (pages < hi)]


def _nth_bit(v: int, n: int) -> int:
    """Position of the n-th (1-based) set bit of ``v``."""
    for _ in range(n - 1):
        v &= v - 1
    return (v & -v).bit_length() - 1


def _kth_in_counts(pc: np.ndarray, k: int, block: int = 4096) -> tuple[int, int]:
    """Index of the word holding the k-th (1-based) set bit, given per-word counts ``pc`` summing to >= k,
    and the rank of that bit within its word. Block sums first, so the running sum covers one block."""
    base = 0
    if len(pc) > 2 * block:
        full = len(pc) // block * block
        sums = np.cumsum(pc[:full].reshape(-1, block).sum(axis=1, dtype=np.int64))
        b = int(np.searchsorted(sums, k))
        if b < len(sums):
            base = b * block
            k -= int(sums[b - 1]) if b else 0
            pc = pc[base:base + block]
        else:
            base = full
            k -= int(sums[-1])
            pc = pc[full:]
    cs = np.cumsum(pc, dtype=np.int64)
    j = int(np.searchsorted(cs, k))
    return base + j, k - (int(cs[j - 1]) if j else 0)


def kth_set(words: np.ndarray, lo: int, hi: int, k: int, density: float = 1.0) -> tuple[int, int]:
    """Scan pages [lo, hi) for the first ``k`` set bits.

    Returns ``(q, found)``: ``q`` is just past the last of the (up to ``k``) set bits found, ``lo``
    when there are none. The scan reads words in chunks that double, starting from the size
    ``density`` (set bits per page) predicts, so its cost follows the pages it passes, not the guest.
    """
    if hi <= lo or k <= 0:
        return lo, 0
    w0, w1 = lo >> 6, (hi + 63) >> 6
    size = int(min(max(64.0, 2.0 * k / max(density, 1e-12) / 64.0 + 64.0), float(w1 - w0)))
    found, pos = 0, w0

    def masked(wi: int) -> int:
        v = int(words[wi])
        if wi == w0:
            v &= _word_mask(lo & 63, 64)
        if wi == w1 - 1 and hi & 63:
            v &= _word_mask(0, hi & 63)
        return v

    last_chunk = None
    while pos < w1:
        end = min(pos + size, w1)
        pc = np.bitwise_count(words[pos:end])
        if pos == w0:
            pc[0] = masked(w0).bit_count()
        if end == w1:
            pc[-1] = masked(w1 - 1).bit_count()
        total = int(pc.sum(dtype=np.int64))  # one pass; the running sum only in the chunk that holds the k-th bit
        if found + total >= k:
            j, need = _kth_in_counts(pc, k - found)
            wi = pos + j
            return wi * 64 + _nth_bit(masked(wi), need) + 1, k
        if total:
            last_chunk = (pos, pc)
        found += total
        pos, size = end, size * 2
    if last_chunk is None:
        return lo, 0
    last_word = last_chunk[0] + int(np.flatnonzero(last_chunk[1])[-1])
    return last_word * 64 + masked(last_word).bit_length(), found


class PageView:
    """Read-only page-indexed view of a packed bitmap: ``view[pages]`` is a boolean array."""

    def __init__(self, words: np.ndarray) -> None:
        self.words = words

    def __getitem__(self, pages: np.ndarray) -> np.ndarray:
        p = np.asarray(pages, dtype=np.int64)
        return ((self.words[p >> 6] >> (p & 63).astype(np.uint64)) & _ONE).astype(bool)



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


class _PackedPair:
    """Pending and fresh bits over one index space (``n_bits`` bits), interleaved word by word (one
    ``(words, 2)`` array) with running counts: an index's pending and fresh bits share a cache line.

    Fresh is a subset of pending: whatever clears a pending bit clears it here too.
    """

    __slots__ = ("n_bits", "bits", "pending", "fresh", "pairs", "tmp", "count", "fresh_count")

    def __init__(self, n_bits: int) -> None:
        self.n_bits = n_bits
        self.bits = np.zeros((n_words(n_bits), 2), np.uint64)
        self.pending = self.bits[:, 0]
        self.fresh = self.bits[:, 1]
        self.pairs = self.bits.view(_PAIR).reshape(-1)  # one 16-byte item per word pair: fast gathers
        self.tmp = np.empty(0, np.uint64)
        self.count = 0
        self.fresh_count = 0

    def fill(self, mask: np.ndarray | None = None, count: int | None = None) -> None:
        """Every bit pending and fresh (or the bits of ``mask``, which holds ``count`` of them)."""
        if mask is None:
            self.bits[:] = _ALL
            if self.n_bits & 63:
                self.bits[-1] = np.uint64((1 << (self.n_bits & 63)) - 1)
            self.count = self.fresh_count = self.n_bits
            return
        self.pending[:] = mask
        self.fresh[:] = mask
        self.count = self.fresh_count = _popcount(mask) if count is None else count

    def zero(self) -> None:
        self.bits[:] = 0
        self.count = self.fresh_count = 0

    def or_grouped(self, w: np.ndarray, bits: np.ndarray) -> None:
        """Set the ``bits`` of the distinct words ``w`` pending and not fresh."""
        if not len(w):
            return
        if not self.fresh_count:
            # No fresh bits left (after the first pass): the pending words alone, half the bytes moved.
            pend = self.pending[w]
            self.count += _popcount(bits & ~pend)
            pend |= bits
            self.pending[w] = pend
            return
        got = self.pairs[w]
        pair = got.view(np.uint64).reshape(-1, 2)
        pend, fresh = pair[:, 0], pair[:, 1]
        self.count += _popcount(bits & ~pend)
        lost = fresh & bits
        self.fresh_count -= _popcount(lost)
        fresh ^= lost
        pend |= bits
        self.pairs[w] = got

    def or_set(self, s: WordSet) -> None:
        """OR a :class:`WordSet` in: its dense runs as slices, its sparse rest word by word."""
        for (lo, run), run_pages in zip(s.runs, s.run_pages, strict=True):
            hi = lo + len(run)
            pend = self.pending[lo:hi]
            tmp = self._scratch(len(run))
            # New bits: the run's bits less those already pending.
            np.bitwise_and(run, pend, out=tmp)
            self.count += run_pages - _popcount(tmp)
            if self.fresh_count:
                fresh = self.fresh[lo:hi]
                np.bitwise_and(fresh, run, out=tmp)
                self.fresh_count -= _popcount(tmp)
                fresh ^= tmp
            pend |= run
        self.or_grouped(s.words, s.bits)

    def _scratch(self, n: int) -> np.ndarray:
        """A reused uint64 buffer of ``n`` words (a fresh large one would be mapped and faulted in each time)."""
        if len(self.tmp) < n:
            self.tmp = np.empty(max(n, 2 * len(self.tmp)), np.uint64)
        return self.tmp[:n]

    def or_words(self, words: np.ndarray, block: int = 1 << 16) -> None:
        """OR a whole bitmap of this index space in as written, in blocks (bounded temporaries)."""
        for a in range(0, len(words), block):
            src, pend, fresh = words[a:a + block], self.pending[a:a + block], self.fresh[a:a + block]
            self.count += _popcount(src & ~pend)
            pend |= src
            lost = fresh & src
            self.fresh_count -= _popcount(lost)
            fresh ^= lost

    def discard_grouped(self, w: np.ndarray, bits: np.ndarray) -> None:
        """Clear the ``bits`` of the distinct words ``w`` in both bitmaps."""
        if not len(w):
            return
        got = self.pairs[w]
        pair = got.view(np.uint64).reshape(-1, 2)
        self.count -= _popcount(pair[:, 0] & bits)
        self.fresh_count -= _popcount(pair[:, 1] & bits)
        pair &= ~bits[:, None]
        self.pairs[w] = got

    def clear_range(self, lo: int, hi: int, count_pending: bool) -> tuple[int, int]:
        """Clear bits [lo, hi) in both bitmaps; return (pending bits cleared if ``count_pending`` else 0,
        fresh bits cleared). The fresh count is kept; the pending one only when counted."""
        sent = fresh = 0
        if count_pending:
            sent = popcount_range(self.pending, lo, hi)
            self.count -= sent
        clear_range(self.pending, lo, hi)
        if self.fresh_count:  # after the first pass there are none: skip the pass
            fresh = popcount_range(self.fresh, lo, hi)
            clear_range(self.fresh, lo, hi)
            self.fresh_count -= fresh
        return sent, fresh


class _SplitView:
    """Read-only page-indexed view of an :class:`ExactPages`' pending set: ``view[pages]`` is a boolean array."""

    def __init__(self, pages: ExactPages) -> None:
        self._p = pages

    def __getitem__(self, pages: np.ndarray) -> np.ndarray:
        p = np.asarray(pages, dtype=np.int64)
        ix, c = self._p._ix, self._p._c
        u = self._p._untouched() if self._p._u_count() else None
        if ix is None:
            return PageView(c.pending)[p]
        t = ix.is_touched(p)
        out = np.zeros(len(p), bool)
        out[t] = PageView(c.pending)[ix.rank(p[t])]
        if u is not None and u.count:
            out[~t] = PageView(u.pending)[p[~t]]
        return out


#: Whole-guest words a split scan merges at most at once (the chunk that holds the k-th pending page).
_MERGE_WORDS = 4096
#: A scan range: pages [lo, hi) and the same pages' compact indices [c_lo, c_hi).
_Range = tuple[int, int, int, int]


class ExactPages:
    """A page-exact pending set over a :class:`DirtSource`, sent in cyclic address order like QEMU's scan.

    Pending and fresh pages are packed bitmaps with running counts, so :meth:`count` and
    :meth:`fresh_count` cost nothing. ``pending[pages]`` reads the pending bit of each page (booleans).

    When the source names the pages it can ever dirty (a trace: :meth:`TraceDirt.touched_index`), those
    pages are kept in their own compact index space -- the i-th touched page is bit i -- and every other
    page in a whole-guest bitmap that only the first pass, :meth:`discard` and :meth:`or_words` touch.
    A 1 TiB guest whose trace touches 14 M pages then ORs its dirty sets into 1.7 MB that stay in cache
    instead of a 32 MiB bitmap that costs a cache miss per word; scan ranges map to compact ranges by a
    rank, so the pages sent, their order and the scan position are those of one whole-guest bitmap.
    ``compact=False`` keeps one whole-guest bitmap (the reference).
    """

    exact = True

    def __init__(self, source: DirtSource, compact: bool = True) -> None:
        self.source = source
        self.n_pages = source.n_pages
        index = getattr(source, "touched_index", None) if compact else None
        self._ix: _TouchedPages | None = index() if index is not None else None
        self._c = _PackedPair(self._ix.n_touched if self._ix is not None else self.n_pages)
        #: Untouched pages (only with a compact index). Until something other than a scan reaches them,
        #: the pending (and fresh) ones are those in ``_u_ranges``, ``_u_n`` of them, and no bitmap exists:
        #: the first pass of a large guest then costs arithmetic, not passes over a whole-guest bitmap.
        self._u: _PackedPair | None = None
        self._u_ranges: list[tuple[int, int]] = []
        self._u_n = 0
        self.scan_pos = 0

    @property
    def looped(self) -> bool:
        return self.source.looped

    @property
    def pending(self) -> _SplitView:
        """``pending[pages]``: whether each page is pending."""
        return _SplitView(self)

    @property
    def pending_words(self) -> np.ndarray:
        """The pending pages as one whole-guest packed bitmap (read it, do not change it: without a
        compact index it is the bitmap itself and the counts would go stale)."""
        if self._ix is None:
            return self._c.pending
        out = self._untouched().pending.copy() if self._u_count() else np.zeros(n_words(self.n_pages), np.uint64)
        block = 1 << 16
        for a in range(0, len(out), block):  # bounded temporaries
            out[a:a + block] |= self._touched_words(a, min(a + block, len(out)))
        return out

    def _untouched(self) -> _PackedPair:
        """The untouched pages' bitmaps, made from the ranges on first need."""
        if self._u is None:
            assert self._ix is not None
            u = self._u = _PackedPair(self.n_pages)
            if self._u_n:
                mask = np.zeros(n_words(self.n_pages), np.uint64)
                for a, b in self._u_ranges:
                    _set_range(mask, a, b)
                mask &= ~self._ix.words
                u.fill(mask, self._u_n)
            self._u_ranges, self._u_n = [], 0
        return self._u

    def _untouched_in(self, a: int, b: int) -> int:
        """Untouched pages in pages [a, b)."""
        return (b - a) - (self._rank(b) - self._rank(a)) if b > a else 0

    def _u_ranges_in(self, lo: int, hi: int) -> list[tuple[int, int]]:
        return [(max(a, lo), min(b, hi)) for a, b in self._u_ranges if a < hi and b > lo]

    def _cut(self, lo: int, hi: int) -> int:
        """Take pages [lo, hi) out of the pending ranges; return how many pending untouched pages went."""
        out, gone = [], 0
        for a, b in self._u_ranges:
            if b <= lo or a >= hi:
                out.append((a, b))
                continue
            x, y = max(a, lo), min(b, hi)
            gone += self._untouched_in(x, y)
            if a < x:
                out.append((a, x))
            if y < b:
                out.append((y, b))
        self._u_ranges = out
        self._u_n -= gone
        return gone

    def _last_untouched(self, lo: int, hi: int) -> int | None:
        """The last untouched page in pages [lo, hi), or None (a backward scan in doubling chunks)."""
        assert self._ix is not None
        end, size = hi, 64
        while end > lo:
            start = max(lo, end - 64 * size)
            w0, w1 = start >> 6, (end + 63) >> 6
            inv = ~self._ix.words[w0:w1]
            inv[0] &= np.uint64(_word_mask(start & 63, 64))
            if end & 63:
                inv[-1] &= np.uint64(_word_mask(0, end & 63))
            nz = np.flatnonzero(inv)
            if len(nz):
                w = int(nz[-1])
                return (w0 + w) * 64 + int(inv[w]).bit_length() - 1
            end, size = start, size * 2
        return None

    def _u_count(self) -> int:
        return self._u.count if self._u is not None else self._u_n

    def set_all(self) -> None:
        self._c.fill()
        if self._ix is not None:
            self._u = None
            self._u_ranges, self._u_n = [(0, self.n_pages)], self.n_pages - self._ix.n_touched

    def count(self) -> float:
        return float(self._c.count + self._u_count())

    def fresh_count(self) -> float:
        """Pending pages not written since :meth:`set_all` (the first pass's pages still unsent and untouched)."""
        return float(self._c.fresh_count + (self._u.fresh_count if self._u is not None else self._u_n))

    def add_dirty(self, g0: float, g1: float) -> float:
        """Union the pages dirtied in [g0, g1) into pending; return how many were new."""
        before = self._c.count + self._u_count()
        c = self._c
        if self._ix is not None:
            # Pieces in compact indices: an interval's packed set, an index list, or every touched page.
            for piece in self.source.compact_sets(g0, g1):  # type: ignore[attr-defined]
                if isinstance(piece, WordSet):
                    c.or_set(piece)
                elif piece.dtype == np.uint64:
                    c.or_words(piece)
                elif len(piece):
                    c.or_grouped(*group_words(piece))
            return float(c.count + self._u_count() - before)
        sets = getattr(self.source, "dirty_sets", None)
        if sets is None:
            pages, _ = self.source.window(g0, g1)
            if len(pages):
                self._or_pages(np.unique(pages))
        else:
            for piece in sets(g0, g1):
                if isinstance(piece, WordSet):
                    c.or_set(piece)
                elif isinstance(piece, tuple):
                    c.or_grouped(*piece)
                elif piece.dtype == np.uint64:
                    self.or_words(piece)
                elif len(piece):
                    self._or_pages(piece)
        return float(c.count + self._u_count() - before)

    def _or_pages(self, pages: np.ndarray) -> None:
        """Set sorted (non-decreasing) ``pages`` pending and not fresh, over the words they touch only."""
        if self._ix is None:
            self._c.or_grouped(*group_words(pages))
            return
        t = self._ix.is_touched(pages)
        self._c.or_grouped(*group_words(self._ix.rank(pages[t])))
        if not t.all():
            self._untouched().or_grouped(*group_words(pages[~t]))

    def _or_set(self, s: WordSet) -> None:
        """OR a page-space :class:`WordSet` in."""
        if self._ix is None:
            self._c.or_set(s)
        else:
            self.or_words(s.as_bitmap(n_words(self.n_pages)))

    def or_words(self, words: np.ndarray) -> None:
        """OR a whole packed bitmap (``pending_words``' layout) into pending, as pages written."""
        ix = self._ix
        if ix is None:
            self._c.or_words(words)
            return
        self._c.or_grouped(*group_words(ix.rank(pages_in_range(words & ix.words, 0, self.n_pages))))
        rest = words & ~ix.words
        if rest.any():
            self._untouched().or_words(rest)

    def discard(self, pages: np.ndarray) -> None:
        """Remove ``pages`` from pending (sent, or delivered on a fault)."""
        if not len(pages):
            return
        pages = np.unique(pages)
        if self._ix is None:
            self._c.discard_grouped(*group_words(pages))
            return
        t = self._ix.is_touched(pages)
        self._c.discard_grouped(*group_words(self._ix.rank(pages[t])))
        if self._u_count() and not t.all():
            self._untouched().discard_grouped(*group_words(pages[~t]))

    def _rank(self, page: int) -> int:
        """Compact index of the first touched page at or after ``page`` (0 <= page <= n_pages)."""
        return page if self._ix is None else self._ix.rank_at(page)

    def _page_after(self, c: int) -> int:
        """The page just past compact index ``c - 1`` (c >= 1)."""
        return c if self._ix is None else self._ix.select(c - 1) + 1

    def _compact_pages(self, lo: int, hi: int, c_lo: int, c_hi: int) -> np.ndarray:
        """Pending touched pages of pages [lo, hi), whose compact indices are [c_lo, c_hi)."""
        idx = pages_in_range(self._c.pending, c_lo, c_hi)
        return idx if self._ix is None else self._ix.pages_in(lo, hi, idx)

    def _touched_words(self, w0: int, w1: int) -> np.ndarray:
        """Pending touched pages of words [w0, w1) as whole-guest packed words."""
        out = np.zeros(w1 - w0, np.uint64)
        lo, hi = 64 * w0, min(64 * w1, self.n_pages)
        w, bits = group_words(self._compact_pages(lo, hi, self._rank(lo), self._rank(hi)))
        out[w - w0] |= bits
        return out

    def _next(self, k: float) -> tuple[list[_Range], int]:
        """Scan ranges holding the next ``k`` pending pages in scan order (wrapping once), and how many
        they hold; moves the scan past them."""
        k = int(round(k))
        if k <= 0 or self._c.count + self._u_count() == 0:
            return [], 0
        if self._u_count():
            return self._next_split(k)
        c, start = self._c, self.scan_pos
        c0 = self._rank(start)
        density = c.count / max(c.n_bits, 1)
        q, found = kth_set(c.pending, c0, c.n_bits, k, density)
        end = self._page_after(q) if found else start  # just past the last page found
        ranges = [(start, end, c0, q)]
        if found < k:
            q2, found2 = kth_set(c.pending, 0, c0, k - found, density)
            if found2:
                end = self._page_after(q2)
                ranges.append((0, end, 0, q2))
            elif not found:
                return [], 0
            found += found2
        self.scan_pos = end % self.n_pages
        return ranges, found

    def _next_split(self, k: int) -> tuple[list[_Range], int]:
        """:meth:`_next` while untouched pages are pending: the scan runs over whole-guest pages."""
        start = self.scan_pos
        q, found = self._kth_split(start, self.n_pages, k)
        ranges = [(start, q, self._rank(start), self._rank(q))]
        if found < k:
            q2, found2 = self._kth_split(0, start, k - found)
            ranges.append((0, q2, 0, self._rank(q2)))
            if found2:
                q = q2
            elif not found:
                return [], 0
            found += found2
        self.scan_pos = q % self.n_pages
        return ranges, found

    def _u_words(self, w0: int, w1: int) -> np.ndarray:
        """Pending untouched pages of words [w0, w1) as whole-guest packed words (a copy)."""
        if self._u is not None:
            return self._u.pending[w0:w1].copy()
        assert self._ix is not None
        out = np.zeros(w1 - w0, np.uint64)
        for a, b in self._u_ranges_in(64 * w0, 64 * w1):
            _set_range(out, a - 64 * w0, b - 64 * w0)
        out &= ~self._ix.words[w0:w1]
        return out

    def _merged_in(self, lo: int, hi: int) -> int:
        """Pending pages in pages [lo, hi), untouched and touched."""
        if self._u is None:
            fu = sum(self._untouched_in(a, b) for a, b in self._u_ranges_in(lo, hi))
        else:
            fu = popcount_range(self._u.pending, lo, hi)
        return fu + popcount_range(self._c.pending, self._rank(lo), self._rank(hi))

    def _page_words(self, w0: int, w1: int) -> np.ndarray:
        """Pending pages of words [w0, w1) as whole-guest packed words (untouched and touched merged)."""
        return self._u_words(w0, w1) | self._touched_words(w0, w1)

    def _kth_split(self, lo: int, hi: int, k: int) -> tuple[int, int]:
        """:func:`kth_set` over the merged pending pages [lo, hi): counts from both parts (a range
        maps to a compact range by rank; pending untouched ranges count by arithmetic), in chunks
        that double as there, and only the chunk that holds the k-th page merged into whole-guest words."""
        if hi <= lo or k <= 0:
            return lo, 0
        c = self._c
        c_lo, c_hi = self._rank(lo), self._rank(hi)
        every = 2**62
        if self._u is None:  # pending untouched pages as ranges: counted, not scanned
            pieces = self._u_ranges_in(lo, hi)
            fu = sum(self._untouched_in(a, b) for a, b in pieces)
            qu = lo
            for a, b in reversed(pieces):
                last = self._last_untouched(a, b)
                if last is not None:
                    qu = last + 1
                    break
        else:
            qu, fu = kth_set(self._u.pending, lo, hi, every)
        qc, fc = kth_set(c.pending, c_lo, c_hi, every)
        if fu + fc <= k:  # all of them (the first pass): just past the last one
            q = max(qu if fu else lo, self._page_after(qc) if fc else lo)
            return q, fu + fc
        density = (fu + fc) / (hi - lo)
        size = int(max(64.0, 2.0 * k / density / 64.0 + 64.0))  # words
        found, pos = 0, lo
        while True:
            end = min(pos + 64 * size, hi)
            got = self._merged_in(pos, end)
            if found + got >= k:
                while end - pos > 64 * _MERGE_WORDS:  # halve down to a chunk that is cheap to merge
                    mid = (pos + (end - pos) // 2) & ~63
                    got = self._merged_in(pos, mid)
                    if found + got >= k:
                        end = mid
                    else:
                        found, pos = found + got, mid
                w0 = pos >> 6
                chunk = self._page_words(w0, (end + 63) >> 6)
                q, _ = kth_set(chunk, pos - 64 * w0, end - 64 * w0, k - found, density)
                return q + 64 * w0, k
            found += got
            pos, size = end, size * 2

    def _clear(self, ranges: list[_Range], sent: int) -> tuple[int, int]:
        """Clear scan ranges holding ``sent`` pending pages in both bitmaps; return (sent, fresh pages among them)."""
        fresh = u_sent = 0
        if self._u is None and self._u_n:
            for lo, hi, _, _ in ranges:
                s = self._cut(lo, hi)  # untouched pages in ranges are fresh too
                u_sent += s
                fresh += s
        elif self._u_count():
            for lo, hi, _, _ in ranges:
                s, f = self._untouched().clear_range(lo, hi, True)
                u_sent += s
                fresh += f
        for _, _, c_lo, c_hi in ranges:
            fresh += self._c.clear_range(c_lo, c_hi, False)[1]
        self._c.count -= sent - u_sent
        return sent, fresh

    def take(self, k: float) -> np.ndarray:
        """Remove and return the next ``k`` pending pages in scan order."""
        ranges, n = self._next(k)
        out = []
        for lo, hi, c_lo, c_hi in ranges:
            pages = self._compact_pages(lo, hi, c_lo, c_hi)
            if self._ix is not None:
                if self._u_count():
                    pages = np.sort(np.concatenate([pages, pages_in_range(self._untouched().pending, lo, hi)]))
            out.append(pages)
        self._clear(ranges, n)
        return np.concatenate(out) if out else _EMPTY

    def send(self, k: float) -> float:
        return float(self._clear(*self._next(k))[0])

    def send_counted(self, k: float) -> tuple[float, float]:
        """Send ``k`` pages in scan order; return (pages sent, how many of them were fresh)."""
        sent, fresh = self._clear(*self._next(k))
        return float(sent), float(fresh)

    def clear(self) -> None:
        self._c.zero()
        self._u, self._u_ranges, self._u_n = None, [], 0
