"""``miglab harness link``: build a shaped link (namespaces + tbf + delay), measure it, tear it down."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bandwidth", default="200Mbit/s", metavar=options.RATE, help="link rate (default 200Mbit/s)")
    p.add_argument("--rtt", default="10ms", metavar=options.TIME, help="round-trip time (default 10ms)")
    p.add_argument("--seconds", default="3s", metavar=options.TIME, help="bulk transfer duration (default 3s)")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from harness.link import ShapedLink, format_measurement
    from sim.units import parse_bandwidth, parse_duration

    bw = options.parse_flag(args.bandwidth, parse_bandwidth, "--bandwidth")
    rtt = options.parse_flag(args.rtt, parse_duration, "--rtt")
    seconds = options.parse_flag(args.seconds, parse_duration, "--seconds")
    with options.sigterm_guard(), ShapedLink(bw, rtt) as link:  # SIGTERM still tears the namespaces down
        m = link.measure(seconds=seconds)
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
    else:
        print(format_measurement(m))
    return 0
