"""harness.validate.crossval: leave one workload out beside k-fold by scenario.

Synthetic runs of two workloads (the simulator's answers under known host constants, plus noise),
so the folds, the leak check, the report section and the CLI flag are checked without a VM.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import validate
from harness.cli import main
from harness.record import MigrationStats, RunRecord, WorkloadRate
from harness.validate import crossval
from sim import hostfit
from sim.errors import ConfigError
from sim.trace import make_trace, save

MiB = 1 << 20
TRUE = {"host.switchover_s": 0.02, "host.throughput_efficiency": 0.9, "host.dirty_rate_factor": 1.0,
        "link.header_bytes_per_page": 8.0, "host.setup_s": 0.005}
SPECS = {"hot": "hotcold:hot=8MiB,rate=1500,total=48MiB", "wide": "hotcold:hot=16MiB,rate=3000,total=64MiB"}

CAMPAIGN = """
name = "cv"
memory = "128MiB"
repetitions = 2
trace_seconds = "20s"
trace_interval = "0.5s"
timeout = "30s"
folds = 2

[[workload]]
name = "hot"
spec = "hotcold:hot=8MiB,rate=1500,total=48MiB"

[[workload]]
name = "wide"
spec = "hotcold:hot=16MiB,rate=3000,total=64MiB"

[[link]]
name = "slow"
bandwidth = "200Mbit/s"
rtt = "4ms"

[[strategy]]
name = "pre300"
kind = "precopy"
downtime_limit_s = "300ms"

