"""bhyve collector against a fake /dev/vmm/NAME: a sparse regular file that the tests mutate.

The fake keeps the real layout where it matters: highmem really sits at file
offset 4 GiB (the file is sparse), and the segment list comes from an injected
VM_MMAP_GETNEXT that answers with the kernel's struct vm_memmap.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.bhyve import collect as bc
from harness.bhyve import vmmdev as vd
from sim import trace as tr

GiB = 1 << 30
PAGE = 4096
LOW_BYTES = 1 << 20         # 256 pages of lowmem at gpa 0
HIGH_BYTES = 1 << 20        # 256 pages of highmem at gpa 4 GiB
N_PAGES = (LOW_BYTES + HIGH_BYTES) // PAGE
REPO = Path(__file__).resolve().parents[1]


class FakeKernel:
    """Answers VM_MMAP_GETNEXT like vm_mmap_getnext() and, optionally, VM_GET_DIRTY_PAGE_LIST."""

    def __init__(self, maps=None, dirty_script=None, dirty_supported=True):
        # (gpa, segid, segoff, len, prot, flags); segid 1 is a bootrom devmem mapping that must be skipped.
        self.maps = maps if maps is not None else [
            (0, 0, 0, LOW_BYTES, 7, vd.VM_MEMMAP_F_WIRED),
            (0xFFE00000, 1, 0, 2 << 20, 5, 0),
            (4 * GiB, 0, 4 * GiB, HIGH_BYTES, 7, vd.VM_MEMMAP_F_WIRED),
        ]
        self.dirty_script = list(dirty_script or [])
        self.dirty_supported = dirty_supported
        self.dirty_requests = []
        self.calls = []

    def __call__(self, fd, request, arg):
        self.calls.append(request)
        if request == vd.VM_MMAP_GETNEXT:
            cands = [m for m in self.maps if m[0] >= arg.gpa]
            if not cands:
                raise OSError(errno.ENOENT, "No such file or directory")
            gpa, segid, segoff, length, prot, flags = min(cands)
            arg.gpa, arg.segid, arg.segoff, arg.len, arg.prot, arg.flags = gpa, segid, segoff, length, prot, flags
            return 0
        if request == vd.VM_GET_DIRTY_PAGE_LIST:
            if not self.dirty_supported:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            self.dirty_requests.append((arg.num_pages, arg.lowmem.start, arg.lowmem.end,
                                        arg.highmem.start, arg.highmem.end))
            dirty = self.dirty_script.pop(0) if self.dirty_script else []
            for i in dirty:  # the kernel writes page_list[pindex - offset] = 1
                arg.page_list[i] = 1
            return 0
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


def no_getnext(fd, request, arg):
    raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


@pytest.fixture
def vmfile(tmp_path):
    """A sparse 'guest memory device': lowmem at offset 0, highmem at offset 4 GiB."""
    p = tmp_path / "vmm-testvm"
    with open(p, "wb") as f:
        f.truncate(4 * GiB + HIGH_BYTES)
    rng = np.random.default_rng(1)
    with open(p, "r+b") as f:
        f.write(rng.integers(0, 256, LOW_BYTES, dtype=np.uint8).tobytes())
        f.seek(4 * GiB)
        f.write(rng.integers(0, 256, HIGH_BYTES, dtype=np.uint8).tobytes())
    return p


def poke(path: Path, gpa: int, value: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(gpa)
        f.write(value)


def bump(path: Path, gpa: int) -> None:
    """Change one byte so the page's content really changes."""
    with open(path, "r+b") as f:
        f.seek(gpa)
        b = f.read(1)[0]
        f.seek(gpa)
        f.write(bytes([(b + 1) % 256]))


# --------------------------------------------------------------------------- ABI
def test_struct_layouts_match_the_kernel_headers():
    # struct vm_memmap: vm_paddr_t gpa; int segid; vm_ooffset_t segoff; size_t len; int prot; int flags;
    assert ctypes.sizeof(vd.VmMemmap) == 40
    assert [getattr(vd.VmMemmap, f).offset for f in ("gpa", "segid", "segoff", "len", "prot", "flags")] == \
        [0, 8, 16, 24, 32, 36]
    # struct vm_get_dirty_page_list: uint8_t *page_list; size_t num_pages; 2 x {vm_offset_t start, end}
    assert ctypes.sizeof(vd.VmGetDirtyPageList) == 48
    assert [getattr(vd.VmGetDirtyPageList, f).offset for f in ("page_list", "num_pages", "lowmem", "highmem")] == \
        [0, 8, 16, 32]
    # _IOWR('v', 17, struct vm_memmap) and _IOWR('v', 117, struct vm_get_dirty_page_list), by hand:
    assert vd.VM_MMAP_GETNEXT == 0xC0000000 | (40 << 16) | (0x76 << 8) | 17 == 0xC0287611
    assert vd.VM_GET_DIRTY_PAGE_LIST == 0xC0000000 | (48 << 16) | (0x76 << 8) | 117 == 0xC0307675


