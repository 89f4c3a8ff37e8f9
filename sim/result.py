"""What a simulated migration produced: summary metrics, per-round table, provenance.

Metric definitions (the validation report states them against QEMU's):

* ``total_time_s``: from the start of migration (setup included) until the
  destination holds every page (end of the post-copy push, if any).
* ``downtime_s``: from the moment the source guest stops until the destination
  resumes it: final pages and device state sent, plus the host's fixed
  switchover cost and one one-way delay. Post-copy fault stalls are *not*
  downtime; they are ``postcopy_stall_s``.
* ``guest_pause_s``: what the guest sees, from the source's STOP to the
  destination's RESUME (QMP events): the final data in flight behind the
  stream's backlog, device state sent and loaded, and for post-copy the
  switchover package. QEMU's ``downtime`` is taken on the source and stops
  earlier; both are reported.
* ``bytes_sent``: bytes put on the migration stream, headers and zero-page
  markers included (QEMU's ``ram.transferred``).
* ``rounds``: live pre-copy iterations, the first full pass included.
* ``dirty_sync_count``: dirty-bitmap syncs counted the way QEMU counts them
  (setup, each exact sync, completion or post-copy switch).
* ``postcopy_faults``: page requests the source receives, counted as QEMU's
  ``postcopy-requests`` counts them: one per fault on a page that has not
  arrived, whether the source had sent it already (in flight) or not.
  ``postcopy_urgent_pages`` is how many of them the source had not sent, i.e.
  pages sent on the urgent path.
* ``postcopy_blocktime_s`` / ``postcopy_vcpu_blocktime_s``: QEMU's
  ``postcopy-blocktime`` (time during which every vCPU was blocked on a fault)
  and ``postcopy-vcpu-blocktime`` (per vCPU, the time from each fault to its
  page being placed; a list, in :meth:`to_dict`'s summary beside the scalars). The model's
  guest has one vCPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas costs ~0.2 s to import; only the tables need it, so they import it on first access
    import pandas as pd

from .scenario import Scenario

ROUND_COLUMNS = ["round", "phase", "t_start_s", "duration_s", "pages", "zero_pages", "xbzrle_pages", "bytes",
                 "pending_pages_after", "new_dirty_pages", "threshold_bytes", "throttle_pct"]
TIMELINE_COLUMNS = ["t_s", "remaining_bytes"]


@dataclass(frozen=True, eq=False)
class Result:
    """The outcome of :func:`sim.simulate` for one :class:`~sim.scenario.Scenario`.

    ``rounds_rows`` (one dict per phase, keys :data:`ROUND_COLUMNS`) and ``timeline_points``
    (``(t_s, remaining_bytes)`` pairs) are the raw records; :attr:`rounds_table` and :attr:`timeline`
    are their DataFrames, built on first access only, so a sweep that reads the summary builds none
    (two DataFrames cost three times the whole model-mode simulation of a 1 TiB guest).
    """

    scenario: Scenario
    total_time_s: float
    downtime_s: float
    bytes_sent: int
    rounds: int
    dirty_sync_count: int
    converged: bool
    reason: str
    memory_bytes: int
    guest_pause_s: float = math.nan
    precopy_time_s: float = 0.0
    postcopy_time_s: float = 0.0
    postcopy_faults: float = 0.0
    postcopy_stall_s: float = 0.0
    postcopy_bytes: int = 0
    postcopy_urgent_pages: float = 0.0
    postcopy_blocktime_s: float = 0.0
    postcopy_vcpu_blocktime_s: tuple[float, ...] = ()
    final_pages: float = 0.0
    expected_downtime_s: float = math.nan
    throttle_pct_max: float = 0.0
    xbzrle_hit_pages: float = 0.0
    trace_looped: bool = False
    trace_sha256: str = ""
    miglab_version: str = ""
    rounds_rows: Sequence[dict[str, Any]] = ()
    timeline_points: Sequence[tuple[float, float]] = ()

    SUMMARY_KEYS = ("total_time_s", "downtime_s", "guest_pause_s", "bytes_sent", "rounds", "dirty_sync_count",
                    "converged", "reason", "memory_bytes", "precopy_time_s", "postcopy_time_s", "postcopy_faults", "postcopy_stall_s",
                    "postcopy_bytes", "postcopy_urgent_pages", "postcopy_blocktime_s",
                    "final_pages", "expected_downtime_s", "throttle_pct_max", "xbzrle_hit_pages", "trace_looped")

    @functools.cached_property
    def rounds_table(self) -> pd.DataFrame:
        """One row per phase (pre-copy rounds, then stop-and-copy or switchover), columns :data:`ROUND_COLUMNS`."""
        import pandas as pd

        return pd.DataFrame(list(self.rounds_rows), columns=ROUND_COLUMNS)

    @functools.cached_property
    def timeline(self) -> pd.DataFrame:
        """Remaining bytes over time: columns ``t_s`` and ``remaining_bytes``."""
        import pandas as pd

        points = np.array(self.timeline_points, dtype=float).reshape(-1, 2)
        return pd.DataFrame(points, columns=TIMELINE_COLUMNS)

    def summary(self) -> dict[str, Any]:
        """Flat metrics, suitable for one row of a table."""
        return {k: getattr(self, k) for k in self.SUMMARY_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: summary, per-round table, timeline and provenance."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            # the per-vCPU list beside the flat metrics (summary() stays one scalar per column)
            "summary": {**{k: clean(v) for k, v in self.summary().items()},
                        "postcopy_vcpu_blocktime_s": list(self.postcopy_vcpu_blocktime_s)},
            "rounds": [{k: clean(v) for k, v in r.items()} for r in self.rounds_table.to_dict("records")],
            "timeline": self.timeline.to_dict("list"),
            "scenario": self.scenario.to_dict(),
            "trace_sha256": self.trace_sha256,
            "miglab_version": self.miglab_version,
        }
