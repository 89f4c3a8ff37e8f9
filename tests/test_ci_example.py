"""The example CI workflow (examples/ci-migration-regression.yml) works: its steps run here, in order, as Actions would.

A small runner reads the workflow, evaluates each step's ``if:`` and ``${{ }}``
expressions, runs the ``run:`` scripts with bash in a temporary "hypervisor
repository" (the example files laid out as the README says), and carries
``GITHUB_OUTPUT``, ``GITHUB_ENV`` and ``GITHUB_PATH`` from step to step.
``uses:`` actions are not run (checkout is the temp dir; the artifact and
benchmark actions only need their files to exist). The install step runs as
written, against a fake ``python3`` whose venv ``pip`` records what it was asked
to install and puts a ``miglab`` on PATH that runs this checkout (PYTHONPATH).
No root, no QEMU: the ``simulated`` job runs in full; the ``migration`` job's
gating (bootstrap, compare, new baseline, fail) runs on pre-written run records
in place of its build and migrate steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
WORKFLOW = EXAMPLES / "ci-migration-regression.yml"
MIGLAB_URL = "https://git.example.invalid/miglab.git"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


# --------------------------------------------------------------------------- a tiny Actions runner
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>&&|\|\||==|!=|!|\(|\))|(?P<num>\d+(?:\.\d+)?)"
                    r"|(?P<call>[A-Za-z_]\w*)\(\)|(?P<name>[A-Za-z_][\w.-]*))")


def _to_python(expr: str) -> str:
    """Translate a GitHub Actions expression (the subset this workflow uses) into Python source."""
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse expression {expr!r} at {expr[pos:]!r}")
        pos = m.end()
        if m["str"] is not None:
            out.append(repr(m["str"][1:-1].replace("''", "'")))
        elif m["op"] is not None:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(m["op"], f" {m['op']} "))
        elif m["num"] is not None:
            out.append(m["num"])
        elif m["call"] is not None:
            out.append(f"_fn({m['call']!r})")
        elif m["name"] in ("true", "false", "null"):
            out.append({"true": "True", "false": "False", "null": "None"}[m["name"]])
        else:
            out.append(f"_ctx({m['name']!r})")
    return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Run:
    """The state of one job run: contexts, the files Actions provides, and what each step did."""

    workdir: Path
    event: str = "pull_request"
    inputs: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)  # (step name, "success" | "failure" | "skipped")
    path: list[str] = field(default_factory=list)
    failed: bool = False

    def ctx(self, name: str) -> Any:
        head, _, rest = name.partition(".")
        if head == "github":
            return {"event_name": self.event, "ref": "refs/pull/1/merge"}.get(rest, "")
        if head == "inputs":
            return self.inputs.get(rest)
        if head == "vars":
            return self.variables.get(rest)
        if head == "secrets":
            return ""
        if head == "env":
            return self.env.get(rest, "")
        if head == "steps":
            sid, _, what = rest.partition(".")
            step = self.steps.get(sid, {})
            if what.startswith("outputs."):
                return step.get("outputs", {}).get(what.removeprefix("outputs."), "")
            return step.get(what, "")
        raise KeyError(name)

    def evaluate(self, expr: str) -> Any:
        expr = expr.strip()
        if expr.startswith("${{") and expr.endswith("}}"):
            expr = expr[3:-2]
        funcs = {"always": True, "success": not self.failed, "failure": self.failed, "cancelled": False}
        return eval(_to_python(expr), {"__builtins__": {}}, {"_ctx": self.ctx, "_fn": funcs.__getitem__})

    def substitute(self, text: str) -> str:
        return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _text(self.evaluate(m[1])), text)


def run_job(flow: dict[str, Any], job: str, run: Run, replace: dict[str, str] | None = None) -> Run:
    """Run ``job``'s steps in order; ``replace`` maps a step name to a script run in its place."""
    replace = replace or {}
    jobdef = flow["jobs"][job]
    run.env = {k: run.substitute(_text(v)) for k, v in {**flow.get("env", {}), **jobdef.get("env", {})}.items()}
    temp = run.workdir / "_runner_temp"
    temp.mkdir(exist_ok=True)
    for i, step in enumerate(jobdef["steps"]):
        name = step.get("name") or step.get("uses") or f"step {i}"
        sid = step.get("id", f"__{i}")
        cond = step.get("if", "success()")
        if not run.evaluate(cond if isinstance(cond, str) else _text(cond)):
            run.steps[sid] = {"outcome": "skipped", "outputs": {}}
            run.log.append((name, "skipped"))
            continue
        if "uses" in step and name not in replace:
            _check_action(run, step)
            run.steps[sid] = {"outcome": "success", "outputs": {}}
            run.log.append((name, "success"))
            continue
        script = replace.get(name, step.get("run", ""))
        files = {k: temp / f"{k.lower()}-{i}" for k in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH")}
        for f in files.values():
            f.write_text("")
        step_env = {k: run.substitute(_text(v)) for k, v in step.get("env", {}).items()}
        env = {"HOME": os.environ.get("HOME", str(run.workdir)), "LC_ALL": "C.UTF-8",
               "PATH": os.pathsep.join([*run.path, os.environ["PATH"]]),
               "RUNNER_TEMP": str(temp), "GITHUB_WORKSPACE": str(run.workdir),
               "GITHUB_STEP_SUMMARY": str(run.workdir / "_step_summary.md"),
               **run.env, **step_env, **{k: str(v) for k, v in files.items()}}
        (temp / f"step-{i}.sh").write_text(run.substitute(script))
        done = subprocess.run(["bash", "-e", str(temp / f"step-{i}.sh")], cwd=run.workdir, env=env,
                              capture_output=True, text=True, timeout=600)
        outputs = dict(line.split("=", 1) for line in files["GITHUB_OUTPUT"].read_text().splitlines() if "=" in line)
        for line in files["GITHUB_ENV"].read_text().splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                run.env[key] = value
        run.path = [p for p in files["GITHUB_PATH"].read_text().splitlines() if p][::-1] + run.path
        outcome = "success" if done.returncode == 0 else "failure"
        run.steps[sid] = {"outcome": outcome, "outputs": outputs, "stdout": done.stdout, "stderr": done.stderr}
        run.log.append((name, outcome))
        if done.returncode:
            run.failed = True
    return run


def _check_action(run: Run, step: dict[str, Any]) -> None:
    """What the actions this workflow uses need from the steps before them."""
    action = step["uses"].split("@")[0]
    with_ = {k: run.substitute(_text(v)) for k, v in step.get("with", {}).items()}
    if action == "benchmark-action/github-action-benchmark":
        json.loads((run.workdir / with_["output-file-path"]).read_text())  # it must exist and be JSON
    elif action not in ("actions/checkout", "actions/upload-artifact"):
        raise AssertionError(f"unexpected action {action}")


# --------------------------------------------------------------------------- the hypervisor repository
def _fake_python3(bin_dir: Path) -> Path:
    """A ``python3`` for the install step: ``-m venv DIR`` makes DIR/bin/pip, which logs and installs a shim."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = (f"#!/bin/sh\nPYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} -c "
            "'import sys; from harness.cli import main; sys.exit(main())' \"$@\"\n")
    pip = ("#!/bin/sh\n"
           "printf '%s\\n' \"$@\" >> \"$(dirname \"$0\")/../pip-args\"\n"
           f"cat > \"$(dirname \"$0\")/miglab\" <<'SHIM'\n{shim}SHIM\n"
           "chmod +x \"$(dirname \"$0\")/miglab\"\n")
    python3 = ("#!/bin/sh\n"
               "if [ \"$1\" = -m ] && [ \"$2\" = venv ]; then\n"
               "  mkdir -p \"$3/bin\"\n"
               f"  cat > \"$3/bin/pip\" <<'PIP'\n{pip}PIP\n"
               "  chmod +x \"$3/bin/pip\"\n  exit 0\nfi\n"
               f"exec {sys.executable} \"$@\"\n")
    path = bin_dir / "python3"
    path.write_text(python3)
    path.chmod(0o755)
    return bin_dir


def _hypervisor_repo(tmp_path: Path) -> Path:
    """The example files where the workflow's header says to copy them."""
    repo = tmp_path / "hypervisor"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / "migration-regression.yml")
    shutil.copytree(EXAMPLES / "ci" / "migration", repo / "ci" / "migration")
    shutil.copy(EXAMPLES / "ci" / "migration-sim.toml", repo / "ci" / "migration-sim.toml")
    return repo


