"""Fit the host constants to measured migrations, and judge them on runs they never saw.

The simulator's :class:`~sim.scenario.Host` (and the link's per-page header)
hold the constants that a trace cannot tell: what a switchover costs, how much
of the link the migration stream really gets, what each page costs the
sender, and how much the guest slows while it is being migrated (TCG). This
module fits them by minimising the prediction error of :func:`sim.simulate`
against measured runs.

Pure computation (``sim`` never imports ``harness``): a measured run comes in
as an :class:`Observation` -- the scenario the simulator should replay (its
workload the run's trace) and the measured metrics, named like
:meth:`sim.result.Result.summary` -- and the harness builds those from its
RunRecords (:mod:`harness.validate`).

How:

* ``link.header_bytes_per_page`` and ``host.setup_s`` are read off the training
  runs directly: QEMU's ``ram.transferred`` is normal pages x (page + header) +
  zero pages x (1 + header) (+ a little stream framing), and ``setup-time`` is
  measured. Medians over the training runs.
* ``host.dirty_rate_factor`` is the workload's own rate while pre-copy ran
  over its rate before (median; the guest prints its rate every second).
* ``host.throughput_efficiency`` and ``host.page_send_cost_s`` are fit with
  Nelder-Mead (:func:`scipy.optimize.minimize`) on the pre-copy runs,
  minimising a robust (Cauchy, scale 10 %) loss of the log-ratio errors of
  total time and bytes; then ``host.switchover_s`` alone on their downtime error
  relative to max(measured, 20 ms);
  ``host.postcopy_queue_bytes`` -- how much push data a page request waits
  behind in socket and link buffers, which sets the fault stall -- is then
  fit alone on the post-copy and hybrid runs (post-copy requests at half
  weight, plus time, bytes, downtime). Staging keeps a model gap of one
  strategy from dragging the constants another strategy depends on.
  ``host.postcopy_switch_s`` (the post-copy switchover's fixed cost) is fit
  last, alone, on the downtime of the post-copy and hybrid runs. Each
  scenario is simulated once per evaluation (repetitions share it), so a fit costs a few hundred
  simulations of a few milliseconds each.
* Splits are by scenario (:func:`assign_folds`): repetitions of one scenario
  are never split between training and judging, so a constant is never tuned
  on the scenario that judges it. :func:`cross_validate` gives every run a
  held-out prediction (k folds by scenario, or -- ``blocks`` -- leaving one
  block such as a workload out: its constants saw no run of that workload);
  :func:`train_heldout` is the simple split.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine import simulate
from .errors import ConfigError
from .scenario import Scenario

log = logging.getLogger(__name__)

#: The measured metrics compared, with the simulator's names (post-copy requests are the sim's faults).
METRICS: tuple[str, ...] = ("total_time_s", "downtime_s", "bytes_sent", "dirty_sync_count", "postcopy_requests")
#: Constants fit by the optimiser (dotted scenario paths).
FIT_PARAMS: tuple[str, ...] = ("host.switchover_s", "host.throughput_efficiency", "host.page_send_cost_s",
                               "host.postcopy_queue_bytes", "host.postcopy_switch_s")
#: Constants read off the training runs directly.
DIRECT_PARAMS: tuple[str, ...] = ("link.header_bytes_per_page", "host.setup_s", "host.dirty_rate_factor")
DOWNTIME_FLOOR_S = 0.020
REQUESTS_FLOOR = 10.0
QUEUE_REF_BYTES = 256 * 1024
DEFAULT_MAXFEV = 160
_INT_FIELDS = ("link.header_bytes_per_page", "host.postcopy_queue_bytes")


@dataclass(frozen=True)
class Observation:
    """One measured run in the simulator's terms.

    ``group`` is the unit of splitting (the scenario's name: its repetitions
    share it). ``scenario`` is what :func:`sim.simulate` replays, with the
    host constants left at their defaults (the fit sets them). ``measured``
    maps :data:`METRICS` (and ``setup_time_s``, ``normal_pages``,
    ``duplicate_pages``, ``normal_bytes``) to numbers; a metric QEMU did not
    report is absent. ``hints`` may carry ``rate_ratio`` (the workload's rate
    while migrating over its rate before) to start the optimiser.
    """

    run_id: str
    group: str
    scenario: Scenario
    measured: dict[str, float]
    completed: bool = True
    xbzrle: bool = False
    hints: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HostFit:
    """Constants fit on ``train_groups`` (dotted paths -> value) and how well they fit there."""

    constants: dict[str, float]
    train_groups: tuple[str, ...]
    n_train_runs: int
    loss: float
    evaluations: int
    start: dict[str, float] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``host.json`` shape that ``--host`` reads (``constants``, plus the fit's provenance)."""
        return {"constants": host_json_constants(self.constants),
                "fit": {"train_scenarios": list(self.train_groups), "train_runs": self.n_train_runs,
                        "loss": self.loss, "evaluations": self.evaluations,
                        "start": host_json_constants(self.start)}}


