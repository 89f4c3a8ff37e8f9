"""``miglab validate CAMPAIGN.toml -o DIR``: predict, run for real and compare a campaign of migrations.

Runs every (scenario, repetition) of the campaign that has no record yet
(resumable), then rebuilds the report from all records; ``--report-only``
runs nothing, ``--no-report`` builds nothing. Exit 1 when a run could not be
hosted (it is retried on the next invocation), 2 for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HELP = "predict, run for real and compare a campaign of migrations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", metavar="CAMPAIGN.toml", help="campaign file (see campaigns/)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory (resumable)")
    p.add_argument("--host", metavar="JSON", default=None,
                   help="fixed host constants (from calibrate-host on other runs) instead of cross-validation")
    p.add_argument("--only", action="append", metavar="SCENARIO", help="run only this scenario (repeatable)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the records; run nothing")
    p.add_argument("--no-report", action="store_true", help="run, but do not build the report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from harness.validate import Campaign, build_report, run_campaign
    from sim.cli import load_host_json
    from sim.errors import ConfigError

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
        # SIGTERM guard: the one call site. Replace _sigterm_guard with the shared guard of harness.cli at merge.
        with _sigterm_guard():
            outcome = run_campaign(campaign, out, progress=progress, only=args.only or ())
        errors = outcome.errors
        print(f"{campaign.name}: {outcome.ran} runs done, {outcome.skipped} already there, "
              f"{len(errors)} failed to run" + (f" (first: {errors[0]})" if errors else ""))
    if args.no_report:
        return 1 if errors else 0
    summary = build_report(out, campaign, host_json=host or None, progress=progress)
    print(f"{out / 'report.md'}: {summary['n_runs']} runs; " + "; ".join(
        f"{t['metric']} {'met' if t['met'] else 'MISSED'}" for t in summary["targets"]))
    return 1 if errors else 0


@contextlib.contextmanager
def _sigterm_guard() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside, so every context manager of the running migration cleans up."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
