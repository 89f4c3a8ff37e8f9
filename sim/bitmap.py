"""Packed page bitmaps: one bit per guest page, little bit order, rows padded to whole uint64 words.

The layout of :meth:`sim.trace.Trace.bitmap`. :mod:`sim.calibrate` builds one
row per trace interval and ORs them into windows; these are the primitives.
The second half works on uint64 words (``n_words``, ``group_words``,
:class:`WordSet`, range counts and clears, :func:`kth_set`, :class:`PageView`):
what the replay's pending set (:mod:`sim.pending`) and the trace's dirty
source (:mod:`sim.dirty`) are built of.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .trace import Trace


def row_bytes(n_bits: int) -> int:
    """Bytes of a packed bitmap of ``n_bits`` bits, padded to whole uint64 words."""
    return (n_bits + 63) // 64 * 8


def popcount(bitmap: np.ndarray) -> int:
    """Number of set bits in a packed bitmap (any unsigned dtype, any shape)."""
    b = np.ascontiguousarray(bitmap)
    if b.dtype == np.uint8 and b.size % 8 == 0:
        b = b.view(np.uint64)
    return int(np.bitwise_count(b).sum(dtype=np.int64))


def set_bits(bitmap: np.ndarray, pages: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """OR the bits of ``pages`` (page numbers relative to bit 0) into packed ``bitmap`` in place.

    ``bitmap`` is uint8 with little bit order. Scattering into a boolean array
    and packing it measured faster than ``np.bitwise_or.at`` or a ``reduceat``
    over bytes, even at 5 % density. ``scratch`` (an all-False bool array of
    ``8 * len(bitmap)``) avoids a fresh allocation; it is left all-False.
    """
    if len(pages) == 0:
        return
    n_bits = 8 * len(bitmap)
    mask = np.zeros(n_bits, dtype=bool) if scratch is None else scratch
    mask[pages] = True
    bitmap |= np.packbits(mask, bitorder="little")
    if scratch is not None:
        mask[pages] = False


def interval_bitmaps(trace: Trace, intervals: Sequence[int] | None = None) -> np.ndarray:
    """Packed bitmaps of ``intervals`` (default all) as an ``(n, row_bytes)`` uint8 array.

    Rows are padded to whole uint64 words (``row_bytes = ceil(n_pages / 64) * 8``);
    padding bits are zero. Memory is ``n * n_pages / 8`` bytes: callers with
    huge traces should go through :func:`sim.calibrate.working_set_curve`, which streams.
    """
    idx = range(trace.n_intervals) if intervals is None else list(intervals)
    rb = row_bytes(trace.n_pages)
    out = np.zeros((len(idx), rb), dtype=np.uint8)
    scratch = np.zeros(8 * rb, dtype=bool)
    for r, i in enumerate(idx):
        set_bits(out[r], trace.pages(i), scratch)
    return out


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
