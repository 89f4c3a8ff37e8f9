"""The QEMU guest: a Debian kernel plus a busybox initramfs that runs one workload.

``miglab harness build-guest`` builds it into a cache directory (never the
repository): ``$MIGLAB_CACHE/guest`` if ``MIGLAB_CACHE`` is set, else
``~/.cache/miglab/guest``. The build

1. ``apt-get download``\\ s the kernel package that ``linux-image-amd64``
   depends on and pulls ``boot/vmlinuz-*`` out of it (``dpkg-deb
   --fsys-tarfile``; the modules are not needed), then decompresses the
   payload to an uncompressed ``vmlinux`` (as the kernel's
   ``scripts/extract-vmlinux`` does: find the compressed stream's magic, try
   to decompress from there, keep the first result that is an ELF file). Under
   TCG ``vmlinux`` boots in about 4 s against about 9.5 s for ``vmlinuz``;
2. compiles ``harness/workload/miglab-load.c`` statically;
3. ``apt-get download``\\ s ``redis-tools`` (and its libraries that are not
   on the host) for the real-application workload, resolving every shared
   library with ``ldd``;
4. packs ``busybox-static`` (with a symlink per applet), the init script,
   miglab-load, redis and its libraries into an uncompressed newc initramfs
   (written by :func:`write_newc`, so ``/dev/console`` exists without root
   and the archive is byte-for-byte reproducible).

The build is keyed by a hash of its inputs (package versions, the C source,
the init script, busybox, this module's ``BUILD_VERSION``); a second call with
unchanged inputs returns the cached image in well under a second.

Workloads
---------
The guest reads ``miglab.run=KIND:ARG:ARG...`` from the kernel command line
(numbers already resolved by :func:`parse_workload`) and the original spec
from ``miglab.workload=SPEC`` (for the console log only). Specs:

* ``uniform:rate=R[,span=S]``, ``random:rate=R[,span=S]``,
  ``hotcold:hot=H,rate=R[,hot_share=0.9]``, ``zipf:rate=R[,s=1.1][,span=S]``,
  ``seq:rate=R[,span=S]`` -- the synthetic patterns shared with ``sim``
  (see the briefing); rates in pages/s or bytes/s with a unit, sizes with a
  unit or as a share of the guest (``hot=10%``). The grammar is parsed once,
  by :func:`sim.workload.split_spec` and :func:`sim.workload.parse_spec`; the
  harness-only keys (:data:`sim.workload.HARNESS_ONLY_KEYS`) are
  ``total=SIZE`` or ``fill=SHARE`` (``fill=0.25``: the region miglab-load
  allocates and fills with non-zero data before writing; default: the guest's
  MemAvailable minus 48 MiB) and ``seed=N`` (default 1). ``idle:fill=SHARE``
  fills the region, then only reports (a used guest that does not write).
  The program prints ``miglab-load t=12.000 pages=5000 rate=5000.0
  total=60000 skipped=0`` once per second.
* ``redis[:keys=N|P%][,value=SIZE][,clients=C][,pipeline=P][,tests=set+get]`` --
  Debian's ``redis-server`` (no persistence) loaded by ``redis-benchmark``,
  both inside the guest over the guest's loopback: random keys out of ``keys``
  (default 100000; ``keys=5%``: as many keys as make their values 5 % of guest memory, so
  the data grows with the guest), ``value`` bytes per value (default 1KiB), ``clients``
  parallel connections (default 4), ``pipeline`` requests per round trip
  (default 1), ``tests`` the ``redis-benchmark -t`` list joined with ``+``
  (default ``set+get``). The key space is first filled with a pipelined SET
  pass (``miglab-redis prefilled``), then a reporter prints ``miglab-redis
  t=12.000 ops=23456 rate=23456.0 total=345678 used_memory=123456789`` once
  per second (t from the guest's ``/proc/uptime``).
* ``idle`` -- nothing runs; the init script prints ``miglab-idle t=...`` every second.

The guest never exits: when a workload ends, init reports it and sleeps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sim.errors import ConfigError, MiglabError
from sim.units import PAGE_SIZE_BYTES, parse_size
from sim.workload import GUEST_ONLY_PATTERNS, parse_fill, parse_size_or_share, parse_spec, split_spec

log = logging.getLogger(__name__)

# Bump when the build recipe changes in a way the input hash cannot see.
BUILD_VERSION = 3
KERNEL_META_PACKAGE = "linux-image-amd64"
REDIS_PACKAGES: tuple[str, ...] = ("redis-tools", "libjemalloc2", "liblzf1")
REDIS_BINARIES: dict[str, str] = {  # name in the guest -> file in redis-tools
    "redis-server": "redis-check-rdb",  # Debian's redis-server is a symlink to this multi-call binary
    "redis-cli": "redis-cli",
    "redis-benchmark": "redis-benchmark",
}
BUSYBOX_CANDIDATES: tuple[str, ...] = ("/bin/busybox", "/usr/bin/busybox")
WORKLOAD_SOURCE = Path(__file__).with_name("workload") / "miglab-load.c"
KERNEL_CMDLINE_BASE = "console=ttyS0,115200 panic=-1 quiet loglevel=3 mitigations=off tsc=reliable no_timer_check"

SYNTHETIC_PATTERNS: tuple[str, ...] = ("uniform", "random", "hotcold", "zipf", "seq")


class GuestError(MiglabError):
    """The guest image cannot be built (missing tool, package, or download failure)."""


# ---------------------------------------------------------------------------
# workload specs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestWorkload:
    """A workload resolved for the guest command line.

    ``argv`` is what the init script runs (``kind`` first); ``params`` are the
    resolved values for records (rate in pages/s, sizes in bytes).
    """

    spec: str
    kind: str  # "load" | "redis" | "idle"
    pattern: str  # synthetic pattern name, "redis" or "idle"
    argv: tuple[str, ...]
    params: dict

    @property
    def rate_pages_per_s(self) -> float | None:
        """Configured page-write rate for synthetic patterns, else None."""
        r = self.params.get("rate_pages_per_s")
        return float(r) if r is not None else None

    def cmdline_args(self) -> str:
        """Kernel command-line words that select this workload."""
        return f"miglab.run={':'.join(self.argv)} miglab.workload={_cmdline_safe(self.spec)}"


def _cmdline_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.,:=+/-]", "_", text)


WHERE = "workload spec"  # how a spec is named in error messages


def _mib(spec: str, key: str, text: str, memory_bytes: int) -> int:
    """A size key in whole MiB; a share of memory (``10%``) is rounded down to whole MiB."""
    try:
        n = parse_size_or_share(text, memory_bytes)
    except ConfigError as e:
        raise ConfigError(f"{WHERE} {spec!r}: {e}") from None
    if str(text).strip().endswith("%"):
        n -= n % (1024 * 1024)
    if n <= 0 or n % (1024 * 1024):
        raise ConfigError(f"{WHERE} {spec!r}: {key}={text} must be a positive whole number of MiB")
    if n > memory_bytes:
        raise ConfigError(f"{WHERE} {spec!r}: {key}={text} exceeds the guest memory")
    return n // (1024 * 1024)


def _number(spec: str, key: str, text: str, lo: float, hi: float, kind: type = float) -> float:
    """``text`` as ``kind`` (int or float) within [lo, hi], or a one-line ConfigError naming the spec."""
    try:
        v = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{WHERE} {spec!r}: {key}={text} is not {what}") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{WHERE} {spec!r}: {key}={text} is outside [{lo}, {hi}]")
    return v


def _int(spec: str, key: str, text: str, lo: int, hi: int) -> int:
    return cast(int, _number(spec, key, text, lo, hi, int))  # kind=int: the value is an int


def _float(spec: str, key: str, text: str, lo: float, hi: float) -> float:
    return _number(spec, key, text, lo, hi, float)


def _region_mib(spec: str, kv: dict[str, str], memory_bytes: int) -> int:
    """The region miglab-load fills (``total=`` or ``fill=``); 0 lets the program take MemAvailable."""
    if "fill" in kv:
        try:
            share = parse_fill(kv["fill"])
        except ConfigError as e:
            raise ConfigError(f"{WHERE} {spec!r}: {e}") from None
        return int(memory_bytes * share) >> 20
    return _mib(spec, "total", kv["total"], memory_bytes) if "total" in kv else 0


def _parse_redis(spec: str, kv: dict[str, str], memory_bytes: int) -> GuestWorkload:
    value = parse_size(kv.get("value", "1KiB"))
    keys_text = kv.get("keys", "100000")
    if keys_text.strip().endswith("%") and 1 <= value:
        # keys=5%: a key space whose values fill that share of the guest, so redis's data grows with memory
        keys_text = str(max(1, parse_size_or_share(keys_text, memory_bytes) // value))
    keys = _int(spec, "keys", keys_text, 1, 100_000_000)
    if not 1 <= value <= 64 * 1024 * 1024:
        raise ConfigError(f"{WHERE} {spec!r}: value={kv['value']} must be 1 B .. 64 MiB")
    if keys * (value + 64) > memory_bytes * 0.7:
        raise ConfigError(f"{WHERE} {spec!r}: keys x value (~{keys * (value + 64) >> 20} MiB) "
                          f"does not fit in the guest's {memory_bytes >> 20} MiB")
    clients = _int(spec, "clients", kv.get("clients", "4"), 1, 1000)
    pipeline = _int(spec, "pipeline", kv.get("pipeline", "1"), 1, 10000)
    tests = kv.get("tests", "set+get")
    if not re.fullmatch(r"[a-z_]+(\+[a-z_]+)*", tests):
        raise ConfigError(f"{WHERE} {spec!r}: tests={tests} must be redis-benchmark test names "
                          "joined with '+', e.g. set+get")
    params = {"keys": keys, "value_bytes": value, "clients": clients, "pipeline": pipeline,
              "tests": tests.split("+")}
    argv = ("redis", str(keys), str(value), str(clients), str(pipeline), tests.replace("+", ","))
    return GuestWorkload(spec, "redis", "redis", argv, params)


def redis_footprint_bytes(keys: int, value_bytes: int) -> int:
    """Resident memory redis needs for ``keys`` values (dict entry, key, value and jemalloc rounding)."""
    return int(keys * (value_bytes + 96) * 1.25) + (32 << 20)


def parse_workload(spec: str, memory_bytes: int = 512 * 1024 * 1024) -> GuestWorkload:
    """Resolve a workload spec for a guest with ``memory_bytes`` of RAM.

    The words and the model keys go through the one grammar parser,
    :func:`sim.workload.parse_spec`; this adds what only the guest needs
    (whole MiB, the harness-only keys ``total``/``fill``/``seed``, redis).
    Raises :class:`ConfigError` with one line naming the spec and the problem.
    """
    name, kv = split_spec(spec, where=WHERE)
    if name in GUEST_ONLY_PATTERNS:
        return _parse_redis(spec, kv, memory_bytes)
    region_mib = _region_mib(spec, kv, memory_bytes)
    if name == "idle":
        if not region_mib:
            return GuestWorkload(spec, "idle", "idle", ("idle",), {})
        # an idle guest holding data: miglab-load fills the region, then only reports
        argv = ("load", str(region_mib), "0", "0.0", "idle", "1", "0.0")
        return GuestWorkload(spec, "load", "idle", argv, {"rate_pages_per_s": 0.0, "seed": 1,
                                                           "total_bytes": region_mib << 20})
    ws = parse_spec(spec, memory_bytes, PAGE_SIZE_BYTES, where=WHERE)
    if not ws.rate_pages_per_s > 0:
        raise ConfigError(f"{WHERE} {spec!r}: rate must be positive in a real guest (use idle for none)")
    rate = ws.rate_pages_per_s
    seed = _int(spec, "seed", kv.get("seed", "1"), 0, 2**63 - 1)
    if name == "hotcold" and "span" in kv:
        # the guest writes the cold share over the region minus the hot set, which is the model's span
        span_region = _mib(spec, "span", kv["span"], memory_bytes)
        if region_mib and region_mib != span_region:
            raise ConfigError(f"{WHERE} {spec!r}: hotcold writes its cold share over the whole region; "
                              "give span= equal to total=/fill= or leave one out")
        region_mib = span_region
    params: dict = {"rate_pages_per_s": rate, "seed": seed, "total_bytes": region_mib << 20 or None}
    if name == "hotcold":
        span_mib = _mib(spec, "hot", kv["hot"], memory_bytes)
        param = _float(spec, "hot_share", kv.get("hot_share", "0.9"), 0.0, 1.0)
        params.update(hot_bytes=span_mib << 20, hot_share=param)
    else:
        span_mib = _mib(spec, "span", kv["span"], memory_bytes) if "span" in kv else 0
        param = _float(spec, "s", kv.get("s", "1.1"), 1e-6, 100.0) if name == "zipf" else 1.1
        params["span_bytes"] = span_mib << 20 or None
        if name == "zipf":
            params["s"] = param
    if region_mib and span_mib > region_mib:
        raise ConfigError(f"{WHERE} {spec!r}: the span/hot set is larger than total")
    argv = ("load", str(region_mib), str(span_mib), repr(float(rate)), name, str(seed), repr(param))
    return GuestWorkload(spec, "load", name, argv, params)


def workload_footprint_bytes(workload: GuestWorkload | None, memory_bytes: int) -> int:
    """Guest memory the workload makes resident (non-zero): what a pre-flight must budget for.

    miglab-load touches every page of its region (all of MemAvailable when
    ``total``/``fill`` are not given, so the whole guest); redis holds its key
    space; an idle guest holds nothing.
    """
    if workload is None or workload.kind == "idle":
        return 0
    if workload.kind == "redis":
        return redis_footprint_bytes(int(workload.params["keys"]), int(workload.params["value_bytes"]))
    total = workload.params.get("total_bytes")
    return int(total) if total else memory_bytes


# ---------------------------------------------------------------------------
# the image
# ---------------------------------------------------------------------------

INIT_SCRIPT = r"""#!/bin/busybox sh
# miglab guest init: mount, start the workload named on the kernel command line, never exit.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
exec </dev/console >/dev/console 2>&1
ip link set lo up
up() { cut -d' ' -f1 /proc/uptime; }
echo "miglab-init: up uptime=$(up) kernel=$(uname -r)"

