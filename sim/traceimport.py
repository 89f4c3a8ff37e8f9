"""Import dirty-page traces collected elsewhere into the miglab trace format.

Two simple layouts are read (documented in ``traces/README.md``):

* **CSV**: a page file with the header ``interval,page`` and one row per page
  that changed in an interval (0-based interval index, 0-based page number),
  plus the interval times, either a times CSV (``t_end_s``, optionally
  ``t_start_s`` and ``interval``; one row per interval in order) or a uniform
  ``interval_s`` (with ``n_intervals`` when the last intervals are quiet).
* **NPZ**: ``t_end_s`` (float, one per interval) and one of

  - ``offsets`` (int, ``n_intervals + 1``) and ``pages`` (int): interval ``i``'s
    pages are ``pages[offsets[i]:offsets[i+1]]`` (layout ``npz-pages``);
  - ``dirty``: bool ``[n_intervals, n_pages]`` (layout ``npz-dense``);
  - ``bitmap``: uint8 ``[n_intervals, ceil(n_pages / 8)]``, packed with
    little bit order, page ``p`` is bit ``p % 8`` of byte ``p // 8`` (layout
    ``npz-bitmap``, the order of :meth:`sim.trace.Trace.bitmap`);

  and optionally ``t_start_s`` (per interval) or ``t0_s`` (scalar start of the
  first interval), and scalars ``page_size``, ``n_pages`` / ``memory_bytes``.

The guest size is never guessed from the largest page seen (that would shrink
the guest and change every simulated number): it comes from the file or from
``memory_bytes``. Within an interval pages may be unsorted and repeated; they
become a sorted set. Everything is checked before the trace is built, and sizes
before anything is allocated (the claimed guest size, array shapes from the
NPZ headers, the row count of a CSV as it streams): a problem is one
:class:`~sim.errors.TraceError` naming the file and the key or column.

The written trace's metadata records the source (file name, sha256, layout,
times file) and the provenance of the import (:mod:`sim.provenance`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from .errors import ConfigError, TraceError
from .trace import FORMAT_NAME, Trace, file_sha256, make_trace, save

log = logging.getLogger(__name__)

Layout = Literal["csv", "npz-pages", "npz-dense", "npz-bitmap"]
LAYOUTS: tuple[str, ...] = ("csv", "npz-pages", "npz-dense", "npz-bitmap")
_CSV_PAGE_COLUMNS = ("interval", "page")
_CSV_TIME_COLUMNS = ("interval", "t_start_s", "t_end_s")
_NPZ_KEYS = ("t_end_s", "t_start_s", "t0_s", "page_size", "n_pages", "memory_bytes", "offsets", "pages", "dirty",
             "bitmap")
_CSV_CHUNK_ROWS = 1 << 20
_UNPACK_BLOCK_BYTES = 1 << 28  # bitmap rows are unpacked in blocks of at most this many bool bytes


@dataclass(frozen=True)
class ImportLimits:
    """Bounds on what an imported file may claim; anything larger is refused before it is allocated."""

    max_guest_bytes: int = 2**46  # 64 TiB
    max_intervals: int = 10_000_000
    max_entries: int = 2**30  # (interval, page) pairs in total: 8 GiB as int64
    max_dense_bytes: int = 2**32  # a dense bool member, or an unpacked bitmap block budget


def import_trace(source: str | os.PathLike[str], out: str | os.PathLike[str], *, layout: Layout | None = None,
                 times: str | os.PathLike[str] | None = None, interval_s: float | None = None,
                 n_intervals: int | None = None, t0_s: float = 0.0, memory_bytes: int | None = None,
                 page_size: int | None = None, meta: Mapping[str, Any] | None = None,
                 limits: ImportLimits = ImportLimits()) -> Trace:
    """Read a foreign trace (see the module docstring) and write it as a miglab trace at ``out``.

    Returns the written trace (``sha256`` and ``path`` set). ``meta`` adds
    metadata keys (``hypervisor``, ``workload``, ``host``, ``collector``,
    ``blind_spot``...). Raises TraceError for a defect in a file, ConfigError
    for contradictory or missing arguments; nothing is written then.
    """
    trace = read_foreign(source, layout=layout, times=times, interval_s=interval_s, n_intervals=n_intervals,
                         t0_s=t0_s, memory_bytes=memory_bytes, page_size=page_size, meta=meta, limits=limits)
    if Path(out).resolve() == Path(source).resolve():
        raise ConfigError("the output would overwrite the source", where=out)
    sha = save(trace, out)
    log.info("%s: imported %s (%d intervals, %d pages)", out, source, trace.n_intervals, trace.n_pages)
    return dataclasses.replace(trace, sha256=sha, path=str(out))


def read_foreign(source: str | os.PathLike[str], *, layout: Layout | None = None,
                 times: str | os.PathLike[str] | None = None, interval_s: float | None = None,
                 n_intervals: int | None = None, t0_s: float = 0.0, memory_bytes: int | None = None,
                 page_size: int | None = None, meta: Mapping[str, Any] | None = None,
                 limits: ImportLimits = ImportLimits()) -> Trace:
    """Like :func:`import_trace` but return the in-memory trace without writing it."""
    path = Path(source)
    if not path.is_file():
        raise TraceError(path, "no such file" if not path.exists() else "is not a file")
    layout = layout or _guess_layout(path)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown trace layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if layout == "csv":
        parsed = _read_csv(path, times, interval_s, n_intervals, t0_s, memory_bytes, page_size, limits)
    else:
        if times is not None or interval_s is not None or n_intervals is not None:
            raise ConfigError("an NPZ trace carries its own interval times (t_end_s); "
                              "times, interval_s and n_intervals are for CSV page lists", where=path)
        parsed = _read_npz(path, layout, t0_s, memory_bytes, page_size, limits)
    source_meta: dict[str, Any] = {"file": path.name, "sha256": file_sha256(path), "layout": parsed.layout}
    inputs = {str(path): source_meta["sha256"]}
    if times is not None:
        source_meta |= {"times_file": Path(times).name, "times_sha256": file_sha256(times)}
        inputs[str(times)] = source_meta["times_sha256"]
    if parsed.duplicates:
        source_meta["duplicates_dropped"] = parsed.duplicates
    from .provenance import provenance

    steps = parsed.t_end_s - parsed.t_start_s
    trace_meta = {"hypervisor": "unknown", "collector": "imported", "guest_memory_bytes": parsed.n_pages * parsed.page_size,
                  "interval_s": float(np.median(steps)), **(meta or {}), "source": source_meta,
                  "provenance": provenance(inputs=inputs)}
    page_lists = np.split(parsed.pages, parsed.indptr[1:-1])
    try:
        return make_trace(page_lists, parsed.t_start_s, parsed.t_end_s, n_pages=parsed.n_pages,
                          page_size=parsed.page_size, meta=trace_meta)
    except TraceError as e:  # make_trace names "<memory>"; the defect is in the source
        raise TraceError(path, e.problem) from None


# --------------------------------------------------------------------------- the parsed form
@dataclass(frozen=True)
class _Parsed:
    layout: str
    n_pages: int
    page_size: int
    t_start_s: np.ndarray
    t_end_s: np.ndarray
    indptr: np.ndarray  # int64, n_intervals + 1
    pages: np.ndarray  # int64, sorted and unique within each interval
    duplicates: int = 0


def _guess_layout(path: Path) -> Layout:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                names = {n.removesuffix(".npy") for n in z.namelist()}
        except (zipfile.BadZipFile, OSError) as e:
            raise TraceError(path, f"not a readable NPZ archive ({e})") from None
        if "format" in names and "deltas" in names:
            raise TraceError(path, f"already a {FORMAT_NAME} file: load it with sim.trace.load")
        for key, layout in (("pages", "npz-pages"), ("dirty", "npz-dense"), ("bitmap", "npz-bitmap")):
            if key in names:
                return cast(Layout, layout)
        raise TraceError(path, "NPZ has none of the page keys 'pages' (with 'offsets'), 'dirty' or 'bitmap'")
    raise ConfigError(f"cannot tell the layout from the suffix {suffix!r}: give one of {', '.join(LAYOUTS)}",
                      where=path)


def _guest_pages(path: Path, memory_bytes: int | None, n_pages: int | None, page_size: int,
                 limits: ImportLimits, where: str = "memory_bytes") -> int:
    """The guest's page count from the claimed size, checked against the limits before anything is allocated."""
    if page_size <= 0 or page_size & (page_size - 1):
        raise TraceError(path, f"page_size {page_size} is not a positive power of two")
    if memory_bytes is not None:
        if memory_bytes <= 0 or memory_bytes % page_size:
            raise TraceError(path, f"{where} {memory_bytes} is not a positive multiple of the page size {page_size}")
        if n_pages is not None and n_pages * page_size != memory_bytes:
            raise TraceError(path, f"n_pages {n_pages} × page_size {page_size} is not {where} {memory_bytes}")
        n_pages = memory_bytes // page_size
    if n_pages is None:
        raise ConfigError("the guest size is unknown: give memory_bytes (it is not guessed from the "
                          "largest page, which would shrink the guest)", where=path)
    if n_pages <= 0:
        raise TraceError(path, f"n_pages {n_pages} must be positive")
    if n_pages * page_size > limits.max_guest_bytes:
        raise TraceError(path, f"guest of {n_pages * page_size} bytes ({n_pages} pages) exceeds the import limit "
                               f"of {limits.max_guest_bytes} bytes")
    return int(n_pages)


