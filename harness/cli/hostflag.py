"""The host constants a simulator verb uses: the bundled calibrated ones unless told otherwise.

``--host FILE`` names a host file, ``--host none`` or ``--uncalibrated`` asks for the
simulator's uncalibrated defaults, and without either the bundled constants
(:data:`sim.hostinfo.BUNDLED_HOST`) apply, unless ``--scenario FILE`` has a ``[host]``
table of its own. The verbs print :meth:`sim.hostinfo.HostSource.label` above their
table and store :meth:`~sim.hostinfo.HostSource.to_dict` in their result files.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from harness.cli import options

if TYPE_CHECKING:
    from sim.hostinfo import HostSource
    from sim.result import Result
    from sim.scenario import Scenario

HOST_HELP = ("host constants (JSON from `miglab calibrate-host`); default: the bundled calibration "
             "results/validation/full/host.json; 'none' for the uncalibrated defaults")


UNCALIBRATED_HELP = ("use the simulator's uncalibrated host defaults (no switchover cost) instead of the "
                     "bundled calibration (same as --host none)")


def add_host_arguments(p: argparse.ArgumentParser) -> None:
    """``--host FILE|none`` and ``--uncalibrated``, for a verb without the shared scenario flags (``sweep``)."""
    p.add_argument("--host", metavar=options.FILE, help=HOST_HELP)
    p.add_argument("--uncalibrated", action="store_true", help=UNCALIBRATED_HELP)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--uncalibrated`` (``--host`` itself is one of the shared scenario flags) and ``--timeout``."""
    p.add_argument("--uncalibrated", action="store_true", help=UNCALIBRATED_HELP)
    p.add_argument("--timeout", metavar=options.TIME,
                   help="cancel a pre-copy still running after this long, as QEMU's migrate_cancel would "
                        "(default: no timeout, like QEMU)")
    for action in p._actions:  # reword the shared --host help to state this verb's default
        if "--host" in action.option_strings:
            action.help = HOST_HELP


def scenario_and_host(args: argparse.Namespace) -> tuple[Scenario, HostSource]:
    """The scenario the flags describe, with the chosen host constants, and that choice."""
    from sim import hostinfo

    flag = getattr(args, "host", None)
    if flag is None and not args.uncalibrated and getattr(args, "scenario", None) and _has_host_table(args.scenario):
        sc = options.scenario_from_args(args)
        return sc, hostinfo.HostSource(f"{args.scenario} [host]", _host_fields(sc), {}, "scenario file")
    src = hostinfo.choose(flag, uncalibrated_flag=args.uncalibrated)
    args.host = src.path if src.calibrated else None
    return options.scenario_from_args(args), src


def warn(sc: Scenario, host: HostSource, result: Result | None = None) -> None:
    """The one-line range warnings, on stderr."""
    from sim.hostinfo import range_warnings

    for line in range_warnings(sc, host, result):
        print(line, file=sys.stderr)


def _has_host_table(path: str) -> bool:
    from sim.scenario import load_toml

    return isinstance(load_toml(path).get("host"), dict)


def _host_fields(sc: Scenario) -> dict[str, Any]:
    import dataclasses

    return {f"host.{k}": v for k, v in dataclasses.asdict(sc.host).items()}
