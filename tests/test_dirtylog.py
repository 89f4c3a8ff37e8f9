"""The dirty-log collector: the stream sink on a synthetic QEMU stream, the pass/window cutting, and a real guest."""

from __future__ import annotations

import socket
import struct
import subprocess

import numpy as np
import pytest

from harness import dirtylog
from harness.dirtylog import DirtyLogError, SyncLog, dirty_windows, pass_ends, window_groups

MiB = 1 << 20
PAGE = 4096


# -- a synthetic QEMU migration stream -------------------------------------------------------

def _name(s: str) -> bytes:
    return bytes([len(s)]) + s.encode()


def _stream(passes: list[list[tuple[str, int, bool]]], blocks: list[tuple[str, int]]) -> bytes:
    """Header, configuration, commands, ram setup, one PART per pass (pages as (block, page, zero)), EOF."""
    out = struct.pack(">II", 0x5145564D, 3)
    out += b"\x07" + struct.pack(">I", 11) + b"pc-q35-10.0"
    out += b"\x05" + _name("configuration/capabilities") + struct.pack(">II", 1, 1) + _name("x-ignore-shared")
    out += b"\x08" + struct.pack(">HH", 1, 0) + b"\x08" + struct.pack(">HHI", 2, 4, 1)  # open return path, ping
    total = sum(n for _, n in blocks)
    setup = struct.pack(">Q", total | 0x04) + b"".join(_name(b) + struct.pack(">Q", n) for b, n in blocks)
    out += b"\x01" + struct.pack(">I", 1) + _name("ram") + struct.pack(">II", 0, 4) + setup
    out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 1)
    for pages in passes:
        body, last = b"", None
        for block, page, zero in pages:
            flags = 0x02 if zero else 0x08
            if block == last:
                flags |= 0x20
            body += struct.pack(">Q", page * PAGE | flags) + (b"" if block == last else _name(block))
            body += b"\x00" if zero else bytes([page % 251 + 1]) * PAGE
            last = block
        out += b"\x02" + struct.pack(">I", 1) + body + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 1)
    return out + b"\x00"


def _run_sink(tmp_path, data: bytes) -> tuple[np.ndarray, dict, str]:
    sink = dirtylog.build_sink(tmp_path / "cache")
    path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    p = subprocess.Popen([str(sink), str(srv.fileno()), str(tmp_path / "pages.bin"), str(tmp_path / "blocks.txt")],
                         pass_fds=(srv.fileno(),), stderr=subprocess.PIPE, text=True)
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(path))
    c.sendall(data)
    c.close()
    _, err = p.communicate(timeout=30)
    srv.close()
    assert p.returncode == 0, err
    return np.fromfile(tmp_path / "pages.bin", "<u8"), dirtylog.read_blocks(tmp_path / "blocks.txt"), err


def test_sink_lists_every_page_record_with_block_and_zero_flag(tmp_path):
    blocks = [("ram0", 8 * PAGE), ("pc.bios", 2 * PAGE)]
    first = [("ram0", i, i % 2 == 0) for i in range(8)] + [("pc.bios", 0, False), ("pc.bios", 1, True)]
    second = [("ram0", 5, False), ("ram0", 7, False), ("pc.bios", 1, False), ("ram0", 1, True)]
    recs, bl, err = _run_sink(tmp_path, _stream([first, second], blocks))
    assert bl == {"ram0": (0, 8 * PAGE), "pc.bios": (1, 2 * PAGE)}
    assert len(recs) == 14 and "end of migration" in err
    page = recs & np.uint64(dirtylog.PAGE_BITS)
    block = recs >> np.uint64(48)
    zero = (recs & np.uint64(dirtylog.ZERO_BIT)) != 0
    assert page[10:].tolist() == [5, 7, 1, 1] and block[10:].tolist() == [0, 0, 1, 0]
    assert zero[:8].tolist() == [True, False] * 4 and zero[13]


def test_sink_stops_cleanly_at_device_state(tmp_path):
    data = _stream([[("ram0", 0, False)]], [("ram0", PAGE)])[:-1]
    data += b"\x04" + struct.pack(">I", 2) + _name("timer") + struct.pack(">II", 0, 2) + b"\x00" * 16
    recs, _, err = _run_sink(tmp_path, data)
    assert len(recs) == 1 and "switchover" in err


# -- cutting passes into windows ----------------------------------------------------------------

def _log(t_active: float, syncs: list[tuple[float, int]]) -> list[str]:
    lines = [f"7@{t_active - 0.01:.6f}:migrate_set_state new state setup",
             f"7@{t_active:.6f}:migrate_set_state new state active"]
    lines += [f"7@{t:.6f}:migrate_pending_exact exact pending size {n * PAGE} (pre = {n * PAGE} post=0)"
              for t, n in syncs]
    return lines


def test_sync_log_parses_qemu_trace_lines():
    s = SyncLog.parse(["junk", *_log(100.0, [(100.5, 3), (100.7, 0)])])
    assert s.t_active_s == 100.0 and s.sync_t_s.tolist() == [100.5, 100.7] and s.sync_pages.tolist() == [3, 0]


