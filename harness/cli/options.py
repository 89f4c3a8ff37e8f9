"""Option definitions shared by the ``miglab`` verbs: one spelling, one metavar, one parser per thing.

A flag that means the same in two verbs is defined here once, so ``--bandwidth``
is ``RATE`` in ``simulate`` and ``migrate`` alike, progress is silenced with
``-q/--quiet`` everywhere (older spellings such as ``--no-progress`` stay as
aliases), ``-v/--verbose`` logs more before or after the verb (defined in :mod:`harness.cli`, which
``--help`` must load without this module), and ``--seed`` is
optional wherever it exists.

:func:`scenario_from_args` is the one translation of flags into a
:class:`sim.scenario.Scenario`; the simulator verbs and ``migrate`` differ
only in the keyword arguments they pass, which name those differences.

Like every module of this package, this one imports only the standard library
at module level; ``sim`` is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.scenario import Scenario

# Metavars: the same word for the same kind of value in every verb.
SIZE = "SIZE"      # bytes with a unit: 512MiB, 1TiB
RATE = "RATE"      # a link or dirty rate: 1Gbit/s, 119.2MiB/s
TIME = "TIME"      # a duration with a unit: 300ms, 2s
FILE = "FILE"      # a path to one file
DIR = "DIR"        # a directory
SPEC = "SPEC"      # a workload spec: uniform:rate=30MiB/s
N = "N"            # a count

#: ``trace synth`` draws from this seed unless ``--seed`` is given (so the same command writes the same trace).
DEFAULT_SYNTH_SEED = 0

#: One line that says how to get the harness's dependencies.
HARNESS_EXTRA_HINT = "pip install 'miglab[harness]'"


# --------------------------------------------------------------------------- common flags
def add_quiet(p: argparse.ArgumentParser, *aliases: str, help: str = "no progress bar") -> None:
    """``-q/--quiet`` (dest ``quiet``); ``aliases`` keep older spellings working, e.g. ``--no-progress``."""
    p.add_argument("-q", "--quiet", *aliases, dest="quiet", action="store_true", help=help)


def add_seed(p: argparse.ArgumentParser, default: int | None = None, help: str | None = None) -> None:
    """An optional ``--seed N``."""
    p.add_argument("--seed", type=int, default=default, metavar=N,
                   help=help or ("random seed" if default is None else f"random seed (default {default})"))


def add_output(p: argparse.ArgumentParser, help: str, *, metavar: str = FILE, required: bool = False) -> None:
    """``-o/--output``: a file (``metavar`` FILE or a file name) or, with ``metavar=DIR``, a directory.

    The CLI checks the path before the verb runs (:func:`check_output`): a directory where a file is
    expected, a device or special file, a parent that cannot be written, a missing parent (of a file;
    a directory may be created, but not its parent) are refused in one line before any work is done.
    """
    p.add_argument("-o", "--output", required=required, metavar=metavar, help=help)
    p.set_defaults(output_kind="dir" if metavar == DIR else "file")


def add_output_file(p: argparse.ArgumentParser, flag: str, help: str, *, dest: str | None = None,
                    metavar: str = FILE) -> None:
    """An optional output flag other than ``-o`` (``--markdown FILE``), checked like ``-o`` (``metavar=DIR``:
    a directory, like ``-o DIR``)."""
    action = p.add_argument(flag, dest=dest, metavar=metavar, help=help)
    kind = "dir" if metavar == DIR else "file"
    p.set_defaults(output_files=(*(p.get_default("output_files") or ()), (action.dest, flag, kind)))


def check_output(args: argparse.Namespace) -> None:
    """Refuse ``-o`` and every :func:`add_output_file` path now if it cannot be written safely.

    A path given here must have an existing parent directory (see :mod:`sim.atomic`).
    """
    from sim.atomic import check_output_dir, check_output_file
    from sim.errors import OutputError

    path = getattr(args, "output", None)
    kind = getattr(args, "output_kind", None)
    given = [(path, kind, "-o")] if path is not None and kind is not None else []
    given += [(getattr(args, dest, None), kind, flag) for dest, flag, kind in getattr(args, "output_files", ())]
    for path, kind, flag in given:
        if path is None:
            continue
        if not str(path).strip():
            raise OutputError("empty path", flag="-o/--output" if flag == "-o" else flag)
        (check_output_dir if kind == "dir" else check_output_file)(path, flag=flag)


def parse_flag(value: str, parse: Callable[[str], Any], flag: str) -> Any:
    """``parse(value)``, with a ConfigError naming ``flag`` when the value is bad.

    The unit parsers of :mod:`sim.units` (sizes, durations, link rates) also refuse a bare number
    here: on a command line ``300`` is ambiguous (QEMU reads a downtime limit of 300 as ms and
    ``-m 4096`` as MiB), so the flag asks for the unit, unless the flag's name carries it
    (``--seconds 60``).
    """
    from sim import units
    from sim.errors import ConfigError

    kinds: dict[Any, str] = {units.parse_size: "size", units.parse_duration: "duration",
                             units.parse_bandwidth: "bandwidth"}
    kind = kinds.get(parse)
    try:
        if flag.endswith("--seconds") and parse is units.parse_duration:
            kind = None
            if re.fullmatch(r"\s*[0-9.eE+-]+\s*", value):  # the flag's name is the unit
                value = value.strip() + "s"
        if kind is not None:
            units.require_unit(value, kind)
        return parse(value)
    except ConfigError as e:
        raise ConfigError(e.problem, flag=flag, value=value) from None


# --------------------------------------------------------------------------- scenario flags
# Each scenario flag once: (flags, argparse keywords). Verbs pick the ones they take and may
# reword the help (e.g. to state their own default).
_SCENARIO_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "scenario": (("--scenario",), {"metavar": FILE, "help": "start from a scenario TOML file; flags override it"}),
    "preset": (("--preset",), {"metavar": "NAME",
                               "help": "a named variant, e.g. bhyve-upb, bhyve-threshold, bhyve-rounds-8"}),
    "memory": (("--memory",), {"metavar": SIZE, "help": "guest memory, e.g. 4GiB (models rescale to it)"}),
    "bandwidth": (("--bandwidth",), {"metavar": RATE, "help": "link rate, e.g. 119.2MiB/s or 1Gbit/s"}),
    "max_bandwidth": (("--max-bandwidth",), {"metavar": RATE,
                                             "help": "migration cap for the live phase (QEMU max-bandwidth)"}),
    "rtt": (("--rtt",), {"metavar": TIME, "help": "round-trip time, e.g. 1ms"}),
    "downtime_limit": (("--downtime-limit",), {"metavar": TIME, "help": "e.g. 300ms"}),
    "postcopy_after": (("--postcopy-after",), {"type": int, "metavar": N,
                                               "help": "hybrid: pre-copy rounds before post-copy"}),
    "auto_converge": (("--auto-converge",), {"action": "store_true", "default": None,
                                             "help": "QEMU auto-converge throttling"}),
    "xbzrle_cache": (("--xbzrle-cache",), {"metavar": SIZE, "help": "XBZRLE cache size"}),
}


def add_scenario_flags(p: argparse.ArgumentParser, names: Sequence[str], **help: str) -> None:
    """Add the shared scenario flags ``names`` (keys of the table above), with ``help`` overrides by name."""
    for name in names:
        flags, kw = _SCENARIO_FLAGS[name]
        p.add_argument(*flags, **{**kw, **({"help": help[name]} if name in help else {})})


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag that builds a simulated Scenario; shared by ``simulate`` and ``compare``."""
    from_ = p.add_argument_group("workload (one of)")
    from_.add_argument("--trace", metavar=FILE, help="replay a recorded trace page-exactly")
    from_.add_argument("--model", metavar=FILE, help="a calibrated model from `miglab calibrate`")
    from_.add_argument("--workload", metavar=SPEC, help="synthetic spec, e.g. uniform:rate=30MiB/s")
    add_scenario_flags(p, ("scenario", "preset", "memory"))
    p.add_argument("--scaling", choices=["absolute", "proportional"], help="how a model grows with memory")
    p.add_argument("--mode", choices=["expected", "sampled"], help="model mode: expected values or page-exact samples")
    add_scenario_flags(p, ("bandwidth", "max_bandwidth", "rtt"))
    p.add_argument("--stop-rule", choices=_stop_rules(), help="pre-copy stop rule")
    add_scenario_flags(p, ("downtime_limit",))
    p.add_argument("--max-rounds", type=int, metavar=N, help="round guard")
    add_scenario_flags(p, ("postcopy_after", "auto_converge", "xbzrle_cache"))
    p.add_argument("--hypervisor", choices=["qemu", "bhyve"], help="copy mechanics")
    p.add_argument("--host", metavar=FILE, help="calibrated host constants (JSON from `miglab calibrate-host`)")
    add_seed(p)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any scenario field by dotted path, e.g. --set strategy.prepaging=bubbling")


