"""The one exception tree (sim/errors.py): every exception class in ``sim`` and ``harness`` is a
:class:`sim.errors.MiglabError`, and refusals carry their location as fields, not only as text."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import harness
import sim
from sim.errors import ConfigError, MiglabError, OutputError

# Modules that need an optional extra or a real host to import; skipped (and said so) when it is missing.
OPTIONAL = {"harness.qmp": "qemu.qmp"}


def _modules() -> list[str]:
    names = []
    for pkg in (sim, harness):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                  if not m.name.endswith("__main__")]
    return sorted(names)


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _modules():
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            if name in OPTIONAL:
                continue
            raise AssertionError(f"{name} does not import: {e}") from None
        found += [obj for obj in vars(mod).values()
                  if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == name]
    return found


def test_every_exception_class_is_in_the_tree():
    classes = _exception_classes()
    names = {c.__qualname__ for c in classes}
    assert {"VMError", "LinkError", "GuestError", "DirtyLogError", "BhyveError", "PreflightError", "ConfigError",
            "TraceError"} <= names, names
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes
               if not issubclass(c, MiglabError) and not issubclass(c, KeyboardInterrupt)]
    assert not outside, f"not MiglabError subclasses: {outside}"


def test_the_tree_is_documented():
    doc = (Path(sim.__file__).parent / "errors.py").read_text()
    for c in _exception_classes():
        if issubclass(c, MiglabError) and not c.__name__.startswith("_") and c.__module__.startswith("harness"):
            assert c.__name__ in doc, f"{c.__module__}.{c.__name__} is not in sim/errors.py's tree"


def _located(e: MiglabError, **fields: str) -> None:
    for name, want in fields.items():
        assert getattr(e, name) == want, (name, getattr(e, name), str(e))
    for loc in (e.where, e.flag):  # the location travels as a field, not inside the problem
        assert loc is None or loc not in e.problem, (loc, e.problem)


def test_a_sweep_refusal_names_its_file_in_where():
    from sim.sweep import Sweep

    with pytest.raises(ConfigError) as e:
        Sweep.from_dict({"name": "s", "vary": []}, source="grid.toml")
    _located(e.value, where="grid.toml", problem="[vary] must be a table")
    assert str(e.value) == "grid.toml: [vary] must be a table"


def test_a_suite_refusal_names_its_file_in_where():
    from sim.regress import Suite

    with pytest.raises(ConfigError) as e:
        Suite.from_dict({"name": "s", "bogus": 1}, source="suite.toml")
    _located(e.value, where="suite.toml")
    assert str(e.value).startswith("suite.toml: unknown suite key 'bogus'")


def test_a_flag_refusal_carries_the_flag(capsys):
    from harness.cli import main

    assert main(["simulate", "--workload", "uniform:rate=1000", "--memory", "64MiB", "--downtime-limit", "0"]) == 2
    assert "miglab: --downtime-limit: must be positive" in capsys.readouterr().err
    from harness.bhyve.vmmdev import VmNameError, check_vm_name

    with pytest.raises(VmNameError) as e:
        check_vm_name("")
    _located(e.value, flag="--vm", problem="the VM name is empty")


def test_an_output_refusal_carries_path_and_flag(tmp_path):
    from sim.atomic import check_output_file

    with pytest.raises(OutputError) as e:
        check_output_file(tmp_path / "missing" / "r.json", flag="--markdown")
    assert (e.value.flag, e.value.where) == ("--markdown", str(tmp_path / "missing" / "r.json"))
    assert str(e.value).startswith("--markdown: no such directory: ")


def test_a_qemu_guest_size_refusal_carries_the_key():
    from harness.migrate import validate_for_qemu
    from sim.scenario import Scenario

    sc = Scenario().replace(**{"workload.spec": "uniform:rate=100", "workload.memory_bytes": 32 << 20})
    with pytest.raises(ConfigError) as e:
        validate_for_qemu(sc)
    _located(e.value, key="workload.memory_bytes")
    assert e.value.value == 32 << 20


def test_harness_errors_carry_their_context_as_fields():
    from harness.bhyve.vmmdev import BhyveError
    from harness.vm import VM, VMConfig, VMError

    try:
        vm = VM(VMConfig(name="src"))  # finds QEMU, starts nothing
    except VMError as e:
        pytest.skip(f"no QEMU here: {e}")
    with pytest.raises(VMError) as e:
        vm.qmp  # noqa: B018 (the property raises: the guest is not started)
    _located(e.value, where="src")
    assert str(e.value) == "src: not started"
    assert issubclass(BhyveError, MiglabError)


def test_fields_survive_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(ConfigError("must be positive", where="a.toml", key="link.rtt_s", value=0)))
    assert (type(e), e.where, e.key, e.value, str(e)) == (ConfigError, "a.toml", "link.rtt_s", 0,
                                                           "a.toml: link.rtt_s: must be positive")