run=idle
for word in $(cat /proc/cmdline); do
    case "$word" in
        miglab.run=*) run="${word#miglab.run=}" ;;
    esac
done
echo "miglab-init: run=$run"
IFS=: ; set -- $run ; unset IFS
kind="$1"; shift

run_redis() {
    keys="$1"; value="$2"; clients="$3"; pipeline="$4"; tests="$5"
    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
        --daemonize yes --logfile /tmp/redis.log || return 1
    i=0
    until [ "$(redis-cli ping 2>/dev/null)" = PONG ]; do
        i=$((i + 1)); [ $i -gt 200 ] && { echo "miglab-redis error: server did not start"; cat /tmp/redis.log; return 1; }
        sleep 0.1
    done
    echo "miglab-redis started keys=$keys value=$value clients=$clients pipeline=$pipeline tests=$tests"
    redis-benchmark -q -t set -n $((keys * 2)) -r "$keys" -d "$value" -c "$clients" -P 32 >/dev/null 2>&1
    echo "miglab-redis prefilled uptime=$(up)"
    (
        prev=""; prev_t=""
        while :; do
            now=$(up)
            stats=$(redis-cli info 2>/dev/null | tr -d '\r')
            total=$(echo "$stats" | sed -n 's/^total_commands_processed://p')
            mem=$(echo "$stats" | sed -n 's/^used_memory://p')
            if [ -n "$prev" ] && [ -n "$total" ]; then
                awk -v t="$now" -v t0="$prev_t" -v n="$total" -v n0="$prev" -v m="$mem" \
                    'BEGIN { d = t - t0; if (d <= 0) d = 1e-9;
                             printf "miglab-redis t=%.3f ops=%d rate=%.1f total=%d used_memory=%d\n", t, n - n0, (n - n0) / d, n, m }'
            fi
            prev="$total"; prev_t="$now"
            sleep 1
        done
    ) &
    while :; do
        redis-benchmark -q -t "$tests" -n 10000000 -r "$keys" -d "$value" -c "$clients" -P "$pipeline" >/dev/null 2>&1
    done
}

