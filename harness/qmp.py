"""A small synchronous, typed adapter over ``qemu.qmp`` (which is asyncio-only).

:class:`QMP` owns a private event loop, so plain code (the collector, the
migration runner, tests) calls it like any blocking client::

    with QMP(vm.qmp_path) as qmp:          # connects, retrying until QEMU listens
        qmp.migrate_set_capabilities({"postcopy-ram": True})
        qmp.migrate_set_parameters(max_bandwidth=100 << 20, downtime_limit=300)
        qmp.migrate("tcp:10.0.0.2:4444")
        info = qmp.query_migrate()         # the raw QMP dict: {"status": ..., "ram": {...}, ...}

Every failure is a :class:`QMPError` (a :class:`sim.errors.MiglabError`):

* :class:`QMPConnectError` -- the socket never accepted a connection;
* :class:`QMPCommandError` -- QEMU answered with an error (``.command``,
  ``.error_class``, ``.desc``);
* :class:`QMPTimeoutError` -- no answer within the timeout;
* :class:`QMPDisconnectedError` -- the connection dropped (QEMU exited).

Parameter and capability names are QMP's hyphenated names; keyword arguments
with underscores are converted (``downtime_limit=300`` -> ``downtime-limit``).
A :class:`QMP` object is safe to share between threads (calls are
serialised) but is meant to be used by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, StateError
from qemu.qmp import QMPError as _LibQMPError

from sim.errors import MiglabError

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 15.0


class QMPError(MiglabError):
    """Anything that went wrong talking to QEMU over QMP."""


class QMPConnectError(QMPError):
    """Could not connect to the QMP socket."""


class QMPTimeoutError(QMPError):
    """QEMU did not answer in time."""


class QMPDisconnectedError(QMPError):
    """The connection dropped, usually because QEMU exited."""


class QMPCommandError(QMPError):
    """QEMU rejected a command."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


@contextlib.contextmanager
def _quiet_library() -> Iterator[None]:
    lib = logging.getLogger("qemu.qmp.protocol")
    level = lib.level
    lib.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        lib.setLevel(level)


def _qmp_names(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k.replace("_", "-"): v for k, v in params.items()}


