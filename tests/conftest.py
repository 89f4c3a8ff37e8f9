"""Shared pytest fixtures.

``no_leftovers`` (autouse) fails a test that leaves a QEMU process or a
``/dev/shm/miglab-<our pid>-*`` RAM file behind. Other owners append their
own leftover checks (namespaces, ...) below.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_leftovers():
    """After every test: no QEMU process of ours and no /dev/shm RAM file of ours survives."""
    yield
    from harness.vm import leftovers

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
