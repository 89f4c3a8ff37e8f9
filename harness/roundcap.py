"""A fixed-round policy for a real QEMU migration: after K rounds, make the next check complete.

bhyve's defining limit is its fixed number of rounds (``MIGRATION_ROUNDS`` in
usr.sbin/bhyve/migration.c); QEMU has none, but it can be made to run the
same policy from outside by watching ``query-migrate`` and changing a
parameter once the K-th round has ended. This module is the pure logic: it is
fed successive polls and says when, and with which QMP command, to act.
``miglab migrate --max-rounds K`` drives it.

Counting. QEMU's ``ram.dirty-sync-count`` counts the setup sync too
(``ram_init_bitmaps`` syncs once before the first pass), and each pass ends
with a sync (``migration_bitmap_sync_precopy`` when pending falls below the
threshold). So K passes have ended once the count reaches K + 1 -- the
simulator's ``rounds`` (live passes), and the ``bhyve`` stop rule's
``bhyve_rounds = K`` (round 0 sends everything, rounds 1..K-1 the dirtied
pages). ``count_setup_sync=False`` compares the raw count instead, as
QEMU's guestperf does for its ``pause_iters``/``post_copy_iters``
(``progress._ram._iterations >= scenario._pause_iters``).

Actions (``action``):

``raise-limit`` (default)
    ``migrate-set-parameters downtime-limit=`` the largest value QEMU accepts
    (``MAX_MIGRATE_DOWNTIME_SECONDS`` = 2000 s). At its next iteration check
    (``migration_iteration_run``, every ~50 ms of sending) pending is below
    bandwidth x limit, QEMU syncs exactly and completes through its own
    completion path: the remaining pages and device state are sent with the
    guest stopped, and QEMU's ``downtime`` statistic measures that pause.
    The pass in progress when the poll sees the K-th sync is cut short after
    up to a poll interval plus one iteration of sending.
``pause``
    guestperf's ``pause_iters``: ``stop`` the source guest; the migration then
    converges on an idle guest (``cont`` on the destination afterwards is the
    caller's job). QEMU's own ``downtime`` then misses the time the guest was
    stopped before completion.
``cancel``
    guestperf's ``max_iters``: ``migrate_cancel`` once the count exceeds the
    cap (guestperf uses ``>``: the cap is the last iteration allowed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from sim.errors import ConfigError

log = logging.getLogger(__name__)

#: QEMU's ceiling for downtime-limit (migration/options.c: MAX_MIGRATE_DOWNTIME_SECONDS = 2000), in ms.
MAX_DOWNTIME_LIMIT_MS = 2000 * 1000
#: query-migrate states in which a parameter change still affects the live phase.
LIVE_STATES = frozenset({"active"})
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})

Action = Literal["raise-limit", "pause", "cancel"]


@dataclass(frozen=True)
class QmpCommand:
    """One QMP command for the caller to send: ``execute`` and its ``arguments``."""

    execute: str
    arguments: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass
class RoundCap:
    """Decides, poll by poll, when a migration has done ``max_rounds`` rounds and what to send then.

    Call :meth:`poll` with each ``query-migrate`` answer's status and
    ``ram.dirty-sync-count`` (or :meth:`poll_reply` with the whole answer).
    It returns a :class:`QmpCommand` exactly once -- at the first live poll at
    or past the cap -- and None otherwise. ``fired_sync_count`` records the
    count it acted on (the run record should keep it: the pass in progress
    then is the one cut short).
    """

    max_rounds: int
    action: Action = "raise-limit"
    count_setup_sync: bool = True
    limit_ms: int = MAX_DOWNTIME_LIMIT_MS
    fired_sync_count: int | None = None
    last_sync_count: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise ConfigError(f"must be a whole number of at least 1, not {self.max_rounds!r}", flag="--max-rounds")
        if self.action not in ("raise-limit", "pause", "cancel"):
            raise ConfigError(f"round cap: unknown action {self.action!r} (choose from raise-limit, pause, cancel)")
        if not 0 < self.limit_ms <= MAX_DOWNTIME_LIMIT_MS:
            raise ConfigError(f"round cap: limit_ms must lie in (0, {MAX_DOWNTIME_LIMIT_MS}]")

    @property
    def trigger_count(self) -> int:
        """The dirty-sync-count at which the cap acts."""
        base = self.max_rounds + (1 if self.count_setup_sync else 0)
        return base + 1 if self.action == "cancel" else base  # guestperf cancels once the count exceeds the cap

    @property
    def fired(self) -> bool:
        return self.fired_sync_count is not None

    def poll(self, status: str, dirty_sync_count: int | None) -> QmpCommand | None:
        """One query-migrate poll; the command to send now, or None."""
        if dirty_sync_count is not None:
            # The count only grows within one migration; keep the highest seen.
            self.last_sync_count = max(self.last_sync_count, int(dirty_sync_count))
        if self.fired or status not in LIVE_STATES or self.last_sync_count < self.trigger_count:
            return None
        self.fired_sync_count = self.last_sync_count
        rounds = self.last_sync_count - (1 if self.count_setup_sync else 0)
        why = f"round cap {self.max_rounds}: dirty-sync-count {self.last_sync_count} ({rounds} rounds ended)"
        log.info("%s: %s", why, self.action)
        if self.action == "raise-limit":
            return QmpCommand("migrate-set-parameters", {"downtime-limit": self.limit_ms}, why)
        if self.action == "pause":
            return QmpCommand("stop", {}, why)
        return QmpCommand("migrate_cancel", {}, why)

    def poll_reply(self, reply: dict[str, Any]) -> QmpCommand | None:
        """:meth:`poll` on a whole ``query-migrate`` return value (``status``, ``ram.dirty-sync-count``)."""
        ram = reply.get("ram") or {}
        count = ram.get("dirty-sync-count")
        return self.poll(str(reply.get("status", "")), None if count is None else int(count))
