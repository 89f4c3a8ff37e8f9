"""Hostile input, every class of it: the contract is one line naming the file (and key) or the flag, exit 2,
no traceback, nothing written.

A table of hostile flags and hostile files (built in ``tmp_path``) runs through ``main(argv)`` in process
(cheap); a few representative cases run as real subprocesses; hypothesis throws arbitrary values at the
parsers and loaders underneath, which must either accept a value (and then hold a finite, in-range number)
or refuse it with a located :class:`sim.errors.MiglabError`, never anything else. Time is bounded by
pytest-timeout (the marker below), not by a timed assert.

Nothing here writes to ``/dev``: ``/dev/full`` is only ever *checked* (``check_output_file``).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from sim import inputs
from sim.atomic import atomic_path, check_output_file
from sim.errors import ConfigError, MiglabError, OutputError, ResourceError, TraceError
from sim.model import DirtyModel
from sim.scenario import Scenario
from sim.trace import make_trace, save
from sim.units import parse_bandwidth, parse_duration, parse_size

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SIM = ["simulate", "--workload", "uniform:rate=1000", "--memory", "64MiB"]


def refused(capsys, argv: list[str], *names: str, output: Path | None = None) -> str:
    """Run ``miglab argv``; assert the contract and that the line names each of ``names``."""
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (argv, err, captured.out[-500:])
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("miglab"), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    if output is not None:
        assert not output.exists() or not output.is_file() or output.stat().st_size == 0 or output.is_fifo()
        leftovers = [p for p in output.parent.glob(".*.tmp")] if output.parent.is_dir() else []
        assert not leftovers, leftovers
    return lines[0]


# --------------------------------------------------------------------------- flags
FLAG_CASES = [
    # (argv after SIM, the words the line must contain)
    (["--memory", ""], ["--memory", "empty"]),
    (["--memory", "1e400B"], ["--memory", "not finite"]),
    (["--memory", "nanGiB"], ["--memory"]),
    (["--memory", "4096"], ["--memory", "give a unit"]),
    (["--memory", "0B"], ["--memory", "must be positive"]),
    (["--downtime-limit", "0"], ["--downtime-limit: must be positive"]),
    (["--downtime-limit", "0ms"], ["--downtime-limit: must be positive"]),
    (["--downtime-limit", "300"], ["--downtime-limit", "give a unit, e.g. 300ms"]),
    (["--downtime-limit", "1e400s"], ["--downtime-limit", "not finite"]),
    (["--rtt", "10"], ["--rtt", "give a unit"]),
    (["--rtt", "-1ms"], ["--rtt"]),
    (["--bandwidth", "0"], ["--bandwidth: must be positive"]),
    (["--bandwidth", "1000"], ["--bandwidth", "give a unit"]),
    (["--bandwidth", "infMiB/s"], ["--bandwidth"]),
    (["--bandwidth", "1e400Gbit/s"], ["--bandwidth", "not finite"]),
    (["--max-bandwidth", "0MiB/s"], ["--max-bandwidth: must be positive"]),
    (["--xbzrle-cache", "1e400B"], ["--xbzrle-cache"]),
    (["--postcopy-after", "-1"], ["--postcopy-after"]),
    (["--set", "strategy.multifd_channels=0"], ["--set strategy.multifd_channels", "at least 1"]),
    (["--set", "workload.interval_s=0"], ["--set workload.interval_s", "positive"]),
    (["--set", "workload.page_size_bytes=3"], ["--set workload.page_size_bytes", "power of two"]),
    (["--set", "workload.zero_page_fraction=5"], ["--set workload.zero_page_fraction", "[0, 1]"]),
    (["--set", "link.rtt_s=nan"], ["--set link.rtt_s", "finite"]),
    (["--set", "link.bandwidth_Bps=inf"], ["--set link.bandwidth_Bps", "finite"]),
    (["--set", "strategy.kind=teleport"], ["--set strategy.kind", "teleport"]),
    (["--set", "strategy.max_rounds=2.5"], ["--set strategy.max_rounds", "whole number"]),
    (["--set", "nonsense"], ["--set", "FIELD=VALUE"]),
]


@pytest.mark.parametrize("extra, words", FLAG_CASES, ids=[" ".join(c[0]) or "empty" for c in FLAG_CASES])
def test_bad_flag_is_one_line_naming_the_flag(capsys, tmp_path, extra, words):
    out = tmp_path / "r.json"
    line = refused(capsys, [*SIM, *extra, "-o", str(out)], *words, output=out)
    assert "override" not in line
    assert not out.exists()


def test_page_exact_run_too_big_is_refused_with_its_estimate(capsys, tmp_path):
    path = _json(tmp_path, "m.json", _model())
    refused(capsys, ["simulate", "--model", str(path), "--mode", "sampled", "--memory", "1PiB"], "--memory",
            "1.00 PiB guest", "would need about")


def test_compare_needs_a_strategy(capsys, tmp_path):
    refused(capsys, ["compare", "--workload", "uniform:rate=1000", "--memory", "64MiB", "--strategies", ",",
                     "-o", str(tmp_path / "c")], "--strategies")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("extra, words", [
    (["--interval", "1ns"], ["--interval", "intervals would need about", "TiB"]),
    (["--interval", "10min"], ["--interval", "longer than the trace"]),
    (["--interval", "0s"], ["--interval", "positive"]),
    (["--interval", "300"], ["--interval", "give a unit"]),
    (["--seconds", "0"], ["--seconds", "positive"]),
    (["--zero-fraction", "5"], ["--zero-fraction", "at most 1"]),
    (["--zero-fraction", "nan"], ["--zero-fraction", "finite"]),
    (["--memory", "1PiB"], ["--memory", "would need about"]),
])
def test_trace_synth_refuses_before_spending(capsys, tmp_path, extra, words):
    out = tmp_path / "t.npz"
    refused(capsys, ["trace", "synth", "uniform:rate=1000", "--memory", "64MiB", *extra, "-o", str(out)], *words,
            output=out)
    assert not out.exists()


# --------------------------------------------------------------------------- files
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _model(**change) -> dict:
    d = {"format": "miglab-model", "version": 1, "n_pages": 16384, "page_size": 4096, "zero_page_fraction": 0.1,
         "classes": [{"pages": 1000.0, "rate_per_page_per_s": 2.0, "kind": "poisson"}], "fit": {}, "source": {}}
    for k, v in change.items():
        if k.startswith("class_"):
            d["classes"][0][k[6:]] = v
        else:
            d[k] = v
    return d


def _json(tmp_path: Path, name: str, obj) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj))  # json writes NaN and Infinity as such: hostile, and what Python produces
    return p


MODEL_CASES = {
    "nan pages": (_model(class_pages=float("nan")), "classes[0].pages"),
    "inf rate": (_model(class_rate_per_page_per_s=float("inf")), "classes[0].rate_per_page_per_s"),
    "negative rate": (_model(class_rate_per_page_per_s=-1), "classes[0].rate_per_page_per_s"),
    "zero fraction 5": (_model(zero_page_fraction=5), "zero_page_fraction"),
    "zero fraction nan": (_model(zero_page_fraction=float("nan")), "zero_page_fraction"),
    "page size 3": (_model(page_size=3), "page_size"),
    "n_pages 0": (_model(n_pages=0), "n_pages"),
    "n_pages string": (_model(n_pages="many"), "n_pages"),
    "n_pages bool": (_model(n_pages=True), "n_pages"),
    "classes not a list": (_model(classes={"a": 1}), "classes"),
    "unknown kind": (_model(class_kind="weird"), "classes[0].kind"),
    "wrong format": (_model(format="other"), "format"),
    "not an object": ([1, 2], "not a miglab model"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_names_file_and_key(capsys, tmp_path, case):
    obj, key = MODEL_CASES[case]
    path = _json(tmp_path, "m.json", obj)
    refused(capsys, ["simulate", "--model", str(path)], str(path), key)


HOST_CASES = {
    "nan switchover": ({"constants": {"switchover_s": float("nan")}}, "switchover_s", "finite"),
    "negative setup": ({"setup_s": -1}, "setup_s", "negative"),
    "efficiency 0": ({"throughput_efficiency": 0}, "throughput_efficiency", "(0, 1.5]"),
    "strategy key": ({"strategy.kind": "postcopy"}, "strategy.kind", "not a host constant"),
    "link bandwidth": ({"link.bandwidth_Bps": 1e9}, "link.bandwidth_Bps", "not a host constant"),
    "unknown field": ({"warp_s": 1}, "warp_s", "not a host constant"),
    "string value": ({"setup_s": "soon"}, "setup_s", "soon"),
    "not an object": ([], "", "JSON object"),
}


@pytest.mark.parametrize("case", list(HOST_CASES))
def test_bad_host_json_names_file_and_key(capsys, tmp_path, case):
    obj, key, words = HOST_CASES[case]
    path = _json(tmp_path, "host.json", obj)
    line = refused(capsys, [*SIM, "--host", str(path)], str(path), key, words)
    assert "override" not in line


def _toml(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


SCENARIO_CASES = {
    "not utf-8": (b'name = "\xff\xfe"\n', "not UTF-8"),
    "not toml": ("[link\n", "not valid TOML"),
    "nan rtt": ("[link]\nrtt_s = nan\n", "link.rtt_s"),
    "inf bandwidth": ("[link]\nbandwidth_Bps = inf\n", "link.bandwidth_Bps"),
    "bare duration string": ('[link]\nrtt_s = "10"\n', "give a unit"),
    "huge size": ('[workload]\nmemory_bytes = "1e400B"\n', "workload.memory_bytes"),
    "memory string": ('[workload]\nmemory_bytes = "many"\n', "workload.memory_bytes"),
    "zero downtime": ("[strategy]\ndowntime_limit_s = 0\n", "strategy.downtime_limit_s"),
    "multifd 0": ("[strategy]\nmultifd_channels = 0\n", "strategy.multifd_channels"),
    "interval 0": ("[workload]\ninterval_s = 0\n", "workload.interval_s"),
    "zero fraction 5": ("[workload]\nzero_page_fraction = 5\n", "workload.zero_page_fraction"),
    "page size 3": ("[workload]\npage_size_bytes = 3\n", "workload.page_size_bytes"),
    "unknown field": ("[link]\nspeed = 3\n", "link.speed"),
    "table as value": ("link = 3\n", "link"),
    "wrong version": ("schema_version = 9\n", "schema_version"),
}


@pytest.mark.parametrize("case", list(SCENARIO_CASES))
def test_bad_scenario_file_names_file_and_key(capsys, tmp_path, case):
    text, words = SCENARIO_CASES[case]
    path = _toml(tmp_path, "s.toml", text)
    refused(capsys, ["simulate", "--scenario", str(path)], str(path), words)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir", "missing"])
@pytest.mark.parametrize("flag", ["--model", "--scenario", "--host", "--trace"])
def test_special_input_files_are_refused_without_reading(capsys, tmp_path, flag, special):
    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "f", "dir": tmp_path, "missing": tmp_path / "no"}[special]
    if special == "fifo":
        _fifo(path)  # opening a FIFO for reading would block: it must be refused before open()
    argv = ["simulate", flag, str(path)] if flag != "--host" else [*SIM, "--host", str(path)]
    refused(capsys, argv, str(path))


def test_oversized_json_is_refused_before_parsing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_TEXT_BYTES", 1024)
    path = _json(tmp_path, "m.json", _model(fit={"pad": "x" * 4096}))
    # --uncalibrated: the bundled host.json (which carries its provenance) is itself over a 1 KiB limit
    refused(capsys, ["simulate", "--uncalibrated", "--model", str(path)], str(path), "more than")


# --------------------------------------------------------------------------- traces
def _trace_arrays(tmp_path: Path) -> dict[str, np.ndarray]:
    t = make_trace([np.array([1, 2, 3]), np.array([4])], [0.0, 0.5], [0.5, 1.0], n_pages=64)
    ok = tmp_path / "ok.npz"
    save(t, ok)
    with np.load(ok) as z:
        return {k: z[k] for k in z.files}


def _npz(tmp_path: Path, name: str, **change) -> Path:
    a = {**_trace_arrays(tmp_path), **change}
    p = tmp_path / name
    np.savez_compressed(p, **a)
    return p


def _bomb(tmp_path: Path) -> Path:
    """A small npz whose ``deltas`` inflates to 256 MiB of zeros, far more than its indptr counts."""
    a = _trace_arrays(tmp_path)
    p = tmp_path / "bomb.npz"
    n = 2**28 // 4
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in a.items():
            if k != "deltas":
                b = io.BytesIO()
                np.save(b, v)
                zf.writestr(k + ".npy", b.getvalue())
        with zf.open("deltas.npy", "w", force_zip64=True) as f:
            b = io.BytesIO()
            np.lib.format.write_array_header_1_0(b, {"descr": "<u4", "fortran_order": False, "shape": (n,)})
            f.write(b.getvalue())
            chunk = bytes(2**22)
            for _ in range(2**28 // 2**22):
                f.write(chunk)
    assert p.stat().st_size < 2**20
    return p


TRACE_CASES = {
    "1 PiB guest": (lambda d: _npz(d, "huge.npz", n_pages=np.array(2**38)), ["n_pages", "would need about"]),
    "zip bomb": (_bomb, ["zip bomb"]),
    "zero intervals": (lambda d: _npz(d, "empty.npz", t_start_s=np.zeros(0), t_end_s=np.zeros(0),
                                      indptr=np.zeros(1, np.int64), deltas=np.zeros(0, np.uint32)),
                       ["no intervals"]),
    "zero page fraction 5": (lambda d: _npz(d, "zpf.npz", meta_json=np.array(json.dumps({"zero_page_fraction": 5}))),
                             ["zero_page_fraction"]),
    "zero page fraction nan": (lambda d: _npz(d, "zpn.npz",
                                              meta_json=np.array('{"zero_page_fraction": NaN}')),
                               ["zero_page_fraction"]),
    "page size 3": (lambda d: _npz(d, "ps.npz", page_size=np.array(3)), ["page_size"]),
    "nan times": (lambda d: _npz(d, "nan.npz", t_end_s=np.array([np.nan, 1.0])), ["finite"]),
    "not a zip": (lambda d: _toml(d, "junk.npz", b"\x00" * 2048), ["malformed"]),
    "truncated": (lambda d: _toml(d, "cut.npz", _npz(d, "whole.npz").read_bytes()[:300]), ["malformed"]),
    "empty file": (lambda d: _toml(d, "zero.npz", b""), []),
}


@pytest.mark.parametrize("case", list(TRACE_CASES))
@pytest.mark.parametrize("verb", [["trace", "info"], ["simulate", "--trace"], ["calibrate", "-o", "OUT"]])
def test_bad_trace_is_refused_at_load(capsys, tmp_path, case, verb):
    build, words = TRACE_CASES[case]
    path = build(tmp_path)
    out = tmp_path / "model.json"
    argv = [w if w != "OUT" else str(out) for w in verb] + [str(path)]
    refused(capsys, argv, str(path), *words)
    assert not out.exists()


# --------------------------------------------------------------------------- sweeps, suites, baselines, campaigns
def test_huge_sweep_is_refused_with_its_count_before_building(capsys, tmp_path):
    keys = ["seed", "link.rtt_s", "strategy.downtime_limit_s", "host.setup_s", "host.switchover_s",
            "workload.read_write_ratio", "strategy.xbzrle_cache_bytes"]
    text = 'name = "big"\n[vary]\n' + "".join(f'"{k}" = {list(range(1, 11))}\n' for k in keys)
    path = _toml(tmp_path, "big.toml", text)
    out = tmp_path / "big.parquet"
    refused(capsys, ["sweep", str(path), "-o", str(out), "-q"], str(path), "10,000,000 runs", "--max-runs",
            output=out)
    assert not out.exists()


def test_bad_suite_scenario_names_file_scenario_and_key(capsys, tmp_path):
    path = _toml(tmp_path, "suite.toml", 'name = "s"\n[[scenario]]\nname = "a"\n[scenario.link]\nrtt_s = nan\n')
    refused(capsys, ["regress", "--suite", str(path), "--baseline", str(tmp_path / "b.json")],
            str(path), "scenario 'a'", "link.rtt_s")


def test_baseline_without_metrics_is_refused(capsys, tmp_path):
    suite = _toml(tmp_path, "suite.toml", 'name = "s"\n[[scenario]]\nname = "a"\n[scenario.workload]\n'
                  'memory_bytes = "64MiB"\nspec = "uniform:rate=100"\n')
    base = _json(tmp_path, "b.json", {"format": "miglab-baseline", "version": 1, "kind": "simulated",
                                      "scenarios": {"a": {"scenario_id": "x"}}})
    refused(capsys, ["regress", "--suite", str(suite), "--baseline", str(base), "-q"], str(base), "scenarios.a",
            "metrics")


def test_non_utf8_run_record_is_refused(capsys, tmp_path):
    rec = tmp_path / "records"
    rec.mkdir()
    (rec / "r.json").write_bytes(b'{"scenario": "\xff"}')
    base = _json(tmp_path, "b.json", {"format": "miglab-baseline", "version": 1, "kind": "real", "scenarios": {}})
    refused(capsys, ["regress", str(rec), "--baseline", str(base), "-q"], "r.json", "UTF-8")


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "not utf-8"])
def test_bad_run_record_for_calibrate_host_is_refused_without_reading_it_whole(capsys, tmp_path, kind):
    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "r.fifo", "not utf-8": tmp_path / "r.json"}[kind]
    if kind == "fifo":
        _fifo(path)
    elif kind == "not utf-8":
        path.write_bytes(b'{"scenario": "\xff"}')
    out = tmp_path / "host.json"
    refused(capsys, ["calibrate-host", str(path), "-o", str(out)], str(path), output=out)
    assert not out.exists()


CAMPAIGN = ('name = "c"\n{extra}[[workload]]\nname = "w"\nspec = "uniform:rate=1000"\n[[link]]\nbandwidth = "{bw}"\n'
            'rtt = "{rtt}"\n[[strategy]]\nname = "p"\nkind = "precopy"\n')


@pytest.mark.parametrize("bw, rtt, extra, words", [
    ("1Gbit/s", "1ms", 'repetitions = "many"\n', ["repetitions", "whole number"]),
    ("1Gbit/s", "1ms", "memory = nan\n", ["memory", "finite"]),
    ("1Gbit/s", "1ms", "repetitions = 2.5\n", ["repetitions"]),
    ("0Gbit/s", "1ms", "", ["bandwidth must be positive"]),
    ("1Gbit/s", "1e400s", "", ["not finite"]),
    ("1Gbit/s", "10", "", ["give a unit"]),
])
def test_bad_campaign_names_file_and_key(capsys, tmp_path, bw, rtt, extra, words):
    path = _toml(tmp_path, "c.toml", CAMPAIGN.format(bw=bw, rtt=rtt, extra=extra))
    out = tmp_path / "out"
    refused(capsys, ["validate", str(path), "-o", str(out)], str(path), *words)
    assert not out.exists()


# --------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("kind", ["dir", "fifo", "file-parent", "sys", "empty"])
def test_bad_output_path_is_refused_before_work(capsys, tmp_path, kind):
    (tmp_path / "afile").write_text("x")
    target = {"dir": tmp_path, "fifo": tmp_path / "fifo", "file-parent": tmp_path / "afile" / "r.json",
              "sys": Path("/sys/kernel/miglab-test.json"), "empty": Path("")}[kind]
    if kind == "fifo":
        _fifo(target)
    argv = [*SIM, "-o", "" if kind == "empty" else str(target)]
    refused(capsys, argv, "-o" if kind == "empty" else str(target))
    if kind == "fifo":
        assert stat.S_ISFIFO(os.stat(target).st_mode)  # not replaced
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("argv", [
    [*SIM, "-o", "{missing}/r.json"],
    ["trace", "synth", "uniform:rate=1000", "--memory", "64MiB", "--seconds", "1s", "-o", "{missing}/t.npz"],
    ["compare", "--workload", "uniform:rate=1000", "--memory", "64MiB", "-o", "{missing}/c"],  # a DIR's parent
    ["regress", "--suite", "{suite}", "--baseline", "{baseline}", "--markdown", "{missing}/r.md"],
    ["regress", "--suite", "{suite}", "--baseline", "{baseline}", "--benchmark-json", "{missing}/b.json"],
])
def test_missing_parent_of_a_given_output_is_refused_naming_the_flag(capsys, tmp_path, argv):
    missing = tmp_path / "no" / "such"
    argv = [a.format(missing=missing, suite=ROOT / "results/baselines/sim-suite.toml",
                     baseline=ROOT / "results/baselines/sim.json") for a in argv]
    flag = next(a for a in reversed(argv) if a.startswith("-") and not a.startswith("-q"))
    line = refused(capsys, argv, f"miglab: {flag}: no such directory: ", str(missing))
    assert not (tmp_path / "no").exists(), line  # nothing created


def test_output_directory_may_be_created_when_its_parent_exists(tmp_path):
    from sim.atomic import check_output_dir

    assert check_output_dir(tmp_path / "new", flag="-o") == tmp_path / "new"
    with pytest.raises(OutputError) as e:
        check_output_dir(tmp_path / "a" / "new", flag="-o")
    assert (e.value.flag, e.value.where) == ("-o", str(tmp_path / "a" / "new"))


def test_default_output_paths_still_get_their_parents(tmp_path):
    deep = tmp_path / "results" / "x" / "r.json"  # a path the tool chose: no flag
    assert check_output_file(deep) == deep
    with atomic_path(deep) as tmp:
        tmp.write_text("{}")
    assert deep.read_text() == "{}"


def test_read_only_parent_is_refused(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("root writes into read-only directories; /sys covers the read-only case")
        refused(capsys, [*SIM, "-o", str(ro / "r.json")], str(ro))
    finally:
        ro.chmod(0o755)


def test_dev_full_is_refused_by_the_check_only():
    before = os.stat("/dev/full")
    with pytest.raises(OutputError, match="device"):
        check_output_file("/dev/full")
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_rename_never_replaces_what_became_a_special_file(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(OutputError, match="FIFO"):
        with atomic_path(target) as tmp:
            tmp.write_text("{}")
            _fifo(target)  # the target turned into a FIFO while the result was being written
    assert stat.S_ISFIFO(os.stat(target).st_mode)
    assert not list(tmp_path.glob(".*.tmp"))


def test_output_directory_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "c"
    f.write_text("x")
    refused(capsys, ["compare", "--workload", "uniform:rate=1000", "--memory", "64MiB", "-o", str(f)], str(f))
    assert f.read_text() == "x"


# --------------------------------------------------------------------------- a few as real processes
@pytest.mark.parametrize("argv, words", [
    ([*SIM, "--downtime-limit", "0"], ["miglab: --downtime-limit: must be positive"]),
    (["simulate", "--model", "/dev/zero"], ["/dev/zero", "not a JSON file"]),
    ([*SIM, "--rtt", "10"], ["--rtt", "give a unit"]),
])
def test_refusal_in_a_subprocess(argv, words):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _memory_cap() -> None:
    """In the child: 3 GiB of address space, so a refusal that allocated first would fail instead."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