def test_layout_for_memsize_follows_vm_setup_memory():
    segs = vd.layout_for_memsize(6 * GiB)
    assert [(s.name, s.gpa, s.length_bytes, s.first_page) for s in segs] == [
        ("lowmem", 0, 3 * GiB, 0), ("highmem", 4 * GiB, 3 * GiB, 3 * GiB // PAGE)]
    assert [(s.name, s.gpa, s.length_bytes) for s in vd.layout_for_memsize(2 * GiB)] == [("lowmem", 0, 2 * GiB)]
    assert len(vd.layout_for_memsize(3 * GiB)) == 1


def test_segments_come_from_vm_mmap_getnext_and_skip_devmem(vmfile):
    with vd.VmmDevice("testvm", vmfile, ioctl=FakeKernel()) as dev:
        segs = dev.segments()
    assert [(s.name, s.gpa, s.length_bytes, s.first_page, s.wired) for s in segs] == [
        ("lowmem", 0, LOW_BYTES, 0, True), ("highmem", 4 * GiB, HIGH_BYTES, LOW_BYTES // PAGE, True)]


def test_segments_fall_back_to_the_given_memory_size(vmfile):
    with vd.VmmDevice("testvm", vmfile, ioctl=no_getnext) as dev:
        assert [s.length_bytes for s in dev.segments(2 << 20)] == [2 << 20]
        with pytest.raises(vd.BhyveError, match="--guest-memory"):
            dev.segments()


def test_guest_memory_cross_check(vmfile):
    with vd.VmmDevice("testvm", vmfile, ioctl=FakeKernel()) as dev, pytest.raises(vd.ConfigError, match="match"):
        dev.segments(64 << 20)


# --------------------------------------------------------------------------- content diff
@pytest.mark.parametrize("read", ["mmap", "pread"])
@pytest.mark.parametrize("compare", ["copy", "hash"])
def test_content_diff_reports_exactly_the_changed_pages(vmfile, read, compare):
    with vd.VmmDevice("testvm", vmfile, ioctl=FakeKernel()) as dev:
        segs = dev.segments()
        t = bc.ContentDiffTracker(dev, segs, read=read, compare=compare, chunk_bytes=64 * PAGE)
        t.prime()
        assert t.changed_pages().tolist() == []
        bump(vmfile, 3 * PAGE + 17)              # lowmem page 3
        bump(vmfile, 200 * PAGE + PAGE - 1)      # lowmem page 200, last byte
        bump(vmfile, 4 * GiB)                    # highmem page 0 -> dense page 256
        bump(vmfile, 4 * GiB + 255 * PAGE + 8)   # highmem page 255 -> dense page 511
        assert t.changed_pages().tolist() == [3, 200, 256, 511]
        assert t.changed_pages().tolist() == []  # nothing since the last scan
        # Blind spot: rewriting the same bytes is invisible to a content diff.
        with open(vmfile, "r+b") as f:
            f.seek(100 * PAGE)
            same = f.read(64)
        poke(vmfile, 100 * PAGE, same)
        bump(vmfile, 4 * GiB + 7 * PAGE)
        assert t.changed_pages().tolist() == [263]


def test_content_diff_never_touches_the_hole_between_lowmem_and_highmem(vmfile):
    with vd.VmmDevice("testvm", vmfile, ioctl=FakeKernel()) as dev:
        t = bc.ContentDiffTracker(dev, dev.segments(), read="pread", compare="copy")
        t.prime()
        bump(vmfile, 2 * GiB)  # inside the hole: not guest RAM
        assert t.changed_pages().tolist() == []


# --------------------------------------------------------------------------- full collection
class ScriptedClock:
    """A clock and a sleep; each sleep applies the next mutation to the fake device."""

    def __init__(self, actions):
        self.now = 100.0
        self.actions = list(actions)

    def clock(self):
        return self.now

    def sleep(self, dt):
        self.now += dt
        action = self.actions.pop(0) if self.actions else None
        if action is KeyboardInterrupt:
            raise KeyboardInterrupt
        if action:
            action()
        self.now += 0.01  # the scan itself takes time


def test_run_collection_writes_a_valid_trace_with_metadata(vmfile, tmp_path):
    out = tmp_path / "t.npz"
    sc = ScriptedClock([
        lambda: (bump(vmfile, 5 * PAGE), bump(vmfile, 4 * GiB + 2 * PAGE)),
        None,
        lambda: bump(vmfile, 255 * PAGE),
    ])
    cfg = bc.CollectConfig(vm="testvm", output=str(out), interval_s=0.5, seconds=1.5, device=str(vmfile),
                           workload="hotcold:hot=1MiB,rate=1000 via miglab-load", progress=False)
    t, sha = bc.run_collection(cfg, ioctl=FakeKernel(), clock=sc.clock, sleep=sc.sleep)
    loaded = tr.load(out)
    assert loaded.sha256 == sha
    assert loaded.n_pages == N_PAGES and loaded.page_size == PAGE
    assert [loaded.pages(i).tolist() for i in range(loaded.n_intervals)] == [[5, 258], [], [255]]
    assert np.all(loaded.t_end_s > loaded.t_start_s)
    assert loaded.t_start_s[0] == 0.0 and np.allclose(loaded.t_start_s[1:], loaded.t_end_s[:-1])
    m = loaded.meta
    assert m["hypervisor"] == "bhyve" and m["method"] == "content-diff"
    assert "unchanged" in m["method_blind_spot"]
    assert m["guest_memory_bytes"] == LOW_BYTES + HIGH_BYTES
    assert m["workload"].startswith("hotcold")
    assert m["host"]["hostname"] and m["collected_at_utc"] and m["collected_seconds"] > 1.5
    assert m["mean_dirty_pages_per_interval"] == pytest.approx(1.0) and m["requested_seconds"] == 1.5
    assert [(s["name"], s["gpa"], s["first_page"]) for s in m["segments"]] == [
        ("lowmem", 0, 0), ("highmem", 4 * GiB, 256)]
    assert m["method_detail"]["read"] == "mmap" and m["complete"] is True
    assert "miglab_version" in m


def test_interrupted_collection_keeps_complete_intervals(vmfile, tmp_path):
    out = tmp_path / "t.npz"
    sc = ScriptedClock([lambda: bump(vmfile, 9 * PAGE), lambda: bump(vmfile, 10 * PAGE), KeyboardInterrupt])
    cfg = bc.CollectConfig(vm="testvm", output=str(out), interval_s=0.5, seconds=10, device=str(vmfile),
                           progress=False)
    bc.run_collection(cfg, ioctl=FakeKernel(), clock=sc.clock, sleep=sc.sleep)
    loaded = tr.load(out)
    assert [loaded.pages(i).tolist() for i in range(loaded.n_intervals)] == [[9], [10]]
    assert loaded.meta["complete"] is False and loaded.meta["stopped_reason"] == "interrupted"


def test_interrupt_before_any_interval_writes_nothing(vmfile, tmp_path):
    out = tmp_path / "t.npz"
    sc = ScriptedClock([KeyboardInterrupt])
    cfg = bc.CollectConfig(vm="testvm", output=str(out), interval_s=0.5, seconds=10, device=str(vmfile),
                           progress=False)
    with pytest.raises(vd.BhyveError, match="no complete interval"):
        bc.run_collection(cfg, ioctl=FakeKernel(), clock=sc.clock, sleep=sc.sleep)
    assert not out.exists() and not list(tmp_path.glob(".t.npz*"))


# --------------------------------------------------------------------------- dirty page list (UPB kernel)
def test_dirty_page_list_method_uses_the_patch_request(vmfile, tmp_path):
    kern = FakeKernel(dirty_script=[list(range(N_PAGES)), [0, 255, 256, 511], [], [300]])
    out = tmp_path / "d.npz"
    sc = ScriptedClock([None, None, None])
    cfg = bc.CollectConfig(vm="testvm", output=str(out), interval_s=0.25, seconds=0.75, method="dirty-page-list",
                           device=str(vmfile), progress=False)
    bc.run_collection(cfg, ioctl=kern, clock=sc.clock, sleep=sc.sleep)
    loaded = tr.load(out)
    # The priming call (everything dirty since boot) is discarded.
    assert [loaded.pages(i).tolist() for i in range(3)] == [[0, 255, 256, 511], [], [300]]
    assert kern.dirty_requests[0] == (N_PAGES, 0, LOW_BYTES, 4 * GiB, 4 * GiB + HIGH_BYTES)
    assert len(kern.dirty_requests) == 4
    m = loaded.meta
    assert m["method"] == "dirty-page-list"
    assert m["method_detail"]["ioctl"] == "VM_GET_DIRTY_PAGE_LIST" and "D30954" in m["method_detail"]["review"]
    assert "VPO_VMM_DIRTY" in m["method_blind_spot"]


def test_dirty_page_list_buffer_is_zeroed_before_each_call(vmfile):
    kern = FakeKernel(dirty_script=[[1, 2], [3]])
    with vd.VmmDevice("testvm", vmfile, ioctl=kern) as dev:
        t = bc.DirtyListTracker(dev, dev.segments())
        assert t.changed_pages().tolist() == [1, 2]
        assert t.changed_pages().tolist() == [3]  # 1 and 2 were not carried over


def test_dirty_page_list_on_a_stock_kernel_is_a_clear_error(vmfile):
    with vd.VmmDevice("testvm", vmfile, ioctl=FakeKernel(dirty_supported=False)) as dev:
        t = bc.DirtyListTracker(dev, dev.segments())
        with pytest.raises(vd.DirtyPageListUnsupported) as ei:
            t.prime()
    msg = str(ei.value)
    assert "\n" not in msg and "content-diff" in msg and "D30954" in msg


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["", "a/b", "vm;reboot", "../x", "-rf", "a b", "x" * 300])
def test_bad_vm_names_get_one_line(name):
    with pytest.raises(vd.VmNameError) as ei:
        vd.check_vm_name(name)
    assert "\n" not in str(ei.value) and "--vm" in str(ei.value)


def test_missing_device_gets_one_line(tmp_path):
    with pytest.raises(vd.VmmDeviceMissing) as ei:
        vd.VmmDevice("ghost", tmp_path / "nope")
    assert "no such device" in str(ei.value) and "\n" not in str(ei.value)


def test_permission_denied_gets_one_line(vmfile, monkeypatch):
    def denied(path, flags, *a):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(vd.os, "open", denied)
    with pytest.raises(vd.VmmPermissionError) as ei:
        vd.VmmDevice("testvm", vmfile)
    assert "root" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file modes")
def test_permission_denied_for_real(vmfile):
    os.chmod(vmfile, 0)
    with pytest.raises(vd.VmmPermissionError):
        vd.VmmDevice("testvm", vmfile)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness.bhyve", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


@pytest.mark.parametrize("args,needle", [
    (["--vm", "bad name"], "--vm"),
    (["--vm", "ghost", "--vmm-dev", "/nonexistent/vmm/ghost"], "no such device"),
    (["--vm", "testvm", "--method", "dirty-page-list", "--guest-memory", "2MiB"], "VM_GET_DIRTY_PAGE_LIST"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, vmfile, args, needle):
    if "testvm" in args:
        args = [*args, "--vmm-dev", str(vmfile)]
    cp = _cli("collect", *args, "--seconds", "1s", "--interval", "0.5s", "-o", str(tmp_path / "x.npz"),
              cwd=tmp_path)
    assert cp.returncode == 2
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miglab: ") and needle in lines[0]
    assert "Traceback" not in cp.stderr
    assert not (tmp_path / "x.npz").exists()


def test_cli_collects_from_a_regular_file(tmp_path):
    dev = tmp_path / "mem"
    dev.write_bytes(bytes(2 << 20))
    cp = _cli("collect", "--vm", "testvm", "--vmm-dev", str(dev), "--guest-memory", "2MiB", "--seconds", "0.2s",
              "--interval", "0.1s", "--no-progress", "-o", str(tmp_path / "x.npz"), cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    t = tr.load(tmp_path / "x.npz")
    assert t.n_intervals == 2 and t.n_pages == 512 and t.meta["vm"] == "testvm"


def test_collector_imports_no_heavy_modules():
    code = ("import sys, json, harness.bhyve.collect, harness.bhyve.vmmdev, harness.bhyve; "
            "print(json.dumps(sorted(m for m in ('pandas', 'simpy', 'matplotlib', 'pyarrow', 'scipy', 'dask') "
            "if m in sys.modules)))")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == []
