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
  its defaults (100, +50, 500 Mbit/s).
* The last round (:func:`fit_last_round`, closed form, on the paper's own
  split of two downtimes, never on a simulated run). The paper splits each
  downtime into the copy of the last round and the start-up after it: Quake 3,
  148 KB copied in 20 ms, then 40 ms of start-up; SPECweb99, 18.2 MB copied in
  201 ms, then 9 ms. Xen 2.0 writes the last iteration through
  ``xcio_ratewrite`` like the live ones, at ``mbit_rate`` (500 Mbit/s by
  then), but that token bucket never caps its budget: whatever the writer did
  not use while it waited (the suspend above all) is sent at link speed
  first. So: ``host.switchover_s`` (fixed cost of the copy) is Quake 3's 20 ms
  less 148 KB at link speed; ``host.resume_s`` is Quake 3's 40 ms start-up;
  ``host.final_copy_burst_bytes`` (the banked budget) is what makes 18.2 MB
  take SPECweb99's 201 ms: 15.4 MiB at link speed, the rest at 500 Mbit/s.
  SPECweb99's downtime then tests the model's final round (and Quake 3's
  start-up for SPECweb99's 9 ms); MMuncher's downtime is a prediction of the
  whole mechanism.
* SPECweb99's workload: a Zipf page popularity (SPECweb99 requests its files
  with a Zipf distribution) whose exponent and write rate are fitted on the
  first two published rounds only (676.8 and 126.7 MB). Rounds 3-8, the final
  round, bytes, time, downtime and the round count are predictions.
* Quake 3's workload: a hot set (size, rate) fitted on its total bytes and its
  final round, the only two numbers REFERENCES.md has for it beside the
  downtime, which is already spent on the last-round constants. Quake 3 is
  therefore a calibration case, not a test.
* MMuncher's workload: a sweep over its 256 MB (``uniform:span=256MiB``)
  whose rate is fitted on the total bytes. Its downtime is the prediction.
* §4.2: nothing is fitted; it checks the stop-and-copy arithmetic.

