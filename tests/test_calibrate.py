"""Calibration: working-set curve, page-class fit, sampled page-exact mode and ``miglab calibrate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from sim.bitmap import interval_bitmaps, popcount
from sim.calibrate import (
    _checked_curve,
    _criterion,
    _fit_to_classes,
    _saturated_notes,
    _spread_linear_tail,
    _sweep_hint,
    _trim_to_guest,
    calibrate,
    default_window_counts,
    fit_classes,
    working_set_curve,
)
from sim.errors import ConfigError, TraceError
from sim.model import DirtyModel, PageClass
from sim.sampling import class_ranges, sample_dirty_pages
from sim.trace import load, make_trace, save


def poisson_trace(classes, n_pages, n_intervals=120, interval_s=0.5, seed=1, meta=None):
    """Each class (pages, rate) is a contiguous page range; every page is dirtied in an
    interval independently with probability 1 - exp(-rate * interval_s)."""
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(n_intervals):
        parts, lo = [], 0
        for n, rate in classes:
            p = -math.expm1(-rate * interval_s)
            parts.append(lo + np.flatnonzero(rng.random(n) < p))
            lo += n
        lists.append(np.concatenate(parts))
    t = np.arange(n_intervals) * interval_s
    return make_trace(lists, t, t + interval_s, n_pages=n_pages, meta=meta)


def brute_force_curve(lists, ks):
    sets = [set(map(int, p)) for p in lists]
    n = len(sets)
    return np.array([np.mean([len(set().union(*sets[i:i + k])) for i in range(n - k + 1)]) for k in ks])


# -- working-set curve --------------------------------------------------------
@pytest.mark.parametrize("budget", [1 << 30, 8 * 37, 24 * 37])  # one chunk; 64-page chunks; 192-page chunks
def test_working_set_curve_equals_brute_force(budget):
    rng = np.random.default_rng(3)
    n_pages, n = 1000, 37
    lists = [np.unique(rng.integers(0, n_pages, rng.integers(0, 80))) for _ in range(n)]
    starts = np.cumsum(rng.uniform(0.1, 1.0, n))  # uneven intervals with gaps
    ends = starts + 0.05
    trace = make_trace(lists, starts, ends, n_pages=n_pages)
    ks = np.arange(1, n + 1)
    window_s, pages = working_set_curve(trace, ks, budget_bytes=budget)
    assert np.array_equal(pages, brute_force_curve(lists, ks))
    expect_s = [np.mean(ends[k - 1:] - starts[:n - k + 1]) for k in ks]
    assert np.allclose(window_s, expect_s)


@settings(max_examples=40, deadline=None)
@given(n_pages=st.integers(1, 300), n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
       budget=st.sampled_from([8, 64, 1 << 20]))
def test_working_set_curve_property(n_pages, n, seed, budget):
    rng = np.random.default_rng(seed)
    lists = [np.flatnonzero(rng.random(n_pages) < rng.random()) for _ in range(n)]
    trace = make_trace(lists, np.arange(n), np.arange(n) + 1.0, n_pages=n_pages)
    ks = np.arange(1, n + 1)
    _, pages = working_set_curve(trace, ks, budget_bytes=budget * n)
    assert np.array_equal(pages, brute_force_curve(lists, ks))


def test_working_set_curve_defaults_reach_whole_trace():
    trace = poisson_trace([(300, 1.0), (3000, 0.05)], 5000, n_intervals=50)
    ks = default_window_counts(50)
    assert ks[0] == 1 and ks[-1] == 50 and np.all(np.diff(ks) > 0)
    window_s, pages = working_set_curve(trace)
    assert len(pages) == len(ks)
    assert np.all(np.diff(pages) >= 0) and np.all(np.diff(window_s) > 0)
    assert pages[-1] == trace.unique_pages(range(50))
    assert pages[0] == pytest.approx(trace.counts.mean())


def test_interval_bitmaps_match_trace_bitmap():
    trace = poisson_trace([(100, 2.0), (900, 0.1)], 1003, n_intervals=5)
    bms = interval_bitmaps(trace)
    for i in range(5):
        ref = trace.bitmap(i)
        assert np.array_equal(bms[i, :len(ref)], ref)
        assert not bms[i, len(ref):].any()
        assert popcount(bms[i]) == trace.counts[i]


def test_working_set_curve_rejects_bad_windows_and_empty_traces():
    trace = poisson_trace([(10, 1.0)], 100, n_intervals=4)
    with pytest.raises(ConfigError):
        working_set_curve(trace, [0, 1])
    with pytest.raises(ConfigError):
        working_set_curve(trace, [5])
    empty = make_trace([], [], [], n_pages=100)
    with pytest.raises(TraceError):
        working_set_curve(empty)


# -- fitting --------------------------------------------------------------------
# Rates chosen inside the observable band: each class bends between the shortest (0.5 s)
# and the longest (60 s) window. Tolerances were set from the spread over seeds 0-5
# (worst: 0.5 % / 0.6 % for the hot class, 3 % / 2 % for the middle one, 5 % / 9 % for the cold one).
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_three_poisson_classes(seed):
    truth = [(2000, 2.0), (20000, 0.1), (100000, 0.01)]
    trace = poisson_trace(truth, 200000, seed=seed)
    classes, report = fit_classes(*working_set_curve(trace), trace.n_pages)
    assert len(classes) == 3
    tol = [(0.02, 0.02), (0.06, 0.06), (0.10, 0.15)]
    for c, (n, rate), (tn, tr) in zip(classes, truth, tol, strict=True):
        assert c.kind == "poisson"
        assert c.pages == pytest.approx(n, rel=tn)
        assert c.rate_per_page_per_s == pytest.approx(rate, rel=tr)
    assert report["max_rel_error"] < 0.005
    assert report["r2"] > 0.9999
    assert report["n_classes"] == 3 and len(report["residuals"]) == report["n_windows"]


def test_fit_chooses_one_class_for_one_class_data():
    trace = poisson_trace([(5000, 2.0)], 50000, seed=4)
    classes, report = fit_classes(*working_set_curve(trace), trace.n_pages, max_classes=3)
    assert len(classes) == 1
    assert classes[0].pages == pytest.approx(5000, rel=0.01)
    assert classes[0].rate_per_page_per_s == pytest.approx(2.0, rel=0.02)
    assert set(report["criterion"]) >= {"1"}


def test_fit_of_exact_curve_is_exact():
    model = DirtyModel(10**6, 4096, (PageClass(3000, 8.0), PageClass(60000, 0.3)))
    t = np.geomspace(0.05, 100, 30)
    classes, report = fit_classes(t, model.working_set(t), model.n_pages)
    assert [round(c.pages) for c in classes] == [3000, 60000]
    assert [c.rate_per_page_per_s for c in classes] == pytest.approx([8.0, 0.3], rel=1e-4)
    assert report["rmse_pages"] < 1.0


def test_fit_sweep_class():
    # uniform sweep: 40000 pages visited in a fixed permutation, 2000 pages per interval
    perm = np.random.default_rng(0).permutation(40000)
    lists = [np.sort(perm[(2000 * i + np.arange(2000)) % 40000]) for i in range(120)]
    t = np.arange(120) * 0.5
    trace = make_trace(lists, t, t + 0.5, n_pages=100000)
    curve = working_set_curve(trace)
    classes, report = fit_classes(*curve, trace.n_pages)
    assert [(c.kind, round(c.pages)) for c in classes] == [("sweep", 40000)]
    assert classes[0].rate_per_page_per_s == pytest.approx(0.1, rel=1e-6)
    poisson_only, rep2 = fit_classes(*curve, trace.n_pages, kinds=("poisson",))
    assert rep2["max_rel_error"] > 0.05 and any("sweep" in n for n in rep2["notes"])


def test_fit_linear_class_becomes_cold_remainder():
    # 40000 pages at 2.5e-4/s never bend over 60 s (rate x T = 0.015): only pages x rate is observable
    model = DirtyModel(10**6, 4096, (PageClass(100000, 5.0), PageClass(40000, 2.5e-4)))
    t = np.geomspace(0.5, 60, 28)
    classes, report = fit_classes(t, model.working_set(t), model.n_pages)
    hot, cold = classes
    assert hot.pages == pytest.approx(100000, rel=1e-3)
    assert hot.pages + cold.pages == pytest.approx(10**6)
    assert cold.pages * cold.rate_per_page_per_s == pytest.approx(10.0, rel=0.02)
    assert report["max_rel_error"] < 0.001 and any("linear" in n for n in report["notes"])


def test_fit_of_sweep_that_never_wraps_keeps_its_write_rate():
    # a sweep with a 200 s cycle over a 60 s trace is a straight line: pages x rate is all there is to fit
    model = DirtyModel(10**6, 4096, (PageClass(5000, 3.0), PageClass(100000, 1 / 200, "sweep")))
    t = np.geomspace(0.5, 60, 28)
    (hot, slow), report = fit_classes(t, model.working_set(t), model.n_pages)
    assert hot.pages == pytest.approx(5000, rel=0.01) and hot.rate_per_page_per_s == pytest.approx(3.0, rel=0.02)
    assert slow.pages * slow.rate_per_page_per_s == pytest.approx(500, rel=0.02)
    assert slow.pages > 0.9 * (10**6 - 5000)  # spread over the free pages, not an arbitrary 100000
    assert report["max_rel_error"] < 0.01


def test_fit_rejects_bad_input():
    with pytest.raises(ConfigError):
        fit_classes([1.0, 2.0], [1.0], 100)
    with pytest.raises(ConfigError):
        fit_classes([0.0, 1.0], [0.0, 1.0], 100)
    with pytest.raises(ConfigError):
        fit_classes([1.0], [1.0], 100, kinds=("zipf",))
    classes, report = fit_classes([1.0, 2.0], [0.0, 0.0], 100)
    assert classes == () and report["n_classes"] == 0


# -- the fit's phases, one at a time ---------------------------------------------
def test_checked_curve_sorts_by_window_and_bounds_the_rates():
    curve = _checked_curve([4.0, 1.0, 2.0], [40.0, 10.0, 20.0], 1000, 2, ("poisson",))
    assert curve.window_s.tolist() == [1.0, 2.0, 4.0] and curve.pages.tolist() == [10.0, 20.0, 40.0]
    assert curve.weight.tolist() == [0.1, 0.05, 0.025]
    lo, hi = curve.log_rate_bounds
    assert lo == pytest.approx(math.log(1e-3 / 4.0)) and hi == pytest.approx(math.log(20.0))
    with pytest.raises(ConfigError, match="max_classes"):
        _checked_curve([1.0], [1.0], 100, 0, ("poisson",))
    with pytest.raises(ConfigError, match="kind"):
        _checked_curve([1.0], [1.0], 100, 1, ())


def test_criterion_adds_no_class_below_the_noise_floor():
    # Both fits are far below the 0.1 % noise floor: the extra class's parameters decide.
    best = {1: (np.zeros(2), ["poisson"], 1e-12), 2: (np.zeros(4), ["poisson"] * 2, 1e-14)}
    crit = _criterion(best, 20)
    assert crit[1] < crit[2]
    # A real improvement wins it.
    crit = _criterion({1: best[1][:2] + (1.0,), 2: best[2][:2] + (1e-6,)}, 20)
    assert crit[2] < crit[1]


def test_fit_to_classes_drops_slivers_and_sorts_hottest_first():
    x = np.array([100.0, 0.2, 50.0, math.log(0.5), math.log(90.0), math.log(8.0)])
    classes = _fit_to_classes((x, ["poisson", "poisson", "sweep"], 0.0))
    assert classes == [PageClass(50.0, pytest.approx(8.0), "sweep"), PageClass(100.0, pytest.approx(0.5))]


def test_saturated_classes_get_a_note():
    hi = math.log(20.0)
    notes = _saturated_notes([PageClass(10.0, 20.0), PageClass(500.0, 0.1)], hi)
    assert len(notes) == 1 and "10 pages" in notes[0] and "lower bound" in notes[0]


def test_linear_tail_is_spread_over_the_free_pages():
    hot, slow = PageClass(1000.0, 5.0), PageClass(100.0, 1e-4)
    classes, notes = _spread_linear_tail([hot, slow], 10_000, 60.0)
    assert classes[0] == hot and classes[1].pages == 9000.0
    assert classes[1].pages * classes[1].rate_per_page_per_s == pytest.approx(100.0 * 1e-4)  # write rate kept
    assert len(notes) == 1
    # One that bends within the trace stays as fitted; so does a lone class.
    assert _spread_linear_tail([hot, PageClass(100.0, 1.0)], 10_000, 60.0) == ([hot, PageClass(100.0, 1.0)], [])
    assert _spread_linear_tail([slow], 10_000, 60.0) == ([slow], [])
    # A sweep is linear until it wraps: rate x T_max = 0.6 < 1.
    sweep = PageClass(100.0, 0.01, "sweep")
    assert _spread_linear_tail([hot, sweep], 10_000, 60.0)[0][1].pages == 9000.0


def test_sweep_hint_only_for_a_poor_poisson_only_fit():
    t = np.geomspace(0.1, 100.0, 12)
    sweep = DirtyModel(10_000, 4096, (PageClass(5000.0, 0.05, "sweep"),))
    curve = _checked_curve(t, sweep.working_set(t), 10_000, 1, ("poisson",))
    assert _sweep_hint([PageClass(5000.0, 0.05)], curve, ("poisson",))  # exponential vs a ramp: > 5 % off
    assert not _sweep_hint([PageClass(5000.0, 0.05, "sweep")], curve, ("poisson",))  # exact
    assert not _sweep_hint([PageClass(5000.0, 0.05)], curve, ("poisson", "sweep"))


def test_trim_to_guest_scales_only_an_overshoot():
    fits = [PageClass(60.0, 1.0), PageClass(40.0, 0.1)]
    assert _trim_to_guest(fits, 100) == fits
    trimmed = _trim_to_guest([PageClass(60.0, 1.0), PageClass(60.0, 0.1)], 100)
    assert sum(c.pages for c in trimmed) == pytest.approx(100.0)
    assert [c.rate_per_page_per_s for c in trimmed] == [1.0, 0.1]


# -- calibrate and rescale ------------------------------------------------------
def test_calibrate_records_provenance_and_round_trips(tmp_path):
    trace = poisson_trace([(1500, 1.0), (12000, 0.08)], 65536, meta={"zero_page_fraction": 0.25,
                                                                      "hypervisor": "qemu", "workload": "hotcold"})
    path = tmp_path / "t.npz"
    sha = save(trace, path)
    model = calibrate(load(path))
    assert model.n_pages == 65536 and model.zero_page_fraction == 0.25
    assert model.source["trace_sha256"] == sha and model.source["trace"] == str(path)
    assert model.source["trace_meta"]["hypervisor"] == "qemu"
    assert model.source["miglab_version"]
    assert model.fit["max_rel_error"] < 0.01 and model.fit["interval_s"] == pytest.approx(0.5)
    # the classes cover the guest: the fitted ones plus a rate-zero class of untouched pages
    assert sum(c.pages for c in model.classes) == pytest.approx(65536)
    assert model.classes[-1].rate_per_page_per_s == 0 and model.fit["untouched_pages"] > 50000
    model.save(tmp_path / "m.json")
    again = DirtyModel.load(tmp_path / "m.json")
    assert again == model or again.to_dict() == json.loads(json.dumps(model.to_dict()))


def test_calibrate_rejects_bad_zero_page_fraction():
    trace = poisson_trace([(100, 1.0)], 1000, n_intervals=8, meta={"zero_page_fraction": 3})
    with pytest.raises(TraceError, match="zero_page_fraction"):
        calibrate(trace)


def test_rescale_laws_preserve_what_they_claim():
    trace = poisson_trace([(2000, 2.0), (20000, 0.1), (100000, 0.01)], 200000)
    model = calibrate(trace)
    t = np.geomspace(0.1, 100, 20)
    big = 64 * model.memory_bytes

    absolute = model.rescale(big, "absolute")
    assert absolute.n_pages == 64 * model.n_pages
    largest = max(range(3), key=lambda i: model.classes[i].pages)
    for i, (a, b) in enumerate(zip(model.classes, absolute.classes, strict=True)):
        if i != largest:
            assert a == b  # the hot classes keep pages and rate
    assert sum(c.pages for c in absolute.classes) == pytest.approx(absolute.n_pages)
    # the cold remainder keeps its write rate, so the total write rate is unchanged
    assert absolute.write_rate_pages_per_s == pytest.approx(model.write_rate_pages_per_s)

    prop = model.rescale(big, "proportional")
    assert np.allclose(prop.working_set(t), 64 * model.working_set(t))
    assert prop.write_rate_pages_per_s == pytest.approx(64 * model.write_rate_pages_per_s)
    assert [c.rate_per_page_per_s for c in prop.classes] == [c.rate_per_page_per_s for c in model.classes]


# -- sampled page-exact mode ----------------------------------------------------
MODEL = DirtyModel(100000, 4096, (PageClass(1000, 50.0), PageClass(20000, 1.0), PageClass(50000, 0.01),
                                  PageClass(10001, 2.0, "sweep")))


def sampled_bitmap(model, window_s, rng):
    """One draw of :func:`sample_dirty_pages` as a packed bitmap in the layout of Trace.bitmap."""
    mask = np.zeros(model.n_pages, dtype=bool)
    mask[sample_dirty_pages(model, window_s, rng)] = True
    return np.packbits(mask, bitorder="little")


@pytest.mark.parametrize("window_s", [0.01, 0.3, 5.0])
def test_sampled_mean_matches_working_set(window_s):
    rng = np.random.default_rng(11)
    draws = 200
    lists = np.array([len(sample_dirty_pages(MODEL, window_s, rng)) for _ in range(draws)])
    expect = float(MODEL.working_set(window_s))
    # variance of a sum of independent Bernoullis <= its mean; the sweep run adds at most +-1
    se = math.sqrt(expect / draws) + 1.0
    assert abs(lists.mean() - expect) < 5 * se


def test_sampled_sets_respect_class_ranges_and_layout():
    rng = np.random.default_rng(5)
    ranges = class_ranges(MODEL)
    assert ranges[0] == (0, 1000) and ranges[-1] == (71000, 81001)
    pages = sample_dirty_pages(MODEL, 0.05, rng)
    assert pages.dtype == np.int64
    assert np.all(np.diff(pages) > 0)  # sorted, each page once
    assert pages.min() >= 0 and pages.max() < 81001  # nothing beyond the classes
    # the sweep class dirties one contiguous (cyclic) run of about 10001 * 0.1 pages
    sweep = pages[pages >= 71000] - 71000
    assert len(sweep) in (1000, 1001)
    gaps = np.diff(sweep)
    assert (gaps == 1).sum() >= len(sweep) - 2


def test_sampled_dense_path_dirties_every_hot_page():
    rng = np.random.default_rng(6)
    pages = sample_dirty_pages(MODEL, 10.0, rng)  # hot class p ~ 1: one uint32 draw per page
    assert np.array_equal(pages[pages < 1000], np.arange(1000))  # rate 50/s over 10 s
    assert pages.max() < 81001  # pages beyond the classes are never dirtied
    with pytest.raises(ConfigError):
        sample_dirty_pages(MODEL, -1.0, rng)
    with pytest.raises(ConfigError):
        sample_dirty_pages(MODEL, math.inf, rng)


def test_sampled_mode_scales_to_a_terabyte_guest():
    model = DirtyModel(2**28, 4096, (PageClass(12288, 20.0), PageClass(2**28 - 12288, 1e-4)))
    bm = sampled_bitmap(model, 0.1, np.random.default_rng(0))
    assert bm.nbytes == 2**25
    expect = float(model.working_set(0.1))
    assert abs(popcount(bm) - expect) < 6 * math.sqrt(expect)


# -- CLI -------------------------------------------------------------------------
@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "hc.npz"
    save(poisson_trace([(1000, 2.0), (8000, 0.1)], 32768, n_intervals=60, meta={"workload": "hotcold"}), path)
    return path


def test_cli_calibrate_writes_loadable_model(trace_file, tmp_path, capsys):
    out = tmp_path / "m" / "model.json"
    out.parent.mkdir()  # an -o FILE's directory must exist
    assert main(["calibrate", str(trace_file), "-o", str(out), "--classes", "2"]) == 0
    model = DirtyModel.load(out)
    assert model.n_pages == 32768 and len(model.classes) == 3  # two fitted + the untouched pages
    assert model.classes[-1].rate_per_page_per_s == 0.0
    assert sum(c.pages for c in model.classes) == pytest.approx(32768)
    printed = capsys.readouterr().out
    assert "rate/page/s" in printed and "max relative error" in printed and str(out) in printed


def test_cli_calibrate_rescales(trace_file, tmp_path):
    out = tmp_path / "big.json"
    assert main(["calibrate", str(trace_file), "-o", str(out), "--memory", "1TiB", "--scaling", "absolute"]) == 0
    model = DirtyModel.load(out)
    assert model.memory_bytes == 2**40 and model.source["scaling"] == "absolute"
    assert min(c.pages for c in model.classes) == pytest.approx(1000, rel=0.05)  # the hot set stays absolute


def test_cli_calibrate_truncated_trace_is_one_line_exit_2(trace_file, tmp_path, capsys):
    bad = tmp_path / "cut.npz"
    bad.write_bytes(trace_file.read_bytes()[:300])
    out = tmp_path / "model.json"
    assert main(["calibrate", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.npz", "hc.npz"]  # no model, no temp file


def test_cli_calibrate_flag_errors(trace_file, tmp_path, capsys):
    out = tmp_path / "model.json"
    assert main(["calibrate", str(trace_file), "-o", str(out), "--scaling", "proportional"]) == 2
    assert main(["calibrate", str(trace_file), "-o", str(out), "--memory", "4 parsecs"]) == 2
    assert main(["calibrate", str(trace_file), "-o", str(out), "--classes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--scaling" in err[0] and "parsecs" in err[1] and "--classes" in err[2]
    assert not out.exists()
