"""Published analytic models, kept as baselines and cross-checks.

* :func:`geometric_precopy`: the textbook geometric pre-copy model (uniform
  dirty rate D, bandwidth R, lambda = D/R).
* :func:`simgrid_precopy`: SimGrid 3.32's VmLiveMigration equations
  (Hirofuchi et al., CloudCom 2013): one byte count, no pages, no overlap
  between rounds, dirtied bytes = intensity x migration speed x time, capped at
  the working set; stage 2 loops while remaining > bandwidth x 0.03 s; each
  send costs latency + size / speed.

Both take and return plain numbers; :func:`baseline_predictions` applies them
to a :class:`~sim.scenario.Scenario` for the validation report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """A baseline's answer, in the simulator's metric names."""

    rounds: int
    total_time_s: float
    bytes_sent: float
    downtime_s: float
    converged: bool = True


def geometric_precopy(memory_bytes: float, bandwidth_Bps: float, dirty_Bps: float, threshold_bytes: float,
                      resume_s: float = 0.0, max_rounds: int = 1000) -> Prediction:
    """V_i = V_mem * lambda^i; stop at the first n with V_n < V_thd; downtime = V_n / R + T_resume.

    ``rounds`` is n: the live rounds 0..n-1 (the first full pass included).
    """
    lam = dirty_Bps / bandwidth_Bps
    if lam >= 1:
        return Prediction(max_rounds, math.inf, math.inf, math.nan, converged=False)
    if threshold_bytes >= memory_bytes:
        n = 0
    elif lam == 0:
        n = 1
    else:
        n = max(1, math.ceil(math.log(threshold_bytes / memory_bytes) / math.log(lam)))
    if n > max_rounds:
        return Prediction(max_rounds, math.inf, math.inf, math.nan, converged=False)
    total = memory_bytes * (1 - lam ** (n + 1)) / (1 - lam)
    final = memory_bytes * lam**n
    return Prediction(n, total / bandwidth_Bps + resume_s, total, final / bandwidth_Bps + resume_s)


def simgrid_precopy(ram_bytes: float, mig_speed_Bps: float, intensity: float, latency_s: float = 0.0,
                    working_set_bytes: float | None = None, max_downtime_s: float = 0.03) -> Prediction:
    """SimGrid's MigrationTx::operator() as arithmetic (the VM computes at full host speed throughout)."""
    ws = 0.9 * ram_bytes if working_set_bytes is None else working_set_bytes

    def send(size: float) -> float:
        return latency_s + size / mig_speed_Bps

    def updated(duration: float) -> float:
        return min(intensity * mig_speed_Bps * duration, ws)

    t = send(ram_bytes)
    sent = ram_bytes
    bandwidth = ram_bytes / t
    threshold = bandwidth * max_downtime_s
    update = updated(t)
    remaining = update
    rounds = 0
    while threshold < remaining:
        d = send(update)
        t += d
        sent += update
        remaining -= update
        bandwidth = update / d
        threshold = bandwidth * max_downtime_s
        rounds += 1
        update = updated(d)
        remaining += update
        if rounds > 100000:
            return Prediction(rounds, math.inf, math.inf, math.nan, converged=False)
    downtime = send(remaining)
    return Prediction(rounds, t + downtime, sent + remaining, downtime)
