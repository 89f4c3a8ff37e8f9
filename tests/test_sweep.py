"""miglab sweep: definition, local and dask execution, Parquet table, checkpoint and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sim.sweep as sweep_mod
from harness.cli import main
from sim import Scenario, simulate
from sim.errors import ConfigError
from sim.sweep import Sweep, parts_dir_for, run_sweep, scenario_id
from sim.trace import make_trace, save

pytest.importorskip("pyarrow", reason="sweep tables are parquet: the 'lab' extra (pip install 'miglab[lab]')")

SWEEP = """
name = "limit-x-bandwidth"
description = "a small comparison"

[base]
seed = 0
[base.workload]
kind = "synthetic"
spec = "hotcold:hot=8MiB,rate=2000"
memory_bytes = "256MiB"
[base.strategy]
kind = "precopy"

[vary]
"strategy.downtime_limit_s" = ["30ms", "300ms"]
"link.bandwidth_Bps" = ["100MiB/s", "1Gbit/s", "10Gbit/s"]

[[variants]]
name = "qemu"
"strategy.stop_rule" = "qemu"

[[variants]]
name = "bhyve"
strategy.stop_rule = "bhyve"
strategy.bhyve_rounds = 4
"""


def _write(tmp_path: Path, text: str = SWEEP, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- definition
def test_cross_product_with_variants(tmp_path):
    sweep = Sweep.from_toml(_write(tmp_path))
    runs = sweep.scenarios()
    assert len(runs) == len(sweep) == 2 * 2 * 3
    configs = [c for c, _ in runs]
    assert configs[0] == {"variant": "qemu", "strategy.downtime_limit_s": "30ms", "link.bandwidth_Bps": "100MiB/s"}
    assert configs[-1] == {"variant": "bhyve", "strategy.downtime_limit_s": "300ms", "link.bandwidth_Bps": "10Gbit/s"}
    first, last = runs[0][1], runs[-1][1]
    assert first.strategy.stop_rule == "qemu" and last.strategy.stop_rule == "bhyve"
    assert first.strategy.downtime_limit_s == pytest.approx(0.03) and last.link.bandwidth_Bps == pytest.approx(1.25e9)
    assert first.workload.memory_bytes == 256 * 2**20  # base kept
    assert len({scenario_id(s) for _, s in runs}) == len(runs)


def test_nested_vary_tables_equal_dotted_keys_and_any_field_varies(tmp_path):
    dotted = Sweep.from_dict({"name": "a", "vary": {"strategy.kind": ["precopy", "postcopy"], "seed": [1, 2],
                                                    "host.switchover_s": ["5ms"]}})
    nested = Sweep.from_dict({"name": "a", "vary": {"strategy": {"kind": ["precopy", "postcopy"]}, "seed": [1, 2],
                                                    "host": {"switchover_s": ["5ms"]}}})
    assert [s for _, s in dotted.scenarios()] == [s for _, s in nested.scenarios()]
    assert [(s.strategy.kind, s.seed, s.host.switchover_s) for _, s in dotted.scenarios()] == [
        ("precopy", 1, 0.005), ("precopy", 2, 0.005), ("postcopy", 1, 0.005), ("postcopy", 2, 0.005)]
    # no [vary] at all: one run, the base
    assert len(Sweep.from_dict({"name": "one"}).scenarios()) == 1


@pytest.mark.parametrize("text, problem", [
    ('name = "x"\n[vary\n', "not valid TOML"),
    ('name = "x"\n[vary]\n"strategy.bogus" = [1]\n', "bogus"),
    ('name = "x"\n[vary]\n"nosuch.field" = [1]\n', "nosuch"),
    ('name = "x"\n[base.link]\nrtt = 1\n', "link.rtt: unknown field"),
    ('name = "x"\n[vary]\n"link.bandwidth_Bps" = "1Gbit/s"\n', "non-empty list"),
    ('name = "x"\n[vary]\n"link.bandwidth_Bps" = []\n', "non-empty list"),
    ('name = "x"\n[vary]\n"link.bandwidth_Bps" = ["-5MiB/s"]\n', "bandwidth"),
    ('name = "x"\n[vary]\n"strategy.kind" = ["warp"]\n', "warp"),
    ('[vary]\nseed = [1]\n', "name"),
    ('name = "x"\nvariant = []\n', "unknown sweep key 'variant'"),
    ('name = "x"\n[vary]\nseed = [1]\n[[variants]]\nname = "a"\nseed = 2\n', "both in variant"),
    ('name = "x"\n[[variants]]\nname = "a"\nseed = 1\n[[variants]]\nname = "a"\nseed = 2\n', "used twice"),
])
def test_bad_sweep_is_one_line_error_and_no_output(tmp_path, capsys, text, problem):
    path = _write(tmp_path, text, "bad.toml")
    out = tmp_path / "out" / "bad.parquet"
    out.parent.mkdir()  # an -o FILE's directory must exist
    assert main(["sweep", str(path), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.toml" in err and problem in err, err
    assert not out.exists() and not parts_dir_for(out).exists()


def test_missing_file_and_bad_output(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "o.parquet")]) == 2
    assert "nope.toml: no such file" in capsys.readouterr().err
    assert main(["sweep", str(_write(tmp_path)), "-o", str(tmp_path / "o.csv")]) == 2
    assert "o.csv" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()


# --------------------------------------------------------------------------- running
def _reference(sweep: Sweep, tmp_path: Path) -> pd.DataFrame:
    return run_sweep(sweep, tmp_path / "reference" / "ref.parquet", jobs=1, progress=False)


def test_local_pool_table(tmp_path, capsys):
    sweep = Sweep.from_toml(_write(tmp_path))
    out = tmp_path / "sweeps" / "limit.parquet"
    table = run_sweep(sweep, out, jobs=2, progress=True)
    assert "limit-x-bandwidth" in capsys.readouterr().err  # the tqdm bar
    assert out.is_file() and not parts_dir_for(out).exists()
    on_disk = pd.read_parquet(out)
    pd.testing.assert_frame_equal(on_disk, table)
    assert len(table) == 12 and table["scenario_id"].is_unique
    assert list(table.columns[:3]) == ["sweep", "variant", "scenario_id"]
    assert set(table["sweep"]) == {"limit-x-bandwidth"} and list(table["variant"][:6]) == ["qemu"] * 6
    for col in ("strategy.downtime_limit_s", "link.bandwidth_Bps", "workload.spec", "seed",
                "downtime_s", "total_time_s", "bytes_sent", "rounds", "converged", "reason",
                "miglab_version", "trace_sha256"):
        assert col in table.columns, col
    assert table["strategy.downtime_limit_s"].dtype == np.float64
    # every row is exactly what simulate() says for its scenario, in sweep order
    for i, (_, scenario) in enumerate(sweep.scenarios()):
        row = table.iloc[i]
        assert row["scenario_id"] == scenario_id(scenario)
        res = simulate(scenario)
        assert row["bytes_sent"] == res.bytes_sent and row["rounds"] == res.rounds
        assert row["total_time_s"] == res.total_time_s
    # the comparison is real: bhyve's fixed rounds and QEMU's threshold rule give different answers
    assert table.groupby("variant")["bytes_sent"].sum().nunique() == 2
    # and it equals the in-process run
    pd.testing.assert_frame_equal(table, _reference(sweep, tmp_path))


class _Interrupt:
    """Wraps the real run_metrics: counts calls and raises KeyboardInterrupt on call number ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.calls = 0
        self.at = at
        self.real = sweep_mod.run_metrics

    def __call__(self, scenario: Scenario) -> dict:
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(scenario)


