"""The discrete-event (SimPy) model of live migration and :func:`simulate`.

One migration is one SimPy environment. The top process ``migrate`` runs the
strategy's phases as sub-processes:

* ``precopy_round``: send one round's pages while the guest keeps running
  (under the ``xen`` rule, :func:`sim.xen.xen_precopy_round`: Xen's pass,
  which skips pages dirtied again before their turn, at Xen's adaptive rate);
* ``stop_and_copy``: pause the guest, send what is left plus device state;
* ``postcopy``: resume on the destination at once, with ``background_push``
  streaming the rest while ``run_guest`` touches pages and ``serve_fault``
  stalls it for each page that has not arrived yet (see :mod:`sim.postcopy`
  for the QEMU functions each mechanism follows).

Between rounds the dirty bitmap is synced (:meth:`Migration.sync_dirty`): the
pages dirtied since the previous sync join the pending set, and the stop rule
(:mod:`sim.stoprules`) decides what happens next.

The guest runs on its own clock (guest time): auto-converge throttling, bhyve's
per-chunk vCPU pauses, the host's ``dirty_rate_factor`` and post-copy stalls all
slow it, and the dirty source is read in guest time.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from . import __version__
from .dirty import SampledDirt, TraceDirt
from .errors import ConfigError
from .migration import ZERO_PAGE_WIRE_BYTES
from .model import DirtyModel
from .pending import ExactPages, ExpectedPages
from .postcopy import postcopy
from .result import Result
from .scenario import Scenario
from .stoprules import RoundInfo, XenRule, make_rule
from .trace import Trace
from .trace import load as load_trace
from .workload import parse_spec, spec_model
from .xen import xen_precopy_round

BHYVE_LOWMEM_LIMIT_BYTES = 3 * 2**30
#: Without a timeout (QEMU has none), a pre-copy whose pending pages have not reached a new low in this many
#: rounds is reported as not converging instead of being simulated for ever (QEMU would run until cancelled).
STALLED_ROUNDS = 50


@functools.lru_cache(maxsize=8)
def _cached_trace(path: str, mtime_ns: int) -> Trace:
    return load_trace(path)


@functools.lru_cache(maxsize=64)
def _cached_model(path: str, mtime_ns: int) -> DirtyModel:
    return DirtyModel.load(path)


@functools.lru_cache(maxsize=256)
def _spec_model(spec: str, memory_bytes: int, page_size: int) -> DirtyModel:
    # A sweep simulates one spec many times: parse and resolve it once (errors are not cached).
    return spec_model(parse_spec(spec, memory_bytes, page_size, where="workload.spec"), memory_bytes // page_size,
                      page_size)


@functools.lru_cache(maxsize=64)
def _cached_model_at(path: str, mtime_ns: int, memory_bytes: int, scaling: str) -> DirtyModel:
    model = _cached_model(path, mtime_ns)
    return model if model.memory_bytes == memory_bytes else model.rescale(memory_bytes, scaling)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1  # let the loader produce the one-line error


class Migration:
    """Mutable state of one simulated migration (the scenario itself stays frozen)."""

    def __init__(self, env: simpy.Environment, sc: Scenario) -> None:
        self.env = env
        self.sc = sc
        w, link, host, st = sc.workload, sc.link, sc.host, sc.strategy
        self.rule = make_rule(st)
        self.trace_sha256 = ""
        touch_scale = 1.0 + w.read_write_ratio
        self.model: DirtyModel | None = None
        if w.kind == "trace":
            trace = _cached_trace(w.path, _mtime(w.path))
            self.trace_sha256 = trace.sha256
            self.page_size = trace.page_size
            self.pages: ExpectedPages | ExactPages = ExactPages(TraceDirt(trace, sc.seed,
                                                                          within_interval=w.within_interval))
            self.touch_source: Any = TraceDirt(trace, sc.seed, touch_scale, within_interval=w.within_interval)
            zero = trace.meta.get("zero_page_fraction", 0.0)
        else:
            if w.kind == "model":
                model = _cached_model_at(w.path, _mtime(w.path), w.memory_bytes, w.scaling)
                self.trace_sha256 = str(model.source.get("trace_sha256", ""))
            else:
                model = _spec_model(w.spec, w.memory_bytes, w.page_size_bytes)
            self.model = model
            self.page_size = model.page_size
            zero = model.zero_page_fraction
            if w.mode == "sampled":
                self.pages = ExactPages(SampledDirt(model, sc.seed))
                self.touch_source = SampledDirt(model, sc.seed + 1, touch_scale)
            else:
                self.pages = ExpectedPages(model)
                self.touch_source = ExpectedPages(model, touch_scale)
        self.n_pages = self.pages.n_pages
        self.zero_fraction = float(w.zero_page_fraction if w.zero_page_fraction is not None else (zero or 0.0))
        self.bhyve = host.hypervisor == "bhyve"
        # postcopy-ram opens QEMU's return path, which a completion must close before its downtime clock stops.
        self.return_path = not self.bhyve and sc.strategy.kind in ("postcopy", "hybrid")
        if self.bhyve:
            self.zero_fraction = 0.0  # bhyve sends every page, zero or not
        self.header = link.header_bytes_per_page
        self.page_wire = self.page_size + self.header
        rate = link.bandwidth_Bps * host.throughput_efficiency
        self.switch_rate_Bps = rate
        self.live_rate_Bps = min(rate, link.migration_cap_Bps) if link.migration_cap_Bps else rate
        self.per_page_s = host.page_send_cost_s + (host.bhyve_page_send_s if self.bhyve else 0.0)
        # QEMU measures the stream's bandwidth (bytes/s, headers included) and multiplies by the limit.
        self.measured_bw_Bps = self.page_wire / (self.page_wire / self.live_rate_Bps + self.per_page_s)
        self.g = 0.0            # guest time
        self.g_sync = 0.0       # guest time of the last dirty sync
        self.throttle_pct = 0.0
        self.throttle_max = 0.0
        self.high_cnt = 0
        self.period_t0 = 0.0
        self.period_bytes0 = 0.0
        self.period_dirty = 0.0
        self.bytes_sent = 0.0
        self.pages_sent = 0.0
        self.zero_left = self.zero_fraction * self.n_pages
        self.fresh_seen = float(self.n_pages)
        self.syncs = 0
        self.rounds: list[dict[str, Any]] = []
        self.timeline: list[tuple[float, float]] = []
        self.resent_ws = 0.0
        self.xbzrle_hits = 0.0
        self.converged = True
        self.reason = ""
        self.downtime_s = math.nan
        self.guest_pause_s = math.nan
        self.expected_downtime_s = math.nan
        self.final_pages = 0.0
        self.precopy_end = 0.0
        self.pc_faults = 0.0
        self.pc_urgent = 0.0
        self.pc_stall_s = 0.0
        self.pc_bytes = 0.0
        self.pc_start = math.nan

    @property
    def sync_s(self) -> float:
        """One dirty-bitmap sync of the whole guest (``host.sync_s_per_GiB``)."""
        return self.sc.host.sync_s_per_GiB * self.n_pages * self.page_size / 2**30

    # -- guest clock --------------------------------------------------------
    def advance_guest(self, dt: float, paused_fraction: float = 0.0) -> None:
        # A throttled vCPU keeps (1 - p) of its time; the workload needs cpu_utilization of it to keep pace.
        throttle = min(1.0, (1.0 - self.throttle_pct / 100.0) / self.sc.workload.cpu_utilization)
        factor = self.sc.host.dirty_rate_factor * self.sc.workload.intensity * throttle * (1.0 - paused_fraction)
        self.g += dt * max(factor, 0.0)

    # -- rates --------------------------------------------------------------
    @property
    def threshold_pages(self) -> float:
        st = self.sc.strategy
        limit = st.simgrid_threshold_s if st.stop_rule == "simgrid" else st.downtime_limit_s
        return self.measured_bw_Bps * limit / self.page_size

    @property
    def chunk_pages(self) -> float:
        st = self.sc.strategy
        per_s = 1.0 / (self.page_wire / self.live_rate_Bps + self.per_page_s)
        return max(1.0, per_s * st.qemu_iteration_s)

    def xbzrle_ratio(self, round_no: int) -> float:
        """Share of re-sent pages that hit the XBZRLE cache (QEMU caches from the first round after the bulk)."""
        st = self.sc.strategy
        if self.bhyve or st.xbzrle_cache_bytes <= 0 or round_no < 2 or self.resent_ws <= 0:
            return 0.0
        return min(1.0, st.xbzrle_cache_bytes / self.page_size / self.resent_ws)

    def cost(self, pages: float, zero: float, xbz: float, rate_Bps: float) -> tuple[float, float]:
        """Wire bytes and seconds to send ``pages`` pages of which ``zero`` are zero and ``xbz`` XBZRLE hits."""
        normal = pages - zero - xbz
        delta = self.sc.workload.xbzrle_delta_fraction * self.page_size
        wire = normal * self.page_wire + zero * (self.header + ZERO_PAGE_WIRE_BYTES) + xbz * (self.header + delta)
        if self.bhyve:
            # Every bhyve pass first sends the whole page list, one byte per guest page
            # (usr.sbin/bhyve/migration.c, live_migrate_send).
            wire += self.n_pages
        seconds = wire / rate_Bps + (pages - zero) * self.per_page_s
        if self.sc.host.zero_page_cost_s and not self.bhyve:
            seconds += zero * self.sc.host.zero_page_cost_s  # QEMU reads a page to find it zero
        if self.bhyve:
            seconds += math.ceil(pages / max(self.sc.host.bhyve_chunk_pages, 1)) * self.sc.host.bhyve_chunk_pause_s
        return wire, seconds

    # -- dirty bitmap sync --------------------------------------------------
    def sync_dirty(self) -> float:
        """Merge pages dirtied since the last sync into pending; QEMU's auto-converge check runs here."""
        new = self.pages.add_dirty(self.g_sync, self.g)
        self.g_sync = self.g
        self.syncs += 1
        self.period_dirty += new
        st = self.sc.strategy
        now = self.env.now
        if now - self.period_t0 > 1.0:  # QEMU evaluates the throttle at most once per second of syncs
            xfer = self.bytes_sent - self.period_bytes0
            if st.auto_converge and not self.bhyve and self.period_dirty * self.page_size > xfer * st.ac_trigger_pct / 100:
                self.high_cnt += 1
                if self.high_cnt >= 2:
                    self.high_cnt = 0
                    self.throttle_pct = (st.ac_initial_pct if self.throttle_pct == 0
                                         else min(self.throttle_pct + st.ac_increment_pct, st.ac_max_pct))
                    self.throttle_max = max(self.throttle_max, self.throttle_pct)
            self.period_t0, self.period_bytes0, self.period_dirty = now, self.bytes_sent, 0.0
        return new

    def send_pages(self, k: float) -> tuple[float, float]:
        """Send ``k`` pending pages; return (pages sent, expected zero pages among them).

        Zero pages are sought among the fresh pages -- pending and not written since the migration
        started, i.e. the first pass's unsent remainder -- evenly: a page the guest wrote is data,
        and a fresh page the guest writes before it is sent stops being a candidate. (Count-based
        page sets cannot tell fresh from re-dirtied, and spread zero pages over all pending pages.)
        """
        fresh = self.pages.fresh_count()
        if 0 < fresh < self.fresh_seen:
            self.zero_left *= fresh / self.fresh_seen
        sent, fresh_sent = self.pages.send_counted(k)
        zero = min(self.zero_left * fresh_sent / fresh, sent) if fresh > 0 else 0.0
        self.zero_left -= zero
        self.fresh_seen = max(fresh - fresh_sent, 0.0)
        return sent, zero

    def record(self, **row: Any) -> None:
        self.rounds.append(row)

    def mark(self) -> None:
        self.timeline.append((self.env.now, self.pages.count() * self.page_size))