def strategies() -> tuple[str, ...]:
    """The simulator's strategies (for ``choices=``)."""
    from sim.scenario import STRATEGIES

    return tuple(STRATEGIES)


def _stop_rules() -> tuple[str, ...]:
    from sim.scenario import STOP_RULES

    return tuple(STOP_RULES)


def scenario_from_args(args: argparse.Namespace, *, base: Scenario | None = None, require_workload: bool = False,
                       strategies: Sequence[str] | None = None) -> Scenario:
    """Build the Scenario the flags describe: flags override ``--scenario FILE``, ``--set`` overrides both.

    The verbs differ only in these keywords:

    * ``base``: the scenario without ``--scenario`` (default ``Scenario()``; ``migrate`` starts from a
      512 MiB guest on a 1 Gbit/s link with a 120 s cancel, what a real run needs).
    * ``require_workload``: without ``--scenario``, a ``--workload`` (or ``--trace``/``--model``) is required.
    * ``strategies``: check ``--strategy`` against these with a one-line error (when argparse does not
      already, through ``choices=``).

    A flag a verb does not define is simply absent from ``args`` and changes nothing.
    """
    from sim.errors import ConfigError
    from sim.scenario import Scenario
    from sim.units import format_bytes, parse_bandwidth, parse_duration, parse_size

    opt = _Flags(args)
    sc = Scenario.from_toml(opt.scenario) if opt.scenario else (base if base is not None else Scenario())
    ch: dict[str, Any] = {}
    # Where each change came from, so a refusal of the combined scenario names the flag or file.
    origin: dict[str, dict[str, Any]] = {}
    if opt.preset:
        from sim.presets import preset

        for key, value in preset(opt.preset).items():
            ch[key] = value
            origin[key] = {"flag": "--preset"}
    sources = [x for x in ("trace", "model", "workload") if opt.get(x)]
    if len(sources) > 1:
        raise ConfigError(f"give only one of --trace, --model, --workload (got {', '.join('--' + s for s in sources)})")
    if require_workload and not sources and not opt.scenario:
        raise ConfigError("--workload SPEC is required (e.g. hotcold:hot=64MiB,rate=5000)")
    for name in ("trace", "model"):
        origin.update({k: {"flag": "--" + name} for k in ("workload.kind", "workload.path")} if opt.get(name) else {})
    if opt.workload:
        origin["workload.spec"] = {"flag": "--workload"}
    if opt.trace:
        from sim.trace import load

        t = load(opt.trace)  # validates now: a bad trace is a one-line error before anything runs
        ch.update({"workload.kind": "trace", "workload.path": opt.trace, "workload.memory_bytes": t.memory_bytes,
                   "workload.page_size_bytes": t.page_size, "workload.spec": ""})  # no spec: the trace is it
        if opt.memory is not None and parse_flag(opt.memory, parse_size, "--memory") != t.memory_bytes:
            raise ConfigError(f"{opt.trace} is a {format_bytes(t.memory_bytes)} guest; a trace replays "
                              "at its own size (calibrate a model to rescale)", flag="--memory")
    elif opt.model:
        ch.update({"workload.kind": "model", "workload.path": opt.model, "workload.spec": ""})
        if opt.memory is None:
            from sim.model import DirtyModel

            ch["workload.memory_bytes"] = DirtyModel.load(opt.model).memory_bytes
    elif opt.workload:
        ch.update({"workload.kind": "synthetic", "workload.spec": opt.workload, "workload.path": ""})
    if opt.memory is not None and not opt.trace:
        ch["workload.memory_bytes"] = parse_flag(opt.memory, parse_size, "--memory")
        origin["workload.memory_bytes"] = {"flag": "--memory"}
    simple = {"scaling": "workload.scaling", "mode": "workload.mode", "stop_rule": "strategy.stop_rule",
              "max_rounds": "strategy.max_rounds", "auto_converge": "strategy.auto_converge",
              "hypervisor": "host.hypervisor", "seed": "seed"}
    for attr, path in simple.items():
        if opt.get(attr) is not None:
            ch[path] = opt.get(attr)
            origin[path] = {"flag": "--" + attr.replace("_", "-")}
    if opt.postcopy_after is not None:
        if opt.postcopy_after < 0:
            raise ConfigError("must not be negative", flag="--postcopy-after", value=opt.postcopy_after)
        ch["strategy.postcopy_after_rounds"] = opt.postcopy_after
        origin["strategy.postcopy_after_rounds"] = {"flag": "--postcopy-after"}
    if opt.multifd is not None:
        if opt.multifd < 1:
            raise ConfigError("need at least 1 channel", flag="--multifd", value=opt.multifd)
        ch["strategy.multifd_channels"] = opt.multifd
        origin["strategy.multifd_channels"] = {"flag": "--multifd"}
    parsed = {"bandwidth": ("link.bandwidth_Bps", parse_bandwidth),
              "max_bandwidth": ("link.migration_cap_Bps", parse_bandwidth),
              "rtt": ("link.rtt_s", parse_duration),
              "downtime_limit": ("strategy.downtime_limit_s", parse_duration),
              "timeout": ("strategy.timeout_s", parse_duration),
              "xbzrle_cache": ("strategy.xbzrle_cache_bytes", parse_size)}
    for attr, (path, parse) in parsed.items():
        if opt.get(attr) is not None:
            flag = "--" + attr.replace("_", "-")
            ch[path] = parse_flag(opt.get(attr), parse, flag)
            origin[path] = {"flag": flag}
    if opt.strategy:
        if strategies is not None and opt.strategy not in strategies:
            raise ConfigError(f"unknown strategy {opt.strategy!r} (choose from {', '.join(strategies)})",
                              flag="--strategy", value=opt.strategy)
        ch["strategy.kind"] = opt.strategy
        origin["strategy.kind"] = {"flag": "--strategy"}
    if opt.name:
        ch["name"] = opt.name
        origin["name"] = {"flag": "--name"}
    if opt.host:
        from sim.hostconst import load_host_json

        for key, (file_key, value) in load_host_json(opt.host, with_keys=True).items():
            ch[key] = value
            origin[key] = {"where": opt.host, "key": file_key}
    for item in opt.get("set") or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"expected FIELD=VALUE, got {item!r}", flag="--set", value=item)
        ch[key.strip()] = literal(value.strip())
        origin[key.strip()] = {"flag": f"--set {key.strip()}"}
    try:
        new = sc.replace(**ch) if ch else sc
    except ConfigError as e:
        raise _located(e, origin, opt.scenario) from None
    _check_cost(new, origin, opt.scenario)
    return new


