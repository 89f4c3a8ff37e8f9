"""Clark et al., "Live Migration of Virtual Machines" (NSDI 2005): the published cases as scenarios.

The paper measured Xen 2.0's pre-copy (XenLinux 2.4.27, Gigabit Ethernet) and
published per-round transfer figures. These are the cases, with the numbers
the paper gives (/work/shared/REFERENCES.md, "Xen pre-copy as published"):

==============  =======================================================================
case            published
==============  =======================================================================
specweb99       800 MB VM (Fig. 9): live rounds 676.8, 126.7, 39.0, 28.4, 24.2, 16.7,
                14.2, 15.3 MB, final 18.2 MB; 960 MB, 71 s, downtime 210 ms
quake3          64 MB VM (Fig. 11): 88 MB in total, final round 148 KB, downtime 60 ms
mmuncher        512 MB VM writing 256 MB (Fig. 12): 638 MB in total, downtime 3.5 s
stopcopy-N      §4.2: a naive stop-and-copy of 512 MB takes 32, 16 and 8 s at
                N = 128, 256 and 512 Mbit/s
==============  =======================================================================

The paper's MB and Mbit are binary (2**20): §4.2's 512 MB x 8 / 128 Mbit/s is
exactly 32 s, and Xen's rate limiter counts a Mbit as 131072 bytes
(:data:`sim.stoprules.XEN_MBIT_BPS`).

**What is fitted, on what** (everything else is a prediction):

* The host. Gigabit Ethernet (125e6 bytes/s) carrying TCP at 1500 bytes MTU:
  :data:`GBE_PAYLOAD_EFFICIENCY` of it is payload. Xen 2.0's rate limits are
  its defaults (100, +50, 500 Mbit/s), the final copy at the maximum
  (§5.3). ``host.resume_s``, the fixed cost of the last round, is fitted on
  Quake 3's downtime alone: its final round (148 KB) takes 2 ms at the
  maximum rate, so its 60 ms downtime is almost all fixed cost.
* SPECweb99's workload: a Zipf page popularity (SPECweb99 requests its files
  with a Zipf distribution) whose exponent and write rate are fitted on the
  first two published rounds only (676.8 and 126.7 MB). Rounds 3-8, the final
  round, bytes, time, downtime and the round count are predictions.
* Quake 3's workload: a hot set (size, rate) fitted on its total bytes and its
  final round, the only two numbers REFERENCES.md has for it beside the
  downtime, which is already spent on ``resume_s``. Quake 3 is therefore a
  calibration case, not a test.
* MMuncher's workload: a sweep over its 256 MB (``uniform:span=256MiB``)
  whose rate is fitted on the total bytes. Its downtime is the prediction.
* §4.2: nothing is fitted; it checks the stop-and-copy arithmetic.

:func:`fit_specweb99`, :func:`fit_quake3`, :func:`fit_mmuncher` and
:func:`fit_resume_s` redo the fits (scipy); :data:`FITTED` holds their results,
which the scenarios use and ``tests/test_clark.py`` checks against a re-fit.
:func:`evaluate` simulates every case and compares; :func:`report_markdown`
writes the report (``results/clark2005/README.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .engine import simulate
from .result import Result
from .scenario import Scenario
from .stoprules import XEN_MBIT_BPS

log = logging.getLogger(__name__)

MiB = 2**20
KiB = 2**10

GBE_BPS = 125e6
#: TCP payload per Ethernet frame at MTU 1500: 1448 bytes of 1538 on the wire (preamble, header, FCS, gap).
GBE_PAYLOAD_EFFICIENCY = 1448 / 1538

#: Targets of issue 15: bytes and total time within 10 %, downtime within 25 %, rounds within one.
TARGETS: dict[str, float] = {"bytes_sent": 0.10, "total_time_s": 0.10, "downtime_s": 0.25, "rounds": 1.0}


@dataclass(frozen=True)
class Published:
    """What the paper reports for one case (None: not published / not in REFERENCES.md)."""

    memory_bytes: int
    total_bytes: float | None = None
    total_time_s: float | None = None
    downtime_s: float | None = None
    live_rounds: int | None = None
    round_bytes: tuple[float, ...] = ()
    final_bytes: float | None = None
    fitted_on: str = ""


PUBLISHED: dict[str, Published] = {
    "specweb99": Published(
        800 * MiB, total_bytes=960 * MiB, total_time_s=71.0, downtime_s=0.210, live_rounds=8,
        round_bytes=tuple(x * MiB for x in (676.8, 126.7, 39.0, 28.4, 24.2, 16.7, 14.2, 15.3)),
        final_bytes=18.2 * MiB, fitted_on="workload: rounds 1-2"),
    "quake3": Published(64 * MiB, total_bytes=88 * MiB, downtime_s=0.060, final_bytes=148 * KiB,
                        fitted_on="workload: total bytes and final round; host.resume_s: downtime"),
    "mmuncher": Published(512 * MiB, total_bytes=638 * MiB, downtime_s=3.5, fitted_on="workload: total bytes"),
    "stopcopy-128": Published(512 * MiB, total_bytes=512 * MiB, total_time_s=32.0, downtime_s=32.0),
    "stopcopy-256": Published(512 * MiB, total_bytes=512 * MiB, total_time_s=16.0, downtime_s=16.0),
    "stopcopy-512": Published(512 * MiB, total_bytes=512 * MiB, total_time_s=8.0, downtime_s=8.0),
}

#: Results of the fits (see the module docstring); ``tests/test_clark.py`` re-fits and compares.
FITTED: dict[str, Any] = {
    "resume_s": 0.05769,
    "specweb99": "zipf:s=2.7687,rate=5.977e+10",
    "quake3": "hotcold:hot=9.62MiB,rate=2761,hot_share=1.0",
    "mmuncher": "uniform:rate=4.24e+04,span=256MiB",
}


def xen_host(resume_s: float | None = None) -> dict[str, Any]:
    """The host and link of the paper's testbed, as scenario overrides."""
    return {"link.bandwidth_Bps": GBE_BPS, "host.throughput_efficiency": GBE_PAYLOAD_EFFICIENCY,
            "host.switchover_s": 0.0, "host.resume_s": FITTED["resume_s"] if resume_s is None else resume_s}


def scenario(case: str, spec: str | None = None, *, resume_s: float | None = None, mode: str = "expected",
             seed: int = 0) -> Scenario:
    """The scenario of one published case (``spec`` overrides the fitted workload)."""
    pub = PUBLISHED[case]
    if case.startswith("stopcopy-"):
        mbit = int(case.split("-")[1])
        return Scenario(name=f"clark2005-{case}").replace(**{
            "workload.spec": "idle", "workload.memory_bytes": pub.memory_bytes, "workload.zero_page_fraction": 0.0,
            "link.bandwidth_Bps": mbit * XEN_MBIT_BPS, "strategy.kind": "stopcopy"})
    return Scenario(name=f"clark2005-{case}", seed=seed).replace(**{
        **xen_host(resume_s),
        "workload.spec": spec or FITTED[case], "workload.memory_bytes": pub.memory_bytes,
        "workload.zero_page_fraction": 0.0, "workload.mode": mode,
        "strategy.kind": "precopy", "strategy.stop_rule": "xen"})


# ------------------------------------------------------------------ fits
def _live_bytes(r: Result) -> list[float]:
    t = r.rounds_table
    return [float(b) for b in t.loc[t["phase"] == "precopy", "bytes"]]


def _final_bytes(r: Result) -> float:
    t = r.rounds_table
    return float(t.loc[t["phase"] == "stopcopy", "bytes"].sum())


def _fit2(make: Callable[[float, float], str], case: str, x0: tuple[float, float],
          targets: Callable[[Result], list[float]], wanted: list[float], max_rounds: int | None) -> str:
    import numpy as np
    from scipy.optimize import minimize

    def loss(lx: np.ndarray) -> float:
        sc = scenario(case, make(*np.exp(lx)))
        if max_rounds is not None:
            sc = sc.replace(**{"strategy.max_rounds": max_rounds})
        got = targets(simulate(sc))
        if len(got) < len(wanted) or min(got) <= 0:
            return 1e3
        return sum(math.log(g / w) ** 2 for g, w in zip(got, wanted, strict=False))

    res = minimize(loss, np.log(x0), method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-12, "maxfev": 400})
    log.info("%s fit: loss %.3g after %d evaluations", case, res.fun, res.nfev)
    return make(*np.exp(res.x))


def fit_specweb99() -> str:
    """Zipf (s, rate) on the first two published rounds of SPECweb99."""
    pub = PUBLISHED["specweb99"]
    return _fit2(lambda s, rate: f"zipf:s={s:.4f},rate={rate:.4g}", "specweb99", (2.5, 1e9),
                 lambda r: _live_bytes(r)[:2], list(pub.round_bytes[:2]), max_rounds=2)


def fit_quake3() -> str:
    """Hot set (size, rate) on Quake 3's total bytes and final round."""
    pub = PUBLISHED["quake3"]
    assert pub.total_bytes is not None and pub.final_bytes is not None
    return _fit2(lambda hot, rate: f"hotcold:hot={hot:.3g}MiB,rate={rate:.4g},hot_share=1.0", "quake3",
                 (8.0, 1000.0), lambda r: [float(r.bytes_sent), _final_bytes(r)],
                 [pub.total_bytes, pub.final_bytes], max_rounds=None)


def fit_mmuncher() -> str:
    """The sweep rate over MMuncher's 256 MB that gives its published total bytes."""
    from scipy.optimize import brentq

    pub = PUBLISHED["mmuncher"]
    assert pub.total_bytes is not None

    def excess(log_rate: float) -> float:
        r = simulate(scenario("mmuncher", f"uniform:rate={math.exp(log_rate):.6g},span=256MiB"))
        return math.log(r.bytes_sent / cast(float, pub.total_bytes))  # asserted above; mypy forgets in closures

    rate = math.exp(brentq(excess, math.log(8000), math.log(200000), xtol=1e-4))
    return f"uniform:rate={rate:.3g},span=256MiB"


def fit_resume_s() -> float:
    """Quake 3's downtime minus its simulated final copy: the fixed cost of Xen's last round."""
    pub = PUBLISHED["quake3"]
    assert pub.downtime_s is not None
    r = simulate(scenario("quake3", resume_s=0.0))
    return round(pub.downtime_s - r.downtime_s, 5)


# ------------------------------------------------------------------ comparison
@dataclass(frozen=True)
class CaseResult:
    """One case simulated against the paper."""

    case: str
    published: Published
    result: Result

    @property
    def live_bytes(self) -> list[float]:
        return _live_bytes(self.result)

    @property
    def final_bytes(self) -> float:
        return _final_bytes(self.result)

    def simulated(self, metric: str) -> float:
        r = self.result
        return {"bytes_sent": float(r.bytes_sent), "total_time_s": r.total_time_s, "downtime_s": r.downtime_s,
                "rounds": float(r.rounds)}[metric]

    def published_value(self, metric: str) -> float | None:
        p = self.published
        value = {"bytes_sent": p.total_bytes, "total_time_s": p.total_time_s, "downtime_s": p.downtime_s,
                 "rounds": p.live_rounds}[metric]
        return None if value is None else float(value)

    def error(self, metric: str) -> float | None:
        """Relative error (simulated / published - 1); for rounds the difference in rounds."""
        pub = self.published_value(metric)
        if pub is None:
            return None
        sim_value = self.simulated(metric)
        return sim_value - pub if metric == "rounds" else sim_value / pub - 1.0


def evaluate(mode: str = "expected", seed: int = 0) -> list[CaseResult]:
    """Simulate every published case with the fitted workloads."""
    out = []
    for case, pub in PUBLISHED.items():
        out.append(CaseResult(case, pub, simulate(scenario(case, mode=mode, seed=seed))))
    return out


def _mib(x: float) -> str:
    return f"{x / MiB:.1f}"


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == "bytes_sent":
        return f"{value / MiB:.1f} MB"
    if metric == "total_time_s":
        return f"{value:.1f} s"
    if metric == "downtime_s":
        return f"{value * 1000:.0f} ms"
    return f"{value:.0f}"


def _err(metric: str, err: float | None) -> str:
    if err is None:
        return "—"
    mark = "" if abs(err) <= TARGETS[metric] + 1e-9 else " **(missed)**"
    return (f"{err:+.0f} rounds" if metric == "rounds" else f"{err:+.1%}") + mark


