"""Xen's pre-copy (sim/xen.py, the ``xen`` stop rule) and the last-round and bhyve-version host constants."""

from __future__ import annotations

import numpy as np
import pytest

import sim.engine as engine
from sim import simulate
from sim.presets import preset
from sim.scenario import Scenario, Strategy
from sim.stoprules import XEN_MBIT_BPS, RoundInfo, XenRule
from sim.xen import scan_order

MiB = 2**20


def xen_scenario(spec: str, mem_mib: int = 256, mode: str = "expected", **strategy) -> Scenario:
    return Scenario(seed=3).replace(**{
        "workload.spec": spec, "workload.memory_bytes": mem_mib * MiB, "workload.zero_page_fraction": 0.0,
        "workload.mode": mode, "link.bandwidth_Bps": 125e6, "strategy.kind": "precopy", "strategy.stop_rule": "xen",
        **{f"strategy.{k}": v for k, v in strategy.items()}})


def run_keeping_migration(sc: Scenario, monkeypatch) -> tuple:
    kept = {}
    original = engine._result

    def keep(m):
        kept["m"] = m
        return original(m)

    monkeypatch.setattr(engine, "_result", keep)
    return engine.simulate(sc), kept["m"]


def test_defaults_are_xc_domain_saves():
    s = Strategy()
    assert (s.xen_max_iters, s.xen_max_factor, s.xen_min_dirty_pages) == (29, 3.0, 50)
    assert s.xen_min_rate_Bps == 100 * XEN_MBIT_BPS and s.xen_max_rate_Bps == 500 * XEN_MBIT_BPS
    assert s.xen_rate_increment_Bps == 50 * XEN_MBIT_BPS and s.xen_batch_pages == 1024
    assert XEN_MBIT_BPS == 100 * 1024 * 1e6 / 781250  # BURST_BUDGET bytes per RATE_TO_BTU / mbit microseconds


@pytest.mark.parametrize("n", [1, 7, 1024, 1025, 4096, 200_000, 2**18])
def test_scan_order_is_a_permutation(n):
    order = scan_order(n)
    assert len(order) == n and np.array_equal(np.sort(order), np.arange(n))


def test_scan_order_rotates_like_permute():
    # permute(N) for nr = 2**12 (order 12): ((N >> 2) | (N << 10)) & 0xFFF
    n = np.arange(4096)
    assert np.array_equal(scan_order(4096), ((n >> 2) | (n << 10)) & 0xFFF)


def info(round_no=3, sent=1000.0, skipped=0.0, pending=900.0, total=5000.0, n=10_000, seconds=1.0):
    return RoundInfo(round_no, sent, pending, pending, total, n, 0.0, skipped_pages=skipped, seconds=seconds)


def test_stop_conditions_each_fire_alone():
    s = Strategy(stop_rule="xen")
    assert XenRule(s).decide(info()) == "continue"
    assert XenRule(s).decide(info(round_no=28)) == "complete"      # iter >= max_iters
    assert XenRule(s).decide(info(round_no=27)) == "continue"
    assert XenRule(s).decide(info(sent=30, skipped=19)) == "complete"  # sent + skip < 50
    assert XenRule(s).decide(info(sent=30, skipped=20)) == "continue"
    assert XenRule(s).decide(info(total=30_001)) == "complete"     # total_sent > p2m_size * max_factor
    assert XenRule(s).decide(info(total=30_000)) == "continue"


def test_sent_more_than_last_stops_only_at_the_maximum_rate():
    s = Strategy(stop_rule="xen")
    rule = XenRule(s)
    assert rule.decide(info(sent=1000, pending=0)) == "continue"
    assert rule.decide(info(sent=1100, pending=0)) == "continue"  # more than last, but at the minimum rate
    rule.rate_Bps = s.xen_max_rate_Bps
    assert rule.decide(info(sent=1000, pending=0)) == "continue"  # fewer than last
    assert rule.decide(info(sent=1001, pending=0)) == "complete"
    assert "maximum rate" in rule.reason


