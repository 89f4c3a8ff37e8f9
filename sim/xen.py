"""Xen's pre-copy pass as xc_domain_save runs it: skip what was dirtied again, at an adaptive rate.

The sources, and what each part of this module follows:

* Xen 2.0 ``tools/libxc/xc_linux_save.c``, ``xc_linux_save()`` -- the code
  Clark et al. (NSDI 2005) measured -- and its successor
  ``tools/libxc/xc_domain_save.c``, ``xc_domain_save()`` (Xen 3.x-4.5; since
  4.6 ``tools/libxc/xc_sr_save.c``, later ``tools/libs/guest/xg_sr_save.c``,
  which dropped the skip and the rate limiter).
* **The pass.** Each iteration walks every pfn (Xen 2.0 in the pseudo-random
  order of ``permute()``, "so that we scan pages in a pseudo random order,
  enabling us to get a better estimate of the domain's page dirtying rate"; Xen
  3+ in address order). Before each batch of ``BATCH_SIZE`` / ``MAX_BATCH_SIZE``
  = 1024 pages it re-reads the dirty bitmap without clearing it
  (``DOM0_SHADOW_CONTROL_OP_PEEK`` into ``to_skip``). A page in ``to_send``
  whose bit is set again is counted in ``skip_this_iter`` and not sent
  ("page is marked to_send & hasn't already been re-dirtied"); it stays dirty,
  so the ``OP_CLEAN`` that ends the iteration puts it into the next
  ``to_send``. The last iteration ignores ``to_skip``. Clark et al. §5.4
  ("peek").
* **The rate.** Live pages go through ``xcio_ratewrite``/``ratewrite``: a
  token bucket of ``BURST_BUDGET`` = 100 KiB per ``RATE_TO_BTU / mbit_rate``
  microseconds, i.e. ``mbit_rate`` x 131072 bytes/s. ``mbit_rate`` starts at
  ``START_MBIT_RATE`` (the minimum) and after each iteration ``print_stats()``
  sets it to the iteration's dirtying rate + 50 if that rate exceeded it,
  capped at ``MAX_MBIT_RATE`` = 500 (:class:`sim.stoprules.XenRule`); Clark et
  al. §5.3. The last iteration goes through the same ``xcio_ratewrite`` /
  ``ratewrite`` (Xen 2.0 and 3.0 alike), at ``mbit_rate`` as the
  ``print_stats()`` after the suspend left it (the engine's
  ``final_copy_rate_Bps``: the rule's rate, unless the host says otherwise).
  The bucket's budget is never capped (``budget += BURST_BUDGET`` for every
  slot since ``last_put``), so what the writer banked while it waited, the
  suspend above all, goes first at link speed: ``host.final_copy_burst_bytes``.
  (Xen 4.x's ``xc_domain_save`` has no rate limiter at all.)
* **The stop test**: :class:`sim.stoprules.XenRule`.

Both pending-page models run the same pass:

* page-exact (:class:`~sim.pending.ExactPages`): the pass visits the pending
  pages in ``permute()`` order; before each batch the pages dirtied since the
  round began (guest time) join a skip map, and the next batch is the next
  ``xen_batch_pages`` pending pages not in it. For guests over 256 batches per
  pass the peek runs once per 1/256 of the pass instead. With a trace
  (:class:`~sim.dirty.TraceDirt`) the skip map and the closing sync see the
  same writes. A sampled model (:class:`~sim.dirty.SampledDirt`) draws the
  closing sync afresh, so a skipped page stays pending even when that second
  draw misses it: slightly more re-sending than the model implies.
* expected counts (:class:`~sim.pending.ExpectedPages`): the pass visits every
  class evenly (what ``permute()`` aims for); a pending page reached at guest
  time ``tau`` into the round is skipped with the class's probability of a
  write in ``[0, tau)``, evaluated at each peek. This is exact in expectation
  for the skip, but the closing sync then treats a page sent at ``tau`` like
  any clean page (written in the whole round with the class probability)
  rather than only in ``[tau, T)``: an approximation that overstates the
  re-dirtying of pages sent early in a round whose length is comparable with
  the class's write interval, and is exact for pages written much more or
  much less often than once per round.

Xen's pass sends every page in full: no zero-page elision, no XBZRLE, no
per-pass page list, whatever the host's copy mechanics.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import simpy

from .pending import ExactPages, ExpectedPages
from .stoprules import XenRule

if TYPE_CHECKING:
    from .engine import Migration

log = logging.getLogger(__name__)

#: A pass peeks at most this many times (a 1 TiB guest has 262,144 batches per pass).
MAX_PEEKS_PER_PASS = 256


@functools.lru_cache(maxsize=8)
def scan_order(n_pages: int) -> np.ndarray:
    """The pfn order of Xen 2.0's pass: ``permute(N, nr_pfns, order_nr)`` for N = 0 .. nr_pfns-1.

    A 10-bit rotation of N within ``order_nr`` bits, repeated while the result is out of
    range (never for a power-of-two page count). Read-only.
    """
    order_nr = max(int(n_pages - 1).bit_length(), 1)
    mask = (1 << order_nr) - 1
    n = np.arange(n_pages, dtype=np.int64)
    if order_nr <= 10:
        n.flags.writeable = False
        return n  # (i >> (order_nr - 10)) would shift by a negative count: Xen never migrates < 4 MiB
    out = n.copy()
    todo = np.ones(n_pages, dtype=bool)
    i = n
    while todo.any():
        i = ((i >> (order_nr - 10)) | (i << 10)) & mask
        done = todo & (i < n_pages)
        out[done] = i[done]
        todo &= ~done
    out.flags.writeable = False
    return out


def xen_precopy_round(env: simpy.Environment, m: Migration, round_no: int) -> Generator[Any, Any, Any]:
    """One live iteration of xc_domain_save; returns (pages sent, pages skipped)."""
    rule = m.rule
    assert isinstance(rule, XenRule)
    st = m.sc.strategy
    rate_Bps = min(m.live_rate_Bps, rule.rate_Bps)
    t0 = env.now
    to_send = m.pages.count()
    step_pages = max(float(st.xen_batch_pages), to_send / MAX_PEEKS_PER_PASS)
    if isinstance(m.pages, ExactPages):
        sent, skipped = yield from _exact_pass(env, m, rate_Bps, int(round(step_pages)))
    else:
        sent, skipped = yield from _expected_pass(env, m, rate_Bps, step_pages)
    seconds = env.now - t0
    wire = sent * m.page_wire
    m.bytes_sent += wire
    m.pages_sent += sent
    m.mark()
    m.record(round=round_no, phase="precopy", t_start_s=t0, duration_s=seconds, pages=sent, zero_pages=0.0,
             xbzrle_pages=0.0, bytes=wire, throttle_pct=m.throttle_pct, threshold_bytes=float("nan"),
             skipped_pages=skipped, rate_Bps=rate_Bps)
    return sent, skipped


def _send_time(m: Migration, pages: float, rate_Bps: float) -> float:
    return pages * m.page_wire / rate_Bps + pages * m.per_page_s


def _exact_pass(env: simpy.Environment, m: Migration, rate_Bps: float, step: int) -> Generator[Any, Any, Any]:
    pages = m.pages
    assert isinstance(pages, ExactPages)
    order = scan_order(pages.n_pages)
    cand = order[pages.pending[order]]  # to_send, in the order the pass meets it
    skip = np.zeros(pages.n_pages, dtype=bool)
    peek = m.sc.strategy.xen_skip_redirtied
    g_seen = m.g
    pos = sent = skipped = 0
    while pos < len(cand):
        if peek and m.g > g_seen:  # OP_PEEK: the bitmap since the round's OP_CLEAN
            dirt, _ = pages.source.window(g_seen, m.g)
            skip[dirt] = True
            g_seen = m.g
        batch, pos, passed = _next_batch(cand, pos, skip, step)
        skipped += passed
        if len(batch) == 0:
            continue
        pages.discard(batch)
        sent += len(batch)
        dt = _send_time(m, len(batch), rate_Bps)
        yield env.timeout(dt)
        m.advance_guest(dt)
    return float(sent), float(skipped)


def _next_batch(cand: np.ndarray, pos: int, skip: np.ndarray, k: int) -> tuple[np.ndarray, int, int]:
    """The next ``k`` candidates from ``pos`` not in ``skip``; (batch, new pos, candidates skipped)."""
    parts: list[np.ndarray] = []
    passed = 0
    need = k
    while need > 0 and pos < len(cand):
        window = cand[pos: pos + max(2 * need, 4096)]
        ok = ~skip[window]
        cum = np.cumsum(ok)
        cut = int(np.searchsorted(cum, need)) + 1 if cum[-1] >= need else len(window)
        parts.append(window[:cut][ok[:cut]])
        got = int(cum[cut - 1])
        passed += cut - got
        need -= got
        pos += cut
    batch = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return batch, pos, passed


def _expected_pass(env: simpy.Environment, m: Migration, rate_Bps: float, step: float) -> Generator[Any, Any, Any]:
    pages = cast(ExpectedPages, m.pages)  # the caller sends ExactPages to _exact_pass
    to_send = pages.pending.copy()
    sent_k = np.zeros_like(to_send)
    peek = m.sc.strategy.xen_skip_redirtied
    g0 = m.g
    visited = 0.0  # share of to_send the pass has met, evenly across classes
    while visited < 1.0:
        q = pages.fraction_dirtied(m.g - g0) if peek else np.zeros_like(to_send)
        sendable = float((to_send * (1.0 - q)).sum())
        left = 1.0 - visited
        dx = left if sendable * left <= step else step / sendable
        s_k = to_send * dx * (1.0 - q)
        sent_k += s_k
        visited = 1.0 if dx >= left else visited + dx
        dt = _send_time(m, float(s_k.sum()), rate_Bps)
        if dt > 0:
            yield env.timeout(dt)
            m.advance_guest(dt)
    pages.pending = np.maximum(to_send - sent_k, 0.0)  # the skipped pages stay dirty for the next round
    sent = float(sent_k.sum())
    return sent, float(to_send.sum()) - sent