def host_json_constants(constants: dict[str, float]) -> dict[str, Any]:
    """Dotted constants as ``host.json`` keys (``host.`` dropped; ``link.`` kept), ints where the field is int."""
    out: dict[str, Any] = {}
    for k, v in constants.items():
        key = k[len("host."):] if k.startswith("host.") else k
        out[key] = int(round(v)) if k in _INT_FIELDS else float(v)
    return out


# --------------------------------------------------------------------------- prediction
def predict(scenario: Scenario, constants: dict[str, float] | None = None) -> dict[str, float]:
    """Simulate ``scenario`` with ``constants`` applied; return the compared metrics."""
    sc = scenario.replace(**_coerced(constants)) if constants else scenario
    r = simulate(sc)
    return {"total_time_s": float(r.total_time_s), "downtime_s": float(r.downtime_s),
            "bytes_sent": float(r.bytes_sent), "dirty_sync_count": float(r.dirty_sync_count),
            "postcopy_requests": float(r.postcopy_faults), "converged": float(r.converged),
            "rounds": float(r.rounds), "expected_downtime_s": float(r.expected_downtime_s)}


def _coerced(constants: dict[str, float]) -> dict[str, Any]:
    return {k: int(round(v)) if k in _INT_FIELDS else float(v) for k, v in constants.items()}


# --------------------------------------------------------------------------- splits
def _hash(group: str) -> str:
    return hashlib.sha256(group.encode()).hexdigest()


def assign_folds(groups: Iterable[str], folds: int) -> dict[str, int]:
    """Deterministic, balanced folds: groups sorted by their sha256, dealt round-robin."""
    if folds < 2:
        raise ConfigError(f"need at least 2 folds, not {folds}")
    uniq = sorted(set(groups), key=_hash)
    return {g: i % folds for i, g in enumerate(uniq)}


def train_heldout(groups: Iterable[str], heldout_every: int = 3) -> tuple[set[str], set[str]]:
    """The simple split: every ``heldout_every``-th group (by hash order) is held out, the rest trains."""
    f = assign_folds(groups, heldout_every)
    return {g for g, k in f.items() if k != 0}, {g for g, k in f.items() if k == 0}


# --------------------------------------------------------------------------- fitting
def direct_estimates(observations: Sequence[Observation]) -> dict[str, float]:
    """Header bytes per page and setup time, read off the runs (medians)."""
    headers, setups = [], []
    for o in observations:
        m = o.measured
        pages = m.get("normal_pages", 0) + m.get("duplicate_pages", 0)
        if not o.xbzrle and pages > 0 and "normal_bytes" in m and "bytes_sent" in m:
            headers.append((m["bytes_sent"] - m["normal_bytes"] - m.get("duplicate_pages", 0)) / pages)
        if m.get("setup_time_s") is not None and math.isfinite(m.get("setup_time_s", math.nan)):
            setups.append(m["setup_time_s"])
    out = {}
    if headers:
        out["link.header_bytes_per_page"] = float(max(0.0, round(float(np.median(headers)))))
    if setups:
        out["host.setup_s"] = float(max(0.0, np.median(setups)))
    return out


