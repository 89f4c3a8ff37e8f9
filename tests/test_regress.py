"""miglab regress: statistical comparison of real-run records and exact comparison of simulated suites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.record import MigrationStats, RunRecord
from sim.regress import (
    DEFAULT_REAL_METRICS,
    Suite,
    compare_real,
    compare_simulated,
    load_baseline,
    load_records,
    run_suite,
)
from sim.scenario import Scenario

DOWNTIME_MEDIAN_S = 0.120
TOTAL_MEDIAN_S = 40.0
NOISE_SIGMA = 0.10  # log-normal spread of repeated real runs (about 10 %)


def _samples(rng: np.random.Generator, n: int, median: float, factor: float = 1.0,
             sigma: float = NOISE_SIGMA) -> list[float]:
    return list(median * factor * np.exp(rng.normal(0.0, sigma, n)))


def write_records(root: Path, name: str, downtimes: list[float], totals: list[float] | None = None,
                  outcome: str = "completed") -> None:
    """Write one real harness RunRecord per repetition (rep-K/<name>.json, as the harness lays them out)."""
    totals = totals or [TOTAL_MEDIAN_S] * len(downtimes)
    for k, (d, t) in enumerate(zip(downtimes, totals, strict=True)):
        rec = RunRecord(scenario=Scenario(name=name), outcome=outcome,
                        stats=MigrationStats(downtime_s=d, total_time_s=t, bytes_sent=5 * 2**30))
        rec.save(root / f"rep-{k}" / f"{name}.json")


def _doc(groups: dict[str, dict[str, list[float]]]) -> dict:
    return {"format": "miglab-baseline", "version": 1, "kind": "real", "suite": "",
            "scenarios": {n: {"scenario": {}, "metrics": m, "failed": 0} for n, m in groups.items()}}


def _draw(rng: np.random.Generator, factor: float, n: int = 7) -> tuple[dict, dict]:
    base = _doc({"s": {"downtime_s": _samples(rng, n, DOWNTIME_MEDIAN_S),
                       "total_time_s": _samples(rng, n, TOTAL_MEDIAN_S)}})
    cur = _doc({"s": {"downtime_s": _samples(rng, n, DOWNTIME_MEDIAN_S, factor),
                      "total_time_s": _samples(rng, n, TOTAL_MEDIAN_S)}})
    return cur, base


# --------------------------------------------------------------------------- real runs, CLI end to end
def test_injected_regression_is_caught_end_to_end(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(1)
    write_records(tmp_path / "base", "precopy-hot", _samples(rng, 7, DOWNTIME_MEDIAN_S))
    write_records(tmp_path / "cur", "precopy-hot", _samples(rng, 7, DOWNTIME_MEDIAN_S, 1.3))
    baseline = tmp_path / "baseline.json"
    assert main(["regress", str(tmp_path / "base"), "--baseline", str(baseline), "--update-baseline"]) == 0
    doc = load_baseline(baseline)
    assert doc["kind"] == "real" and len(doc["scenarios"]["precopy-hot"]["metrics"]["downtime_s"]) == 7

    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    md, js = tmp_path / "report.md", tmp_path / "bench.json"
    code = main(["regress", str(tmp_path / "cur"), "--baseline", str(baseline), "--markdown", str(md),
                 "--benchmark-json", str(js)])
    assert code == 1
    text = md.read_text()
    assert "| precopy-hot | downtime_s |" in text and "**REGRESSION**" in text and "**FAIL**" in text
    # total time did not change: it must not be flagged
    assert any(line.startswith("| precopy-hot | total_time_s |") and "ok (" in line for line in text.splitlines())
    assert summary.read_text().startswith("earlier step\n") and "REGRESSION" in summary.read_text()
    bench = json.loads(js.read_text())
    assert {b["name"] for b in bench} == {"precopy-hot / downtime_s", "precopy-hot / total_time_s"}
    down = next(b for b in bench if b["name"].endswith("downtime_s"))
    assert down["unit"] == "s" and down["value"] > DOWNTIME_MEDIAN_S * 1.15 and down["range"].startswith("± ")
    assert "REGRESSION" in down["extra"]
    assert "REGRESSION" in capsys.readouterr().out


def test_same_distribution_passes_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    write_records(tmp_path / "base", "a", _samples(rng, 6, DOWNTIME_MEDIAN_S))
    write_records(tmp_path / "cur", "a", _samples(rng, 6, DOWNTIME_MEDIAN_S))
    # baseline given directly as a directory of records (two real-run sets compared)
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "base")]) == 0


def test_failed_runs_fail_the_check(tmp_path):
    rng = np.random.default_rng(3)
    write_records(tmp_path / "base", "a", _samples(rng, 5, DOWNTIME_MEDIAN_S))
    write_records(tmp_path / "cur", "a", _samples(rng, 5, DOWNTIME_MEDIAN_S))
    write_records(tmp_path / "cur" / "bad", "a", [0.1], outcome="cancelled: did not converge")
    md = tmp_path / "r.md"
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "base"),
                 "--markdown", str(md)]) == 1
    assert "FAILED RUNS" in md.read_text()


def test_too_few_repetitions_is_a_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(4)
    write_records(tmp_path / "base", "a", _samples(rng, 5, DOWNTIME_MEDIAN_S))
    write_records(tmp_path / "cur", "a", _samples(rng, 4, DOWNTIME_MEDIAN_S))
    md = tmp_path / "r.md"
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "base"),
                 "--markdown", str(md)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has 4 finished runs" in err and "at least 5" in err
    assert not md.exists()
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "b.json"),
                 "--update-baseline"]) == 2
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"scenario": {}, "outcome": "completed", "stats": {}}', "schema_version"),
    ('{"schema_version": 1, "scenario": {"name": "a"}, "outcome": "completed", "stats": {}}', "'downtime_s'"),
])
def test_bad_records_are_one_line_errors(tmp_path, capsys, content, problem):
    (tmp_path / "cur").mkdir()
    (tmp_path / "cur" / "x.json").write_text(content)
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "base.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.json" in err and problem in err


def test_missing_baseline_and_bad_flags(tmp_path, capsys):
    rng = np.random.default_rng(5)
    write_records(tmp_path / "cur", "a", _samples(rng, 5, DOWNTIME_MEDIAN_S))
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such baseline" in capsys.readouterr().err
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "cur"), "--floor", "downtime_s"]) == 2
    assert "--floor" in capsys.readouterr().err
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "cur"), "--min-runs", "3"]) == 2
    assert main(["regress", str(tmp_path / "nothing-here"), "--baseline", str(tmp_path / "cur")]) == 2


# --------------------------------------------------------------------------- real runs, statistics
def test_noise_alone_is_not_flagged():
    """Same distribution on both sides: each comparison's false-alarm rate stays within alpha.

    (The ratio gate keeps it well below alpha at 10 % noise; with several
    comparisons per report the family-wise rate adds up, which --holm bounds.)
    """
    rng = np.random.default_rng(20261126)
    trials = 400
    rows = [r for _ in range(trials) for r in compare_real(*_draw(rng, 1.0)).rows]
    assert len(rows) == 2 * trials
    assert sum(r.failed for r in rows) / len(rows) <= 0.05
    # family-wise: with Holm's correction a whole report (2 metrics) false-alarms at most alpha of the time
    rng = np.random.default_rng(20261127)
    assert sum(compare_real(*_draw(rng, 1.0), holm=True).failed for _ in range(trials)) / trials <= 0.05
    # the worst case for the gates: noise so large that the 1.10 ratio gate no longer helps
    rng = np.random.default_rng(11)
    flagged = 0
    for _ in range(trials):
        base = _doc({"s": {"downtime_s": _samples(rng, 7, DOWNTIME_MEDIAN_S, sigma=0.4)}})
        cur = _doc({"s": {"downtime_s": _samples(rng, 7, DOWNTIME_MEDIAN_S, sigma=0.4)}})
        flagged += compare_real(cur, base, ["downtime_s"]).failed
    assert flagged / trials <= 0.05 + 2 * (0.05 * 0.95 / trials) ** 0.5  # alpha plus two binomial s.e.


def test_a_thirty_percent_regression_is_caught_reliably():
    rng = np.random.default_rng(7)
    trials = 100
    caught = unchanged_flagged = 0
    for _ in range(trials):
        report = compare_real(*_draw(rng, 1.3))
        unchanged_flagged += any(r.failed for r in report.rows if r.metric == "total_time_s")
        caught += any(r.failed and r.metric == "downtime_s" for r in report.rows)
    assert caught / trials >= 0.9
    assert unchanged_flagged / trials <= 0.05  # the untouched metric only false-alarms at the noise rate
    # Holm's correction over 2 comparisons costs little power at N = 7
    rng = np.random.default_rng(7)
    assert sum(compare_real(*_draw(rng, 1.3), holm=True).failed for _ in range(trials)) / trials >= 0.85


def test_floor_and_ratio_gates():
    rng = np.random.default_rng(8)
    # x1.3 on a 3 ms downtime is significant and over the ratio, but the increase (about 1 ms) is under the floor
    cur = _doc({"s": {"downtime_s": _samples(rng, 9, 0.003, 1.3, 0.02)}})
    base = _doc({"s": {"downtime_s": _samples(rng, 9, 0.003, 1.0, 0.02)}})
    row = compare_real(cur, base, ["downtime_s"]).rows[0]
    assert not row.failed and row.p_value < 0.05 and row.ratio > 1.2 and "floor" in row.verdict
    assert compare_real(cur, base, ["downtime_s"], floors={"downtime_s": 0.0005}).rows[0].failed
    # x1.05 with tight noise: significant and over the floor, but under the 1.10 ratio
    cur = _doc({"s": {"downtime_s": _samples(rng, 9, 0.5, 1.05, 0.005)}})
    base = _doc({"s": {"downtime_s": _samples(rng, 9, 0.5, 1.0, 0.005)}})
    row = compare_real(cur, base, ["downtime_s"]).rows[0]
    assert not row.failed and row.p_value < 0.05 and "ratio" in row.verdict
    assert compare_real(cur, base, ["downtime_s"], ratio=1.02).rows[0].failed
    # a big but insignificant change (two wild samples) is not flagged
    cur = _doc({"s": {"downtime_s": [0.1, 0.1, 0.1, 0.9, 0.9]}})
    base = _doc({"s": {"downtime_s": [0.1, 0.1, 0.1, 0.1, 0.1]}})
    row = compare_real(cur, base, ["downtime_s"]).rows[0]
    assert not row.failed and "not significant" in row.verdict


def test_improvement_and_missing_scenarios():
    rng = np.random.default_rng(9)
    base = _doc({"a": {"downtime_s": _samples(rng, 7, 0.2)}, "gone": {"downtime_s": _samples(rng, 7, 0.2)}})
    cur = _doc({"a": {"downtime_s": _samples(rng, 7, 0.2, 0.5)}, "new": {"downtime_s": _samples(rng, 7, 0.2)}})
    rows = {(r.scenario, r.metric): r for r in compare_real(cur, base, ["downtime_s"]).rows}
    assert rows[("a", "downtime_s")].verdict == "improved" and not rows[("a", "downtime_s")].failed
    assert rows[("gone", "(scenario)")].failed
    assert not rows[("new", "(scenario)")].failed


def test_changed_scenario_definition_fails_and_mixed_repetitions_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(10)
    write_records(tmp_path / "base", "a", _samples(rng, 5, DOWNTIME_MEDIAN_S))
    for k, d in enumerate(_samples(rng, 5, DOWNTIME_MEDIAN_S)):
        sc = Scenario(name="a").replace(**{"strategy.downtime_limit_s": "100ms"})
        RunRecord(scenario=sc, outcome="completed",
                  stats=MigrationStats(downtime_s=d, total_time_s=TOTAL_MEDIAN_S)).save(tmp_path / "cur" / f"{k}.json")
    md = tmp_path / "r.md"
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "base"), "--markdown", str(md)]) == 1
    assert "strategy.downtime_limit_s" in md.read_text() and "CHANGED" in md.read_text()
    # one name, two different scenarios among the repetitions: refused
    (tmp_path / "cur" / "0.json").rename(tmp_path / "base" / "odd.json")
    assert main(["regress", str(tmp_path / "cur"), "--baseline", str(tmp_path / "base")]) == 2
    assert "differs from the one in" in capsys.readouterr().err


def test_load_records_groups_by_scenario_name(tmp_path):
    write_records(tmp_path, "x", [0.1] * 5)
    write_records(tmp_path / "more", "y", [0.2] * 6)
    doc = load_records(str(tmp_path), DEFAULT_REAL_METRICS)
    assert {n: len(e["metrics"]["downtime_s"]) for n, e in doc["scenarios"].items()} == {"x": 5, "y": 6}
    # a glob works too
    assert set(load_records(str(tmp_path / "rep-*" / "x.json"), ["downtime_s"])["scenarios"]) == {"x"}


# --------------------------------------------------------------------------- simulated suites
SUITE = """
name = "tiny"

