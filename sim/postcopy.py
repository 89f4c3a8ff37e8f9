"""Post-copy: the destination runs while the rest of memory arrives.

Two cooperating SimPy processes share the pending set:

* ``background_push`` streams pending pages at the link rate: in address order
  (``linear``, the default: it matched real QEMU runs best); carrying on from
  the page last requested by a fault (``follow``); or, with
  ``bubbling`` (Hines & Gopalan, VEE 2009), pushing the ``bubble_pages`` pages
  after each faulting page first;
* ``run_guest`` advances the destination guest. When it touches a page still
  pending, ``serve_fault`` stalls its vCPU for one round trip plus the page's
  transfer time, queued behind ``postcopy_queue_bytes`` of push data already in
  the socket (QEMU without postcopy-preempt).

They hand each other the step's faults through a :class:`PostcopyState`, and
see the migration through :class:`sim.migration.MigrationState`, so this
module never imports the engine.

Reads: traces record writes only. The guest is assumed to touch
``1 + read_write_ratio`` times as many pages as it writes, drawn from the same
distribution, i.e. it walks through the trace (or model) that much faster.

Expected-value mode integrates the same dynamics per page class in small time
steps; page-exact mode processes each step's touches as a vectorised batch.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from .dirty import ExactPages, ExpectedPages
from .migration import ZERO_PAGE_WIRE_BYTES, MigrationState

STEPS = 400  # integration steps over the nominal push time


@dataclass
class PostcopyState:
    """What post-copy's two processes hand each other, step by step.

    The guest (``run_guest``) records the faults it took; the push
    (``background_push``) takes them at its next step: their replies used
    link time the push cannot, and prepaging pushes around them.
    """

    #: Length of one integration step (s): both processes advance by it.
    step_s: float
    #: Wall time (s) until which the vCPU is blocked in a fault's stall (page-exact mode).
    stalled_until_s: float
    #: Pages faulted in since the push's last step (both modes).
    fault_pages: float = 0.0
    #: Page numbers faulted in since the push's last step (page-exact mode).
    faulted_pages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: Pages per class faulted in during the guest's last step (expected mode); None once the push took them.
    faults_by_class_pages: np.ndarray | None = None

    def take_faulted_pages(self) -> np.ndarray:
        """The pages faulted in since the last call; the list starts again empty."""
        faulted, self.faulted_pages = self.faulted_pages, np.zeros(0, np.int64)
        return faulted

    def take_faults_by_class(self) -> np.ndarray | None:
        """The guest's last step's faults per class, if the push has not taken them yet."""
        by_class, self.faults_by_class_pages = self.faults_by_class_pages, None
        return by_class


def fault_stall_s(m: MigrationState) -> float:
    """vCPU stall of one post-copy fault."""
    sc = m.sc
    return sc.link.rtt_s + (m.page_wire + sc.host.postcopy_queue_bytes) / m.switch_rate_Bps


def postcopy(env: simpy.Environment, m: MigrationState) -> Generator[Any, Any, Any]:
    """Run the post-copy phase until every page is on the destination."""
    done = env.event()
    pending0 = m.pages.count()
    if pending0 <= 0.5:
        return
    step_s = max(pending0 * m.page_wire / m.switch_rate_Bps / STEPS, 1e-4)
    state = PostcopyState(step_s=step_s, stalled_until_s=env.now)
    env.process(background_push(env, m, state, done))
    env.process(run_guest(env, m, state, done))
    yield done


def background_push(env: simpy.Environment, m: MigrationState, state: PostcopyState,
                    done: simpy.Event) -> Generator[Any, Any, Any]:
    """Stream pending pages; fault replies share the link and come first. Zero pages are elided as in pre-copy."""
    per_page_s = m.page_wire / m.switch_rate_Bps + m.per_page_s
    zero_page_s = (m.header + ZERO_PAGE_WIRE_BYTES) / m.switch_rate_Bps
    prepaging = m.sc.strategy.prepaging
    bubble = m.sc.strategy.bubble_pages if prepaging == "bubbling" else 0
    push_ptr = 0
    while not done.triggered:
        dt = state.step_s
        yield env.timeout(dt)
        pages = m.pages
        pending = pages.count()
        zero_share = min(1.0, m.zero_left / pending) if pending > 0 else 0.0
        avg_page_s = (1 - zero_share) * per_page_s + zero_share * zero_page_s
        budget = max((dt - state.fault_pages * per_page_s) / avg_page_s, 0.0)
        state.fault_pages = 0.0
        bubbled = 0.0
        if isinstance(pages, ExpectedPages):
            faults_by_class = state.take_faults_by_class()
            if prepaging == "follow" and faults_by_class is not None and faults_by_class.sum() > 0:
                # The scan continues where the guest faults: the step's push goes to the faulting classes.
                want = pages.pending * (faults_by_class > 0)
                take = want * min(1.0, budget / want.sum()) if want.sum() > 0 else want
                pages.pending -= take
                bubbled = float(take.sum())
            elif bubble and faults_by_class is not None and faults_by_class.sum() > 0:
                # Pre-page around faults: part of the budget goes to the classes that fault.
                want = np.minimum(faults_by_class * bubble, pages.pending)
                take = want * min(1.0, budget / want.sum()) if want.sum() > 0 else want
                pages.pending -= take
                bubbled = float(take.sum())
            pushed = pages.send(budget - bubbled)
        else:
            assert isinstance(pages, ExactPages)
            faults = state.take_faulted_pages()
            if bubble and len(faults):
                starts = np.repeat(faults + 1, bubble)
                near = starts + np.tile(np.arange(bubble), len(faults))
                near = near[near < m.n_pages]
                near = near[pages.pending[near]][: int(budget)]
                pages.discard(near)
                bubbled = float(len(near))
                pages.scan_pos = push_ptr
            elif prepaging == "follow" and len(faults):
                pages.scan_pos = int(faults[-1] + 1) % m.n_pages
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


def run_guest(env: simpy.Environment, m: MigrationState, state: PostcopyState, done: simpy.Event) -> Generator[Any, Any, Any]:
    """Advance the destination guest; every touch of a missing page goes through serve_fault."""
    stall = fault_stall_s(m)
    factor = m.sc.host.dirty_rate_factor * m.sc.workload.intensity
    while not done.triggered:
        dt = state.step_s
        pages = m.pages
        if isinstance(pages, ExpectedPages):
            touch = m.touch_source
            assert isinstance(touch, ExpectedPages)
            mu = touch.lam * factor
            # Per guest-second, pending pages of class k are first-touched at rate mu_k * P_k; each stalls
            # the vCPU, so of dt seconds the guest runs dt / (1 + stall * rate).
            fault_rate = float((mu * pages.pending).sum())
            run_s = dt / (1.0 + stall * fault_rate)
            by_class = np.minimum(pages.pending, pages.pending * -np.expm1(-mu * run_s))
            pages.pending -= by_class
            faults = float(by_class.sum())
            state.faults_by_class_pages = by_class
            m.g += run_s * factor
        else:
            faults, run_s = serve_fault(env, m, state, dt, stall, factor)
        m.pc_faults += faults
        m.pc_stall_s += max(dt - run_s, 0.0)  # float noise must not make a stall negative
        m.pc_bytes += faults * m.page_wire
        state.fault_pages += faults
        yield env.timeout(dt)


def serve_fault(env: simpy.Environment, m: MigrationState, state: PostcopyState, dt: float, stall: float,
                factor: float) -> tuple[float, float]:
    """Page-exact: serve the faults of one step's touches, in time order.

    Each touch of a missing page stalls the single vCPU for ``stall`` seconds;
    a stall that outlasts the step carries into the next ones. Returns
    (faults, seconds the guest ran) and advances the guest clock.
    """
    pages = m.pages
    assert isinstance(pages, ExactPages)
    busy = max(state.stalled_until_s - env.now, 0.0)
    if busy >= dt or factor <= 0:
        return 0.0, 0.0
    g0 = m.g
    g_max = g0 + (dt - busy) * factor
    touched, times = m.touch_source.window(g0, g_max)
    order = np.argsort(times, kind="stable")
    touched, times = touched[order], times[order]
    # First touch only: a page faulted earlier in this batch has arrived.
    _, first = np.unique(touched, return_index=True)
    is_first = np.zeros(len(touched), dtype=bool)
    is_first[first] = True
    fault = pages.pending[touched] & is_first
    fault_times = times[fault]
    # Wall offset (within the step) at which fault j is taken: running time plus the stalls before it.
    starts = busy + (fault_times - g0) / factor + np.arange(len(fault_times)) * stall
    k = int(np.count_nonzero(starts < dt))
    if k:
        last_end = float(starts[k - 1]) + stall
        g_last = float(fault_times[k - 1])
    else:
        last_end, g_last = busy, g0
    if last_end >= dt:
        g_end = g_last  # blocked in the k-th fault's stall when the step ends
        state.stalled_until_s = env.now + last_end
    else:
        g_end = g_last + (dt - last_end) * factor
        if k < len(fault_times):
            g_end = min(g_end, float(fault_times[k]))
    faulted = touched[fault][:k]
    pages.discard(faulted)
    state.faulted_pages = np.concatenate([state.faulted_pages, faulted])
    m.g = g_end
    return float(k), (g_end - g0) / factor


__all__ = ["PostcopyState", "background_push", "fault_stall_s", "postcopy", "run_guest", "serve_fault"]
