"""Pre-copy stop rules: when to stop iterating and switch over.

Each rule is a small object asked two things by the engine: how many pages to
send in the next round (``round_pages``) and, after the dirty-bitmap sync that
ends the round, what to do next (``decide``). The rules:

``qemu``
    QEMU's migration_iteration_run(): threshold = measured bandwidth x
    downtime-limit. Every iteration (~50 ms of sending) it compares pending
    bytes with the threshold; once below, it syncs the dirty bitmap exactly and
    completes if pending is still below. With ``qemu_sync="pass"`` a round
    sends the whole dirty set first (the textbook model behind the geometric
    closed form). QEMU itself never forces a switchover; ``max_rounds`` and
    ``timeout_s`` are guards whose outcome ``on_round_limit`` chooses.
``bhyve``
    The FreeBSD-UPB patches: ``MIGRATION_ROUNDS = 4`` rounds (round 0 sends all
    memory, rounds 1-3 the pages dirtied since the previous round), no
    threshold; then the vCPUs pause and the rest is sent. ``bhyve_rounds``
    changes the 4.
``xen``
    xc_domain_save's classic loop: stop after ``xen_max_iters`` iterations,
    after sending ``xen_max_factor`` x memory, when fewer than
    ``xen_min_dirty_pages`` pages are dirty, or when dirtying outpaces sending
    (a round dirtied at least as many pages as it sent). Always switches over.
``simgrid``
    SimGrid 3.32's VmLiveMigration: stage 2 loops while remaining bytes exceed
    measured bandwidth x 0.03 s (``simgrid_threshold_s``); no round cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .scenario import Strategy

Decision = Literal["continue", "complete", "cancel"]


@dataclass
class RoundInfo:
    """What the engine tells a rule after a round's closing sync."""

    round_no: int          # 0-based index of the round that just ended
    sent_pages: float      # pages sent in it
    new_dirty_pages: float  # pages newly dirtied since the previous sync
    pending_pages: float   # pending after the sync
    total_sent_pages: float
    n_pages: int
    threshold_pages: float


class StopRule:
    name = "base"
    # "pass": a round sends the whole pending set; "iteration": QEMU's threshold-paced sync.
    sync: str = "pass"

    def __init__(self, strategy: Strategy) -> None:
        self.s = strategy
        self.reason = ""

    def round_pages(self, pending: float, threshold_pages: float, chunk_pages: float) -> float:
        return pending

    def decide(self, info: RoundInfo) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError


class QemuRule(StopRule):
    name = "qemu"

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.sync = strategy.qemu_sync

    def round_pages(self, pending: float, threshold_pages: float, chunk_pages: float) -> float:
        if self.sync == "pass" or pending < threshold_pages:
            return pending
        # Pending is re-checked after every iteration chunk and the bitmap synced as soon as it drops below
        # the threshold, so a round stops somewhere in the last chunk above it. Where exactly depends on
        # how the pages fall into chunks, which nobody controls: take the expected point, half a chunk below.
        residual = max(threshold_pages - chunk_pages / 2, 0.0)
        return pending - residual

    def decide(self, info: RoundInfo) -> Decision:
        if info.pending_pages < info.threshold_pages:
            self.reason = "pending below bandwidth x downtime-limit"
            return "complete"
        return "continue"


class BhyveRule(StopRule):
    name = "bhyve"

    def decide(self, info: RoundInfo) -> Decision:
        if info.round_no + 1 >= self.s.bhyve_rounds:
            self.reason = f"fixed MIGRATION_ROUNDS = {self.s.bhyve_rounds}"
            return "complete"
        return "continue"


class XenRule(StopRule):
    name = "xen"

    def decide(self, info: RoundInfo) -> Decision:
        s = self.s
        if info.round_no + 1 >= s.xen_max_iters:
            self.reason = f"max iterations ({s.xen_max_iters})"
        elif info.total_sent_pages >= s.xen_max_factor * info.n_pages:
            self.reason = f"sent {s.xen_max_factor:g}x memory"
        elif info.pending_pages < s.xen_min_dirty_pages:
            self.reason = f"fewer than {s.xen_min_dirty_pages} dirty pages"
        elif info.round_no >= 1 and info.new_dirty_pages >= info.sent_pages:
            self.reason = "dirtying outpaces sending"
        else:
            return "continue"
        return "complete"


class SimgridRule(StopRule):
    name = "simgrid"

    def decide(self, info: RoundInfo) -> Decision:
        if info.pending_pages <= info.threshold_pages:
            self.reason = f"remaining below bandwidth x {self.s.simgrid_threshold_s:g} s"
            return "complete"
        return "continue"


RULES: dict[str, type[StopRule]] = {"qemu": QemuRule, "bhyve": BhyveRule, "xen": XenRule, "simgrid": SimgridRule}


def make_rule(strategy: Strategy) -> StopRule:
    return RULES[strategy.stop_rule](strategy)
