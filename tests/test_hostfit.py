"""sim.hostfit: the host constants are recovered from runs, and never tuned on the runs that judge them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import hostfit
from sim.errors import ConfigError
from sim.hostfit import Observation
from sim.scenario import Scenario
from sim.trace import make_trace, save

MiB = 1 << 20
TRUE = {"host.switchover_s": 0.04, "host.throughput_efficiency": 0.85, "host.page_send_cost_s": 0.0,
        "host.dirty_rate_factor": 0.8, "link.header_bytes_per_page": 8.0, "host.setup_s": 0.01,
        "host.postcopy_queue_bytes": 1 << 20}


def _trace(path, n_pages=16384, seconds=30.0, interval=0.5, hot=2048, rate=1500, seed=1):
    """A hot/cold trace: 90 % of ``rate`` writes/s into the first ``hot`` pages."""
    rng = np.random.default_rng(seed)
    n = int(seconds / interval)
    lists = []
    for _ in range(n):
        k = int(rate * interval)
        h = rng.integers(0, hot, int(k * 0.9))
        c = rng.integers(hot, n_pages, k - len(h))
        lists.append(np.unique(np.concatenate([h, c])))
    t0 = np.arange(n) * interval
    tr = make_trace(lists, t0, t0 + interval, n_pages=n_pages,
                    meta={"zero_page_fraction": 0.3, "workload": "hotcold:test", "interval_s": interval})
    save(tr, path)
    return path


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    return _trace(tmp_path_factory.mktemp("hostfit") / "hc.npz")


def _scenarios(trace_path):
    base = Scenario().replace(**{"workload.kind": "trace", "workload.path": str(trace_path),
                                 "workload.memory_bytes": 64 * MiB, "strategy.timeout_s": 60.0})
    out = {}
    for bw_name, bw in (("slow", 20 * MiB), ("fast", 60 * MiB)):
        for sname, ch in (("pre300", {"strategy.kind": "precopy", "strategy.downtime_limit_s": 0.3}),
                          ("pre50", {"strategy.kind": "precopy", "strategy.downtime_limit_s": 0.05}),
                          ("post", {"strategy.kind": "postcopy"})):
            out[f"{bw_name}-{sname}"] = base.replace(**{"link.bandwidth_Bps": bw, "link.rtt_s": 0.004, **ch})
    return out


def _observations(trace_path, constants=TRUE, reps=2, noise=0.0):
    rng = np.random.default_rng(7)
    obs = []
    for name, sc in _scenarios(trace_path).items():
        p = hostfit.predict(sc, constants)
        n_pages = sc.workload.memory_bytes // 4096
        for r in range(reps):
            f = 1.0 + noise * rng.standard_normal()
            m = {"total_time_s": p["total_time_s"] * f, "downtime_s": p["downtime_s"] * f,
                 "bytes_sent": p["bytes_sent"], "dirty_sync_count": p["dirty_sync_count"],
                 "setup_time_s": constants["host.setup_s"], "duplicate_pages": 0.3 * n_pages}
            # ram.transferred = normal x (page + header) + zero x (1 + header): the header is readable from it
            h = constants["link.header_bytes_per_page"]
            m["normal_pages"] = (m["bytes_sent"] - m["duplicate_pages"] * (1 + h)) / (4096 + h)
            m["normal_bytes"] = m["normal_pages"] * 4096
            if sc.strategy.kind != "precopy":
                m["postcopy_requests"] = p["postcopy_requests"]
            obs.append(Observation(f"{name}-r{r}", name, sc, m, hints={"rate_ratio": 0.8}))
    return obs


def test_fit_recovers_known_constants(trace_path):
    obs = _observations(trace_path)
    fit = hostfit.fit(obs, maxfev=200)
    c = fit.constants
    assert c["link.header_bytes_per_page"] == 8
    assert c["host.setup_s"] == pytest.approx(0.01)
    assert c["host.throughput_efficiency"] == pytest.approx(0.85, rel=0.05)
    assert c["host.switchover_s"] == pytest.approx(0.04, abs=0.01)
    err = hostfit.evaluate(obs, c)
    assert err["bytes_sent"] < 0.02 and err["total_time_s"] < 0.03
    # the uncalibrated simulator is measurably worse on the same runs
    assert hostfit.evaluate(obs, {})["total_time_s"] > 2 * err["total_time_s"]
    assert fit.n_train_runs == len(obs) and set(fit.train_groups) == {o.group for o in obs}


def test_folds_are_deterministic_balanced_and_keep_repetitions_together():
    groups = [f"sc{i}" for i in range(10)]
    a = hostfit.assign_folds(groups * 3, 3)
    assert a == hostfit.assign_folds(list(reversed(groups)), 3)  # order-independent
    assert set(a) == set(groups)
    counts = np.bincount(list(a.values()))
    assert counts.max() - counts.min() <= 1
    train, held = hostfit.train_heldout(groups, 3)
    assert train | held == set(groups) and not train & held and 3 <= len(held) <= 4
    with pytest.raises(ConfigError):
        hostfit.assign_folds(groups, 1)


def test_heldout_constants_never_see_the_runs_they_judge(trace_path):
    """Poisoning one fold's measurements must not move the constants that judge that fold."""
    obs = _observations(trace_path, reps=1)
    folds = hostfit.cross_validate(obs, 3, maxfev=40)
    assert len(folds) == 3
    for f in folds:
        assert not set(f.heldout_groups) & set(f.fit.train_groups)
    target = folds[0]
    poisoned = [Observation(o.run_id, o.group, o.scenario,
                            {k: v * 3 for k, v in o.measured.items()}, o.completed)
                if o.group in target.heldout_groups else o for o in obs]
    again = hostfit.cross_validate(poisoned, 3, maxfev=40)
    assert again[0].heldout_groups == target.heldout_groups
    assert again[0].fit.constants == target.fit.constants  # bit-identical: the poisoned runs never entered
    assert again[1].fit.constants != folds[1].fit.constants  # ...while the folds that trained on them moved


