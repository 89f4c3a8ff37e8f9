"""Parsing of quantities with units: sizes, rates, durations.

Sizes accept IEC (KiB, MiB, GiB, TiB) and SI (kB, MB, GB, TB) byte units.
Rates accept bytes per second (``MiB/s``, ``MB/s``), bits per second
(``Mbit/s``, ``Gbit/s``, ``Mbps``) or, without a unit, pages per second
(``pages/s`` may be written out). Durations accept ``ns``, ``us``, ``ms``,
``s``, ``min``.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

SIZE_UNITS: dict[str, int] = {
    "": 1, "B": 1,
    "K": 1024, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4, "PiB": 1024**5,
    "M": 1024**2, "G": 1024**3, "T": 1024**4,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
}
_BIT_UNITS: dict[str, float] = {
    "bit/s": 1, "kbit/s": 1e3, "Kbit/s": 1e3, "Mbit/s": 1e6, "Gbit/s": 1e9, "Tbit/s": 1e12,
    "bps": 1, "kbps": 1e3, "Kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9,
}
DURATION_UNITS: dict[str, float] = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
#: The guest page size of x86-64 QEMU and bhyve guests, and the default wherever a page size is not given.
PAGE_SIZE_BYTES = 4096


def _split(text: object, what: str) -> tuple[float, str]:
    m = re.fullmatch(_NUM + r"\s*(.*)", str(text).strip())
    if not m:
        raise ConfigError(f"not a {what}: {text!r}")
    return float(m.group(1)), m.group(2).strip()


def parse_size(text: str | int | float) -> int:
    """Return a size in bytes: ``parse_size("4GiB") == 4 * 2**30``."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return int(text)
    value, unit = _split(text, "size")
    if unit not in SIZE_UNITS:
        raise ConfigError(f"unknown size unit {unit!r} in {text!r} (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)")
    return int(round(value * SIZE_UNITS[unit]))


def parse_duration(text: str | int | float) -> float:
    """Return a duration in seconds: ``parse_duration("300ms") == 0.3``."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    value, unit = _split(text, "duration")
    unit = unit or "s"
    if unit not in DURATION_UNITS:
        raise ConfigError(f"unknown duration unit {unit!r} in {text!r} (use ns, us, ms, s, min)")
    return value * DURATION_UNITS[unit]


def parse_bandwidth(text: str | int | float) -> float:
    """Return a link rate in bytes per second.

    A bare number is bytes per second; ``119.2MiB/s``, ``1Gbit/s`` and
    ``100Mbps`` carry their unit.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    value, unit = _split(text, "bandwidth")
    if unit in _BIT_UNITS:
        return value * _BIT_UNITS[unit] / 8.0
    if unit.endswith("/s") and unit[:-2] in SIZE_UNITS:
        return value * SIZE_UNITS[unit[:-2]]
    if unit == "":
        return value
    raise ConfigError(f"unknown bandwidth unit {unit!r} in {text!r} (use B/s, MiB/s, MB/s, Mbit/s, Gbit/s)")


def parse_rate(text: str | int | float, page_size: int = PAGE_SIZE_BYTES) -> tuple[float, str]:
    """Parse a dirty rate; return ``(pages_per_s, how_it_was_given)``.

    A bare number (or ``N pages/s``) is pages per second. A byte rate such as
    ``30MiB/s`` is divided by ``page_size``.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text), "pages/s"
    value, unit = _split(text, "rate")
    if unit in ("", "pages/s", "page/s", "pps"):
        return value, "pages/s"
    return parse_bandwidth(text) / page_size, "bytes/s"


def format_bytes(n: float) -> str:
    """Human-readable IEC size, e.g. ``5.34 GiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(s: float) -> str:
    """Human-readable duration: ``138 ms``, ``45.9 s``."""
    if s != s:  # NaN
        return "n/a"
    if abs(s) < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"
