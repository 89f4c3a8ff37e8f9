"""Run one bhyve live (or warm) migration between two FreeBSD hosts and measure it from outside.

The UPB patch reports no statistics, so everything is observed:

* **total time**: from starting ``bhyvectl --migrate[-live]`` on the source until
  the source VM is gone (the patch's sender ends with ``vm_destroy`` and
  ``exit(0)`` once the destination acknowledged). bhyvectl itself only posts
  the request to the running bhyve over its control socket, so its own wall
  time is recorded too (``command_s``) but is not the migration time.
* **bytes**: the source interface's output byte counter (``netstat -b -n -I IF``)
  before and after, optionally the destination's input counter. It includes
  every other packet on that interface (ssh, probes): use a dedicated link.
* **downtime**: the largest gap in a probe the guest answers, either ICMP echo
  (``ping -i 0.01``; gap = unanswered sequence numbers x interval, which does
  not depend on when the output lines arrive) or any command whose output lines
  the guest produces (e.g. a console via ``cu -l /dev/nmdm0B``; gap between
  arrival times).

Each host is reached through a command prefix (``ssh root@hostB``, ``doas`` or
nothing), always as an argv list; with an ``ssh`` prefix every remote word is
quoted for the remote shell. Nothing runs through a local shell.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from harness.record import OUTCOME_COMPLETED, HostInfo, MigrationStats, RunRecord, utc_now
from sim.errors import ConfigError, MiglabError
from sim.scenario import Scenario
from sim.units import parse_duration

from .vmmdev import DEFAULT_MIGRATION_PORT, MIGRATION_ROUNDS, BhyveError, check_vm_name

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
ProbeKind = Literal["none", "ping", "lines"]


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Probe:
    """How downtime is observed."""

    kind: ProbeKind = "none"
    target: str = ""                  # ping: the guest's IP address
    argv: tuple[str, ...] = ()        # lines: the command whose output lines the guest produces
    interval_s: float = 0.01          # ping: echo interval


def parse_probe(text: str) -> Probe:
    """``none``, ``ping:GUEST_IP[,interval=10ms]`` or ``lines:COMMAND ...``."""
    text = text.strip()
    if text in ("", "none"):
        return Probe()
    kind, _, rest = text.partition(":")
    if kind == "ping":
        target, *opts = [p.strip() for p in rest.split(",")]
        interval = 0.01
        for opt in opts:
            key, _, val = opt.partition("=")
            if key != "interval":
                raise ConfigError(f"--probe {text!r}: unknown option {key!r} (only interval=)")
            interval = parse_duration(val)
        try:
            ipaddress.ip_address(target)
        except ValueError:
            raise ConfigError(f"--probe {text!r}: {target!r} is not an IP address") from None
        if not 0 < interval <= 1:
            raise ConfigError(f"--probe {text!r}: interval must be in (0, 1] s")
        return Probe("ping", target=target, interval_s=interval)
    if kind == "lines":
        argv = tuple(shlex.split(rest))
        if not argv:
            raise ConfigError(f"--probe {text!r}: lines: needs a command")
        return Probe("lines", argv=argv)
    raise ConfigError(f"--probe {text!r}: use none, ping:GUEST_IP[,interval=10ms] or lines:COMMAND")


@dataclass(frozen=True)
class MigrateConfig:
    """One bhyve migration: who, where, how, and how it is watched."""

    vm: str
    src_ip: str                         # what the destination's -R gets (the patch only prints/resolves it)
    dst_ip: str                         # where the source connects (IPv4 only in the patch)
    port: int = DEFAULT_MIGRATION_PORT
    warm: bool = False
    src_prefix: tuple[str, ...] = ()
    dst_prefix: tuple[str, ...] = ()
    probe_prefix: tuple[str, ...] = ()
    bhyve: str = "bhyve"
    bhyvectl: str = "bhyvectl"
    bhyve_args: tuple[str, ...] = ()    # destination VM options: identical to the source's (same -c/-m/-S/-s)
    src_iface: str = ""
    dst_iface: str = ""
    vmm_dir: str = "/dev/vmm"
    timeout_s: float = 600.0
    dst_ready_timeout_s: float = 30.0
    poll_interval_s: float = 0.05
    probe: Probe = field(default_factory=Probe)
    keep_destination: bool = False

    def validate(self) -> None:
        check_vm_name(self.vm)
        for flag, ip in (("--src-ip", self.src_ip), ("--dst-ip", self.dst_ip)):
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"{ip!r} is not an IP address", flag=flag) from None
            if addr.version != 4:
                raise ConfigError(f"{ip} is IPv6; the bhyve migration patch supports IPv4 only", flag=flag)
        if not 0 < self.port < 65536:
            raise ConfigError(f"{self.port} is not a TCP port", flag="--port")
        for flag, v in (("--timeout", self.timeout_s), ("--dst-ready-timeout", self.dst_ready_timeout_s),
                        ("--poll-interval", self.poll_interval_s)):
            if not v > 0:
                raise ConfigError(f"{flag} must be positive, not {v}")
        if "-R" in self.bhyve_args:
            raise ConfigError("--bhyve-args must not contain -R: the runner adds -R SRC_IP,PORT itself")

    @property
    def migrate_flag(self) -> str:
        return f"--migrate={self.dst_ip},{self.port}" if self.warm else f"--migrate-live={self.dst_ip},{self.port}"


def remote(prefix: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``prefix + argv``; words are quoted for the remote shell when the prefix is ssh.

    ssh joins its arguments with spaces and hands them to the remote user's
    shell, so an unquoted word with a space or ``;`` would be re-split there.
    """
    prefix, argv = list(prefix), list(argv)
    if prefix and os.path.basename(prefix[0]) == "ssh":
        return prefix + [shlex.quote(a) for a in argv]
    return prefix + argv


