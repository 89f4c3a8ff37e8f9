"""``miglab trace info`` and ``miglab trace plot``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.cli import main
from sim.trace import make_trace, save
from sim.traceview import format_summary, heatmap, summary_windows, trace_summary


def hotcold_trace(n_pages=20000, n_intervals=40, interval_s=0.25, seed=2, meta=None):
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(n_intervals):
        hot = np.flatnonzero(rng.random(500) < -math.expm1(-4.0 * interval_s))
        cold = 500 + np.flatnonzero(rng.random(n_pages - 500) < -math.expm1(-0.02 * interval_s))
        lists.append(np.concatenate([hot, cold]))
    t = np.arange(n_intervals) * interval_s
    return make_trace(lists, t, t + interval_s, n_pages=n_pages, meta=meta or {"workload": "hotcold:hot=2MiB"}), lists


@pytest.fixture
def trace_file(tmp_path):
    trace, lists = hotcold_trace()
    path = tmp_path / "hc.npz"
    sha = save(trace, path)
    return path, sha, lists


def test_summary_numbers(trace_file):
    from sim.trace import load

    path, sha, lists = trace_file
    s = trace_summary(load(path))
    assert s["sha256"] == sha and s["n_pages"] == 20000 and s["n_intervals"] == 40
    assert s["duration_s"] == pytest.approx(10.0) and s["memory_bytes"] == 20000 * 4096
    rates = np.array([len(p) for p in lists]) / 0.25
    assert s["dirty_rate"]["pages_per_s"]["mean"] == pytest.approx(rates.mean())
    assert s["dirty_rate"]["pages_per_s"]["p95"] == pytest.approx(np.percentile(rates, 95))
    assert s["dirty_rate"]["MiB_per_s"]["median"] == pytest.approx(np.median(rates) * 4096 / 2**20)
    unique = len(set(np.concatenate(lists).tolist()))
    assert s["unique_pages"] == unique
    ws = s["working_set"]
    assert [w["intervals"] for w in ws] == [1, 2, 4, 8, 16, 32, 40]
    assert ws[0]["pages"] == pytest.approx(np.mean([len(p) for p in lists]))
    assert ws[-1]["pages"] == unique and all(a["pages"] <= b["pages"] for a, b in zip(ws, ws[1:], strict=False))
    assert s["meta"]["workload"] == "hotcold:hot=2MiB"
    text = format_summary(s)
    assert sha in text and "unique" in text and "hotcold:hot=2MiB" in text


def test_summary_of_empty_trace():
    s = trace_summary(make_trace([], [], [], n_pages=64))
    assert s["n_intervals"] == 0 and s["unique_pages"] == 0 and s["working_set"] == []
    assert "empty" in format_summary(s)
    assert list(summary_windows(1)) == [1]


def test_heatmap_counts_are_exact():
    lists = [np.array([0, 1, 2, 3]), np.array([5]), np.array([], dtype=np.int64), np.array([9])]
    trace = make_trace(lists, [0, 1, 2, 3], [1, 2, 3, 4], n_pages=10)
    frac, page_edges, time_edges = heatmap(trace, rows=4)
    # rows of page * 4 // 10: pages 0-2 | 3-4 | 5-7 | 8-9 (3, 2, 3, 2 pages)
    expect = np.array([[3 / 3, 0, 0, 0], [1 / 2, 0, 0, 0], [0, 1 / 3, 0, 0], [0, 0, 0, 1 / 2]])
    assert np.allclose(frac, expect)
    assert time_edges[0] == 0 and time_edges[-1] == 4 and page_edges[-1] == 10
    # more intervals than columns: neighbouring intervals are averaged
    frac2, _, t2 = heatmap(trace, rows=4, max_columns=2)
    assert frac2.shape == (4, 2) and np.allclose(frac2[:, 0], expect[:, :2].mean(axis=1))


def test_cli_info_text_and_json(trace_file, capsys):
    path, sha, _ = trace_file
    assert main(["trace", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "20000 pages" in out and "dirty rate" in out and sha in out
    assert main(["trace", "info", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_intervals"] == 40 and s["sha256"] == sha and s["working_set"][0]["intervals"] == 1


def test_cli_plot_writes_png(trace_file, tmp_path, capsys):
    path, _, _ = trace_file
    out = tmp_path / "plots" / "hc.png"
    out.parent.mkdir()  # an -o FILE's directory must exist
    assert main(["trace", "plot", str(path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["hc.png"]  # no temp file left
    svg = tmp_path / "hc.svg"
    assert main(["trace", "plot", str(path), "-o", str(svg), "--no-fit"]) == 0
    assert b"<svg" in svg.read_bytes()[:2000]


def test_cli_bad_inputs_are_one_line_exit_2(trace_file, tmp_path, capsys):
    path, _, _ = trace_file
    bad = tmp_path / "cut.npz"
    bad.write_bytes(path.read_bytes()[:200])
    out = tmp_path / "x.png"
    assert main(["trace", "info", str(bad)]) == 2
    assert main(["trace", "plot", str(bad), "-o", str(out)]) == 2
    assert main(["trace", "plot", str(path), "-o", str(tmp_path / "x.nope")]) == 2
    assert main(["trace", "info", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("miglab: ") for line in err)
    assert str(bad) in err[0] and "nope" in err[2] and "missing.npz" in err[3]
    assert not out.exists() and not (tmp_path / "x.nope").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.npz", "hc.npz"]
