"""Guest build pieces: workload specs, vmlinux extraction, initramfs archive, the miglab-load program."""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess

import pytest

from harness import guest
from harness.guest import CpioEntry, extract_vmlinux, parse_workload, write_newc
from sim.errors import ConfigError

MiB = 1 << 20


# -- workload specs --------------------------------------------------------------

def test_hotcold_spec_resolves_to_guest_argv():
    wl = parse_workload("hotcold:hot=64MiB,rate=5000", 512 * MiB)
    assert wl.kind == "load" and wl.pattern == "hotcold"
    assert wl.argv == ("load", "0", "64", "5000.0", "hotcold", "1", "0.9")
    assert wl.rate_pages_per_s == 5000
    assert "miglab.run=load:0:64:5000.0:hotcold:1:0.9" in wl.cmdline_args()


def test_byte_rate_is_converted_to_pages():
    wl = parse_workload("uniform:rate=40MiB/s,span=128MiB,seed=7,total=256MiB", 512 * MiB)
    assert wl.rate_pages_per_s == 40 * MiB / 4096
    assert wl.argv == ("load", "256", "128", "10240.0", "uniform", "7", "1.1")


def test_zipf_and_redis_specs():
    z = parse_workload("zipf:rate=5000,s=1.3", 512 * MiB)
    assert z.argv[-1] == "1.3" and z.params["s"] == 1.3
    r = parse_workload("redis:keys=50000,value=2KiB,clients=8,pipeline=4,tests=set+lpush", 512 * MiB)
    assert r.argv == ("redis", "50000", "2048", "8", "4", "set,lpush")
    assert r.rate_pages_per_s is None
    assert parse_workload("redis", 512 * MiB).params["keys"] == 100000


GiB = 1 << 30


def test_fill_and_hot_share_scale_with_a_big_guest():
    wl = parse_workload("hotcold:hot=10%,rate=5000,fill=0.25", 64 * GiB)
    # region = 25 % of 64 GiB, hot set = 10 % of 64 GiB rounded down to whole MiB
    assert wl.argv == ("load", str(16 * 1024), str(int(64 * 1024 * 0.1)), "5000.0", "hotcold", "1", "0.9")
    assert wl.params["total_bytes"] == 16 * GiB
    assert parse_workload("uniform:rate=1000,fill=25%", 64 * GiB).argv[1] == str(16 * 1024)
    assert parse_workload("uniform:rate=1000,total=50%,span=1GiB", 8 * GiB).argv[1:3] == ("4096", "1024")


def test_idle_with_fill_runs_the_loader_without_writes():
    wl = parse_workload("idle:fill=0.5", 32 * GiB)
    assert wl.kind == "load" and wl.pattern == "idle" and wl.rate_pages_per_s == 0
    assert wl.argv == ("load", str(16 * 1024), "0", "0.0", "idle", "1", "0.0")
    assert parse_workload("idle", 32 * GiB).argv == ("idle",)


def test_hotcold_span_is_the_guest_region():
    # the model's hotcold span (hot + cold) is the region the guest program writes in
    wl = parse_workload("hotcold:hot=64MiB,rate=5000,span=256MiB", 512 * MiB)
    assert wl.argv[1:3] == ("256", "64")
    with pytest.raises(ConfigError, match="span= equal to total"):
        parse_workload("hotcold:hot=64MiB,rate=5000,span=256MiB,total=128MiB", 512 * MiB)


def test_footprint_is_what_the_guest_makes_resident():
    assert guest.workload_footprint_bytes(parse_workload("idle", 64 * GiB), 64 * GiB) == 0
    assert guest.workload_footprint_bytes(parse_workload("idle:fill=0.25", 64 * GiB), 64 * GiB) == 16 * GiB
    # no total/fill: miglab-load takes all free memory, so the whole guest is budgeted
    assert guest.workload_footprint_bytes(parse_workload("uniform:rate=10", 64 * GiB), 64 * GiB) == 64 * GiB
    r = guest.workload_footprint_bytes(parse_workload("redis:keys=100000,value=1KiB", 512 * MiB), 512 * MiB)
    assert 100000 * 1024 < r < 512 * MiB


