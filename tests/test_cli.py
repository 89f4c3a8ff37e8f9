"""The CLI: one-line errors with exit code 2, no half-written outputs, and the main verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from sim.errors import ConfigError
from sim.scenario import Scenario
from sim.trace import make_trace, save


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.npz"
    assert main(["trace", "synth", "hotcold:hot=8MiB,rate=3000", "--memory", "64MiB", "--seconds", "6",
                 "--seed", "2", "-o", str(path)]) == 0
    return path


def _one_line_error(capsys, argv, expect):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expect in err, err
    return err


def test_simulate_trace_json(trace_file, capsys):
    assert main(["simulate", "--trace", str(trace_file), "--bandwidth", "50MiB/s", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["converged"] and out["trace_sha256"] and out["miglab_version"]
    assert out["scenario"]["workload"]["path"] == str(trace_file)


def test_compare_writes_summary_and_plot(trace_file, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["compare", "--trace", str(trace_file), "--bandwidth", "50MiB/s", "-o", str(out)]) == 0
    text = (out / "summary.csv").read_text().splitlines()
    assert text[0].startswith("strategy,") and len(text) == 5
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert "stopcopy" in capsys.readouterr().out


@pytest.mark.parametrize("args,expect", [
    (["--bandwidth", "0"], "miglab: --bandwidth: must be positive"),
    (["--downtime-limit", "0s"], "miglab: --downtime-limit: must be positive"),
    (["--downtime-limit", "300"], "--downtime-limit: '300' has no unit: give a unit, e.g. 300ms"),
    (["--memory", ""], "miglab: --memory: empty size"),
    (["--memory", "4096"], "--memory: '4096' has no unit"),
    (["--memory", "1e400B"], "--memory: size '1e400B' is not finite"),
    (["--bandwidth=-5MiB/s"], "--bandwidth"),
    (["--bandwidth", "5furlongs/s"], "unknown bandwidth unit"),
    (["--memory", "4GB2"], "--memory"),
    (["--downtime-limit", "3 fortnights"], "unknown duration unit"),
    (["--set", "strategy.kind=teleport"], "--set strategy.kind: unknown kind 'teleport'"),
    (["--set", "link.nonsense=1"], "--set link.nonsense: unknown field in Link"),
    (["--set", "strategy.multifd_channels=0"], "--set strategy.multifd_channels: must be at least 1"),
])
def test_bad_flags(capsys, args, expect):
    _one_line_error(capsys, ["simulate", "--workload", "uniform:rate=1000", "--memory", "64MiB", *args], expect)


def test_unknown_strategy_is_an_argparse_one_liner(capsys):
    _one_line_error(capsys, ["simulate", "--strategy", "teleport"], "invalid choice")


def test_bad_workload_spec(capsys):
    _one_line_error(capsys, ["simulate", "--workload", "hotcold:rate=5"], "needs hot")
    _one_line_error(capsys, ["simulate", "--workload", "warp:rate=5"], "unknown workload pattern")


def test_bad_traces(tmp_path, capsys):
    t = make_trace([np.array([1, 2])], [0], [1], n_pages=8)
    good = tmp_path / "g.npz"
    save(t, good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[:40])
    _one_line_error(capsys, ["simulate", "--trace", str(tmp_path / "trunc.npz")], "trunc.npz")
    _one_line_error(capsys, ["simulate", "--trace", str(tmp_path / "nope.npz")], "no such file")
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["n_pages"] = np.array(2, dtype=np.int64)
    with open(tmp_path / "beyond.npz", "wb") as f:
        np.savez(f, **arrays)
    _one_line_error(capsys, ["trace", "info", str(tmp_path / "beyond.npz")], "beyond the guest")


def test_no_half_written_output_on_error(tmp_path, capsys):
    out = tmp_path / "r.json"
    _one_line_error(capsys, ["simulate", "--trace", str(tmp_path / "missing.npz"), "-o", str(out)], "no such file")
    assert not out.exists() and not list(tmp_path.glob(".r.json*"))


def test_trace_and_memory_must_agree(trace_file, capsys):
    _one_line_error(capsys, ["simulate", "--trace", str(trace_file), "--memory", "1GiB"], "at its own size")


def test_scenario_toml_round_trip(tmp_path, capsys):
    sc = Scenario().replace(**{"strategy.kind": "hybrid", "link.rtt_s": "10ms", "workload.memory_bytes": "1GiB"})
    p = tmp_path / "s.toml"
    p.write_text(sc.to_toml())
    assert Scenario.from_toml(p) == sc
    assert Scenario.from_dict(json.loads(sc.to_json())) == sc
    (tmp_path / "bad.toml").write_text("[link\nbandwidth_Bps = 1")
    _one_line_error(capsys, ["simulate", "--scenario", str(tmp_path / "bad.toml")], "not valid TOML")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)
field_names = st.sampled_from(["bandwidth_Bps", "rtt_s", "kind", "memory_bytes", "spec", "max_rounds", "stop_rule",
                               "auto_converge", "zero_page_fraction", "migration_cap_Bps", "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["workload", "link", "host", "strategy", "seed", "name", "schema_version"]),
                       st.dictionaries(field_names, json_values, max_size=4) | json_values, max_size=4))
def test_config_parser_fuzz_only_raises_config_error(d):
    try:
        sc = Scenario.from_dict(d)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert Scenario.from_dict(sc.to_dict()) == sc  # what it accepts, it writes back the same


# --------------------------------------------------------------------------- the CLI package itself
HEAVY = ("numpy", "pandas", "scipy", "matplotlib", "simpy", "qemu")

# Makes `import qemu` fail as it does when the harness extra is not installed.
NO_QEMU = """
import sys
class _NoQemu:
    def find_spec(self, name, path=None, target=None):
        if name == "qemu" or name.startswith("qemu."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoQemu())
