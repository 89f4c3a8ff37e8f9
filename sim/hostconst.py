"""Host constants from ``miglab calibrate-host``: the one place they are read.

A host file is JSON, either the calibration document (constants under
``"constants"``) or a bare object of constants. Keys without a dot are
:class:`sim.scenario.Host` fields; dotted keys (``link.rtt_s``) name any
scenario field. :func:`load_host_json` returns them as the dotted overrides
``Scenario.replace`` takes, so the CLI (``--host``), the validation loop and
the notebooks apply a host file the same way.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .scenario import load_json


def load_host_json(path: str) -> dict[str, Any]:
    """Host constants from `miglab calibrate-host`, as dotted overrides (``host.*`` / ``link.*``)."""
    d = load_json(path)
    consts = d.get("constants", d) if isinstance(d, dict) else None
    if not isinstance(consts, dict):
        raise ConfigError(f"{path}: expected a JSON object of host constants")
    return {k if "." in k else f"host.{k}": v for k, v in consts.items()}


__all__ = ["load_host_json"]