def test_interrupt_then_resume_loses_nothing_and_repeats_nothing(tmp_path, monkeypatch):
    sweep = Sweep.from_toml(_write(tmp_path))
    out = tmp_path / "limit.parquet"
    stop = _Interrupt(at=6)
    monkeypatch.setattr(sweep_mod, "run_metrics", stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, jobs=1, progress=False)
    assert not out.exists()
    parts = pd.concat([pd.read_parquet(p) for p in sorted(parts_dir_for(out).glob("part-*.parquet"))])
    assert len(parts) == 5 and parts["scenario_id"].is_unique  # the five finished runs were checkpointed

    resume = _Interrupt()
    monkeypatch.setattr(sweep_mod, "run_metrics", resume)
    table = run_sweep(sweep, out, jobs=1, progress=False)
    assert resume.calls == 12 - 5
    assert not parts_dir_for(out).exists()
    monkeypatch.undo()
    pd.testing.assert_frame_equal(table, _reference(sweep, tmp_path))

    # a finished sweep re-run does nothing; an extended one runs only what is new
    again = _Interrupt()
    monkeypatch.setattr(sweep_mod, "run_metrics", again)
    pd.testing.assert_frame_equal(run_sweep(sweep, out, jobs=1, progress=False), table)
    assert again.calls == 0
    bigger = Sweep.from_toml(_write(tmp_path, SWEEP.replace('"300ms"]', '"300ms", "1s"]'), "bigger.toml"))
    extended = run_sweep(bigger, out, jobs=1, progress=False)
    assert again.calls == 6 and len(extended) == 18
    pd.testing.assert_frame_equal(extended[extended["scenario_id"].isin(table["scenario_id"])]
                                  .reset_index(drop=True), table)


