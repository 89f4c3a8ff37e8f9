"""Model pieces for big guests (issue 9 item 4): zero pages from what fills the guest, the scaling law
chosen from data, and the size-based splits of the host fit. Synthetic runs only."""

from __future__ import annotations

import math

import pytest

from sim import hostfit, scaling, zeropages
from sim.errors import ConfigError
from sim.model import DirtyModel, PageClass
from sim.scenario import Scenario

GiB = 1 << 30
MiB = 1 << 20


def test_zero_pages_from_size_and_fill():
    # 16 GiB, 5 % fill: page array 256 MiB + kernel 192 MiB + 819 MiB data; QEMU counted 326,557 normal
    # pages (1,276 MiB) in the scale pilot
    z = zeropages.zero_page_fraction(16 * GiB, int(0.05 * 16 * GiB))
    assert z == pytest.approx(1 - (256 * MiB + 192 * MiB + int(0.05 * 16 * GiB)) / (16 * GiB))
    assert abs((1 - z) * 16 * GiB / MiB - 1276) < 20
    # a bigger guest with the same fill share has more zero pages (the kernel is fixed), never above 1 - 1.6 %
    assert zeropages.zero_page_fraction(64 * GiB, int(0.05 * 64 * GiB)) > z
    assert zeropages.zero_page_fraction(1 << 40, 0) < 1 - zeropages.PAGE_ARRAY_SHARE
    assert zeropages.zero_page_fraction(GiB, 2 * GiB) == 0.0  # a workload bigger than the guest fills it
    with pytest.raises(ConfigError):
        zeropages.zero_page_fraction(0, 0)


def test_zero_pages_for_a_harness_spec_agree_with_the_preflight():
    from harness.guest import parse_workload, workload_footprint_bytes

    spec = "hotcold:hot=32MiB,rate=5000,fill=0.05"
    wl = workload_footprint_bytes(parse_workload(spec, 4 * GiB), 4 * GiB)
    assert zeropages.zero_page_fraction_for_spec(spec, 4 * GiB) == zeropages.zero_page_fraction(4 * GiB, wl)
    redis = zeropages.zero_page_fraction_for_spec("redis:keys=3%,value=1KiB", 64 * GiB)
    assert 0.9 < redis < 0.96


def test_a_small_guests_zero_share_is_not_carried_to_a_big_one():
    # the 512 MiB redis trace: 58 % zero. Its ~215 MiB of data at 256 GiB is not 42 % of the guest.
    z = zeropages.rescaled_zero_fraction(0.58, 512 * MiB, 256 * GiB, "absolute")
    assert z > 0.98
    zp = zeropages.rescaled_zero_fraction(0.58, 512 * MiB, 256 * GiB, "proportional")
    assert zp == pytest.approx(0.58, abs=1e-9)  # data that grows with memory keeps its share
    with pytest.raises(ConfigError):
        zeropages.rescaled_zero_fraction(0.5, GiB, GiB, "sideways")


def _model(memory: int, hot_pages: float, hot_rate: float = 2.0, cold_rate_total: float = 500.0) -> DirtyModel:
    n = memory // 4096
    cold = n - hot_pages
    return DirtyModel(n, 4096, (PageClass(hot_pages, hot_rate), PageClass(cold, cold_rate_total / cold)))


def test_the_law_is_chosen_from_models_at_two_sizes():
    fixed = [_model(GiB, 8192), _model(4 * GiB, 8192), _model(16 * GiB, 8192)]
    c = scaling.choose_law(fixed, name="hotfixed")
    assert c.law == "absolute" and c.errors["absolute"] < 0.01 < c.errors["proportional"]
    assert c.line.startswith("hotfixed: scaling law absolute") and "1, 4, 16 GiB" in c.line
    share = [DirtyModel(GiB // 4096, 4096, (PageClass(0.02 * GiB / 4096, 2.0), PageClass(0.98 * GiB / 4096, 0.01))),
             DirtyModel(4 * GiB // 4096, 4096, (PageClass(0.08 * GiB / 4096, 2.0),
                                                PageClass(3.92 * GiB / 4096, 0.01)))]
    c = scaling.choose_law(share)
    assert c.law == "proportional" and c.errors["proportional"] < 0.01 < c.errors["absolute"]
    with pytest.raises(ConfigError, match="two or more"):
        scaling.choose_law(fixed[:1])