def test_pass_ends_drop_the_incomplete_pass():
    assert pass_ends(10, np.array([3, 0, 5]), 18).tolist() == [10, 13, 13, 18]
    assert pass_ends(10, np.array([3, 0, 5]), 17).tolist() == [10, 13, 13]


def test_window_groups_merge_short_passes_and_drop_a_short_tail():
    bounds = np.array([0.0, 0.1, 0.3, 0.55, 0.6, 1.2, 1.3])
    assert window_groups(bounds, 0.5) == [(0, 2), (3, 4)]
    assert window_groups(bounds, 0.01) == [(j, j) for j in range(6)]


def _records(pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array([b << 48 | p for b, p in pairs], dtype=np.uint64)


def test_dirty_windows_are_the_passes_after_each_sync():
    n_pages, first = 6, [(0, p) for p in range(6)] + [(1, 0)]
    p1, p2, p3 = [(0, 4), (1, 0), (0, 2)], [(0, 2)], [(0, 1), (0, 5)]
    recs = _records(first + p1 + p2 + p3 + [(0, 3)])  # the last record belongs to a pass cut short
    sync = SyncLog.parse(_log(10.0, [(10.2, 3), (10.5, 1), (10.9, 2), (11.0, 4)]))
    win, info = dirty_windows(recs, 0, n_pages, 7, sync, 0.3)
    # pass 1 (pages written before sync 1) is the first-pass window, left out; then pass 2, then pass 3
    assert win.pages[0].tolist() == [2] and (win.t_start_s[0], win.t_end_s[0]) == pytest.approx((0.2, 0.5))
    assert win.pages[1].tolist() == [1, 5] and (win.t_start_s[1], win.t_end_s[1]) == pytest.approx((0.5, 0.9))
    assert len(win.pages) == 2 and info["passes"] == 3 and info["first_pass_dirty_pages"] == 2
    kept, _ = dirty_windows(recs, 0, n_pages, 7, sync, 0.3, keep_first_pass=True)
    assert kept.pages[0].tolist() == [2, 4] and kept.passes[0] == 2  # passes 1 and 2 merged to reach 0.3 s


def test_a_page_twice_in_one_pass_means_the_log_does_not_cut_the_stream():
    recs = _records([(0, 0), (0, 1), (0, 1), (0, 1)])
    sync = SyncLog.parse(_log(1.0, [(1.5, 2)]))  # says pass 1 has 2 pages, but they are the same page
    with pytest.raises(DirtyLogError, match="sent twice"):
        dirty_windows(recs, 0, 2, 2, sync, 0.1)


# -- a real guest -------------------------------------------------------------------------------

@pytest.mark.vm
def test_dirty_log_trace_of_a_real_guest(tmp_path, guest_image):
    from sim import trace as trace_fmt

    out = tmp_path / "t.npz"
    tr = dirtylog.collect_dirtylog("hotcold:hot=16MiB,rate=2000,total=64MiB", memory_bytes=256 * MiB,
                                   interval_s=0.5, seconds=3, out=out, warmup_s=1)
    assert tr.n_intervals >= 4 and tr.meta["method"] == "dirty-log" and trace_fmt.load(out).n_pages == 65536
    # the hot set alone takes about 900 writes per window; every window sees at least that many pages
    assert tr.counts.min() > 300
    assert np.all(tr.t_end_s - tr.t_start_s >= 0.5 - 1e-6)


def test_trace_collect_method_flag_refusals(tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "t.npz"
    assert main(["trace", "collect", "--workload", "uniform:rate=100", "--keep-first-pass", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--keep-first-pass: only with --method dirty-log" in err and err.count("\n") == 1, err
    assert main(["trace", "collect", "--workload", "uniform:rate=100", "--method", "magic", "-o", str(out)]) == 2
    assert "--method" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.vm
def test_trace_collect_cli_dirty_log_method(tmp_path, guest_image, capsys):
    from harness.cli import main
    from sim import trace as trace_fmt

    out = tmp_path / "t.npz"
    assert main(["trace", "collect", "--method", "dirty-log", "--keep-first-pass", "--workload",
                 "hotcold:hot=16MiB,rate=2000,total=64MiB", "--memory", "256MiB", "--interval", "0.5s",
                 "--seconds", "3s", "-o", str(out), "--no-progress"]) == 0
    assert "(dirty-log)" in capsys.readouterr().out
    tr = trace_fmt.load(out)
    assert tr.meta["method"] == "dirty-log" and tr.meta["first_pass_kept"] is True and tr.n_pages == 65536
    # the kept first window opens when the migration went active and spans QEMU's whole first pass
    # (without the flag the trace starts at the end of that pass)
    assert tr.n_intervals >= 4 and tr.t_start_s[0] == 0.0
    assert tr.t_end_s[0] >= tr.meta["first_pass_s"] - 1e-9
