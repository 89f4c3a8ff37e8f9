"""Host constants from ``miglab calibrate-host``: the one place they are read.

A host file is JSON, either the calibration document (constants under
``"constants"``) or a bare object of constants. Keys without a dot are
:class:`sim.scenario.Host` fields; dotted keys name the host constants that
live elsewhere in a scenario: ``host.<field>`` and the per-page framing
``link.header_bytes_per_page`` (what ``calibrate-host`` fits). Any other key
(``"strategy.kind"``, ``"link.bandwidth_Bps"``) is refused: a host file says
what the host costs, not what to migrate or over which link.
:func:`load_host_json` returns them as the dotted overrides
``Scenario.replace`` takes, so the CLI (``--host``), the validation loop and
the notebooks apply a host file the same way. Every value is checked when the
file is read; a refusal names the file and the key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError
from .scenario import Host, Scenario, load_json

#: Dotted scenario fields outside ``host.`` that a host file may set.
LINK_CONSTANTS = ("link.header_bytes_per_page",)


def host_keys() -> frozenset[str]:
    """Every dotted key a host file may set."""
    return frozenset(f"host.{f.name}" for f in dataclasses.fields(Host)) | frozenset(LINK_CONSTANTS)


def load_host_json(path: str, *, with_keys: bool = False) -> dict[str, Any]:
    """Host constants from `miglab calibrate-host`, as dotted overrides (``host.*`` / ``link.*``).

    With ``with_keys``, each value comes as ``(key as written in the file, value)`` so that a later
    refusal can name the file's key.
    """
    d = load_json(path)
    consts = d.get("constants", d) if isinstance(d, dict) else None
    if not isinstance(consts, dict):
        raise ConfigError("expected a JSON object of host constants", where=path)
    allowed = host_keys()
    out: dict[str, tuple[str, Any]] = {}
    for key, value in consts.items():
        dotted = key if "." in key else f"host.{key}"
        if dotted not in allowed:
            raise ConfigError(f"not a host constant (a host file sets host.* fields and "
                              f"{', '.join(LINK_CONSTANTS)})", where=path, key=key)
        out[dotted] = (key, value)
    try:
        Scenario().replace(**{k: v for k, (_, v) in out.items()})
    except ConfigError as e:
        file_key = out[e.key][0] if e.key in out else e.key
        raise ConfigError(e.problem, where=path, key=file_key, value=e.value) from None
    return dict(out) if with_keys else {k: v for k, (_, v) in out.items()}


__all__ = ["load_host_json", "host_keys", "LINK_CONSTANTS"]