def _flow(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / ".github" / "workflows" / "migration-regression.yml").read_text())


def _new_run(repo: Path, tmp_path: Path, **kw: Any) -> Run:
    run = Run(repo, variables={"MIGLAB_URL": MIGLAB_URL}, **kw)
    run.path = [str(_fake_python3(tmp_path / "fakebin"))]
    (repo / "_step_summary.md").unlink(missing_ok=True)
    return run


def _outcomes(run: Run) -> dict[str, str]:
    return dict(run.log)


# --------------------------------------------------------------------------- the simulated job
@pytest.mark.slow
def test_simulated_job_bootstraps_then_passes_then_fails_on_a_regression(tmp_path: Path) -> None:
    repo = _hypervisor_repo(tmp_path)
    flow = _flow(repo)
    baseline = repo / "ci" / "migration-sim-baseline.json"

    # 1. first run: no baseline -> one is made, the job passes
    first = run_job(flow, "simulated", _new_run(repo, tmp_path))
    steps = _outcomes(first)
    assert not first.failed, first.steps
    assert steps["Install miglab"] == "success"
    assert steps["New baseline (first run, or manual update)"] == "success"
    assert steps["Fail on a changed prediction"] == "skipped"
    assert first.steps["regress"]["outputs"] == {"bootstrap": "true"}
    assert "::notice::no baseline" in first.steps["regress"]["stdout"]
    doc = json.loads(baseline.read_text())
    assert doc["kind"] == "simulated" and set(doc["scenarios"]) == {p.stem for p in (repo / "ci/migration").glob("*.toml")}
    assert "made one from this run" in (repo / "_step_summary.md").read_text()
    # the install step asked pip for miglab from the git URL at the default ref
    pip_args = (tmp_path / "hypervisor" / "_runner_temp" / "miglab" / "pip-args").read_text().splitlines()
    assert f"miglab @ git+{MIGLAB_URL}@main" in pip_args
    written = baseline.read_text()

    # 2. second run, baseline committed: compared exactly, passes, the baseline is left alone
    second = run_job(flow, "simulated", _new_run(repo, tmp_path))
    steps = _outcomes(second)
    assert not second.failed, second.steps
    assert second.steps["regress"]["outputs"] == {"code": "0"}
    assert steps["New baseline (first run, or manual update)"] == "skipped"
    assert baseline.read_text() == written
    assert "**PASS**" in (repo / "sim-report.md").read_text()

    # 3. a pull request that slows the link: the predictions change, the job fails at the last step
    suite = repo / "ci" / "migration-sim.toml"
    suite.write_text(suite.read_text().replace('bandwidth_Bps = "1Gbit/s"', 'bandwidth_Bps = "500Mbit/s"'))
    third = run_job(flow, "simulated", _new_run(repo, tmp_path))
    steps = _outcomes(third)
    assert third.failed
    assert third.steps["regress"]["outputs"] == {"code": "1"}
    assert steps["Keep the report and the baseline"] == "success"  # always(): the report is kept
    assert steps["Fail on a changed prediction"] == "failure"
    assert steps["New baseline (first run, or manual update)"] == "skipped"
    report = (repo / "sim-report.md").read_text()
    assert "**FAIL**" in report and "link.bandwidth_Bps" in report
    assert baseline.read_text() == written

    # 4. the same change with a manual baseline update: a new baseline, and the job passes
    fourth = run_job(flow, "simulated", _new_run(repo, tmp_path, event="workflow_dispatch",
                                                 inputs={"update_baseline": True, "miglab_ref": "v0.1.0"}))
    steps = _outcomes(fourth)
    assert not fourth.failed, fourth.steps
    assert steps["New baseline (first run, or manual update)"] == "success"
    assert steps["Fail on a changed prediction"] == "skipped"
    assert baseline.read_text() != written
    pip_args = (tmp_path / "hypervisor" / "_runner_temp" / "miglab" / "pip-args").read_text().splitlines()
    assert f"miglab @ git+{MIGLAB_URL}@v0.1.0" in pip_args


