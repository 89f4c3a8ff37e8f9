"""Host constants are never silent: which ones a result used, the bundled default, the fit-range warning."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from sim import hostinfo
from sim.scenario import Scenario


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.npz"
    assert main(["trace", "synth", "hotcold:hot=8MiB,rate=3000", "--memory", "64MiB", "--seconds", "6",
                 "--seed", "2", "-o", str(path)]) == 0
    return path


def test_bundled_host_records_what_it_was_fitted_on():
    src = hostinfo.bundled_host()
    assert src.calibrated and src.fit["range"]["runs"] == 126
    assert src.fit["range"]["memory_bytes"] == [2**29, 2**29]
    assert "126 qemu runs" in src.label() and "results/validation/full/host.json" in src.label()


def test_fit_range_of_runs_skips_files_that_are_not_runs(tmp_path):
    run = {"scenario": Scenario().replace(**{"link.bandwidth_Bps": "1Gbit/s"}).to_dict(), "hypervisor": "qemu"}
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "summary.json").write_text("{}")
    rng = hostinfo.fit_range_of_runs([tmp_path])
    assert rng["runs"] == 1 and rng["bandwidth_Bps"] == [125e6, 125e6]


def test_range_warning_is_one_line_and_only_outside_the_fit():
    src = hostinfo.bundled_host()
    inside = src.apply(Scenario().replace(**{"workload.memory_bytes": "512MiB", "link.bandwidth_Bps": "400Mbit/s",
                                              "link.rtt_s": 0.01}))
    assert hostinfo.range_warnings(inside, src) == []
    big = inside.replace(**{"workload.memory_bytes": "64GiB", "link.bandwidth_Bps": "10Gbit/s"})
    (line,) = hostinfo.range_warnings(big, src)
    assert "64 GiB" in line and "10 Gbit/s" in line and "extrapolated" in line
    assert hostinfo.range_warnings(big, hostinfo.uncalibrated()) == []


def test_of_scenario_recognises_the_bundled_constants_and_the_defaults():
    sc = Scenario()
    assert not hostinfo.of_scenario(sc).calibrated
    assert "uncalibrated" in hostinfo.of_scenario(sc).short_label()
    assert hostinfo.of_scenario(hostinfo.bundled_host().apply(sc)).path == str(hostinfo.BUNDLED_HOST)


def test_simulate_defaults_to_the_bundled_host_and_says_so(capsys):
    argv = ["simulate", "--workload", "uniform:rate=2000", "--memory", "512MiB", "--bandwidth", "400Mbit/s",
            "--rtt", "10ms", "--strategy", "postcopy"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("host constants: results/validation/full/host.json")
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"]["host"]["switchover_s"] > 0 and doc["summary"]["downtime_s"] > 1e-4
    assert doc["host_constants"]["source"] == "results/validation/full/host.json"
    prov = doc["provenance"]
    assert prov["git_commit"] and prov["versions"]["simpy"] and prov["seed"] == 0
    assert str(hostinfo.BUNDLED_HOST) in prov["inputs"]
    for flags in (["--uncalibrated"], ["--host", "none"]):
        assert main([*argv, *flags, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["scenario"]["host"]["switchover_s"] == 0
        assert doc["host_constants"]["source"] == hostinfo.UNCALIBRATED


def test_no_simulated_timeout_unless_asked_and_the_cancel_says_what_was_sent(capsys):
    argv = ["simulate", "--workload", "uniform:rate=200MiB/s", "--memory", "1GiB", "--bandwidth", "100MiB/s"]
    rc = main([*argv, "--max-rounds", "5"])
    assert rc == 1  # does not converge: exit status 1
    assert "timeout" not in capsys.readouterr().out
    assert Scenario().strategy.timeout_s is None
    assert main([*argv, "--timeout", "30s", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"]["strategy"]["timeout_s"] == 30 and not doc["summary"]["converged"]
    assert "timeout" in doc["summary"]["reason"]
    assert doc["summary"]["total_time_s"] <= 30 + 1e-9  # cancelled at the timeout, mid-round
    assert 0 < doc["summary"]["bytes_sent"] <= 30 * 100 * 2**20
    assert main([*argv, "--timeout", "30s"]) == 1
    assert "by then" in capsys.readouterr().out


def test_compare_records_host_provenance_and_no_spec_for_a_trace(trace_file, tmp_path, capsys):
    import pandas as pd

    from sim.provenance import read_sidecar

    out = tmp_path / "c"
    assert main(["compare", "--trace", str(trace_file), "--bandwidth", "50MiB/s", "-o", str(out)]) == 0
    df = pd.read_csv(out / "summary.csv")
    assert df["host_constants"].str.startswith("host constants: results/validation/full/host.json").all()
    sc = json.loads(df["scenario"][0])
    assert sc["workload"]["kind"] == "trace" and sc["workload"]["spec"] == ""
    meta = read_sidecar(out / "summary.csv")
    assert meta["host_constants"]["source"] == "results/validation/full/host.json"
    assert str(trace_file) in meta["inputs"] and meta["command"]


def test_compare_picks_the_strategy_whose_guest_waits_least():
    from harness.cli.tables import verdict
    from sim import simulate

    base = hostinfo.bundled_host().apply(Scenario().replace(**{
        "workload.spec": "hotcold:hot=48MiB,rate=4000", "workload.memory_bytes": "2GiB",
        "link.bandwidth_Bps": "1Gbit/s", "strategy.max_rounds": 30}))
    results = {k: simulate(base.replace(**{"strategy.kind": k})) for k in ("stopcopy", "precopy", "postcopy")}
    line = verdict(results)
    waits = {k: r.downtime_s + r.postcopy_stall_s for k, r in results.items()}
    assert line.startswith(f"pick {min(waits, key=waits.get)}:")
    assert all(k in line for k in results)


def test_sweep_defaults_to_the_bundled_host_says_so_and_lets_the_sweep_win(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from sim.provenance import read_parquet_provenance

    bundled = hostinfo.bundled_host()
    sweep = tmp_path / "s.toml"
    sweep.write_text('name = "h"\n[base.workload]\nkind = "synthetic"\nspec = "uniform:rate=2000"\n'
                     'memory_bytes = "512MiB"\n[base.link]\nbandwidth_Bps = "400Mbit/s"\nrtt_s = "10ms"\n'
                     '[vary]\n"strategy.kind" = ["precopy", "postcopy"]\n')
    out = tmp_path / "s.parquet"
    assert main(["sweep", str(sweep), "-o", str(out), "-j", "1", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == bundled.label()
    import pandas as pd

    table = pd.read_parquet(out)
    assert (table["host.switchover_s"] == bundled.overrides["host.switchover_s"]).all()
    assert read_parquet_provenance(out)["host_constants"]["source"] == "results/validation/full/host.json"
    for flags in (["--uncalibrated"], ["--host", "none"]):
        assert main(["sweep", str(sweep), "-o", str(out), "-j", "1", "-q", "--fresh", *flags]) == 0
        assert capsys.readouterr().out.startswith("host constants: uncalibrated defaults")
        assert (pd.read_parquet(out)["host.switchover_s"] == 0).all()
        assert read_parquet_provenance(out)["host_constants"]["source"] == hostinfo.UNCALIBRATED
    # a host field the sweep sets itself keeps its value, and the statement says so
    sweep.write_text(sweep.read_text().replace("[vary]", '[base.host]\nswitchover_s = "20ms"\n[vary]'))
    assert main(["sweep", str(sweep), "-o", str(out), "-j", "1", "-q", "--fresh"]) == 0
    assert "the sweep sets host.switchover_s itself" in capsys.readouterr().out.splitlines()[0]
    table = pd.read_parquet(out)
    assert (table["host.switchover_s"] == 0.02).all()
    assert (table["host.throughput_efficiency"] == bundled.overrides["host.throughput_efficiency"]).all()
    assert read_parquet_provenance(out)["host_constants"]["set_by_sweep"] == ["host.switchover_s"]