def destination_argv(cfg: MigrateConfig) -> list[str]:
    return remote(cfg.dst_prefix, [cfg.bhyve, *cfg.bhyve_args, "-R", f"{cfg.src_ip},{cfg.port}", cfg.vm])


def source_argv(cfg: MigrateConfig) -> list[str]:
    # bhyvectl takes the VM only as --vm=NAME (getopt_long; a positional name is ignored and usage() exits 1).
    return remote(cfg.src_prefix, [cfg.bhyvectl, f"--vm={cfg.vm}", cfg.migrate_flag])


def destroy_argv(cfg: MigrateConfig) -> list[str]:
    return remote(cfg.dst_prefix, [cfg.bhyvectl, f"--vm={cfg.vm}", "--destroy"])


def exists_argv(cfg: MigrateConfig, prefix: Sequence[str]) -> list[str]:
    return remote(prefix, ["test", "-e", f"{cfg.vmm_dir}/{cfg.vm}"])


def listening_argv(cfg: MigrateConfig) -> list[str]:
    return remote(cfg.dst_prefix, ["sockstat", "-4", "-l", "-p", str(cfg.port)])


def netstat_argv(prefix: Sequence[str], iface: str) -> list[str]:
    return remote(prefix, ["netstat", "-b", "-n", "-I", iface])


def probe_argv(cfg: MigrateConfig) -> list[str]:
    if cfg.probe.kind == "ping":
        return remote(cfg.probe_prefix, ["ping", "-n", "-i", f"{cfg.probe.interval_s:g}", cfg.probe.target])
    if cfg.probe.kind == "lines":
        return remote(cfg.probe_prefix, list(cfg.probe.argv))
    return []


# --------------------------------------------------------------------------- parsing
_SEQ_RE = re.compile(r"icmp_seq=(\d+)")
_TRANSMITTED_RE = re.compile(r"(\d+) packets transmitted")