"""


def _miglab_subprocess(argv: list[str], prelude: str = "") -> tuple[int, dict, str]:
    """Run main(argv) in a fresh interpreter; return its exit code, what it imported, and its stderr."""
    import subprocess
    import sys

    code = prelude + f"""
import json, sys
from harness.cli import main
rc = main({argv!r})
mods = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith(("harness", "sim")))
sys.stdout.flush()
print("\\n" + json.dumps({{"rc": rc, "modules": mods}}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    return doc["rc"], doc, p.stderr


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["trace", "--help"], ["harness", "--help"]])
def test_version_and_help_import_no_numpy_pandas_scipy_or_qemu(argv):
    rc, doc, _ = _miglab_subprocess(argv)
    assert rc == 0
    heavy = [m for m in doc["modules"] if m.split(".")[0] in HEAVY]
    assert heavy == [], heavy
    verbs = [m for m in doc["modules"] if m.startswith("harness.cli.")]
    assert verbs == [], verbs  # the table alone names the verbs


def test_only_the_module_of_the_verb_run_is_imported():
    rc, doc, err = _miglab_subprocess(["simulate", "--workload", "uniform:rate=30MiB/s", "--memory", "256MiB"])
    assert rc == 0, err
    cli = {m for m in doc["modules"] if m.startswith("harness.cli.")}
    assert cli == {"harness.cli.options", "harness.cli.simulate", "harness.cli.tables", "harness.cli.hostflag"}
    assert not [m for m in doc["modules"] if m.startswith("harness.") and not m.startswith("harness.cli")]


def test_simulate_works_without_qemu_and_harness_verbs_name_the_extra(tmp_path):
    rc, doc, err = _miglab_subprocess(["simulate", "--workload", "uniform:rate=30MiB/s", "--memory", "256MiB"],
                                      prelude=NO_QEMU)
    assert rc == 0, err
    assert not [m for m in doc["modules"] if m.split(".")[0] == "qemu"]
    out = tmp_path / "r.json"
    rc, _, err = _miglab_subprocess(["migrate", "--workload", "uniform:rate=100", "-o", str(out)], prelude=NO_QEMU)
    assert rc == 2 and err.count("\n") == 1 and "pip install 'miglab[harness]'" in err, err
    assert not out.exists()