[defaults.workload]
kind = "synthetic"
spec = "hotcold:hot=8MiB,rate=2000"
memory_bytes = "256MiB"

[defaults.link]
bandwidth_Bps = "1Gbit/s"

[[scenario]]
name = "precopy-qemu"
strategy.kind = "precopy"
strategy.stop_rule = "qemu"
strategy.downtime_limit_s = "{limit}"

[[scenario]]
name = "precopy-bhyve"
strategy.kind = "precopy"
strategy.stop_rule = "bhyve"
"""


def _suite(tmp_path: Path, limit: str = "300ms") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.replace("{limit}", limit))
    return path


def test_suite_file_format(tmp_path):
    suite = Suite.from_toml(_suite(tmp_path))
    assert [n for n, _ in suite.scenarios] == ["precopy-qemu", "precopy-bhyve"]
    qemu = dict(suite.scenarios)["precopy-qemu"]
    assert qemu.workload.memory_bytes == 256 * 2**20 and qemu.strategy.downtime_limit_s == pytest.approx(0.3)
    assert dict(suite.scenarios)["precopy-bhyve"].strategy.stop_rule == "bhyve"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[scenario]]\nname = "a"\nstrategy.bogus = 1\n')
    with pytest.raises(Exception, match="bad.toml.*bogus"):
        Suite.from_toml(bad)


def test_simulated_suite_exact_comparison_and_update(tmp_path, capsys):
    suite = _suite(tmp_path)
    baseline = tmp_path / "baselines" / "tiny.json"
    assert main(["regress", "--suite", str(suite), "--baseline", str(baseline), "-q"]) == 2  # no baseline yet
    assert main(["regress", "--suite", str(suite), "--baseline", str(baseline), "--update-baseline", "-q"]) == 0
    doc = load_baseline(baseline)
    assert doc["kind"] == "simulated" and set(doc["scenarios"]) == {"precopy-qemu", "precopy-bhyve"}
    assert main(["regress", str(suite), "--baseline", str(baseline), "-q"]) == 0  # deterministic: identical

    # one parameter changed -> the definition and (here) the metrics change: fail
    (tmp_path / "c").mkdir()
    changed = _suite(tmp_path / "c", "30ms")
    md = tmp_path / "r.md"
    assert main(["regress", "--suite", str(changed), "--baseline", str(baseline), "-q", "--markdown", str(md)]) == 1
    text = md.read_text()
    assert "| precopy-qemu | (definition) |" in text and "**CHANGED**" in text
    assert not any("precopy-bhyve" in line and "CHANGED" in line for line in text.splitlines())
    # --update-baseline rewrites it; then the changed suite passes
    assert main(["regress", "--suite", str(changed), "--baseline", str(baseline), "--update-baseline", "-q"]) == 0
    assert load_baseline(baseline)["scenarios"]["precopy-qemu"]["scenario"]["strategy"]["downtime_limit_s"] == 0.03
    assert main(["regress", "--suite", str(changed), "--baseline", str(baseline), "-q"]) == 0


def test_exact_comparison_sees_the_last_bit():
    suite = Suite.from_dict({"name": "one", "scenario": [{"name": "a", "workload": {"memory_bytes": "64MiB"}}]})
    current = run_suite(suite)
    baseline = json.loads(json.dumps(current))
    assert not compare_simulated(current, baseline).failed
    d = baseline["scenarios"]["a"]["metrics"]["downtime_s"]
    baseline["scenarios"]["a"]["metrics"]["downtime_s"] = float(np.nextafter(d, np.inf))
    report = compare_simulated(current, baseline)
    assert report.failed and [r.metric for r in report.rows if r.failed] == ["downtime_s"]
    assert not compare_simulated(current, baseline, rtol=1e-9).failed


def test_project_suite_matches_committed_baseline(tmp_path):
    """The project's own simulated suite (what .ci/run checks). On failure: if the change is intended, run
    ``miglab regress --suite results/baselines/sim-suite.toml --baseline results/baselines/sim.json
    --update-baseline`` and commit the new baseline with the change."""
    root = Path(__file__).resolve().parent.parent / "results" / "baselines"
    md = tmp_path / "report.md"
    code = main(["regress", "--suite", str(root / "sim-suite.toml"), "--baseline", str(root / "sim.json"), "-q",
                 "--markdown", str(md)])
    assert code == 0, md.read_text() if md.exists() else "no report"


# --------------------------------------------------------------------------- the example CI workflow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _workflow_commands() -> list[list[str]]:
    import re
    import shlex

    yaml = pytest.importorskip("yaml")
    flow = yaml.safe_load((EXAMPLES / "ci-migration-regression.yml").read_text())
    commands = []
    for step in flow["jobs"]["migration"]["steps"]:
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            line = line.strip()
            if line.startswith("miglab "):
                line = re.sub(r"\$\(.*?\)|\$\{?\w+\}?", "x", line)
                commands.append(shlex.split(line)[1:])
    return commands


def test_example_workflow_uses_real_miglab_commands():
    from harness.cli import build_parser

    commands = _workflow_commands()
    verbs = [c[0] for c in commands]
    assert verbs.count("regress") == 2 and "migrate" in verbs and "harness" in verbs
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # SystemExit (a failed test) on an unknown flag
        assert callable(args.func)
    regress = [parser.parse_args(c) for c in commands if c[0] == "regress"]
    assert regress[0].markdown and regress[0].benchmark_json and not regress[0].update_baseline
    assert regress[1].update_baseline


def test_example_scenarios_are_valid_and_named_after_their_files():
    files = sorted((EXAMPLES / "ci" / "migration").glob("*.toml"))
    assert len(files) >= 3
    for f in files:
        s = Scenario.from_toml(f)
        assert s.name == f.stem and s.workload.kind == "synthetic" and s.strategy.kind in ("precopy", "postcopy")


# --------------------------------------------------------------------------- the report
def _tiny_suite() -> Suite:
    return Suite.from_dict({"name": "tiny", "defaults": {"workload": {"memory_bytes": "64MiB"}},
                            "scenario": [{"name": n, "strategy": {"downtime_limit_s": lim}}
                                         for n, lim in (("a", "300ms"), ("b", "100ms"), ("c", "30ms"))]})


def test_report_lists_failures_first_with_a_line_per_metric_and_provenance():
    current = run_suite(_tiny_suite())
    baseline = json.loads(json.dumps(current))
    baseline["scenarios"]["c"]["metrics"]["downtime_s"] *= 0.5
    baseline["provenance"] = {**baseline["provenance"], "git_commit": "f" * 40, "host": "baseline-runner"}
    text = compare_simulated(current, baseline).to_markdown()
    table = [line for line in text.splitlines() if line.startswith("| ") and "scenario | metric" not in line]
    assert table[0].startswith("| c | downtime_s |") and "**CHANGED**" in table[0]
    assert all("**" not in line for line in table[1:])
    assert "- **downtime_s**: 1 of 3 failed; ratio current/baseline 2.000 (c)" in text
    assert "- **total_time_s**: 0 of 3 failed" in text
    assert f"- current: commit {current['provenance']['git_commit'][:12]}" in text \
        or "- current: not a checkout" in text
    assert "- baseline: commit ffffffffffff" in text and "baseline-runner" in text


def test_only_changed_hides_what_did_not_move():
    current = run_suite(_tiny_suite())
    baseline = json.loads(json.dumps(current))
    report = compare_simulated(current, baseline)
    assert "No comparison changed." in report.to_markdown(only_changed=True)
    assert "| a | downtime_s |" in report.to_markdown()
    baseline["scenarios"]["b"]["metrics"]["bytes_sent"] += 4096
    text = compare_simulated(current, baseline).to_markdown(only_changed=True)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "scenario | metric" not in line]
    assert rows == [line for line in rows if line.startswith("| b | bytes_sent |")] and len(rows) == 1
    assert "(8 unchanged comparisons not shown)" in text


def test_real_only_changed_keeps_improvements_and_drops_ok():
    rng = np.random.default_rng(5)
    cur, base = _draw(rng, 0.5)  # downtime halves: "improved"; total time unchanged: "ok (...)"
    report = compare_real(cur, base)
    text = report.to_markdown(only_changed=True)
    assert "| s | downtime_s |" in text and "improved" in text and "| s | total_time_s |" not in text


def test_changed_definition_shows_the_fields_not_hashes():
    current = run_suite(_tiny_suite())
    baseline = json.loads(json.dumps(current))
    sc = baseline["scenarios"]["a"]
    sc["scenario"]["strategy"]["downtime_limit_s"] = 0.5
    sc["scenario"]["link"]["rtt_s"] = 0.01
    sc["scenario_id"] = "0" * 16
    row = next(r for r in compare_simulated(current, baseline).rows if r.metric == "(definition)")
    assert row.failed and row.scenario == "a"
    assert row.baseline == "link.rtt_s = 0.01; strategy.downtime_limit_s = 0.5"
    assert row.current == f"link.rtt_s = {current['scenarios']['a']['scenario']['link']['rtt_s']}; " \
                          "strategy.downtime_limit_s = 0.3"
    assert "0" * 16 not in compare_simulated(current, baseline).to_markdown()
    # the same fields under a different id: an input file changed content
    sc["scenario"] = json.loads(json.dumps(current["scenarios"]["a"]["scenario"]))
    row = next(r for r in compare_simulated(current, baseline).rows if r.metric == "(definition)")
    assert "input file" in row.current


def test_baseline_records_provenance_and_an_unchanged_rewrite_leaves_the_file(tmp_path):
    from sim.regress import write_baseline

    path = tmp_path / "b.json"
    doc = run_suite(_tiny_suite())
    write_baseline(doc, path)
    written = path.read_text()
    stored = load_baseline(path)
    assert stored["provenance"]["versions"]["miglab"] == doc["miglab_version"]
    assert {"date", "host", "cpu_model", "git_commit", "command"} <= set(stored["provenance"])
    again = {**doc, "provenance": {**doc["provenance"], "date": "2099-01-01T00:00:00+00:00"}}
    write_baseline(again, path)
    assert path.read_text() == written  # same numbers: the file (and its provenance) stays as it was
    doc["scenarios"]["a"]["metrics"]["downtime_s"] += 1.0
    write_baseline(doc, path)
    assert load_baseline(path)["scenarios"]["a"]["metrics"]["downtime_s"] == doc["scenarios"]["a"]["metrics"][
        "downtime_s"]


def test_regress_json_is_a_deprecated_alias_of_benchmark_json(tmp_path, capsys):
    suite, baseline = "results/baselines/sim-suite.toml", "results/baselines/sim.json"
    js = tmp_path / "bench.json"
    assert main(["regress", "--suite", suite, "--baseline", baseline, "-q", "--json", str(js)]) == 0
    assert "--json is deprecated, use --benchmark-json" in capsys.readouterr().err
    assert json.loads(js.read_text())