def test_rate_adapts_to_dirtying_rate_plus_increment_and_caps():
    s = Strategy(stop_rule="xen")
    rule = XenRule(s)
    assert rule.rate_Bps == s.xen_min_rate_Bps
    slow = s.xen_min_rate_Bps / 2 / 4096  # pages per second: half the rate dirtied, so no change
    rule.adapt(slow, 1.0, 4096)
    assert rule.rate_Bps == s.xen_min_rate_Bps
    dirty_Bps = 20e6  # 160 Mbit/s (decimal), read as 160 "Mbit" by print_stats
    rule.adapt(dirty_Bps / 4096, 1.0, 4096)
    assert rule.rate_Bps == pytest.approx((160 + 50) * XEN_MBIT_BPS)
    rule.adapt(1e9 / 4096, 1.0, 4096)
    assert rule.rate_Bps == s.xen_max_rate_Bps and rule.rate_is_max


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_first_round_runs_at_the_minimum_rate_and_skips_the_hot_set(mode, monkeypatch):
    sc = xen_scenario("hotcold:hot=16MiB,rate=40000,hot_share=1.0", mode=mode)
    r, m = run_keeping_migration(sc, monkeypatch)
    first = m.rounds[0]
    assert first["rate_Bps"] == sc.strategy.xen_min_rate_Bps
    assert first["duration_s"] == pytest.approx(first["pages"] * 4096 / sc.strategy.xen_min_rate_Bps)
    # Every page of the pass is either sent or skipped; the hot set is rewritten long before its turn.
    assert first["pages"] + first["skipped_pages"] == pytest.approx(m.n_pages)
    assert first["skipped_pages"] * 4096 == pytest.approx(16 * MiB, rel=0.05)
    assert r.converged


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_skipped_pages_stay_dirty_and_go_in_the_final_copy(mode, monkeypatch):
    sc = xen_scenario("hotcold:hot=16MiB,rate=400000,hot_share=1.0", mode=mode)
    r, m = run_keeping_migration(sc, monkeypatch)
    live = [row for row in m.rounds if row["phase"] == "precopy"]
    for before, row in zip(live, live[1:], strict=False):
        # to_send of a round is what the previous round's sync left pending
        assert row["pages"] + row["skipped_pages"] == pytest.approx(before["pending_pages_after"], rel=1e-6, abs=1)
    assert r.final_pages * 4096 >= 15 * MiB  # the hot set, skipped every round, is sent while paused
    no_skip = simulate(sc.replace(**{"strategy.xen_skip_redirtied": False}))
    assert no_skip.bytes_sent > r.bytes_sent  # the skip saves re-sending pages that are rewritten anyway


def test_final_copy_runs_at_the_rate_xen_left_plus_resume(monkeypatch):
    # xc_linux_save writes the last iteration through xcio_ratewrite at mbit_rate as it then is
    sc = xen_scenario("hotcold:hot=16MiB,rate=40000,hot_share=1.0").replace(**{"host.resume_s": 0.05})
    r, m = run_keeping_migration(sc, monkeypatch)
    assert sc.strategy.xen_min_rate_Bps <= m.rule.rate_Bps <= sc.strategy.xen_max_rate_Bps
    assert r.downtime_s == pytest.approx(0.05 + r.final_pages * 4096 / m.rule.rate_Bps)
    fast = simulate(sc.replace(**{"host.final_copy_rate_Bps": 100e6}))
    assert fast.downtime_s == pytest.approx(0.05 + fast.final_pages * 4096 / 100e6)


def test_banked_budget_goes_at_link_speed_then_the_rate(monkeypatch):
    """xcio_ratewrite never caps its budget: the banked bytes go at the link's rate, the rest at mbit_rate."""
    sc = xen_scenario("uniform:rate=200000,span=64MiB", mem_mib=128)
    r0, m = run_keeping_migration(sc, monkeypatch)
    rate = m.rule.rate_Bps
    assert rate == sc.strategy.xen_max_rate_Bps and r0.final_pages * 4096 > 8 * MiB
    burst = 4 * MiB
    r1 = simulate(sc.replace(**{"host.final_copy_burst_bytes": burst}))
    assert r1.final_pages == r0.final_pages and r1.bytes_sent == r0.bytes_sent
    assert r1.downtime_s == pytest.approx(r0.downtime_s - burst / rate + burst / 125e6)
    huge = simulate(sc.replace(**{"host.final_copy_burst_bytes": 2**40}))  # all of it at link speed
    assert huge.downtime_s == pytest.approx(r0.final_pages * 4096 / 125e6)
    # A final copy at the link's rate has nothing to gain from a budget.
    free = sc.replace(**{"strategy.xen_rate_adaptation": False})
    assert simulate(free.replace(**{"host.final_copy_burst_bytes": burst})).downtime_s == simulate(free).downtime_s