def _interval_times(path: Path, where: str, t_end_s: np.ndarray, t_start_s: np.ndarray | None,
                    t0_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends): finite, strictly increasing ends; starts default to the previous end (the first to t0_s)."""
    if t_end_s.ndim != 1 or not len(t_end_s):
        raise TraceError(path, f"{where} 't_end_s' must be a non-empty 1-D list of times")
    if not np.isfinite(t_end_s).all():
        raise TraceError(path, f"{where} 't_end_s' holds a value that is not a finite number "
                               f"(interval {int(np.argmin(np.isfinite(t_end_s)))})")
    if (np.diff(t_end_s) <= 0).any():
        i = int(np.argmax(np.diff(t_end_s) <= 0)) + 1
        raise TraceError(path, f"{where} 't_end_s' is not strictly increasing (interval {i})")
    if t_start_s is None:
        if not math.isfinite(t0_s):
            raise ConfigError(f"t0_s {t0_s} is not a finite number")
        t_start_s = np.concatenate([[t0_s], t_end_s[:-1]])
    elif t_start_s.shape != t_end_s.shape:
        raise TraceError(path, f"{where} 't_start_s' has {t_start_s.size} values for {t_end_s.size} intervals")
    elif not np.isfinite(t_start_s).all():
        raise TraceError(path, f"{where} 't_start_s' holds a value that is not a finite number")
    if (t_end_s <= t_start_s).any():
        i = int(np.argmax(t_end_s <= t_start_s))
        raise TraceError(path, f"{where} interval {i} does not end after it starts (t_end_s ≤ start)")
    if len(t_end_s) > 1 and (t_start_s[1:] < t_end_s[:-1]).any():
        i = int(np.argmax(t_start_s[1:] < t_end_s[:-1])) + 1
        raise TraceError(path, f"{where} 't_start_s': interval {i} starts before interval {i - 1} ends")
    return t_start_s.astype(np.float64), t_end_s.astype(np.float64)


def _as_sets(path: Path, where: str, interval: np.ndarray, page: np.ndarray, n_intervals: int,
             n_pages: int, page_name: str = "page") -> tuple[np.ndarray, np.ndarray, int]:
    """(indptr, pages) of the (interval, page) pairs as sorted sets per interval, and the duplicates dropped."""
    if n_intervals * n_pages >= 2**62:
        raise TraceError(path, f"{n_intervals} intervals × {n_pages} pages is beyond what the import can index")
    for name, values, bound in (("interval", interval, n_intervals), (page_name, page, n_pages)):
        bad = (values < 0) | (values >= bound)
        if bad.any():
            i = int(np.argmax(bad))
            what = f"the {n_intervals} intervals" if name == "interval" else f"the guest's {n_pages} pages"
            raise TraceError(path, f"{where} {name!r} value {int(values[i])} (entry {i}) is outside {what}")
    # one sortable key per pair: interval-major, page-minor (n_intervals × n_pages < 2**63 by the limits)
    key = np.unique(interval.astype(np.int64) * np.int64(n_pages) + page.astype(np.int64))
    counts = np.bincount(key // n_pages, minlength=n_intervals)
    indptr = np.zeros(n_intervals + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, key % n_pages, int(len(interval) - len(key))


# --------------------------------------------------------------------------- CSV
def _read_csv(path: Path, times: str | os.PathLike[str] | None, interval_s: float | None, n_intervals: int | None,
              t0_s: float, memory_bytes: int | None, page_size: int | None, limits: ImportLimits) -> _Parsed:
    page_size = 4096 if page_size is None else int(page_size)
    n_pages = _guest_pages(path, memory_bytes, None, page_size, limits)
    if (times is None) == (interval_s is None):
        raise ConfigError(f"give the interval times either as a times CSV or as interval_s, not "
                          f"{'both' if times is not None else 'neither'}", where=path)
    cols = _csv_columns(path, _CSV_PAGE_COLUMNS, required=_CSV_PAGE_COLUMNS, max_rows=limits.max_entries,
                        what="page entries")
    interval, page = cols["interval"], cols["page"]
    if times is not None:
        if n_intervals is not None:
            raise ConfigError(f"n_intervals comes from the times file {times}; do not give both", where=path)
        tpath = Path(times)
        if not tpath.is_file():
            raise TraceError(tpath, "no such file" if not tpath.exists() else "is not a file")
        tcols = _csv_columns(tpath, _CSV_TIME_COLUMNS, required=("t_end_s",), max_rows=limits.max_intervals,
                             what="intervals", integers=("interval",))
        if "interval" in tcols and not np.array_equal(tcols["interval"], np.arange(len(tcols["t_end_s"]))):
            raise TraceError(tpath, "column 'interval' must be 0, 1, 2, ... in order (one row per interval)")
        t_start, t_end = _interval_times(tpath, "column", tcols["t_end_s"], tcols.get("t_start_s"), t0_s)
    else:
        assert interval_s is not None
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigError(f"interval_s must be a positive number of seconds, not {interval_s}")
        seen = int(interval.max()) + 1 if len(interval) else 0
        n = seen if n_intervals is None else int(n_intervals)
        if n < 1 or n > limits.max_intervals:
            raise ConfigError(f"{n} intervals is outside 1..{limits.max_intervals}", where=path)
        t_end = t0_s + interval_s * np.arange(1, n + 1, dtype=np.float64)
        t_start, t_end = _interval_times(path, "interval_s:", t_end, None, t0_s)
    indptr, pages, dupes = _as_sets(path, "column", interval, page, len(t_end), n_pages)
    return _Parsed("csv", n_pages, page_size, t_start, t_end, indptr, pages, dupes)


def _csv_columns(path: Path, known: tuple[str, ...], *, required: tuple[str, ...], max_rows: int, what: str,
                 integers: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Stream a headed CSV into numpy columns, refusing it as soon as it holds more than ``max_rows`` rows.

    Columns are read as float64 (exact for integers below 2**53) so that a
    fractional or empty value is reported with its column and row.
    """
    import pandas as pd

    integers = known if integers is None else integers
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(path, f"not a readable CSV file ({e})") from None
    if not first:
        raise TraceError(path, f"empty file (the first line must be a header: {','.join(required)})")
    header = [h.strip() for h in first.split(",")]
    unknown = [h for h in header if h not in known]
    if unknown:
        raise TraceError(path, f"unknown column {unknown[0]!r} (the header must name columns among "
                               f"{', '.join(known)})")
    missing = [c for c in required if c not in header]
    if missing:
        raise TraceError(path, f"no column {missing[0]!r} (the first line must be a header: {','.join(required)})")
    if len(set(header)) != len(header):
        raise TraceError(path, "a column is named twice in the header")
    chunks: list[Any] = []
    rows = 0
    try:
        for chunk in pd.read_csv(path, dtype="float64", chunksize=_CSV_CHUNK_ROWS, skipinitialspace=True):
            rows += len(chunk)
            if rows > max_rows:
                raise TraceError(path, f"more than {max_rows} {what} (the import limit)")
            chunks.append(chunk)
    except TraceError:
        raise
    except (ValueError, pd.errors.ParserError, OSError, UnicodeDecodeError) as e:
        raise TraceError(path, f"columns {','.join(header)} must hold numbers ({str(e).splitlines()[0]})") from None
    out: dict[str, np.ndarray] = {}
    for name in header:
        col = np.concatenate([c[name].to_numpy() for c in chunks]) if chunks else np.zeros(0)
        bad = ~np.isfinite(col)
        if name in integers:
            bad |= np.isfinite(col) & (col != np.round(col))
        if bad.any():
            row = int(np.argmax(bad))
            kind = "an integer" if name in integers else "a finite number"
            raise TraceError(path, f"column {name!r}, data row {row + 1}: {float(col[row])!r} is not {kind}")
        out[name] = col.astype(np.int64) if name in integers else col
    return out