def test_install_without_a_miglab_url_says_what_to_set(tmp_path: Path) -> None:
    repo = _hypervisor_repo(tmp_path)
    run = _new_run(repo, tmp_path)
    run.variables = {}
    done = run_job(_flow(repo), "simulated", run)
    assert done.failed and _outcomes(done)["Install miglab"] == "failure"
    assert "::error::set the repository variable MIGLAB_URL" in done.steps["install"]["stdout"]
    assert _outcomes(done)["Predict the suite and compare against the baseline"] == "skipped"


def test_simulated_suite_is_the_real_suite() -> None:
    """ci/migration-sim.toml predicts exactly the scenarios that the migration job measures."""
    from sim.regress import Suite
    from sim.scenario import Scenario

    suite = dict(Suite.from_toml(EXAMPLES / "ci" / "migration-sim.toml").scenarios)
    files = sorted((EXAMPLES / "ci" / "migration").glob("*.toml"))
    assert set(suite) == {f.stem for f in files}
    for f in files:
        assert suite[f.stem] == Scenario.from_toml(f), f.name


# --------------------------------------------------------------------------- the migration job's gating
_REAL_ONLY = ("Build dependencies", "Build the hypervisor", "Build the guest (kernel + initramfs with the workload program)")


def _write_records(root: Path, factor: float, seed: int) -> None:
    import numpy as np

    from harness.record import MigrationStats, RunRecord
    from sim.scenario import Scenario

    rng = np.random.default_rng(seed)
    for f in sorted((EXAMPLES / "ci" / "migration").glob("*.toml")):
        scenario = Scenario.from_toml(f)
        for rep in range(1, 8):
            d = 0.120 * factor * float(np.exp(rng.normal(0, 0.05)))
            t = 5.0 * float(np.exp(rng.normal(0, 0.05)))
            RunRecord(scenario=scenario, outcome="completed",
                      stats=MigrationStats(downtime_s=d, total_time_s=t, bytes_sent=600 * 2**20)).save(
                root / f"rep-{rep}" / f"{f.stem}.json")


