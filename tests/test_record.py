"""RunRecord: QEMU statistics mapping, JSON round trip, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.record import (
    OUTCOME_COMPLETED,
    HostInfo,
    MemoryCheck,
    MigrationStats,
    Poll,
    RunRecord,
    WorkloadRate,
    record_path,
)
from sim.errors import ConfigError
from sim.scenario import Scenario

# The shape of QEMU 10's query-migrate after a completed pre-copy (times in ms).
QUERY_MIGRATE_DONE = {
    "status": "completed", "total-time": 3512, "downtime": 24, "setup-time": 7, "expected-downtime": 21,
    "ram": {"transferred": 190_000_000, "remaining": 0, "total": 537_591_808, "duplicate": 85_000,
            "normal": 45_000, "normal-bytes": 184_320_000, "dirty-pages-rate": 0, "mbps": 431.7,
            "dirty-sync-count": 4, "postcopy-requests": 0, "page-size": 4096, "precopy-bytes": 189_000_000,
            "downtime-bytes": 1_000_000, "postcopy-bytes": 0, "multifd-bytes": 0},
}


def _scenario() -> Scenario:
    return Scenario().replace(**{"workload.spec": "hotcold:hot=64MiB,rate=5000", "workload.memory_bytes": "512MiB",
                                 "link.bandwidth_Bps": "400Mbit/s", "link.rtt_s": "10ms",
                                 "strategy.kind": "postcopy", "name": "demo"})


def _record() -> RunRecord:
    polls = (Poll.from_query_migrate(0.1, {"status": "active", "ram": {"transferred": 1000, "dirty-sync-count": 1},
                                           "cpu-throttle-percentage": 20, "expected-downtime": 300}),
             Poll.from_query_migrate(0.2, QUERY_MIGRATE_DONE))
    return RunRecord(scenario=_scenario(), outcome=OUTCOME_COMPLETED, host=HostInfo.collect(None),
                     timeline=polls, stats=MigrationStats.from_query_migrate(QUERY_MIGRATE_DONE, 20.0),
                     raw_query_migrate=QUERY_MIGRATE_DONE,
                     workload_rate=WorkloadRate("pages/s", 5000.0, 4999.0, 4100.5, 4998.0, 7),
                     guest_continues=True, guest_side="destination", memory_check=MemoryCheck(131072, 0, ()),
                     events=((0.05, "postcopy started"),), options={"timeout_s": 60.0})


def test_stats_use_simulator_names_and_seconds() -> None:
    s = MigrationStats.from_query_migrate(QUERY_MIGRATE_DONE)
    assert s.total_time_s == pytest.approx(3.512)
    assert s.downtime_s == pytest.approx(0.024)
    assert s.setup_time_s == pytest.approx(0.007)
    assert s.expected_downtime_s == pytest.approx(0.021)
    assert s.bytes_sent == 190_000_000
    assert (s.duplicate_pages, s.normal_pages, s.dirty_sync_count) == (85_000, 45_000, 4)
    assert s.throttle_pct == 0.0
    # The throttle is gone from the final answer; the runner passes the timeline's peak.
    assert MigrationStats.from_query_migrate(QUERY_MIGRATE_DONE, 40.0).throttle_pct == 40.0


def test_poll_reads_missing_fields_as_zero() -> None:
    p = Poll.from_query_migrate(0.123456, {"status": "setup"})
    assert p.status == "setup" and p.transferred_bytes == 0 and p.expected_downtime_s is None
    assert p.t_s == 0.1235


def test_round_trip_through_json(tmp_path: Path) -> None:
    rec = _record()
    path = rec.save(tmp_path / "camp" / "demo.json")
    back = RunRecord.load(path)
    assert back == rec
    assert back.scenario.strategy.kind == "postcopy"
    assert back.scenario.link.rtt_s == pytest.approx(0.010)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["miglab_version"]
    assert data["stats"]["downtime_s"] == pytest.approx(0.024)
    assert list(tmp_path.joinpath("camp").iterdir()) == [path]  # no temp file left behind
    summary = back.summary()
    assert summary["converged"] is True and summary["bytes_sent"] == 190_000_000


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _record()
    path = rec.save(tmp_path / "r.json")
    before = path.read_text()

    def boom(self: RunRecord) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(RunRecord, "to_json", boom)
    with pytest.raises(RuntimeError):
        rec.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_bad_records_are_one_line_config_errors(tmp_path: Path) -> None:
    data = _record().to_dict()
    data["schema_version"] = 99
    bad = tmp_path / "v99.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="schema_version 99"):
        RunRecord.load(bad)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunRecord.load(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match="no such file"):
        RunRecord.load(tmp_path / "missing.json")
    data = _record().to_dict()
    data["stats"]["no_such_metric"] = 1
    (tmp_path / "extra.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="malformed"):
        RunRecord.load(tmp_path / "extra.json")


def test_record_path_layout() -> None:
    assert record_path("validation", "precopy 400Mbit/s") == Path("results/validation/precopy_400Mbit_s.json")
    assert record_path("", "", root="/x") == Path("/x/default/run.json")