#: Scale of the Cauchy loss: errors well beyond 10 % count little more than 10 % errors.
LOSS_SCALE = 0.1


def _robust(e: float) -> float:
    """Cauchy loss c^2 log(1 + (e/c)^2): its influence falls off beyond c, so a few scenarios whose
    workload the trace misrepresents (a model gap, not a host property) cannot drag the host constants."""
    return LOSS_SCALE * LOSS_SCALE * math.log1p((e / LOSS_SCALE) ** 2)


def run_errors(pred: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """The dimensionless errors the fit minimises (log ratios; downtime against max(measured, 20 ms))."""
    e: dict[str, float] = {}
    converged = pred.get("converged", 1.0) >= 0.5
    for k in ("total_time_s", "bytes_sent"):
        m = measured.get(k)
        if m is None or not m > 0:
            continue
        p = pred.get(k, math.nan)
        e[k] = math.log(p / m) if converged and p > 0 and math.isfinite(p) else 2.0
    m = measured.get("downtime_s")
    if m is not None and math.isfinite(m):
        p = pred.get("downtime_s", math.nan)
        e["downtime_s"] = (p - m) / max(m, DOWNTIME_FLOOR_S) if converged and math.isfinite(p) else 2.0
        e["downtime_s"] = max(-5.0, min(5.0, e["downtime_s"]))
    m = measured.get("postcopy_requests")
    if m is not None and (m > 0 or pred.get("postcopy_requests", 0) > 0):
        # Half weight: requests also depend on how the guest touches pages, which no host constant models.
        p = pred.get("postcopy_requests", 0.0)
        e["postcopy_requests"] = 0.5 * math.log((p + REQUESTS_FLOOR) / (m + REQUESTS_FLOOR))
    return e


def _unique_scenarios(obs: Sequence[Observation]) -> tuple[list[Scenario], list[int]]:
    keys: dict[str, int] = {}
    scs: list[Scenario] = []
    idx = []
    for o in obs:
        k = o.scenario.to_json()
        if k not in keys:
            keys[k] = len(scs)
            scs.append(o.scenario)
        idx.append(keys[k])
    return scs, idx


def _params_from_x(x: np.ndarray) -> dict[str, float]:
    return {"host.throughput_efficiency": float(min(max(math.exp(x[0]), 0.05), 1.5)),
            "host.page_send_cost_s": float(min(max(x[1], 0.0), 1000.0) * 1e-6)}


def _x_from_params(p: dict[str, float]) -> np.ndarray:
    return np.array([math.log(p["host.throughput_efficiency"]), p["host.page_send_cost_s"] * 1e6])


def start_values(observations: Sequence[Observation]) -> dict[str, float]:
    """Starting point: achieved stream rate over link rate, no per-page cost, 20 ms switchover."""
    eff = []
    for o in observations:
        m = o.measured
        if o.completed and not o.xbzrle and m.get("total_time_s", 0) > 0 and m.get("bytes_sent", 0) > 0:
            eff.append(m["bytes_sent"] / m["total_time_s"] / o.scenario.link.bandwidth_Bps)
    return {"host.switchover_s": 0.02,
            "host.throughput_efficiency": float(min(max(np.median(eff), 0.1), 1.2)) if eff else 0.9,
            "host.page_send_cost_s": 0.0}


def slowdown_estimate(observations: Sequence[Observation]) -> float | None:
    """The guest's dirty-rate factor while pre-copy runs: median (rate during) / (rate before) of the runs."""
    r = [o.hints["rate_ratio"] for o in observations
         if o.completed and o.scenario.strategy.kind == "precopy" and math.isfinite(o.hints.get("rate_ratio", math.nan))
         and o.hints["rate_ratio"] > 0]
    return float(min(max(np.median(r), 0.05), 2.0)) if r else None


def _loss(obs: Sequence[Observation], scs: list[Scenario], idx: list[int], params: dict[str, float],
          metrics: Sequence[str] | None = None) -> float:
    preds = [predict(s, params) for s in scs]
    total = 0.0
    for o, i in zip(obs, idx, strict=True):
        total += sum(_robust(e) for k, e in run_errors(preds[i], o.measured).items()
                     if metrics is None or k in metrics)
    return total / max(len(obs), 1)


class _Evaluations:
    """Counts simulator evaluations across the fit's stages; reports the rate stage's to ``on_eval``."""

    def __init__(self, on_eval: Callable[[int, float], None] | None = None) -> None:
        self.n = 0
        self.on_eval = on_eval

    def count(self, value: float | None = None) -> None:
        self.n += 1
        if value is not None and self.on_eval is not None:
            self.on_eval(self.n, value)


def _start_point(train: Sequence[Observation]) -> tuple[dict[str, float], dict[str, float]]:
    """Stage 1: the directly read constants, and the starting point of every later stage."""
    direct = direct_estimates(train)
    slow = slowdown_estimate(train)
    if slow is not None:
        direct["host.dirty_rate_factor"] = slow
    start = {**start_values(train), **direct, "host.postcopy_queue_bytes": float(QUEUE_REF_BYTES),
             "host.postcopy_switch_s": 0.0}
    return direct, start


def _prepared(obs: Sequence[Observation], direct: dict[str, float]) -> tuple[list[Scenario], list[int]]:
    """The distinct scenarios of ``obs`` with the direct constants applied, and each run's index into them."""
    return _unique_scenarios([Observation(o.run_id, o.group, o.scenario.replace(**_coerced(direct)), o.measured)
                              for o in obs])


def _fit_rate_constants(pre: Sequence[Observation], scs: list[Scenario], idx: list[int], start: dict[str, float],
                        maxfev: int, evals: _Evaluations) -> dict[str, float]:
    """Stage 2: link efficiency and per-page cost by Nelder-Mead on total time and bytes."""
    from scipy.optimize import minimize

    rate_metrics = ("total_time_s", "bytes_sent")

    def loss(x: np.ndarray) -> float:
        value = _loss(pre, scs, idx, {**_params_from_x(x), "host.switchover_s": start["host.switchover_s"]},
                      rate_metrics)
        evals.count(value)
        return value

    x = _x_from_params(start)
    steps = np.array([0.15, 2.0])
    res = None
    # Restarts with a fresh simplex: the loss has flat steps (whole rounds), where a simplex can collapse early.
    for scale in (1.0, 0.3, 0.1):
        simplex = np.vstack([x] + [x + np.eye(len(steps))[i] * steps[i] * scale for i in range(len(steps))])
        r = minimize(loss, x, method="Nelder-Mead",
                     options={"maxfev": maxfev // 3, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-6})
        if res is None or r.fun <= res.fun:
            res, x = r, r.x
    assert res is not None
    return _params_from_x(res.x)


def _fit_fixed_cost(key: str, obs: Sequence[Observation], scs: list[Scenario], idx: list[int],
                    constants: dict[str, float], upper_s: float, xatol_s: float, maxiter: int,
                    evals: _Evaluations) -> float:
    """Stages 3 and 5: a switchover's fixed cost, alone, on downtime; 0 unless it beats no cost at all."""
    from scipy.optimize import minimize_scalar

    def dloss(cost_s: float) -> float:
        evals.count()
        return _loss(obs, scs, idx, {**constants, key: cost_s}, ("downtime_s",))

    r = minimize_scalar(dloss, bounds=(0.0, upper_s), method="bounded",
                        options={"xatol": xatol_s, "maxiter": maxiter})
    return float(r.x) if r.fun <= dloss(0.0) else 0.0


def _fit_queue_bytes(post: Sequence[Observation], scs: list[Scenario], idx: list[int],
                     constants: dict[str, float], evals: _Evaluations) -> float:
    """Stage 4: the post-copy request queue (bytes), on a log scale around ``QUEUE_REF_BYTES``, all metrics."""
    from scipy.optimize import minimize_scalar

    def qloss(lq: float) -> float:
        evals.count()
        return _loss(post, scs, idx, {**constants, "host.postcopy_queue_bytes": math.exp(lq) * QUEUE_REF_BYTES})

    q = minimize_scalar(qloss, bounds=(math.log(1 / 64), math.log(256)), method="bounded",
                        options={"xatol": 0.05, "maxiter": 30})
    return float(round(math.exp(q.x) * QUEUE_REF_BYTES))


#: Host constants that grow with guest size, and the mechanism each one names (issue 9). Fit only when the
#: training runs span two or more guest sizes; otherwise left at 0 (not modelled), so one-size fits are as before.
SIZE_PARAMS: dict[str, str] = {
    "host.zero_page_cost_s": "QEMU reads every page it elides as zero (buffer_is_zero): seconds per zero page",
    "host.sync_s_per_GiB": "each dirty-bitmap sync walks the whole guest's bitmap (migration_bitmap_sync)",
    "host.setup_s_per_GiB": "ram_save_setup allocates and fills the per-GiB bitmaps before the first page",
}


def setup_by_size(observations: Sequence[Observation]) -> dict[str, float]:
    """``setup_time_s = setup_s + setup_s_per_GiB x GiB``: least squares over runs at >= 2 sizes (slope >= 0)."""
    pts = [(memory_of(o) / 2**30, o.measured["setup_time_s"]) for o in observations
           if math.isfinite(o.measured.get("setup_time_s", math.nan))]
    if len({x for x, _ in pts}) < 2:
        return {}
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope = max(0.0, float(np.polyfit(x, y, 1)[0]))
    return {"host.setup_s": float(max(0.0, np.median(y - slope * x))), "host.setup_s_per_GiB": slope}


def zero_cost_estimate(observations: Sequence[Observation]) -> float | None:
    """Seconds per zero page from completed pre-copy runs: ``time = a x bytes / link rate + c x zero pages``.

    Non-negative least squares over the runs (no intercept); ``c`` is the cost, ``1 / a`` the link
    efficiency it was separated from. None when the runs' zero-page counts do not vary enough to tell
    the two apart (a one-size campaign)."""
    from scipy.optimize import nnls

    rows, y = [], []
    for o in observations:
        m = o.measured
        if o.completed and not o.xbzrle and m.get("total_time_s", 0) > 0 and "duplicate_pages" in m:
            rows.append([m.get("bytes_sent", 0.0) / o.scenario.link.bandwidth_Bps, m["duplicate_pages"]])
            y.append(m["total_time_s"] - m.get("setup_time_s", 0.0))
    if len(rows) < 2:
        return None
    a = np.array(rows)
    if np.ptp(a[:, 1]) < 0.1 * max(float(a[:, 1].max()), 1.0):
        return None
    scale = np.array([1.0, 1e-6])
    x, _ = nnls(a * scale, np.array(y))  # zero pages in millions: both coefficients of order one
    return float(x[1] * 1e-6)


def _fit_size_costs(train: Sequence[Observation], pre: Sequence[Observation], direct: dict[str, float],
                    constants: dict[str, float], evals: _Evaluations) -> dict[str, float]:
    """Stage 3b (runs at several sizes): setup per GiB read off; zero-page cost, then sync per GiB, each alone."""
    from scipy.optimize import minimize_scalar

    out = setup_by_size(train)
    zc = zero_cost_estimate(pre)
    if zc is not None:
        out["host.zero_page_cost_s"] = zc
    scs, idx = _prepared(pre, {**direct, **out})
    base = {**constants, **out}
    searches: list[tuple[str, float, tuple[str, ...]]] = [("host.sync_s_per_GiB", 0.5, ("total_time_s", "downtime_s"))]
    if zc is None:
        searches.insert(0, ("host.zero_page_cost_s", 20e-6, ("total_time_s",)))
    for key, upper, metrics in searches:
        def sloss(v: float, key: str = key, metrics: tuple[str, ...] = metrics) -> float:
            evals.count()
            return _loss(pre, scs, idx, {**base, key: v}, metrics)

        r = minimize_scalar(sloss, bounds=(0.0, upper), method="bounded", options={"xatol": upper * 1e-3,
                                                                                    "maxiter": 30})
        base[key] = float(r.x) if r.fun <= sloss(0.0) else 0.0
    return {k: base[k] for k in (*out, "host.zero_page_cost_s", "host.sync_s_per_GiB")}


def fit(observations: Sequence[Observation], *, maxfev: int | None = None,
        on_eval: Callable[[int, float], None] | None = None) -> HostFit:
    """Fit the host constants on ``observations`` (completed runs only) and return them.

    Each constant is fit on the runs whose mechanism it describes, in stages,
    so a model gap in one strategy cannot drag a constant that another
    strategy's runs depend on:

    1. direct: header bytes per page and setup time (:func:`direct_estimates`),
       and the guest's slow-down while pre-copy runs (:func:`slowdown_estimate`,
       from the workload's own rate lines);
    2. Nelder-Mead on link efficiency and per-page cost over the pre-copy
       runs (all runs if there are none), on total time and bytes only, at
       most ``maxfev`` simulator evaluations (default :data:`DEFAULT_MAXFEV`);
    3. a bounded 1-D search on ``switchover_s`` over the same runs, on
       downtime only (the fixed cost is what downtime adds to the final copy);
    4. a bounded 1-D search on ``postcopy_queue_bytes`` over the post-copy
       and hybrid runs, with the constants of 1-3 fixed;
    5. a bounded 1-D search on ``postcopy_switch_s`` over the same runs, on
       downtime only.
    """
    maxfev = maxfev or DEFAULT_MAXFEV
    train = [o for o in observations if o.completed]
    if not train:
        raise ConfigError("no completed runs to fit the host constants on")
    evals = _Evaluations(on_eval)
    direct, start = _start_point(train)
    pre = [o for o in train if o.scenario.strategy.kind == "precopy"] or train
    scs, idx = _prepared(pre, direct)
    constants = {**_fit_rate_constants(pre, scs, idx, start, maxfev, evals), **direct}
    constants["host.switchover_s"] = _fit_fixed_cost("host.switchover_s", pre, scs, idx, constants,
                                                     0.5, 5e-4, 40, evals)
    if len({memory_of(o) for o in train}) >= 2:  # only runs at several guest sizes can tell size costs apart
        # The size costs first (the rate constants alone would absorb them), then the rate constants and the
        # switchover again with the size costs in every scenario.
        size = _fit_size_costs(train, pre, direct, constants, evals)
        direct = {**direct, **size}
        scs, idx = _prepared(pre, direct)
        constants.update(_fit_rate_constants(pre, scs, idx, start, maxfev, evals))
        constants.update(size)
        constants["host.switchover_s"] = _fit_fixed_cost("host.switchover_s", pre, scs, idx, constants,
                                                         0.5, 5e-4, 40, evals)
    total_loss = _loss(pre, scs, idx, constants) * len(pre)
    post = [o for o in train if o.scenario.strategy.kind in ("postcopy", "hybrid")]
    if post:
        pscs, pidx = _prepared(post, direct)
        constants["host.postcopy_queue_bytes"] = _fit_queue_bytes(post, pscs, pidx, constants, evals)
        constants["host.postcopy_switch_s"] = _fit_fixed_cost("host.postcopy_switch_s", post, pscs, pidx,
                                                              constants, 0.1, 1e-4, 30, evals)
        total_loss += _loss(post, pscs, pidx, constants) * len(post)
    value = total_loss / (len(pre) + len(post)) if pre is not train else total_loss / len(train)
    groups = tuple(sorted({o.group for o in train}))
    log.info("host fit on %d runs: loss %.4f after %d evaluations: %s", len(train), value, evals.n, constants)
    return HostFit(constants=constants, train_groups=groups, n_train_runs=len(train), loss=value,
                   evaluations=evals.n, start=start)


@dataclass(frozen=True)
class FoldFit:
    """One cross-validation fold: constants fit on the other folds' scenarios, judged on ``heldout_groups``.

    ``label`` names the fold's held-out block when the folds are blocks (leave one workload out:
    the workload's name); empty for k-fold by scenario.
    """

    fold: int
    fit: HostFit
    heldout_groups: tuple[str, ...]
    label: str = ""


def block_folds(block_of: Mapping[str, str]) -> tuple[dict[str, int], list[str]]:
    """Leave-one-block-out folds: every group of block ``b`` (e.g. every scenario of one workload) in fold
    ``index(b)``, blocks in sorted order. Returns ``(group -> fold, fold -> block name)``."""
    blocks = sorted(set(block_of.values()))
    if len(blocks) < 2:
        raise ConfigError(f"leaving one block out needs at least 2 blocks, not {len(blocks)} ({', '.join(blocks)})")
    index = {b: i for i, b in enumerate(blocks)}
    return {g: index[b] for g, b in block_of.items()}, blocks


def cross_validate(observations: Sequence[Observation], folds: int = 3, *, maxfev: int | None = None,
                   progress: Callable[[str], None] | None = None,
                   blocks: Mapping[str, str] | None = None) -> list[FoldFit]:
    """Cross-validation whose every fold's constants never saw the fold's groups.

    Default: k-fold by scenario (:func:`assign_folds`; ``folds`` folds). With ``blocks`` (group ->
    block, e.g. scenario -> workload) it is leave-one-block-out instead: one fold per block, fit on
    the runs of every other block only (``folds`` is ignored), so a workload's constants never saw
    a run of that workload.
    """
    labels: list[str] = []
    if blocks is not None:
        missing = sorted({o.group for o in observations} - set(blocks))
        if missing:
            raise ConfigError(f"no block for group {missing[0]!r}")
        assignment, labels = block_folds({g: blocks[g] for g in {o.group for o in observations}})
        folds = len(labels)
    else:
        assignment = assign_folds((o.group for o in observations), folds)
    out = []
    for k in range(folds):
        held = tuple(sorted(g for g, f in assignment.items() if f == k))
        train = [o for o in observations if assignment[o.group] != k]
        if not held or not any(o.completed for o in train):
            continue
        if progress is not None:
            progress(f"fold {k + 1}/{folds}" + (f" ({labels[k]} held out)" if labels else ""))
        out.append(FoldFit(k, fit(train, maxfev=maxfev), held, labels[k] if labels else ""))
    return out


def evaluate(observations: Sequence[Observation], constants: dict[str, float]) -> dict[str, float]:
    """Median absolute relative error per metric of ``constants`` on ``observations`` (completed runs)."""
    errs: dict[str, list[float]] = {m: [] for m in METRICS}
    cache: dict[str, dict[str, float]] = {}
    for o in observations:
        if not o.completed:
            continue
        key = o.scenario.to_json()
        if key not in cache:
            cache[key] = predict(o.scenario, constants)
        p = cache[key]
        for m in METRICS:
            meas = o.measured.get(m)
            if meas is None or not math.isfinite(meas) or not math.isfinite(p.get(m, math.nan)):
                continue
            if m == "dirty_sync_count":
                errs[m].append(float(p[m] != meas))
            elif meas > 0:
                errs[m].append(abs(p[m] - meas) / meas)
    return {m: _typical(m, v) for m, v in errs.items()}


def _typical(metric: str, errors: list[float]) -> float:
    """The median relative error; for the sync count (each error 0 or 1: exact or not) the share not exact,
    since a median of zeros and ones says only whether more than half missed."""
    if not errors:
        return math.nan
    return float(np.nanmean(errors)) if metric == "dirty_sync_count" else float(np.nanmedian(errors))


# --------------------------------------------------------------------------- splits by guest size (issue 9)
def memory_of(o: Observation) -> int:
    """The guest size of an observation's run (bytes)."""
    return int(o.scenario.workload.memory_bytes)


def size_split(observations: Sequence[Observation], train_max_bytes: int
               ) -> tuple[list[Observation], list[Observation]]:
    """The honest split: runs of guests up to ``train_max_bytes`` train, the bigger ones are judged."""
    if train_max_bytes <= 0:
        raise ConfigError(f"train_max_memory must be positive, not {train_max_bytes}")
    train = [o for o in observations if memory_of(o) <= train_max_bytes]
    judged = [o for o in observations if memory_of(o) > train_max_bytes]
    return train, judged


def leave_one_size_out(observations: Sequence[Observation], *, maxfev: int | None = None,
                       progress: Callable[[str], None] | None = None) -> list[FoldFit]:
    """One fold per guest size: constants fit on every other size, judged on that one.

    ``fold`` is the size's index (smallest 0); ``heldout_groups`` the scenarios
    at that size. Needs at least two sizes.
    """
    sizes = sorted({memory_of(o) for o in observations})
    if len(sizes) < 2:
        raise ConfigError(f"leave-one-size-out needs runs at two or more guest sizes, not {len(sizes)}")
    out = []
    for k, size in enumerate(sizes):
        train = [o for o in observations if memory_of(o) != size]
        held = tuple(sorted({o.group for o in observations if memory_of(o) == size}))
        if not any(o.completed for o in train):
            continue
        if progress is not None:
            progress(f"size {size >> 20} MiB ({k + 1}/{len(sizes)})")
        out.append(FoldFit(k, fit(train, maxfev=maxfev), held))
    return out


def evaluate_by_size(observations: Sequence[Observation], constants_of: Callable[[Observation], dict[str, float]]
                     ) -> dict[int, dict[str, Any]]:
    """Per guest size: median absolute relative error per metric (:func:`evaluate`'s form) and the run count."""
    out: dict[int, dict[str, Any]] = {}
    for size in sorted({memory_of(o) for o in observations}):
        mine = [o for o in observations if memory_of(o) == size]
        by_consts: dict[str, list[Observation]] = {}
        consts: dict[str, dict[str, float]] = {}
        for o in mine:
            c = constants_of(o)
            key = repr(sorted(c.items()))
            by_consts.setdefault(key, []).append(o)
            consts[key] = c
        errs: dict[str, list[float]] = {m: [] for m in METRICS}
        for key, obs in by_consts.items():
            for o in obs:
                p = predict(o.scenario, consts[key]) if o.completed else {}
                for m in METRICS:
                    meas = o.measured.get(m)
                    if not o.completed or meas is None or not math.isfinite(meas) or not math.isfinite(p.get(m, math.nan)):
                        continue
                    errs[m].append(float(p[m] != meas) if m == "dirty_sync_count" else
                                   abs(p[m] - meas) / meas if meas > 0 else math.nan)
        out[size] = {"runs": len(mine), "completed": sum(o.completed for o in mine),
                     "median_abs_rel_error": {m: _typical(m, v) for m, v in errs.items()}}
    return out