:func:`fit_specweb99`, :func:`fit_quake3`, :func:`fit_mmuncher` and
:func:`fit_last_round` redo the fits (scipy); :data:`FITTED` holds their results,
which the scenarios use and ``tests/test_clark.py`` checks against a re-fit.
:func:`evaluate` simulates every case and compares; :func:`report_markdown`
writes the report (``results/clark2005/README.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    #: the paper's split of the downtime: the copy of the last round, then the start-up
    final_copy_s: float | None = None
    startup_s: float | None = None
    fitted_on: str = ""


PUBLISHED: dict[str, Published] = {
    "specweb99": Published(
        800 * MiB, total_bytes=960 * MiB, total_time_s=71.0, downtime_s=0.210, live_rounds=8,
        round_bytes=tuple(x * MiB for x in (676.8, 126.7, 39.0, 28.4, 24.2, 16.7, 14.2, 15.3)),
        final_bytes=18.2 * MiB, final_copy_s=0.201, startup_s=0.009,
        fitted_on="workload: rounds 1-2; burst: final 18.2 MB in 201 ms"),
    "quake3": Published(64 * MiB, total_bytes=88 * MiB, downtime_s=0.060, final_bytes=148 * KiB,
                        final_copy_s=0.020, startup_s=0.040,
                        fitted_on="workload: total bytes and final round; last round: 20 + 40 ms"),
    "mmuncher": Published(512 * MiB, total_bytes=638 * MiB, downtime_s=3.5, fitted_on="workload: total bytes"),
    "stopcopy-128": Published(512 * MiB, total_bytes=512 * MiB, total_time_s=32.0, downtime_s=32.0),
    "stopcopy-256": Published(512 * MiB, total_bytes=512 * MiB, total_time_s=16.0, downtime_s=16.0),
    "stopcopy-512": Published(512 * MiB, total_bytes=512 * MiB, total_time_s=8.0, downtime_s=8.0),
}

#: Results of the fits (see the module docstring); ``tests/test_clark.py`` re-fits and compares.
FITTED: dict[str, Any] = {
    "switchover_s": 0.01871,
    "resume_s": 0.040,
    "final_copy_burst_bytes": 16108000,
    "specweb99": "zipf:s=2.7687,rate=5.977e+10",
    "quake3": "hotcold:hot=9.62MiB,rate=2761,hot_share=1.0",
    "mmuncher": "uniform:rate=4.24e+04,span=256MiB",
}


def xen_host(last_round: dict[str, float] | None = None) -> dict[str, Any]:
    """The host and link of the paper's testbed, as scenario overrides (``last_round``: other constants)."""
    lr = {k: FITTED[k] for k in LAST_ROUND_KEYS} if last_round is None else last_round
    return {"link.bandwidth_Bps": GBE_BPS, "host.throughput_efficiency": GBE_PAYLOAD_EFFICIENCY,
            **{f"host.{k}": (int(v) if k == "final_copy_burst_bytes" else v) for k, v in lr.items()}}


#: The host constants of Xen's last round (see :func:`fit_last_round`).
LAST_ROUND_KEYS = ("switchover_s", "resume_s", "final_copy_burst_bytes")


def scenario(case: str, spec: str | None = None, *, last_round: dict[str, float] | None = None,
             mode: str = "expected", seed: int = 0) -> Scenario:
    """The scenario of one published case (``spec`` overrides the fitted workload)."""
    pub = PUBLISHED[case]
    if case.startswith("stopcopy-"):
        mbit = int(case.split("-")[1])
        return Scenario(name=f"clark2005-{case}").replace(**{
            "workload.spec": "idle", "workload.memory_bytes": pub.memory_bytes, "workload.zero_page_fraction": 0.0,
            "link.bandwidth_Bps": mbit * XEN_MBIT_BPS, "strategy.kind": "stopcopy"})
    return Scenario(name=f"clark2005-{case}", seed=seed).replace(**{
        **xen_host(last_round),
        "workload.spec": spec or FITTED[case], "workload.memory_bytes": pub.memory_bytes,
        "workload.zero_page_fraction": 0.0, "workload.mode": mode,
        "workload.write_dispersion": round(specweb99_write_dispersion(), 2) if case == "specweb99" else 1.0,
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
    total = pub.total_bytes

    def excess(log_rate: float) -> float:
        r = simulate(scenario("mmuncher", f"uniform:rate={math.exp(log_rate):.6g},span=256MiB"))
        return math.log(r.bytes_sent / total)

    rate = math.exp(brentq(excess, math.log(8000), math.log(200000), xtol=1e-4))
    return f"uniform:rate={rate:.3g},span=256MiB"


def fit_last_round() -> dict[str, float]:
    """Xen's last-round host constants from the paper's split of two downtimes (closed form).

    Quake 3's final round (148 KB) fits within any banked budget, so it goes at
    the link's payload rate: its 20 ms copy less that transfer is the fixed
    cost ``switchover_s``, its 40 ms start-up is ``resume_s``. SPECweb99's
    18.2 MB took 201 ms: after ``switchover_s``, ``C`` bytes at the link's rate
    and the rest at 500 Mbit/s (``mbit_rate`` at the maximum, where its rate
    test stopped it) solve for the banked budget ``C``.
    """
    q, w = PUBLISHED["quake3"], PUBLISHED["specweb99"]
    assert q.final_copy_s and q.startup_s is not None and q.final_bytes and w.final_copy_s and w.final_bytes
    link_Bps = GBE_BPS * GBE_PAYLOAD_EFFICIENCY
    cap_Bps = 500 * XEN_MBIT_BPS
    switchover_s = q.final_copy_s - q.final_bytes / link_Bps
    burst = (w.final_bytes / cap_Bps - (w.final_copy_s - switchover_s)) / (1 / cap_Bps - 1 / link_Bps)
    return {"switchover_s": round(switchover_s, 5), "resume_s": q.startup_s,
            "final_copy_burst_bytes": float(round(burst, -3))}


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
        for i in range(max(len(pub_rounds), len(sim_rounds), len(samp.live_bytes) if samp else 0)):
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


def last_round_variants() -> dict[str, list[CaseResult]]:
    """The downtimes under three readings of Xen's last round, each with the same fixed costs.

    ``capped``: at 500 Mbit/s throughout (§5.3's "maximum allowable rate", no
    banked budget); ``link``: at the link's payload rate (no limiter, as Xen
    4.x has none); ``banked``: the model (the budget ``xcio_ratewrite`` banked
    goes first at link speed, then 500 Mbit/s).
    """
    fixed = {k: FITTED[k] for k in ("switchover_s", "resume_s")}
    variants = {"capped": ({**fixed, "final_copy_burst_bytes": 0}, {}),
                "link": ({**fixed, "final_copy_burst_bytes": 0},
                         {"host.final_copy_rate_Bps": GBE_BPS * GBE_PAYLOAD_EFFICIENCY}),
                "banked": (None, {})}
    out: dict[str, list[CaseResult]] = {}
    for name, (last_round, over) in variants.items():
        out[name] = [CaseResult(case, PUBLISHED[case],
                                simulate(scenario(case, last_round=last_round).replace(**over)))
                     for case in ("specweb99", "quake3", "mmuncher")]
    return out


#: SPECweb99's file set: (share of requests, file sizes in bytes) per class; 9 sizes a class, taken
#: here as equally likely (the benchmark weights them unequally within a class).
SPECWEB99_CLASSES = ((0.35, [102.4 * i for i in range(1, 10)]), (0.50, [1024.0 * i for i in range(1, 10)]),
                     (0.14, [10240.0 * i for i in range(1, 10)]), (0.01, [102400.0 * i for i in range(1, 10)]))


def specweb99_write_dispersion(page_size: int = 4096) -> float:
    """Variance over mean of the pages dirtied, if each request dirties its file's pages at once.

    Writes in clusters of ``k`` pages (a compound Poisson count) have variance
    ``E[k^2] / E[k]`` times their mean; independent pages have 1.
    """
    ek = ek2 = 0.0
    for share, sizes in SPECWEB99_CLASSES:
        for size in sizes:
            k = math.ceil(size / page_size)
            ek += share / len(sizes) * k
            ek2 += share / len(sizes) * k * k
    return ek2 / ek


@dataclass(frozen=True)
class MedianStop:
    """Where the expected-value rule's median stop would fall with writes ``dispersion`` x as variable."""

    dispersion: float
    rounds: int
    bytes_sent: float
    total_time_s: float
    downtime_s: float


def median_stop(cr: CaseResult, dispersion: float) -> MedianStop:
    """Re-apply the rate test's median rule to a run's own rounds with overdispersed counts.

    The rounds before the stop do not depend on the test, so one run's table
    serves every dispersion at or above its own (``workload.write_dispersion``). The final round is that
    round's pending pages, copied with the run's last-round constants.
    """
    r = cr.result
    sc = r.scenario
    t = r.rounds_table
    live = t[t["phase"] == "precopy"]
    cap = sc.strategy.xen_max_rate_Bps
    link = sc.link.bandwidth_Bps * sc.host.throughput_efficiency
    not_fired, last = 1.0, math.inf
    stop = len(live) - 1
    pages, wire, seconds = (live[c].to_numpy(dtype=float) for c in ("pages", "bytes", "duration_s"))
    for i in range(len(live)):
        sent = float(pages[i])
        at_max = wire[i] / seconds[i] >= cap * (1 - 1e-9)
        if at_max and math.isfinite(last):
            z = (sent - last) / math.sqrt(dispersion * (sent + last))
            not_fired *= 1.0 - 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
            if not_fired <= 0.5:
                stop = i
                break
        last = sent
    chosen = live.iloc[: stop + 1]
    final = float(chosen["pending_pages_after"].iloc[-1]) * sc.workload.page_size_bytes
    burst = min(final, float(sc.host.final_copy_burst_bytes))
    downtime = sc.host.switchover_s + sc.host.resume_s + burst / link + (final - burst) / cap
    end = float(chosen["t_start_s"].iloc[-1] + chosen["duration_s"].iloc[-1])
    return MedianStop(dispersion, stop + 1, float(chosen["bytes"].sum()) + final, end + downtime, downtime)


NOTES = """
## Which published numbers fit, which judge

| published number | used for |
|---|---|
| SPECweb99 rounds 1-2 (676.8, 126.7 MB) | fit: the Zipf workload (exponent, rate) |
| SPECweb99 final copy (18.2 MB in 201 ms) | fit: `final_copy_burst_bytes` (closed form on the published numbers) |
| Quake 3 final copy (148 KB in 20 ms) and start-up (40 ms) | fit: `switchover_s`, `resume_s` |
| Quake 3 total (88 MB) and final round (148 KB) | fit: its hot set (size, rate) |
| MMuncher total (638 MB) | fit: its sweep rate |
| SPECweb99 rounds 3-8, round count, total bytes, total time, downtime (and its 9 ms start-up) | judge |
| MMuncher downtime (3.5 s) | judge |
| Quake 3 downtime (60 ms) | neither: it is the sum of its two fitted parts |
| §4.2 stop-and-copy times | judge (nothing fitted) |

Not fitted on anything published: `workload.write_dispersion` of SPECweb99 (from the benchmark's file mix),
Xen's rate limits and stop test (its source), the link (Gigabit Ethernet, TCP payload at MTU 1500).

## What the model misses, and why

Sources: Xen 2.0's `tools/libxc/xc_linux_save.c` (`xc_linux_save`, `xcio_ratewrite`, `print_stats`; the
code the paper measured) and its Xen 3.0 successor (same loop, `ratewrite`); the paper's §5.3, §5.4 and its
per-case text (the split of each downtime into the last round's copy and the start-up after it: SPECweb99
"201 ms" + "9 ms", Quake 3 "20 ms" + "40 ms"; /work/shared/REFERENCES.md lists only the totals).

* **The last round (downtime).** Xen 2.0 writes the last iteration through `xcio_ratewrite`, the same token
  bucket as the live rounds, at `mbit_rate` (500 Mbit/s once the rate test has fired). It is not lifted
  (only Xen 4.x, which has no limiter at all, sends at link speed). But the bucket's budget is never
  capped: `budget += BURST_BUDGET` for every slot elapsed since `last_put`, so all the time the writer
  spent waiting (the suspend request and the polling in `suspend_and_state` above all) is sent first at
  link speed. That is why SPECweb99's 18.2 MB took 201 ms (90 MB/s, above the cap) while MMuncher's final
  round (at most its 256 MB) took most of 3.5 s (at most 73 MB/s): a banked budget, then the cap. The
  model now has it (`host.final_copy_burst_bytes`, fitted in closed form on SPECweb99's published copy;
  the fixed costs on Quake 3's, see the module docstring). MMuncher's downtime, which no fit has seen,
  is within target (+13 %; it was +16.5 % capped throughout and -34 % at link speed, table below).
  SPECweb99's downtime still misses (+49 %, was +97 %), and now for reasons outside the last-round
  mechanics: the model's final round is 22.6 MB against 18.2 MB (+24 %; at the published 18.2 MB the
  same constants give 241 ms, +15 %), and the start-up is Quake 3's 40 ms where SPECweb99 had 9 ms.
  The paper's two start-ups differ by 31 ms; one host constant cannot carry both.
* **SPECweb99 rounds (+2; bytes now within target).** Xen stops SPECweb99 when a round sends more than
  the one before at the maximum rate: 15.3 MB after 14.2 MB in round 8, a 7.7 % rise. In the model the
  rounds decline smoothly onto a plateau of ~11 MB; a rise is then a matter of noise, and the
  expected-value mode stops at the median round at which that test fires. With independent pages
  (Poisson counts, ±1.5 % of a round) that is round 13 (+5 rounds, +10.8 % bytes, the previous model;
  page-exact runs stop at round 12 with seed 0). A 7.7 % rise at ~3,700 pages is a 3-sigma Poisson
  event: SPECweb99's writes are burstier than independent pages. A request writes its file's pages at
  once (a page-cache fill or a response buffer), so the counts vary E[k²]/E[k] = 54 times more than
  Poisson over SPECweb99's file mix (35/50/14/1 % of requests for 0.1-0.9, 1-9, 10-90 and 100-900 KB
  files, sizes within a class taken as equally likely). That number comes from the benchmark's
  definition, not from any published round. The median stop is then round 10: bytes +7.3 % (met), time
  +2.7 % (met), rounds +2 (missed by one). The paper's run stopped on one draw of a coin toss the model
  can only give the median of; the table "write burstiness" shows how the stop moves with the
  dispersion. The page-exact modes still draw independent pages (they ignore `write_dispersion`).
* **Rounds 3-6 (+24 to +49 %) and the final round (+24 %).** Fitted on rounds 1 and 2, the Zipf popularity
  keeps more warm pages than SPECweb99 had: its rounds shrink more slowly, and its hottest pages dirty
  22.3 MB in the last 0.18 s round where SPECweb99 dirtied 18.2 MB in its last (~0.25 s). A model with a
  third parameter would need a third published number to fit it on, and rounds 3+ are the test.
* **How the paper counts.** Fig. 9's 8 bars are the live iterations (`iter` 1-8 in the code); the final
  copy is the code's 9th iteration. miglab's `rounds` counts the live ones, as the paper does. The
  50-page test is `sent_this_iter + skip_this_iter < 50`: it counts the skipped pages too, so a hot set
  that is skipped every round never satisfies it (SPECweb99, MMuncher), only a tiny one does (Quake 3).
* **MMuncher in sampled mode (+31 % bytes).** MMuncher is a sweep (each of its pages written once per
  cycle). The sampled dirty source draws each window independently, so a sweep's windows overlap as if it
  were random writes: the skip map fills more slowly and more is sent. The expected-value mode (the fit)
  keeps the sweep. Prefer a trace or the expected mode for sweeping workloads.
* **Quake 3** is a calibration case (its workload is fitted on its bytes and final round, the last-round
  constants on its 20 ms copy and 40 ms start-up); it checks only that a 64 MB guest with a small hot
  set ends on Xen's "fewer than 50 pages" test with the published 148 KB final round.
"""


def report(sampled_seed: int = 0) -> str:
    """The whole report (``results/clark2005/README.md``)."""
    expected = evaluate()
    sampled = evaluate("sampled", sampled_seed)
    text = report_markdown(expected, sampled, NOTES)
    variants = last_round_variants()
    lines = ["", "## Xen's last round: three readings, the same fixed costs (downtime)", "",
             "| case | published | capped at 500 Mbit/s | link speed | banked budget, then 500 Mbit/s (model) |",
             "|---|---:|---:|---:|---:|"]
    for i, case in enumerate(("specweb99", "quake3", "mmuncher")):
        published_s = PUBLISHED[case].downtime_s
        cells = [f"{_fmt('downtime_s', v[i].simulated('downtime_s'))} ({_err('downtime_s', v[i].error('downtime_s'))})"
                 for v in (variants["capped"], variants["link"], variants["banked"])]
        lines.append(f"| {case} | {_fmt('downtime_s', published_s)} | " + " | ".join(cells) + " |")
    pub = PUBLISHED["specweb99"]
    lines += ["", "## SPECweb99's write burstiness (`workload.write_dispersion`)", "",
              "Variance over mean of the pages a round's writes dirty: 1 for independent pages, "
              f"{specweb99_write_dispersion():.1f} if each",
              "request dirties its file's pages at once (SPECweb99's file mix, `specweb99_write_dispersion`; the model).",
              "Same workload otherwise: only where the rate test's median stop falls moves.", "",
              "| variance / mean | rounds | bytes | total time | downtime |", "|---:|---:|---:|---:|---:|",
              f"| published | {pub.live_rounds} | {_fmt('bytes_sent', pub.total_bytes)} | "
              f"{_fmt('total_time_s', pub.total_time_s)} | {_fmt('downtime_s', pub.downtime_s)} |"]
    for disp in (1.0, expected[0].result.scenario.workload.write_dispersion, 200.0):
        cr = CaseResult("specweb99", pub, simulate(scenario("specweb99").replace(**{"workload.write_dispersion": disp})))
        lines.append(f"| {disp:g} | {cr.result.rounds} ({_err('rounds', cr.error('rounds'))}) | "
                     f"{_fmt('bytes_sent', cr.result.bytes_sent)} ({_err('bytes_sent', cr.error('bytes_sent'))}) | "
                     f"{_fmt('total_time_s', cr.result.total_time_s)} ({_err('total_time_s', cr.error('total_time_s'))}) | "
                     f"{_fmt('downtime_s', cr.result.downtime_s)} ({_err('downtime_s', cr.error('downtime_s'))}) |")
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
