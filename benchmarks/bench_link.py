"""Benchmark for the shaped link: how close it gets to the configured rate and RTT on this host.

Not part of ``make test``: the tests check only what holds on any machine (tbf
never passes more than the rate; no round trip is shorter than the added delay).
How close a loaded host gets is a speed figure, reported here. Run as root::

    .venv/bin/python benchmarks/bench_link.py [--seconds 2] [--pings 15]

Targets (met on a quiet 2-core host): payload throughput within 15 % of the
configured rate (tbf shapes wire bytes, so TCP/IP framing, ~4.5 % at MTU 1500,
comes off the top) and the median idle RTT within 2 ms of the configured one.
"""

from __future__ import annotations

import argparse

from harness.link import ShapedLink

CASES = [(200e6 / 8, 0.010), (400e6 / 8, 0.0), (100e6 / 8, 0.001)]  # (bytes/s, RTT s)


def bench_link(bandwidth_Bps: float, rtt_s: float, seconds: float, pings: int) -> bool:
    with ShapedLink(bandwidth_Bps=bandwidth_Bps, rtt_s=rtt_s) as link:
        m = link.measure(seconds=seconds, pings=pings)
    ratio = m.throughput_Bps / bandwidth_Bps
    ok = 0.85 <= ratio <= 1.05 and abs(m.rtt_s - rtt_s) <= 0.002
    loaded = "n/a" if m.rtt_loaded_s is None else f"{m.rtt_loaded_s * 1e3:.2f} ms"
    print(f"link {bandwidth_Bps * 8 / 1e6:5.0f} Mbit/s, RTT {rtt_s * 1e3:4.1f} ms: payload "
          f"{m.throughput_Bps * 8 / 1e6:6.1f} Mbit/s ({(ratio - 1) * 100:+.1f} %), RTT median "
          f"{m.rtt_s * 1e3:.2f} ms (min {m.rtt_min_s * 1e3:.2f}, max {m.rtt_max_s * 1e3:.2f}, under load {loaded})"
          f"{'' if ok else '  [outside target]'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--pings", type=int, default=15)
    a = ap.parse_args()
    for bw, rtt in CASES:
        bench_link(bw, rtt, a.seconds, a.pings)


if __name__ == "__main__":
    main()
