"""The CLI: one-line errors with exit code 2, no half-written outputs, and the main verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from sim.errors import ConfigError
from sim.scenario import Scenario
from sim.trace import make_trace, save


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.npz"
    assert main(["trace", "synth", "hotcold:hot=8MiB,rate=3000", "--memory", "64MiB", "--seconds", "6",
                 "--seed", "2", "-o", str(path)]) == 0
    return path


def _one_line_error(capsys, argv, expect):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expect in err, err
    return err


def test_simulate_trace_json(trace_file, capsys):
    assert main(["simulate", "--trace", str(trace_file), "--bandwidth", "50MiB/s", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["converged"] and out["trace_sha256"] and out["miglab_version"]
    assert out["scenario"]["workload"]["path"] == str(trace_file)


def test_compare_writes_summary_and_plot(trace_file, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["compare", "--trace", str(trace_file), "--bandwidth", "50MiB/s", "-o", str(out)]) == 0
    text = (out / "summary.csv").read_text().splitlines()
    assert text[0].startswith("strategy,") and len(text) == 5
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert "stopcopy" in capsys.readouterr().out


@pytest.mark.parametrize("args,expect", [
    (["--bandwidth", "0"], "bandwidth must be positive"),
    (["--bandwidth=-5MiB/s"], "--bandwidth"),
    (["--bandwidth", "5furlongs/s"], "unknown bandwidth unit"),
    (["--memory", "4GB2"], "--memory"),
    (["--downtime-limit", "3 fortnights"], "unknown duration unit"),
    (["--set", "strategy.kind=teleport"], "unknown kind 'teleport'"),
    (["--set", "link.nonsense=1"], "unknown field 'nonsense'"),
])
def test_bad_flags(capsys, args, expect):
    _one_line_error(capsys, ["simulate", "--workload", "uniform:rate=1000", "--memory", "64MiB", *args], expect)


def test_unknown_strategy_is_an_argparse_one_liner(capsys):
    _one_line_error(capsys, ["simulate", "--strategy", "teleport"], "invalid choice")


def test_bad_workload_spec(capsys):
    _one_line_error(capsys, ["simulate", "--workload", "hotcold:rate=5"], "needs hot")
    _one_line_error(capsys, ["simulate", "--workload", "warp:rate=5"], "unknown workload pattern")


def test_bad_traces(tmp_path, capsys):
    t = make_trace([np.array([1, 2])], [0], [1], n_pages=8)
    good = tmp_path / "g.npz"
    save(t, good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[:40])
    _one_line_error(capsys, ["simulate", "--trace", str(tmp_path / "trunc.npz")], "trunc.npz")
    _one_line_error(capsys, ["simulate", "--trace", str(tmp_path / "nope.npz")], "no such file")
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["n_pages"] = np.array(2, dtype=np.int64)
    with open(tmp_path / "beyond.npz", "wb") as f:
        np.savez(f, **arrays)
    _one_line_error(capsys, ["trace", "info", str(tmp_path / "beyond.npz")], "beyond the guest")


def test_no_half_written_output_on_error(tmp_path, capsys):
    out = tmp_path / "r.json"
    _one_line_error(capsys, ["simulate", "--trace", str(tmp_path / "missing.npz"), "-o", str(out)], "no such file")
    assert not out.exists() and not list(tmp_path.glob(".r.json*"))


def test_trace_and_memory_must_agree(trace_file, capsys):
    _one_line_error(capsys, ["simulate", "--trace", str(trace_file), "--memory", "1GiB"], "at its own size")


def test_scenario_toml_round_trip(tmp_path, capsys):
    sc = Scenario().replace(**{"strategy.kind": "hybrid", "link.rtt_s": "10ms", "workload.memory_bytes": "1GiB"})
    p = tmp_path / "s.toml"
    p.write_text(sc.to_toml())
    assert Scenario.from_toml(p) == sc
    assert Scenario.from_dict(json.loads(sc.to_json())) == sc
    (tmp_path / "bad.toml").write_text("[link\nbandwidth_Bps = 1")
    _one_line_error(capsys, ["simulate", "--scenario", str(tmp_path / "bad.toml")], "not valid TOML")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)
field_names = st.sampled_from(["bandwidth_Bps", "rtt_s", "kind", "memory_bytes", "spec", "max_rounds", "stop_rule",
                               "auto_converge", "zero_page_fraction", "migration_cap_Bps", "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["workload", "link", "host", "strategy", "seed", "name", "schema_version"]),
                       st.dictionaries(field_names, json_values, max_size=4) | json_values, max_size=4))
def test_config_parser_fuzz_only_raises_config_error(d):
    try:
        sc = Scenario.from_dict(d)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert Scenario.from_dict(sc.to_dict()) == sc  # what it accepts, it writes back the same
