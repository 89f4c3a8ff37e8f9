"""The miglab dirty-page trace format (version 1) and fast bitmap access.

A trace is the set of guest pages whose *content changed* in each interval.
On disk it is a compressed ``.npz`` (numpy only; no pyarrow, so it works on
FreeBSD hosts) holding a delta-encoded CSR layout:

=================  ========  ==================================================
array              dtype     meaning
=================  ========  ==================================================
``format``         str       ``"miglab-trace"``
``version``        int64     format version, currently 1
``page_size``      int64     bytes per page
``n_pages``        int64     guest pages
``t_start_s``      float64   interval starts, seconds since collection start
``t_end_s``        float64   interval ends
``indptr``         int64     ``n_intervals + 1`` offsets into ``deltas``
``deltas``         uint32    per interval: first page number, then gaps between
                             sorted page numbers (uint64 if n_pages >= 2**32)
``meta_json``      str       JSON metadata (hypervisor, host, method, ...)
=================  ========  ==================================================

Delta encoding makes the page lists compress well (gaps are small and
repetitive) while decoding stays a single ``np.cumsum`` per interval.
See ``traces/README.md`` for the full description and the metadata keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_open
from .errors import MiglabError, TraceError

FORMAT_NAME = "miglab-trace"
FORMAT_VERSION = 1
_REQUIRED = ("format", "version", "page_size", "n_pages", "t_start_s", "t_end_s", "indptr", "deltas", "meta_json")


def _miglab_version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True, eq=False)
class Trace:
    """A loaded trace. Page lists stay delta-encoded until asked for.

    ``pages(i)`` returns interval ``i``'s sorted page numbers, ``bitmap(i)``
    (or ``union_bitmap``) a packed little-endian bitmap of ``n_pages`` bits.
    """

    page_size: int
    n_pages: int
    t_start_s: np.ndarray
    t_end_s: np.ndarray
    indptr: np.ndarray
    deltas: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""

    # -- shape --------------------------------------------------------------
    @property
    def n_intervals(self) -> int:
        return len(self.t_start_s)

    @property
    def memory_bytes(self) -> int:
        return self.n_pages * self.page_size

    @property
    def duration_s(self) -> float:
        return float(self.t_end_s[-1] - self.t_start_s[0]) if self.n_intervals else 0.0

    @property
    def counts(self) -> np.ndarray:
        """Pages changed per interval."""
        return np.diff(self.indptr)

    # -- decoding -----------------------------------------------------------
    def pages(self, i: int) -> np.ndarray:
        """Sorted page numbers (int64) changed in interval ``i``."""
        lo, hi = int(self.indptr[i]), int(self.indptr[i + 1])
        return np.cumsum(self.deltas[lo:hi], dtype=np.int64)

    def mask(self, intervals: Iterable[int]) -> np.ndarray:
        """Boolean array over pages: changed in any of ``intervals``."""
        m = np.zeros(self.n_pages, dtype=bool)
        for i in intervals:
            m[self.pages(i)] = True
        return m

    def bitmap(self, i: int) -> np.ndarray:
        """Packed bitmap (uint8, little bit order) of interval ``i``."""
        return np.packbits(self.mask([i]), bitorder="little")

    def union_bitmap(self, intervals: Iterable[int]) -> np.ndarray:
        """Packed bitmap of the union of ``intervals``: a page dirtied twice counts once."""
        return np.packbits(self.mask(intervals), bitorder="little")

    def unique_pages(self, intervals: Iterable[int]) -> int:
        """Number of distinct pages changed across ``intervals``."""
        return int(np.bitwise_count(self.union_bitmap(intervals)).sum())


def encode(page_lists: Sequence[np.ndarray], n_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """Delta-encode sorted page lists into ``(indptr, deltas)``."""
    counts = np.fromiter((len(p) for p in page_lists), dtype=np.int64, count=len(page_lists))
    indptr = np.zeros(len(page_lists) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    dtype = np.uint32 if n_pages < 2**32 else np.uint64
    if not len(page_lists) or indptr[-1] == 0:
        return indptr, np.zeros(0, dtype=dtype)
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in page_lists])
    deltas = np.diff(flat, prepend=0)
    starts = indptr[:-1][counts > 0]
    deltas[starts] = flat[starts]
    return indptr, deltas.astype(dtype)


def make_trace(page_lists: Sequence[np.ndarray], t_start_s: np.ndarray | Sequence[float], t_end_s: np.ndarray | Sequence[float], *,
               n_pages: int, page_size: int = 4096, meta: dict[str, Any] | None = None) -> Trace:
    """Build an in-memory trace from per-interval sorted page arrays (validated)."""
    indptr, deltas = encode(page_lists, n_pages)
    m = {"miglab_version": _miglab_version(), **(meta or {})}
    t = Trace(int(page_size), int(n_pages), np.asarray(t_start_s, dtype=np.float64),
              np.asarray(t_end_s, dtype=np.float64), indptr, deltas, m)
    check(t, "<memory>")
    return t


def check(t: Trace, path: object) -> None:
    """Raise TraceError unless ``t`` is internally consistent. Fully vectorised."""
    if t.page_size <= 0 or t.page_size & (t.page_size - 1):
        raise TraceError(path, f"page_size {t.page_size} is not a positive power of two")
    if t.n_pages <= 0:
        raise TraceError(path, f"n_pages {t.n_pages} must be positive")
    n = len(t.t_start_s)
    if t.t_start_s.ndim != 1 or t.t_end_s.shape != t.t_start_s.shape:
        raise TraceError(path, "t_start_s and t_end_s must be 1-D and of equal length")
    if t.indptr.shape != (n + 1,) or t.indptr[0] != 0 or t.indptr[-1] != len(t.deltas):
        raise TraceError(path, "indptr does not match the interval count and the page data (truncated?)")
    if not (np.isfinite(t.t_start_s).all() and np.isfinite(t.t_end_s).all()):
        raise TraceError(path, "interval times must be finite")
    if (t.t_end_s <= t.t_start_s).any():
        i = int(np.argmax(t.t_end_s <= t.t_start_s))
        raise TraceError(path, f"interval {i} does not end after it starts")
    if n > 1 and (t.t_start_s[1:] < t.t_end_s[:-1] - 1e-9).any():
        i = int(np.argmax(t.t_start_s[1:] < t.t_end_s[:-1] - 1e-9)) + 1
        raise TraceError(path, f"intervals are not monotonic: interval {i} starts before interval {i - 1} ends")
    counts = np.diff(t.indptr)
    if (counts < 0).any():
        raise TraceError(path, "indptr is not non-decreasing")
    if len(t.deltas):
        d = t.deltas
        if d.dtype.kind not in "ui":
            raise TraceError(path, f"deltas have dtype {d.dtype}, expected unsigned integers")
        if d.dtype.kind == "i" and (d < 0).any():
            raise TraceError(path, "negative page number or gap")
        # Work on the stored dtype (no int64 copy of the page data): a 256 GiB guest's trace holds
        # hundreds of millions of gaps.
        if (d >= t.n_pages).any():  # also keeps the per-interval sums below from wrapping
            raise TraceError(path, f"a page number or gap reaches beyond the guest's {t.n_pages} pages")
        nz = counts > 0
        starts = t.indptr[:-1][nz]
        zero_gaps = np.count_nonzero(d == 0) - np.count_nonzero(d[starts] == 0)
        if zero_gaps:
            raise TraceError(path, "page numbers within an interval are not strictly increasing")
        last = np.add.reduceat(d, starts, dtype=np.uint64)
        if (last >= np.uint64(t.n_pages)).any():
            i = int(np.flatnonzero(nz)[np.argmax(last >= np.uint64(t.n_pages))])
            raise TraceError(path, f"interval {i} has page {int(last.max())} beyond the guest's {t.n_pages} pages")


def save(t: Trace, path: str | os.PathLike[str], *, compress: bool = True) -> str:
    """Write ``t`` atomically (temp file + rename); return its sha256."""
    path = Path(path)
    meta = {"miglab_version": _miglab_version(), **t.meta}
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT_NAME), "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "page_size": np.array(t.page_size, dtype=np.int64), "n_pages": np.array(t.n_pages, dtype=np.int64),
        "t_start_s": t.t_start_s.astype(np.float64), "t_end_s": t.t_end_s.astype(np.float64),
        "indptr": t.indptr.astype(np.int64), "deltas": t.deltas,
        "meta_json": np.array(json.dumps(meta, sort_keys=True, default=str)),
    }
    with atomic_open(path, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)
    return file_sha256(path)


def file_sha256(path: str | os.PathLike[str], into: Any = None) -> str:
    """sha256 (hex) of a file's content, read in 1 MiB blocks (a trace can be gigabytes).

    ``into``: a running ``hashlib`` object to feed instead of a fresh one (to hash several inputs as
    one key); its hex digest so far is returned. ``OSError`` propagates: callers say which input.
    """
    h = hashlib.sha256() if into is None else into
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Largest declared size of a small member (format, version, page_size, n_pages, meta_json), bytes.
_SMALL_MEMBER_BYTES = 64 * 2**20
_SCALARS = ("format", "version", "page_size", "n_pages", "meta_json")


def replay_bytes(n_pages: int) -> int:
    """Memory a replay of a guest of ``n_pages`` pages needs at least: a boolean per page (the masks of
    :meth:`Trace.mask`) and the packed bitmaps beside it."""
    return int(n_pages) + 2 * (int(n_pages) // 8)


def _declared_sizes(z: Any, p: Path) -> dict[str, int]:
    """Uncompressed sizes the zip directory declares for each array (read before any member is).

    ``zipfile`` never inflates a member beyond its declared size, so these bound what loading costs:
    a zip bomb is refused here, in milliseconds, instead of after gigabytes of inflating.
    """
    sizes = {info.filename[:-4] if info.filename.endswith(".npy") else info.filename: int(info.file_size)
             for info in z.zip.infolist()}
    for k in _SCALARS:
        if sizes.get(k, 0) > _SMALL_MEMBER_BYTES:
            raise TraceError(p, f"member {k} declares {sizes[k]:,} bytes; a trace's {k} is a few bytes "
                                "(a damaged file or a zip bomb)")
    return sizes


#: An ``.npy`` header is at most this long (format 2/3 headers included); bounds for declared sizes.
_NPY_HEADER_BYTES = 65536
#: Deflate inflates at most about 1032:1; legitimate interval arrays of this size never come close to
#: the ratio below, so a bigger member is a bomb (checked only above the size where it could hurt).
_BOMB_RATIO, _BOMB_MIN_BYTES = 200, 64 * 2**20


def _check_declared(p: Path, z: Any, sizes: dict[str, int]) -> None:
    """The interval arrays' declared sizes agree with each other and are not a zip bomb."""
    ratio = {info.filename[:-4]: info.file_size / max(1, info.compress_size) for info in z.zip.infolist()
             if info.filename.endswith(".npy")}
    for k in ("t_start_s", "t_end_s", "indptr"):
        if sizes.get(k, 0) > _BOMB_MIN_BYTES and ratio.get(k, 0) > _BOMB_RATIO:
            raise TraceError(p, f"member {k} inflates {ratio[k]:.0f}:1 to {sizes[k]:,} bytes (a zip bomb?)")
    n_max = max(sizes.get("t_start_s", 0), sizes.get("t_end_s", 0)) + _NPY_HEADER_BYTES
    if sizes.get("indptr", 0) > 2 * n_max + _NPY_HEADER_BYTES:
        raise TraceError(p, "indptr declares more entries than there are intervals (damaged file or zip bomb)")