def test_without_adaptive_save_the_rate_is_the_links_and_the_rate_test_never_fires(monkeypatch):
    sc = xen_scenario("uniform:rate=60000,span=128MiB", xen_rate_adaptation=False)
    r, m = run_keeping_migration(sc, monkeypatch)
    assert all(row["rate_Bps"] == m.live_rate_Bps == 125e6 for row in m.rounds if row["phase"] == "precopy")
    assert m.rounds[0]["duration_s"] == pytest.approx(m.rounds[0]["pages"] * 4096 / 125e6)
    assert "maximum rate" not in r.reason


def test_nonconverging_guest_stops_on_max_iters_or_factor_and_switches_over():
    r = simulate(xen_scenario("uniform:rate=200000", mem_mib=128, xen_rate_adaptation=False))
    assert r.converged and r.rounds <= 29
    assert r.reason.startswith(("max iterations", "sent more than 3x"))


def test_expected_and_sampled_modes_agree_on_a_zipf_guest():
    sc = xen_scenario("zipf:s=1.6,rate=200000", mem_mib=256)
    e, s = simulate(sc), simulate(sc.replace(**{"workload.mode": "sampled"}))
    assert s.bytes_sent == pytest.approx(e.bytes_sent, rel=0.05)
    assert s.total_time_s == pytest.approx(e.total_time_s, rel=0.05)
    assert abs(s.rounds - e.rounds) <= 2


def test_xen_ratio_is_the_old_rule():
    sc = xen_scenario("hotcold:hot=48MiB,rate=4000").replace(**{"strategy.stop_rule": "xen-ratio"})
    r = simulate(sc)
    assert r.reason in {"dirtying outpaces sending", "fewer than 50 dirty pages", "max iterations (29)",
                        "sent 3x memory"}
    assert "skipped_pages" not in r.rounds_table or r.rounds_table.get("skipped_pages") is None


def test_preset_xen_means_the_real_thing():
    assert preset("xen")["strategy.stop_rule"] == "xen"
    assert preset("xen-ratio")["strategy.stop_rule"] == "xen-ratio"


# ------------------------------------------------------------------ last-round host constants
def test_resume_and_final_rate_are_what_the_downtime_says_for_qemu():
    base = Scenario().replace(**{"workload.spec": "hotcold:hot=32MiB,rate=4000", "workload.memory_bytes": 512 * MiB,
                                 "host.switchover_s": 0.02})
    r0 = simulate(base)
    r1 = simulate(base.replace(**{"host.resume_s": 0.03}))
    assert r1.downtime_s == pytest.approx(r0.downtime_s + 0.03)
    assert r1.bytes_sent == r0.bytes_sent
    slow = simulate(base.replace(**{"host.final_copy_rate_Bps": base.link.bandwidth_Bps / 4}))
    assert slow.downtime_s > r0.downtime_s and slow.final_pages == r0.final_pages


# ------------------------------------------------------------------ bhyve versions
def bhyve(spec: str = "hotcold:hot=64MiB,rate=20000", mode: str = "expected", **over) -> Scenario:
    return Scenario(seed=1).replace(**{"workload.spec": spec, "workload.memory_bytes": 1024 * MiB,
                                       "workload.mode": mode, **preset("bhyve-upb"), **over})


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_sticky_dirty_flag_resends_every_dirtied_page_each_round(mode):
    per_round = simulate(bhyve(mode=mode))
    sticky = simulate(bhyve(mode=mode, **{"host.bhyve_sticky_dirty": True}))
    t = sticky.rounds_table
    pages = t.loc[t["phase"] == "precopy", "pages"].to_numpy()
    assert np.all(np.diff(pages[1:]) >= -1e-6)  # the dirty list only grows once dirtied pages stay in it
    assert sticky.bytes_sent > per_round.bytes_sent
    assert sticky.final_pages >= per_round.final_pages


def test_dirty_search_pauses_the_guest_each_live_round_and_adds_to_downtime():
    cost = 50e-9
    base = simulate(bhyve())
    paused = simulate(bhyve(**{"host.bhyve_dirty_search_s_per_page": cost}))
    search = 1024 * MiB / 4096 * cost
    assert paused.downtime_s == pytest.approx(base.downtime_s + search, rel=1e-3)
    assert paused.total_time_s > base.total_time_s + 3 * search * 0.99  # rounds 1-3 plus the final one


def test_bhyve_version_presets():
    early = preset("bhyve-upb-early")
    assert early["host.bhyve_sticky_dirty"] and early["host.bhyve_lowmem_only"]
    assert not preset("bhyve-upb").get("host.bhyve_sticky_dirty", False)
    r = simulate(Scenario().replace(**{"workload.memory_bytes": 4 * 2**30, **early}))
    assert not r.converged and "lowmem" in r.reason
