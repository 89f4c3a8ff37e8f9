"""``miglab regress``: compare a suite's migration metrics against a baseline (exit 1 on regression)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sim.regress import DEFAULT_ALPHA, DEFAULT_RATIO, DEFAULT_REAL_METRICS, MIN_RUNS

    p.description = ("Compare CURRENT (a suite TOML to simulate, a baseline-format JSON, or a directory/glob of "
                     "harness run records) against --baseline. Exit 1 on regression, 2 on bad input.")
    p.add_argument("current", nargs="?", metavar="CURRENT",
                   help="suite TOML (simulated), or run-record JSON files: directory, glob or file (real runs)")
    p.add_argument("--suite", metavar="SUITE.toml", help="simulate this suite as CURRENT")
    p.add_argument("--baseline", required=True, metavar="BASELINE.json",
                   help="baseline JSON (or a directory/glob of run records to compare two real-run sets)")
    p.add_argument("--update-baseline", action="store_true", help="rewrite the baseline from CURRENT and exit 0")
    options.add_output_file(p, "--markdown", "write the Markdown report here (also appended to "
                                             "$GITHUB_STEP_SUMMARY when set)")
    p.add_argument("--only-changed", action="store_true",
                   help="list only the comparisons that changed (failures and changes; the summary counts all)")
    options.add_output_file(p, "--benchmark-json", "write github-action-benchmark customSmallerIsBetter JSON here")
    # --json meant the file above; elsewhere it means a result on stdout, so it is deprecated here.
    options.add_output_file(p, "--json", "deprecated spelling of --benchmark-json (it will be removed)",
                            dest="json_deprecated")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help=f"real runs: metric to compare (repeatable; default {', '.join(DEFAULT_REAL_METRICS)})")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO,
                   help=f"real runs: median ratio above which a significant change regresses (default {DEFAULT_RATIO})")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"real runs: significance level of the one-sided Mann-Whitney U test (default {DEFAULT_ALPHA})")
    p.add_argument("--floor", action="append", default=[], metavar="METRIC=VALUE",
                   help="real runs: absolute floor of the median increase, e.g. downtime_s=5ms "
                        "(defaults: downtime_s=5ms, total_time_s=50ms, bytes_sent=1MiB)")
    p.add_argument("--holm", action="store_true",
                   help="real runs: Holm-correct alpha over all comparisons of the report (bounds the chance "
                        "that noise alone fails the whole report by alpha)")
    p.add_argument("--min-runs", type=int, default=MIN_RUNS, metavar=options.N,
                   help=f"real runs: repetitions needed per scenario (default {MIN_RUNS})")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="simulated suites: relative tolerance (default 0: exact)")
    options.add_quiet(p, "--no-progress")


def parse_floor(text: str) -> tuple[str, float]:
    """``--floor METRIC=VALUE``, the value in the metric's unit (``5ms`` for a time, ``1MiB`` for bytes)."""
    from sim.errors import ConfigError
    from sim.regress import metric_unit
    from sim.units import parse_duration, parse_size

    metric, sep, value = text.partition("=")
    if not sep or not metric:
        raise ConfigError(f"--floor {text!r}: expected METRIC=VALUE, e.g. downtime_s=5ms")
    unit = metric_unit(metric)
    try:
        amount = parse_duration(value) if unit == "s" else parse_size(value) if unit == "bytes" else float(value)
    except ValueError as e:
        raise ConfigError(f"--floor {text!r}: {e}") from None
    return metric, float(amount)


def _load_current(args: argparse.Namespace, metrics: list[str]) -> dict[str, Any]:
    import json

    from sim.errors import ConfigError
    from sim.regress import BASELINE_FORMAT, Suite, _check_doc, load_records, run_suite

    suite_path = args.suite or (args.current if args.current and args.current.endswith(".toml") else None)
    if suite_path:
        if args.suite and args.current:
            raise ConfigError("give either CURRENT or --suite, not both")
        return run_suite(Suite.from_toml(suite_path), progress=not args.quiet)
    if not args.current:
        raise ConfigError("nothing to compare: give CURRENT (records or suite TOML) or --suite SUITE.toml")
    p = Path(args.current)
    if p.is_file() and p.suffix == ".json":
        try:
            doc = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"not readable JSON ({e})", where=p) from None
        if isinstance(doc, dict) and doc.get("format") == BASELINE_FORMAT:
            _check_doc(doc, str(p))
            return doc
    return load_records(args.current, metrics)


def _looks_like_record(path: Path) -> bool:
    import json

    from sim.regress import BASELINE_FORMAT

    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") != BASELINE_FORMAT and "scenario" in doc


def _write_text_atomic(path: Path, text: str) -> None:
    from sim.atomic import atomic_open

    with atomic_open(path) as f:
        f.write(text)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from sim.errors import ConfigError
    from sim.regress import (
        DEFAULT_REAL_METRICS,
        MIN_RUNS,
        compare_real,
        compare_simulated,
        load_baseline,
        load_records,
        write_baseline,
    )

    bench = args.benchmark_json
    if args.json_deprecated:
        if bench:
            raise ConfigError("give only --benchmark-json (--json is its deprecated spelling)", flag="--json")
        import sys

        print("miglab regress: warning: --json is deprecated, use --benchmark-json (the same file)", file=sys.stderr)
        bench = args.json_deprecated
    if args.min_runs < MIN_RUNS:
        raise ConfigError(f"--min-runs must be at least {MIN_RUNS} (fewer runs cannot show a significant change)")
    floors = dict(parse_floor(f) for f in args.floor)
    metrics = args.metric or list(DEFAULT_REAL_METRICS)
    current = _load_current(args, metrics)
    baseline_path = Path(args.baseline)
    if args.update_baseline:
        if current["kind"] == "real":
            counts = {n: min((len(v) for v in e["metrics"].values()), default=0)
                      for n, e in current["scenarios"].items()}
            short = sorted(n for n, k in counts.items() if k < args.min_runs)
            if short:
                raise ConfigError(f"scenario {short[0]!r} has {counts[short[0]]} finished runs, "
                                  f"need at least {args.min_runs} for a baseline", where=args.current)
        write_baseline(current, baseline_path)
        print(f"{baseline_path}: baseline written ({len(current['scenarios'])} scenarios, {current['kind']})")
        return 0
    if baseline_path.is_dir() or any(c in args.baseline for c in "*?[") or (
            baseline_path.is_file() and _looks_like_record(baseline_path)):
        baseline = load_records(args.baseline, metrics)
    else:
        baseline = load_baseline(baseline_path)
    if baseline["kind"] != current["kind"]:
        raise ConfigError(f"a {baseline['kind']} baseline cannot be compared with a "
                          f"{current['kind']} suite", where=args.baseline)
    if current["kind"] == "simulated":
        if args.rtol < 0:
            raise ConfigError(f"--rtol must not be negative, not {args.rtol}")
        report = compare_simulated(current, baseline, rtol=args.rtol)
    else:
        report = compare_real(current, baseline, metrics, ratio=args.ratio, alpha=args.alpha, floors=floors,
                              min_runs=args.min_runs, holm=args.holm, current_name=args.current,
                              baseline_name=args.baseline)
    markdown = report.to_markdown(only_changed=args.only_changed)
    print(markdown)
    if args.markdown:
        _write_text_atomic(Path(args.markdown), markdown)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(markdown + "\n")
    if bench:
        _write_text_atomic(Path(bench), json.dumps(report.to_benchmark_json(), indent=1) + "\n")
    return 1 if report.failed else 0