def _check_deltas_declared(p: Path, sizes: dict[str, int], indptr: np.ndarray) -> None:
    """The page data's declared size agrees with the page count ``indptr`` gives (checked before it is read)."""
    n = int(indptr[-1]) if len(indptr) else 0
    if sizes.get("deltas", 0) > _NPY_HEADER_BYTES + 8 * max(n, 0):
        raise TraceError(p, f"deltas declare {sizes['deltas']:,} bytes but indptr counts {n:,} pages "
                            "(damaged file or zip bomb)")


def _check_scale(p: Path, sizes: dict[str, int], n_pages: int) -> None:
    """Refuse, with the estimate, a trace whose arrays or guest would not fit in memory."""
    from .inputs import check_allocation
    from .units import format_bytes

    total = sum(sizes.get(k, 0) for k in _REQUIRED)
    check_allocation(total, "loading this trace's arrays", where=p)
    check_allocation(replay_bytes(n_pages), f"replaying a guest of {n_pages:,} pages "
                     f"({format_bytes(n_pages * 4096)} at 4 KiB pages)", where=p, key="n_pages")


def _check_meta(p: Path, meta: dict[str, Any]) -> None:
    """The numeric metadata the simulator reads: finite and in range, named by key."""
    zpf = meta.get("zero_page_fraction")
    if zpf is not None:
        if isinstance(zpf, bool) or not isinstance(zpf, int | float) or not 0 <= zpf <= 1:
            raise TraceError(p, f"must be a number in [0, 1], not {zpf!r}", key="meta_json.zero_page_fraction")


