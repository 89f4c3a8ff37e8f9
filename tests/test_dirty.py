"""Packed page sets (sim.dirty) against the one-byte-per-page reference they replaced."""

from __future__ import annotations

import numpy as np
import pytest

from sim import bitmap, dirty
from sim.bitmap import kth_set, pages_in_range, popcount_range
from sim.dirty import SampledDirt, TraceDirt
from sim.model import DirtyModel, PageClass
from sim.pending import ExactPages
from sim.trace import make_trace


class _RefPages:
    """The boolean-map ExactPages of miglab <= 0.x: the behaviour the packed one must keep."""

    def __init__(self, n: int) -> None:
        self.n_pages = n
        self.pending = np.zeros(n, bool)
        self.fresh = np.zeros(n, bool)
        self.scan_pos = 0

    def set_all(self) -> None:
        self.pending[:] = True
        self.fresh[:] = True

    def add(self, pages: np.ndarray) -> float:
        self.fresh[pages] = False
        before = np.count_nonzero(self.pending)
        self.pending[pages] = True
        return float(np.count_nonzero(self.pending) - before)

    def send_counted(self, k: float) -> tuple[float, float]:
        k = int(round(k))
        if k <= 0:
            return 0.0, 0.0
        ahead = np.flatnonzero(self.pending[self.scan_pos:]) + self.scan_pos
        if len(ahead) < k:
            ahead = np.concatenate([ahead, np.flatnonzero(self.pending[: self.scan_pos])])
        sel = ahead[:k]
        fresh = float(np.count_nonzero(self.fresh[sel]))
        self.discard(sel)
        if len(sel):
            self.scan_pos = int(sel[-1] + 1) % self.n_pages
        return float(len(sel)), fresh

    def discard(self, pages: np.ndarray) -> None:
        self.pending[pages] = False
        self.fresh[pages] = False


class _ListSource:
    """A DirtSource that hands out prepared page lists, one per add_dirty call."""

    looped = False

    def __init__(self, n: int, lists: list[np.ndarray]) -> None:
        self.n_pages = n
        self.lists = list(lists)

    def window(self, g0: float, g1: float) -> tuple[np.ndarray, np.ndarray]:
        pages = self.lists.pop(0)
        return pages, np.zeros(len(pages))


