"""`miglab calibrate-host` on runs of the bhyve runner (fake FreeBSD hosts in tests/fakes/): bhyve's own constants.

The runner's records become validation runs with ``--validation-trace``; the fit
(:mod:`sim.bhyvefit`) names bhyve's per-page send, the dirty-list search and the
fixed cost. Two checks: the whole path on records the fake runner wrote, and the
same path recovering known constants from records whose measurements the
simulator made with them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.record import MigrationStats, RunRecord
from sim import bhyvefit, simulate
from sim.trace import save
from sim.workload import synth_trace

REPO = Path(__file__).resolve().parents[1]
FAKES = REPO / "tests" / "fakes"
VM = "testvm"
MiB = 2**20
SIZES_MIB = {"small": 32, "mid": 64, "large": 128, "huge": 192}
#: Three guest sizes, each on the link as is and shaped to half (tbf): the sizes separate the search
#: from the fixed cost, the rates the per-page send from the per-byte rate.
SIZES_RATES = {f"{name}-{half}": mib for name, mib in (("s", 32), ("m", 96), ("l", 192)) for half in ("full", "half")}


@pytest.fixture
def fake(tmp_path):
    state = tmp_path / "state"
    (state / "hostA" / "vmm").mkdir(parents=True)
    (state / "hostB").mkdir()
    (state / "modes.json").write_text("{}")
    env = {**os.environ, "PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}", "MIGLAB_FAKE_STATE": str(state),
           "PYTHONPATH": str(REPO)}
    return state, env


def migrate(state: Path, env: dict, out: Path, name: str, trace: Path, rep: int,
            mib: int = 64) -> subprocess.CompletedProcess:
    (state / "hostA" / "vmm" / VM).touch()  # the guest runs on the source again
    (state / "hostB" / "destroyed").unlink(missing_ok=True)  # and the destination is clean
    out.parent.mkdir(parents=True, exist_ok=True)  # an -o FILE's directory must exist
    return subprocess.run(
        [sys.executable, "-m", "harness.bhyve", "migrate", "--vm", VM, "--src-prefix", "ssh root@hostA",
         "--dst-prefix", "ssh root@hostB", "--src-ip", "10.0.0.1", "--dst-ip", "10.0.0.2", "--vmm-dir", "vmm",
         "--bhyve-args", "-c 2 -m 1G -S", "--probe", "ping:10.0.0.5", "--src-iface", "em0",
         "--memory", f"{mib}MiB", "--workload", "hotcold:hot=4MiB,rate=2000", "--timeout", "20s",
         "--poll-interval", "20ms", "--name", name, "--validation-trace", str(trace), "--repetition", str(rep),
         "-o", str(out)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def campaign(tmp_path: Path, fake, sizes: dict[str, int] = SIZES_MIB) -> Path:
    """Records of the fake runner for each guest size, each with the trace of its workload."""
    state, env = fake
    runs = tmp_path / "campaign" / "runs"
    traces = tmp_path / "campaign" / "traces"
    traces.mkdir(parents=True)
    for name, mib in sizes.items():
        trace = traces / f"{name}.npz"
        save(synth_trace("hotcold:hot=4MiB,rate=2000", mib * MiB, seconds=20.0, seed=1), trace)
        cp = migrate(state, env, runs / f"{name}__r1.json", name, trace, 1, mib)
        assert cp.returncode == 0, cp.stderr
    return runs


def calibrate_host(runs: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "calibrate-host", str(runs), "-o", str(out),
                           "--heldout-every", "4"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_runner_records_are_validation_runs_with_their_trace(tmp_path, fake):
    runs = campaign(tmp_path, fake)
    rec = RunRecord.load(runs / "mid__r1.json")
    v = rec.options["validation"]
    assert rec.hypervisor == "bhyve" and rec.scenario.host.hypervisor == "bhyve"
    assert v["scenario"] == "mid" and v["repetition"] == 1 and v["trace"] == "../traces/mid.npz"
    assert (runs / v["trace"]).resolve() == (tmp_path / "campaign" / "traces" / "mid.npz").resolve()


def test_calibrate_host_fits_bhyves_constants_on_fake_runner_records(tmp_path, fake):
    runs = campaign(tmp_path, fake)
    cp = calibrate_host(runs, tmp_path / "host.json", fake[1])
    assert cp.returncode == 0, cp.stderr
    doc = json.loads((tmp_path / "host.json").read_text())
    c = doc["constants"]
    assert set(c) == {k.removeprefix("host.") for k in bhyvefit.FIT_PARAMS}
    assert all(v >= 0 for v in c.values())
    assert "bhyve_chunk_pause_s" in doc["fit"]["not_fitted"]
    assert doc["fit"]["train_runs"] + doc["fit"]["heldout_runs"] == len(SIZES_MIB)


def test_calibrate_host_recovers_known_bhyve_constants(tmp_path, fake):
    """The records' measurements replaced by the simulator's with known constants: the fit finds them again."""
    from harness.validate.compare import sim_scenario, validated_runs

    runs = campaign(tmp_path, fake, SIZES_RATES)
    truth = {"host.switchover_s": 0.03, "host.throughput_efficiency": 0.9, "host.bhyve_page_send_s": 4e-6,
             "host.bhyve_dirty_search_s_per_page": 2e-7}
    for run in validated_runs([runs]):
        rec = run.record
        if run.scenario.endswith("-half"):  # this one ran on the link shaped to half its rate
            rec = dataclasses.replace(rec, scenario=rec.scenario.replace(
                **{"link.bandwidth_Bps": rec.scenario.link.bandwidth_Bps / 2}))
        r = simulate(sim_scenario(dataclasses.replace(run, record=rec)).replace(**truth))
        stats = MigrationStats(total_time_s=r.total_time_s, downtime_s=r.downtime_s, bytes_sent=int(r.bytes_sent),
                               dirty_sync_count=4)
        dataclasses.replace(rec, stats=stats).save(run.path)
    cp = calibrate_host(runs, tmp_path / "host.json", fake[1])
    assert cp.returncode == 0, cp.stderr
    c = json.loads((tmp_path / "host.json").read_text())["constants"]
    for k, v in truth.items():
        assert c[k.removeprefix("host.")] == pytest.approx(v, rel=0.05), k


def test_validation_trace_needs_an_output_and_an_existing_file(tmp_path, fake):
    state, env = fake
    cp = migrate(state, env, tmp_path / "r.json", "small", tmp_path / "missing.npz", 1)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "missing.npz" in cp.stderr
    assert not (tmp_path / "r.json").exists()