case "$kind" in
    load) /bin/miglab-load "$@" ;;
    redis) run_redis "$@" ;;
    *) i=0; while :; do echo "miglab-idle t=$(up)"; sleep 1; done ;;
esac
echo "miglab-init: workload $kind exited rc=$?"
while :; do sleep 3600; done
"""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot it with ``-kernel kernel -initrd initrd -append cmdline(...)``."""

    kernel: Path
    initrd: Path
    kernel_version: str
    key: str
    manifest: dict

    def cmdline(self, workload: GuestWorkload | None = None, extra: str = "") -> str:
        """The kernel command line for ``workload`` (idle if None)."""
        parts = [KERNEL_CMDLINE_BASE]
        if workload is not None:
            parts.append(workload.cmdline_args())
        if extra:
            parts.append(extra)
        return " ".join(parts)


def cache_root() -> Path:
    """``$MIGLAB_CACHE`` or ``~/.cache/miglab``."""
    env = os.environ.get("MIGLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "miglab"


def guest_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "guest"


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None, env: dict | None = None,
         timeout_s: float = 600) -> str:
    log.debug("run %s", argv)
    try:
        p = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise GuestError(f"{argv[0]} not found (run harness/install-deps.sh as root)", where=what) from None
    except subprocess.TimeoutExpired:
        raise GuestError(f"{argv[0]} timed out after {timeout_s:.0f} s", where=what) from None
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise GuestError(f"{' '.join(argv[:3])} failed: {msg[-1] if msg else f'exit {p.returncode}'}", where=what)
    return p.stdout