@pytest.mark.parametrize("n", [1, 63, 64, 1000, 4097])
def test_packed_pages_match_the_boolean_reference(n):
    rng = np.random.default_rng(n)
    steps = 60
    lists = [rng.integers(0, n, rng.integers(0, 3 * n // 2 + 2)) for _ in range(steps)]
    packed, ref = ExactPages(_ListSource(n, lists)), _RefPages(n)
    packed.set_all()
    ref.set_all()
    for step in range(steps):
        assert packed.add_dirty(0.0, 1.0) == ref.add(lists[step])
        k = float(rng.integers(0, n + 3)) * (0.3 if step % 3 else 1.5)
        assert packed.send_counted(k) == ref.send_counted(k)
        assert packed.scan_pos == ref.scan_pos
        if step % 7 == 0:
            gone = rng.integers(0, n, 5)
            packed.discard(gone)
            ref.discard(gone)
        assert packed.count() == np.count_nonzero(ref.pending)
        assert packed.fresh_count() == np.count_nonzero(ref.fresh)
        everything = np.arange(n)
        assert np.array_equal(packed.pending[everything], ref.pending)
    taken = packed.take(n / 2)
    assert np.all(ref.pending[taken]) and len(taken) == min(round(n / 2), np.count_nonzero(ref.pending))
    packed.clear()
    assert packed.count() == 0 and packed.fresh_count() == 0


def test_range_helpers_match_a_boolean_map():
    rng = np.random.default_rng(5)
    n = 1000
    bools = rng.random(n) < 0.3
    words = np.packbits(bools, bitorder="little")
    words = np.concatenate([words, np.zeros(-len(words) % 8, np.uint8)]).view(np.uint64)
    for _ in range(200):
        lo, hi = sorted(int(x) for x in rng.integers(0, n + 1, 2))
        assert popcount_range(words, lo, hi) == np.count_nonzero(bools[lo:hi])
        assert np.array_equal(pages_in_range(words, lo, hi), lo + np.flatnonzero(bools[lo:hi]))
        k = int(rng.integers(1, 60))
        q, found = kth_set(words, lo, hi, k, density=float(rng.choice([1e-6, 0.3, 1.0])))
        inside = lo + np.flatnonzero(bools[lo:hi])
        assert found == min(k, len(inside))
        assert q == (int(inside[found - 1]) + 1 if found else lo)


def test_page_batches_reproduce_the_calibrate_sampler_and_its_stream():
    from sim.sampling import sample_dirty_pages

    model = DirtyModel(n_pages=300_000, classes=(PageClass(1000, 50.0), PageClass(20_000, 0.5, "sweep"),
                                                 PageClass(200_000, 0.02), PageClass(79_000, 3.0)))
    for window_s in (0.01, 0.4, 3.0):
        a, b = np.random.default_rng(7), np.random.default_rng(7)
        a.integers(0, 2**32, size=3, dtype=np.uint32)  # leave a buffered 32-bit half behind
        b.integers(0, 2**32, size=3, dtype=np.uint32)
        expected = sample_dirty_pages(model, window_s, a)
        got = list(dirty.sample_page_batches(model, window_s, b))
        assert np.array_equal(np.concatenate(got), expected)
        assert all(np.all(np.diff(x) >= 0) for x in got)
        a.random(len(expected))
        dirty._skip_doubles(b, len(expected))
        assert a.bit_generator.state == b.bit_generator.state
        assert a.random() == b.random()


def test_sampled_dirty_sets_leave_the_same_generator_state_as_window():
    model = DirtyModel(n_pages=50_000, classes=(PageClass(2000, 20.0), PageClass(48_000, 0.1)))
    w, s = SampledDirt(model, seed=3), SampledDirt(model, seed=3)
    for g0, g1 in ((0.0, 0.2), (0.2, 1.7), (1.7, 1.71)):
        pages, _ = w.window(g0, g1)
        assert np.array_equal(np.concatenate(list(s.dirty_sets(g0, g1)) or [np.zeros(0, np.int64)]), pages)
    assert w.rng.bit_generator.state == s.rng.bit_generator.state


@pytest.mark.parametrize("mode", ["poisson", "once"])
def test_trace_dirty_sets_hold_the_pages_of_the_window(mode):
    rng = np.random.default_rng(2)
    n = 5000
    lists = [np.unique(np.concatenate([rng.integers(0, 50, 30), rng.integers(0, n, 200)])) for _ in range(12)]
    t = np.arange(13) * 0.5
    tr = make_trace(lists, t[:-1], t[1:], n_pages=n)
    a, b = TraceDirt(tr, seed=4, within_interval=mode), TraceDirt(tr, seed=4, within_interval=mode)
    for g0, g1 in ((0.0, 0.13), (0.13, 1.4), (1.4, 5.9), (5.9, 7.0), (7.0, 30.0), (30.0, 30.2)):
        pages, _ = a.window(g0, g1)
        pieces = list(b.dirty_sets(g0, g1))
        got = set()
        for p in pieces:
            if isinstance(p, bitmap.WordSet):  # a whole interval, packed
                p = p.as_bitmap(bitmap.n_words(n))
            got |= set(pages_in_range(p, 0, n).tolist()) if p.dtype == np.uint64 else set(p.tolist())
        assert got == set(pages.tolist())
        assert a.looped == b.looped


def test_write_table_over_touched_pages_is_the_per_page_formula():
    """The rate inference, tabulated by change count over touched pages, equals the per-page arithmetic."""
    rng = np.random.default_rng(9)
    n, intervals = 3000, 40
    lists = [np.unique(np.concatenate([rng.integers(0, 20, 15), rng.integers(0, n, 60)])) for _ in range(intervals)]
    t = np.arange(intervals + 1) * 0.5
    tr = make_trace(lists, t[:-1], t[1:], n_pages=n)
    count = np.zeros(n, np.uint16)
    for p in lists:
        count[p] += 1
    share = np.minimum(count / intervals, 1.0 - 0.5 / intervals)
    lam_i = -np.log1p(-share)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(lam_i > 1e-12, lam_i / -np.expm1(-lam_i), 1.0)
    m = np.clip(m, 1.0, dirty.WRITE_SLOTS).astype(np.float32)
    whole = np.floor(m)
    frac = np.minimum(np.round((m - whole) * 65536.0), 65535).astype(np.uint16)
    touched = np.flatnonzero(count)
    got_whole, got_frac = TraceDirt(tr)._writes_of(touched)
    assert np.array_equal(got_whole, whole.astype(np.uint8)[touched])
    assert np.array_equal(got_frac, frac[touched])


def test_group_words_and_word_sets_hold_the_pages_dense_or_sparse():
    """group_words (repeats allowed) and WordSet.of_pages (dense runs plus a sparse rest) give the
    bitmap of the pages, and a WordSet ORs into ExactPages exactly as its pages do (fresh or not)."""
    rng = np.random.default_rng(5)
    n = 200_000
    hot = rng.integers(10_000, 40_000, 20_000)  # dense enough for runs
    cold = rng.integers(0, n, 3_000)
    pages = np.sort(np.concatenate([hot, cold, hot[:500]]))  # repeats too
    ref = np.zeros(bitmap.n_words(n), np.uint64)
    np.bitwise_or.at(ref, pages >> 6, np.left_shift(np.uint64(1), (pages & 63).astype(np.uint64)))
    w, bits = bitmap.group_words(pages)
    assert np.all(np.diff(w) > 0)
    got = np.zeros_like(ref)
    got[w] = bits
    assert np.array_equal(got, ref)
    ws = bitmap.WordSet.of_pages(pages)
    assert ws.runs, "the hot range should be kept dense"
    assert np.array_equal(ws.as_bitmap(len(ref)), ref)
    assert ws.n_pages == len(np.unique(pages))

    class _Src:
        n_pages, looped = n, False

    for fresh in (True, False):
        a, b = ExactPages(_Src()), ExactPages(_Src())
        start = np.sort(rng.integers(0, n, 5_000))
        for x in (a, b):
            if fresh:
                x.set_all()
                x.send(n // 3)  # pending and fresh from page n // 3 on
            else:
                x._or_pages(start)
        a._or_set(ws)
        b._or_pages(pages)
        assert a.count() == b.count() and a.fresh_count() == b.fresh_count()
        assert np.array_equal(a._c.bits, b._c.bits)


@pytest.mark.parametrize("seed", range(6))
def test_compact_index_pending_set_matches_the_whole_guest_bitmap_and_brute_force(seed):
    """ExactPages over a trace keeps touched pages in compact indices and the rest apart; every
    operation the engine uses must give what one whole-guest bitmap and a boolean map give."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([64, 200, 1000, 4096, 5003]))
    hot = max(4, n // int(rng.choice([3, 10, 40])))
    lists = [np.unique(np.concatenate([rng.integers(0, hot, int(rng.integers(0, hot))),
                                       rng.integers(0, n, int(rng.integers(0, 1 + n // 30)))]))
             for _ in range(int(rng.integers(2, 9)))]
    t = np.arange(len(lists) + 1) * 0.5
    tr = make_trace(lists, t[:-1], t[1:], n_pages=n)
    mode = "once" if seed % 2 else "poisson"
    compact = ExactPages(TraceDirt(tr, seed, within_interval=mode))
    whole = ExactPages(TraceDirt(tr, seed, within_interval=mode), compact=False)
    assert compact._ix is not None and whole._ix is None
    ref, window = _RefPages(n), TraceDirt(tr, seed, within_interval=mode)
    everything = np.arange(n)
    g = 0.0
    for step in range(80):
        op = int(rng.integers(0, 8)) if step else 0
        if op == 0:
            for x in (compact, whole, ref):
                x.set_all()
        elif op in (1, 2):
            span = float(rng.choice([0.05, 0.3, 0.9, 5.0])) * rng.random()
            got = compact.add_dirty(g, g + span)
            assert got == whole.add_dirty(g, g + span) == ref.add(window.window(g, g + span)[0])
            g += span
        elif op in (3, 4):
            k = float(rng.integers(0, n + 3)) * float(rng.choice([0.01, 0.3, 1.2]))
            assert compact.send_counted(k) == whole.send_counted(k) == ref.send_counted(k)
        elif op == 5:
            k = float(rng.integers(0, n // 4 + 2))
            got = compact.take(k)
            assert np.array_equal(got, whole.take(k))
            assert np.all(ref.pending[got]) and len(got) == min(round(k), np.count_nonzero(ref.pending))
            ref.discard(got)
            if len(got):
                ref.scan_pos = int(got[-1] + 1) % n
        elif op == 6:
            gone = rng.integers(0, n, int(rng.integers(0, 20)))
            for x in (compact, whole, ref):
                x.discard(gone)
        else:
            if rng.random() < 0.5:
                pos = int(rng.integers(0, n))
                compact.scan_pos = whole.scan_pos = ref.scan_pos = pos
            else:
                bools = rng.random(n) < 0.05
                words = np.packbits(bools, bitorder="little")
                words = np.concatenate([words, np.zeros(-len(words) % 8, np.uint8)]).view(np.uint64)
                compact.or_words(words)
                whole.or_words(words)
                ref.pending |= bools
                ref.fresh &= ~bools
        assert compact.scan_pos == whole.scan_pos == ref.scan_pos
        assert compact.count() == whole.count() == np.count_nonzero(ref.pending)
        assert compact.fresh_count() == whole.fresh_count() == np.count_nonzero(ref.fresh)
        assert np.array_equal(compact.pending[everything], ref.pending)
        assert np.array_equal(compact.pending_words, whole.pending_words)
    compact.clear()
    assert compact.count() == 0 and compact.fresh_count() == 0