@pytest.mark.parametrize("spec, words", [
    ("bogus:rate=5", "unknown pattern"),
    ("hotcold:rate=5000", "hot=SIZE"),
    ("uniform:span=64MiB", "rate=R is required"),
    ("uniform:rate=-5", "not a rate"),
    ("uniform:rate=5000,colour=blue", "unknown key 'colour'"),
    ("uniform:rate=5000,span=4GiB", "exceeds the guest memory"),
    ("uniform:rate=5000,span=1000KiB", "whole number of MiB"),
    ("hotcold:hot=64MiB,rate=5000,hot_share=1.5", "outside"),
    ("redis:keys=10000000,value=1KiB", "does not fit"),
    ("redis:tests=set;reboot", "tests="),
    ("uniform:rate=5000,rate=6000", "given twice"),
    ("uniform:rate", "not key=value"),
    ("uniform:rate=5000,fill=1.5", "outside [0, 1]"),
    ("uniform:rate=5000,fill=0.5,total=64MiB", "not both"),
    ("uniform:rate=5000,hot=10%", "unknown key 'hot'"),
    ("hotcold:hot=120%,rate=5000", "outside (0%, 100%]"),
    ("uniform:rate=0", "rate must be positive"),
    ("idle:seed=3", "unknown key 'seed'"),
])
def test_bad_specs_are_one_line_config_errors(spec, words):
    with pytest.raises(ConfigError) as e:
        parse_workload(spec, 512 * MiB)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and spec in msg


# -- kernel extraction -----------------------------------------------------------------

FAKE_ELF = b"\x7fELF" + bytes(range(256)) * 64


@pytest.mark.parametrize("compress, name", [(gzip.compress, "gzip"), (lzma.compress, "xz")])
def test_extract_vmlinux_finds_the_compressed_elf(compress, name):
    # a decoy magic that does not decompress, then the real payload, then trailing junk
    decoy = b"\x1f\x8b\x08garbage" if name == "gzip" else b"\xfd7zXZ\x00garbage"
    image = b"MZ" + b"\0" * 500 + decoy + b"\x90" * 100 + compress(FAKE_ELF) + b"\xff" * 300
    out, kind = extract_vmlinux(image)
    assert out == FAKE_ELF and kind == name


def test_extract_vmlinux_rejects_an_image_without_a_kernel():
    with pytest.raises(guest.GuestError, match="no compressed ELF"):
        extract_vmlinux(b"MZ" + gzip.compress(b"not an elf at all"))


# -- initramfs archive -------------------------------------------------------------------

def test_newc_archive_lists_with_cpio(tmp_path):
    out = tmp_path / "i.cpio"
    write_newc([CpioEntry("dev", "dir"), CpioEntry("dev/console", "chr", mode=0o600, rdev=(5, 1)),
                CpioEntry("bin", "dir"), CpioEntry("bin/x", "file", b"hello\n" * 3, 0o755),
                CpioEntry("bin/y", "link", b"/bin/x", 0o777)], out)
    listing = subprocess.run(["cpio", "-itv"], stdin=open(out, "rb"), capture_output=True, text=True, check=True)
    lines = listing.stdout.splitlines()
    assert [ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in lines] == \
        ["dev", "dev/console", "bin", "bin/x", "bin/y"]
    assert lines[1].startswith("crw-------") and "5," in lines[1]
    assert lines[3].startswith("-rwxr-xr-x") and " 18 " in lines[3]
    assert lines[4].startswith("lrwxrwxrwx") and lines[4].endswith("-> /bin/x")
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "bin/x"], stdin=open(out, "rb"), cwd=extracted, check=True)
    assert (extracted / "bin/x").read_bytes() == b"hello\n" * 3


# -- the workload program (host build, no VM) -----------------------------------------------

@pytest.fixture(scope="module")
def load_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("load") / "miglab-load"
    guest.compile_workload(out)
    return out


LINE = re.compile(r"^miglab-load t=([0-9.]+) pages=(\d+) rate=([0-9.]+) total=(\d+) skipped=(\d+)$")