def _candidates(packages: Iterable[str]) -> dict[str, str]:
    """Candidate versions from ``apt-cache policy`` (local, no network)."""
    out = _run(["apt-cache", "policy", *packages], what="apt-cache policy")
    versions: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            versions[current] = line.split(":", 1)[1].strip()
    for p in packages:
        if versions.get(p, "(none)") == "(none)":
            raise GuestError(f"package {p} is not available from apt (run apt-get update or harness/install-deps.sh)")
    return versions


def kernel_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], what="apt-cache depends")
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise GuestError(f"cannot find the kernel package {KERNEL_META_PACKAGE} depends on")


def _deb_filename(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}_amd64.deb"


def _download(packages: dict[str, str], dest: Path) -> dict[str, Path]:
    """``apt-get download`` each package at its candidate version unless already there."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = {p: dest / _deb_filename(p, v) for p, v in packages.items()}
    missing = [f"{p}={packages[p]}" for p, path in paths.items() if not path.exists()]
    if missing:
        log.info("downloading %s", ", ".join(missing))
        _run(["apt-get", "download", *missing], what="apt-get download", cwd=dest)
    for p, path in paths.items():
        if not path.exists():
            found = sorted(dest.glob(f"{p}_*.deb"))
            if not found:
                raise GuestError(f"apt-get download did not produce {path.name}")
            paths[p] = found[-1]
    return paths


def _extract_member(deb: Path, pattern: str) -> tuple[str, bytes]:
    """Pull the first member matching ``pattern`` out of a .deb without unpacking the rest."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.isfile() and re.fullmatch(pattern, member.name.lstrip("./")):
                        f = tar.extractfile(member)
                        assert f is not None
                        data = f.read()
                        proc.kill()
                        return member.name.lstrip("./"), data
        finally:
            proc.stdout.close()
    raise GuestError(f"no member matching {pattern}", where=deb.name)


