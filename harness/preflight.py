"""Pre-flight: will a run's resident memory fit this host? Decided before anything boots.

A guest bigger than the host is fine as long as the part that becomes
resident fits: with anonymous ``reserve=off`` RAM (see :mod:`harness.vm`) a
page costs host memory only once the guest writes it, the source reads
untouched pages as zero and the destination skips zero pages. What does
become resident, per QEMU process:

* the guest kernel's page array (``struct page``, 64 bytes per 4 KiB page,
  about 1.6 % of guest memory), which the kernel initialises at boot;
* the kernel and the initramfs it unpacks into its root file system;
* the workload's footprint (:func:`harness.guest.workload_footprint_bytes`);
* QEMU itself: the TCG translation cache and heap, plus per-GiB dirty
  bitmaps;
* with the ``/dev/shm`` file backing, every guest page: reading a tmpfs
  hole allocates it, so a migration (or a content-diff scan) makes the whole
  guest resident;
* on the collector's side, its snapshot buffers.

:func:`check_fits` compares the sum with ``MemAvailable`` less a margin and
raises :class:`PreflightError` in one line. Everything here is pure except
:func:`mem_available_bytes`, which reads ``/proc/meminfo``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sim.errors import ConfigError
from sim.units import PAGE_SIZE_BYTES

log = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20

#: struct page is 64 bytes per 4 KiB page on x86-64 (1.5625 %, "about 1.6 %").
STRUCT_PAGE_SHARE = 64 / PAGE_SIZE_BYTES
#: The kernel, its early allocations and the unpacked initramfs (redis included), measured idle at 512 MiB.
GUEST_BASE_BYTES = 192 * MiB
#: One QEMU under TCG: translation cache, heap, device models (measured: about 250 MiB for a booted guest).
QEMU_BASE_BYTES = 384 * MiB
#: Per GiB of guest: dirty-memory bitmaps (one bit per page per client), migration bitmap, receive map.
QEMU_PER_GIB_BYTES = 2 * MiB
#: What is always left free: the margin below MemAvailable a run may not eat into.
MARGIN_MIN_BYTES = 1 * GiB
MARGIN_SHARE = 0.10

BACKINGS = ("shm", "anon")
#: ``auto`` keeps the /dev/shm file (host-readable, what the content-diff collector and --verify-memory read)
#: up to this size, so every small-guest run behaves as before, and uses anonymous memory above it.
SHM_AUTO_MAX_BYTES = 2 * GiB


class PreflightError(ConfigError):
    """The run's estimated resident memory does not fit the host's available memory."""


@dataclass(frozen=True)
class SideEstimate:
    """Estimated resident bytes of one QEMU process (and what the harness holds beside it)."""

    role: str  # "source", "destination" or "collector"
    memory_bytes: int
    backing: str  # "shm" | "anon"
    page_array_bytes: int
    kernel_bytes: int
    workload_bytes: int
    qemu_bytes: int
    host_bytes: int = 0  # e.g. the content-diff collector's snapshot buffers

    @property
    def guest_bytes(self) -> int:
        """Guest pages made resident: all of them with shm backing, else what the guest touches."""
        if self.backing == "shm":
            return self.memory_bytes
        return min(self.memory_bytes, self.page_array_bytes + self.kernel_bytes + self.workload_bytes)

    @property
    def total_bytes(self) -> int:
        return self.guest_bytes + self.qemu_bytes + self.host_bytes


def choose_backing(memory_bytes: int, requested: str = "auto") -> str:
    """The RAM backing for a guest: ``requested`` unless it is ``auto``."""
    if requested == "auto":
        return "shm" if memory_bytes <= SHM_AUTO_MAX_BYTES else "anon"
    if requested not in BACKINGS:
        raise ConfigError(f"RAM backing {requested!r}: choose auto, {' or '.join(BACKINGS)}")
    return requested


def estimate_side(role: str, memory_bytes: int, workload_bytes: int, backing: str,
                  host_bytes: int = 0) -> SideEstimate:
    """The resident estimate of one guest of ``memory_bytes`` whose workload touches ``workload_bytes``."""
    if backing not in BACKINGS:
        raise ValueError(f"unknown RAM backing {backing!r}")
    return SideEstimate(role=role, memory_bytes=memory_bytes, backing=backing,
                        page_array_bytes=int(memory_bytes * STRUCT_PAGE_SHARE), kernel_bytes=GUEST_BASE_BYTES,
                        workload_bytes=max(0, min(workload_bytes, memory_bytes)),
                        qemu_bytes=QEMU_BASE_BYTES + QEMU_PER_GIB_BYTES * -(-memory_bytes // GiB),
                        host_bytes=host_bytes)


def margin_bytes(need_bytes: int) -> int:
    """Headroom kept free on top of the estimate (the estimate is an estimate)."""
    return max(MARGIN_MIN_BYTES, int(need_bytes * MARGIN_SHARE))


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def describe(sides: tuple[SideEstimate, ...]) -> str:
    """``source 1.4 GiB (workload 0.2, page array 0.5, kernel 0.2, QEMU 0.5 GiB), ...`` for messages and logs."""
    parts = []
    for s in sides:
        what = (f"all {_gib(s.memory_bytes)} of guest RAM in /dev/shm" if s.backing == "shm" else
                f"workload {s.workload_bytes / GiB:.1f}, page array {s.page_array_bytes / GiB:.1f}, "
                f"kernel {s.kernel_bytes / GiB:.1f}")
        extra = f", harness {s.host_bytes / GiB:.1f}" if s.host_bytes else ""
        parts.append(f"{s.role} {_gib(s.total_bytes)} ({what}, QEMU {s.qemu_bytes / GiB:.1f}{extra} GiB)")
    return ", ".join(parts)


def check_fits(sides: tuple[SideEstimate, ...], available_bytes: int, what: str) -> int:
    """Return the estimated need in bytes, or raise :class:`PreflightError` (one line) if it does not fit."""
    need = sum(s.total_bytes for s in sides)
    margin = margin_bytes(need)
    log.info("pre-flight %s: need about %s (%s); %s available, %s kept free", what, _gib(need), describe(sides),
             _gib(available_bytes), _gib(margin))
    if need + margin > available_bytes:
        hint = ("; fill=/total= in the workload spec bound what the guest touches"
                if any(s.backing == "anon" and s.workload_bytes >= s.memory_bytes // 2 for s in sides) else "")
        if any(s.backing == "shm" for s in sides) and not hint:
            hint = "; a guest backed by /dev/shm is resident in full"
        raise PreflightError(f"pre-flight: {what} needs about {_gib(need)} resident ({describe(sides)}) "
                             f"but the host has {_gib(available_bytes)} available and keeps {_gib(margin)} "
                             f"free{hint}")
    return need


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's ``MemAvailable`` in bytes."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ConfigError("no MemAvailable line", where=meminfo)


def migration_sides(memory_bytes: int, workload_bytes: int, backing: str) -> tuple[SideEstimate, SideEstimate]:
    """Source and destination of a local migration: the destination ends up holding the source's pages."""
    return (estimate_side("source", memory_bytes, workload_bytes, backing),
            estimate_side("destination", memory_bytes, workload_bytes, backing))


def check_host(sides: tuple[SideEstimate, ...], what: str) -> int:
    """:func:`check_fits` against this host's ``MemAvailable`` now."""
    return check_fits(sides, mem_available_bytes(), what)


def check_migration(memory_bytes: int, workload: object, *, verify_memory: bool = False,
                    flag: str | None = None) -> int:
    """Refuse, before anything boots, a local migration whose two guests would not fit this host.

    ``workload`` is a :class:`harness.guest.GuestWorkload` (or None for idle); ``flag``, the command-line
    flag that set the guest size, is named in a refusal of the size.
    """
    from harness.guest import workload_footprint_bytes

    backing = choose_backing(memory_bytes)
    if verify_memory and backing != "shm":
        raise PreflightError(f"pre-flight: --verify-memory compares the guests' /dev/shm RAM files, which only "
                             f"guests up to {_gib(SHM_AUTO_MAX_BYTES)} have (this one is {_gib(memory_bytes)})")
    sides = migration_sides(memory_bytes, workload_footprint_bytes(workload, memory_bytes), backing)  # type: ignore[arg-type]
    try:
        return check_host(sides, f"a {_gib(memory_bytes)} migration")
    except PreflightError as e:
        raise e.at(flag=flag) from None
