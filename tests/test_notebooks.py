"""The research notebooks: executed with small parameters through papermill, and their committed form.

Each notebook runs in a real Jupyter kernel on a synthetic trace (the same
generator as ``miglab trace synth``) into a temporary directory; the tests then
check the figures and tables it wrote against the library itself.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim import Scenario, simulate
from sim.hostinfo import bundled_host
from sim.plots import dominated_by, find_root, pareto_front
from sim.trace import save
from sim.units import parse_bandwidth
from sim.workload import synth_trace

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the 'lab' extra (pip install 'miglab[lab]')")

ROOT = find_root(Path(__file__).parent)
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["round-thresholds", "beyond-14GiB", "validation"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128 MiB guest with a 16 MiB hot set: converges at 1 Gbit/s, not when scaled up proportionally."""
    path = tmp_path_factory.mktemp("trace") / "hotcold-128M.npz"
    save(synth_trace("hotcold:hot=16MiB,rate=2000", 128 * 2**20, seconds=10.0, interval_s=0.5, seed=4), path)
    return path


def run_notebook(name: str, tmp_path: Path, **parameters: object) -> nbformat.NotebookNode:
    """Execute notebooks/NAME.ipynb with ``parameters`` in a fresh kernel; return the executed notebook.

    Skips (not errors) without the 'lab' extra: papermill, or a ``python3`` Jupyter kernel (ipykernel).
    """
    papermill = pytest.importorskip("papermill", reason="executing notebooks needs the 'lab' extra (papermill)")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec", reason="executing notebooks needs jupyter_client")
    try:  # a kernelspec on disk, or ipykernel's built-in one
        kernelspec.KernelSpecManager().get_kernel_spec("python3")
    except kernelspec.NoSuchKernel:
        pytest.skip("executing notebooks needs a python3 Jupyter kernel (ipykernel, in the 'lab' extra)")
    source = NOTEBOOKS / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(source))
    unknown = sorted(set(parameters) - set(declared))
    assert not unknown, f"{name}: parameters {unknown} are not in its parameters cell"
    out = tmp_path / f"{name}.out.ipynb"
    # cwd outside the checkout: the notebook must find the repository on its own
    papermill.execute_notebook(str(source), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False, log_output=False)
    return nbformat.read(out, as_version=4)


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5_000, f"{path} is suspiciously small"


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", ""))
            parts.extend(str(v) for v in o.get("data", {}).values())
    return "\n".join(parts)


# --------------------------------------------------------------------------- committed form
@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_stripped_and_parametrised(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    carrying = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not carrying, f"{name}.ipynb: code cells {carrying} carry outputs; clear them before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert nb.cells.index(tagged[0]) <= 1, "the parameters cell comes first (after the title)"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_defaults_write_to_scratch_and_use_the_calibrated_host(name: str) -> None:
    """Run with its defaults, a notebook must not overwrite the committed figures (`make notebooks` does that)."""
    papermill = pytest.importorskip("papermill", reason="reading notebook parameters needs papermill")
    declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    out_dir = declared["out_dir"]["default"].strip("\"'")
    assert out_dir.startswith("results/scratch/"), f"{name}: out_dir defaults to {out_dir}"
    make = (ROOT / "Makefile").read_text()
    assert "-p out_dir results/notebooks/$$n" in make, "make notebooks must refresh results/notebooks/"
    if "host_json" in declared:
        assert declared["host_json"]["default"].strip("\"'") == "results/validation/full/host.json"


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_hold_no_model_code(name: str) -> None:
    """Notebooks call the library; the engine's internals stay out of them."""
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells)
    for forbidden in ("import simpy", "sim.engine", "sim.stoprules", "sim.dirty", "sim.postcopy", "env.timeout"):
        assert forbidden not in source, f"{name}.ipynb uses {forbidden}"


# --------------------------------------------------------------------------- helpers
def test_pareto_front_is_the_non_dominated_set() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.integers(0, 20, 200).astype(float), "y": rng.integers(0, 20, 200).astype(float)})
    df.loc[3, "y"] = math.nan
    front = pareto_front(df, "x", "y")
    assert np.all(np.diff(front["x"]) > 0) and np.all(np.diff(front["y"]) < 0)
    finite = df.dropna()
    undominated = {(r.x, r.y) for _, r in finite.iterrows() if dominated_by(finite, r, "x", "y").empty}
    assert set(zip(front["x"], front["y"], strict=True)) == undominated  # duplicates appear once
    assert len(front) == len(undominated)


