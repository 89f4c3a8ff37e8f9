"""The bhyve flags fit into the shared ``miglab trace collect`` / ``miglab migrate`` parsers without conflicts."""

from __future__ import annotations

import argparse

import pytest

from harness.cli import build_parser
from harness.cli.bhyve_options import add_migrate_arguments, migrate_config, migrate_scenario
from sim.errors import ConfigError


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_bhyve_flags_do_not_clash_with_the_shared_verbs():
    p = build_parser()
    if "migrate" not in _sub_names(p):
        pytest.skip("miglab migrate is not registered yet")
    # The shared verbs carry the bhyve flags (wired in harness/collect.py and harness/migrate.py).
    for sub in (_sub(p, "migrate"), _sub(_sub(p, "trace"), "collect")):
        assert any("--vm" in a.option_strings for a in sub._actions)
    ns = p.parse_args(["migrate", "--vm", "guest1", "--src-ip", "10.0.0.1", "--dst-ip", "10.0.0.2",
                       "--src-prefix", "ssh -p 2222 root@hostA", "--bhyve-args", "-c 2 -m 4G -S",
                       "--memory", "4GiB", "--warm", "--probe", "ping:10.0.0.9,interval=5ms"])
    cfg = migrate_config(ns)
    assert cfg.src_prefix == ("ssh", "-p", "2222", "root@hostA") and cfg.bhyve_args == ("-c", "2", "-m", "4G", "-S")
    assert cfg.warm and cfg.probe.interval_s == pytest.approx(0.005)
    sc = migrate_scenario(ns, cfg.warm)
    assert sc.strategy.stop_rule == "bhyve" and sc.strategy.kind == "stopcopy" and sc.workload.memory_bytes == 4 << 30
    assert sc.name == "guest1"


def _sub_names(p: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


@pytest.mark.parametrize("argv,needle", [
    ([], "--vm"),
    (["--vm", "g"], "--src-ip"),
    (["--vm", "g", "--src-ip", "10.0.0.1"], "--dst-ip"),
    (["--vm", "g", "--src-ip", "10.0.0.1", "--dst-ip", "10.0.0.2", "--src-prefix", "ssh 'unclosed"], "--src-prefix"),
])
def test_missing_or_bad_migrate_flags(argv, needle):
    p = argparse.ArgumentParser()
    add_migrate_arguments(p, shared=True)
    with pytest.raises(ConfigError, match=needle):
        migrate_config(p.parse_args(argv))