[[strategy]]
name = "pre50"
kind = "precopy"
downtime_limit_s = "50ms"
"""


def _trace(path: Path, hot_pages: int, rate: int, total_pages: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(40):
        k = rate // 2
        h = rng.integers(0, hot_pages, int(0.9 * k))
        c = rng.integers(hot_pages, total_pages, k - len(h))
        lists.append(np.unique(np.concatenate([h, c])))
    t0 = np.arange(40) * 0.5
    save(make_trace(lists, t0, t0 + 0.5, n_pages=128 * MiB // 4096,
                    meta={"guest_memory_bytes": 128 * MiB, "interval_s": 0.5, "collected_seconds": 20.0,
                          "complete": True, "zero_page_fraction": 0.6}), path)
    return path


def _record(sc: validate.CampaignScenario, rep: int, trace: Path, time_factor: float = 1.0) -> RunRecord:
    """The simulator's answer under TRUE, with 2 % noise (and ``time_factor`` on the times)."""
    sim_sc = sc.scenario.replace(**{"workload.kind": "trace", "workload.path": str(trace), "workload.spec": "",
                                    "workload.memory_bytes": 128 * MiB})
    p = hostfit.predict(sim_sc, TRUE)
    rng = np.random.default_rng(abs(hash((sc.name, rep))) % 2**32)
    f = (1 + 0.02 * rng.standard_normal()) * time_factor
    dup = int(0.6 * 128 * MiB // 4096)
    normal = int((p["bytes_sent"] - dup * 9) / 4104)
    stats = MigrationStats(total_time_s=round(p["total_time_s"] * f, 4), downtime_s=round(p["downtime_s"] * f, 4),
                           setup_time_s=0.005, bytes_sent=int(p["bytes_sent"]), duplicate_pages=dup,
                           normal_pages=normal, normal_bytes=normal * 4096,
                           dirty_sync_count=int(p["dirty_sync_count"]), postcopy_requests=0)
    meta = {"campaign": "cv", "scenario": sc.name, "repetition": rep, "workload": sc.workload.name,
            "link": sc.link.name, "strategy": sc.strategy.name, "trace": f"../traces/{trace.name}",
            "trace_sha256": ""}
    return RunRecord(scenario=sc.scenario, outcome="completed", stats=stats,
                     workload_rate=WorkloadRate(before=1500.0, during=1500.0), options={"validation": meta})


@pytest.fixture(autouse=True)
def quick_fits(monkeypatch):
    monkeypatch.setattr(hostfit, "DEFAULT_MAXFEV", 24)


def _fill(out: Path, campaign: validate.Campaign, slow: str | None = None) -> None:
    """Every run of the campaign under ``out`` (``slow``'s workload measured 30 % slower)."""
    traces = {"hot": _trace(out / "traces" / "hot.npz", 2048, 1500, 12288, 1),
              "wide": _trace(out / "traces" / "wide.npz", 4096, 3000, 16384, 2)}
    for sc, rep in campaign.runs():
        rec = _record(sc, rep, traces[sc.workload.name], 1.3 if sc.workload.name == slow else 1.0)
        rec.save(validate.run_path(out, sc.name, rep))


@pytest.fixture()
def filled(tmp_path) -> tuple[validate.Campaign, Path]:
    src = tmp_path / "cv.toml"
    src.write_text(CAMPAIGN)
    c = validate.Campaign.load(src)
    out = tmp_path / "out"
    _fill(out, c)
    shutil.copy(src, out / "campaign.toml")
    return c, out


def test_block_folds_leave_one_block_out():
    assignment, labels = hostfit.block_folds({"a__x": "a", "a__y": "a", "b__x": "b", "c__x": "c"})
    assert labels == ["a", "b", "c"]
    assert assignment == {"a__x": 0, "a__y": 0, "b__x": 1, "c__x": 2}
    with pytest.raises(ConfigError, match="at least 2 blocks"):
        hostfit.block_folds({"a__x": "a", "a__y": "a"})


def test_report_headline_is_leave_one_workload_out(filled):
    c, out = filled
    summary = validate.build_report(out, c, progress=False)
    cv = summary["cross_validation"]
    assert cv["headline"] == "workload" and set(cv["schemes"]) == {"workload", "scenario"}
    assert summary["calibration"] == "leave-one-workload-out cross-validation"
    table = pd.read_csv(out / "table.csv")
    runs = {f"{sc.name}__r{r}" for sc, r in c.runs()}
    for model in ("miglab", "miglab-cv-scenario"):
        d = table[table["model"] == model]
        assert set(d["run"]) == runs  # every run predicted once per metric under each scheme
        assert d.groupby(["run", "metric"]).size().max() == 1
    # leave one workload out: a run's fold is its workload's, and that fold never trained on the workload
    hf = json.loads((out / "hostfit.json").read_text())
    wl = hf["schemes"]["workload"]
    assert [f.get("heldout_workload") for f in wl["folds"][:-1]] == ["hot", "wide"]
    for f in wl["folds"][:-1]:
        assert all(s.startswith(f["heldout_workload"] + "__") for s in f["heldout_scenarios"])
        assert not any(s.startswith(f["heldout_workload"] + "__") for s in f["train_scenarios"])
    held = table[table["model"] == "miglab"]
    for s, fold in wl["scenario_fold"].items():
        assert held[held["scenario"] == s]["fold"].eq(fold).all()
    assert hf["scenario_fold"] == wl["scenario_fold"]
    # by scenario: both workloads in every training fold
    for f in hf["schemes"]["scenario"]["folds"][:-1]:
        assert {s.split("__")[0] for s in f["train_scenarios"]} == {"hot", "wide"}
    assert set(cv["leak_check"]) == {"hot", "wide"}
    assert cv["leak_check"]["hot"]["train_workloads"] == ["wide"]
    # the measurements are the simulator's under constants any fold can find: small errors either way
    for s in ("workload", "scenario"):
        assert cv["schemes"][s]["metrics"]["bytes_sent"]["value"] < 0.02
        assert cv["schemes"][s]["metrics"]["converged"]["value"] == 1.0
    floor = cv["repetition_floor"]["all"]
    assert floor["bytes_sent"]["value"] == 0.0 and floor["total_time_s"]["value"] > 0
    report = (out / "report.md").read_text()
    assert "## Cross-validation: by workload and by scenario" in report
    assert "leave one workload out (headline)" in report and "repetition floor" in report


def test_a_workloads_measurements_do_not_reach_its_own_fold(filled, tmp_path):
    """Make one workload's runs 30 % slower: the constants that judge it must not move; the other's must."""
    c, out = filled
    base = crossval.calibrations(validate.validated_runs([out]), c.folds, progress=False)
    out2 = tmp_path / "slow"
    _fill(out2, c, slow="hot")
    slow = crossval.calibrations(validate.validated_runs([out2]), c.folds, progress=False)
    hot, wide = "hot__slow__pre300", "wide__slow__pre300"
    assert slow.headline.heldout[hot] == base.headline.heldout[hot]
    eff = "host.throughput_efficiency"
    assert slow.headline.heldout[wide][eff] < base.headline.heldout[wide][eff] * 0.95
    # by scenario, the slower hot runs do reach a hot scenario's constants (through the other hot scenario)
    sc_base, sc_slow = base.others["scenario"].heldout[hot], slow.others["scenario"].heldout[hot]
    assert sc_slow[eff] != sc_base[eff]


def test_scenario_scheme_reproduces_the_earlier_calibration(filled):
    c, out = filled
    runs = validate.validated_runs([out])
    cv = crossval.calibrations(runs, c.folds, choice="scenario", progress=False)
    old = validate.calibrate(runs, c.folds, progress=False)
    assert cv.headline_scheme == "scenario" and cv.headline.method == old.method
    assert cv.headline.heldout == old.heldout and cv.headline.fold_of == old.fold_of
    assert cv.headline.train == old.train
    assert set(cv.others) == {"workload"}


def test_leak_check_refuses_a_fold_that_saw_its_workload(filled):
    c, out = filled
    runs = validate.validated_runs([out])
    cal = validate.Calibration("x", {}, {}, None, [{"fold": 0, "heldout_workload": "hot", "constants": {},
                                                   "train_scenarios": ["hot__slow__pre50", "wide__slow__pre50"],
                                                   "heldout_scenarios": ["hot__slow__pre300"], "train_runs": 4}])
    with pytest.raises(AssertionError, match="trained on its own workload"):
        crossval.leak_check(runs, cal)


def test_cli_cv_flag(filled, tmp_path, capsys):
    c, out = filled
    one = tmp_path / "one.toml"
    text = CAMPAIGN.split("[[workload]]\nname = \"wide\"")[0] + "[[link]]" + CAMPAIGN.split("[[link]]", 1)[1]
    one.write_text(text)
    only_hot = tmp_path / "only"
    shutil.copytree(out / "traces", only_hot / "traces")
    (only_hot / "runs").mkdir()
    for p in (out / "runs").glob("hot__*.json"):
        shutil.copy(p, only_hot / "runs" / p.name)
    assert main(["validate", str(one), "-o", str(only_hot), "--report-only", "-q", "--cv", "workload"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cv workload" in err[0] and "one workload" in err[0]
    assert not (only_hot / "summary.json").exists()
    # auto falls back to by scenario with one workload, and says so
    assert main(["validate", str(one), "-o", str(only_hot), "--report-only", "-q"]) == 0
    s = json.loads((only_hot / "summary.json").read_text())
    assert s["cross_validation"]["headline"] == "scenario" and "impossible" in s["cross_validation"]["note"]
    assert "leave-one-workload-out is impossible" in (only_hot / "report.md").read_text()