# ---------------------------------------------------------------- processes
def precopy_round(env: simpy.Environment, m: Migration, round_no: int, pages: float) -> Generator[Any, Any, Any]:
    """Send ``pages`` pending pages while the guest runs and dirties more."""
    t0 = env.now
    _, zero = m.send_pages(pages)
    xbz = (pages - zero) * m.xbzrle_ratio(round_no)
    m.xbzrle_hits += xbz
    wire, seconds = m.cost(pages, zero, xbz, m.live_rate_Bps)
    paused = 0.0
    if m.bhyve and round_no >= 1 and m.sc.host.bhyve_dirty_search_s_per_page > 0:
        # live_migrate_send pauses the vCPUs while search_dirty_pages walks the guest (rounds 1..N-1).
        search = m.n_pages * m.sc.host.bhyve_dirty_search_s_per_page
        paused_s = search + math.ceil(pages / max(m.sc.host.bhyve_chunk_pages, 1)) * m.sc.host.bhyve_chunk_pause_s
        seconds += search
        paused = min(1.0, paused_s / seconds)
    elif not m.bhyve and round_no >= 1 and m.sc.host.sync_s_per_GiB > 0:
        seconds += m.sync_s  # the bitmap sync that started this round, while the guest runs
    elif m.bhyve and seconds > 0:
        chunks = math.ceil(pages / max(m.sc.host.bhyve_chunk_pages, 1))
        paused = min(1.0, chunks * m.sc.host.bhyve_chunk_pause_s / seconds)
    yield env.timeout(seconds)
    m.advance_guest(seconds, paused)
    m.bytes_sent += wire
    m.pages_sent += pages
    m.mark()
    m.record(round=round_no, phase="precopy", t_start_s=t0, duration_s=seconds, pages=pages, zero_pages=zero,
             xbzrle_pages=xbz, bytes=wire, throttle_pct=m.throttle_pct, threshold_bytes=m.threshold_pages * m.page_size)


