"""The validation loop: predict, run for real, compare (``miglab validate``, ``miglab calibrate-host``).

``miglab validate CAMPAIGN.toml -o results/validation/NAME/`` crosses the
campaign's workloads, links and strategies, and for every scenario

1. collects a dirty-page trace of the workload (:func:`harness.collect.collect`)
   or reuses a matching one (same spec, guest memory and interval, long
   enough), cached under ``OUT/traces/`` (and looked up in the campaign's
   ``trace_dirs``);
2. runs the real migration ``repetitions`` times (:func:`harness.migrate.run_migration`),
   one :class:`harness.record.RunRecord` JSON per run under ``OUT/runs/``;
3. simulates the same scenario with the trace as the workload
   (:func:`sim.simulate`), with host constants that were never fitted on the
   run being judged (``--host host.json``, or cross-validation: leaving one
   workload out by default, k-fold by scenario beside it, see
   :mod:`~harness.validate.crossval`), and the baselines (geometric closed
   form, SimGrid's equations, QEMU's own ``expected-downtime``);
4. writes the comparison (layout below; the notebook reads it).

Resumable: a run whose record exists is never repeated; traces are reused.
The comparison is rebuilt from the records every time (``--report-only``
rebuilds it without running anything).

Output layout of ``OUT/`` (stable; ``notebooks/validation.ipynb`` reads it):

* ``campaign.toml`` -- the campaign as run;
* ``traces/<workload>-<key>.npz`` -- the traces used;
* ``runs/<scenario>__r<k>.json`` -- one RunRecord per run; ``options["validation"]``
  holds the campaign, scenario, repetition and the trace (path relative to the
  record's directory, sha256);
* ``table.csv`` -- tidy: one row per (scenario, repetition, model, metric) with
  ``predicted``, ``measured``, ``error`` (predicted - measured),
  ``abs_error``, ``rel_error`` (error / measured) and ``abs_rel_error``;
  ``model`` is ``miglab`` (held-out constants, headline scheme),
  ``miglab-cv-<scheme>`` (held-out under the other scheme), ``miglab-train`` (constants fit
  on every run, in-sample), ``miglab-uncalibrated`` (default constants),
  ``geometric``, ``simgrid`` or ``qemu-expected-downtime``;
* ``spread.csv`` -- per scenario and metric: the measurements' median, min,
  max and relative spread ((max - min) / median);
* ``hostfit.json`` -- the constants per fold, which scenarios trained and
  judged them, and the constants fit on all runs (also in ``host.json``);
* ``summary.json`` -- the headline numbers and the target verdicts;
* ``report.md`` and ``plots/*.png``.

One module per job:

* :mod:`~harness.validate.campaign` -- the campaign file and running it;
* :mod:`~harness.validate.traces` -- the traces it replays (reused or collected);
* :mod:`~harness.validate.compare` -- validated runs, predictions, the tidy table;
* :mod:`~harness.validate.calibration` -- host constants per fold (glue to :mod:`sim.hostfit`);
* :mod:`~harness.validate.crossval` -- the two cross-validation schemes side by side;
* :mod:`~harness.validate.scores` -- target verdicts, error statistics, measurement spread;
* :mod:`~harness.validate.plots` -- the PNGs;
* :mod:`~harness.validate.report` -- writing every output and the Markdown.

The verbs are ``harness/cli/validate.py`` and ``harness/cli/calibrate_host.py``.
"""

from harness.validate.calibration import Calibration, calibrate, calibrate_host, observation
from harness.validate.campaign import (
    RUNS_DIR,
    Campaign,
    CampaignLink,
    CampaignOutcome,
    CampaignScenario,
    CampaignStrategy,
    CampaignWorkload,
    load_runs,
    run_campaign,
    run_path,
)
from harness.validate.compare import (
    BASELINES,
    COMPARED,
    MODEL_DEFAULT,
    MODEL_HELDOUT,
    MODEL_TRAIN,
    MODELS,
    TABLE_COLUMNS,
    ValidatedRun,
    baseline_predictions,
    compare,
    comparison_rows,
    measured_metrics,
    sim_scenario,
    trace_summary,
    validated_runs,
)
from harness.validate.plots import PLOTS_DIR, write_plots
from harness.validate.report import build_report, render_report
from harness.validate.scores import (
    DOWNTIME_FLOOR_S,
    TARGETS,
    error_summary,
    measurement_spread,
    noise_summary,
    target_verdicts,
)
from harness.validate.traces import TRACES_DIR, ensure_trace, find_trace, trace_key

__all__ = [
    "BASELINES", "COMPARED", "DOWNTIME_FLOOR_S", "MODELS", "MODEL_DEFAULT", "MODEL_HELDOUT", "MODEL_TRAIN",
    "PLOTS_DIR", "RUNS_DIR", "TABLE_COLUMNS", "TARGETS", "TRACES_DIR",
    "Calibration", "Campaign", "CampaignLink", "CampaignOutcome", "CampaignScenario", "CampaignStrategy",
    "CampaignWorkload", "ValidatedRun",
    "baseline_predictions", "build_report", "calibrate", "calibrate_host", "compare", "comparison_rows",
    "ensure_trace", "error_summary", "find_trace", "load_runs", "measured_metrics", "measurement_spread",
    "noise_summary", "observation", "render_report", "run_campaign", "run_path", "sim_scenario",
    "target_verdicts", "trace_key", "trace_summary", "validated_runs", "write_plots",
]
