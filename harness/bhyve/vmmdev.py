"""Guest memory of a running bhyve VM, read through ``/dev/vmm/NAME``.

Everything here was checked against the FreeBSD sources (see ``docs/bhyve.md``
for the citations); the short version:

* ``/dev/vmm/NAME`` is created ``root:wheel 0600`` by ``sysctl_vmm_create``
  (``sys/amd64/vmm/vmm_dev.c``). Non-root opens fail with ``EACCES``.
* ``read(2)``/``pread(2)`` at offset = guest-physical address go through
  ``vmmdev_rw``: page by page ``vm_gpa_hold``; holes below the top of system
  memory read as zeros, beyond it ``EFAULT``. On the 13-era UPB base the read
  freezes the VM's last vCPU for its duration; FreeBSD 14 takes the memory
  segment lock instead (``vm_slock_memsegs``). Either way reads are done in
  bounded chunks here.
* ``mmap(2)`` goes through ``vmmdev_mmap_single``: the range must lie inside
  *one* mapping found by ``vm_mmap_getnext`` and ``PROT_EXEC`` is refused
  (``EINVAL``). The mapping is the guest's own VM object, so later reads cost no
  system call and freeze nothing. Lowmem and highmem are mapped separately.
* The layout comes from ``vm_setup_memory`` (``lib/libvmmapi/vmmapi.c``): with
  ``lowmem_limit`` = 3 GiB, a guest of ``memsize`` bytes gets lowmem
  ``[0, min(memsize, 3 GiB))`` and, above that, highmem
  ``[4 GiB, 4 GiB + memsize - 3 GiB)``, both in segment ``VM_SYSMEM`` at
  ``segoff`` = gpa. ``VM_MMAP_GETNEXT`` (what libvmmapi's ``vm_mmap_getnext``
  wraps) lists the mappings; we call it directly with the kernel's
  ``struct vm_memmap`` and fall back to the computed layout when it is not
  available (tests, or a user who passes ``--guest-memory``).
* The UPB patch's ``VM_GET_DIRTY_PAGE_LIST`` ioctl (review D30954, re-split as
  D34717-D34722; FreeBSD-UPB/freebsd-src ``sys/amd64/include/vmm_dev.h``,
  ``sys/amd64/vmm/vmm.c``) fills one byte per guest page, lowmem pages first and
  highmem pages right after them: the same dense page numbering the traces use.

No third-party import besides numpy: this module runs on FreeBSD hosts where
pyarrow/pandas are unavailable.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.errors import ConfigError, MiglabError
from sim.units import PAGE_SIZE_BYTES

log = logging.getLogger(__name__)

GiB = 1 << 30
LOWMEM_LIMIT_BYTES = 3 * GiB  # vmctx->lowmem_limit default in vm_open()
HIGHMEM_BASE_BYTES = 4 * GiB  # vm_setup_memory(): highmem is mapped at 4 GiB
VM_SYSMEM = 0  # segment id of guest system memory
VMM_PAGE_CHUNK = 10  # sys/amd64/include/vmm_migration.h (UPB patch)
MIGRATION_ROUNDS = 4  # usr.sbin/bhyve/migration.c (UPB patch)
DEFAULT_MIGRATION_PORT = 24983  # usr.sbin/bhyve/migration.h (UPB patch)
VM_MAX_NAMELEN_FBSD14 = 32  # sys/amd64/include/vmm.h on 13/14 (sysctl hw.vmm.create buffer)
VM_MAX_NAMELEN_CURRENT = 255 - 10 - 15 - 1  # SPECNAMELEN - VM_MAX_PREFIXLEN - VM_MAX_SUFFIXLEN - 1
# A conservative character set: the name is also passed through ssh to a remote shell.
_VM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------- errors
class BhyveError(MiglabError):
    """A bhyve host, device or command problem reported to the user in one line."""


class VmNameError(BhyveError, ConfigError):
    """The VM name cannot name a /dev/vmm device."""


class VmmDeviceMissing(BhyveError):
    """No /dev/vmm/NAME: the VM is not running (or vmm.ko is not loaded)."""


class VmmPermissionError(BhyveError):
    """/dev/vmm/NAME exists but cannot be opened: not root."""


class DirtyPageListUnsupported(BhyveError):
    """The kernel has no VM_GET_DIRTY_PAGE_LIST (stock FreeBSD, or built without BHYVE_SNAPSHOT)."""


def check_vm_name(name: str) -> str:
    """Return ``name`` if it is a usable VM name, else raise :class:`VmNameError`."""
    if not name:
        raise VmNameError("the VM name is empty", flag="--vm")
    if len(name) > VM_MAX_NAMELEN_CURRENT:
        raise VmNameError(f"VM name {name[:20]!r}... is {len(name)} characters; "
                          f"FreeBSD allows at most {VM_MAX_NAMELEN_CURRENT} (32 on FreeBSD 14)", flag="--vm")
    if not _VM_NAME_RE.fullmatch(name):
        raise VmNameError(f"VM name {name!r} must start with a letter or digit and contain only "
                          "letters, digits, '.', '_' and '-'", flag="--vm")
    return name


# --------------------------------------------------------------------------- ioctl ABI
# <sys/ioccom.h>: _IOC(inout, group, num, len)
IOC_OUT = 0x40000000
IOC_IN = 0x80000000
IOC_INOUT = IOC_IN | IOC_OUT
IOCPARM_MASK = (1 << 13) - 1


def _iowr(group: str, num: int, size: int) -> int:
    return IOC_INOUT | ((size & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


class VmMemmap(ctypes.Structure):
    """``struct vm_memmap`` (sys/amd64/include/vmm_dev.h), 40 bytes on amd64."""

    _fields_ = [
        ("gpa", ctypes.c_uint64),      # vm_paddr_t
        ("segid", ctypes.c_int),       # memory segment
        ("segoff", ctypes.c_int64),    # vm_ooffset_t: offset into memory segment
        ("len", ctypes.c_size_t),      # mmap length
        ("prot", ctypes.c_int),        # RWX
        ("flags", ctypes.c_int),
    ]


VM_MEMMAP_F_WIRED = 0x01
VM_MEMMAP_F_IOMMU = 0x02
IOCNUM_MMAP_GETNEXT = 17
VM_MMAP_GETNEXT = _iowr("v", IOCNUM_MMAP_GETNEXT, ctypes.sizeof(VmMemmap))


class VmmMigrationSegment(ctypes.Structure):
    """``struct vmm_migration_segment`` (UPB: sys/amd64/include/vmm_migration.h)."""

    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64)]  # vm_offset_t


class VmGetDirtyPageList(ctypes.Structure):
    """``struct vm_get_dirty_page_list`` (UPB: sys/amd64/include/vmm_dev.h), 48 bytes on amd64.

    The kernel (``vm_get_dirty_page_list`` in sys/amd64/vmm/vmm.c) walks the
    guest vmspace for map entries whose [start, end) equal ``lowmem`` and
    ``highmem`` and writes ``page_list[pindex - offset] = vm_page_test_vmm_dirty(m)``
    for every *resident* page, with offset 0 for lowmem and
    ``(highmem.start - lowmem.end) / PAGE_SIZE`` for highmem: lowmem pages come
    first, highmem pages directly after. ``num_pages`` is not checked by the
    kernel, so the buffer must hold every page.
    """

    _fields_ = [
        ("page_list", ctypes.POINTER(ctypes.c_uint8)),
        ("num_pages", ctypes.c_size_t),
        ("lowmem", VmmMigrationSegment),
        ("highmem", VmmMigrationSegment),
    ]


IOCNUM_VM_GET_DIRTY_PAGE_LIST = 117
VM_GET_DIRTY_PAGE_LIST = _iowr("v", IOCNUM_VM_GET_DIRTY_PAGE_LIST, ctypes.sizeof(VmGetDirtyPageList))

IoctlFn = Callable[[int, int, Any], Any]


def _fcntl_ioctl(fd: int, request: int, arg: Any) -> Any:
    return fcntl.ioctl(fd, request, arg, True)


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Segment:
    """One guest-physical mapping of system memory."""

    name: str            # "lowmem" or "highmem"
    gpa: int             # guest-physical start = offset in /dev/vmm/NAME
    length_bytes: int
    first_page: int      # dense page number of its first page in traces and dirty lists
    segoff: int = 0
    wired: bool = False

    @property
    def n_pages(self) -> int:
        return self.length_bytes // PAGE_SIZE_BYTES

    @property
    def end(self) -> int:
        return self.gpa + self.length_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "gpa": self.gpa, "length_bytes": self.length_bytes,
                "first_page": self.first_page, "wired": self.wired}


def layout_for_memsize(memsize_bytes: int, *, lowmem_limit_bytes: int = LOWMEM_LIMIT_BYTES,
                       highmem_base_bytes: int = HIGHMEM_BASE_BYTES) -> tuple[Segment, ...]:
    """The segments ``vm_setup_memory`` creates for a guest of ``memsize_bytes``."""
    if memsize_bytes <= 0 or memsize_bytes % PAGE_SIZE_BYTES:
        raise ConfigError(f"guest memory {memsize_bytes} bytes is not a positive multiple of {PAGE_SIZE_BYTES}")
    low = min(memsize_bytes, lowmem_limit_bytes)
    segs = [Segment("lowmem", 0, low, 0)]
    if memsize_bytes > lowmem_limit_bytes:
        segs.append(Segment("highmem", highmem_base_bytes, memsize_bytes - lowmem_limit_bytes,
                            low // PAGE_SIZE_BYTES, segoff=highmem_base_bytes))
    return tuple(segs)


def _name_segments(maps: list[VmMemmap]) -> tuple[Segment, ...]:
    segs: list[Segment] = []
    page = 0
    for m in maps:
        name = "lowmem" if m.gpa < HIGHMEM_BASE_BYTES else "highmem"
        if any(s.name == name for s in segs):
            name = f"{name}{len(segs)}"
        segs.append(Segment(name, int(m.gpa), int(m.len), page, int(m.segoff), bool(m.flags & VM_MEMMAP_F_WIRED)))
        page += int(m.len) // PAGE_SIZE_BYTES
    return tuple(segs)


# --------------------------------------------------------------------------- device
class VmmDevice:
    """An open ``/dev/vmm/NAME`` (or a regular file standing in for it in tests).

    ``ioctl`` is injectable so the ioctl paths can be tested without FreeBSD.
    """

    def __init__(self, vm: str, path: str | os.PathLike[str] | None = None, *,
                 ioctl: IoctlFn | None = None, writable: bool = False) -> None:
        self.vm = check_vm_name(vm)
        self.path = os.fspath(path) if path is not None else f"/dev/vmm/{vm}"
        self._ioctl = ioctl or _fcntl_ioctl
        # Read-only is enough for pread/mmap; the dirty-list ioctl needs nothing more.
        try:
            self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise VmmDeviceMissing(f"{self.path}: no such device; is VM {vm!r} running on this host "
                                   "(vmm.ko loaded, bhyve started)?") from None
        except PermissionError:
            raise VmmPermissionError("permission denied; /dev/vmm devices are root-only (mode 0600), "
                                     "run the collector as root", where=self.path) from None
        except IsADirectoryError:
            raise VmmDeviceMissing(f"{self.path}: is a directory, not a vmm device") from None
        except OSError as e:
            raise BhyveError(f"cannot open: {e.strerror}", where=self.path) from None
        self._maps: list[mmap.mmap] = []

    # -- context management --------------------------------------------------
    def close(self) -> None:
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a tracker still holds an array over it; unmapped when that array dies
                pass
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VmmDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- layout ----------------------------------------------------------------
    def mmap_getnext(self, gpa: int) -> VmMemmap | None:
        """``VM_MMAP_GETNEXT``: the first mapping at or above ``gpa``; None at the end (ENOENT)."""
        mm = VmMemmap(gpa=gpa)
        try:
            self._ioctl(self.fd, VM_MMAP_GETNEXT, mm)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return mm

    def segments(self, memsize_bytes: int | None = None) -> tuple[Segment, ...]:
        """System-memory mappings, lowest first.

        Asks the kernel (``VM_MMAP_GETNEXT``, as ``bhyvectl --get-memmap`` does);
        if the device does not answer that ioctl (a regular file in tests),
        falls back to the layout for ``memsize_bytes``.
        """
        maps: list[VmMemmap] = []
        gpa = 0
        try:
            while (m := self.mmap_getnext(gpa)) is not None:
                if m.len == 0:
                    break
                if m.segid == VM_SYSMEM:  # skip device memory (bootrom, framebuffer)
                    maps.append(m)
                gpa = int(m.gpa) + int(m.len)
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP):
                if memsize_bytes is None:
                    raise BhyveError(f"VM_MMAP_GETNEXT is not supported here ({e.strerror}); "
                                     "pass --guest-memory SIZE to give the layout", where=self.path) from None
                return layout_for_memsize(memsize_bytes)
            raise BhyveError(f"VM_MMAP_GETNEXT failed: {e.strerror}", where=self.path) from None
        if not maps:
            if memsize_bytes is not None:
                return layout_for_memsize(memsize_bytes)
            raise BhyveError("the VM has no system memory mapped", where=self.path)
        segs = _name_segments(maps)
        if memsize_bytes is not None and sum(s.length_bytes for s in segs) != memsize_bytes:
            raise ConfigError(f"--guest-memory {memsize_bytes} bytes does not match the kernel's "
                              f"{sum(s.length_bytes for s in segs)} bytes of system memory for VM {self.vm!r}")
        return segs

    # -- reading ---------------------------------------------------------------
    def map_segment(self, seg: Segment) -> memoryview:
        """Map ``seg`` read-only (never PROT_EXEC, which the device refuses)."""
        try:
            m = mmap.mmap(self.fd, seg.length_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=seg.gpa)
        except OSError as e:
            raise BhyveError(f"mmap of {seg.name} at gpa {seg.gpa:#x} failed: {e.strerror}", where=self.path) from None
        except ValueError as e:  # e.g. the test file is shorter than the mapping
            raise BhyveError(f"mmap of {seg.name} at gpa {seg.gpa:#x}: {e}", where=self.path) from None
        self._maps.append(m)
        return memoryview(m)

    def pread_into(self, buf: np.ndarray, gpa: int) -> None:
        """Fill ``buf`` (uint8, contiguous) from guest-physical ``gpa``."""
        view = memoryview(buf).cast("B")  # type: ignore[arg-type]  # numpy declares ndarray.__buffer__ only on 3.12+
        done = 0
        while done < len(view):
            try:
                n = os.preadv(self.fd, [view[done:]], gpa + done)
            except OSError as e:
                raise BhyveError(f"pread at gpa {gpa + done:#x} failed: {e.strerror}", where=self.path) from None
            if n == 0:
                raise BhyveError(f"unexpected end of guest memory at gpa {gpa + done:#x}", where=self.path)
            done += n

    # -- UPB patch ---------------------------------------------------------------
    def dirty_page_list(self, segments: tuple[Segment, ...], out: np.ndarray) -> np.ndarray:
        """Call ``VM_GET_DIRTY_PAGE_LIST``; ``out`` (uint8, one byte per page) is zeroed first.

        Returns ``out``. The kernel only writes entries of resident pages, so the
        zero fill is what marks the others clean (migration.c does the same with
        ``fill_page_list(..., 0)`` before each round).
        """
        low = next((s for s in segments if s.name == "lowmem"), None)
        high = next((s for s in segments if s.name == "highmem"), None)
        if low is None:
            raise BhyveError("no lowmem segment", where=self.path)
        n_pages = sum(s.n_pages for s in segments)
        if out.dtype != np.uint8 or out.shape != (n_pages,) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous uint8 array of {n_pages} pages")
        out.fill(0)
        req = VmGetDirtyPageList()
        req.page_list = out.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        req.num_pages = n_pages
        req.lowmem = VmmMigrationSegment(low.gpa, low.end)
        # No highmem: an empty segment that matches no map entry, as bhyve passes for small guests.
        req.highmem = VmmMigrationSegment(high.gpa, high.end) if high else VmmMigrationSegment(0, 0)
        try:
            self._ioctl(self.fd, VM_GET_DIRTY_PAGE_LIST, req)
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP):
                raise DirtyPageListUnsupported(
                    f"{self.path}: VM_GET_DIRTY_PAGE_LIST not available ({e.strerror}); this needs the UPB "
                    "migration kernel (reviews D30954/D34717-D34722) built with BHYVE_SNAPSHOT; "
                    "use --method content-diff on stock FreeBSD") from None
            raise BhyveError(f"VM_GET_DIRTY_PAGE_LIST failed: {e.strerror}", where=self.path) from None
        return out
