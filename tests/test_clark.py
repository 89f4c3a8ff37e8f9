"""Clark et al. (NSDI 2005) as golden tests: the paper's numbers against the ``xen`` rule (sim/clark.py).

Targets (issue 15): bytes and total time within 10 %, downtime within 25 %, rounds within one. Where the
model meets a target the test asserts the target; where it misses (results/clark2005/README.md says why),
the test pins today's error to within a few points, so that a change of the model shows here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim import clark
from sim.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]

#: (case, metric) -> today's error where the target is missed (documented in the report).
MISSED = {("specweb99", "downtime_s"): 0.486, ("specweb99", "rounds"): 2.0}


@pytest.fixture(scope="module")
def results():
    return {cr.case: cr for cr in clark.evaluate()}


@pytest.mark.parametrize("mbit, seconds", [(128, 32.0), (256, 16.0), (512, 8.0)])
def test_stop_and_copy_arithmetic_of_section_4_2(results, mbit, seconds):
    r = results[f"stopcopy-{mbit}"].result
    assert r.total_time_s == pytest.approx(seconds, rel=1e-9)
    assert r.downtime_s == pytest.approx(seconds, rel=1e-9)
    assert r.bytes_sent == 512 * 2**20


PUBLISHED_METRICS = [(case, metric) for case in ("specweb99", "quake3", "mmuncher") for metric in clark.TARGETS
                     if clark.CaseResult(case, clark.PUBLISHED[case], None).published_value(metric) is not None]


@pytest.mark.parametrize("case, metric", PUBLISHED_METRICS)
def test_published_case(results, case, metric):
    err = results[case].error(metric)
    assert err is not None
    if (case, metric) in MISSED:
        assert err == pytest.approx(MISSED[case, metric], abs=1.0 if metric == "rounds" else 0.03)
    else:
        assert abs(err) <= clark.TARGETS[metric]


def test_specweb99_first_two_rounds_are_the_fit_and_the_rest_a_prediction(results):
    cr = results["specweb99"]
    live = cr.live_bytes
    pub = cr.published.round_bytes
    assert live[0] == pytest.approx(pub[0], rel=1e-3) and live[1] == pytest.approx(pub[1], rel=1e-3)
    # rounds 3-8 decline like the paper's, each within a factor of 1.5
    for got, want in zip(live[2:8], pub[2:8], strict=True):
        assert want / 1.5 <= got <= want * 1.5
    assert cr.result.reason == "sent more than the previous round at the maximum rate"
    assert cr.result.total_time_s == pytest.approx(71.0, rel=0.10)


def test_quake3_ends_on_the_fifty_page_test_with_the_published_final_round(results):
    cr = results["quake3"]
    assert cr.result.reason.startswith("fewer than 50 pages")
    assert cr.final_bytes == pytest.approx(148 * 1024, rel=0.05)


def test_sampled_mode_agrees_on_specweb99():
    # like for like: the page-exact sampler draws independent pages, so compare with write_dispersion 1
    sc = clark.scenario("specweb99").replace(**{"workload.write_dispersion": 1.0})
    e = clark.simulate(sc)
    s = clark.simulate(sc.replace(**{"workload.mode": "sampled"}))
    assert s.bytes_sent == pytest.approx(e.bytes_sent, rel=0.03)
    assert abs(s.rounds - e.rounds) <= 2


def test_burstier_writes_stop_specweb99_earlier():
    sc = clark.scenario("specweb99")
    assert sc.workload.write_dispersion == pytest.approx(clark.specweb99_write_dispersion(), abs=0.01)
    poisson = clark.simulate(sc.replace(**{"workload.write_dispersion": 1.0}))
    bursty = clark.simulate(sc)
    assert bursty.rounds < poisson.rounds and bursty.bytes_sent < poisson.bytes_sent
    # the rounds before the stop are the same: the test does not steer them
    a, b = (r.rounds_table.loc[r.rounds_table["phase"] == "precopy", "bytes"].to_numpy() for r in (bursty, poisson))
    assert a == pytest.approx(b[: len(a)], rel=1e-12)


def test_committed_scenarios_are_the_modules(tmp_path):
    for path in clark.write_scenarios(str(tmp_path)):
        name = Path(path).name
        committed = ROOT / "examples" / "clark2005" / name
        assert Scenario.from_toml(committed) == Scenario.from_toml(path), name


def test_fits_reproduce_the_stored_workloads():
    """Re-run each fit (only on what the module docstring says) and compare with FITTED."""
    def parse(spec):
        head, _, rest = spec.partition(":")
        return head, {k: v for k, v in (kv.split("=") for kv in rest.split(","))}

    for case, fit, keys in [("specweb99", clark.fit_specweb99, ("s", "rate")),
                            ("quake3", clark.fit_quake3, ("hot", "rate")),
                            ("mmuncher", clark.fit_mmuncher, ("rate",))]:
        got, want = parse(fit()), parse(clark.FITTED[case])
        assert got[0] == want[0]
        for k in keys:
            g, w = (float(x[1][k].removesuffix("MiB")) for x in (got, want))
            assert g == pytest.approx(w, rel=0.02), (case, k)
    for k, v in clark.fit_last_round().items():
        assert v == pytest.approx(clark.FITTED[k], rel=1e-3, abs=1e-5), k


def test_last_round_constants_reproduce_the_papers_two_copies():
    """The closed-form fit: Quake 3's 148 KB in 20 ms and SPECweb99's 18.2 MB in 201 ms, at the link then 500 Mbit/s."""
    link = clark.GBE_BPS * clark.GBE_PAYLOAD_EFFICIENCY
    cap = 500 * clark.XEN_MBIT_BPS
    f = clark.fit_last_round()

    def copy_s(b):
        burst = min(b, f["final_copy_burst_bytes"])
        return f["switchover_s"] + burst / link + (b - burst) / cap

    assert copy_s(148 * 1024) == pytest.approx(0.020, abs=1e-4)
    assert copy_s(18.2 * 2**20) == pytest.approx(0.201, abs=1e-4)
    assert f["resume_s"] == 0.040


def test_mmuncher_downtime_is_held_to_the_rate_after_the_budget(results):
    """MMuncher's 3.5 s cannot come from a final copy at link speed (its final round is at most 256 MB)."""
    cr = results["mmuncher"]
    link_s = cr.final_bytes / (clark.GBE_BPS * clark.GBE_PAYLOAD_EFFICIENCY)
    assert cr.result.downtime_s > 1.5 * link_s
    assert abs(cr.error("downtime_s")) <= clark.TARGETS["downtime_s"]


def test_median_stop_reproduces_the_rule_and_moves_earlier_with_burstier_writes(results):
    cr = results["specweb99"]
    own = clark.median_stop(cr, cr.result.scenario.workload.write_dispersion)  # exactly what the rule did
    assert own.rounds == cr.result.rounds
    assert own.bytes_sent == pytest.approx(cr.result.bytes_sent, rel=1e-9)
    assert own.downtime_s == pytest.approx(cr.result.downtime_s, rel=1e-9)
    assert own.total_time_s == pytest.approx(cr.result.total_time_s, rel=1e-9)
    d = clark.specweb99_write_dispersion()
    assert 40 < d < 70  # dominated by the 1 % of requests for 100-900 KB files
    burstier = clark.median_stop(cr, 10 * d)
    assert burstier.rounds < own.rounds and burstier.bytes_sent < own.bytes_sent
