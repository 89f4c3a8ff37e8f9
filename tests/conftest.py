"""Shared pytest fixtures and the suite's per-test timeouts.

``no_leftovers`` (autouse) fails a test that leaves a QEMU process or a
``/dev/shm/miglab-<our pid>-*`` RAM file behind. Other owners append their
own leftover checks (namespaces, ...) below.

Timeouts: every test gets a per-test timeout (pytest-timeout) of a generous
base (its own ``@pytest.mark.timeout(N)``, else ``DEFAULT_TIMEOUT_S`` or, for
``vm`` and ``netns`` tests, ``VM_TIMEOUT_S``) multiplied by
:func:`timeout_scale`: ``MIGLAB_TEST_TIMEOUT_SCALE`` if set (``0`` turns the
timeouts off), else the machine's load per CPU, never below 1. A timeout is a
hang guard, never a speed check: the suite asserts no times and no rates.
"""

from __future__ import annotations

import os

import pytest

#: Base per-test timeouts, in seconds, before scaling (a test's own timeout marker replaces the base).
DEFAULT_TIMEOUT_S = 300.0
VM_TIMEOUT_S = 900.0
TIMEOUT_SCALE_ENV = "MIGLAB_TEST_TIMEOUT_SCALE"


def timeout_scale() -> float:
    """How much slower than a quiet machine this one is likely to run the suite (>= 1; 0 = no timeouts).

    ``MIGLAB_TEST_TIMEOUT_SCALE`` wins. Otherwise the highest of the 1-, 5- and
    15-minute load averages per CPU: on a 2-core machine at load 8, tests get 4x
    their base timeout. The load is read once, when the session starts.
    """
    raw = os.environ.get(TIMEOUT_SCALE_ENV, "").strip()
    if raw:
        try:
            scale = float(raw)
        except ValueError:
            raise pytest.UsageError(f"{TIMEOUT_SCALE_ENV}={raw!r}: expected a number (0 = no timeouts)") from None
        if not (scale >= 0 and scale < float("inf")):
            raise pytest.UsageError(f"{TIMEOUT_SCALE_ENV}={raw!r}: expected a finite number >= 0")
        return scale
    try:
        load = max(os.getloadavg())
    except OSError:  # no load average on this platform
        return 1.0
    return max(1.0, round(load / (os.cpu_count() or 1), 1))


_SCALE = 1.0


def pytest_configure(config: pytest.Config) -> None:
    global _SCALE
    _SCALE = timeout_scale()


def pytest_report_header(config: pytest.Config) -> str:
    if not config.pluginmanager.hasplugin("timeout"):
        return "miglab: pytest-timeout not installed: no per-test timeouts"
    if _SCALE == 0:
        return f"miglab: per-test timeouts off ({TIMEOUT_SCALE_ENV}=0)"
    return (f"miglab: per-test timeouts x{_SCALE:g} (base {DEFAULT_TIMEOUT_S:g} s, vm/netns {VM_TIMEOUT_S:g} s; "
            f"set {TIMEOUT_SCALE_ENV} to override)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its scaled timeout (closest marker wins in pytest-timeout, so ours goes first)."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        own = item.get_closest_marker("timeout")
        if own is not None and (own.args or "timeout" in own.kwargs):
            base = float(own.args[0] if own.args else own.kwargs["timeout"])
        elif item.get_closest_marker("vm") or item.get_closest_marker("netns"):
            base = VM_TIMEOUT_S
        else:
            base = DEFAULT_TIMEOUT_S
        item.add_marker(pytest.mark.timeout(base * _SCALE), append=False)


#: Top-level modules that come with an optional extra, and the extra. A test module whose import fails
#: for lack of one of them is skipped (naming the extra) instead of erroring at collection.
OPTIONAL_EXTRAS = {"qemu": "harness", "pyarrow": "lab", "dask": "lab", "distributed": "lab", "papermill": "lab",
                   "nbformat": "lab", "nbclient": "lab", "nbmake": "lab", "ipykernel": "lab", "jupyter_client": "lab"}


def missing_extra(exc: BaseException | None) -> str | None:
    """``"pip install 'miglab[EXTRA]'"``-style reason if ``exc`` is a missing optional-extra module, else None."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = OPTIONAL_EXTRAS.get(exc.name.split(".")[0])
        if extra:
            return f"needs {exc.name}, from the '{extra}' extra (pip install 'miglab[{extra}]')"
    return None


class _ExtraAwareModule(pytest.Module):
    """A test module that skips, naming the extra, when its imports need an optional extra that is missing."""

    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as e:
            reason = missing_extra(e.__cause__)
            if reason is None:
                raise
            raise pytest.skip.Exception(f"{self.path.name} {reason}", allow_module_level=True) from None


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name == "__init__.py":
        return None
    return _ExtraAwareModule.from_parent(parent, path=module_path)


@pytest.fixture(scope="session")
def timeout_scale_factor() -> float:
    """The session's timeout scale (>= 1), for a test's own polling deadlines."""
    return _SCALE or 1.0


@pytest.fixture(autouse=True)
def no_leftovers():
    """After every test: no QEMU process of ours and no /dev/shm RAM file of ours survives."""
    yield
    try:
        from harness.vm import leftovers
    except ModuleNotFoundError as e:
        if missing_extra(e) is None:
            raise
        return  # without the QMP client no test could have started QEMU
    left = leftovers()
    assert not left["qemu"], f"QEMU processes left behind: {left['qemu']}"
    assert not left["shm"], f"/dev/shm files left behind: {left['shm']}"


@pytest.fixture(scope="session")
def guest_image():
    """The built guest (kernel + initramfs), built once per session into the cache."""
    from harness.guest import build_guest

    return build_guest()


@pytest.fixture(autouse=True)
def no_leftover_namespaces():
    """After every test: no network namespace of this process (``miglab-<role>-<our pid>-*``) survives."""
    yield
    import os
    import shutil

    if shutil.which("ip") is None:
        return
    from harness.link import list_namespaces

    ours = [ns for ns in list_namespaces() if f"-{os.getpid()}-" in ns]
    assert not ours, f"network namespaces left behind: {ours}"
