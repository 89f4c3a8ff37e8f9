"""``miglab harness cleanup``: remove namespaces, guests and RAM files left by killed miglab runs."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No flags: what is stale is found from the pids recorded in each leftover's name."""


def run(args: argparse.Namespace) -> int:
    from harness.link import cleanup_stale

    for item in cleanup_stale():
        print(f"removed {item}")
    return 0