def test_every_verb_module_follows_the_contract():
    import subprocess
    import sys

    from harness.cli import VERBS

    code = f"""
import importlib, json, sys
found = {{}}
for name in {[v.module for v in VERBS]!r}:
    try:
        m = importlib.import_module("harness.cli." + name)
    except ModuleNotFoundError as e:
        if e.name != "harness.cli." + name:
            raise
        continue
    found[name] = callable(getattr(m, "add_arguments", None)) and callable(getattr(m, "run", None))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m == "sim" or m.startswith("sim.")
               or (m.startswith("harness.") and not m.startswith("harness.cli")))
print(json.dumps({{"found": found, "heavy": heavy}}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["found"] and all(doc["found"].values()), doc["found"]
    assert doc["heavy"] == [], "verb modules must import only the standard library at module level"


def _subparsers(parser):
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_same_thing_same_metavar_in_every_verb():
    from harness.cli import GROUPS, build_parser

    want = {"--memory": "SIZE", "--bandwidth": "RATE", "--max-bandwidth": "RATE", "--rtt": "TIME",
            "--downtime-limit": "TIME", "--timeout": "TIME", "--interval": "TIME", "--seconds": "TIME",
            "--warmup": "TIME", "--seed": "N", "--workload": "SPEC", "--xbzrle-cache": "SIZE", "--output": "FILE"}
    top = _subparsers(build_parser())
    verbs = {name: p for name, p in top.items() if name not in GROUPS}
    for group in GROUPS:
        verbs.update({f"{group} {n}": p for n, p in _subparsers(top[group]).items()})
    seen = set()
    for name, p in verbs.items():
        for a in p._actions:
            for flag in set(a.option_strings) & set(want):
                if flag == "--output" and a.metavar in ("DIR", "OUT.parquet"):  # compare: a directory
                    continue
                assert a.metavar == want[flag], f"miglab {name} {flag}: metavar {a.metavar}, want {want[flag]}"
                seen.add(flag)
    assert seen == set(want)


@pytest.mark.parametrize("verb", [["migrate", "--workload", "idle"], ["sweep", "s.toml"], ["regress", "--baseline", "b"],
                                  ["trace", "collect", "-o", "t.npz"]])
@pytest.mark.parametrize("flag", ["-q", "--quiet", "--no-progress"])
def test_quiet_is_accepted_everywhere_progress_shows(verb, flag):
    from harness.cli import build_parser

    assert build_parser().parse_args([*verb, flag]).quiet is True


def _every_verb_parser():
    from harness.cli import GROUPS, build_parser

    top = _subparsers(build_parser())
    verbs = {name: p for name, p in top.items() if name not in GROUPS}
    for group in GROUPS:
        verbs.update({f"{group} {n}": p for n, p in _subparsers(top[group]).items()})
    return verbs


def test_quiet_and_verbose_are_the_shared_definitions_in_every_verb():
    from harness.cli import VERBOSE_HELP

    for name, p in _every_verb_parser().items():
        by_flag = {flag: a for a in p._actions for flag in a.option_strings}
        verbose = by_flag.get("-v")
        assert verbose is not None and verbose is by_flag.get("--verbose"), f"miglab {name}: -v/--verbose"
        assert verbose.help == VERBOSE_HELP, f"miglab {name} -v"
        quiet = by_flag.get("-q") or by_flag.get("--quiet")
        if quiet is not None:  # a verb that shows progress: both spellings, one dest, a flag
            assert quiet is by_flag.get("-q") is by_flag.get("--quiet"), f"miglab {name}: -q/--quiet"
            assert quiet.dest == "quiet" and quiet.nargs == 0, f"miglab {name} -q"
        seed = by_flag.get("--seed")
        assert seed is None or not seed.required, f"miglab {name}: --seed must be optional"
        json_flag = by_flag.get("--json")
        if json_flag is not None and json_flag.dest == "json":  # regress's deprecated --json FILE has its own dest
            assert json_flag.nargs == 0, f"miglab {name} --json: a result on stdout, takes no value"


@pytest.mark.parametrize("argv", [["-v", "simulate"], ["simulate", "-v"], ["-vv", "simulate"],
                                  ["-v", "simulate", "-v"], ["simulate"]])
def test_verbose_before_or_after_the_verb_sets_the_log_level(argv):
    import logging

    from harness.cli import build_parser, log_level

    args = build_parser().parse_args([*argv, "--workload", "idle"])
    want = {0: logging.WARNING, 1: logging.INFO}.get(sum(a.count("v") for a in argv if a.startswith("-v")),
                                                       logging.DEBUG)
    assert log_level(args) == want


def test_trace_synth_seed_is_optional_with_a_documented_default(tmp_path, capsys):
    from harness.cli.options import DEFAULT_SYNTH_SEED

    argv = ["trace", "synth", "uniform:rate=2000", "--memory", "16MiB", "--seconds", "2"]
    assert main([*argv, "-o", str(tmp_path / "a.npz")]) == 0
    assert main([*argv, "--seed", str(DEFAULT_SYNTH_SEED), "-o", str(tmp_path / "b.npz")]) == 0
    assert main([*argv, "--seed", str(DEFAULT_SYNTH_SEED + 1), "-o", str(tmp_path / "c.npz")]) == 0
    sha = [line.rsplit(" ", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert sha[0] == sha[1] != sha[2]


def test_scenario_from_args_states_the_verbs_differences():
    import argparse

    from harness.cli.options import scenario_from_args

    args = argparse.Namespace(workload="uniform:rate=100", memory="256MiB", strategy="teleport")
    with pytest.raises(ConfigError, match="--strategy: unknown strategy 'teleport'"):
        scenario_from_args(args, strategies=("precopy",))
    with pytest.raises(ConfigError, match="--workload SPEC is required"):
        scenario_from_args(argparse.Namespace(), require_workload=True)
    base = Scenario().replace(**{"strategy.timeout_s": 120.0})
    s = scenario_from_args(argparse.Namespace(workload="uniform:rate=100", rtt="10ms"), base=base)
    assert s.strategy.timeout_s == 120.0 and s.link.rtt_s == pytest.approx(0.01)
    assert (s.workload.kind, s.workload.spec, s.workload.path) == ("synthetic", "uniform:rate=100", "")
    assert scenario_from_args(argparse.Namespace()) == Scenario()  # a flag a verb lacks changes nothing


def test_sigterm_guard_turns_sigterm_into_an_interrupt_and_restores_the_handler():
    import os
    import signal

    from sim.interrupt import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the handler run before the block ends
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_missing_verb_module_is_one_line_not_a_traceback(monkeypatch, capsys):
    import harness.cli as cli

    monkeypatch.setattr(cli, "VERBS", (*cli.VERBS, cli.Verb("", "ghost", "no_such_module", "a verb not shipped")))
    assert main(["ghost", "--anything"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "harness.cli.no_such_module" in err, err
