"""sim.traceimport: foreign traces (CSV page lists, NPZ page lists, dense and packed bitmaps) become miglab traces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sim import trace as trace_mod
from sim.errors import ConfigError, TraceError
from sim.traceimport import ImportLimits, import_trace, read_foreign

N_PAGES = 64
PAGE_SIZE = 4096
MEMORY = N_PAGES * PAGE_SIZE
# three intervals: pages as a foreign collector might write them (unsorted, one repeat)
PAGES = [[5, 1, 3, 3], [], [63, 0]]
EXPECTED = [[1, 3, 5], [], [0, 63]]
T_END = [0.5, 1.0, 1.5]


def _pages_csv(path: Path, rows: list[str] | None = None, header: str = "interval,page") -> Path:
    rows = rows if rows is not None else [f"{i},{p}" for i, ps in enumerate(PAGES) for p in ps]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _times_csv(path: Path, text: str = "t_end_s\n0.5\n1.0\n1.5\n") -> Path:
    path.write_text(text)
    return path


def _pages_npz(path: Path, **override: object) -> Path:
    flat = [p for ps in PAGES for p in ps]
    arrays: dict[str, object] = {"t_end_s": np.array(T_END), "offsets": np.cumsum([0] + [len(p) for p in PAGES]),
                                 "pages": np.array(flat, dtype=np.int64), "memory_bytes": np.array(MEMORY)}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _dense() -> np.ndarray:
    dirty = np.zeros((len(PAGES), N_PAGES), dtype=bool)
    for i, ps in enumerate(PAGES):
        dirty[i, ps] = True
    return dirty


def _assert_expected(t: trace_mod.Trace) -> None:
    assert t.n_pages == N_PAGES and t.page_size == PAGE_SIZE and t.n_intervals == 3
    assert [t.pages(i).tolist() for i in range(3)] == EXPECTED
    assert t.t_end_s.tolist() == T_END and t.t_start_s.tolist() == [0.0, 0.5, 1.0]


# --------------------------------------------------------------------------- the layouts
def test_csv_with_times_file_round_trips_and_records_its_source(tmp_path: Path) -> None:
    src, times = _pages_csv(tmp_path / "pages.csv"), _times_csv(tmp_path / "times.csv")
    out = tmp_path / "out.npz"
    t = import_trace(src, out, times=times, memory_bytes=MEMORY, meta={"hypervisor": "xen", "workload": "oltp"})
    loaded = trace_mod.load(out)
    _assert_expected(loaded)
    assert t.sha256 == loaded.sha256 and t.path == str(out)
    source = loaded.meta["source"]
    assert source["file"] == "pages.csv" and source["layout"] == "csv"
    assert source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert source["times_file"] == "times.csv" and source["duplicates_dropped"] == 1
    assert loaded.meta["hypervisor"] == "xen" and loaded.meta["collector"] == "imported"
    assert loaded.meta["guest_memory_bytes"] == MEMORY and loaded.meta["interval_s"] == 0.5
    assert loaded.meta["provenance"]["inputs"][str(src)] == source["sha256"]


def test_csv_with_uniform_intervals_keeps_quiet_trailing_intervals(tmp_path: Path) -> None:
    src = _pages_csv(tmp_path / "p.csv", ["0,5", "0,1"])
    t = read_foreign(src, interval_s=0.25, n_intervals=4, memory_bytes=MEMORY)
    assert t.n_intervals == 4 and t.t_end_s.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert t.pages(0).tolist() == [1, 5] and t.counts.tolist() == [2, 0, 0, 0]


def test_times_file_with_explicit_starts_allows_gaps(tmp_path: Path) -> None:
    src = _pages_csv(tmp_path / "p.csv")
    times = _times_csv(tmp_path / "t.csv", "interval,t_start_s,t_end_s\n0,0,0.5\n1,0.6,1.0\n2,1.1,1.5\n")
    t = read_foreign(src, times=times, memory_bytes=MEMORY)
    assert t.t_start_s.tolist() == [0.0, 0.6, 1.1]


def test_npz_page_lists(tmp_path: Path) -> None:
    t = import_trace(_pages_npz(tmp_path / "in.npz"), tmp_path / "out.npz")
    _assert_expected(trace_mod.load(tmp_path / "out.npz"))
    assert t.meta["source"]["layout"] == "npz-pages"


def test_npz_dense_and_packed_bitmaps(tmp_path: Path) -> None:
    np.savez(tmp_path / "dense.npz", t_end_s=np.array(T_END), dirty=_dense())
    dense = read_foreign(tmp_path / "dense.npz")
    _assert_expected(dense)
    assert dense.meta["source"]["layout"] == "npz-dense"
    bitmap = np.packbits(_dense(), axis=1, bitorder="little")
    np.savez(tmp_path / "bits.npz", t_end_s=np.array(T_END), bitmap=bitmap, n_pages=np.array(N_PAGES))
    packed = read_foreign(tmp_path / "bits.npz")
    _assert_expected(packed)
    assert np.array_equal(packed.bitmap(2), bitmap[2])  # the same bit order as Trace.bitmap


def test_bitmap_with_a_page_count_not_a_multiple_of_eight(tmp_path: Path) -> None:
    dirty = np.zeros((2, 13), dtype=bool)
    dirty[0, 12] = dirty[1, 0] = True
    np.savez(tmp_path / "b.npz", t_end_s=np.array([1.0, 2.0]), n_pages=np.array(13),
             bitmap=np.packbits(dirty, axis=1, bitorder="little"))
    t = read_foreign(tmp_path / "b.npz")
    assert t.pages(0).tolist() == [12] and t.pages(1).tolist() == [0]
    spill = np.packbits(dirty, axis=1, bitorder="little")
    spill[1, 1] |= 0x80  # bit 15: beyond page 12
    np.savez(tmp_path / "spill.npz", t_end_s=np.array([1.0, 2.0]), n_pages=np.array(13), bitmap=spill)
    with pytest.raises(TraceError, match=r"spill\.npz: key 'bitmap' has bits set beyond"):
        read_foreign(tmp_path / "spill.npz")


def test_the_imported_trace_simulates(tmp_path: Path) -> None:
    from sim import Scenario, simulate

    import_trace(_pages_npz(tmp_path / "in.npz"), tmp_path / "out.npz")
    scenario = Scenario.from_dict({"workload": {"kind": "trace", "path": str(tmp_path / "out.npz")}})
    assert simulate(scenario).bytes_sent >= MEMORY


# --------------------------------------------------------------------------- hostile and broken input
@pytest.mark.parametrize(("rows", "header", "match"), [
    (["0,64"], "interval,page", r"p\.csv: column 'page' value 64 \(entry 0\) is outside the guest's 64 pages"),
    (["0,-1"], "interval,page", r"column 'page' value -1"),
    (["3,1"], "interval,page", r"column 'interval' value 3 .* outside the 3 intervals"),
    (["0,1.5"], "interval,page", r"column 'page', data row 1: 1\.5 is not an integer"),
    (["0,"], "interval,page", r"column 'page', data row 1: nan is not an integer"),
    (["0,x"], "interval,page", r"p\.csv: columns interval,page must hold numbers"),
    (["0,1"], "interval,pages", r"p\.csv: unknown column 'pages'"),
    (["0"], "interval", r"p\.csv: no column 'page'"),
])
def test_bad_csv_is_one_line_naming_file_and_column(tmp_path: Path, rows: list[str], header: str,
                                                    match: str) -> None:
    src = _pages_csv(tmp_path / "p.csv", rows, header)
    with pytest.raises(TraceError, match=match) as info:
        import_trace(src, tmp_path / "out.npz", times=_times_csv(tmp_path / "t.csv"), memory_bytes=MEMORY)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize(("text", "match"), [
    ("t_end_s\n0.5\n0.5\n1.5\n", r"t\.csv: column 't_end_s' is not strictly increasing \(interval 1\)"),
    ("t_end_s\n0.5\ninf\n1.5\n", r"t\.csv: column 't_end_s', data row 2: inf is not a finite number"),
    ("t_end_s\n-1\n1\n2\n", r"t\.csv: column interval 0 does not end after it starts"),
    ("interval,t_end_s\n0,0.5\n2,1.0\n1,1.5\n", r"t\.csv: column 'interval' must be 0, 1, 2"),
    ("t_start_s,t_end_s\n0,0.5\n0.4,1.0\n1,1.5\n", r"interval 1 starts before interval 0 ends"),
    ("", r"t\.csv: empty file"),
])
def test_bad_times_are_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        read_foreign(_pages_csv(tmp_path / "p.csv", ["0,1"]), times=_times_csv(tmp_path / "t.csv", text),
                     memory_bytes=MEMORY)


def test_csv_arguments_are_checked(tmp_path: Path) -> None:
    src = _pages_csv(tmp_path / "p.csv")
    with pytest.raises(ConfigError, match="guest size is unknown"):
        read_foreign(src, interval_s=0.5)
    with pytest.raises(ConfigError, match="not both"):
        read_foreign(src, interval_s=0.5, times=_times_csv(tmp_path / "t.csv"), memory_bytes=MEMORY)
    with pytest.raises(ConfigError, match="neither"):
        read_foreign(src, memory_bytes=MEMORY)
    with pytest.raises(TraceError, match="not a positive multiple of the page size"):
        read_foreign(src, interval_s=0.5, memory_bytes=MEMORY + 1)
    with pytest.raises(TraceError, match="page_size 1000 is not a positive power of two"):
        read_foreign(src, interval_s=0.5, memory_bytes=64_000, page_size=1000)
    with pytest.raises(ConfigError, match="cannot tell the layout"):
        read_foreign(_pages_csv(tmp_path / "p.txt"), interval_s=0.5, memory_bytes=MEMORY)
    assert read_foreign(tmp_path / "p.txt", layout="csv", interval_s=0.5, memory_bytes=MEMORY).n_intervals == 3
    with pytest.raises(TraceError, match="no such file"):
        read_foreign(tmp_path / "absent.csv", interval_s=0.5, memory_bytes=MEMORY)
    with pytest.raises(ConfigError, match="overwrite the source"):
        import_trace(_pages_npz(tmp_path / "same.npz"), tmp_path / "same.npz")


def test_absurd_guest_size_is_refused_before_allocating(tmp_path: Path) -> None:
    # 2**60 bytes: a bitmap of it would be 32 PiB; the claim is refused from its size alone
    np.savez(tmp_path / "huge.npz", t_end_s=np.array([1.0]), offsets=np.array([0, 1]), pages=np.array([0]),
             memory_bytes=np.array(2**60, dtype=np.int64))
    with pytest.raises(TraceError, match=r"huge\.npz: guest of 1152921504606846976 bytes .* exceeds the import limit"):
        read_foreign(tmp_path / "huge.npz")
    with pytest.raises(TraceError, match="exceeds the import limit"):
        read_foreign(_pages_csv(tmp_path / "p.csv"), interval_s=0.5, memory_bytes=2**60)


def test_a_csv_longer_than_the_limit_is_refused_while_streaming(tmp_path: Path) -> None:
    src = _pages_csv(tmp_path / "p.csv", [f"0,{p}" for p in range(50)])
    with pytest.raises(TraceError, match=r"p\.csv: more than 10 page entries \(the import limit\)"):
        read_foreign(src, interval_s=0.5, memory_bytes=MEMORY, limits=ImportLimits(max_entries=10))


def test_npz_shapes_are_checked_from_headers(tmp_path: Path) -> None:
    limits = ImportLimits(max_intervals=2)
    with pytest.raises(TraceError, match=r"key 't_end_s': 3 intervals exceed the import limit of 2"):
        read_foreign(_pages_npz(tmp_path / "a.npz"), limits=limits)
    with pytest.raises(TraceError, match=r"key 'pages': 6 page entries exceed"):
        read_foreign(_pages_npz(tmp_path / "b.npz"), limits=ImportLimits(max_entries=4))


@pytest.mark.parametrize(("override", "match"), [
    ({"offsets": np.array([0, 4, 4])}, r"key 'offsets' has shape \(3,\), expected \(4,\)"),
    ({"offsets": np.array([0, 4, 4, 5])}, r"key 'offsets' must run from 0 to len\(pages\) = 6, not 0\.\.5"),
    ({"offsets": np.array([0, 4, 3, 6]), "pages": np.arange(6)}, r"key 'offsets' decreases at interval 1"),
    ({"pages": np.array([5, 1, 3, 3, 63, 64])}, r"key 'pages' value 64 \(entry 5\) is outside the guest's 64"),
    ({"pages": np.array([5.0, 1, 3, 3, 63, 0])}, r"key 'pages' must hold integers, not dtype float64"),
    ({"t_end_s": np.array([0.5, np.nan, 1.5])}, r"key 't_end_s' holds a value that is not a finite number"),
    ({"t_end_s": np.array([0.5, 0.4, 1.5])}, r"key 't_end_s' is not strictly increasing \(interval 1\)"),
    ({"t_end_s": np.array([[0.5, 1.0, 1.5]])}, r"key 't_end_s' must be a non-empty 1-D array"),
    ({"memory_bytes": None}, r"guest size is unknown"),
    ({"memory_bytes": np.array([MEMORY, MEMORY])}, r"key 'memory_bytes' must be a integer scalar"),
    ({"n_pages": np.array(65)}, r"n_pages 65 × page_size 4096 is not memory_bytes 262144"),
    ({"dirty": np.zeros((3, 64), bool)}, r"key 'dirty' does not belong to layout npz-pages"),
    ({"extra": np.zeros(1)}, r"unknown key 'extra'"),
    ({"pages": np.array(["a", "b", "c", "d", "e", "f"])}, r"key 'pages' must hold integers"),
])
def test_bad_npz_is_one_line_naming_file_and_key(tmp_path: Path, override: dict, match: str) -> None:
    src = _pages_npz(tmp_path / "in.npz", **override)
    with pytest.raises((TraceError, ConfigError), match=match) as info:
        import_trace(src, tmp_path / "out.npz")
    assert str(info.value).startswith(str(src)) and "\n" not in str(info.value)
    assert not (tmp_path / "out.npz").exists()


def test_hostile_npz_files(tmp_path: Path) -> None:
    # Python objects would need pickle: refused from the header, never unpickled
    np.savez(tmp_path / "obj.npz", t_end_s=np.array([1.0]), offsets=np.array([0, 1]),
             pages=np.array([object()], dtype=object), memory_bytes=np.array(MEMORY))
    with pytest.raises(TraceError, match=r"obj\.npz: key 'pages' holds Python objects"):
        read_foreign(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(TraceError, match=r"junk\.npz: not a readable NPZ archive"):
        read_foreign(tmp_path / "junk.npz")
    good = _pages_npz(tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(TraceError, match=r"cut\.npz"):
        read_foreign(tmp_path / "cut.npz")
    trace_mod.save(trace_mod.make_trace([np.array([1])], [0.0], [1.0], n_pages=8), tmp_path / "mine.npz")
    with pytest.raises(TraceError, match="already a miglab-trace file"):
        read_foreign(tmp_path / "mine.npz")
    # a dense member that claims more cells than allowed is refused from its header
    np.savez(tmp_path / "wide.npz", t_end_s=np.array(T_END), dirty=_dense())
    with pytest.raises(TraceError, match=r"key 'dirty': 3 × 64 exceeds the import limit"):
        read_foreign(tmp_path / "wide.npz", limits=ImportLimits(max_dense_bytes=100))


def test_trace_import_verb_writes_a_trace_the_other_verbs_read(tmp_path, capsys):
    from harness.cli import main
    from sim.trace import load

    src = tmp_path / "pages.csv"
    src.write_text("interval,page\n0,1\n0,5\n1,5\n2,9\n")
    out = tmp_path / "t.npz"
    assert main(["trace", "import", str(src), "-o", str(out), "--interval", "500ms", "--intervals", "3",
                 "--memory", "1MiB"]) == 0
    t = load(str(out))
    assert t.n_intervals == 3 and t.n_pages == 256 and t.meta["source"]["layout"] == "csv"
    assert main(["trace", "info", str(out)]) == 0
    assert main(["trace", "import", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "u.npz"),
                 "--interval", "1s", "--intervals", "3", "--memory", "1MiB"]) == 2
    assert not (tmp_path / "u.npz").exists()
    assert "missing.csv" in capsys.readouterr().err