def parse_netstat_bytes(text: str) -> tuple[int, int]:
    """(Ibytes, Obytes) of the link-level line of ``netstat -b -n -I IF``.

    Columns are counted from the right, because the Address column is empty
    for some interfaces and would shift everything counted from the left.
    """
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or "Obytes" not in lines[0] or "Ibytes" not in lines[0]:
        raise BhyveError(f"netstat output has no Ibytes/Obytes header: {text.strip()[:80]!r}")
    head = lines[0]
    i_from_end, o_from_end = len(head) - head.index("Ibytes"), len(head) - head.index("Obytes")
    for toks in lines[1:]:
        if len(toks) >= 3 and toks[2].startswith("<Link"):
            try:
                return int(toks[-i_from_end]), int(toks[-o_from_end])
            except (ValueError, IndexError):
                break
    raise BhyveError(f"netstat output has no link-level counter line: {text.strip()[:120]!r}")


def ping_downtime(lines: Sequence[str], interval_s: float) -> dict[str, Any]:
    """Largest run of unanswered echo requests, from the icmp_seq numbers of the replies."""
    seqs = sorted({int(m.group(1)) for ln in lines if (m := _SEQ_RE.search(ln))})
    sent = next((int(m.group(1)) for ln in lines if (m := _TRANSMITTED_RE.search(ln))), None)
    if not seqs:
        return {"downtime_s": None, "replies": 0, "transmitted": sent, "recovered": False}
    gaps = [b - a - 1 for a, b in zip(seqs, seqs[1:], strict=False)]
    missing = max(gaps, default=0)
    trailing = (sent - 1 - seqs[-1]) if sent is not None else 0
    recovered = trailing <= 1  # the last echo may still have been in flight when ping stopped
    return {"downtime_s": round(max(missing, trailing if not recovered else 0) * interval_s, 6),
            "replies": len(seqs), "transmitted": sent, "recovered": recovered,
            "largest_gap_probes": missing, "resolution_s": interval_s}


def lines_downtime(arrivals: Sequence[float], t_from: float, t_to: float) -> dict[str, Any]:
    """Largest gap between output lines arriving in [t_from, t_to] (the migration window)."""
    ts = [t for t in arrivals if t_from <= t <= t_to]
    if len(ts) < 2:
        return {"downtime_s": None, "lines": len(ts), "recovered": False}
    gap = max(b - a for a, b in zip(ts, ts[1:], strict=False))
    return {"downtime_s": round(gap, 6), "lines": len(ts), "recovered": True}


