"""Result keeps its raw rows and builds its DataFrames only when asked."""

from __future__ import annotations

import json

import pandas as pd

from sim import Scenario, simulate
from sim.result import ROUND_COLUMNS, TIMELINE_COLUMNS
from sim.sweep import run_metrics

SMALL = {"workload.spec": "hotcold:hot=48MiB,rate=4000", "workload.memory_bytes": "1GiB",
         "link.bandwidth_Bps": "1Gbit/s"}


def test_tables_are_built_on_first_access_and_match_the_raw_rows():
    r = simulate(Scenario().replace(**SMALL))
    assert "rounds_table" not in r.__dict__ and "timeline" not in r.__dict__
    table = r.rounds_table
    assert list(table.columns) == ROUND_COLUMNS and len(table) == len(r.rounds_rows) == r.rounds + 1
    assert list(table["phase"]) == [row["phase"] for row in r.rounds_rows]
    assert r.rounds_table is table  # built once
    timeline = r.timeline
    assert list(timeline.columns) == TIMELINE_COLUMNS and len(timeline) == len(r.timeline_points)
    assert timeline["remaining_bytes"].iloc[-1] == 0.0


def test_summary_path_builds_no_table(monkeypatch):
    built = []
    real = pd.DataFrame

    def spy(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pd, "DataFrame", spy)
    metrics = run_metrics(Scenario().replace(**SMALL))
    assert metrics["converged"] is True and not built


def test_to_dict_is_json_ready_with_rounds_and_timeline():
    d = simulate(Scenario().replace(**SMALL, **{"strategy.kind": "hybrid"})).to_dict()
    json.dumps(d)
    assert [row["phase"] for row in d["rounds"]][-1] == "switchover"
    assert set(d["timeline"]) == set(TIMELINE_COLUMNS)