def stop_and_copy(env: simpy.Environment, m: Migration, phase: str = "stopcopy") -> Generator[Any, Any, Any]:
    """Pause the guest and send every pending page plus device state; this is the downtime."""
    sc = m.sc
    t0 = env.now
    if phase != "cold":
        m.sync_dirty()  # QEMU's completion sync; zero guest time has passed in the stop-and-copy case
    pages = m.pages.count() if phase != "cold" else 0.0
    m.final_pages = pages
    zero = m.send_pages(pages)[1] if pages > 0 else 0.0
    xbz = (pages - zero) * m.xbzrle_ratio(len(m.rounds))
    rate = final_copy_rate_Bps(m)
    wire, seconds = m.cost(pages, zero, xbz, rate)
    burst = min(wire, float(sc.host.final_copy_burst_bytes))
    if burst > 0 and rate < m.switch_rate_Bps:
        seconds -= burst / rate - burst / m.switch_rate_Bps  # banked credit goes at the link's rate
    wire += sc.host.device_state_bytes
    seconds += sc.host.device_state_bytes / rate
    fixed = sc.host.cold_restart_s if phase == "cold" else sc.host.switchover_s + sc.host.resume_s
    if not m.bhyve and phase != "cold" and sc.host.sync_s_per_GiB > 0:
        fixed += m.sync_s  # the completion sync runs with the vCPUs paused
    if m.bhyve and phase != "cold":
        fixed += m.n_pages * sc.host.bhyve_dirty_search_s_per_page  # the last search runs with the vCPUs paused
    downtime = fixed + seconds + sc.link.rtt_s / 2
    if m.return_path and phase != "cold":
        # close_return_path_on_source() runs before migration_completion_end(): the clock keeps running
        # until the destination has the whole stream -- the backlog still queued in socket and link
        # buffers, the same queue a post-copy request waits behind -- and its reply is back.
        downtime += sc.host.postcopy_queue_bytes / m.switch_rate_Bps + sc.link.rtt_s / 2
    if phase == "cold":
        pause = downtime
    else:
        # The guest pause (source STOP to destination RESUME) ends on the destination: after the last
        # byte lands -- behind the backlog still buffered in socket and link when the source has
        # written it, plus one way -- and the destination has loaded the device state. QEMU's
        # downtime clock, on the source, stops earlier (or, with the return path, one reply later).
        pause = (fixed + seconds + sc.host.postcopy_queue_bytes / m.switch_rate_Bps + sc.link.rtt_s / 2
                 + sc.host.device_load_s)
    m.pages.clear()
    yield env.timeout(downtime)
    m.downtime_s = downtime
    m.guest_pause_s = pause
    m.bytes_sent += wire
    m.pages_sent += pages
    m.mark()
    m.record(round=len(m.rounds), phase=phase, t_start_s=t0, duration_s=downtime, pages=pages, zero_pages=zero,
             xbzrle_pages=xbz, bytes=wire, pending_pages_after=0.0, new_dirty_pages=0.0,
             throttle_pct=m.throttle_pct, threshold_bytes=math.nan)


def final_copy_rate_Bps(m: Migration) -> float:
    """The rate of the final stop-and-copy: the host's measured one, Xen's current rate, or the link's."""
    host = m.sc.host
    if host.final_copy_rate_Bps is not None:
        return min(host.final_copy_rate_Bps, m.sc.link.bandwidth_Bps)
    if isinstance(m.rule, XenRule) and m.rule.adaptive:
        # xc_linux_save writes the last iteration through xcio_ratewrite too, at mbit_rate as the
        # print_stats() after the suspend left it: the maximum once the rate test fired (Clark et al.
        # §5.3: "at the maximum allowable rate"), possibly less after the 50-page or iteration tests.
        return min(m.switch_rate_Bps, m.rule.rate_Bps)
    return m.switch_rate_Bps


def postcopy_switch(env: simpy.Environment, m: Migration) -> Generator[Any, Any, Any]:
    """Stop the source, move device state, resume on the destination with pages still missing."""
    sc = m.sc
    t0 = env.now
    m.sync_dirty()  # postcopy_start syncs the bitmap to send the discard list
    seconds = sc.host.device_state_bytes / m.switch_rate_Bps
    # QEMU's downtime clock stops once the source has sent the package (postcopy_start); the guest
    # resumes when it arrives, rtt/2 later.
    fixed = sc.host.postcopy_switch_s if sc.host.postcopy_switch_s is not None else sc.host.switchover_s
    downtime = fixed + seconds
    # The destination resumes when the package has landed -- behind the backlog the pre-copy stream
    # left in socket and link buffers, plus one way -- and it has loaded the device state
    # (loadvm_postcopy_handle_run); the post-copy phase starts there.
    paused = (downtime + sc.host.postcopy_queue_bytes / m.switch_rate_Bps + sc.link.rtt_s / 2
              + sc.host.device_load_s)
    yield env.timeout(paused)
    m.downtime_s = downtime
    m.guest_pause_s = paused
    m.bytes_sent += sc.host.device_state_bytes
    m.record(round=len(m.rounds), phase="switchover", t_start_s=t0, duration_s=paused, pages=0.0, zero_pages=0.0,
             xbzrle_pages=0.0, bytes=float(sc.host.device_state_bytes), pending_pages_after=m.pages.count(),
             new_dirty_pages=0.0, throttle_pct=m.throttle_pct, threshold_bytes=math.nan)


def precopy(env: simpy.Environment, m: Migration) -> Generator[Any, Any, str]:
    """Rounds until the stop rule says complete (-> stop_and_copy), cancel, or a hybrid switch."""
    st = m.sc.strategy
    m.pages.set_all()
    m.syncs = 1  # the setup sync
    m.mark()
    round_no = 0
    total_sent = 0.0
    prev_pending = math.inf
    low, low_round = math.inf, 0  # the fewest pending pages after a sync, and when
    switch_due = False
    xen = isinstance(m.rule, XenRule)
    if isinstance(m.rule, XenRule):
        m.zero_left = 0.0  # xc_domain_save sends every page in full
        m.rule.expected_counts = not m.pages.exact
        m.rule.count_dispersion = m.sc.workload.write_dispersion
    sticky = _StickyDirt(m) if m.bhyve and m.sc.host.bhyve_sticky_dirty else None
    while True:
        pending = m.pages.count()
        if st.kind == "hybrid" and round_no >= st.postcopy_after_rounds:
            # QEMU acts on migrate-start-postcopy at its next iteration check, after one more chunk, and
            # checks for completion first: when that chunk takes the estimate below the threshold it
            # syncs exactly, completes as pre-copy if the exact pending is below too, and otherwise
            # starts post-copy right there (migration_iteration_run).
            if not (m.rule.sync == "iteration" and pending - m.chunk_pages < m.threshold_pages):
                return "postcopy"
            switch_due = True
        skipped = 0.0
        if xen:
            pages, skipped = yield env.process(xen_precopy_round(env, m, round_no))
        else:
            pages = m.rule.round_pages(pending, m.threshold_pages, m.chunk_pages)
            pages, cut = _until_deadline(env, m, pages)
            yield env.process(precopy_round(env, m, round_no, pages))
            if cut:  # QEMU's migrate_cancel at the timeout: mid-round, no further sync
                m.reason = f"timeout: did not converge in {st.timeout_s:g} s"
                return "cancel"
        total_sent += pages
        new = m.sync_dirty()
        if sticky is not None:
            sticky.keep(m)
        m.mark()
        pending = m.pages.count()
        if round_no >= 1:
            m.resent_ws = max(m.resent_ws, pending)
        m.rounds[-1].update(pending_pages_after=pending, new_dirty_pages=new)
        m.expected_downtime_s = pending * m.page_size / m.measured_bw_Bps
        info = RoundInfo(round_no, pages, new, pending, total_sent, m.n_pages, m.threshold_pages,
                         skipped_pages=skipped, seconds=m.rounds[-1]["duration_s"], page_size=m.page_size)
        decision = m.rule.decide(info)
        round_no += 1
        if decision == "complete":
            m.reason = m.rule.reason
            return "stopcopy"
        if switch_due:
            return "postcopy"
        if st.kind == "hybrid" and st.stall_detector and pending >= st.stall_ratio * prev_pending:
            m.reason = f"convergence stalled (pending {pending:.0f} >= {st.stall_ratio:g} x {prev_pending:.0f} pages)"
            return "postcopy"
        prev_pending = pending
        if st.timeout_s is not None and env.now >= st.timeout_s:
            m.reason = f"timeout: did not converge in {st.timeout_s:g} s"
            return "cancel"
        if pending < low:
            low, low_round = pending, round_no
        elif st.timeout_s is None and round_no - low_round >= STALLED_ROUNDS:
            m.reason = f"not converging: no new low of pending pages ({low:.0f}) in {STALLED_ROUNDS} rounds"
            return "cancel"
        if st.max_rounds is not None and round_no >= st.max_rounds:
            m.reason = f"round limit ({st.max_rounds}) reached"
            if st.on_round_limit == "switchover":
                return "stopcopy"
            return "cancel"
        if pages <= 0 and pending > 0 and skipped <= 0:
            m.reason = "no progress possible"
            return "cancel"