def test_sigint_to_the_cli_checkpoints_and_resume_completes(tmp_path):
    """A real interrupt of ``miglab sweep`` in a worker pool: finished runs survive, resume fills the rest."""
    # 400 page-exact (sampled) 4 GiB runs of ~0.05 s each: still running when the interrupt lands, even on a
    # loaded machine where the first checkpoint is seen late
    text = f"""
name = "long"
[base.workload]
mode = "sampled"
memory_bytes = "4GiB"
spec = "uniform:rate=30MiB/s"
[vary]
seed = {list(range(200))}
"strategy.downtime_limit_s" = ["30ms", "300ms"]
"""
    path = _write(tmp_path, text, "long.toml")
    n = len(Sweep.from_toml(path))
    out = tmp_path / "long.parquet"
    argv = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
            "sweep", str(path), "-o", str(out), "-j", "2", "--checkpoint-every", "2", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # No deadline of our own: a sweep that never checkpoints is caught by the per-test timeout
        # (pytest-timeout, scaled to the machine by conftest), and the finally below kills it.
        while not list(parts_dir_for(out).glob("part-*.parquet")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert not out.exists()
    done = pd.concat([pd.read_parquet(p) for p in parts_dir_for(out).glob("part-*.parquet")])
    assert 2 <= len(done) < n and done["scenario_id"].is_unique, (len(done), n, done["scenario_id"].is_unique, err)

    code = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    table = pd.read_parquet(out)
    assert len(table) == n and table["scenario_id"].is_unique
    assert not parts_dir_for(out).exists()
    # the checkpointed rows are in the final table unchanged
    merged = done.merge(table, on="scenario_id", suffixes=("_cp", ""))
    assert len(merged) == len(done) and (merged["bytes_sent_cp"] == merged["bytes_sent"]).all()


def test_dask_local_cluster_gives_the_same_table(tmp_path):
    distributed = pytest.importorskip("distributed")
    sweep = Sweep.from_toml(_write(tmp_path))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        table = run_sweep(sweep, tmp_path / "dask.parquet", scheduler=cluster.scheduler_address, progress=False)
    pd.testing.assert_frame_equal(table, _reference(sweep, tmp_path))


def test_dask_via_cli(tmp_path):
    distributed = pytest.importorskip("distributed")
    path = _write(tmp_path)
    out = tmp_path / "cli.parquet"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        assert main(["sweep", str(path), "-o", str(out), "--scheduler", cluster.scheduler_address, "-q"]) == 0
    assert len(pd.read_parquet(out)) == 12


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "x.parquet"
    with pytest.raises(ConfigError, match=f"--scheduler tcp://127.0.0.1:{port}: cannot connect"):
        run_sweep(Sweep.from_toml(_write(tmp_path)), out, scheduler=f"tcp://127.0.0.1:{port}", progress=False,
                  connect_timeout_s=1)
    assert not out.exists() and not parts_dir_for(out).exists()


def test_trace_content_is_part_of_the_scenario_id(tmp_path):
    n_pages = 4096
    trace_path = tmp_path / "t.npz"
    rng = np.random.default_rng(0)
    pages = [np.unique(rng.integers(0, n_pages, 200)) for _ in range(10)]
    save(make_trace(pages, np.arange(10) * 0.5, np.arange(1, 11) * 0.5, n_pages=n_pages, page_size=4096),
         trace_path)
    sweep = Sweep.from_dict({"name": "t", "base": {"workload": {"kind": "trace", "path": str(trace_path),
                                                                "memory_bytes": n_pages * 4096}},
                             "vary": {"strategy.kind": ["precopy", "postcopy"]}})
    table = run_sweep(sweep, tmp_path / "t.parquet", jobs=1, progress=False)
    assert (table["trace_sha256"] != "").all() and table["trace_sha256"].nunique() == 1
    before = set(table["scenario_id"])
    pages[0] = np.unique(rng.integers(0, n_pages, 300))
    save(make_trace(pages, np.arange(10) * 0.5, np.arange(1, 11) * 0.5, n_pages=n_pages, page_size=4096),
         trace_path)
    after = run_sweep(sweep, tmp_path / "t.parquet", jobs=1, progress=False)
    assert not before & set(after["scenario_id"])  # a new trace means new runs, not stale results
    with pytest.raises(ConfigError, match="t.npz"):
        os.unlink(trace_path)
        run_sweep(sweep, tmp_path / "t2.parquet", jobs=1, progress=False)


def test_example_sweep_runs(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "sweeps" / "limit-vs-bandwidth.toml"
    sweep = Sweep.from_toml(example)
    assert len(sweep) == 120
    table = run_sweep(sweep, tmp_path / "lvb.parquet", jobs=2, progress=False)
    assert len(table) == 120 and set(table["variant"]) == {"qemu", "bhyve"}
    # QEMU's rule honours the limit when the link allows it; bhyve's fixed rounds ignore it
    q = table[(table["variant"] == "qemu") & table["converged"]]
    assert (q["downtime_s"] <= q["strategy.downtime_limit_s"] + q["host.switchover_s"] + 0.01).mean() > 0.5
    b = table[table["variant"] == "bhyve"]
    assert (b["rounds"] == 4).all()


def test_planning_shortcuts_give_the_scenarios_and_ids_built_at_once():
    """Runs built from shared prefixes equal with_fields of all their changes at once, and the JSON
    the plan hashes (tables' JSON reused) is Scenario.to_json() to the character."""
    from sim.scenario import with_fields

    data = {"name": "s", "base": {"workload": {"kind": "synthetic", "spec": "hotcold:hot=48MiB,rate=4000"}},
            "vary": {"workload.memory_bytes": ["1GiB", "2GiB"], "link.bandwidth_Bps": ["1Gbit/s", "10Gbit/s"],
                     "strategy.downtime_limit_s": ["100ms", "1s"], "seed": [0, 1, 0.0]},
            "variants": [{"name": "q", "strategy.stop_rule": "qemu"},
                         {"name": "b", "strategy.stop_rule": "bhyve", "host.hypervisor": "bhyve"}]}
    sw = Sweep.from_dict(data)
    base = sw.base_scenario()
    as_json = sweep_mod._ScenarioJson()
    variants = dict(sw.variants)
    for config, sc in sw.scenarios():
        at_once = with_fields(with_fields(base, variants[config["variant"]]),
                              {k: v for k, v in config.items() if k != "variant"})
        assert sc == at_once
        assert as_json(sc) == sc.to_json() == at_once.to_json()
    plan, _ = sweep_mod._plan(sw)
    assert [sid for sid, _ in plan] == list(dict.fromkeys(scenario_id(sc) for _, sc in sw.scenarios()))


def test_a_refused_run_gives_the_error_of_building_it_at_once():
    """When the chained build refuses a run, the error (and its text) is that of with_fields at once."""
    from sim.scenario import with_fields

    keys = ["link.bandwidth_Bps", "link.rtt_s"]
    combo = ("1Gbit/s", "-1ms")
    changes = dict(zip(keys, combo, strict=True))
    with pytest.raises(ConfigError) as at_once:
        with_fields(Scenario(), changes, "w")
    prefix: list = []
    with pytest.raises(ConfigError) as chained:
        Sweep._build_run(Scenario(), keys, combo, prefix, changes, "w")
    assert str(chained.value) == str(at_once.value)
    assert prefix == []  # a refused chain leaves no half-built prefix behind