# --------------------------------------------------------------------------- executed
@pytest.mark.slow
def test_round_thresholds(tmp_path: Path, small_trace: Path) -> None:
    out = tmp_path / "figures"
    run_notebook("round-thresholds", tmp_path, traces=[str(small_trace)], bandwidths=["100Mbit/s", "1Gbit/s"],
                 downtime_limits=["30ms", "300ms"], max_rounds=[1, 3, None], bhyve_rounds=[2, 4],
                 postcopy_after=[0, 1, 2], downtime_budgets=["30ms", "300ms"], jobs=1,
                 work_dir=str(tmp_path / "work"), out_dir=str(out))
    for fig in ("pareto", "bhyve-vs-threshold", "switch-or-wait", "switch-detail"):
        assert_png(out / f"{fig}.png")

    front = pd.read_csv(out / "pareto.csv")
    assert set(front["bandwidth"]) == {"100 Mbit/s", "1 Gbit/s"}
    for _, f in front.groupby(["trace", "bandwidth"]):
        f = f.sort_values("front_rank")
        assert len(f) >= 2
        assert np.all(np.diff(f["transfer_x"]) > 0), "front: transfer must rise"
        assert np.all(np.diff(f["downtime_s"]) < 0), "front: downtime must fall"

    rec = pd.read_csv(out / "recommendations.csv")
    assert len(rec) == 2 * 2  # bandwidths x budgets, one trace
    met = rec[rec["strategy"] != "none meets the budget"]
    assert not met.empty
    assert (met["downtime_s"] <= met["budget_ms"] / 1e3).all()
    # The table reflects the library: re-simulate one recommended pre-copy setting directly.
    r = met[met["strategy"] == "pre-copy"].iloc[0]
    cap = None if r["max_rounds"] == "∞" else int(r["max_rounds"])
    sc = Scenario().replace(**{
        "workload.kind": "trace", "workload.path": str(small_trace), "workload.memory_bytes": 128 * 2**20,
        "link.bandwidth_Bps": parse_bandwidth(r["bandwidth"].replace(" ", "")), "link.rtt_s": 0.001,
        "strategy.downtime_limit_s": r["limit_ms"] / 1e3, "strategy.max_rounds": cap,
        "strategy.on_round_limit": "switchover", "strategy.timeout_s": 600.0,
        **bundled_host().overrides})  # the notebook's default host constants
    direct = simulate(sc)
    assert direct.downtime_s == pytest.approx(r["downtime_s"], rel=1e-5)
    assert direct.bytes_sent / direct.memory_bytes == pytest.approx(r["transfer_x"], rel=1e-5)

    bhyve = pd.read_csv(out / "bhyve-vs-threshold.csv")
    assert len(bhyve) == 2
    for _, b in bhyve[bhyve["dominated"]].iterrows():
        assert b["at_same_downtime_transfer_x"] <= b["bhyve4_transfer_x"]

    switch = pd.read_csv(out / "switch-or-wait.csv")
    assert len(switch) == 2 * 2  # bandwidths x downtime limits
    assert switch["verdict"].str.match(r"^(wait \(pre-copy\)|switch after \d+ rounds?)$").all()


@pytest.mark.slow
def test_beyond_14GiB(tmp_path: Path, small_trace: Path) -> None:
    out, models = tmp_path / "figures", tmp_path / "models"
    run_notebook("beyond-14GiB", tmp_path, traces=[str(small_trace)], memory_sizes=["4GiB", "64GiB"],
                 bandwidths=["1Gbit/s", "10Gbit/s"], refine_steps=4, model_dir=str(models), out_dir=str(out))
    for fig in ("downtime", "total-time", "transfer", "postcopy-stall"):
        assert_png(out / f"{fig}.png")
    model = json.loads((models / "hotcold-128M.json").read_text())
    assert model["format"] == "miglab-model" and model["n_pages"] == 128 * 2**20 // 4096

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 * 2 * 2 * 4  # laws x sizes x bandwidths x strategies
    pc = runs[runs["strategy"] == "post-copy"]
    header = bundled_host().overrides.get("link.header_bytes_per_page", 0)  # the notebook's default host
    once = 1.0 + header / 4096 + 1e-4  # runs.csv keeps 4 decimals
    assert pc["converged"].all() and (pc["transfer_x"] <= once).all(), "post-copy sends each page once"
    prop = pc[pc["law"] == "proportional"].sort_values("memory_gib")
    for _, g in prop.groupby("bandwidth"):
        assert np.all(np.diff(g["postcopy_stall_s"]) > 0), "a bigger, proportionally busier guest stalls more"

    conv = pd.read_csv(out / "convergence.csv")
    assert len(conv) == 2 * 2
    absolute = conv[conv["law"] == "absolute"]
    assert np.isinf(absolute["fails_from_gib"]).all(), "a fixed hot set converges at every size"
    # Proportional at 10 Gbit/s: converges at 4 GiB, not at 64 GiB; the bisection must bracket the limit.
    row = conv[(conv["law"] == "proportional") & (conv["bandwidth"] == "10 Gbit/s")].iloc[0]
    assert 4 <= row["converges_up_to_gib"] < row["fails_from_gib"] <= 64
    assert row["fails_from_gib"] / row["converges_up_to_gib"] < 64 / 4 / 2, "the bisection narrows the bracket"

    def converged(gib: float) -> bool:
        # sizes are whole MiB (grid and bisection), and 6 significant digits of GiB below 100 GiB pin the MiB
        memory, bandwidth = int(round(gib * 1024)) * 2**20, parse_bandwidth("10Gbit/s")
        sc = Scenario().replace(**{
            "workload.kind": "model", "workload.path": str(models / "hotcold-128M.json"),
            "workload.memory_bytes": memory, "workload.scaling": "proportional", "link.bandwidth_Bps": bandwidth,
            "link.rtt_s": 0.001, "strategy.downtime_limit_s": 0.3, "strategy.timeout_s": max(600.0, 20 * memory / bandwidth),
            **bundled_host().overrides})
        return simulate(sc).converged

    assert converged(row["converges_up_to_gib"]) and not converged(row["fails_from_gib"])


