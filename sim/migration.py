"""What a migration's phases share: the running migration's state, and the stream's fixed sizes.

:class:`sim.engine.Migration` is the one implementation of
:class:`MigrationState`. The phases in other modules (:mod:`sim.postcopy`) are
written against this protocol, so they import neither the engine nor each
other and the engine imports them at the top.
"""

from __future__ import annotations

from typing import Any, Protocol

from .pending import ExactPages, ExpectedPages
from .scenario import Scenario

#: QEMU's RAM_SAVE_FLAG_ZERO page on the wire: the page header plus one byte.
ZERO_PAGE_WIRE_BYTES = 1


class MigrationState(Protocol):
    """The mutable state of one simulated migration that its phase processes read and advance."""

    sc: Scenario
    #: Pending pages on the source (what is still to be sent), and the touches the guest makes.
    pages: ExpectedPages | ExactPages
    touch_source: Any
    n_pages: int
    #: Wire framing: bytes per page header, bytes per normal page (page + header).
    header: int
    page_wire: int
    page_size: int
    #: Link rate at switchover (the whole link, no migration cap) and the sender's CPU cost per page.
    switch_rate_Bps: float
    per_page_s: float
    #: Zero pages still unsent (expected count): they cost a header and a byte, not a page.
    zero_left: float
    #: Guest time (s), which runs slower than wall time while the guest is throttled or stalled.
    g: float
    #: Post-copy tallies: page requests (as QEMU counts them), pages sent on the urgent path,
    #: vCPU seconds stalled on faults, bytes streamed.
    pc_faults: float
    pc_urgent: float
    pc_stall_s: float
    pc_bytes: float
    #: (t_s, bytes pending) points: the phases append to it (through :meth:`mark` or directly).
    timeline: list[tuple[float, float]]

    def mark(self) -> None:
        """Append (now, bytes still pending) to the timeline."""
        ...
