"""Zero pages of a guest from its size and what fills it, not from a small trace's fraction.

QEMU elides a zero page (one byte on the wire), so how much of a big guest
is zero decides most of what a migration sends. A trace of a 512 MiB guest
measures *its* share (58 % for the bundled redis trace), and carrying that
share to 256 GiB says 107 GiB cross the link. What is non-zero in a booted
guest is what was written:

* the kernel's page array: one ``struct page`` (64 bytes) per 4 KiB page,
  1.5625 % of guest memory, initialised at boot (:data:`PAGE_ARRAY_SHARE`);
* the kernel, its early allocations and the unpacked initramfs, a fixed
  amount (:data:`GUEST_BASE_BYTES`, the harness pre-flight's figure);
* the workload's fill (``fill=`` share, or ``total=``) and footprint
  (redis's key space): :func:`harness.guest.workload_footprint_bytes`.

Everything else was never written and reads as zero (anonymous ``reserve=off``
RAM, or a fresh ``/dev/shm`` file). :func:`zero_page_fraction` is that share;
:func:`zero_page_fraction_for_spec` resolves a harness workload spec (the
same sizes the pre-flight budgets for, so both agree). The simulator takes
it as ``workload.zero_page_fraction``, which overrides the trace's or the
model's own fraction (:mod:`sim.engine`); :func:`rescaled_zero_fraction` is
the replacement for carrying a model's fraction to another size.
"""

from __future__ import annotations

from .errors import ConfigError
from .units import PAGE_SIZE_BYTES

#: struct page per 4 KiB page on x86-64: 64 / 4096 of guest memory.
PAGE_ARRAY_SHARE = 64 / PAGE_SIZE_BYTES
#: Kernel, early allocations and initramfs (with redis) of the harness guest (harness.preflight.GUEST_BASE_BYTES).
GUEST_BASE_BYTES = 192 << 20


def nonzero_bytes(memory_bytes: int, workload_bytes: int, *, base_bytes: int = GUEST_BASE_BYTES,
                  page_array_share: float = PAGE_ARRAY_SHARE) -> int:
    """Bytes of a ``memory_bytes`` guest that hold data: page array + kernel + workload, at most all of it."""
    if memory_bytes <= 0:
        raise ConfigError(f"guest memory must be positive, not {memory_bytes}")
    if workload_bytes < 0 or base_bytes < 0 or not 0 <= page_array_share < 1:
        raise ConfigError("workload and kernel bytes must be >= 0 and the page-array share in [0, 1)")
    used = int(memory_bytes * page_array_share) + base_bytes + workload_bytes
    return min(memory_bytes, used)


def zero_page_fraction(memory_bytes: int, workload_bytes: int, *, base_bytes: int = GUEST_BASE_BYTES,
                       page_array_share: float = PAGE_ARRAY_SHARE) -> float:
    """Share of a guest's pages that are zero when nothing but kernel, page array and workload wrote it."""
    used = nonzero_bytes(memory_bytes, workload_bytes, base_bytes=base_bytes, page_array_share=page_array_share)
    return 1.0 - used / memory_bytes


def workload_bytes_for_spec(spec: str, memory_bytes: int) -> int:
    """What a harness workload spec fills in a guest of ``memory_bytes`` (``fill=``/``total=``, redis's keys).

    Imports the harness's spec parser lazily: ``sim`` needs ``harness`` only for this resolution.
    """
    from harness.guest import parse_workload, workload_footprint_bytes

    return workload_footprint_bytes(parse_workload(spec, memory_bytes), memory_bytes)


def zero_page_fraction_for_spec(spec: str, memory_bytes: int, **kw: float) -> float:
    """:func:`zero_page_fraction` of a guest running harness workload ``spec``."""
    return zero_page_fraction(memory_bytes, workload_bytes_for_spec(spec, memory_bytes), **kw)  # type: ignore[arg-type]


def rescaled_zero_fraction(fraction: float, from_bytes: int, to_bytes: int, law: str = "absolute") -> float:
    """A measured zero share moved to another guest size, by what its non-zero data is made of.

    The non-zero part of the measured guest is split into the page array
    (which scales with memory) and the rest; the rest stays the same size under
    ``absolute`` (a workload of fixed data) and grows with memory under
    ``proportional`` (a workload whose data is a share of the guest).
    """
    if not 0.0 <= fraction <= 1.0 or from_bytes <= 0 or to_bytes <= 0:
        raise ConfigError("zero-page fraction must be in [0, 1] and the sizes positive")
    used = (1.0 - fraction) * from_bytes
    rest = max(0.0, used - from_bytes * PAGE_ARRAY_SHARE)
    if law == "proportional":
        rest *= to_bytes / from_bytes
    elif law != "absolute":
        raise ConfigError(f"unknown scaling law {law!r} (choose absolute or proportional)")
    return max(0.0, 1.0 - min(to_bytes, to_bytes * PAGE_ARRAY_SHARE + rest) / to_bytes)