def _until_deadline(env: simpy.Environment, m: Migration, pages: float) -> tuple[float, bool]:
    """The pages of a round that fit before ``strategy.timeout_s``, and whether the round is cut there.

    Costed as if none were zero pages (the dearest case), so a cut round ends at or before the deadline.
    """
    deadline = m.sc.strategy.timeout_s
    if deadline is None or pages <= 0:
        return pages, False
    _, full_s = m.cost(pages, 0.0, 0.0, m.live_rate_Bps)
    if env.now + full_s <= deadline:
        return pages, False
    fit = pages * max(deadline - env.now, 0.0) / full_s
    return (float(math.floor(fit)) if m.pages.exact else fit), True


class _StickyDirt:
    """The early bhyve live migration (D30954): VPO_VMM_DIRTY stays set once a page is dirtied.

    Every page dirtied since the migration began is in every later round's dirty list, so
    it is sent again each round; per-round clearing came later, with highmem support.
    """

    def __init__(self, m: Migration) -> None:
        self.g0 = m.g
        self.ever = np.zeros_like(m.pages.pending_words) if isinstance(m.pages, ExactPages) else None

    def keep(self, m: Migration) -> None:
        """After a sync: pending becomes everything dirtied since the first round began."""
        pages = m.pages
        if isinstance(pages, ExactPages):
            assert self.ever is not None
            # Round 0 sends everything, so what is pending after its sync was dirtied.
            self.ever |= pages.pending_words
            pages.or_words(self.ever)
        else:
            ever = pages.n * pages.fraction_dirtied(m.g - self.g0)
            pages.pending = np.maximum(pages.pending, ever)