class QMP:
    """Blocking QMP client for one QEMU instance (a Unix socket path)."""

    def __init__(self, socket_path: str | Path, *, name: str = "qemu", connect: bool = True,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = str(socket_path)
        self.name = name
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._lock = threading.RLock()
        self._client = QMPClient(name)
        self._events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] | None = None
        if connect:
            self.connect(connect_timeout_s)

    # -- plumbing -------------------------------------------------------------
    def _sync(self, coro: Coroutine[Any, Any, T], timeout_s: float | None, what: str) -> T:
        with self._lock:
            if self._loop.is_closed():
                coro.close()
                raise QMPDisconnectedError(f"QMP {what}: connection to {self.name} is closed")
            try:
                return self._loop.run_until_complete(asyncio.wait_for(coro, timeout_s))
            except TimeoutError:
                raise QMPTimeoutError(f"QMP {what}: {self.name} did not answer within {timeout_s} s") from None

    def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and negotiate, retrying until ``timeout_s`` (QEMU creates the socket at startup)."""
        deadline = time.monotonic() + timeout_s
        # qemu.qmp logs every refused attempt at ERROR; refusals are expected until QEMU listens, and a real
        # failure is raised below as one QMPConnectError.
        with _quiet_library():
            self._connect_until(deadline, timeout_s)

    def _connect_until(self, deadline: float, timeout_s: float) -> None:
        last: Exception | None = None
        while True:
            try:
                self._sync(self._client.connect(self.socket_path), max(0.1, deadline - time.monotonic()), "connect")
                self.greeting = dict(self._client.greeting._raw) if self._client.greeting else None
                log.debug("connected to %s at %s", self.name, self.socket_path)
                return
            except (ConnectError, StateError, OSError, QMPTimeoutError) as e:
                last = e
                if isinstance(e, StateError):  # a failed connect leaves the client in a state to reset
                    self._sync(self._client.disconnect(), 2.0, "disconnect")
            if time.monotonic() >= deadline:
                raise QMPConnectError(f"QMP: cannot connect to {self.name} at {self.socket_path} within "
                                      f"{timeout_s:.0f} s ({last})")
            time.sleep(0.05)

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                timeout_s: float | None = None) -> Any:
        """Run one QMP command and return its ``return`` value."""
        args = dict(arguments) if arguments else None
        log.debug("%s <- %s %s", self.name, command, args or "")
        try:
            result = self._sync(self._client.execute(command, args), timeout_s or self.timeout_s, command)
        except ExecuteError as e:
            raise QMPCommandError(command, e.error_class, str(e)) from None
        except (ExecInterruptedError, StateError, ConnectionError, EOFError) as e:
            raise QMPDisconnectedError(f"QMP {command}: connection to {self.name} lost ({e})") from None
        except _LibQMPError as e:
            raise QMPError(f"QMP {command}: {type(e).__name__}: {e}") from None
        self._drain_events()
        return result

    def _drain_events(self) -> None:
        try:
            self._events.extend(dict(m._raw) if hasattr(m, "_raw") else dict(m) for m in self._client.events.clear())
        except Exception:  # events are a convenience; never let them break a command
            log.debug("could not drain events", exc_info=True)

    def events(self) -> list[dict[str, Any]]:
        """Asynchronous QMP events (``{"event": ..., "data": ..., "timestamp": ...}``) seen so far; clears them."""
        self._drain_events()
        out, self._events = self._events, []
        return out

    def close(self) -> None:
        """Disconnect (idempotent; ignores a QEMU that is already gone)."""
        with self._lock:
            if self._loop.is_closed():
                return
            try:
                self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 2.0))
            except Exception:  # the peer may be dead; we only want our side closed
                log.debug("disconnect from %s failed", self.name, exc_info=True)
            finally:
                self._loop.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- VM state -------------------------------------------------------------
    def query_status(self) -> dict[str, Any]:
        """``{"running": bool, "status": "running"|"paused"|"postmigrate"|"inmigrate"|..., ...}``."""
        return self.execute("query-status")

    def status(self) -> str:
        """The run state string, e.g. ``"running"``."""
        return str(self.query_status()["status"])

    def query_version(self) -> str:
        """QEMU's version as ``"10.0.2"``."""
        q = self.execute("query-version")["qemu"]
        return f"{q['major']}.{q['minor']}.{q['micro']}"

    def stop(self) -> None:
        """Pause the guest's vCPUs."""
        self.execute("stop")

    def cont(self) -> None:
        """Resume the guest's vCPUs."""
        self.execute("cont")

    def quit(self) -> None:
        """Ask QEMU to exit; a connection dropped by the exit is not an error."""
        try:
            self.execute("quit", timeout_s=5.0)
        except QMPDisconnectedError:
            pass

    # -- migration ------------------------------------------------------------
    def query_migrate(self) -> dict[str, Any]:
        """The raw ``query-migrate`` answer (``status``, ``total-time``, ``downtime``, ``ram``: {...}, ...)."""
        return self.execute("query-migrate")

    def migrate_set_capabilities(self, capabilities: Mapping[str, bool]) -> None:
        """Set migration capabilities, e.g. ``{"postcopy-ram": True, "auto-converge": True}``."""
        caps = [{"capability": k.replace("_", "-"), "state": bool(v)} for k, v in capabilities.items()]
        self.execute("migrate-set-capabilities", {"capabilities": caps})

    def query_migrate_capabilities(self) -> dict[str, bool]:
        return {c["capability"]: bool(c["state"]) for c in self.execute("query-migrate-capabilities")}

    def migrate_set_parameters(self, params: Mapping[str, Any] | None = None, /, **kw: Any) -> None:
        """Set migration parameters (``max-bandwidth`` in bytes/s, ``downtime-limit`` in ms, ...)."""
        merged = _qmp_names({**(params or {}), **kw})
        if merged:
            self.execute("migrate-set-parameters", merged)

    def query_migrate_parameters(self) -> dict[str, Any]:
        return self.execute("query-migrate-parameters")

    def migrate(self, uri: str, **kw: Any) -> None:
        """Start an outgoing migration to ``uri`` (e.g. ``tcp:10.0.0.2:4444``); returns at once."""
        self.execute("migrate", {"uri": uri, **_qmp_names(kw)})

    def migrate_incoming(self, uri: str) -> None:
        """Start listening on ``uri`` (the destination must run with ``-incoming defer``)."""
        self.execute("migrate-incoming", {"uri": uri})

    def migrate_start_postcopy(self) -> None:
        """Switch a running pre-copy migration to post-copy (``postcopy-ram`` set on both sides)."""
        self.execute("migrate-start-postcopy")

    def migrate_cancel(self) -> None:
        """Cancel the outgoing migration; the source keeps running."""
        self.execute("migrate_cancel")

    # -- dirty rate -----------------------------------------------------------
    def calc_dirty_rate(self, calc_time_s: float, *, mode: str = "page-sampling",
                        sample_pages: int | None = None) -> None:
        """Start QEMU's dirty-rate measurement over ``calc_time_s`` (whole seconds; QMP's unit)."""
        args: dict[str, Any] = {"calc-time": max(1, int(round(calc_time_s)))}
        if mode != "page-sampling":
            args["mode"] = mode
        if sample_pages is not None:
            args["sample-pages"] = int(sample_pages)
        self.execute("calc-dirty-rate", args)

    def query_dirty_rate(self) -> dict[str, Any]:
        """``{"status": "unstarted"|"measuring"|"measured", "dirty-rate": MiB/s, ...}``."""
        return self.execute("query-dirty-rate")

    def measure_dirty_rate(self, calc_time_s: float = 1.0, *, mode: str = "page-sampling",
                           timeout_s: float | None = None) -> dict[str, Any]:
        """Run :meth:`calc_dirty_rate` and wait for the result (``dirty-rate`` in MiB/s)."""
        self.calc_dirty_rate(calc_time_s, mode=mode)
        deadline = time.monotonic() + (timeout_s or calc_time_s + 10.0)
        while True:
            r = self.query_dirty_rate()
            if r.get("status") == "measured":
                return r
            if time.monotonic() > deadline:
                raise QMPTimeoutError(f"QMP calc-dirty-rate: no result from {self.name} after {calc_time_s} s")
            time.sleep(0.1)