@pytest.mark.slow
def test_migration_job_bootstraps_compares_and_fails_on_a_regression(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    repo = _hypervisor_repo(tmp_path)
    flow = _flow(repo)
    names = [s.get("name") for s in flow["jobs"]["migration"]["steps"]]
    run_step = next(n for n in names if n and n.startswith("Run the migration suite"))
    replace = {name: "true" for name in _REAL_ONLY}
    baseline = repo / "ci" / "migration-baseline.json"

    def job(factor: float, seed: int) -> Run:
        shutil.rmtree(repo / "results", ignore_errors=True)
        # in place of QEMU: the run records the migrate loop would have written
        replace[run_step] = f"{sys.executable} -c 'pass'"
        _write_records(repo / "results" / "migration", factor, seed)
        return run_job(flow, "migration", _new_run(repo, tmp_path), replace)

    first = job(1.0, 1)
    steps = _outcomes(first)
    assert not first.failed, first.steps
    assert steps["New baseline (first run, or manual update)"] == "success"
    assert steps["Track the history (github-action-benchmark)"] == "skipped"
    assert json.loads(baseline.read_text())["kind"] == "real"
    pip_args = (repo / "_runner_temp" / "miglab" / "pip-args").read_text().splitlines()
    assert f"miglab[harness] @ git+{MIGLAB_URL}@main" in pip_args

    second = job(1.0, 2)
    assert not second.failed, second.steps
    assert second.steps["regress"]["outputs"] == {"code": "0"}
    assert _outcomes(second)["Track the history (github-action-benchmark)"] == "success"

    third = job(1.6, 3)  # downtime 60 % longer in every scenario
    steps = _outcomes(third)
    assert third.failed and third.steps["regress"]["outputs"] == {"code": "1"}
    assert steps["Fail on regression"] == "failure" and steps["Keep the records and the report"] == "success"
    assert "REGRESSION" in (repo / "migration-report.md").read_text()


def test_expression_subset() -> None:
    run = Run(Path("."), event="workflow_dispatch", inputs={"update_baseline": True},
              steps={"regress": {"outcome": "success", "outputs": {"code": "1"}}})
    assert run.evaluate("${{ github.event_name == 'workflow_dispatch' && inputs.update_baseline }}") is True
    assert run.evaluate("steps.regress.outputs.code == '1' && !(github.event_name == 'push')") is True
    assert run.evaluate("inputs.miglab_url || vars.MIGLAB_URL || 'main'") == "main"
    assert run.evaluate("!cancelled() && steps.regress.outputs.bootstrap == 'true'") is False
    assert run.substitute("x-${{ env.NOPE }}-${{ 'a' }}") == "x--a"