# --------------------------------------------------------------------------- processes
class _Proc:
    """A child in its own session, with stdout/stderr spooled to files (no pipe deadlock)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None, *, read_lines: bool = False) -> None:
        self.name, self.argv = name, argv
        self.err: IO[bytes] = tempfile.TemporaryFile()
        self.out: IO[bytes] | None = None if read_lines else tempfile.TemporaryFile()
        self.t_start = time.monotonic()
        self.t_end: float | None = None
        self.lines: list[tuple[float, str]] = []
        try:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE if read_lines else self.out, stderr=self.err,
                                      start_new_session=True, env=env)
        except FileNotFoundError:
            raise BhyveError(f"command not found: {argv[0]}", where=name) from None
        except PermissionError:
            raise BhyveError(f"not executable: {argv[0]}", where=name) from None
        self._reader: threading.Thread | None = None
        if read_lines:
            self._reader = threading.Thread(target=self._read, name=f"probe-{name}", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in iter(self.p.stdout.readline, b""):
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    @property
    def pid(self) -> int:
        return self.p.pid

    def poll(self) -> int | None:
        rc = self.p.poll()
        if rc is not None and self.t_end is None:
            self.t_end = time.monotonic()
        return rc

    def stderr_tail(self, n: int = 3) -> str:
        self.err.seek(0)
        lines = [ln.strip() for ln in self.err.read().decode(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])

    def stdout_text(self) -> str:
        if self.out is None:
            return "\n".join(ln for _, ln in self.lines)
        self.out.seek(0)
        return self.out.read().decode(errors="replace")

    def send(self, sig: int) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, first: int = signal.SIGTERM) -> int:
        """Signal the process group, escalate to SIGKILL, reap. Returns the exit code."""
        if self.p.poll() is None:
            self.send(first)
            try:
                self.p.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.p.wait()
        self.poll()
        # Whatever is left in the group (a shell's children) goes too.
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._reader is not None:
            self._reader.join(timeout=KILL_GRACE_S)
        return self.p.returncode

    def close(self) -> None:
        for f in (self.err, self.out, self.p.stdout):
            if f is not None:
                f.close()


def _run(name: str, argv: list[str], env: dict[str, str] | None, timeout_s: float) -> subprocess.CompletedProcess:
    proc = _Proc(name, argv, env)
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.stop(signal.SIGKILL)
                raise BhyveError(f"`{shlex.join(argv)}` did not finish within {timeout_s:g} s", where=name)
            time.sleep(0.01)
        return subprocess.CompletedProcess(argv, proc.p.returncode, proc.stdout_text(), proc.stderr_tail(5))
    finally:
        proc.stop()
        proc.close()


# --------------------------------------------------------------------------- the run
class _Failed(MiglabError):
    """A run that went wrong: caught in :func:`run_migration` and recorded as the outcome ``failed: <reason>``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Run:
    cfg: MigrateConfig
    env: dict[str, str] | None
    t0: float = field(default_factory=time.monotonic)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    # the processes started so far, for _stop_processes
    dst: _Proc | None = None
    ctl: _Proc | None = None
    probe: _Proc | None = None

    def event(self, name: str, **kw: Any) -> None:
        self.timeline.append({"t_s": round(time.monotonic() - self.t0, 6), "event": name, **kw})
        log.info("%s %s", name, kw or "")

    def run(self, host: str, argv: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess:
        self.commands.append({"host": host, "argv": argv})
        return _run(host, argv, self.env, timeout_s or min(self.cfg.timeout_s, 60.0))

    def start(self, host: str, argv: list[str], *, read_lines: bool = False) -> _Proc:
        self.commands.append({"host": host, "argv": argv})
        return _Proc(host, argv, self.env, read_lines=read_lines)

    def vm_exists(self, prefix: Sequence[str], where: str) -> bool:
        cp = self.run(where, exists_argv(self.cfg, prefix))
        if cp.returncode in (0, 1):
            return cp.returncode == 0
        raise _Failed(f"cannot check {self.cfg.vmm_dir}/{self.cfg.vm} on the {where} "
                      f"(exit {cp.returncode}: {cp.stderr or 'no message'})")

    def counters(self, prefix: Sequence[str], iface: str, where: str) -> tuple[int, int] | None:
        if not iface:
            return None
        cp = self.run(where, netstat_argv(prefix, iface))
        if cp.returncode != 0:
            raise _Failed(f"netstat -I {iface} on the {where} failed (exit {cp.returncode}: {cp.stderr})")
        return parse_netstat_bytes(cp.stdout)


def _wait_listening(r: _Run, dst: _Proc) -> None:
    cfg = r.cfg
    deadline = time.monotonic() + cfg.dst_ready_timeout_s
    port_re = re.compile(rf"[:.]{cfg.port}\b")
    while True:
        rc = dst.poll()
        if rc is not None:
            raise _Failed(f"destination bhyve exited {rc} before listening: {dst.stderr_tail() or 'no message'}")
        cp = r.run("destination", listening_argv(cfg))
        if cp.returncode == 0 and any(port_re.search(ln) for ln in cp.stdout.splitlines()[1:]):
            return
        if time.monotonic() > deadline:
            raise _Failed(f"destination bhyve was not listening on port {cfg.port} "
                          f"after {cfg.dst_ready_timeout_s:g} s")
        time.sleep(cfg.poll_interval_s)


def _host_info(r: _Run, prefix: Sequence[str], where: str) -> HostInfo:
    """CPU, kernel and load of a FreeBSD host, through its prefix (best effort: missing fields stay empty)."""
    uname = r.run(where, remote(prefix, ["uname", "-srm"]))
    toks = uname.stdout.split()
    fields: dict[str, Any] = {"os": uname.stdout.strip(), "kernel": toks[1] if len(toks) > 1 else "",
                              "hypervisor_version": "bhyve (FreeBSD-UPB migration patch)", "accelerator": "vmm"}
    sc = r.run(where, remote(prefix, ["sysctl", "-n", "hw.model", "hw.ncpu", "hw.physmem", "vm.loadavg"]))
    vals = sc.stdout.splitlines() if sc.returncode == 0 else []
    if len(vals) >= 4:
        try:
            load = [float(x) for x in vals[3].strip("{} ").split()[:3]]
            fields.update(cpu_model=vals[0].strip(), cpu_count=int(vals[1]), memory_bytes=int(vals[2]),
                          loadavg=tuple(load) if len(load) == 3 else (0.0, 0.0, 0.0))
        except ValueError:
            pass
    return HostInfo(**fields)


def _source_wired(r: _Run) -> bool | None:
    """Whether the source VM's system memory is wired (``bhyvectl --get-memmap`` flags); None if unknown."""
    cp = r.run("source", remote(r.cfg.src_prefix, [r.cfg.bhyvectl, f"--vm={r.cfg.vm}", "--get-memmap"]))
    if cp.returncode != 0:
        return None
    # show_memmap() prints the flags as "%cwired" with a NUL first delimiter: strip NULs before splitting.
    sysmem = [ln.replace("\x00", "").split() for ln in cp.stdout.splitlines() if "sysmem" in ln.split()]
    if not sysmem:
        return None
    return all("wired" in toks[-1].split("/") for toks in sysmem)


def _record(cfg: MigrateConfig, scenario: Scenario, r: _Run, outcome: str, started_utc: str,
            stats: dict[str, Any], options: dict[str, Any], src_host: HostInfo | None,
            guest_continues: bool | None) -> RunRecord:
    ms = MigrationStats(total_time_s=stats.get("total_time_s"), downtime_s=stats.get("downtime_s"),
                        bytes_sent=stats.get("bytes_sent"),  # None when no interface counter was given
                        dirty_sync_count=0 if cfg.warm else MIGRATION_ROUNDS)
    opts = {
        "runner": "harness.bhyve.runner",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "commands": r.commands,
        "dirty_sync_count_source": "fixed by the patch (MIGRATION_ROUNDS = 4 dirty-list rounds), not measured",
        **{k: v for k, v in stats.items() if k not in ("total_time_s", "downtime_s", "bytes_sent")},
        **options,
    }
    return RunRecord(scenario=scenario, outcome=outcome, hypervisor="bhyve", host=src_host or HostInfo(),
                     stats=ms, guest_continues=guest_continues,
                     guest_side="destination" if outcome == OUTCOME_COMPLETED else "source",
                     events=tuple((e["t_s"], e["event"] + "".join(f" {k}={v}" for k, v in e.items()
                                                                  if k not in ("t_s", "event")))
                                  for e in r.timeline),
                     options=opts, started_utc=started_utc, wall_time_s=round(time.monotonic() - r.t0, 6))


def run_migration(cfg: MigrateConfig, *, scenario: Scenario | None = None,
                  env: dict[str, str] | None = None) -> RunRecord:
    """Run one migration; always return a record (``outcome`` is ``completed`` or ``failed: <reason>``).

    Every process the runner starts is stopped before it returns, except the
    migrated VM's destination bhyve when ``keep_destination`` is set and the
    migration completed (its pid is in ``options["destination_pid"]``).

    Phases: pre-flight checks (:func:`_preflight`), the listening destination
    and the probe, the move itself (:func:`_wait_for_move`), the downtime from
    the probe (:func:`_probe_downtime`) and the bytes from the interface
    counters (:func:`bytes_moved`), then every process stopped
    (:func:`_stop_processes`).
    """
    cfg.validate()
    started_utc = utc_now()
    r = _Run(cfg, env)
    completed = False
    outcome = ""
    stats: dict[str, Any] = {}
    options: dict[str, Any] = {}
    src_host: HostInfo | None = None
    guest_continues: bool | None = None
    try:
        src_host = _host_info(r, cfg.src_prefix, "source")
        options["destination_host"] = dataclasses.asdict(_host_info(r, cfg.dst_prefix, "destination"))
        _preflight(r, options)
        before = (r.counters(cfg.src_prefix, cfg.src_iface, "source"),
                  r.counters(cfg.dst_prefix, cfg.dst_iface, "destination"))
        dst = r.dst = r.start("destination", destination_argv(cfg))
        r.event("destination_started", pid=dst.pid)
        _wait_listening(r, dst)
        r.event("destination_listening")
        if cfg.probe.kind != "none":
            r.probe = r.start("probe", probe_argv(cfg), read_lines=True)
            r.event("probe_started", kind=cfg.probe.kind)
            time.sleep(max(0.2, 10 * cfg.probe.interval_s))  # a baseline of answered probes before the move
        ctl = r.ctl = r.start("source", source_argv(cfg))
        t_cmd = time.monotonic()
        r.event("migrate_command_started", flag=cfg.migrate_flag)
        t_done = _wait_for_move(r, ctl, dst, t_cmd + cfg.timeout_s)
        completed = True
        stats["total_time_s"] = round(t_done - t_cmd, 6)
        stats["command_s"] = round((ctl.t_end or t_done) - ctl.t_start, 6)
        stats["completion_resolution_s"] = cfg.poll_interval_s
        stats["downtime_s"] = None
        if r.probe is not None:
            probe_stats = _probe_downtime(r, r.probe, t_cmd)
            stats["downtime_s"] = probe_stats.pop("downtime_s")
            stats["probe"] = {"kind": cfg.probe.kind, **probe_stats}
            guest_continues = bool(probe_stats.get("recovered"))
        after = (r.counters(cfg.src_prefix, cfg.src_iface, "source"),
                 r.counters(cfg.dst_prefix, cfg.dst_iface, "destination"))
        stats.update(bytes_moved(before, after))
        outcome = OUTCOME_COMPLETED
    except _Failed as f:
        outcome = f"failed: {f.reason}"
        r.event("failed", reason=f.reason)
    except BhyveError as e:
        outcome = f"failed: {e}"
        r.event("failed", reason=str(e))
    finally:
        _stop_processes(r, keep_destination=completed and cfg.keep_destination, options=options)
    return _record(cfg, scenario or Scenario(), r, outcome, started_utc, stats, options, src_host, guest_continues)


def _preflight(r: _Run, options: dict[str, Any]) -> None:
    """The VM runs on the source with wired memory (``options["source_wired"]``) and not on the destination."""
    cfg = r.cfg
    if not r.vm_exists(cfg.src_prefix, "source"):
        raise _Failed(f"VM {cfg.vm!r} is not running on the source ({cfg.vmm_dir}/{cfg.vm} does not exist)")
    wired = options["source_wired"] = _source_wired(r)
    if wired is False:
        raise _Failed(f"VM {cfg.vm!r} memory is not wired on the source (start it with bhyve -S): "
                      "the migration patch supports wired memory only")
    if r.vm_exists(cfg.dst_prefix, "destination"):
        raise _Failed(f"VM {cfg.vm!r} already exists on the destination; "
                      f"destroy it first (bhyvectl --vm={cfg.vm} --destroy)")


def _wait_for_move(r: _Run, ctl: _Proc, dst: _Proc, deadline: float) -> float:
    """Poll until bhyvectl succeeded and the source VM is gone; the host time it was seen gone.

    The destination must still be running the guest one poll later.
    """
    cfg = r.cfg
    ctl_rc: int | None = None
    while True:
        if ctl_rc is None and (ctl_rc := ctl.poll()) is not None:
            r.event("migrate_command_exited", rc=ctl_rc)
            if ctl_rc != 0:
                raise _Failed(f"bhyvectl exited {ctl_rc}: {ctl.stderr_tail() or 'no message'}")
        rc = dst.poll()
        if rc is not None:
            raise _Failed(f"destination bhyve exited {rc} during the migration: "
                          f"{dst.stderr_tail() or 'no message'}")
        if ctl_rc == 0 and not r.vm_exists(cfg.src_prefix, "source"):
            t_done = time.monotonic()
            r.event("source_vm_gone")
            break
        if time.monotonic() > deadline:
            what = "bhyvectl had not returned" if ctl_rc is None else "the source VM still exists"
            raise _Failed(f"timeout after {cfg.timeout_s:g} s: {what}")
        time.sleep(cfg.poll_interval_s)
    time.sleep(cfg.poll_interval_s)
    if (rc := dst.poll()) is not None:
        raise _Failed(f"destination bhyve exited {rc} right after the migration: {dst.stderr_tail()}")
    return t_done


def _probe_downtime(r: _Run, probe: _Proc, t_cmd: float) -> dict[str, Any]:
    """Stop the probe once answers have resumed and measure the gap (``downtime_s``, ``recovered``, ...)."""
    cfg = r.cfg
    time.sleep(max(0.2, 10 * cfg.probe.interval_s))  # let answers resume before judging the gap
    probe.stop(signal.SIGINT)  # ping prints "N packets transmitted" on SIGINT
    r.event("probe_stopped")
    if cfg.probe.kind == "ping":
        return ping_downtime([ln for _, ln in probe.lines], cfg.probe.interval_s)
    return lines_downtime([t for t, _ in probe.lines], t_cmd, time.monotonic())


def bytes_moved(before: tuple[tuple[int, int] | None, tuple[int, int] | None],
                after: tuple[tuple[int, int] | None, tuple[int, int] | None]) -> dict[str, Any]:
    """The bytes the migration moved, from (source, destination) (ibytes, obytes) interface counters.

    ``bytes_sent`` is the source's output when counted, else the destination's input, else None.
    """
    out: dict[str, Any] = {}
    (src_before, dst_before), (src_after, dst_after) = before, after
    if src_before and src_after:
        out["src_obytes"] = src_after[1] - src_before[1]
    if dst_before and dst_after:
        out["dst_ibytes"] = dst_after[0] - dst_before[0]
    out["bytes_sent"] = out.get("src_obytes", out.get("dst_ibytes"))
    return out


def _stop_processes(r: _Run, *, keep_destination: bool, options: dict[str, Any]) -> None:
    """Stop the probe and bhyvectl; destroy and reap the destination unless it is kept (its pid recorded)."""
    for proc in (r.probe, r.ctl):
        if proc is not None:
            proc.stop()
            proc.close()
    if r.dst is not None:
        if keep_destination:
            options["destination_pid"] = r.dst.pid
            r.event("destination_kept", pid=r.dst.pid)
        else:
            _cleanup_destination(r, r.dst)
            r.dst.close()


def _cleanup_destination(r: _Run, dst: _Proc) -> None:
    """Destroy the destination VM (a half-received or measured-and-done guest), then reap our process."""
    # Through ssh, killing the local client does not stop the remote bhyve, and a bhyve that
    # exited leaves its VM in vmm.ko unless started with -D: destroy the VM there in every case.
    try:
        cp = r.run("destination", destroy_argv(r.cfg), timeout_s=30.0)
        r.event("destination_destroyed", rc=cp.returncode)
    except BhyveError as e:
        r.event("destination_destroy_failed", reason=str(e))
    try:
        dst.p.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    dst.stop()