@pytest.mark.slow
def test_validation_without_a_report(tmp_path: Path) -> None:
    out = tmp_path / "figures"
    nb = run_notebook("validation", tmp_path, validation_root=str(tmp_path / "nothing-here"), out_dir=str(out))
    assert "No validation report yet" in outputs_text(nb)
    assert not out.exists() or not any(out.iterdir())


def write_report(directory: Path) -> pd.DataFrame:
    """A small report in the layout harness/validate.py documents (table.csv, spread.csv, report.md)."""
    rng = np.random.default_rng(7)
    rows = []
    for scenario, kind in [("uniform__1G__precopy-300ms", "precopy"), ("hotcold__1G__postcopy", "postcopy")]:
        for rep in range(3):
            for metric, value in [("downtime_s", 0.12), ("total_time_s", 9.0), ("bytes_sent", 6e8), ("converged", 1)]:
                measured = value * (1 + 0.2 * rng.standard_normal()) if metric != "converged" else 1.0
                for model, bias in [("miglab", 1.0), ("geometric", 1.5)]:
                    predicted = value * bias if metric != "converged" else 1.0
                    err = predicted - measured
                    rows.append({"scenario": scenario, "strategy": scenario.rsplit("__", 1)[1], "strategy_kind": kind,
                                 "repetition": rep, "model": model, "metric": metric, "predicted": predicted,
                                 "measured": measured, "error": err, "abs_error": abs(err),
                                 "rel_error": err / measured, "abs_rel_error": abs(err / measured)})
    table = pd.DataFrame(rows)
    directory.mkdir(parents=True)
    table.to_csv(directory / "table.csv", index=False)
    spread = (table[table["model"] == "miglab"].groupby(["scenario", "metric"])["measured"]
              .agg(median="median", min="min", max="max").reset_index())
    spread["spread_rel"] = (spread["max"] - spread["min"]) / spread["median"]
    spread.to_csv(directory / "spread.csv", index=False)
    (directory / "report.md").write_text("# Validation report\n\nsynthetic test data\n")
    return table


@pytest.mark.slow
def test_validation_reads_the_latest_report(tmp_path: Path) -> None:
    root = tmp_path / "validation"
    old = write_report(root / "old")
    table = write_report(root / "new")
    # the older report is older on disk too
    for p in (root / "old").iterdir():
        os.utime(p, (p.stat().st_mtime - 3600, p.stat().st_mtime - 3600))
    assert len(old) == len(table)
    out = tmp_path / "figures"
    nb = run_notebook("validation", tmp_path, validation_root=str(root), out_dir=str(out))
    text = outputs_text(nb)
    assert str(root / "new") in text and "synthetic test data" in text
    for fig in ("predicted-vs-measured", "predicted-vs-measured-models", "error-distribution"):
        assert_png(out / f"{fig}.png")
    summary = pd.read_csv(out / "error-summary.csv")
    assert "converged" not in set(summary["metric"])
    d = table[(table["metric"] == "downtime_s") & (table["strategy_kind"] == "precopy") & (table["model"] == "miglab")]
    expected = ((d["predicted"] - d["measured"]).abs() / d["measured"].abs()).median()
    got = summary[(summary["metric"] == "downtime_s") & (summary["strategy"] == "precopy")
                  & (summary["model"] == "miglab")]["median_abs_rel_error"]
    assert got.iloc[0] == pytest.approx(expected, rel=1e-5)
    by_model = pd.read_csv(out / "error-by-model.csv").set_index("metric")
    assert (by_model["geometric"] > by_model["miglab"]).all(), "the biased baseline must show a larger error"
