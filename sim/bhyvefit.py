"""Host constants of bhyve's copy mechanics, fitted to runs of the bhyve runner (``miglab calibrate-host``).

:mod:`sim.hostfit` fits QEMU's constants; on bhyve records it would absorb
bhyve's per-page send into the generic ``page_send_cost_s`` and the final
dirty-list search into ``switchover_s``. This fit names bhyve's own
(``usr.sbin/bhyve/migration.c``, FreeBSD-UPB):

* ``host.bhyve_page_send_s`` -- one socket send per page (``VM_COPY_VMM_PAGES``
  then a send for each page of the chunk): seconds per page, beside the bytes
  at the link's rate (``host.throughput_efficiency``). The two separate on runs
  of the same guest at two link rates.
* ``host.bhyve_dirty_search_s_per_page`` -- the vCPU pause while
  ``search_dirty_pages`` walks every guest page (rounds 1-3 live, the last one
  with the vCPUs already paused): it grows the downtime with the guest's
  size, so it separates from ``host.switchover_s`` on guests of two or more
  sizes.
* ``host.switchover_s`` -- the fixed part of the last round (device and
  kernel state, the destination's restore).

``host.bhyve_chunk_pause_s`` (the vCPU pause per ``VMM_PAGE_CHUNK``) adds the
same time per page as the send cost, so time and bytes cannot tell them
apart; only the guest's own progress during the rounds can (docs/bhyve.md,
section 8). It is kept at the scenario's value and the fit says so.

The fit minimises :func:`sim.hostfit.run_errors` (log ratios of total time
and bytes) by Nelder-Mead in log space, as the QEMU fit does, and fits the
downtime's two constants, linear in it, by least squares (:func:`fit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import hostfit
from .hostfit import HostFit, Observation

#: The constants fitted (dotted scenario paths), in the optimiser's order.
FIT_PARAMS: tuple[str, ...] = ("host.switchover_s", "host.throughput_efficiency", "host.bhyve_page_send_s",
                               "host.bhyve_dirty_search_s_per_page")
#: Lower bounds that keep log space finite (a cost of 0 is reached as a very small one).
FLOORS = {"host.switchover_s": 1e-4, "host.throughput_efficiency": 0.05, "host.bhyve_page_send_s": 1e-8,
          "host.bhyve_dirty_search_s_per_page": 1e-10}
#: Not identifiable from runner records (see the module docstring).
NOT_FITTED = {"host.bhyve_chunk_pause_s": "same time per page as bhyve_page_send_s; needs the guest's progress "
                                          "during the rounds (docs/bhyve.md, section 8)"}
DEFAULT_MAXFEV = 160


def is_bhyve(observations: Sequence[Observation]) -> bool:
    """Whether every observation is a bhyve run (``host.hypervisor = "bhyve"``)."""
    return bool(observations) and all(o.scenario.host.hypervisor == "bhyve" for o in observations)


def _start(observations: Sequence[Observation]) -> dict[str, float]:
    h = observations[0].scenario.host
    start = {"host.switchover_s": h.switchover_s, "host.throughput_efficiency": min(h.throughput_efficiency, 1.0),
             "host.bhyve_page_send_s": h.bhyve_page_send_s,
             "host.bhyve_dirty_search_s_per_page": h.bhyve_dirty_search_s_per_page}
    # Start the fixed cost from the smallest measured downtime: the rest of a bhyve downtime is the
    # final search and a final round that the other constants scale.
    downs = [o.measured["downtime_s"] for o in observations if o.completed and o.measured.get("downtime_s")]
    if downs:
        start["host.switchover_s"] = max(min(downs) / 2, FLOORS["host.switchover_s"])
    return {k: max(v, FLOORS[k]) for k, v in start.items()}


def fit(observations: Sequence[Observation], *, maxfev: int = DEFAULT_MAXFEV) -> HostFit:
    """Fit :data:`FIT_PARAMS` on completed bhyve observations; the other host constants stay the scenario's.

    Two stages, twice over: the rate constants (efficiency, per-page send) on
    total time and bytes by Nelder-Mead in log space; then the downtime, which
    is linear in the other two (``switchover_s + n_pages x search`` on top of
    the simulated final round), by non-negative least squares over the runs.
    """
    from scipy.optimize import minimize, nnls

    done = [o for o in observations if o.completed]
    if not done or not is_bhyve(done):
        raise ValueError("bhyvefit.fit needs completed bhyve observations")
    scs, idx = hostfit._unique_scenarios(done)
    p = _start(done)
    start = dict(p)
    rate_keys = ("host.throughput_efficiency", "host.bhyve_page_send_s")
    evaluations = 0
    loss = math.nan

    def with_rates(lx: np.ndarray) -> dict[str, float]:
        q = dict(p)
        for k, v in zip(rate_keys, lx, strict=True):
            q[k] = max(math.exp(v), FLOORS[k])
        q["host.throughput_efficiency"] = min(q["host.throughput_efficiency"], 1.5)
        return q

    def rate_loss(lx: np.ndarray) -> float:
        nonlocal evaluations
        evaluations += 1
        return hostfit._loss(done, scs, idx, with_rates(lx), metrics=("total_time_s", "bytes_sent"))

    timed = [o for o in done if o.measured.get("downtime_s") is not None]
    for _ in range(2):
        x0 = np.log([p[k] for k in rate_keys])
        simplex = np.array([x0, x0 + [-0.3, 0.0], x0 + [0.0, 1.0]])
        res = minimize(rate_loss, x0, method="Nelder-Mead",
                       options={"maxfev": maxfev // 2, "xatol": 1e-3, "fatol": 1e-7, "initial_simplex": simplex})
        p = with_rates(res.x)
        if timed:
            zero = {**p, "host.switchover_s": 0.0, "host.bhyve_dirty_search_s_per_page": 0.0}
            base = [hostfit.predict(sc, zero)["downtime_s"] for sc in scs]
            evaluations += len(scs)
            rows = [(1.0, o.scenario.workload.memory_bytes / o.scenario.workload.page_size_bytes) for o in timed]
            y = [o.measured["downtime_s"] - base[scs.index(o.scenario)] for o in timed]
            scale = np.array([1.0, 1e-6])  # columns of like size for the solver
            coef, _ = nnls(np.array(rows) * scale, np.array(y))
            p["host.switchover_s"], p["host.bhyve_dirty_search_s_per_page"] = (float(c) for c in coef * scale)
        loss = hostfit._loss(done, scs, idx, p)
    return HostFit(constants=p, train_groups=tuple(sorted({o.group for o in done})), n_train_runs=len(done),
                   loss=float(loss), evaluations=evaluations, start=start)
