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
    The test at the end of each pass of xc_domain_save's loop (Xen 2.0
    ``tools/libxc/xc_linux_save.c`` ``xc_linux_save``, the code Clark et al.
    measured; the same test in ``tools/libxc/xc_domain_save.c``
    ``xc_domain_save`` of Xen 3.x-4.5). The last iteration starts when any of

    * ``sent_this_iter > sent_last_iter`` with the rate at its maximum
      (``RATE_IS_MAX()``); ``sent_last_iter`` starts as all of memory;
    * ``iter >= max_iters`` (``DEF_MAX_ITERS`` 29: "limit us to 30 times
      round loop", the 30th being the last iteration);
    * ``sent_this_iter + skip_this_iter < 50``;
    * ``total_sent > p2m_size * max_factor`` (``DEF_MAX_FACTOR`` 3).

    Always switches over. The rounds themselves (skip, rate) are
    :mod:`sim.xen`; the rule also holds the adaptive rate, since the test
    reads it. On expected-value page counts, which carry no noise, the first
    test takes its median outcome (:meth:`XenRule._sent_more`).
``xen-ratio``
    miglab's earlier reading of the same limits, kept because it is a
    rate-free rule that works with any copy mechanics: stop after
    ``xen_max_iters`` rounds, after sending ``xen_max_factor`` x memory, when
    fewer than ``xen_min_dirty_pages`` pages are pending, or when a round
    dirtied at least as many pages as it sent. It is *not* Xen: it has no skip,
    no rate adaptation and compares dirtied with sent instead of sent with the
    previous round's sent.
``simgrid``
    SimGrid 3.32's VmLiveMigration: stage 2 loops while remaining bytes exceed
    measured bandwidth x 0.03 s (``simgrid_threshold_s``); no round cap.
"""

from __future__ import annotations

import math
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
    skipped_pages: float = 0.0  # pages of the pass skipped as dirtied again before their turn (xen)
    seconds: float = 0.0        # wall time of the round
    page_size: int = 4096


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


class XenRatioRule(StopRule):
    name = "xen-ratio"

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


#: Xen's rate unit: ``ratewrite`` sends BURST_BUDGET = 100 KiB every RATE_TO_BTU / mbit_rate = 781250 / mbit
#: microseconds, i.e. mbit x 131072 bytes/s (a "Mbit" of 2**20 bits).
XEN_MBIT_BPS = 131072.0
#: ``print_stats`` computes the dirtying rate as bytes / (ms x 125), i.e. in Mbit of 10**6 bits, and compares
#: that number with ``mbit_rate`` as is; in bytes/s of the rate limiter that is x 2**20 / 10**6.
XEN_DIRTY_MBIT_SCALE = 2**20 / 1e6


class XenRule(StopRule):
    """xc_domain_save's stop test, and the adaptive rate the test and the rounds share."""

    name = "xen"

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        s = strategy
        self.adaptive = s.xen_rate_adaptation
        # initialize_mbit_rate(): mbit_rate = START_MBIT_RATE (Xen 2.0: the caller's "resource" argument).
        self.rate_Bps = s.xen_min_rate_Bps if self.adaptive else math.inf
        self.sent_last = math.inf  # "pretend we sent all the pages last iteration"
        # Set by the engine for expected-value page counts (see _sent_more).
        self.expected_counts = False
        self.count_dispersion = 1.0  # variance / mean of a round's count (workload.write_dispersion)
        self.not_fired = 1.0

    @property
    def rate_is_max(self) -> bool:
        return self.adaptive and self.rate_Bps >= self.s.xen_max_rate_Bps

    def decide(self, info: RoundInfo) -> Decision:
        s = self.s
        iters = info.round_no + 1
        if self.rate_is_max and self._sent_more(info.sent_pages):
            self.reason = "sent more than the previous round at the maximum rate"
        elif iters >= s.xen_max_iters:
            self.reason = f"max iterations ({s.xen_max_iters})"
        elif info.sent_pages + info.skipped_pages < s.xen_min_dirty_pages:
            self.reason = f"fewer than {s.xen_min_dirty_pages} pages sent and skipped"
        elif info.total_sent_pages > s.xen_max_factor * info.n_pages:
            self.reason = f"sent more than {s.xen_max_factor:g}x memory"
        else:
            self.reason = ""
        # After the test, either way: CLEAN the bitmap, sent_last_iter = sent_this_iter, print_stats().
        self.sent_last = info.sent_pages
        self.adapt(info.pending_pages, info.seconds, info.page_size)
        return "complete" if self.reason else "continue"

    def _sent_more(self, sent: float) -> bool:
        """``sent_this_iter > sent_last_iter``; for expected counts, its median outcome.

        Once the rounds plateau, this comparison of two nearly equal counts is a coin
        toss that page-exact runs win or lose by noise. Expected counts have no noise
        and approach the plateau from above, so the plain comparison would never
        fire. Instead each round's count is taken as Poisson (its variance times
        ``count_dispersion`` D for clustered writes), the chance that this round beat
        the last is P = Phi((s - s_last) / sqrt(D (s + s_last))), and the rule
        fires once the chance that it has fired in some round at the maximum rate
        reaches one half: the median stopping round. An approximation, and said so.
        """
        if not self.expected_counts:
            return sent > self.sent_last
        if not math.isfinite(self.sent_last) or sent + self.sent_last <= 0:
            return sent > self.sent_last
        z = (sent - self.sent_last) / math.sqrt(self.count_dispersion * (sent + self.sent_last))
        self.not_fired *= 1.0 - 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
        return self.not_fired <= 0.5

    def adapt(self, dirty_pages: float, seconds: float, page_size: int) -> None:
        """print_stats(): if the round's dirtying rate beat the rate, the rate becomes it + 50, capped."""
        if not self.adaptive or seconds <= 0:
            return
        dirty_Bps = dirty_pages * page_size / seconds * XEN_DIRTY_MBIT_SCALE
        if dirty_Bps > self.rate_Bps:
            self.rate_Bps = min(dirty_Bps + self.s.xen_rate_increment_Bps, self.s.xen_max_rate_Bps)


class SimgridRule(StopRule):
    name = "simgrid"

    def decide(self, info: RoundInfo) -> Decision:
        if info.pending_pages <= info.threshold_pages:
            self.reason = f"remaining below bandwidth x {self.s.simgrid_threshold_s:g} s"
            return "complete"
        return "continue"


RULES: dict[str, type[StopRule]] = {"qemu": QemuRule, "bhyve": BhyveRule, "xen": XenRule, "simgrid": SimgridRule,
                                    "xen-ratio": XenRatioRule}


def make_rule(strategy: Strategy) -> StopRule:
    return RULES[strategy.stop_rule](strategy)