def _obs(memory: int, i: int) -> hostfit.Observation:
    sc = Scenario().replace(**{"workload.spec": "hotcold:hot=32MiB,rate=2000", "workload.memory_bytes": memory,
                               "link.bandwidth_Bps": "1Gbit/s", "strategy.kind": "precopy",
                               "strategy.downtime_limit_s": 0.3, "name": f"s{memory >> 30}-{i}"})
    # measured = the simulator with known constants: a fit on any sizes finds them again
    truth = {"host.throughput_efficiency": 0.9, "host.switchover_s": 0.01}
    p = hostfit.predict(sc, truth)
    return hostfit.Observation(f"r{memory >> 30}-{i}", sc.name, sc,
                               {k: p[k] for k in ("total_time_s", "downtime_s", "bytes_sent", "dirty_sync_count")})


def test_size_split_and_leave_one_size_out():
    obs = [_obs(m, i) for m in (GiB, 2 * GiB, 4 * GiB) for i in range(2)]
    train, judged = hostfit.size_split(obs, 2 * GiB)
    assert {hostfit.memory_of(o) for o in train} == {GiB, 2 * GiB} and {hostfit.memory_of(o) for o in judged} == {4 * GiB}
    folds = hostfit.leave_one_size_out(obs, maxfev=30)
    assert [f.fold for f in folds] == [0, 1, 2]
    for f in folds:  # each fold never saw its size
        held = {o.run_id for o in obs if o.group in f.heldout_groups}
        assert len(held) == 2 and not set(f.heldout_groups) & set(f.fit.train_groups)
        assert f.fit.constants["host.throughput_efficiency"] == pytest.approx(0.9, rel=0.05)
    by = hostfit.evaluate_by_size(obs, lambda o: folds[[GiB, 2 * GiB, 4 * GiB].index(hostfit.memory_of(o))].fit.constants)
    assert sorted(by) == [GiB, 2 * GiB, 4 * GiB] and all(v["runs"] == 2 for v in by.values())
    assert all(v["median_abs_rel_error"]["bytes_sent"] < 0.05 for v in by.values())
    with pytest.raises(ConfigError, match="two or more"):
        hostfit.leave_one_size_out(obs[:2])
    with pytest.raises(ConfigError):
        hostfit.size_split(obs, 0)
    assert not math.isnan(by[GiB]["median_abs_rel_error"]["total_time_s"])


def test_size_costs_are_fit_only_from_several_sizes():
    truth = {"host.throughput_efficiency": 0.9, "host.switchover_s": 0.01, "host.zero_page_cost_s": 2.5e-6}

    def obs(memory: int, i: int) -> hostfit.Observation:
        sc = Scenario().replace(**{"workload.spec": "hotcold:hot=32MiB,rate=2000", "workload.memory_bytes": memory,
                                   "workload.zero_page_fraction": zeropages.zero_page_fraction(memory, 50 * MiB),
                                   "link.bandwidth_Bps": "1Gbit/s",
                                   "strategy.kind": "precopy", "strategy.downtime_limit_s": 0.3,
                                   "name": f"z{memory >> 30}-{i}"})
        p = hostfit.predict(sc, truth)
        m = {k: p[k] for k in ("total_time_s", "downtime_s", "bytes_sent", "dirty_sync_count")}
        m["setup_time_s"] = 0.002 + 0.001 * memory / GiB
        m["duplicate_pages"] = sc.workload.zero_page_fraction * memory / 4096
        return hostfit.Observation(f"r{memory >> 30}-{i}", sc.name, sc, m)

    one = hostfit.fit([obs(GiB, i) for i in range(2)], maxfev=30)
    assert not set(hostfit.SIZE_PARAMS) & set(one.constants)  # one size: not modelled, as before
    several = hostfit.fit([obs(m, i) for m in (GiB, 4 * GiB) for i in range(2)], maxfev=60)
    c = several.constants
    assert set(hostfit.SIZE_PARAMS) <= set(c)
    assert c["host.setup_s_per_GiB"] == pytest.approx(0.001, rel=1e-6)
    assert c["host.zero_page_cost_s"] == pytest.approx(2.5e-6, rel=0.3)
    big = obs(16 * GiB, 0)
    assert hostfit.predict(big.scenario, c)["total_time_s"] == pytest.approx(big.measured["total_time_s"], rel=0.1)
    assert hostfit.host_json_constants(c)["zero_page_cost_s"] == c["host.zero_page_cost_s"]
