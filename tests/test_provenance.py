"""sim.provenance: the one place that says where, when and from what a result was made."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim import __version__
from sim import provenance as prov
from sim.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_provenance_has_the_pyperf_fields() -> None:
    p = prov.provenance()
    for key in ("date", "host", "cpu_model", "cpu_count", "load_average", "command", "git_commit", "versions"):
        assert key in p, key
    assert dt.datetime.fromisoformat(p["date"]).utcoffset() == dt.timedelta(0)
    assert p["command"] == sys.argv
    assert p["versions"]["miglab"] == __version__
    assert {"python", "numpy", "simpy"} <= set(p["versions"])
    assert "qemu" not in p["versions"] and "seed" not in p and "inputs" not in p
    assert isinstance(p["cpu_count"], int) and p["cpu_count"] >= 1
    json.dumps(p, allow_nan=False)  # plain JSON


def test_optional_parts_appear_when_given() -> None:
    p = prov.provenance(seed=7, inputs={"traces/a.npz": "ab" * 32}, qemu_version="10.0.2", extra={"suite": "s"})
    assert p["seed"] == 7 and p["inputs"] == {"traces/a.npz": "ab" * 32}
    assert p["versions"]["qemu"] == "10.0.2" and p["suite"] == "s"
    with pytest.raises(ValueError, match="date"):
        prov.provenance(extra={"date": "yesterday"})


def test_each_call_is_a_fresh_dict() -> None:
    a = prov.provenance(qemu_version="1")
    b = prov.provenance()
    assert "qemu" not in b["versions"]  # the cached versions table was not mutated
    a["host"] = "elsewhere"
    assert prov.provenance()["host"] == b["host"] != "elsewhere"


def test_git_commit_of_this_checkout() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not running from a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert prov.provenance()["git_commit"] == head


def test_no_git_is_not_a_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary anywhere
    assert prov._git_state(prov._PACKAGE_DIR) == (prov.NOT_A_CHECKOUT, None)


def test_a_copy_outside_any_checkout_is_not_a_checkout(tmp_path: Path) -> None:
    (tmp_path / "sim").mkdir()
    assert prov._git_state(tmp_path / "sim") == (prov.NOT_A_CHECKOUT, None)


def test_another_repository_around_an_installed_copy_is_not_ours(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    installed = tmp_path / "venv" / "site-packages" / "sim"
    installed.mkdir(parents=True)
    assert prov._git_state(installed) == (prov.NOT_A_CHECKOUT, None)


def test_importable_without_pandas() -> None:
    code = ("import sys; import sim.provenance as p; p.provenance(); "
            "assert 'pandas' not in sys.modules and 'simpy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    csv = tmp_path / "summary.csv"
    csv.write_text("a\n1\n")
    meta = prov.provenance(seed=1)
    side = prov.write_sidecar(csv, meta)
    assert side == tmp_path / "summary.csv.meta.json"
    assert prov.read_sidecar(csv) == meta
    assert prov.read_sidecar(tmp_path / "other.csv") == {}
    side.write_text("[1, 2")
    with pytest.raises(ConfigError, match=r"summary\.csv\.meta\.json"):
        prov.read_sidecar(csv)


def test_parquet_schema_metadata(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"x": [1, 2], "name": ["a", "b"]})
    path = tmp_path / "t.parquet"
    meta = prov.provenance(inputs={"f": "0" * 64})
    prov.write_parquet(df, path, meta)
    assert prov.read_parquet_provenance(path) == meta
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    df.to_parquet(tmp_path / "plain.parquet", index=False)
    assert prov.read_parquet_provenance(tmp_path / "plain.parquet") == {}


def test_describe_names_commit_and_machine() -> None:
    meta = {"git_commit": "a456df92e7025f7f570c8ff8c5a2a9018a4a89c8", "git_dirty": True, "host": "ci-7",
            "cpu_model": "AMD EPYC", "cpu_count": 4, "versions": {"miglab": "0.1.0"}, "date": "2026-12-02T07:00:00"}
    line = prov.describe(meta)
    assert "a456df92e702" in line and "ci-7" in line and "AMD EPYC" in line and "4 cores" in line
    assert "uncommitted" in line and "2026-12-02" in line
    assert prov.describe({}) == "no provenance recorded"
    assert prov.describe({"git_commit": prov.NOT_A_CHECKOUT, "host": "h"}).startswith("not a checkout on h")


def test_sweep_table_carries_provenance(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from sim.sweep import Sweep, run_sweep

    sweep = Sweep.from_dict({"name": "p", "base": {"workload": {"memory_bytes": "64MiB"}},
                             "vary": {"strategy.downtime_limit_s": ["100ms", "300ms"]}})
    out = tmp_path / "p.parquet"
    run_sweep(sweep, out, jobs=1)
    meta = prov.read_parquet_provenance(out)
    assert meta["sweep"] == "p" and meta["versions"]["miglab"] == __version__ and "git_commit" in meta
