"""Atomic output: write to a temp file beside the target, then rename.

A reader (or a crash) never sees a half-written result file. The rename only
ever replaces a regular file: an output path that is a directory, a device
(``-o /dev/full``), a FIFO or a socket is refused before anything is written,
and checked again just before the rename. A parent that cannot be created or
written (read-only, a file in the way, ``/sys``) is refused in one line too;
writability is tried with a probe file, since ``access(2)`` says yes to root
even where the filesystem refuses (``/sys``).

Missing parent directories are created for the paths miglab chooses itself
(the default ``results/...`` paths). A path the user gave on the command line
(``flag`` given to the checks) must have an existing parent: an output file's
directory is never created, and an output directory (``compare -o DIR``) may
be created but its parent must exist, so a typo in a path is refused rather
than built. Every refusal is an :class:`sim.errors.OutputError` naming the
path (or, for a missing parent, the flag).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError
from .inputs import file_kind


def _check_target(path: Path) -> None:
    """Refuse a target that exists and is not a regular file (symlinks followed: a link to /dev/full is a device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OutputError("cannot write: a parent is a file, not a directory", where=path) from None
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", where=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError("is a directory; give a file name", where=path)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"is {file_kind(st.st_mode)}; miglab writes only regular files", where=path)


def _check_dir(path: Path, *, target: Path, flag: str | None = None, probe: bool = True) -> None:
    """``path`` is (or can be made) a writable directory: its nearest existing ancestor is a writable directory.

    ``flag`` (a path given on the command line): ``path`` itself must exist, nothing above the target is created.
    ``probe``: create and remove a file in it, the only test of writability that holds for root.
    """
    p = path
    while True:
        try:
            st = os.stat(p)
            break
        except FileNotFoundError:
            if flag is not None:
                raise OutputError(f"no such directory: {path} (create it first; miglab does not create the "
                                  "parents of a path it is given)", where=target, flag=flag) from None
            if p.parent == p:
                raise OutputError("cannot write: no existing parent directory", where=target) from None
            p = p.parent
        except NotADirectoryError:
            raise OutputError("cannot write: a parent is a file, not a directory", where=target) from None
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", where=target) from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write: {p} is {'a file' if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode)}, "
                          "not a directory", where=target)
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write: directory {p} is not writable", where=target)
    if probe:
        try:
            fd, name = tempfile.mkstemp(prefix=".miglab-probe.", suffix=".tmp", dir=p)
        except OSError as e:
            raise OutputError(f"cannot write: directory {p}: {e.strerror}", where=target) from None
        os.close(fd)
        os.unlink(name)


def check_output_file(path: str | os.PathLike[str], *, flag: str | None = None) -> Path:
    """Refuse, before any work, an output file path that cannot be written safely; return it as a Path.

    ``flag``: the command-line flag that gave the path; its directory must then exist.
    """
    if not str(path):
        raise OutputError("empty output path", flag=flag)
    p = Path(path)
    _check_target(p)
    _check_dir(p.parent, target=p, flag=flag)
    return p


def check_output_dir(path: str | os.PathLike[str], *, flag: str | None = None) -> Path:
    """Refuse an output directory path that is something else, or that cannot be created or written.

    ``flag``: the command-line flag that gave the path; the directory may be created, its parent must exist.
    """
    if not str(path):
        raise OutputError("empty output path", flag=flag)
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        _check_dir(p.parent, target=p, flag=flag)
        return p
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", where=p) from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"is {'a file' if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode)}; "
                          "give a directory", where=p)
    _check_dir(p, target=p)
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only if the block succeeds.

    ``path`` must be absent or a regular file (OutputError otherwise, before the block runs).
    """
    if not str(path):
        raise OutputError("empty output path")
    path = Path(path)
    _check_target(path)
    _check_dir(path.parent, target=path, probe=False)  # the temporary file below is the probe
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", where=path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files; results are meant to be shared like any file this user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _check_target(path)  # again: the path may have become a device or a directory meanwhile
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", where=path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing, atomically."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


__all__ = ["atomic_path", "atomic_open", "check_output_file", "check_output_dir"]
