"""``miglab calibrate-host RUNS... -o host.json``: fit host constants to validation runs, judged on held-out ones.

Every ``--heldout-every``-th scenario (by hash) is held out; the constants are
fit on the rest and the median errors on both sides are printed and stored in
the ``fit`` section of ``host.json`` (see :func:`harness.validate.calibrate_host`).
"""

from __future__ import annotations

import argparse
import json
import math

from harness.cli.options import FILE, N, add_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run records of `miglab validate` (files or directories)")
    add_output(p, "where to write the constants (host.json)", metavar=FILE, required=True)
    p.add_argument("--heldout-every", type=int, default=3, metavar=N,
                   help="hold out every K-th scenario (by hash) for judging (default 3)")


def run(args: argparse.Namespace) -> int:
    from harness.validate import calibrate_host
    from sim.atomic import atomic_open
    from sim.errors import ConfigError

    if args.heldout_every < 2:
        raise ConfigError("--heldout-every must be at least 2")
    from sim.hostinfo import fit_range_of_runs

    doc = calibrate_host(args.runs, heldout_every=args.heldout_every)
    # What the constants were fitted on, so that a run outside it is warned about (sim.hostinfo.range_warnings).
    doc.setdefault("fit", {}).setdefault("range", fit_range_of_runs(args.runs))
    from sim.provenance import provenance

    doc["fit"]["provenance"] = provenance()
    with atomic_open(args.output) as f:
        json.dump(doc, f, indent=1)
    c, fit_ = doc["constants"], doc["fit"]
    print(f"{args.output}: " + ", ".join(f"{k}={v:.4g}" for k, v in c.items()))
    for side in ("train", "heldout"):
        e = fit_.get(f"{side}_median_abs_rel_error") or {}
        runs = fit_["train_runs"] if side == "train" else fit_["heldout_runs"]
        print(f"  {side:8s} ({runs} runs): " + ", ".join(
            f"{k} {v * 100:.1f} %{' not exact' if k == 'dirty_sync_count' else ''}" for k, v in e.items()
            if isinstance(v, float) and math.isfinite(v)))
    return 0
