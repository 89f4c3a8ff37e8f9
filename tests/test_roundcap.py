"""The fixed-round policy's pure logic (harness/roundcap.py)."""

from __future__ import annotations

import pytest

from harness.roundcap import MAX_DOWNTIME_LIMIT_MS, QmpCommand, RoundCap
from sim.errors import ConfigError


def feed(cap: RoundCap, polls: list[tuple[str, int | None]]) -> list[tuple[int, QmpCommand]]:
    return [(i, cmd) for i, (status, count) in enumerate(polls) if (cmd := cap.poll(status, count)) is not None]


def test_raises_the_limit_once_k_rounds_have_ended():
    cap = RoundCap(4)
    polls = [("setup", None), ("active", 1), ("active", 1), ("active", 2), ("active", 3), ("active", 4),
             ("active", 5), ("active", 5), ("active", 6), ("completed", 6)]
    fired = feed(cap, polls)
    assert len(fired) == 1
    i, cmd = fired[0]
    assert i == 6  # count 5 = the setup sync + 4 round-ending syncs
    assert cmd == QmpCommand("migrate-set-parameters", {"downtime-limit": MAX_DOWNTIME_LIMIT_MS}, cmd.reason)
    assert "4 rounds ended" in cmd.reason and cap.fired_sync_count == 5


def test_a_skipped_poll_still_fires_once_past_the_cap():
    cap = RoundCap(2)
    fired = feed(cap, [("active", 1), ("active", 2), ("active", 5), ("active", 6)])
    assert [i for i, _ in fired] == [2] and cap.fired_sync_count == 5


def test_never_fires_before_the_cap_or_outside_the_live_phase():
    cap = RoundCap(8)
    assert feed(cap, [("active", c) for c in range(1, 9)]) == []  # 8 = setup + 7 rounds
    assert cap.poll("completed", 12) is None and cap.poll("device", 12) is None and not cap.fired
    assert cap.poll("active", 12) is not None  # the first live poll at or past the cap


def test_raw_count_like_guestperf_pause_iters():
    cap = RoundCap(3, action="pause", count_setup_sync=False)
    fired = feed(cap, [("active", 1), ("active", 2), ("active", 3)])
    assert [(i, c.execute) for i, c in fired] == [(2, "stop")]


def test_cancel_like_guestperf_max_iters_uses_greater_than():
    cap = RoundCap(30, action="cancel", count_setup_sync=False)
    assert cap.poll("active", 30) is None
    assert cap.poll("active", 31).execute == "migrate_cancel"


def test_count_never_goes_back():
    cap = RoundCap(2)
    cap.poll("active", 3)
    assert cap.fired
    cap2 = RoundCap(2)
    cap2.poll("active", 2)
    assert cap2.poll("active", 1) is None and cap2.last_sync_count == 2


def test_poll_reply_reads_query_migrate():
    cap = RoundCap(1)
    assert cap.poll_reply({"status": "active", "ram": {"dirty-sync-count": 1}}) is None
    assert cap.poll_reply({"status": "setup"}) is None
    assert cap.poll_reply({"status": "active", "ram": {"dirty-sync-count": 2}}).execute == "migrate-set-parameters"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_bad_caps_are_one_clear_error(bad):
    with pytest.raises(ConfigError, match="--max-rounds"):
        RoundCap(bad)


def test_bad_action_and_limit():
    with pytest.raises(ConfigError, match="action"):
        RoundCap(2, action="stop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limit_ms"):
        RoundCap(2, limit_ms=MAX_DOWNTIME_LIMIT_MS + 1)


# -- wiring: which scenarios get a cap, the CLI flags, the validation of capped runs ---------------------------
def test_scenarios_choose_their_cap():
    from harness.migrate import BHYVE_LIVE_DOWNTIME_LIMIT_MS, migration_parameters, round_cap_for
    from sim.scenario import Scenario

    base = Scenario().replace(**{"workload.spec": "uniform:rate=100", "strategy.kind": "precopy"})
    assert round_cap_for(base.strategy) is None
    bhyve = base.replace(**{"strategy.stop_rule": "bhyve", "strategy.bhyve_rounds": 3})
    cap = round_cap_for(bhyve.strategy)
    assert cap is not None and cap.max_rounds == 3 and cap.trigger_count == 4 and cap.action == "raise-limit"
    # bhyve has no threshold: the live limit is QEMU's smallest, whatever downtime_limit_s says
    assert migration_parameters(bhyve)["downtime-limit"] == BHYVE_LIVE_DOWNTIME_LIMIT_MS
    guard = base.replace(**{"strategy.max_rounds": 5, "strategy.on_round_limit": "switchover"})
    cap = round_cap_for(guard.strategy)
    assert cap is not None and cap.max_rounds == 5
    assert migration_parameters(guard)["downtime-limit"] == 300  # QEMU's threshold still applies before the cap


@pytest.mark.parametrize("changes, needle", [
    ({"strategy.stop_rule": "xen"}, "stop rule 'xen' cannot be run on QEMU"),
    ({"strategy.stop_rule": "bhyve", "strategy.kind": "hybrid"}, "precopy only"),
    ({"strategy.max_rounds": 3}, "on_round_limit"),
])
def test_caps_qemu_cannot_run_are_refused(changes, needle):
    from harness.migrate import validate_for_qemu
    from sim.scenario import Scenario

    sc = Scenario().replace(**{"workload.spec": "uniform:rate=100", **changes})
    with pytest.raises(ConfigError, match=needle):
        validate_for_qemu(sc)


