"""Launch one QEMU guest under TCG and always clean it up.

Usage (the collector and the migration runner both do this)::

    from harness.vm import VM, VMConfig
    cfg = VMConfig(memory_bytes=512 << 20, workload="hotcold:hot=64MiB,rate=5000")
    with VM(cfg) as vm:                     # boots; cleans up on any exit, even KeyboardInterrupt
        vm.wait_for_workload(timeout_s=60)  # first progress line of the workload on the console
        vm.qmp.query_status()               # a connected harness.qmp.QMP
        ram = vm.read_ram()                 # bytes of guest RAM from the shm backing file (shm backing only)
        for line in vm.console.new_lines(): ...

A destination for migration is the same config with ``incoming=True``
(``-incoming defer``; then ``vm.qmp.migrate_incoming("tcp:0.0.0.0:4444")``),
and ``netns="miglab-..."`` runs QEMU inside that network namespace
(``ip netns exec NAME qemu-system-x86_64 ...``).

What a :class:`VM` owns, all removed by :meth:`VM.close`:

* a private run directory (``mkdtemp``, mode 0700, prefix ``miglab-``) with
  the QMP socket ``qmp.sock``, the serial console ``console.log`` and QEMU's
  stderr ``qemu.log``;
* with the ``shm`` RAM backing, the guest RAM file
  ``/dev/shm/miglab-<pid>-<random>`` (a ``memory-backend-file`` with
  ``share=on``, so the host can read guest RAM);
* the QEMU process, started in its own session so its whole process group is
  killed (SIGTERM, then SIGKILL).

RAM backing (``VMConfig.ram_backing``): ``shm`` is the file above; ``anon``
is ``memory-backend-ram`` with ``reserve=off`` (MAP_NORESERVE), so a page
costs host memory only once the guest writes it -- migration reads untouched
pages as zero without allocating them, where reading a tmpfs hole allocates
it. ``auto`` (the default) keeps ``shm`` up to
:data:`harness.preflight.SHM_AUTO_MAX_BYTES` (what the content-diff collector
and ``--verify-memory`` read; every small-guest run as before) and uses
``anon`` above. :meth:`VM.start` refuses, before launching, a guest whose
estimated resident memory (:mod:`harness.preflight`) would not fit the host
next to the growth still to come of the other guests this process runs.

Set ``keep_logs_in`` to copy console and QEMU logs somewhere before the run
directory goes. The QEMU binary is ``$MIGLAB_QEMU`` or ``qemu-system-x86_64``
on PATH, and must be version 9 or newer (7.x loses guest writes during
migration under TCG).
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness import preflight, runstate
from harness.guest import GuestImage, GuestWorkload, ensure_guest, parse_workload, workload_footprint_bytes
from harness.qmp import QMP
from sim.errors import MiglabError

log = logging.getLogger(__name__)

QEMU_MIN_MAJOR = 9
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "miglab-"
BOOT_TIMEOUT_S = 90.0
BOOT_S_PER_GIB = 3.0  # extra boot wait per GiB of a big guest (see VM.wait_for_workload)
KILL_GRACE_S = 2.0
WORKLOAD_LINE = re.compile(r"^miglab-(load|redis|idle) t=")


class VMError(MiglabError):
    """QEMU could not be found, started, or died unexpectedly (``where``: the guest's name, when known)."""


#: The smallest guest the image boots in (kernel, initramfs and the workload's tools).
MIN_GUEST_MEMORY_BYTES = 64 << 20


def guest_memory_problem(memory_bytes: int) -> str | None:
    """Why QEMU cannot be given a guest of ``memory_bytes`` (None: it can).

    The guest gets ``-m {MiB}M`` and a memory backend of the same size: a whole number of MiB (so a
    multiple of every page size QEMU and /dev/shm use), and at least :data:`MIN_GUEST_MEMORY_BYTES`.
    """
    if memory_bytes % (1 << 20) or memory_bytes < MIN_GUEST_MEMORY_BYTES:
        return (f"must be a whole number of MiB and at least {MIN_GUEST_MEMORY_BYTES >> 20} MiB, "
                f"not {memory_bytes}")
    return None


# ---------------------------------------------------------------------------
# QEMU binary
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class QemuBinary:
    path: str
    version: str  # "10.0.2"
    version_line: str  # full first line of --version (has the Debian package version)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@lru_cache(maxsize=4)
def find_qemu(path: str | None = None) -> QemuBinary:
    """Locate qemu-system-x86_64 (``$MIGLAB_QEMU`` overrides) and check it is >= 9."""
    cand = path or os.environ.get("MIGLAB_QEMU") or shutil.which("qemu-system-x86_64")
    if not cand:
        raise VMError("qemu-system-x86_64 not found; run harness/install-deps.sh as root "
                      "(installs QEMU >= 9, from bookworm-backports on Debian 12)")
    try:
        out = subprocess.run([cand, "--version"], capture_output=True, text=True, timeout=20).stdout
    except OSError as e:
        raise VMError(f"cannot run {cand}: {e}") from None
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise VMError(f"{cand} --version did not report a QEMU version")
    q = QemuBinary(cand, ".".join(m.groups()), out.splitlines()[0].strip())
    if q.major < QEMU_MIN_MAJOR:
        raise VMError(f"{cand} is QEMU {q.version}; miglab needs QEMU >= {QEMU_MIN_MAJOR} (older TCG loses guest "
                      "writes during migration). Run harness/install-deps.sh as root to install it from backports")
    return q


# ---------------------------------------------------------------------------
# console
# ---------------------------------------------------------------------------

class Console:
    """Follows the guest's serial console log file; yields complete new lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.lines: list[str] = []  # everything read so far

    def new_lines(self) -> list[str]:
        """Complete lines written since the previous call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        out = [c.decode("utf-8", "replace").rstrip("\r") for c in complete]
        self.lines.extend(out)
        return out

    def text(self) -> str:
        self.new_lines()
        return "\n".join(self.lines)


# ---------------------------------------------------------------------------
# the VM
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class VMConfig:
    """How to start one guest. ``workload`` is a spec string or a parsed :class:`GuestWorkload`."""

    memory_bytes: int = 512 << 20
    workload: str | GuestWorkload | None = None
    smp: int = 1
    machine: str = "q35"
    incoming: bool = False  # start with -incoming defer (a migration destination)
    netns: str | None = None  # run QEMU inside this network namespace
    name: str = "vm"
    extra_args: tuple[str, ...] = ()
    extra_cmdline: str = ""
    qemu: str | None = None  # QEMU binary; default find_qemu()
    keep_logs_in: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    ram_backing: str = "auto"  # "auto" | "shm" | "anon" (see the module docstring)
    host_bytes: int = 0  # what the owner holds beside this guest (collector buffers), for the pre-flight

    @property
    def backing(self) -> str:
        """The RAM backing this guest gets (``auto`` resolved by size)."""
        return preflight.choose_backing(self.memory_bytes, self.ram_backing)

    def resolved_workload(self) -> GuestWorkload | None:
        if self.workload is None or isinstance(self.workload, GuestWorkload):
            return self.workload
        return parse_workload(self.workload, self.memory_bytes)


_LIVE: weakref.WeakSet[VM] = weakref.WeakSet()


def _growth_to_come() -> int:
    """Resident memory the guests this process runs are still expected to take on (estimate minus now)."""
    grow = 0
    for vm in list(_LIVE):
        if vm.estimate is not None and vm.is_running():
            # VmRSS includes the shm file's pages QEMU has touched (RssShmem), so it is the whole resident part
            grow += max(0, vm.estimate.total_bytes - vm.config.host_bytes - vm.rss_bytes())
    return grow


@atexit.register
def _close_all() -> None:  # last line of defence when an owner forgot ``with``
    for vm in list(_LIVE):
        vm.close()


class VM:
    """One running QEMU guest; a context manager that always cleans up."""

    def __init__(self, config: VMConfig, image: GuestImage | None = None) -> None:
        self.config = config
        self.workload = config.resolved_workload()  # bad specs fail before anything starts
        self.backing = config.backing
        self.image = image
        self.qemu = find_qemu(config.qemu)
        self.run_dir: Path | None = None
        self.shm_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: QMP | None = None
        self.console: Console | None = None
        self.started_at: float | None = None  # time.monotonic() at launch
        self.argv: list[str] = []
        self._closed = False
        self._ram_map: mmap.mmap | None = None
        self.estimate: preflight.SideEstimate | None = None

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> VM:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build_argv(self) -> list[str]:
        """The full command line (with the netns prefix when set)."""
        assert self.run_dir is not None and self.image is not None
        c = self.config
        problem = guest_memory_problem(c.memory_bytes)
        if problem:
            raise VMError(f"guest memory {problem}")
        mem_mib = c.memory_bytes >> 20
        if self.backing == "shm":
            assert self.shm_path is not None
            ram = f"memory-backend-file,id=ram0,size={mem_mib}M,mem-path={self.shm_path},share=on"
        else:  # untouched pages are never allocated (MAP_NORESERVE)
            ram = f"memory-backend-ram,id=ram0,size={mem_mib}M,reserve=off"
        argv = [
            self.qemu.path, "-name", c.name, "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
            "-machine", f"{c.machine},memory-backend=ram0", "-m", f"{mem_mib}M", "-smp", str(c.smp),
            "-object", ram,
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self.image.cmdline(self.workload, c.extra_cmdline),
            "-serial", f"file:{self.console_path}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-no-reboot",
        ]
        if c.incoming:
            argv += ["-incoming", "defer"]
        argv += list(c.extra_args)
        if c.netns:
            argv = ["ip", "netns", "exec", c.netns, *argv]
        return argv

    def start(self) -> VM:
        """Launch QEMU and connect QMP. Does not wait for the guest to boot."""
        if self.proc is not None:
            raise VMError("VM already started")
        self.estimate = preflight.estimate_side(self.config.name, self.config.memory_bytes,
                                                workload_footprint_bytes(self.workload, self.config.memory_bytes),
                                                self.backing, self.config.host_bytes)
        preflight.check_fits((self.estimate,), preflight.mem_available_bytes() - _growth_to_come(),
                             f"guest {self.config.name!r} ({self.config.memory_bytes >> 20} MiB)")
        if self.image is None:
            self.image = ensure_guest()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{SHM_PREFIX}{os.getpid()}-{self.config.name}-"))
        runstate.add("paths", str(self.run_dir))
        os.chmod(self.run_dir, 0o700)
        if self.backing == "shm":
            self.shm_path = SHM_DIR / f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            runstate.add("paths", str(self.shm_path))
            # Created here, 0600, before QEMU opens it (QEMU would create it 0644 under the usual umask):
            # guest memory is nobody else's to read.
            os.close(os.open(self.shm_path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600))
        self.console = Console(self.console_path)
        self.argv = self.build_argv()
        log.info("starting %s: %s", self.config.name, " ".join(self.argv))
        _LIVE.add(self)
        with open(self.run_dir / "qemu.log", "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, **self.config.env})
        self.started_at = time.monotonic()
        runstate.add("pids", [self.proc.pid, str(self.run_dir)])
        try:
            self._qmp = QMP(self.qmp_path, name=self.config.name, connect=False)
            deadline = time.monotonic() + 15.0
            while not self.qmp_path.exists():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise VMError("QEMU did not create its QMP socket within 15 s", where=self.config.name)
                time.sleep(0.02)
            while True:  # short attempts, so a QEMU that dies right after creating the socket is noticed
                try:
                    self._qmp.connect(timeout_s=0.5)
                    break
                except MiglabError:
                    self.check_alive()
                    if time.monotonic() > deadline:
                        raise
        except MiglabError as e:
            self.check_alive()
            raise VMError(str(e), where=self.config.name) from None
        return self

    @property
    def qmp(self) -> QMP:
        if self._qmp is None:
            raise VMError("not started", where=self.config.name)
        return self._qmp

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def qmp_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "qmp.sock"

    @property
    def console_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "console.log"

    def qemu_log(self) -> str:
        try:
            return (self.run_dir / "qemu.log").read_text(errors="replace") if self.run_dir else ""
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        """True while the QEMU process exists."""
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise VMError (with QEMU's last stderr line) if QEMU has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = [ln for ln in self.qemu_log().splitlines() if ln.strip()]
            raise VMError(f"QEMU exited with status {self.proc.returncode}" + (f": {tail[-1]}" if tail else ""),
                          where=self.config.name)

    def close(self) -> None:
        """Stop QEMU (whole process group), remove the RAM file and the run directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self._qmp is not None:
            self._qmp.close()
        if self.proc is not None and self.proc.poll() is None:
            self._kill_group(signal.SIGTERM)
            try:
                self.proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    log.error("%s: QEMU pid %d survived SIGKILL", self.config.name, self.proc.pid)
        if self.proc is not None:
            # anything else left in the group (e.g. after `ip netns exec`) goes too
            self._kill_group(signal.SIGKILL)
        if self.config.keep_logs_in is not None and self.run_dir is not None:
            dest = Path(self.config.keep_logs_in)
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("console.log", "qemu.log"):
                src = self.run_dir / f
                if src.exists():
                    shutil.copyfile(src, dest / f"{self.config.name}-{f}")
        if self._ram_map is not None:
            try:
                self._ram_map.close()
            except BufferError:  # a numpy view is still alive; the mapping goes with it
                log.debug("RAM view still referenced at close")
        if self.shm_path is not None:
            self.shm_path.unlink(missing_ok=True)
            runstate.discard("paths", str(self.shm_path))
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self.proc is not None:
                runstate.discard("pids", [self.proc.pid, str(self.run_dir)])
            runstate.discard("paths", str(self.run_dir))

    def _kill_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session made pid the group id
        except (ProcessLookupError, PermissionError):
            pass

    def rss_bytes(self) -> int:
        """Resident memory of the QEMU process now (0 when not running); shm file pages not included."""
        pid = self._qemu_pid()
        if pid is None:
            return 0
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _qemu_pid(self) -> int | None:
        """The QEMU process (under ``ip netns exec`` it is the Popen's pid too: netns exec execs)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    # -- the guest --------------------------------------------------------------
    def wait_for_console(self, pattern: str | re.Pattern[str], timeout_s: float = BOOT_TIMEOUT_S) -> str:
        """Block until a console line matches ``pattern``; return the line. Raises VMError on timeout or exit."""
        assert self.console is not None
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in self.console.lines:
            if rx.search(line):
                return line
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.console.new_lines():
                if rx.search(line):
                    return line
                if line.startswith(("miglab-load error", "miglab-redis error", "miglab-init: workload", "Kernel panic")):
                    raise VMError(f"guest reported: {line.strip()}", where=self.config.name)
            self.check_alive()
            if time.monotonic() > deadline:
                last = self.console.lines[-3:]
                raise VMError(f"no console line matching {rx.pattern!r} within {timeout_s:.0f} s"
                              + (f" (last: {' | '.join(last)})" if last else " (console empty)"),
                              where=self.config.name)
            time.sleep(0.05)

    def wait_for_workload(self, timeout_s: float = BOOT_TIMEOUT_S) -> str:
        """Wait for the workload's first once-a-second progress line (the guest is up and loaded).

        A big guest boots slower (under TCG its kernel initialises a page array
        of 1.6 % of memory, and the workload fills its region first), so the
        wait grows by :data:`BOOT_S_PER_GIB` per GiB above 4 GiB and per GiB the
        workload fills: 59 s were measured for 32 GiB holding 1.6 GiB of data.
        """
        return self.wait_for_console(WORKLOAD_LINE, timeout_s + self.boot_allowance_s())

    def boot_allowance_s(self) -> float:
        """Extra boot time a guest of this size and footprint gets beyond a caller's timeout."""
        gib = 1 << 30
        extra = max(0, self.config.memory_bytes - 4 * gib) / gib
        if self.estimate is not None and self.config.memory_bytes > 4 * gib:
            extra += self.estimate.workload_bytes / gib
        return BOOT_S_PER_GIB * extra

    def ram_size(self) -> int:
        return self.config.memory_bytes

    def ram_view(self) -> np.ndarray:
        """A live, read-only uint8 view of guest RAM (mmap of the shm file); valid until :meth:`close`.

        ``np.copyto(buf, vm.ram_view())`` snapshots 512 MiB in about 0.05 s.
        """
        if self.shm_path is None:
            raise VMError(f"guest RAM is anonymous ({self.backing}); only a shm-backed "
                          "guest can be read from the host", where=self.config.name)
        if self._ram_map is None:
            fd = os.open(self.shm_path, os.O_RDONLY)
            try:
                self._ram_map = mmap.mmap(fd, self.config.memory_bytes, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        view = np.frombuffer(self._ram_map, dtype=np.uint8)
        return view

    def read_ram(self, out: np.ndarray | None = None) -> np.ndarray:
        """Guest RAM as a uint8 array, read from the shm backing file (into ``out`` if given).

        The read is not atomic with respect to the running guest; use
        ``qmp.stop()`` first for an exact snapshot.
        """
        if self.shm_path is None:
            raise VMError(f"guest RAM is anonymous ({self.backing}); only a shm-backed "
                          "guest can be read from the host", where=self.config.name)
        n = self.config.memory_bytes
        if out is None:
            out = np.empty(n, dtype=np.uint8)
        with open(self.shm_path, "rb", buffering=0) as f:
            got = f.readinto(memoryview(out))  # type: ignore[arg-type]  # numpy declares ndarray.__buffer__ only on 3.12+
        if got != n:
            raise VMError(f"read {got} of {n} bytes of guest RAM from {self.shm_path}", where=self.config.name)
        return out


def leftovers(pid: int | None = None) -> dict[str, list[str]]:
    """RAM files in /dev/shm and QEMU processes started by process ``pid`` (default: this one).

    QEMU processes are recognised by our RAM file or our run directory on their command line.

    Tests assert both lists are empty after every test. Matching on our pid
    keeps parallel miglab runs by other processes out of the picture.
    """
    prefix = f"{SHM_PREFIX}{os.getpid() if pid is None else pid}-"
    shm = sorted(str(p) for p in SHM_DIR.glob(f"{prefix}*"))
    # an anonymous-RAM guest has no shm file; its QMP socket in our run directory names it
    marks = (f"{SHM_DIR}/{prefix}".encode(), f"{tempfile.gettempdir()}/{prefix}".encode())
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"qemu-system" in a for a in cmd[:6]) and any(m in a for a in cmd for m in marks):
            procs.append(f"{d.name}: {b' '.join(cmd[:3]).decode(errors='replace')}")
    return {"shm": shm, "qemu": procs}
