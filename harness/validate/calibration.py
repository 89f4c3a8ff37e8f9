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
from dataclasses import dataclass, field
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
    #: With ``cv = "size"``: scenario -> constants fit on every other guest size (leave-one-size-out).
    size_cv: dict[str, dict[str, float]] = field(default_factory=dict)


def calibrate(runs: Sequence[ValidatedRun], folds: int, host_json: str | None = None,
              progress: bool = True, *, train_max_memory_bytes: int = 0, cv: str = "") -> Calibration:
    """Held-out constants for every run: from ``host_json``, or k-fold cross-validation by scenario.

    ``train_max_memory_bytes`` (a scale campaign's ``train_max_memory``) makes the split honest by size:
    runs of bigger guests are judged by constants fit on the small ones only (and the small ones by
    k-fold among themselves); ``cv = "size"`` adds leave-one-size-out constants (``size_cv``).
    """
    from sim import hostfit

    if train_max_memory_bytes and not host_json:
        return _calibrate_by_size(runs, folds, train_max_memory_bytes, cv, progress)

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
    return from_fold_fits(f"{folds}-fold cross-validation by scenario", fold_fits, full)


def from_fold_fits(method: str, fold_fits: Sequence[Any], full: Any) -> Calibration:
    """A :class:`Calibration` from cross-validation fold fits and the fit on every run."""
    heldout: dict[str, dict[str, float]] = {}
    fold_of: dict[str, int] = {}
    for ff in fold_fits:
        for g in ff.heldout_groups:
            heldout[g] = ff.fit.constants
            fold_of[g] = ff.fold
    info = [{"fold": ff.fold, **({"heldout_workload": ff.label} if ff.label else {}),
             "constants": ff.fit.constants, "train_scenarios": list(ff.fit.train_groups),
             "heldout_scenarios": list(ff.heldout_groups), "train_runs": ff.fit.n_train_runs, "loss": ff.fit.loss,
             "evaluations": ff.fit.evaluations} for ff in fold_fits]
    info.append({"fold": "all", "constants": full.constants, "train_scenarios": list(full.train_groups),
                 "heldout_scenarios": [], "train_runs": full.n_train_runs, "loss": full.loss,
                 "evaluations": full.evaluations})
    return Calibration(method, heldout, fold_of, full.constants, info)


def _calibrate_by_size(runs: Sequence[ValidatedRun], folds: int, train_max_bytes: int, cv: str,
                       progress: bool) -> Calibration:
    """The honest split of a scale campaign: fit on guests <= ``train_max_bytes``, judge the bigger ones."""
    from sim import hostfit

    obs = [observation(r) for r in runs]
    train, judged = hostfit.size_split(obs, train_max_bytes)
    if not any(o.completed for o in train):
        raise ConfigError(f"no completed run of a guest up to {train_max_bytes >> 20} MiB to fit on")
    small = calibrate([r for r in runs if r.record.scenario.workload.memory_bytes <= train_max_bytes],
                      folds, None, progress) if len({o.group for o in train}) >= folds else None
    full = hostfit.fit(train)
    heldout = dict(small.heldout) if small else {}
    fold_of = dict(small.fold_of) if small else {}
    for g in {o.group for o in judged}:
        heldout[g], fold_of[g] = full.constants, -2
    info = list(small.folds[:-1]) if small else []
    info.append({"fold": "small", "constants": full.constants, "train_scenarios": list(full.train_groups),
                 "heldout_scenarios": sorted({o.group for o in judged}), "train_runs": full.n_train_runs,
                 "loss": full.loss, "evaluations": full.evaluations,
                 "note": f"fit on guests up to {train_max_bytes >> 20} MiB only; judges every bigger guest"})
    size_cv: dict[str, dict[str, float]] = {}
    if cv == "size":
        for ff in hostfit.leave_one_size_out(obs):
            for g in ff.heldout_groups:
                size_cv[g] = ff.fit.constants
            info.append({"fold": f"size-{ff.fold}", "constants": ff.fit.constants,
                         "train_scenarios": list(ff.fit.train_groups), "heldout_scenarios": list(ff.heldout_groups),
                         "train_runs": ff.fit.n_train_runs, "loss": ff.fit.loss, "evaluations": ff.fit.evaluations,
                         "note": "leave-one-size-out"})
    method = (f"fit on guests <= {train_max_bytes >> 20} MiB, judged on bigger ones"
              + (f" ({folds}-fold by scenario among the small ones)" if small else "")
              + ("; leave-one-size-out beside" if size_cv else ""))
    return Calibration(method, heldout, fold_of, full.constants, info, size_cv=size_cv)


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