def _check_cost(sc: Scenario, origin: dict[str, dict[str, Any]], scenario_file: str | None) -> None:
    """Refuse, with the estimate, a page-exact run (a model in ``sampled`` mode) too big for memory.

    A sampled model keeps page bitmaps of the whole guest; expected-mode models and synthetic specs
    work on counts and run at any size, and a trace's size is checked when it is loaded.
    """
    from sim.errors import ResourceError
    from sim.inputs import check_allocation
    from sim.trace import replay_bytes
    from sim.units import format_bytes

    w = sc.workload
    if w.kind != "model" or w.mode != "sampled":
        return
    try:
        check_allocation(replay_bytes(w.memory_bytes // w.page_size_bytes),
                         f"a page-exact (sampled) run of a {format_bytes(w.memory_bytes)} guest")
    except ResourceError as e:
        src = origin.get("workload.memory_bytes") or origin.get("workload.mode") or {}
        raise e.at(flag=src.get("flag"), where=None if src.get("flag") else scenario_file) from None


def _located(e: Any, origin: dict[str, dict[str, Any]], scenario_file: str | None) -> Any:
    """``e`` (a refusal of the combined scenario) located at the flag or file that set its key."""
    from sim.errors import ConfigError

    src = origin.get(e.key or "")
    if src is None:  # a rule between two fields, or the value came from --scenario FILE
        return e.at(where=scenario_file) if scenario_file and e.key else e
    if "flag" in src:
        return ConfigError(e.problem, flag=src["flag"], value=e.value)
    return ConfigError(e.problem, where=src["where"], key=src["key"], value=e.value)


class _Flags:
    """``args`` read leniently: a flag the verb does not define reads as None."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args

    def get(self, name: str) -> Any:
        return getattr(self._args, name, None)

    def __getattr__(self, name: str) -> Any:  # a def, not `= get`, so that type checkers see it
        return self.get(name)


def literal(text: str) -> Any:
    """A ``--set`` value: true/false, none/null, an int, a float, else the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------- run-time helpers
@contextlib.contextmanager
def sigterm_guard() -> Iterator[None]:
    """SIGTERM becomes KeyboardInterrupt inside the block (see :mod:`sim.interrupt`)."""
    from sim.interrupt import sigterm_as_interrupt

    with sigterm_as_interrupt():
        yield


def require_harness_extra(verb: str) -> None:
    """Fail in one line, naming the extra to install, when the QMP client the QEMU harness needs is missing."""
    try:
        import qemu.qmp  # noqa: F401
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("qemu"):
            raise
        from sim.errors import MiglabError

        raise MiglabError(f"{verb} drives QEMU through qemu.qmp, which is not installed: "
                          f"{HARNESS_EXTRA_HINT}") from None


__all__ = ["SIZE", "RATE", "TIME", "FILE", "DIR", "SPEC", "N", "DEFAULT_SYNTH_SEED", "HARNESS_EXTRA_HINT",
           "add_quiet", "add_seed", "add_output", "add_output_file", "check_output", "parse_flag",
           "add_scenario_flags", "add_scenario_arguments",
           "strategies", "scenario_from_args", "literal", "sigterm_guard", "require_harness_extra"]
