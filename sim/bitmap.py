"""Packed page bitmaps: one bit per guest page, little bit order, rows padded to whole uint64 words.

The layout of :meth:`sim.trace.Trace.bitmap`. :mod:`sim.calibrate` builds one
row per trace interval and ORs them into windows; these are the primitives.
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