def migrate(env: simpy.Environment, m: Migration) -> Generator[Any, Any, Any]:
    """The whole migration: setup, then the strategy's phases."""
    sc = m.sc
    st = sc.strategy
    if m.bhyve and not sc.host.wired_memory:
        m.converged, m.reason = False, "bhyve migrates wired memory only (start the guest with bhyve -S)"
        return
    if m.bhyve and sc.host.bhyve_lowmem_only and m.n_pages * m.page_size > BHYVE_LOWMEM_LIMIT_BYTES:
        m.converged, m.reason = False, "these bhyve patches migrate lowmem only: guests must be under 3 GiB"
        return
    setup_s = sc.host.setup_s + sc.host.setup_s_per_GiB * m.n_pages * m.page_size / 2**30
    if setup_s:
        yield env.timeout(setup_s)
    if st.kind == "stopcopy":
        m.pages.set_all()
        m.syncs = 1
        m.mark()
        m.reason = "cold migration" if st.cold else "stop-and-copy"
        yield env.process(stop_and_copy(env, m, "cold" if st.cold else "stopcopy"))
        m.precopy_end = env.now
        return
    if st.kind == "postcopy":
        m.pages.set_all()
        m.syncs = 1
        m.mark()
        next_phase = "postcopy"
        m.reason = "post-copy"
    else:
        next_phase = yield env.process(precopy(env, m))
    m.precopy_end = env.now
    if next_phase == "cancel":
        m.converged = False
        return
    if next_phase == "stopcopy":
        yield env.process(stop_and_copy(env, m, "stopcopy"))
        return
    if not m.reason:
        m.reason = f"switched to post-copy after {len([r for r in m.rounds if r['phase'] == 'precopy'])} rounds"
    yield env.process(postcopy_switch(env, m))
    m.pc_start = env.now
    yield env.process(postcopy(env, m))


def simulate(scenario: Scenario) -> Result:
    """Simulate one migration. Pure: the same scenario (and seed) always gives the same Result."""
    if not isinstance(scenario, Scenario):
        raise ConfigError(f"simulate() takes a Scenario, not {type(scenario).__name__}")
    env = simpy.Environment()
    m = Migration(env, scenario)
    env.run(until=env.process(migrate(env, m)))
    return _result(m)


def _result(m: Migration) -> Result:
    # The round and timeline tables stay raw lists: Result builds its DataFrames only when asked.
    live = sum(1 for row in m.rounds if row["phase"] == "precopy")
    total = m.env.now  # a cancelled migration ends at its cancel, so this holds either way
    pc_time = (total - m.pc_start) if not math.isnan(m.pc_start) else 0.0
    return Result(
        scenario=m.sc, total_time_s=float(total), downtime_s=float(m.downtime_s) if m.converged else math.nan,
        guest_pause_s=float(m.guest_pause_s) if m.converged else math.nan,
        bytes_sent=int(round(m.bytes_sent + m.pc_bytes)), rounds=live, dirty_sync_count=int(m.syncs),
        converged=bool(m.converged), reason=m.reason or m.rule.reason, memory_bytes=int(m.n_pages * m.page_size),
        precopy_time_s=float(m.precopy_end), postcopy_time_s=float(pc_time), postcopy_faults=float(m.pc_faults),
        postcopy_stall_s=float(m.pc_stall_s), postcopy_urgent_pages=float(m.pc_urgent),
        # One modelled vCPU: QEMU's total blocktime (all vCPUs blocked at once) is that vCPU's.
        postcopy_blocktime_s=float(m.pc_stall_s), postcopy_vcpu_blocktime_s=(float(m.pc_stall_s),),
        postcopy_bytes=int(round(m.pc_bytes)), final_pages=float(m.final_pages),
        expected_downtime_s=float(m.expected_downtime_s), throttle_pct_max=float(m.throttle_max),
        xbzrle_hit_pages=float(m.xbzrle_hits), trace_looped=bool(m.pages.looped or getattr(m.touch_source, "looped", False)),
        trace_sha256=m.trace_sha256, miglab_version=__version__, rounds_rows=m.rounds, timeline_points=m.timeline,
    )