def load(path: str | os.PathLike[str]) -> Trace:
    """Load and validate a trace; every defect raises one TraceError naming the file.

    Only a regular file is opened; the zip directory's declared sizes and the guest size are checked
    against the memory they would take before the page data is read (:func:`_check_scale`).
    """
    from .errors import InputError
    from .inputs import regular_file

    p = Path(path)
    try:
        regular_file(p, "trace")
    except InputError as e:
        raise TraceError(p, e.problem) from None
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in _REQUIRED if k not in z.files]
            if missing:
                raise TraceError(p, f"not a miglab trace: missing {', '.join(missing)}")
            sizes = _declared_sizes(z, p)
            a = {k: z[k] for k in _SCALARS}
            try:
                n_pages_claimed = int(a["n_pages"])
            except (TypeError, ValueError):
                raise TraceError(p, "version, page_size and n_pages must be integer scalars") from None
            _check_scale(p, sizes, n_pages_claimed)
            _check_declared(p, z, sizes)
            a.update({k: z[k] for k in ("t_start_s", "t_end_s", "indptr")})
            _check_deltas_declared(p, sizes, a["indptr"])
            a["deltas"] = z["deltas"]
    except MiglabError:
        raise
    except MemoryError:
        raise TraceError(p, "does not fit in memory") from None
    except FileNotFoundError:
        raise TraceError(p, "no such file") from None
    except IsADirectoryError:
        raise TraceError(p, "is a directory, not a trace") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile) as e:
        raise TraceError(p, f"malformed or truncated trace ({type(e).__name__}: {e})") from None
    except Exception as e:  # zlib/struct errors from a damaged member surface as assorted types
        raise TraceError(p, f"malformed or truncated trace ({type(e).__name__})") from None
    if a["format"].shape != () or str(a["format"]) != FORMAT_NAME:
        raise TraceError(p, f"format is {str(a['format'])[:40]!r}, not {FORMAT_NAME!r}")
    try:
        if any(a[k].shape != () for k in ("version", "page_size", "n_pages", "meta_json")):
            raise ValueError
        version = int(a["version"])
        page_size, n_pages = int(a["page_size"]), int(a["n_pages"])
    except (TypeError, ValueError):
        raise TraceError(p, "version, page_size and n_pages must be integer scalars") from None
    if version != FORMAT_VERSION:
        raise TraceError(p, f"trace format version {version} is not supported (this miglab reads {FORMAT_VERSION})")
    try:
        meta = json.loads(str(a["meta_json"]))
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, RecursionError):
        raise TraceError(p, "meta_json is not a JSON object") from None
    _check_meta(p, meta)
    for k in ("t_start_s", "t_end_s"):
        if a[k].dtype.kind != "f":
            raise TraceError(p, f"{k} must be floating point, not {a[k].dtype}")
    for k in ("indptr", "deltas"):
        if a[k].dtype.kind not in "iu":
            raise TraceError(p, f"{k} must be integers, not {a[k].dtype}")
    for k in ("t_start_s", "t_end_s", "indptr", "deltas"):
        if a[k].ndim != 1:
            raise TraceError(p, f"{k} must be one-dimensional")
    if len(a["t_start_s"]) == 0:
        raise TraceError(p, "has no intervals (nothing to replay)")
    t = Trace(page_size, n_pages, a["t_start_s"], a["t_end_s"], a["indptr"].astype(np.int64), a["deltas"], meta,
              file_sha256(p), str(p))
    check(t, p)
    return t
