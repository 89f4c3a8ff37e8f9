"""Host constants for the comparison: which fitted constants judge which run.

The glue between validation runs and :mod:`sim.hostfit`: every run becomes an
:class:`sim.hostfit.Observation` (:func:`observation`); :func:`calibrate`
gives each scenario constants fit without it (k-fold cross-validation by
scenario, or a fixed ``host.json``); :func:`calibrate_host` is the one-split
fit behind ``miglab calibrate-host``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from harness.validate.compare import ValidatedRun, sim_scenario, validated_runs
from sim.errors import ConfigError


def observation(run: ValidatedRun) -> Any:
    """A :class:`sim.hostfit.Observation` of a validated run."""
    from sim.hostfit import Observation

    s = run.record.stats
    kind = run.record.scenario.strategy.kind
    m: dict[str, float] = {"bytes_sent": float(cast(int, s.bytes_sent)), "dirty_sync_count": float(s.dirty_sync_count),
                           "normal_pages": float(s.normal_pages), "duplicate_pages": float(s.duplicate_pages),
                           "normal_bytes": float(s.normal_bytes)}
    for k in ("total_time_s", "downtime_s", "setup_time_s"):
        v = getattr(s, k)
        if v is not None:
            m[k] = float(v)
    if kind in ("postcopy", "hybrid"):
        m["postcopy_requests"] = float(s.postcopy_requests)
    wr = run.record.workload_rate
    hints = {"rate_ratio": wr.during / wr.before} if wr.during and wr.before else {}
    return Observation(run_id=run.path.stem, group=run.scenario, scenario=sim_scenario(run), measured=m,
                       completed=run.record.completed,
                       xbzrle=run.record.scenario.strategy.xbzrle_cache_bytes > 0, hints=hints)


@dataclass
class Calibration:
    """Which constants judge which run: fixed (``--host``) or per cross-validation fold."""

    method: str
    heldout: dict[str, dict[str, float]]  # scenario -> constants that never saw it
    fold_of: dict[str, int]
    train: dict[str, float] | None
    folds: list[dict[str, Any]]
    host_json: str = ""


def calibrate(runs: Sequence[ValidatedRun], folds: int, host_json: str | None = None,
              progress: bool = True) -> Calibration:
    """Held-out constants for every run: from ``host_json``, or k-fold cross-validation by scenario."""
    from sim import hostfit

    groups = sorted({r.scenario for r in runs})
    if host_json:
        from sim.hostconst import load_host_json

        consts = {k: float(v) for k, v in load_host_json(host_json).items()}
        return Calibration("fixed", {g: consts for g in groups}, {g: -1 for g in groups}, None,
                           [{"fold": -1, "constants": consts, "source": str(host_json)}], str(host_json))
    obs = [observation(r) for r in runs]
    from tqdm import tqdm

    bar = tqdm(total=folds + 1, desc="calibrate", unit="fit", disable=not progress, file=sys.stderr)

    def fold_done(s: str) -> None:
        bar.set_postfix_str(s)
        bar.update(1)

    fold_fits = hostfit.cross_validate(obs, folds, progress=fold_done)
    full = hostfit.fit(obs)
    bar.update(1)
    bar.close()
    heldout: dict[str, dict[str, float]] = {}
    fold_of: dict[str, int] = {}
    for ff in fold_fits:
        for g in ff.heldout_groups:
            heldout[g] = ff.fit.constants
            fold_of[g] = ff.fold
    info = [{"fold": ff.fold, "constants": ff.fit.constants, "train_scenarios": list(ff.fit.train_groups),
             "heldout_scenarios": list(ff.heldout_groups), "train_runs": ff.fit.n_train_runs, "loss": ff.fit.loss,
             "evaluations": ff.fit.evaluations} for ff in fold_fits]
    info.append({"fold": "all", "constants": full.constants, "train_scenarios": list(full.train_groups),
                 "heldout_scenarios": [], "train_runs": full.n_train_runs, "loss": full.loss,
                 "evaluations": full.evaluations})
    return Calibration(f"{folds}-fold cross-validation by scenario", heldout, fold_of, full.constants, info)


def calibrate_host(paths: Sequence[str | Path], *, heldout_every: int = 3, maxfev: int | None = None
                   ) -> dict[str, Any]:
    """Fit host constants on a training subset of validation runs; judge them on the held-out rest.

    The split is by scenario (every ``heldout_every``-th scenario in sha256
    order is held out, see :func:`sim.hostfit.train_heldout`), so no
    repetition of a judging scenario is ever seen by the fit. Returns the
    ``host.json`` document: ``constants`` plus ``fit`` (scenarios and runs on
    each side, median errors on each side).
    """
    from sim import bhyvefit, hostfit

    runs = validated_runs(paths)
    obs = [observation(r) for r in runs]
    train_g, held_g = hostfit.train_heldout((o.group for o in obs), heldout_every)
    train = [o for o in obs if o.group in train_g]
    held = [o for o in obs if o.group in held_g]
    if not any(o.completed for o in train):
        raise ConfigError("calibrate-host: no completed run in the training subset")
    bhyve = bhyvefit.is_bhyve(train)  # bhyve runner records: bhyve's own constants (sim.bhyvefit)
    result = (bhyvefit.fit(train, maxfev=maxfev or bhyvefit.DEFAULT_MAXFEV) if bhyve
              else hostfit.fit(train, maxfev=maxfev or None))
    doc = result.to_json_dict()
    if bhyve:
        doc["fit"]["not_fitted"] = {k.removeprefix("host."): why for k, why in bhyvefit.NOT_FITTED.items()}
    doc["fit"].update({
        "split": f"by scenario: every {heldout_every}th scenario in sha256 order is held out",
        "heldout_scenarios": sorted(held_g), "heldout_runs": len(held),
        "train_median_abs_rel_error": hostfit.evaluate(train, result.constants),
        "heldout_median_abs_rel_error": hostfit.evaluate(held, result.constants) if held else {},
        "note": "dirty_sync_count: share of runs NOT predicted exactly"})
    return doc