_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("xz", b"\xfd7zXZ\x00"), ("gzip", b"\x1f\x8b\x08"), ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lzma", b"\x5d\x00\x00\x00"), ("bzip2", b"BZh"), ("lz4", b"\x02\x21\x4c\x18"),
)


def extract_vmlinux(vmlinuz: bytes) -> tuple[bytes, str]:
    """Return ``(vmlinux ELF bytes, compression)`` from a bzImage, like scripts/extract-vmlinux."""
    for name, magic in _MAGICS:
        start = 0
        while (pos := vmlinuz.find(magic, start)) >= 0:
            start = pos + 1
            try:
                out = _decompress(name, vmlinuz[pos:])
            except Exception as e:  # a false magic match: keep scanning
                log.debug("no %s stream at %d: %s", name, pos, e)
                continue
            if out[:4] == b"\x7fELF":
                return out, name
    raise GuestError("no compressed ELF kernel found inside vmlinuz")


def _decompress(name: str, data: bytes) -> bytes:
    if name == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if name == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if name == "gzip":
        return zlib.decompressobj(wbits=31).decompress(data)
    if name == "bzip2":
        import bz2

        return bz2.BZ2Decompressor().decompress(data)
    tool = {"zstd": ["zstd", "-dc"], "lz4": ["lz4", "-dc"]}[name]
    p = subprocess.run(tool, input=data, capture_output=True)  # trailing data makes them exit 1; output is fine
    return p.stdout


