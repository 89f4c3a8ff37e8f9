"""Post-copy as QEMU does it: requests for pages in flight, the urgent path with and without
postcopy-preempt, and blocktime (sim/postcopy.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import simpy

from sim import Scenario, simulate
from sim.pending import ExactPages
from sim.postcopy import PostcopyState, fault_stall_s, flight_s, push_follows_faults, serve_fault


class _Touches:
    """Touches pages 5, 7 and 9 at 10 %, 30 % and 50 % of every guest-time window."""

    n_pages = 16
    looped = False

    def window(self, g0, g1):
        return np.array([5, 7, 9]), g0 + np.array([0.1, 0.3, 0.5]) * (g1 - g0)


def _migration(pending_pages):
    pages = ExactPages(_Touches())
    words = np.zeros_like(pages.pending_words)
    words[0] = np.uint64(sum(1 << p for p in pending_pages))
    pages.or_words(words)
    return SimpleNamespace(pages=pages, touch_source=_Touches(), g=0.0)


def test_a_fault_on_a_page_in_flight_waits_for_it_to_land_and_is_one_request():
    env = simpy.Environment()
    m = _migration([5])  # 5 not sent; 7 on its way, landing at 0.45 s; 9 landed already (0.2 s)
    state = PostcopyState(step_s=1.0, stalled_until_s=0.0)
    state.in_flight.append((np.array([7, 9]), np.array([0.45, 0.2])))
    requests, urgent, ran = serve_fault(env, m, state, 1.0, 0.1, 1.0)
    # 5 at 0.1: urgent, stalls 0.1 s (to 0.2); 7 reached at 0.2 + 0.2 = 0.4, waits to 0.45; 9 has landed.
    assert (requests, urgent) == (2.0, 1.0)
    assert ran == pytest.approx(1.0 - 0.1 - 0.05)
    assert state.faulted_pages.tolist() == [5]  # only the urgent page goes to the source's queue


def test_a_page_that_landed_before_the_touch_is_no_request():
    env = simpy.Environment()
    m = _migration([])
    state = PostcopyState(step_s=1.0, stalled_until_s=0.0)
    state.in_flight.append((np.array([5, 7, 9]), np.array([0.05, 0.25, 0.45])))
    requests, urgent, ran = serve_fault(env, m, state, 1.0, 0.1, 1.0)
    assert (requests, urgent, ran) == (0.0, 0.0, pytest.approx(1.0))


def test_landing_times_drop_landed_pushes():
    state = PostcopyState(step_s=1.0, stalled_until_s=0.0)
    state.in_flight = [(np.array([1, 4]), np.array([0.1, 0.2])), (np.array([2, 8]), np.array([0.6, 0.9]))]
    got = state.landing_s(np.array([1, 2, 3, 8]), now_s=0.5)
    assert got.tolist() == [-np.inf, 0.6, -np.inf, 0.9]
    assert len(state.in_flight) == 1


def _scenario(**changes):
    base = {"workload.memory_bytes": "256MiB", "workload.spec": "hotcold:hot=32MiB,rate=4000",
            "link.bandwidth_Bps": "250Mbit/s", "link.rtt_s": 0.02, "host.postcopy_queue_bytes": 1 << 20,
            "strategy.kind": "postcopy"}
    return Scenario().replace(**{**base, **changes})


def test_preempt_takes_the_backlog_off_the_urgent_path():
    plain, preempt = _scenario(), _scenario(**{"strategy.postcopy_preempt": True})
    m = SimpleNamespace(sc=plain, page_wire=4096, switch_rate_Bps=plain.link.bandwidth_Bps)
    mp = SimpleNamespace(sc=preempt, page_wire=4096, switch_rate_Bps=plain.link.bandwidth_Bps)
    assert fault_stall_s(m) - fault_stall_s(mp) == pytest.approx((1 << 20) / plain.link.bandwidth_Bps)
    assert fault_stall_s(mp) == pytest.approx(0.02 + 4096 / plain.link.bandwidth_Bps)
    assert flight_s(m) == flight_s(mp)  # the background stream keeps its backlog either way
    # get_queued_page moves the background scan only when the requested page comes down the same channel
    assert push_follows_faults(m) and not push_follows_faults(mp)


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_preempt_faults_more_often_but_each_waits_less(mode):
    plain = simulate(_scenario(**{"workload.mode": mode}))
    preempt = simulate(_scenario(**{"workload.mode": mode, "strategy.postcopy_preempt": True}))
    assert preempt.postcopy_faults > plain.postcopy_faults
    assert (preempt.postcopy_stall_s / preempt.postcopy_faults) < (plain.postcopy_stall_s / plain.postcopy_faults)
    assert preempt.bytes_sent == pytest.approx(plain.bytes_sent, rel=0.01)  # the same pages, another channel


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_requests_include_pages_in_flight_and_blocktime_is_the_vcpu_stall(mode):
    r = simulate(_scenario(**{"workload.mode": mode, "strategy.prepaging": "linear"}))
    assert r.postcopy_faults >= r.postcopy_urgent_pages > 0
    assert r.postcopy_blocktime_s == r.postcopy_stall_s > 0
    assert r.postcopy_vcpu_blocktime_s == (r.postcopy_stall_s,)
    assert r.summary()["postcopy_blocktime_s"] == r.postcopy_blocktime_s
    assert r.to_dict()["summary"]["postcopy_vcpu_blocktime_s"] == [r.postcopy_stall_s]
    # a page in flight lands within the channel's backlog plus one way: without any, no request finds one
    r0 = simulate(_scenario(**{"workload.mode": mode, "strategy.prepaging": "linear", "host.postcopy_queue_bytes": 0,
                               "link.rtt_s": 0.0}))
    assert r0.postcopy_faults == r0.postcopy_urgent_pages


def test_precopy_ignores_the_postcopy_knobs():
    sc = _scenario(**{"strategy.kind": "precopy"})
    a, b = simulate(sc), simulate(sc.replace(**{"strategy.postcopy_preempt": True, "strategy.prepaging": "linear"}))
    assert a.summary() == b.summary()
    assert a.postcopy_faults == 0 and a.postcopy_blocktime_s == 0 and a.postcopy_vcpu_blocktime_s == (0.0,)


# -- the pause the guest sees ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["precopy", "postcopy", "hybrid"])
def test_guest_pause_adds_the_data_in_flight_and_the_load_to_the_switchover(kind):
    sc = _scenario(**{"strategy.kind": kind, "host.switchover_s": 0.004, "host.postcopy_switch_s": 0.001})
    r = simulate(sc)
    backlog_s = (1 << 20) / sc.link.bandwidth_Bps
    if kind == "precopy":
        # no return path: QEMU's clock (with its rtt/2 for the last byte) plus the backlog
        assert r.guest_pause_s == pytest.approx(r.downtime_s + backlog_s)
    else:
        assert r.guest_pause_s == pytest.approx(r.downtime_s + backlog_s + 0.01)
    loaded = simulate(sc.replace(**{"host.device_load_s": 0.03}))
    assert loaded.guest_pause_s == pytest.approx(r.guest_pause_s + 0.03)
    assert loaded.downtime_s == r.downtime_s  # QEMU's figure does not see the destination's load
    assert "guest_pause_s" in r.summary()


def test_guest_pause_with_the_return_path_is_the_downtime_without_the_reply():
    sc = _scenario(**{"strategy.kind": "hybrid", "strategy.postcopy_after_rounds": 50,
                      "workload.spec": "hotcold:hot=1MiB,rate=100"})  # converges as pre-copy first
    r = simulate(sc)
    assert r.postcopy_time_s == 0
    assert r.guest_pause_s == pytest.approx(r.downtime_s - 0.01)


def test_cancelled_migration_has_no_pause():
    r = simulate(_scenario(**{"strategy.kind": "precopy", "strategy.timeout_s": 1.0,
                              "workload.spec": "uniform:rate=100MiB/s"}))
    assert not r.converged and np.isnan(r.guest_pause_s)


# -- the expected-value loop is the two processes without the events ------------------------
def _with_processes(monkeypatch):
    import sim.engine as engine
    import sim.postcopy as pc

    def processes(env, m):
        done = env.event()
        step_s = max(m.pages.count() * m.page_wire / m.switch_rate_Bps / pc.STEPS, 1e-4)
        state = pc.PostcopyState(step_s=step_s, stalled_until_s=env.now)
        env.process(pc.background_push(env, m, state, done))
        env.process(pc.run_guest(env, m, state, done))
        yield done

    monkeypatch.setattr(engine, "postcopy", processes)


@pytest.mark.parametrize("changes", [
    {"strategy.kind": "postcopy"},
    {"strategy.kind": "hybrid", "strategy.postcopy_preempt": True},
    {"strategy.kind": "postcopy", "strategy.prepaging": "linear", "link.rtt_s": 0.0},
    {"strategy.kind": "hybrid", "workload.spec": "zipf:rate=4000,s=1.1,total=128MiB"},  # 45 classes
])
def test_the_expected_loop_gives_the_processes_numbers(monkeypatch, changes):
    sc = _scenario(**changes)
    fused = simulate(sc)
    _with_processes(monkeypatch)
    stepped = simulate(sc)
    for key, value in fused.summary().items():
        if isinstance(value, float):
            assert value == pytest.approx(stepped.summary()[key], rel=1e-12, abs=1e-12, nan_ok=True), key
    a, b = np.array(fused.timeline_points), np.array(stepped.timeline_points)
    assert a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=1e-6 * a[:, 1].max())
    assert fused.postcopy_faults > fused.postcopy_urgent_pages > 0  # pages in flight are requests too
