"""Named strategy variants: the "what if" questions researchers ask, as scenario overrides.

Each preset is a mapping of dotted scenario fields; apply it with
``scenario.replace(**PRESETS[name])`` or ``miglab simulate --preset NAME``.
``bhyve-rounds-K`` accepts any K (``bhyve-rounds-8``). docs/bhyve.md says
which bhyve version each bhyve preset reproduces and which constants are
still guesses.

==================  ===========================================================
preset              meaning
==================  ===========================================================
qemu                QEMU pre-copy: threshold = bandwidth x downtime-limit
qemu-postcopy       QEMU post-copy from the start
qemu-hybrid         QEMU pre-copy for one round, then post-copy
bhyve-upb           the FreeBSD-UPB patches in their later form (per-round
                    clearing of VPO_VMM_DIRTY, lowmem and highmem): bhyve copy
                    mechanics (chunks of 10 with vCPU pauses, per-page sends,
                    no zero-page elision), fixed MIGRATION_ROUNDS = 4
bhyve-upb-early     the first UPB live-migration versions (D30954): lowmem
                    (< 3 GiB) only, and VPO_VMM_DIRTY left set once a page was
                    dirtied, so it is re-sent every later round
bhyve-upb-lowmem    the same as bhyve-upb-early (the first versions)
bhyve-threshold     bhyve mechanics with QEMU's threshold stop rule
bhyve-rounds-K      bhyve mechanics with K fixed rounds instead of 4
bhyve-postcopy      bhyve mechanics with page-fault-driven post-copy (BSDCan 2019)
xen                 Xen's pre-copy as xc_domain_save runs it (sim/xen.py): skip
                    of re-dirtied pages, adaptive rate 100 -> +50 -> 500 Mbit/s,
                    the real stop test; Xen copy mechanics (no zero-page elision)
xen-ratio           miglab's earlier approximation of Xen's limits (no skip, no
                    rate, "dirtied >= sent" instead of "sent > last sent")
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
    "bhyve-upb-early": {**_BHYVE, "host.bhyve_lowmem_only": True, "host.bhyve_sticky_dirty": True,
                        "strategy.kind": "precopy", "strategy.stop_rule": "bhyve", "strategy.bhyve_rounds": 4},
    "bhyve-upb-lowmem": {**_BHYVE, "host.bhyve_lowmem_only": True, "host.bhyve_sticky_dirty": True,
                         "strategy.kind": "precopy", "strategy.stop_rule": "bhyve", "strategy.bhyve_rounds": 4},
    "bhyve-threshold": {**_BHYVE, "strategy.kind": "precopy", "strategy.stop_rule": "qemu"},
    "bhyve-postcopy": {**_BHYVE, "strategy.kind": "postcopy"},
    "xen": {"strategy.kind": "precopy", "strategy.stop_rule": "xen"},
    "xen-ratio": {"strategy.kind": "precopy", "strategy.stop_rule": "xen-ratio"},
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