def test_direct_estimates_and_run_errors():
    sc = Scenario()
    m = {"bytes_sent": 1000 * 4105 + 500 * 10, "normal_bytes": 1000 * 4096, "normal_pages": 1000,
         "duplicate_pages": 500, "setup_time_s": 0.002}
    d = hostfit.direct_estimates([Observation("a", "a", sc, m)])
    assert d == {"link.header_bytes_per_page": 9.0, "host.setup_s": 0.002}
    e = hostfit.run_errors({"total_time_s": 2.0, "bytes_sent": 100.0, "downtime_s": 0.03, "converged": 1.0},
                           {"total_time_s": 1.0, "bytes_sent": 100.0, "downtime_s": 0.01})
    assert e["total_time_s"] == pytest.approx(math.log(2)) and e["bytes_sent"] == 0
    assert e["downtime_s"] == pytest.approx(1.0)  # 20 ms off, relative to the 20 ms floor
    not_conv = hostfit.run_errors({"total_time_s": 60.0, "converged": 0.0}, {"total_time_s": 1.0})
    assert not_conv["total_time_s"] == 2.0


def test_fit_needs_completed_runs(trace_path):
    obs = [Observation("x", "x", Scenario(), {"total_time_s": 1.0}, completed=False)]
    with pytest.raises(ConfigError, match="no completed runs"):
        hostfit.fit(obs)


def test_host_json_shape_reads_back(trace_path, tmp_path):
    import json

    from sim.hostconst import load_host_json

    fit = hostfit.fit(_observations(trace_path, reps=1), maxfev=20)
    p = tmp_path / "host.json"
    p.write_text(json.dumps(fit.to_json_dict()))
    overrides = load_host_json(str(p))
    assert overrides["link.header_bytes_per_page"] == 8
    assert set(overrides) == {"host.switchover_s", "host.throughput_efficiency", "host.page_send_cost_s",
                              "host.dirty_rate_factor", "host.setup_s", "link.header_bytes_per_page",
                              "host.postcopy_queue_bytes", "host.postcopy_switch_s"}
    Scenario().replace(**overrides)  # every key is a valid scenario field
