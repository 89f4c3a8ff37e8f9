"""Trace format v1: round trip, validation, fuzzing of the loader."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.errors import ResourceError, TraceError
from sim.trace import encode, load, make_trace, save
from sim.workload import synth_trace


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _write_raw(path, arrays):
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def test_round_trip_preserves_pages_times_and_meta(tmp_path):
    t = synth_trace("zipf:s=1.1,rate=20000", 64 * 2**20, seconds=5, seed=4)
    p = tmp_path / "z.npz"
    sha = save(t, p)
    u = load(p)
    assert u.sha256 == sha and u.n_pages == t.n_pages and u.n_intervals == 10
    for i in range(t.n_intervals):
        np.testing.assert_array_equal(u.pages(i), t.pages(i))
    assert u.meta["workload"] == "zipf:s=1.1,rate=20000" and "miglab_version" in u.meta


def test_bitmaps_count_a_page_dirtied_twice_once(tmp_path):
    t = make_trace([np.array([1, 5, 9]), np.array([5, 9, 100])], [0, 1], [1, 2], n_pages=128)
    assert t.unique_pages([0, 1]) == 4
    bm = t.union_bitmap([0, 1])
    assert bm.dtype == np.uint8 and len(bm) == 16
    assert np.flatnonzero(np.unpackbits(bm, bitorder="little")).tolist() == [1, 5, 9, 100]


def test_encode_is_delta_csr():
    indptr, deltas = encode([np.array([3, 4, 10]), np.array([], dtype=np.int64), np.array([7])], 16)
    assert indptr.tolist() == [0, 3, 3, 4]
    assert deltas.tolist() == [3, 1, 6, 7]


@pytest.mark.parametrize("mutate,message", [
    (lambda a: a.update(n_pages=np.array(50, dtype=np.int64)), "beyond the guest"),
    (lambda a: a.update(t_start_s=np.array([0.0, 0.2, 0.1])), "not monotonic"),
    (lambda a: a.update(t_end_s=a["t_start_s"].copy()), "does not end after it starts"),
    (lambda a: a.update(indptr=a["indptr"][:-1]), "truncated"),
    (lambda a: a.update(version=np.array(99, dtype=np.int64)), "version 99"),
    (lambda a: a.pop("deltas"), "missing deltas"),
])
def test_each_defect_gets_one_clear_error(tmp_path, mutate, message):
    t = make_trace([np.array([1, 60]), np.array([2]), np.array([3, 4])], [0, 0.5, 1.0], [0.5, 1.0, 1.5], n_pages=64)
    good = tmp_path / "good.npz"
    save(t, good)
    arrays = _arrays(good)
    mutate(arrays)
    bad = tmp_path / "bad.npz"
    _write_raw(bad, arrays)
    with pytest.raises(TraceError) as e:
        load(bad)
    assert message in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)


def test_truncated_file_is_reported(tmp_path):
    t = synth_trace("random:rate=5000", 16 * 2**20, seconds=2, seed=1)
    p = tmp_path / "t.npz"
    save(t, p)
    data = p.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="malformed or truncated"):
        load(tmp_path / "cut.npz")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2000))
def test_loader_fuzz_random_bytes_only_raise_trace_error(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fuzz") / "f.npz"
    p.write_bytes(blob)
    with pytest.raises(TraceError):
        load(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_loader_fuzz_corrupted_members_only_raise_trace_error(tmp_path_factory, data):
    t = make_trace([np.array([1, 2, 9]), np.array([4])], [0, 1], [1, 2], n_pages=16)
    d = tmp_path_factory.mktemp("fz")
    save(t, d / "ok.npz")
    arrays = _arrays(d / "ok.npz")
    key = data.draw(st.sampled_from(sorted(arrays)))
    kind = data.draw(st.sampled_from(["ints", "floats", "text", "scalar"]))
    if kind == "ints":
        arrays[key] = np.array(data.draw(st.lists(st.integers(-2**40, 2**40), max_size=6)), dtype=np.int64)
    elif kind == "floats":
        arrays[key] = np.array(data.draw(st.lists(st.floats(allow_nan=True), max_size=6)), dtype=np.float64)
    elif kind == "text":
        arrays[key] = np.array(data.draw(st.text(max_size=20)))
    else:
        arrays[key] = np.array(data.draw(st.integers(-5, 2**40)), dtype=np.int64)
    _write_raw(d / "bad.npz", arrays)
    try:
        t = load(d / "bad.npz")
    except TraceError:
        return
    except ResourceError as e:  # a corrupted size can claim a guest too big to replay: refused with the estimate
        assert e.where == str(d / "bad.npz") and e.estimate is not None
        return
    # the edit was one the format tolerates: what loads is still a valid trace
    assert t.n_intervals == len(t.t_start_s) == len(t.t_end_s) and t.n_pages > 0
    assert all(((p >= 0) & (p < t.n_pages)).all() for p in map(t.pages, range(t.n_intervals)))


def test_loader_rejects_pickles(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("format.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (), }"
                   + b" " * 50 + b"\n")
    (tmp_path / "p.npz").write_bytes(buf.getvalue())
    with pytest.raises(TraceError):
        load(tmp_path / "p.npz")
