"""The migration's pending-page state: what is still to send, as expected counts or packed bitmaps.

Two representations, one interface, so every strategy runs on either:

* :class:`ExpectedPages` keeps expected pending page *counts* per page class of
  a :class:`~sim.model.DirtyModel`. Cost is O(classes) per step, independent of
  guest size: this is what makes 1 TiB guests and 10,000-scenario sweeps cheap.
* :class:`ExactPages` keeps packed page bitmaps (one bit per page, uint64
  words, :mod:`sim.bitmap`) with running counts, fed page-exact dirty sets by a
  :class:`~sim.dirty.DirtSource`. Over a trace, the pages it touches are kept
  in their own compact index space and the rest as page ranges that only the
  first pass cuts, so no step after it passes over a whole-guest bitmap.
"""

from __future__ import annotations

import functools

import numpy as np

from .bitmap import (
    _ALL,
    _EMPTY,
    _PAIR,
    PageView,
    WordSet,
    _popcount,
    _set_range,
    _word_mask,
    clear_range,
    group_words,
    kth_set,
    n_words,
    pages_in_range,
    popcount_range,
)
from .dirty import DirtSource, _TouchedPages
from .model import DirtyModel, PageClass

#: ``ndarray.sum`` without its Python wrapper (the same reduction): post-copy sums 3-element arrays 1,600 times a run.
_sum = np.add.reduce

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