# --------------------------------------------------------------------------- NPZ
def _read_npz(path: Path, layout: str, t0_s: float, memory_bytes: int | None, page_size: int | None,
              limits: ImportLimits) -> _Parsed:
    shapes = _npz_headers(path)
    unknown = sorted(set(shapes) - set(_NPZ_KEYS))
    if unknown:
        raise TraceError(path, f"unknown key {unknown[0]!r} (known: {', '.join(_NPZ_KEYS)})")
    page_keys = {"npz-pages": ("offsets", "pages"), "npz-dense": ("dirty",), "npz-bitmap": ("bitmap",)}[layout]
    for key in ("t_end_s", *page_keys):
        if key not in shapes:
            raise TraceError(path, f"no key {key!r} (layout {layout} needs t_end_s and {', '.join(page_keys)})")
    others = [k for k in ("pages", "dirty", "bitmap") if k in shapes and k not in page_keys]
    if others:
        raise TraceError(path, f"key {others[0]!r} does not belong to layout {layout}: give one page layout")
    n_intervals = _count(path, "t_end_s", shapes, limits.max_intervals, "intervals")
    scalars = {k: _scalar(path, k, shapes) for k in ("page_size", "n_pages", "memory_bytes", "t0_s") if k in shapes}
    page_size = _agree(path, "page_size", scalars.get("page_size"), page_size, 4096)
    claimed = _agree(path, "memory_bytes", scalars.get("memory_bytes"), memory_bytes, None)
    n_pages_claim = scalars.get("n_pages")
    if layout == "npz-dense":
        shape, _ = shapes["dirty"]
        if len(shape) != 2 or shape[0] != n_intervals:
            raise TraceError(path, f"key 'dirty' has shape {shape}, expected ({n_intervals}, n_pages)")
        if n_pages_claim is not None and n_pages_claim != shape[1]:
            raise TraceError(path, f"key 'dirty' has {shape[1]} columns but n_pages is {n_pages_claim}")
        n_pages_claim = shape[1]
    n_pages = _guest_pages(path, None if claimed is None else int(claimed),
                           None if n_pages_claim is None else int(n_pages_claim), int(page_size), limits)
    if "t0_s" in scalars:
        t0_s = float(scalars["t0_s"])
    with np.load(path, allow_pickle=False) as z:
        t_end = _float_array(path, z, "t_end_s")
        t_start = _float_array(path, z, "t_start_s") if "t_start_s" in shapes else None
        t_start, t_end = _interval_times(path, "key", t_end, t_start, t0_s)
        if layout == "npz-pages":
            indptr, pages, dupes = _npz_pages(path, z, shapes, n_intervals, n_pages, limits)
        elif layout == "npz-dense":
            indptr, pages, dupes = _npz_dense(path, z, shapes, n_intervals, n_pages, limits)
        else:
            indptr, pages, dupes = _npz_bitmap(path, z, shapes, n_intervals, n_pages, limits)
    return _Parsed(layout, n_pages, int(page_size), t_start, t_end, indptr, pages, dupes)


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of every member, read from the .npy headers without decompressing the data."""
    out: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                key = info.filename.removesuffix(".npy")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    reader = {(1, 0): np.lib.format.read_array_header_1_0,
                              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if reader is None:
                        raise TraceError(path, f"key {key!r}: unsupported .npy version {version}")
                    shape, _fortran, dtype = reader(f)
                if dtype.hasobject:
                    raise TraceError(path, f"key {key!r} holds Python objects (dtype {dtype}); only plain "
                                           "numeric arrays are read")
                out[key] = (tuple(int(n) for n in shape), dtype)
    except TraceError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise TraceError(path, f"not a readable NPZ archive ({type(e).__name__}: {e})") from None
    return out


def _count(path: Path, key: str, shapes: Mapping[str, Any], limit: int, what: str) -> int:
    shape, _ = shapes[key]
    if len(shape) != 1 or not shape[0]:
        raise TraceError(path, f"key {key!r} must be a non-empty 1-D array, not of shape {shape}")
    if shape[0] > limit:
        raise TraceError(path, f"key {key!r}: {shape[0]} {what} exceed the import limit of {limit}")
    return shape[0]


def _scalar(path: Path, key: str, shapes: Mapping[str, Any]) -> float | int:
    shape, dtype = shapes[key]
    integral = key != "t0_s"
    if shape not in ((), (1,)) or dtype.kind not in ("iu" if integral else "iuf"):
        raise TraceError(path, f"key {key!r} must be a {'integer' if integral else 'number'} scalar "
                               f"(it has shape {shape}, dtype {dtype})")
    with np.load(path, allow_pickle=False) as z:
        value = z[key].reshape(())[()]
    return int(value) if integral else float(value)


def _agree(path: Path, key: str, in_file: float | int | None, given: float | int | None,
           default: int | None) -> Any:
    if in_file is not None and given is not None and in_file != given:
        raise TraceError(path, f"key {key!r} is {in_file} but {given} was given")
    return in_file if in_file is not None else given if given is not None else default


def _float_array(path: Path, z: Any, key: str) -> np.ndarray:
    a = z[key]
    if a.dtype.kind not in "iuf":
        raise TraceError(path, f"key {key!r} must hold numbers, not dtype {a.dtype}")
    return a.astype(np.float64)


def _int_array(path: Path, z: Any, key: str) -> np.ndarray:
    a = z[key]
    if a.dtype.kind not in "iu":
        raise TraceError(path, f"key {key!r} must hold integers, not dtype {a.dtype}")
    if a.ndim != 1:
        raise TraceError(path, f"key {key!r} must be one-dimensional, not of shape {a.shape}")
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and len(a) and a.max() > np.iinfo(np.int64).max:
        raise TraceError(path, f"key {key!r} holds a value beyond int64")
    return a.astype(np.int64)


def _npz_pages(path: Path, z: Any, shapes: Mapping[str, Any], n_intervals: int, n_pages: int,
               limits: ImportLimits) -> tuple[np.ndarray, np.ndarray, int]:
    shape, _ = shapes["offsets"]
    if shape != (n_intervals + 1,):
        raise TraceError(path, f"key 'offsets' has shape {shape}, expected ({n_intervals + 1},): one more than "
                               "the intervals in t_end_s")
    pages_shape, _ = shapes["pages"]
    if len(pages_shape) != 1:
        raise TraceError(path, f"key 'pages' must be one-dimensional, not of shape {pages_shape}")
    n_entries = pages_shape[0]
    if n_entries > limits.max_entries:
        raise TraceError(path, f"key 'pages': {n_entries} page entries exceed the import limit of "
                               f"{limits.max_entries}")
    offsets = _int_array(path, z, "offsets")
    if offsets[0] != 0 or offsets[-1] != n_entries:
        raise TraceError(path, f"key 'offsets' must run from 0 to len(pages) = {n_entries}, not "
                               f"{int(offsets[0])}..{int(offsets[-1])}")
    if (np.diff(offsets) < 0).any():
        raise TraceError(path, f"key 'offsets' decreases at interval {int(np.argmax(np.diff(offsets) < 0))}")
    pages = _int_array(path, z, "pages")
    interval = np.repeat(np.arange(n_intervals, dtype=np.int64), np.diff(offsets))
    return _as_sets(path, "key", interval, pages, n_intervals, n_pages, "pages")


def _npz_dense(path: Path, z: Any, shapes: Mapping[str, Any], n_intervals: int, n_pages: int,
               limits: ImportLimits) -> tuple[np.ndarray, np.ndarray, int]:
    shape, dtype = shapes["dirty"]
    if dtype.kind != "b":
        raise TraceError(path, f"key 'dirty' must be boolean, not dtype {dtype}")
    if shape[0] * shape[1] > limits.max_dense_bytes:
        raise TraceError(path, f"key 'dirty': {shape[0]} × {shape[1]} exceeds the import limit of "
                               f"{limits.max_dense_bytes} cells")
    dirty = z["dirty"]
    if int(np.count_nonzero(dirty)) > limits.max_entries:
        raise TraceError(path, f"key 'dirty': more than {limits.max_entries} dirty pages (the import limit)")
    rows, cols = np.nonzero(dirty)  # row-major: already sorted per interval
    return _as_sets(path, "key", rows, cols, n_intervals, n_pages)


def _npz_bitmap(path: Path, z: Any, shapes: Mapping[str, Any], n_intervals: int, n_pages: int,
                limits: ImportLimits) -> tuple[np.ndarray, np.ndarray, int]:
    shape, dtype = shapes["bitmap"]
    width = (n_pages + 7) // 8
    if dtype != np.uint8 or shape != (n_intervals, width):
        raise TraceError(path, f"key 'bitmap' has shape {shape} and dtype {dtype}, expected uint8 "
                               f"({n_intervals}, {width}) for {n_pages} pages")
    bitmap = z["bitmap"]
    if n_pages % 8 and (bitmap[:, -1] >> np.uint8(n_pages % 8)).any():
        raise TraceError(path, f"key 'bitmap' has bits set beyond the guest's {n_pages} pages")
    total = int(np.bitwise_count(bitmap).sum(dtype=np.int64))
    if total > limits.max_entries:
        raise TraceError(path, f"key 'bitmap': {total} dirty pages exceed the import limit of {limits.max_entries}")
    block = max(1, min(n_intervals, _UNPACK_BLOCK_BYTES // max(n_pages, 1)))
    rows, cols = [], []
    for lo in range(0, n_intervals, block):  # blocks of intervals, so that the unpacked bools stay bounded
        dense = np.unpackbits(bitmap[lo:lo + block], axis=1, count=n_pages, bitorder="little")
        r, c = np.nonzero(dense)
        rows.append(r + lo)
        cols.append(c)
    return _as_sets(path, "key", np.concatenate(rows), np.concatenate(cols), n_intervals, n_pages)


__all__ = ["import_trace", "read_foreign", "ImportLimits", "LAYOUTS", "Layout"]
