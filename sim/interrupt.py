"""SIGTERM as an orderly stop: the one guard every long run uses.

A batch scheduler, ``timeout`` or ``kill`` ends a run with SIGTERM, whose
default action kills the process at once: no ``finally`` runs, so guests keep
running, namespaces stay behind and checkpoints are lost. Inside
:func:`sigterm_as_interrupt` SIGTERM raises :class:`KeyboardInterrupt`
instead, so a run unwinds exactly as it does on Ctrl-C (every context manager
cleans up, partial traces and sweep checkpoints are written)::

    with sigterm_as_interrupt():
        run_sweep(...)

Signal handlers can only be set from the main thread; elsewhere the guard does
nothing (the main thread's handler, if any, still applies).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt; the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["sigterm_as_interrupt"]