@pytest.mark.parametrize("pattern", ["uniform", "random", "hotcold", "zipf", "seq"])
def test_miglab_load_prints_paced_progress(load_bin, pattern):
    p = subprocess.Popen([str(load_bin), "16", "4", "3000", pattern, "1"], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if len([ln for ln in lines if LINE.match(ln)]) >= 2:
                break
    finally:
        p.kill()
        p.wait()
    assert lines[0].startswith(f"miglab-load start total_mib=16 span_mib=4 rate=3000.000 pattern={pattern}")
    assert lines[1].startswith("miglab-load ready")
    progress = [LINE.match(ln) for ln in lines[2:]]
    assert all(progress), lines
    t, total = float(progress[-1].group(1)), int(progress[-1].group(4))
    # cumulative writes follow rate x time (pacing), not a burst; generous bound for a loaded CI host
    assert total == pytest.approx(3000 * t, rel=0.05)
    assert sum(int(m.group(2)) for m in progress) == total


def _rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_miglab_load_idle_fills_its_region_with_non_zero_pages(load_bin):
    p = subprocess.Popen([str(load_bin), "64", "0", "0", "idle", "1"], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if LINE.match(lines[-1]):
                break
        rss = _rss_bytes(p.pid)
    finally:
        p.kill()
        p.wait()
    assert lines[0].startswith("miglab-load start total_mib=64 span_mib=64 rate=0.000 pattern=idle")
    assert LINE.match(lines[-1]).group(2) == "0"  # reports, never writes
    assert rss >= 64 * MiB  # every page of the region was touched (made resident with a non-zero word)


@pytest.mark.parametrize("argv, why", [
    (["16", "4", "3000", "spiral", "1"], "unknown PATTERN"),
    (["16", "4", "-3", "seq", "1"], "RATE must be a positive"),
    (["16", "4", "3000"], "wrong number of arguments"),
    (["16", "4", "3000", "hotcold", "1", "1.5"], "hot_share"),
    (["16", "4", "0", "uniform", "1"], "0 only for idle"),
])
def test_miglab_load_rejects_bad_arguments(load_bin, argv, why):
    p = subprocess.run([str(load_bin), *argv], capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert why in p.stderr


# -- the cached build ------------------------------------------------------------------------

@pytest.mark.vm
def test_build_guest_is_cached_and_complete(guest_image):
    built = [guest_image.kernel, guest_image.initrd, guest_image.kernel.parent / "manifest.json"]
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in built]
    again = guest.build_guest()
    assert again.key == guest_image.key and again.kernel == guest_image.kernel
    # no rebuild: the same files, untouched (a build writes new ones and renames them in)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in built] == stamps
    assert guest_image.kernel.read_bytes()[:4] == b"\x7fELF"
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(guest_image.initrd, "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    for member in ("init", "bin/busybox", "bin/sh", "bin/miglab-load", "dev/console",
                   "usr/bin/redis-server", "usr/bin/redis-benchmark", "usr/bin/redis-cli"):
        assert member in listing, member
    assert any(m.endswith("libjemalloc.so.2") for m in listing)
    assert any(m.endswith("ld-linux-x86-64.so.2") for m in listing)


# -- one grammar: the model's side of the same specs --------------------------------------------

def test_model_accepts_and_ignores_harness_only_keys():
    from sim.workload import parse_spec

    plain = parse_spec("hotcold:hot=64MiB,rate=5000", 512 * MiB)
    with_guest = parse_spec("hotcold:hot=64MiB,rate=5000,total=256MiB,seed=3", 512 * MiB)
    assert with_guest.to_dict() | {"text": ""} == plain.to_dict() | {"text": ""}
    assert with_guest.guest_keys == (("seed", "3"), ("total", "256MiB"))
    assert parse_spec("hotcold:hot=10%,rate=5000", 10 * GiB).hot_pages == GiB // 4096


@pytest.mark.parametrize("spec, words", [
    ("redis:keys=10", "runs only in a real guest"),
    ("uniform:rate=5,fill=2", "outside [0, 1]"),
    ("uniform:rate=5,colour=blue", "unknown key 'colour'"),
    ("uniform:rate=5,span=4GiB", "exceeds the guest memory"),
])
def test_model_refuses_what_the_grammar_refuses(spec, words):
    from sim.workload import parse_spec

    with pytest.raises(ConfigError) as e:
        parse_spec(spec, 512 * MiB, where="workload.spec")
    assert words in str(e.value) and spec in str(e.value) and str(e.value).startswith("workload.spec ")