def report_markdown(results: list[CaseResult], sampled: list[CaseResult] | None = None,
                    notes: str = "") -> str:
    """The comparison as Markdown: summary table, SPECweb99's rounds, notes."""
    lines = ["# Clark et al. (NSDI 2005) against miglab's `xen` rule", "",
             "Generated by `sim.clark.report_markdown` (see `sim/clark.py` for what is fitted on what).",
             "Targets: bytes and total time within 10 %, downtime within 25 %, rounds within one.", "",
             "| case | fitted on | metric | published | simulated | error |", "|---|---|---|---:|---:|---:|"]
    for cr in results:
        for metric in TARGETS:
            pub = cr.published_value(metric)
            if pub is None:
                continue
            lines.append(f"| {cr.case} | {cr.published.fitted_on or '—'} | {metric} | {_fmt(metric, pub)} | "
                         f"{_fmt(metric, cr.simulated(metric))} | {_err(metric, cr.error(metric))} |")
    by = {cr.case: cr for cr in results}
    sw = by.get("specweb99")
    if sw is not None:
        pub_rounds = list(sw.published.round_bytes)
        sim_rounds = sw.live_bytes
        samp = {cr.case: cr for cr in (sampled or [])}.get("specweb99")
        head = "| round | published MB | simulated MB | error |" + (" sampled (seed 0) MB |" if samp else "")
        lines += ["", "## SPECweb99, per round (rounds 1-2 are the fit)", "", head,
                  "|---:|---:|---:|---:|" + ("---:|" if samp else "")]
        samp_rounds = samp.live_bytes if samp else []
        for i in range(max(len(pub_rounds), len(sim_rounds))):
            p = pub_rounds[i] if i < len(pub_rounds) else None
            s = sim_rounds[i] if i < len(sim_rounds) else None
            e = f"{s / p - 1:+.1%}" if p and s else "—"
            row = f"| {i + 1} | {_mib(p) if p else '—'} | {_mib(s) if s is not None else '—'} | {e} |"
            if samp:
                row += f" {_mib(samp_rounds[i]) if i < len(samp_rounds) else '—'} |"
            lines.append(row)
        pf = sw.published.final_bytes
        sf = sw.final_bytes
        row = f"| final | {_mib(pf) if pf else '—'} | {_mib(sf)} | {sf / pf - 1:+.1%} |" if pf else ""
        if samp:
            row += f" {_mib(samp.final_bytes)} |"
        lines.append(row)
    if sampled:
        lines += ["", "## Page-exact sampled mode (seed 0)", "", "| case | metric | published | simulated | error |",
                  "|---|---|---:|---:|---:|"]
        for cr in sampled:
            if cr.case.startswith("stopcopy"):
                continue
            for metric in TARGETS:
                pub = cr.published_value(metric)
                if pub is None:
                    continue
                lines.append(f"| {cr.case} | {metric} | {_fmt(metric, pub)} | {_fmt(metric, cr.simulated(metric))} | "
                             f"{_err(metric, cr.error(metric))} |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def wire_speed_variant() -> list[CaseResult]:
    """The cases again with the final copy at Gigabit wire speed (``host.final_copy_rate_Bps``), resume refitted.

    The later xc_domain_save writes its last iteration through ``outbuf`` without
    ``ratewrite``; SPECweb99's published 18.2 MB final round in 210 ms needs ~90 MB/s,
    above the 500 Mbit/s cap. This variant shows what that reading does to each case.
    """
    rate = GBE_BPS * GBE_PAYLOAD_EFFICIENCY
    over = {"host.final_copy_rate_Bps": rate}
    quake = simulate(scenario("quake3", resume_s=0.0).replace(**over))
    pub = PUBLISHED["quake3"]
    assert pub.downtime_s is not None
    resume = round(pub.downtime_s - quake.downtime_s, 5)
    out = []
    for case in ("specweb99", "quake3", "mmuncher"):
        out.append(CaseResult(case, PUBLISHED[case], simulate(scenario(case, resume_s=resume).replace(**over))))
    return out


NOTES = """
## Why the misses

* **SPECweb99 downtime (+97 %).** The model's final round is 22.3 MB against the published 18.2 MB (+22 %),
  and it is copied at Xen's 500 Mbit/s maximum, as §5.3 says: 357 ms, plus the 58 ms fixed cost fitted on
  Quake 3. The paper's own numbers cannot come from a capped final copy: 18.2 MB in well under 210 ms needs
  about 90 MB/s, above 500 Mbit/s (65.5 MB/s). Copied at Gigabit wire speed instead (the variant below; the
  later xc_domain_save writes the last iteration through `outbuf`, bypassing `ratewrite`), SPECweb99's
  downtime is within target, but MMuncher's then falls short by about a third, while at the cap MMuncher is
  within target. No single pair (final rate, fixed cost) fits both published downtimes; the paper's two runs
  evidently did not copy their last rounds at the same rate.
* **SPECweb99 rounds (+5) and bytes (+10.8 %).** Xen stops SPECweb99 when a round sends more than the one
  before at the maximum rate: 15.3 MB after 14.2 MB in round 8, a 7.7 % rise. In the model the rounds decline
  smoothly onto a plateau of ~11 MB; a rise is then a matter of noise. Page-exact runs (sampled mode) see
  Poisson noise only, about ±1.5 % of a round, so the rise comes later (round 12 with seed 0); the
  expected-value mode stops at the median round at which that test fires (round 13). SPECweb99's real
  write pattern is burstier than Poisson, which is what stopped it at round 8. The extra rounds are what
  puts the bytes just over the target; the time is within it because the late rounds are short (about
  0.2 s each at 500 Mbit/s).
* **Rounds 3-6 (+24 to +49 %).** Fitted on rounds 1 and 2, the Zipf popularity keeps more warm pages than
  SPECweb99 had: its rounds shrink more slowly. A model with a third parameter would need a third published
  number to fit it on, and rounds 3+ are the test.
* **MMuncher in sampled mode (+31 % bytes).** MMuncher is a sweep (each of its pages written once per
  cycle). The sampled dirty source draws each window independently, so a sweep's windows overlap as if it
  were random writes: the skip map fills more slowly and more is sent. The expected-value mode (the fit)
  keeps the sweep. Prefer a trace or the expected mode for sweeping workloads.
* **Quake 3** is a calibration case (its workload is fitted on its bytes and final round, the fixed
  cost on its downtime); it checks only that a 64 MB guest with a small hot set ends on Xen's
  "fewer than 50 pages" test with the published 148 KB final round.
"""


def report(sampled_seed: int = 0) -> str:
    """The whole report (``results/clark2005/README.md``)."""
    expected = evaluate()
    sampled = evaluate("sampled", sampled_seed)
    text = report_markdown(expected, sampled, NOTES)
    wire = wire_speed_variant()
    lines = ["", "## Variant: the final copy at Gigabit wire speed (fixed cost refitted on Quake 3)", "",
             "| case | metric | published | simulated | error |", "|---|---|---:|---:|---:|"]
    for cr in wire:
        for metric in ("downtime_s",):
            pub = cr.published_value(metric)
            if pub is not None:
                lines.append(f"| {cr.case} | {metric} | {_fmt(metric, pub)} | {_fmt(metric, cr.simulated(metric))} | "
                             f"{_err(metric, cr.error(metric))} |")
    old = simulate(scenario("specweb99").replace(**{"strategy.stop_rule": "xen-ratio"}))
    sw = expected[0].result
    lines += ["", "## The same SPECweb99 workload under the earlier `xen` rule (now `xen-ratio`)", "",
              "| rule | rounds | bytes | total time | downtime |", "|---|---:|---:|---:|---:|",
              "| published | 8 | 960.0 MB | 71.0 s | 210 ms |",
              f"| `xen` (skip, adaptive rate, xc_domain_save's test) | {sw.rounds} | {_fmt('bytes_sent', sw.bytes_sent)} "
              f"| {_fmt('total_time_s', sw.total_time_s)} | {_fmt('downtime_s', sw.downtime_s)} |",
              f"| `xen-ratio` (no skip, link rate, dirtied >= sent) | {old.rounds} | {_fmt('bytes_sent', old.bytes_sent)} "
              f"| {_fmt('total_time_s', old.total_time_s)} | {_fmt('downtime_s', old.downtime_s)} |"]
    return text + "\n".join(lines) + "\n"


def write_scenarios(directory: str) -> list[str]:
    """Write each case's scenario as TOML into ``directory`` (the repository keeps them in examples/clark2005)."""
    from pathlib import Path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in PUBLISHED:
        path = out / f"{case}.toml"
        path.write_text(f"# Clark et al. (NSDI 2005), {case}: see sim/clark.py for the published numbers and the fit.\n"
                        + scenario(case).to_toml())
        paths.append(str(path))
    return paths
