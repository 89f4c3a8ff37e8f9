"""Named strategy variants: the "what if" questions researchers ask, as scenario overrides.

Each preset is a mapping of dotted scenario fields; apply it with
``scenario.replace(**PRESETS[name])`` or ``miglab simulate --preset NAME``.
``bhyve-rounds-K`` accepts any K (``bhyve-rounds-8``).

==================  ===========================================================
preset              meaning
==================  ===========================================================
qemu                QEMU pre-copy: threshold = bandwidth x downtime-limit
qemu-postcopy       QEMU post-copy from the start
qemu-hybrid         QEMU pre-copy for one round, then post-copy
bhyve-upb           the FreeBSD-UPB patches as they are: bhyve copy mechanics
                    (chunks of 10 with vCPU pauses, per-page sends, no zero-page
                    elision), fixed MIGRATION_ROUNDS = 4
bhyve-upb-lowmem    the first UPB versions: lowmem (< 3 GiB) only
bhyve-threshold     bhyve mechanics with QEMU's threshold stop rule
bhyve-rounds-K      bhyve mechanics with K fixed rounds instead of 4
bhyve-postcopy      bhyve mechanics with page-fault-driven post-copy (BSDCan 2019)
xen                 Xen's classic iteration limits
simgrid             SimGrid 3.32's stage-2 rule
==================  ===========================================================
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ConfigError

_BHYVE = {"host.hypervisor": "bhyve", "host.wired_memory": True}

PRESETS: dict[str, dict[str, Any]] = {
    "qemu": {"host.hypervisor": "qemu", "strategy.kind": "precopy", "strategy.stop_rule": "qemu"},
    "qemu-postcopy": {"host.hypervisor": "qemu", "strategy.kind": "postcopy"},
    "qemu-hybrid": {"host.hypervisor": "qemu", "strategy.kind": "hybrid", "strategy.postcopy_after_rounds": 1},
    "bhyve-upb": {**_BHYVE, "strategy.kind": "precopy", "strategy.stop_rule": "bhyve", "strategy.bhyve_rounds": 4},
    "bhyve-upb-lowmem": {**_BHYVE, "host.bhyve_lowmem_only": True, "strategy.kind": "precopy",
                         "strategy.stop_rule": "bhyve", "strategy.bhyve_rounds": 4},
    "bhyve-threshold": {**_BHYVE, "strategy.kind": "precopy", "strategy.stop_rule": "qemu"},
    "bhyve-postcopy": {**_BHYVE, "strategy.kind": "postcopy"},
    "xen": {"strategy.kind": "precopy", "strategy.stop_rule": "xen"},
    "simgrid": {"strategy.kind": "precopy", "strategy.stop_rule": "simgrid"},
}


def preset(name: str) -> dict[str, Any]:
    """The overrides of a named preset (``bhyve-rounds-K`` for any K >= 1)."""
    m = re.fullmatch(r"bhyve-rounds-(\d+)", name)
    if m and int(m.group(1)) >= 1:
        return {**_BHYVE, "strategy.kind": "precopy", "strategy.stop_rule": "bhyve",
                "strategy.bhyve_rounds": int(m.group(1))}
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)}, bhyve-rounds-K)")
    return dict(PRESETS[name])
