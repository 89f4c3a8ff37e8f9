"""Post-copy: the destination runs while the rest of memory arrives, as QEMU 10 does it.

Two cooperating SimPy processes share the pending set (pages the source has not sent):

* ``background_push`` is the source's migration thread. Each pass of
  ``ram_find_and_save_block`` (migration/ram.c) first serves the queue of page
  requests (``get_queued_page``, skipping a requested page that is no longer
  dirty, i.e. already sent) and otherwise sends the next dirty page in address
  order (``find_dirty_block``). Without postcopy-preempt the requested pages go
  down the one migration channel and ``get_queued_page`` moves the background
  scan to the requested page ("the guest is likely to want other pages near to
  the page it just requested"), so the push *follows* the faults
  (``prepaging = "qemu"``, the default). With ``strategy.postcopy_preempt`` the
  return-path thread sends a requested page itself on the preempt channel
  (``ram_save_queue_pages`` -> ``ram_save_host_page_urgent``, flushed at once)
  and the background scan is not moved. ``linear``, ``follow`` and
  ``bubbling`` (Hines & Gopalan, VEE 2009) force one push order instead.
* ``run_guest`` advances the destination guest (one vCPU). Its first touch of
  a page that has not arrived is a userfault: ``postcopy_ram_fault_thread``
  reads it and ``postcopy_request_page`` -> ``migrate_send_rp_req_pages``
  sends a request whenever the page is not in the received bitmap -- also when
  the page is already requested or already on its way (the ``page_requested``
  tree only avoids inserting it twice). The source counts every request it
  reads (``ram_save_queue_pages``: ``postcopy_requests``), so a fault on a page
  in flight is one request and stalls the vCPU only until the page lands
  (:func:`serve_fault`), while a fault on a page the source has not sent waits
  the round trip plus the urgent path (:func:`fault_stall_s`): behind the
  migration channel's backlog (``host.postcopy_queue_bytes``) without preempt,
  behind nothing on the preempt channel.

Blocktime is counted as QEMU's ``postcopy-blocktime`` capability counts it
(migration/postcopy-ram.c): ``mark_postcopy_blocktime_begin`` when the fault
thread reads a vCPU's fault, ``mark_postcopy_blocktime_end`` when the page is
placed (``qemu_ufd_copy_ioctl``); per vCPU the sum of those intervals
(``postcopy-vcpu-blocktime``), and in total the time during which every vCPU
was blocked at once (``postcopy-blocktime``). The modelled guest has one vCPU,
so the two are the same figure.

The processes hand each other the step's faults through a :class:`PostcopyState`
and see the migration through :class:`sim.migration.MigrationState`, so this
module never imports the engine.

Reads: traces record writes only. The guest is assumed to touch
``1 + read_write_ratio`` times as many pages as it writes, drawn from the same
distribution, i.e. it walks through the trace (or model) that much faster.

Expected-value mode integrates the same dynamics per page class in small time
steps; page-exact mode processes each step's touches as a vectorised batch.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from .migration import ZERO_PAGE_WIRE_BYTES, MigrationState
from .pending import ExactPages, ExpectedPages

STEPS = 400  # integration steps over the nominal push time
_EMPTY_I64 = np.zeros(0, np.int64)
_EMPTY_F64 = np.zeros(0, np.float64)


@dataclass
class PostcopyState:
    """What post-copy's two processes hand each other, step by step.

    The guest (``run_guest``) records the pages it had sent urgently; the push
    (``background_push``) takes them at its next step: their replies used link
    time the push cannot, and prepaging pushes around them. The push records
    what it sent, so that the guest can tell a page in flight from one not sent.
    """

    #: Length of one integration step (s): both processes advance by it.
    step_s: float
    #: Wall time (s) until which the vCPU is blocked in a fault's stall (page-exact mode).
    stalled_until_s: float
    #: Pages sent on the urgent path since the push's last step (both modes).
    fault_pages: float = 0.0
    #: Page numbers sent on the urgent path since the push's last step (page-exact mode).
    faulted_pages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: Pages per class sent urgently during the guest's last step (expected mode); None once the push took them.
    faults_by_class_pages: np.ndarray | None = None
    #: Background pushes still in flight (page-exact): (pages sorted, wall time each lands) per push step.
    in_flight: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: Pages per class the push sent in its last step, and that step's length (expected mode).
    pushed_by_class: np.ndarray | None = None
    pushed_s: float = 0.0

    def take_faulted_pages(self) -> np.ndarray:
        """The pages faulted in since the last call; the list starts again empty."""
        faulted, self.faulted_pages = self.faulted_pages, np.zeros(0, np.int64)
        return faulted

    def take_faults_by_class(self) -> np.ndarray | None:
        """The guest's last step's faults per class, if the push has not taken them yet."""
        by_class, self.faults_by_class_pages = self.faults_by_class_pages, None
        return by_class

    def landing_s(self, pages: np.ndarray, now_s: float) -> np.ndarray:
        """Wall time each of ``pages`` lands on the destination if a push still has it in flight, else -inf.

        Drops the pushes that have landed whole by ``now_s``.
        """
        self.in_flight = [e for e in self.in_flight if len(e[1]) and e[1][-1] > now_s]
        out = np.full(len(pages), -np.inf)
        for sent, lands in self.in_flight:
            i = np.searchsorted(sent, pages)
            i[i >= len(sent)] = 0
            hit = sent[i] == pages
            out[hit] = np.maximum(out[hit], lands[i[hit]])
        return out


def fault_stall_s(m: MigrationState) -> float:
    """vCPU stall of a fault on a page the source has not sent: the request's way there
    (``migrate_send_rp_req_pages``), the urgent path, the page, and its way back.

    Without postcopy-preempt the page waits in the migration channel behind
    ``host.postcopy_queue_bytes`` of background data (``get_queued_page`` in the
    migration thread); with it, ``ram_save_host_page_urgent`` writes it on the
    preempt channel and flushes it at once.
    """
    sc = m.sc
    backlog = 0 if sc.strategy.postcopy_preempt else sc.host.postcopy_queue_bytes
    return sc.link.rtt_s + (m.page_wire + backlog) / m.switch_rate_Bps


def flight_s(m: MigrationState) -> float:
    """A background page's way from the sender to the destination: the channel's backlog ahead of it, one way."""
    return m.sc.host.postcopy_queue_bytes / m.switch_rate_Bps + m.sc.link.rtt_s / 2


def push_follows_faults(m: MigrationState) -> bool:
    """Whether the background scan carries on from the last requested page (QEMU without preempt)."""
    prepaging = m.sc.strategy.prepaging
    return prepaging == "follow" or (prepaging == "qemu" and not m.sc.strategy.postcopy_preempt)


def postcopy(env: simpy.Environment, m: MigrationState) -> Generator[Any, Any, Any]:
    """Run the post-copy phase until every page is on the destination."""
    done = env.event()
    pending0 = m.pages.count()
    if pending0 <= 0.5:
        return
    step_s = max(pending0 * m.page_wire / m.switch_rate_Bps / STEPS, 1e-4)
    state = PostcopyState(step_s=step_s, stalled_until_s=env.now)
    if isinstance(m.pages, ExpectedPages) and m.sc.strategy.prepaging != "bubbling":
        # Counts per class: the same steps as the two processes, integrated in one loop (no events).
        end_s = expected_postcopy(m, state, env.now)
        delay = end_s - env.now
        while env.now + delay < end_s:  # land on the very float the stepped clock reached
            delay = math.nextafter(delay, math.inf)
        while env.now + delay > end_s:
            delay = math.nextafter(delay, -math.inf)
        yield env.timeout(delay)
        return
    env.process(background_push(env, m, state, done))
    env.process(run_guest(env, m, state, done))
    yield done


def expected_postcopy(m: MigrationState, state: PostcopyState, t0_s: float) -> float:
    """Expected-value post-copy in one loop over plain floats; returns the wall time it ends.

    The arithmetic, step order and results are those of ``run_guest`` and
    ``background_push`` on :class:`~sim.pending.ExpectedPages` (the guest's step
    at t, then the push's step for [t, t + dt] at t + dt, ...), without a SimPy
    event or a numpy call on a handful of classes per step: a model has a few
    page classes, and two processes cost 800 events and ~4000 tiny reductions
    per run. Bubbling keeps the processes.
    """
    pages, touch = m.pages, m.touch_source
    assert isinstance(pages, ExpectedPages) and isinstance(touch, ExpectedPages)
    dt = state.step_s
    stall = fault_stall_s(m)
    flight = flight_s(m)
    factor = m.sc.host.dirty_rate_factor * m.sc.workload.intensity
    follow = push_follows_faults(m)
    per_page_s = m.page_wire / m.switch_rate_Bps + m.per_page_s
    zero_page_s = (m.header + ZERO_PAGE_WIRE_BYTES) / m.switch_rate_Bps
    zero_wire = m.header + ZERO_PAGE_WIRE_BYTES
    page_wire, page_size = m.page_wire, m.page_size
    mu = [float(x) * factor for x in touch.lam]
    # In flight: touched with probability q_k, waiting E[flight - T | T < flight] (see run_guest).
    q = [-math.expm1(-x * flight) for x in mu]
    w = [flight * (1.0 - 1.0 / (x * flight) + math.exp(-x * flight) / qk) if x * flight > 1e-6 else flight / 2
         for x, qk in zip(mu, q, strict=True)]
    fly = flight > 0
    P = [float(x) for x in pages.pending]
    n = len(P)
    idx = range(n)
    timeline = m.timeline
    g, zero_left = m.g, m.zero_left
    faults = urgent_total = stall_total = pc_bytes = 0.0
    pushed: list[float] | None = None
    t = t0_s
    expm1 = math.expm1
    # Plain float loops with the sums taken in index order, which is numpy's order for fewer than
    # eight classes (more classes differ from the processes by float rounding only, ~1e-15).
    while True:
        # -- run_guest's step at t
        fault_rate = 0.0
        for k in idx:
            fault_rate += mu[k] * P[k]
        fly_rate = fly_wait = 0.0
        if pushed is not None and fly:
            for k in idx:
                pq = pushed[k] * q[k]
                fly_rate += pq
                fly_wait += pq * w[k]
            fly_rate /= dt
            fly_wait /= dt
        run_s = dt / (1.0 + stall * fault_rate + fly_wait)
        by_class = [0.0] * n
        urgent = pending = 0.0
        for k in idx:
            p = P[k]
            f = p * -expm1(-mu[k] * run_s)
            if f > p:
                f = p
            by_class[k] = f
            P[k] = p = p - f
            urgent += f
            pending += p
        g += run_s * factor
        faults += urgent + fly_rate * run_s
        urgent_total += urgent
        stall_total += dt - run_s if dt > run_s else 0.0
        pc_bytes += urgent * page_wire
        # -- background_push's step for [t, t + dt]
        t += dt
        zero_share = (zero_left / pending if zero_left < pending else 1.0) if pending > 0 else 0.0
        avg_page_s = (1 - zero_share) * per_page_s + zero_share * zero_page_s
        budget = (dt - urgent * per_page_s) / avg_page_s
        if budget < 0.0:
            budget = 0.0
        before = P[:]
        bubbled = 0.0
        total = pending
        if follow and urgent > 0:
            want_sum = 0.0
            for k in idx:
                if by_class[k] > 0:
                    want_sum += P[k]
            share = (budget / want_sum if budget < want_sum else 1.0) if want_sum > 0 else 1.0
            total = 0.0
            for k in idx:
                if by_class[k] > 0:
                    take = P[k] * share
                    P[k] -= take
                    bubbled += take
                total += P[k]
        send = budget - bubbled
        if send > total:
            send = total
        left = 0.0
        if total > 0:
            keep = 1.0 - send / total
            for k in idx:
                P[k] = x = P[k] * keep
                left += x
        else:
            for x in P:
                left += x
        pushed = [before[k] - P[k] for k in idx]
        moved = send + bubbled
        zero = zero_share * moved
        zero_left -= zero
        pc_bytes += (moved - zero) * page_wire + zero * zero_wire
        timeline.append((t, left * page_size))
        if left <= 0.5:
            break
    pages.pending = np.zeros(n)
    pages.count()
    m.g, m.zero_left = g, zero_left
    m.pc_faults += faults
    m.pc_urgent += urgent_total
    m.pc_stall_s += stall_total
    m.pc_bytes += pc_bytes
    return t


def background_push(env: simpy.Environment, m: MigrationState, state: PostcopyState,
                    done: simpy.Event) -> Generator[Any, Any, Any]:
    """Stream pending pages; urgent pages share the link and come first. Zero pages are elided as in pre-copy."""
    per_page_s = m.page_wire / m.switch_rate_Bps + m.per_page_s
    zero_page_s = (m.header + ZERO_PAGE_WIRE_BYTES) / m.switch_rate_Bps
    prepaging = m.sc.strategy.prepaging
    follow = push_follows_faults(m)
    bubble = m.sc.strategy.bubble_pages if prepaging == "bubbling" else 0
    flight = flight_s(m)
    push_ptr = 0
    while not done.triggered:
        dt = state.step_s
        yield env.timeout(dt)
        pages = m.pages
        pending = pages.count()
        zero_share = min(1.0, m.zero_left / pending) if pending > 0 else 0.0
        avg_page_s = (1 - zero_share) * per_page_s + zero_share * zero_page_s
        urgent_s = state.fault_pages * per_page_s
        budget = max((dt - urgent_s) / avg_page_s, 0.0)
        state.fault_pages = 0.0
        bubbled = 0.0
        if isinstance(pages, ExpectedPages):
            faults_by_class = state.take_faults_by_class()
            before = pages.pending.copy()  # send() scales the array in place
            if follow and faults_by_class is not None and faults_by_class.sum() > 0:
                # The scan continues where the guest faults: the step's push goes to the faulting classes.
                want = pages.pending * (faults_by_class > 0)
                take = want * min(1.0, budget / want.sum()) if want.sum() > 0 else want
                pages.pending = pages.pending - take
                bubbled = float(take.sum())
            elif bubble and faults_by_class is not None and faults_by_class.sum() > 0:
                # Pre-page around faults: part of the budget goes to the classes that fault.
                want = np.minimum(faults_by_class * bubble, pages.pending)
                take = want * min(1.0, budget / want.sum()) if want.sum() > 0 else want
                pages.pending = pages.pending - take
                bubbled = float(take.sum())
            pushed = pages.send(budget - bubbled)
            state.pushed_by_class = before - pages.pending
            state.pushed_s = dt
        else:
            assert isinstance(pages, ExactPages)
            faults = state.take_faulted_pages()
            near = _EMPTY_I64
            if bubble and len(faults):
                starts = np.repeat(faults + 1, bubble)
                near = starts + np.tile(np.arange(bubble), len(faults))
                near = near[near < m.n_pages]
                near = np.unique(near[pages.pending[near]])[: int(budget)]
                pages.discard(near)
                bubbled = float(len(near))
                pages.scan_pos = push_ptr
            elif follow and len(faults):
                # get_queued_page: the background search continues from the (last) queued page.
                pages.scan_pos = int(faults[-1] + 1) % m.n_pages
            if flight > 0:
                sent = pages.take(budget - bubbled)
                pushed = float(len(sent))
                _record_flight(state, near, sent, env.now - dt + urgent_s, avg_page_s, flight)
            else:
                pushed = pages.send(budget - bubbled)
            push_ptr = pages.scan_pos
        moved = pushed + bubbled
        zero = zero_share * moved
        m.zero_left -= zero
        m.pc_bytes += (moved - zero) * m.page_wire + zero * (m.header + ZERO_PAGE_WIRE_BYTES)
        m.mark()
        if m.pages.count() <= 0.5:
            m.pages.clear()
            if not done.triggered:
                done.succeed()


def _record_flight(state: PostcopyState, first: np.ndarray, then: np.ndarray, t0_s: float, page_s: float,
                   flight: float) -> None:
    """Note one push step's pages (``first`` sent before ``then``, one every ``page_s`` from ``t0_s``) in flight."""
    sent = np.concatenate([first, then]) if len(first) else then
    if not len(sent):
        return
    lands = t0_s + (np.arange(1, len(sent) + 1) * page_s + flight)
    order = np.argsort(sent, kind="stable")
    state.in_flight.append((sent[order], lands[order]))


def run_guest(env: simpy.Environment, m: MigrationState, state: PostcopyState, done: simpy.Event) -> Generator[Any, Any, Any]:
    """Advance the destination guest; every touch of a page that has not arrived goes through serve_fault."""
    stall = fault_stall_s(m)
    flight = flight_s(m)
    factor = m.sc.host.dirty_rate_factor * m.sc.workload.intensity
    while not done.triggered:
        dt = state.step_s
        pages = m.pages
        if isinstance(pages, ExpectedPages):
            touch = m.touch_source
            assert isinstance(touch, ExpectedPages)
            mu = touch.lam * factor
            # Per guest-second, pending pages of class k are first-touched at rate mu_k * P_k; each stalls
            # the vCPU for `stall`. Pages of the last push are in flight for `flight` seconds: one is
            # touched then with probability q_k = 1 - exp(-mu_k * flight) and the vCPU waits out the rest
            # of its flight, E[flight - T | T < flight] for an exponential first touch T.
            fault_rate = float((mu * pages.pending).sum())
            fly_rate = fly_wait = 0.0
            pushed = state.pushed_by_class
            if pushed is not None and flight > 0 and state.pushed_s > 0:
                x = mu * flight
                q = -np.expm1(-x)
                with np.errstate(divide="ignore", invalid="ignore"):
                    w = np.where(x > 1e-6, flight * (1.0 - 1.0 / x + np.exp(-x) / q), flight / 2)
                fly_rate = float((pushed * q).sum()) / state.pushed_s
                fly_wait = float((pushed * q * w).sum()) / state.pushed_s
            run_s = dt / (1.0 + stall * fault_rate + fly_wait)
            by_class = np.minimum(pages.pending, pages.pending * -np.expm1(-mu * run_s))
            pages.pending = pages.pending - by_class
            urgent = float(by_class.sum())
            requests = urgent + fly_rate * run_s
            state.faults_by_class_pages = by_class
            m.g += run_s * factor
        else:
            requests, urgent, run_s = serve_fault(env, m, state, dt, stall, factor)
        m.pc_faults += requests
        m.pc_urgent += urgent
        m.pc_stall_s += max(dt - run_s, 0.0)  # float noise must not make a stall negative
        m.pc_bytes += urgent * m.page_wire
        state.fault_pages += urgent
        yield env.timeout(dt)


def serve_fault(env: simpy.Environment, m: MigrationState, state: PostcopyState, dt: float, stall: float,
                factor: float) -> tuple[float, float, float]:
    """Page-exact: serve the faults of one step's touches, in time order.

    A first touch of a page the source has not sent stalls the single vCPU for
    ``stall`` seconds (and sends the page on the urgent path); a first touch of
    a page a push has in flight stalls it until the page lands. Each is one
    request to the source. A stall that outlasts the step carries into the next
    ones. Returns (requests, pages sent urgently, seconds the guest ran) and
    advances the guest clock.
    """
    pages = m.pages
    assert isinstance(pages, ExactPages)
    now = env.now
    busy = max(state.stalled_until_s - now, 0.0)
    if busy >= dt or factor <= 0:
        return 0.0, 0.0, 0.0
    g0 = m.g
    g_max = g0 + (dt - busy) * factor
    touched, times = m.touch_source.window(g0, g_max)
    order = np.argsort(times, kind="stable")
    touched, times = touched[order], times[order]
    # First touch only: a page faulted earlier in this batch has arrived.
    _, first = np.unique(touched, return_index=True)
    first.sort()
    touched, times = touched[first], times[first]
    urgent = pages.pending[touched]
    lands = np.full(len(touched), -np.inf)
    if state.in_flight:
        rest = ~urgent
        lands[rest] = state.landing_s(touched[rest], now) - now  # offsets within the step
    cand = urgent | (lands > 0)
    touched, times, urgent, lands = touched[cand], times[cand], urgent[cand], lands[cand]
    if not len(touched):
        m.g = g_max
        return 0.0, 0.0, dt - busy
    # Wall offsets: fault j starts at start_j = end_{j-1} + gap_j (the guest running from the last one)
    # and ends at end_j = max(lands_j, start_j + s_j) (s_j = stall for urgent pages, 0 in flight), so
    # with C = cumsum(gap + s), end_j = C_j + max(busy, max_{i<=j}(lands_i - C_i)): one pass.
    gaps = np.diff(times, prepend=g0) / factor
    s = np.where(urgent, stall, 0.0)
    c = np.cumsum(gaps + s)
    ends = c + np.maximum(busy, np.maximum.accumulate(lands - c))
    starts = np.concatenate(([busy], ends[:-1])) + gaps
    k = int(np.searchsorted(starts, dt, side="left"))  # starts is increasing: faults begun within the step
    faulted = urgent[:k] | (lands[:k] > starts[:k])
    if k:
        last_end = float(ends[k - 1])
        g_last = float(times[k - 1])
    else:
        last_end, g_last = busy, g0
    if last_end >= dt:
        g_end = g_last  # blocked in the k-th fault's stall when the step ends
        state.stalled_until_s = now + last_end
    else:
        g_end = g_last + (dt - last_end) * factor
        if k < len(times):
            g_end = min(g_end, float(times[k]))
    sent = touched[:k][urgent[:k]]
    pages.discard(sent)
    state.faulted_pages = np.concatenate([state.faulted_pages, sent])
    m.g = g_end
    return float(np.count_nonzero(faulted)), float(len(sent)), (g_end - g0) / factor


__all__ = ["PostcopyState", "background_push", "expected_postcopy", "fault_stall_s", "flight_s", "postcopy", "push_follows_faults",
           "run_guest", "serve_fault"]