def compile_workload(out: Path) -> None:
    """Compile miglab-load statically into ``out``."""
    _run(["gcc", "-O2", "-static", "-Wall", "-o", str(out), str(WORKLOAD_SOURCE), "-lm"],
         what="compiling miglab-load")


def _busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.exists():
            out = subprocess.run([c, "--list"], capture_output=True, text=True).stdout
            if "sh" in out.split():
                return p
    raise GuestError("busybox (busybox-static) not found (run harness/install-deps.sh as root)")


def _file_hash(h: hashlib._Hash, path: Path) -> None:
    h.update(path.read_bytes())


def _input_key(kernel_pkg: str, versions: dict[str, str], busybox: Path) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"build_version": BUILD_VERSION, "kernel": kernel_pkg, "versions": versions,
                         "cmdline": KERNEL_CMDLINE_BASE}, sort_keys=True).encode())
    h.update(INIT_SCRIPT.encode())
    _file_hash(h, WORKLOAD_SOURCE)
    _file_hash(h, busybox)
    return h.hexdigest()[:16]


# -- cpio (newc) --------------------------------------------------------------

def _newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
    hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = hdr + namez
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


@dataclass(frozen=True)
class CpioEntry:
    """One initramfs member: a directory, file, symlink or character device."""

    name: str
    kind: str  # "dir" | "file" | "link" | "chr"
    data: bytes = b""
    mode: int = 0o755
    rdev: tuple[int, int] = (0, 0)


def write_newc(entries: Iterable[CpioEntry], out: Path) -> None:
    """Write an uncompressed newc cpio archive (what the kernel unpacks as initramfs)."""
    kinds = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "link": stat.S_IFLNK, "chr": stat.S_IFCHR}
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        for ino, e in enumerate(entries, start=1):
            f.write(_newc_entry(e.name, kinds[e.kind] | e.mode, e.data, e.rdev, ino))
        f.write(_newc_entry("TRAILER!!!", 0))
    os.replace(tmp, out)


def _resolve_libs(binaries: Sequence[Path], lib_dirs: Sequence[Path]) -> list[Path]:
    """Shared libraries (host or staged) the binaries need, via ldd."""
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(d) for d in lib_dirs)}
    libs: dict[str, Path] = {}
    for b in binaries:
        out = _run(["ldd", str(b)], what=f"ldd {b.name}", env=env)
        for line in out.splitlines():
            if "not found" in line:
                raise GuestError(f"{b.name} needs {line.split()[0]}, which is not installed on this host "
                                 "(run harness/install-deps.sh as root)")
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.setdefault(m.group(1), Path(m.group(1)))
    return list(libs.values())


def _tree_entries(files: dict[str, tuple[str, bytes, int]]) -> list[CpioEntry]:
    """Entries for ``{guest_path: (kind, data, mode)}`` plus every parent directory, sorted."""
    dirs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    entries = [CpioEntry(d, "dir", mode=0o755) for d in sorted(dirs)]
    for path in sorted(files):
        kind, data, mode = files[path]
        entries.append(CpioEntry(path.strip("/"), kind, data, mode))
    return entries


def build_guest(cache: Path | None = None, *, force: bool = False, with_redis: bool = True) -> GuestImage:
    """Build (or reuse) the guest image; return its paths. Idempotent."""
    root = guest_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    busybox = _busybox()
    kpkg = kernel_package()
    pkgs = [kpkg, *(REDIS_PACKAGES if with_redis else ())]
    versions = _candidates(pkgs)
    key = _input_key(kpkg, versions, busybox)
    out = root / key
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not force:
        return _cached(out, key)
    # one builder at a time (parallel test runs, a collector and a migration starting together)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest_path.exists() and not force:  # built by whoever held the lock
            return _cached(out, key)
        return _build(root, out, key, kpkg, versions, busybox, with_redis)