@pytest.mark.parametrize("build", [lambda d: _npz(d, "huge.npz", n_pages=np.array(2**38)), _bomb])
def test_huge_trace_in_a_subprocess_with_bounded_memory(tmp_path, build):
    path = build(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "trace", "info", str(path)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120, preexec_fn=_memory_cap)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert str(path) in done.stderr and "Traceback" not in done.stderr
    assert ("PiB" in done.stderr and "would need about" in done.stderr) or "zip bomb" in done.stderr


# --------------------------------------------------------------------------- hypothesis: the layers below
_text = st.one_of(st.text(max_size=12), st.from_regex(r"[0-9.eE+-]{1,8}\s?[A-Za-z/]{0,7}", fullmatch=True))
_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70), st.booleans(),
                     st.none(), st.text(max_size=6), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_text)
def test_unit_parsers_accept_finite_values_or_refuse_cleanly(text):
    for parse in (parse_size, parse_duration, parse_bandwidth):
        try:
            value = parse(text)
        except ConfigError as e:
            assert "\n" not in str(e) and e.problem
            continue
        assert math.isfinite(value) and value >= 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(k for k in __import__("sim.scenario", fromlist=["flatten"]).flatten(
    Scenario().to_dict()) if k != "schema_version")), value=_numbers)
