"""One exception tree for everything miglab reports to a user.

In the manner of qemu.qmp's ``error.py``: one base class, a few subclasses
named after what went wrong, and the *location* of the problem carried as
fields rather than baked into the text::

    MiglabError                 base: input, configuration or environment (never a bug)
    ├── ConfigError             a scenario, flag, unit, spec or file value is malformed or out of range
    │   ├── InputError          an input file cannot be read as what it claims to be (missing, not a
    │   │                       regular file, too large, not UTF-8, not valid JSON/TOML)
    │   ├── ResourceError       an input would cost more than miglab allows (memory, runs); carries the estimate
    │   └── OutputError         an output path cannot be written safely (a directory, a device, no parent)
    ├── TraceError              a trace file is missing, malformed, truncated or inconsistent
    └── (harness)               what goes wrong while measuring, defined beside the code that raises it,
                                its context in the same fields:
        ├── harness.vm.VMError                  QEMU not found, not started, died (where: the guest's name)
        ├── harness.qmp.QMPError                talking to QEMU: QMPConnectError, QMPTimeoutError,
        │                                       QMPDisconnectedError, QMPCommandError (command,
        │                                       error_class, desc: QEMU's own error)
        ├── harness.link.LinkError              the shaped link cannot be built (where: the command)
        ├── harness.guest.GuestError            the guest image cannot be built (where: the build step)
        ├── harness.dirtylog.DirtyLogError      the dirty-log stream and log disagree
        ├── harness.bhyve.vmmdev.BhyveError     a bhyve host, device or command (where: the device or
        │                                       command): VmmDeviceMissing, VmmPermissionError,
        │                                       DirtyPageListUnsupported, VmNameError (also a ConfigError)
        └── harness.preflight.PreflightError    a ConfigError: the host cannot hold the run (flag: the size's)

``harness.migrate.MigrationInterrupted`` is no error but a KeyboardInterrupt carrying the record of the
interrupted run. (``tests/test_errors.py`` walks ``sim`` and ``harness`` and holds every exception class to this tree.)

Every error has the fields

* ``problem``: what is wrong, without the location (``must be positive, not 0.0``);
* ``where``: the file (or a context such as ``suite.toml: scenario 'a'``) the value came from;
* ``key``: the dotted key inside it (``strategy.downtime_limit_s``);
* ``flag``: the command-line flag it came from (``--downtime-limit``);
* ``value``: the offending value, when there is one.

``str(e)`` renders the one line from the fields: ``<where>: <key>: <problem>``
or, for a flag, ``<flag>: <problem>``. Code that learns the location later
(a suite reading a scenario, the CLI mapping a scenario key back to the flag
that set it) calls :meth:`MiglabError.at`, which fills in only the fields not
yet known, so no caller ever looks for the location in the message text.

Call sites give the location as fields (``ConfigError("must be a table",
where=path)``), never in the problem text, and nothing reads a location back
out of a message. A workload spec's refusal starts ``workload 'SPEC':``: the
spec is the subject of the problem, and the caller adds where it came from.

The CLI turns any :class:`MiglabError` into ``miglab: <str(e)>`` on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class _NoValue:
    """The type of :data:`NO_VALUE` (one instance, kept across pickling)."""

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __reduce__(self) -> str:
        return "NO_VALUE"


#: ``value`` when the error has no single offending value.
NO_VALUE: Any = _NoValue()


class MiglabError(Exception):
    """Base class for errors caused by input, configuration or environment.

    ``MiglabError("text")`` is a problem without a location; give ``where``,
    ``key``, ``flag`` and ``value`` as keywords when they are known.
    """

    def __init__(self, problem: object = "", *, where: object = None, key: str | None = None,
                 flag: str | None = None, value: Any = NO_VALUE) -> None:
        super().__init__(str(problem))
        self.problem = str(problem)
        self.where = None if where is None or where == "" else str(where)
        self.key = key or None
        self.flag = flag or None
        self.value = value

    def at(self, *, where: object = None, key: str | None = None, flag: str | None = None,
           prefix: str | None = None) -> MiglabError:
        """Fill in the location fields still unknown; return ``self`` (for ``raise e.at(...)``).

        ``prefix`` is a table the key lies in, prepended to a known key (``rtt_s`` -> ``link.rtt_s``).
        """
        if prefix:
            self.key = f"{prefix}.{self.key}" if self.key else prefix
        if self.where is None and where is not None and where != "":
            self.where = str(where)
        if self.key is None and key:
            self.key = key
        if self.flag is None and flag:
            self.flag = flag
        self.args = (str(self),)
        return self

    def __str__(self) -> str:
        if self.flag:
            parts = [self.flag, self.problem]
        else:
            parts = [p for p in (self.where, self.key, self.problem) if p]
        return ": ".join(parts)

    def __reduce__(self) -> Any:  # picklable across process pools, fields included
        return (_rebuild, (type(self), self.problem, self.where, self.key, self.flag, self.value))


def _rebuild(cls: type[MiglabError], problem: str, where: str | None, key: str | None, flag: str | None,
             value: Any) -> MiglabError:
    e = cls.__new__(cls)
    MiglabError.__init__(e, problem, where=where, key=key, flag=flag, value=value)
    return e


class ConfigError(MiglabError, ValueError):
    """A scenario, flag, unit or spec is malformed or out of range."""


class InputError(ConfigError):
    """An input file cannot be read as what it claims to be: missing, not a regular file, too large,
    not UTF-8, not valid JSON or TOML."""


class ResourceError(ConfigError):
    """An input would cost more than allowed (an allocation, a sweep's run count); ``estimate`` says how much."""

    def __init__(self, problem: object = "", *, estimate: float | None = None, **where: Any) -> None:
        super().__init__(problem, **where)
        self.estimate = estimate


class OutputError(ConfigError):
    """An output path cannot be written safely: a directory, a device or special file, a missing or
    read-only parent."""


class TraceError(MiglabError):
    """A trace file is missing, malformed, truncated or inconsistent.

    ``TraceError(path, problem)``: ``path`` is the ``where`` field.
    """

    def __init__(self, path: object = None, problem: str = "", **fields: Any) -> None:
        super().__init__(problem, where=path, **fields)

    @property
    def path(self) -> str | None:
        return self.where


def located(e: MiglabError, **where: Any) -> MiglabError:
    """``e.at(**where)``: a function form for ``except ... as e: raise located(e, where=...)``."""
    return e.at(**where)


__all__ = ["MiglabError", "ConfigError", "InputError", "ResourceError", "OutputError", "TraceError", "NO_VALUE",
           "located"]
