"""Traces for a campaign: reuse a matching one, or collect it, under ``OUT/traces/``.

Two traces are interchangeable when the workload spec, the guest memory and
the interval match (:func:`trace_key`) and the trace is long enough.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sim.errors import MiglabError

if TYPE_CHECKING:
    from harness.validate.campaign import Campaign, CampaignWorkload

log = logging.getLogger(__name__)

TRACES_DIR = "traces"


def trace_key(spec: str, memory_bytes: int, interval_s: float) -> str:
    """What makes two traces interchangeable: the workload spec, guest memory and interval."""
    return hashlib.sha256(json.dumps([spec, int(memory_bytes), round(float(interval_s), 6)]).encode()).hexdigest()[:12]


def find_trace(spec: str, memory_bytes: int, interval_s: float, min_seconds: float,
               dirs: Iterable[Path]) -> Path | None:
    """A complete trace of ``spec`` on a ``memory_bytes`` guest at ``interval_s``, at least ``min_seconds`` long."""
    from sim.errors import TraceError
    from sim.trace import load

    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.npz")):
            try:
                t = load(p)
            except (TraceError, MiglabError, OSError):
                continue
            m = t.meta
            if (m.get("workload") == spec and int(m.get("guest_memory_bytes") or t.memory_bytes) == memory_bytes
                    and abs(float(m.get("interval_s") or 0) - interval_s) < 1e-6 and m.get("complete", True)
                    and float(m.get("collected_seconds") or 0) >= min_seconds - interval_s):
                return p
    return None


def ensure_trace(campaign: Campaign, w: CampaignWorkload, out_dir: Path, *, progress: bool = True,
                 memory_bytes: int | None = None) -> Path:
    """The trace for ``w`` on a guest of ``memory_bytes`` (default the campaign's): reused when one matches,
    else collected into ``OUT/traces/`` by the campaign's trace method for that size (content-diff scan, or
    QEMU's dirty log for big guests: :func:`harness.dirtylog.collect_dirtylog`)."""
    mem = campaign.memory_bytes if memory_bytes is None else memory_bytes
    seconds = campaign.trace_seconds_of(mem)
    key = trace_key(w.spec, mem, campaign.trace_interval_s)
    own = out_dir / TRACES_DIR
    dirs = [own, *(Path(d) for d in campaign.trace_dirs)]
    found = find_trace(w.spec, mem, campaign.trace_interval_s, seconds, dirs)
    if found is not None:
        if found.parent.resolve() != own.resolve():
            own.mkdir(parents=True, exist_ok=True)
            dest = own / f"{w.name}-{key}.npz"
            shutil.copyfile(found, dest)  # the output directory is self-contained
            log.info("reusing trace %s for %s (copied to %s)", found, w.spec, dest)
            return dest
        return found
    dest = own / f"{w.name}-{key}.npz"
    method = campaign.trace_method_of(mem)
    log.info("collecting a %.0f s %s trace of %s (%d MiB guest) into %s", seconds, method, w.spec, mem >> 20, dest)
    if method == "dirty-log":
        from harness.dirtylog import collect_dirtylog

        collect_dirtylog(w.spec, memory_bytes=mem, interval_s=campaign.trace_interval_s, seconds=seconds, out=dest)
        return dest
    from harness.collect import collect

    collect(w.spec, memory_bytes=mem, interval_s=campaign.trace_interval_s,
            seconds=seconds, out=dest, progress=progress)
    return dest
