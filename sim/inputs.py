"""Reading input files within bounds, and the checks every number entering miglab passes.

Every file miglab reads as JSON or TOML goes through :func:`read_text`:
only a regular file (``--model /dev/zero`` or a FIFO is refused before it is
opened for reading), at most :data:`MAX_TEXT_BYTES` (the biggest committed
input is a few hundred KiB), and UTF-8. A failure is one :class:`InputError`
naming the file.

The number checks (:func:`number`, :func:`whole`) refuse NaN, infinities,
bools posing as numbers and values out of range, with the location given as
fields of the error. :func:`check_allocation` estimates what an input asks
miglab to allocate and refuses it, with the estimate, before anything is
allocated.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from .errors import InputError, ResourceError
from .units import format_bytes

#: Largest JSON or TOML input read (bytes). Models, host files, suites and run records are far smaller.
MAX_TEXT_BYTES = 64 * 2**20

#: Largest single allocation an input may ask for (bytes), unless the machine has less memory.
MAX_ALLOCATION_BYTES = 16 * 2**30


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a refusal: "a directory", "a device", "a FIFO", ..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file(path: str | os.PathLike[str], what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path``; InputError unless it exists and is a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("no such file", where=path) from None
    except NotADirectoryError:
        raise InputError("no such file (a parent is not a directory)", where=path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", where=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"is {file_kind(st.st_mode)}, not a {what}", where=path)
    return st


def read_bytes(path: str | os.PathLike[str], *, limit: int | None = None, what: str = "file") -> bytes:
    """The content of a regular file of at most ``limit`` bytes (default :data:`MAX_TEXT_BYTES`)."""
    limit = MAX_TEXT_BYTES if limit is None else limit
    st = regular_file(path, what)
    if st.st_size > limit:
        raise InputError(f"is {format_bytes(st.st_size)}, more than the {format_bytes(limit)} a {what} may be",
                         where=path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since the stat
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", where=path) from None
    if len(data) > limit:
        raise InputError(f"is more than the {format_bytes(limit)} a {what} may be", where=path)
    return data


def read_text(path: str | os.PathLike[str], *, limit: int | None = None, what: str = "file") -> str:
    """A bounded regular file decoded as UTF-8 (InputError naming the byte offset otherwise)."""
    data = read_bytes(path, limit=limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"is not UTF-8 text (byte {e.start})", where=path) from None


def load_json(path: str | Path, *, allow_nan: bool = True) -> Any:
    """Read a JSON file, turning every failure into one InputError naming the file.

    ``NaN`` and ``Infinity`` (which Python's json writes and reads) are kept unless ``allow_nan`` is
    False: a run record may hold a NaN for a metric it could not measure, and the checks on each
    value then name the key that holds one where it is not allowed.
    """
    text = read_text(path, what="JSON file")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(text) if allow_nan else json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise InputError("not valid JSON (nested too deeply)", where=path) from None
    except ValueError as e:
        raise InputError(f"not valid JSON ({e})", where=path) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into one InputError naming the file."""
    text = read_text(path, what="TOML file")
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise InputError("not valid TOML (nested too deeply)", where=path) from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", where=path) from None


def number(value: Any, *, where: object = None, key: str | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, what: str = "a number") -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``).

    A bool, a string, NaN or an infinity is refused; the error carries ``where`` and ``key``.
    """
    from .errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be {what}, not {value!r}", where=where, key=key, value=value)
    if isinstance(value, int) and abs(value) > 2**63:  # float() of a huge int loses it or overflows
        raise ConfigError(f"{value} is out of range", where=where, key=key, value=value)
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"must be finite, not {value!r}", where=where, key=key, value=value)
    if low is not None and (v <= low if low_open else v < low):
        bound = "positive" if low == 0 and low_open else "negative" if low == 0 else None
        text = (f"must be positive, not {value!r}" if bound == "positive" else
                f"must not be negative, not {value!r}" if bound == "negative" else
                f"must be {'above' if low_open else 'at least'} {low:g}, not {value!r}")
        raise ConfigError(text, where=where, key=key, value=value)
    if high is not None and v > high:
        raise ConfigError(f"must be at most {high:g}, not {value!r}", where=where, key=key, value=value)
    return v


def whole(value: Any, *, where: object = None, key: str | None = None, low: int | None = None,
          high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; a float with a fraction, a bool or a string is refused."""
    from .errors import ConfigError

    v = number(value, where=where, key=key, what="a whole number")
    if v != int(v):
        raise ConfigError(f"must be a whole number, not {value!r}", where=where, key=key, value=value)
    n = int(value)
    if low is not None and n < low:
        raise ConfigError(f"must be at least {low}, not {value!r}", where=where, key=key, value=value)
    if high is not None and n > high:
        raise ConfigError(f"must be at most {high}, not {value!r}", where=where, key=key, value=value)
    return n


def allocation_limit() -> int:
    """Bytes one input may make miglab allocate: :data:`MAX_ALLOCATION_BYTES`, or half the RAM if less."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return MAX_ALLOCATION_BYTES
    return int(min(MAX_ALLOCATION_BYTES, ram // 2))


def check_allocation(nbytes: float, what: str, *, where: object = None, key: str | None = None,
                     flag: str | None = None, limit: int | None = None) -> None:
    """ResourceError with the estimate if ``what`` would take more than ``limit`` bytes (default
    :func:`allocation_limit`)."""
    cap = allocation_limit() if limit is None else limit
    if nbytes > cap:
        raise ResourceError(f"{what} would need about {format_bytes(nbytes)} of memory, more than the "
                            f"{format_bytes(cap)} allowed", estimate=float(nbytes), where=where, key=key, flag=flag)


__all__ = ["MAX_TEXT_BYTES", "MAX_ALLOCATION_BYTES", "regular_file", "read_bytes", "read_text", "load_json",
           "load_toml", "number", "whole", "allocation_limit", "check_allocation"]
