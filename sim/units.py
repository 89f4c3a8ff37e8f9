"""Parsing of quantities with units: sizes, rates, durations.

Sizes accept IEC (KiB, MiB, GiB, TiB) and SI (kB, MB, GB, TB) byte units.
Rates accept bytes per second (``MiB/s``, ``MB/s``), bits per second
(``Mbit/s``, ``Gbit/s``, ``Mbps``) or, without a unit, pages per second
(``pages/s`` may be written out). Durations accept ``ns``, ``us``, ``ms``,
``s``, ``min``.

A duration written as text needs its unit: ``"300"`` is refused with the hint
``give a unit, e.g. 300ms or 300s`` (QEMU, guestperf and miglab's QMP adapter
read a bare downtime limit as milliseconds, so a bare number is ambiguous).
Sizes and link rates written as text without a unit are bytes and bytes per
second; the CLI flags refuse those too (:func:`require_unit`), since QEMU's
``-m 4096`` means MiB. Numbers (not text) are taken in the base unit: they
come from file keys whose name carries the unit (``downtime_limit_s = 0.3``).
Every value must be finite and not negative: ``1e400B`` and ``nan`` are refused.
"""

from __future__ import annotations

import math
import re
from typing import TypeGuard

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


#: Examples of a unit for each kind of quantity, for the hint on a bare number.
_UNIT_HINT = {"size": ("MiB", "GiB"), "duration": ("ms", "s"), "bandwidth": ("MiB/s", "Mbit/s"),
              "rate": ("MiB/s", "pages/s")}


def _split(text: object, what: str) -> tuple[float, str]:
    if not isinstance(text, str):
        raise ConfigError(f"not a {what}: {text!r}", value=text)
    m = re.fullmatch(_NUM + r"\s*(.*)", text.strip())
    if not m:
        raise ConfigError(f"not a {what}: {text!r}" if text.strip() else f"empty {what}", value=text)
    return _finite(float(m.group(1)), text, what), m.group(2).strip()


def _finite(value: float, text: object, what: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{what} {text!r} is not finite", value=text)
    if value < 0:
        raise ConfigError(f"{what} {text!r} must not be negative", value=text)
    return value


def _number(text: int | float, what: str) -> float:
    return _finite(float(text), text, what)


def _bare(value: float, text: str, what: str) -> ConfigError:
    a, b = _UNIT_HINT[what]
    n = text.strip()
    return ConfigError(f"{n!r} has no unit: give a unit, e.g. {n}{a} or {n}{b}", value=text)


def is_number(text: object) -> TypeGuard[int | float]:
    """Whether ``text`` is a number (not a bool)."""
    return isinstance(text, int | float) and not isinstance(text, bool)


def require_unit(text: str, what: str) -> str:
    """``text`` unchanged if it carries a unit (or is zero); else a ConfigError with the hint.

    ``what`` is ``size``, ``duration`` or ``bandwidth``. Used for the CLI flags, where a bare
    number is ambiguous (QEMU reads ``-m 4096`` as MiB and a downtime limit of 300 as ms).
    """
    value, unit = _split(text, what)
    if unit == "" and value != 0:
        raise _bare(value, text, what)
    return text


def parse_size(text: str | int | float) -> int:
    """Return a size in bytes: ``parse_size("4GiB") == 4 * 2**30``."""
    if is_number(text):
        return int(round(_number(text, "size")))
    value, unit = _split(text, "size")
    if unit not in SIZE_UNITS:
        raise ConfigError(f"unknown size unit {unit!r} in {text!r} (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)",
                          value=text)
    return int(round(_finite(value * SIZE_UNITS[unit], text, "size")))


def parse_duration(text: str | int | float) -> float:
    """Return a duration in seconds: ``parse_duration("300ms") == 0.3``.

    Text needs a unit (``"300"`` is refused with a hint; ``"0"`` is zero in any unit). A number
    is seconds: it comes from a key whose name says so (``downtime_limit_s``).
    """
    if is_number(text):
        return _number(text, "duration")
    value, unit = _split(text, "duration")
    if unit == "":
        if value != 0:
            raise _bare(value, str(text), "duration")
        unit = "s"
    if unit not in DURATION_UNITS:
        raise ConfigError(f"unknown duration unit {unit!r} in {text!r} (use ns, us, ms, s, min)", value=text)
    return _finite(value * DURATION_UNITS[unit], text, "duration")


def parse_bandwidth(text: str | int | float) -> float:
    """Return a link rate in bytes per second.

    A bare number is bytes per second; ``119.2MiB/s``, ``1Gbit/s`` and
    ``100Mbps`` carry their unit.
    """
    if is_number(text):
        return _number(text, "bandwidth")
    value, unit = _split(text, "bandwidth")
    if unit in _BIT_UNITS:
        return _finite(value * _BIT_UNITS[unit] / 8.0, text, "bandwidth")
    if unit.endswith("/s") and unit[:-2] in SIZE_UNITS:
        return _finite(value * SIZE_UNITS[unit[:-2]], text, "bandwidth")
    if unit == "":
        return value
    raise ConfigError(f"unknown bandwidth unit {unit!r} in {text!r} (use B/s, MiB/s, MB/s, Mbit/s, Gbit/s)")


def parse_rate(text: str | int | float, page_size: int = PAGE_SIZE_BYTES) -> tuple[float, str]:
    """Parse a dirty rate; return ``(pages_per_s, how_it_was_given)``.

    A bare number (or ``N pages/s``) is pages per second. A byte rate such as
    ``30MiB/s`` is divided by ``page_size``.
    """
    if is_number(text):
        return _number(text, "rate"), "pages/s"
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
