"""``miglab validate CAMPAIGN.toml -o DIR``: predict, run for real and compare a campaign of migrations.

Runs every (scenario, repetition) of the campaign that has no record yet
(resumable), then rebuilds the report from all records; ``--report-only``
runs nothing, ``--no-report`` builds nothing. Exit 1 when a run could not be
hosted (it is retried on the next invocation), 2 for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.options import DIR, FILE, add_output, add_quiet, sigterm_guard


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", metavar="CAMPAIGN.toml", help="campaign file (see campaigns/)")
    add_output(p, "output directory (resumable)", metavar=DIR, required=True)
    p.add_argument("--host", metavar=FILE, default=None,
                   help="fixed host constants (from calibrate-host on other runs) instead of cross-validation")
    p.add_argument("--cv", choices=("auto", "workload", "scenario"), default="auto",
                   help="headline cross-validation of the host constants: leave one workload out (auto: when there "
                        "are two or more workloads) or k-fold by scenario (the earlier reports); both are reported")
    p.add_argument("--only", action="append", metavar="SCENARIO", help="run only this scenario (repeatable)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the records; run nothing")
    p.add_argument("--no-report", action="store_true", help="run, but do not build the report")
    add_quiet(p, help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from harness.validate import Campaign, build_report, run_campaign
    from sim.errors import ConfigError
    from sim.hostconst import load_host_json

    campaign = Campaign.load(args.campaign)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is not a directory")
    host = args.host if args.host is not None else campaign.host
    if host:
        load_host_json(host)  # one-line error before anything runs
    progress = not args.quiet
    errors: list[str] = []
    if not args.report_only:
        with sigterm_guard():  # SIGTERM cleans up like Ctrl-C: every running migration's context managers unwind
            outcome = run_campaign(campaign, out, progress=progress, only=args.only or ())
        errors = outcome.errors
        print(f"{campaign.name}: {outcome.ran} runs done, {outcome.skipped} already there, "
              f"{len(errors)} failed to run" + (f" (first: {errors[0]})" if errors else ""))
    if args.no_report:
        return 1 if errors else 0
    summary = build_report(out, campaign, host_json=host or None, progress=progress, cv=args.cv)
    print(f"{out / 'report.md'}: {summary['n_runs']} runs; " + "; ".join(
        f"{t['metric']} {'met' if t['met'] else 'MISSED'}" for t in summary["targets"]))
    return 1 if errors else 0
