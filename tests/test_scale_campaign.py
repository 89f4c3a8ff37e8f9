"""The scale campaign: [[size]] tables, per-size axes, failures recorded, resumable (no VM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.record import MigrationStats, RunRecord
from harness.validate import campaign as campaign_mod
from harness.validate.campaign import FAILED_DIR, Campaign
from sim.errors import ConfigError, MiglabError
from sim.trace import make_trace, save

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30

TOML = """
name = "t"
repetitions = 2
timeout = "30s"
train_max_memory = "4GiB"
cv = "size"
[[workload]]
name = "hot"
spec = "hotcold:hot=32MiB,rate=5000,fill=0.05"
[[workload]]
name = "redis"
spec = "redis:keys=3%,value=1KiB"
[[link]]
name = "fast"
bandwidth = "1Gbit/s"
[[link]]
name = "slow"
bandwidth = "500Mbit/s"
rtt = "10ms"
[[strategy]]
name = "pre"
kind = "precopy"
downtime_limit_s = "300ms"
[[strategy]]
name = "post"
kind = "postcopy"
[[size]]
memory = "4GiB"
[[size]]
memory = "1GiB"
[[size]]
memory = "16GiB"
repetitions = 1
timeout = "120s"
links = ["fast"]
strategies = ["pre"]
"""


def _campaign(tmp_path: Path, text: str = TOML) -> Campaign:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return Campaign.load(p)


def test_sizes_axes_and_order(tmp_path):
    c = _campaign(tmp_path)
    assert [z.label for z in c.sizes] == ["1GiB", "4GiB", "16GiB"]  # sorted, smallest first
    scs = c.scenarios()
    assert len(scs) == 2 * 2 * 2 * 2 + 2 * 1 * 1
    big = [s for s in scs if s.size == "16GiB"]
    assert {s.name for s in big} == {"hot__16GiB__fast__pre", "redis__16GiB__fast__pre"}
    assert all(s.scenario.workload.memory_bytes == 16 * GiB and s.scenario.strategy.timeout_s == 120 for s in big)
    runs = c.runs()
    assert len(runs) == 8 * 2 + 8 * 2 + 2
    sizes = [sc.memory_bytes for sc, _ in runs]
    assert sizes == sorted(sizes)  # size-major: every small run before the first big one
    assert [r for sc, r in runs if sc.size == "1GiB"] == [0] * 8 + [1] * 8
    assert c.trace_method_of(GiB) == "content" and c.trace_method_of(16 * GiB) == "dirty-log"
    assert c.train_max_memory_bytes == 4 * GiB and c.cv == "size"


def test_campaign_without_sizes_is_unchanged():
    c = Campaign.load(ROOT / "campaigns" / "full.toml")
    assert not c.sizes and len(c.runs()) == 126
    assert c.scenarios()[0].name == "hotcold__500M-2ms__precopy-300ms"
    assert c.memory_sizes() == [512 << 20]


@pytest.mark.parametrize("name", ["scale.toml", "scale-pilot.toml"])
def test_committed_scale_campaigns_load(name):
    c = Campaign.load(ROOT / "campaigns" / name)
    assert c.sizes and c.train_max_memory_bytes == 4 * GiB


@pytest.mark.parametrize("bad, words", [
    ('[[size]]\nmemory = "1GiB"\nlinks = ["nope"]\n', "nope"),
    ('[[size]]\nmemory = "1GiB"\ncolour = 1\n', "colour"),
    ('[[size]]\nrepetitions = 1\n', "needs memory"),
    ('[[size]]\nmemory = "1GiB"\n[[size]]\nmemory = "1024MiB"\n', "same memory"),
])
def test_bad_size_tables_are_one_line(tmp_path, bad, words):
    base = TOML.split("[[size]]")[0]
    with pytest.raises(ConfigError, match=words) as e:
        _campaign(tmp_path, base + bad)
    assert "\n" not in str(e.value) and "c.toml" in str(e.value)


def test_workload_too_big_for_the_smallest_size_names_it(tmp_path):
    text = TOML.replace("hot=32MiB", "hot=64MiB")  # 64 MiB hot set > the 51 MiB fill of a 1 GiB guest
    with pytest.raises(ConfigError, match="hot at 1GiB"):
        _campaign(tmp_path, text)


def test_redis_keys_as_share_of_memory():
    from harness.guest import parse_workload, workload_footprint_bytes

    small = parse_workload("redis:keys=3%,value=1KiB", GiB)
    big = parse_workload("redis:keys=3%,value=1KiB", 64 * GiB)
    assert small.params["keys"] == int(0.03 * GiB) // 1024
    assert abs(big.params["keys"] - 64 * small.params["keys"]) <= 64  # rounding of the share
    assert workload_footprint_bytes(big, 64 * GiB) > 0.03 * 64 * GiB
    assert parse_workload("redis:keys=1000", GiB).params["keys"] == 1000  # absolute as before


def _trace(path: Path) -> Path:
    lists = [np.arange(10, dtype=np.int64) + i for i in range(8)]
    t0 = np.arange(8) * 0.5
    save(make_trace(lists, t0, t0 + 0.5, n_pages=1 << 18, page_size=4096,
                    meta={"workload": "x", "interval_s": 0.5}), path)
    return path


def test_failures_are_recorded_and_the_campaign_goes_on(tmp_path, monkeypatch):
    import harness.migrate
    import harness.preflight

    c = _campaign(tmp_path)
    out = tmp_path / "out"
    trace = _trace(tmp_path / "t.npz")
    monkeypatch.setattr(campaign_mod, "ensure_trace", lambda *a, **k: trace)
    calls: list[str] = []

    def fake_check(memory_bytes, workload, **k):
        if memory_bytes == 16 * GiB:
            raise harness.preflight.PreflightError("pre-flight: a 16.0 GiB migration needs about 40 GiB")
        return 1

    def fake_run(scenario, options=None):
        calls.append(scenario.name)
        if scenario.name == "hot__1GiB__slow__post":
            raise MiglabError("guest did not boot")
        if scenario.name == "redis__1GiB__fast__pre":
            raise RuntimeError("something unexpected")
        return RunRecord(scenario=scenario, outcome="completed", stats=MigrationStats(total_time_s=1.0))

    monkeypatch.setattr(harness.preflight, "check_migration", fake_check)
    monkeypatch.setattr(harness.migrate, "run_migration", fake_run)
    res = campaign_mod.run_campaign(c, out, progress=False)
    failed = sorted(p.stem for p in (out / FAILED_DIR).glob("*.json"))
    # 2 reps of each failing 1 GiB run, and both 16 GiB runs refused by the pre-flight (never started)
    assert failed == sorted(["hot__1GiB__slow__post__r0", "hot__1GiB__slow__post__r1",
                             "redis__1GiB__fast__pre__r0", "redis__1GiB__fast__pre__r1",
                             "hot__16GiB__fast__pre__r0", "redis__16GiB__fast__pre__r0"])
    assert res.ran == 34 - 6 and len(res.errors) == 6
    assert not any("16GiB" in n for n in calls)
    rec = RunRecord.load(out / "runs" / "hot__4GiB__fast__pre__r1.json")
    assert rec.options["validation"]["size"] == "4GiB"
    # resumable: only the failures are tried again, and a success clears its failure file
    calls.clear()
    monkeypatch.setattr(harness.preflight, "check_migration", lambda *a, **k: 1)
    monkeypatch.setattr(harness.migrate, "run_migration",
                        lambda sc, o=None: (calls.append(sc.name),
                                            RunRecord(scenario=sc, outcome="completed",
                                                      stats=MigrationStats(total_time_s=1.0)))[1])
    res = campaign_mod.run_campaign(c, out, progress=False)
    assert (res.ran, res.skipped) == (6, 28) and len(calls) == 6
    assert not list((out / FAILED_DIR).glob("*.json"))


def test_a_trace_that_cannot_be_collected_skips_only_its_runs(tmp_path, monkeypatch):
    import harness.migrate
    import harness.preflight

    c = _campaign(tmp_path)
    out = tmp_path / "out"
    trace = _trace(tmp_path / "t.npz")

    def fake_trace(campaign, w, out_dir, *, progress=True, memory_bytes=None):
        if memory_bytes == 4 * GiB and w.name == "redis":
            raise MiglabError("QEMU did not finish its first pass")
        return trace

    monkeypatch.setattr(campaign_mod, "ensure_trace", fake_trace)
    monkeypatch.setattr(harness.preflight, "check_migration", lambda *a, **k: 1)
    monkeypatch.setattr(harness.migrate, "run_migration",
                        lambda sc, o=None: RunRecord(scenario=sc, outcome="completed",
                                                     stats=MigrationStats(total_time_s=1.0)))
    res = campaign_mod.run_campaign(c, out, progress=False)
    assert res.ran == 34 - 8
    assert (out / FAILED_DIR / "trace__redis__4GiB.json").exists()