def test_any_scenario_field_value_is_accepted_in_range_or_refused_with_its_key(field, value):
    try:
        sc = Scenario().replace(**{field: value})
    except ConfigError as e:
        # the field itself, or (for a rule between two fields, e.g. Xen's min <= max rate) its table's other field
        assert e.key is not None and e.key.split(".")[0] == field.split(".")[0], (field, e.key, str(e))
        assert "\n" not in str(e)
        return
    got = sc.to_dict()
    for part in field.split("."):
        got = got[part]
    if isinstance(got, float):
        assert math.isfinite(got)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["n_pages", "page_size", "zero_page_fraction", "class_pages",
                            "class_rate_per_page_per_s", "class_kind"]), value=_numbers)
def test_any_model_value_is_valid_or_refused_with_its_key(key, value):
    try:
        m = DirtyModel.from_dict(_model(**{key: value}), where="m.json")
    except ConfigError as e:
        assert e.where == "m.json" and e.key and "\n" not in str(e)
        return
    assert m.n_pages >= 1 and 0 <= m.zero_page_fraction <= 1 and not m.page_size & (m.page_size - 1)
    assert all(math.isfinite(c.pages) and math.isfinite(c.rate_per_page_per_s) for c in m.classes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_trace_are_refused_cleanly(tmp_path, data):
    p = tmp_path / "fuzz.npz"
    p.write_bytes(data)
    from sim.trace import load

    with pytest.raises(MiglabError) as e:
        load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_as_json_and_toml_are_accepted_or_refused_cleanly(tmp_path, data):
    p = tmp_path / "fuzz.txt"
    p.write_bytes(data)
    for load in (inputs.load_json, inputs.load_toml):
        try:
            load(p)
        except MiglabError as e:
            assert e.where == str(p) and "\n" not in str(e)


def test_errors_carry_their_location_as_fields():
    e = ConfigError("must be positive, not 0.0", key="downtime_limit_s")
    assert str(e) == "downtime_limit_s: must be positive, not 0.0"
    e.at(where="s.toml", prefix="strategy")
    assert (e.where, e.key, str(e)) == ("s.toml", "strategy.downtime_limit_s",
                                         "s.toml: strategy.downtime_limit_s: must be positive, not 0.0")
    e.at(where="other.toml")  # the innermost location wins
    assert e.where == "s.toml"
    assert str(ConfigError("must be positive", flag="--rtt", where="ignored")) == "--rtt: must be positive"
    t = TraceError("t.npz", "no intervals")
    assert (t.where, t.path, str(t)) == ("t.npz", "t.npz", "t.npz: no intervals")
    r = ResourceError("too big", estimate=2.0**50, where="t.npz", key="n_pages")
    assert r.estimate == 2.0**50 and isinstance(r, ConfigError)
    import pickle

    again = pickle.loads(pickle.dumps(e))
    assert type(again) is ConfigError and str(again) == str(e) and again.key == e.key