def _cached(out: Path, key: str) -> GuestImage:
    manifest = json.loads((out / "manifest.json").read_text())
    log.info("guest %s already built in %s", key, out)
    return GuestImage(out / "vmlinux", out / "initramfs.cpio", manifest["kernel_version"], key, manifest)


def _build(root: Path, out: Path, key: str, kpkg: str, versions: dict[str, str], busybox: Path,
           with_redis: bool) -> GuestImage:
    t0 = time.monotonic()
    debs = _download(versions, root / "debs")
    with tempfile.TemporaryDirectory(prefix="miglab-guest-", dir=root) as tmpd:
        tmp = Path(tmpd)
        name, vmlinuz = _extract_member(debs[kpkg], r"boot/vmlinuz-.*")
        kernel_version = name.split("vmlinuz-", 1)[1]
        vmlinux, compression = extract_vmlinux(vmlinuz)
        log.info("kernel %s: %s-compressed, %d -> %d bytes", kernel_version, compression, len(vmlinuz), len(vmlinux))
        (tmp / "vmlinux").write_bytes(vmlinux)

        load_bin = tmp / "miglab-load"
        compile_workload(load_bin)

        files: dict[str, tuple[str, bytes, int]] = {}
        bb = busybox.read_bytes()
        files["bin/busybox"] = ("file", bb, 0o755)
        applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True).stdout.split()
        for a in applets:
            if a.strip("/") != "bin/busybox":
                files.setdefault(a.strip("/"), ("link", b"/bin/busybox", 0o777))
        files["init"] = ("file", INIT_SCRIPT.encode(), 0o755)
        files["bin/miglab-load"] = ("file", load_bin.read_bytes(), 0o755)
        redis_version = None
        if with_redis:
            staged = tmp / "redis"
            for p in REDIS_PACKAGES:
                _run(["dpkg", "-x", str(debs[p]), str(staged)], what=f"dpkg -x {p}")
            lib_dirs = [staged / "usr/lib/x86_64-linux-gnu", staged / "lib/x86_64-linux-gnu"]
            bins = [staged / "usr/bin" / src for src in REDIS_BINARIES.values()]
            for guest_name, src in REDIS_BINARIES.items():
                files[f"usr/bin/{guest_name}"] = ("file", (staged / "usr/bin" / src).read_bytes(), 0o755)
            for lib in _resolve_libs(bins, lib_dirs):
                real = lib.resolve()
                guest_path = str(lib)
                for d in lib_dirs:  # staged libraries go where the package would put them
                    if str(lib).startswith(str(d)):
                        guest_path = "/usr/lib/x86_64-linux-gnu/" + lib.name
                files[guest_path.strip("/")] = ("file", real.read_bytes(), 0o755)
            redis_version = versions["redis-tools"]
        entries = _tree_entries(files)
        for dirname in ("dev", "proc", "sys", "tmp", "run"):  # not `d`: that is a Path above
            entries.insert(0, CpioEntry(dirname, "dir", mode=0o755))
        entries.insert(1, CpioEntry("dev/console", "chr", mode=0o600, rdev=(5, 1)))
        write_newc(entries, tmp / "initramfs.cpio")

        manifest = {"key": key, "kernel_package": kpkg, "kernel_version": kernel_version,
                    "kernel_compression": compression, "versions": versions, "redis_version": redis_version,
                    "busybox": str(busybox), "build_version": BUILD_VERSION,
                    "initramfs_bytes": (tmp / "initramfs.cpio").stat().st_size,
                    "vmlinux_bytes": len(vmlinux), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_s": round(time.monotonic() - t0, 2)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        staging = root / f".{key}.new"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        for f in ("vmlinux", "initramfs.cpio", "manifest.json"):
            os.replace(tmp / f, staging / f)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)  # the manifest appears only with a complete image
    log.info("guest %s built in %.1f s", key, manifest["build_s"])
    return GuestImage(out / "vmlinux", out / "initramfs.cpio", kernel_version, key, manifest)


def ensure_guest(cache: Path | None = None) -> GuestImage:
    """The guest image, building it first if needed (what the VM launcher calls)."""
    return build_guest(cache)