def test_migrate_flags_build_capped_scenarios(capsys):
    from harness.cli import build_parser, main
    from harness.cli.migrate import migrate_scenario

    p = build_parser()
    s = migrate_scenario(p.parse_args(["migrate", "--workload", "uniform:rate=100", "--max-rounds", "4"]))
    assert (s.strategy.max_rounds, s.strategy.on_round_limit, s.strategy.stop_rule) == (4, "switchover", "qemu")
    s = migrate_scenario(p.parse_args(["migrate", "--workload", "uniform:rate=100", "--stop-rule", "bhyve",
                                       "--bhyve-rounds", "2"]))
    assert (s.strategy.stop_rule, s.strategy.bhyve_rounds) == ("bhyve", 2)
    for argv, needle in ((["--max-rounds", "0"], "--max-rounds: must be at least 1"),
                         (["--bhyve-rounds", "2"], "--bhyve-rounds: needs --stop-rule bhyve")):
        assert main(["migrate", "--workload", "uniform:rate=100", *argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err


def test_rounds_campaign_scores_fixed_rounds_beside_the_threshold():
    from pathlib import Path

    from harness import validate

    c = validate.Campaign.load(Path(__file__).resolve().parent.parent / "campaigns" / "rounds.toml")
    strategies = {s.name: dict(s.fields) for s in c.strategies}
    assert {k: v.get("bhyve_rounds") for k, v in strategies.items() if v.get("stop_rule") == "bhyve"} == {
        "rounds-2": 2, "rounds-4": 4, "rounds-8": 8}
    assert {"precopy-300ms", "precopy-50ms"} <= set(strategies)
    full = validate.Campaign.load(Path(__file__).resolve().parent.parent / "campaigns" / "full.toml")
    assert c.workloads == full.workloads and c.links == full.links and c.memory_bytes == full.memory_bytes
    assert len(c.runs()) == 90


def test_capped_runs_are_summarised_and_skip_threshold_baselines(tmp_path):
    import numpy as np

    from harness import validate
    from harness.record import MemoryCheck, MigrationStats, Poll, RunRecord
    from sim.trace import make_trace, save

    camp = tmp_path / "c.toml"
    camp.write_text('name = "u"\nmemory = "64MiB"\nrepetitions = 2\n[[workload]]\nname = "hc"\n'
                    'spec = "hotcold:hot=8MiB,rate=1500,total=32MiB"\n[[link]]\nname = "l"\nbandwidth = "200Mbit/s"\n'
                    '[[strategy]]\nname = "r2"\nkind = "precopy"\nstop_rule = "bhyve"\nbhyve_rounds = 2\n')
    c = validate.Campaign.load(camp)
    out = tmp_path / "out"
    n = 40
    lists = [np.arange(i * 10, i * 10 + 300) for i in range(n)]
    t0 = np.arange(n) * 0.5
    trace = out / "traces" / "hc.npz"
    save(make_trace(lists, t0, t0 + 0.5, n_pages=(64 << 20) // 4096,
                    meta={"workload": c.workloads[0].spec, "guest_memory_bytes": 64 << 20, "interval_s": 0.5,
                          "collected_seconds": 20.0, "complete": True, "zero_page_fraction": 0.5}), trace)
    runs = []
    for sc, rep in c.runs():
        meta = {"campaign": "u", "scenario": sc.name, "repetition": rep, "workload": "hc", "link": "l",
                "strategy": "r2", "trace": "../traces/hc.npz", "trace_sha256": ""}
        cap = {"max_rounds": 2, "action": "raise-limit", "trigger_sync_count": 3, "fired_sync_count": 3,
               "fired_t_s": 2.0, "live_downtime_limit_ms": 1, "raised_downtime_limit_ms": MAX_DOWNTIME_LIMIT_MS}
        rec = RunRecord(scenario=sc.scenario, outcome="completed",
                        stats=MigrationStats(total_time_s=2.3, downtime_s=0.05, bytes_sent=40 << 20,
                                             dirty_sync_count=5),
                        timeline=(Poll(1.0, "active", expected_downtime_s=0.04), Poll(2.0, "active"),
                                  Poll(2.25, "completed")),
                        memory_check=MemoryCheck(16384, 1 if rep else 0), options={"validation": meta, "round_cap": cap})
        path = validate.run_path(out, sc.name, rep)
        rec.save(path)
        runs.append(validate.ValidatedRun(path, rec, sc.name, rep, "hc", "l", "r2", trace))
    # threshold baselines do not answer a fixed-round run; QEMU's own estimate does
    assert set(validate.baseline_predictions(runs[0], {}, validate.trace_summary(trace))) == {"qemu-expected-downtime"}
    host = tmp_path / "host.json"
    host.write_text('{"constants": {"host.switchover_s": 0.03, "host.throughput_efficiency": 0.9}}')
    summary = validate.build_report(out, c, host_json=str(host), progress=False)
    (capped,) = summary["round_caps"]
    assert capped["max_rounds"] == 2 and capped["fired_runs"] == 2 and capped["fired_sync_count"] == 3
    assert capped["cap_to_switchover_s"] == pytest.approx(0.25)
    assert capped["measured"]["dirty_sync_count"] == 5 and "dirty_sync_count" in capped["predicted"]
    assert summary["memory_check"]["verified"] == 2 and summary["memory_check"]["differing_runs"] == 1
    report = (out / "report.md").read_text()
    assert "## Fixed-round runs" in report and "## Memory verification" in report
