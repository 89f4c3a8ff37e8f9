"""``miglab simulate``, ``miglab compare`` and ``miglab trace synth``: thin shells over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .atomic import atomic_open, atomic_path
from .errors import ConfigError
from .scenario import STOP_RULES, STRATEGIES, Scenario, load_json
from .units import format_bytes, format_duration, parse_bandwidth, parse_duration, parse_size

COMPARE_DEFAULT = ("stopcopy", "precopy", "postcopy", "hybrid")


def _flag(value: str, parse: Any, flag: str) -> Any:
    try:
        return parse(value)
    except ConfigError as e:
        raise ConfigError(f"{flag}: {e}") from None


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that build a Scenario; shared by simulate and compare."""
    src = p.add_argument_group("workload (one of)")
    src.add_argument("--trace", metavar="FILE", help="replay a recorded trace page-exactly")
    src.add_argument("--model", metavar="FILE", help="a calibrated model from `miglab calibrate`")
    src.add_argument("--workload", metavar="SPEC", help="synthetic spec, e.g. uniform:rate=30MiB/s")
    p.add_argument("--scenario", metavar="TOML", help="start from a scenario file; flags override it")
    p.add_argument("--preset", metavar="NAME", help="a named variant, e.g. bhyve-upb, bhyve-threshold, bhyve-rounds-8")
    p.add_argument("--memory", metavar="SIZE", help="guest memory, e.g. 4GiB (models rescale to it)")
    p.add_argument("--scaling", choices=["absolute", "proportional"], help="how a model grows with memory")
    p.add_argument("--mode", choices=["expected", "sampled"], help="model mode: expected values or page-exact samples")
    p.add_argument("--bandwidth", metavar="RATE", help="link rate, e.g. 119.2MiB/s or 1Gbit/s")
    p.add_argument("--max-bandwidth", metavar="RATE", help="migration cap for the live phase (QEMU max-bandwidth)")
    p.add_argument("--rtt", metavar="TIME", help="round-trip time, e.g. 1ms")
    p.add_argument("--stop-rule", choices=STOP_RULES, help="pre-copy stop rule")
    p.add_argument("--downtime-limit", metavar="TIME", help="e.g. 300ms")
    p.add_argument("--max-rounds", type=int, metavar="N", help="round guard")
    p.add_argument("--postcopy-after", type=int, metavar="N", help="hybrid: pre-copy rounds before post-copy")
    p.add_argument("--auto-converge", action="store_true", default=None, help="QEMU auto-converge throttling")
    p.add_argument("--xbzrle-cache", metavar="SIZE", help="XBZRLE cache size")
    p.add_argument("--hypervisor", choices=["qemu", "bhyve"], help="copy mechanics")
    p.add_argument("--host", metavar="JSON", help="calibrated host constants (from `miglab calibrate-host`)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any scenario field by dotted path, e.g. --set strategy.prepaging=bubbling")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Build the Scenario the flags describe (flags override --scenario, --set overrides both)."""
    sc = Scenario.from_toml(args.scenario) if args.scenario else Scenario()
    ch: dict[str, Any] = {}
    if args.preset:
        from .presets import preset

        ch.update(preset(args.preset))
    sources = [x for x in ("trace", "model", "workload") if getattr(args, x)]
    if len(sources) > 1:
        raise ConfigError(f"give only one of --trace, --model, --workload (got {', '.join('--' + s for s in sources)})")
    if args.trace:
        from .trace import load

        t = load(args.trace)  # validates now: a bad trace is a one-line error before anything runs
        ch.update({"workload.kind": "trace", "workload.path": args.trace, "workload.memory_bytes": t.memory_bytes,
                   "workload.page_size_bytes": t.page_size})
        if args.memory and _flag(args.memory, parse_size, "--memory") != t.memory_bytes:
            raise ConfigError(f"--memory: {args.trace} is a {format_bytes(t.memory_bytes)} guest; a trace replays "
                              "at its own size (calibrate a model to rescale)")
    elif args.model:
        ch.update({"workload.kind": "model", "workload.path": args.model})
        if not args.memory:
            from .model import DirtyModel

            ch["workload.memory_bytes"] = DirtyModel.load(args.model).memory_bytes
    elif args.workload:
        ch.update({"workload.kind": "synthetic", "workload.spec": args.workload})
    if args.memory and not args.trace:
        ch["workload.memory_bytes"] = _flag(args.memory, parse_size, "--memory")
    simple = {"scaling": "workload.scaling", "mode": "workload.mode", "stop_rule": "strategy.stop_rule",
              "max_rounds": "strategy.max_rounds", "postcopy_after": "strategy.postcopy_after_rounds",
              "auto_converge": "strategy.auto_converge", "hypervisor": "host.hypervisor", "seed": "seed"}
    for attr, path in simple.items():
        if getattr(args, attr, None) is not None:
            ch[path] = getattr(args, attr)
    if args.bandwidth:
        ch["link.bandwidth_Bps"] = _flag(args.bandwidth, parse_bandwidth, "--bandwidth")
    if args.max_bandwidth:
        ch["link.migration_cap_Bps"] = _flag(args.max_bandwidth, parse_bandwidth, "--max-bandwidth")
    if args.rtt:
        ch["link.rtt_s"] = _flag(args.rtt, parse_duration, "--rtt")
    if args.downtime_limit:
        ch["strategy.downtime_limit_s"] = _flag(args.downtime_limit, parse_duration, "--downtime-limit")
    if args.xbzrle_cache:
        ch["strategy.xbzrle_cache_bytes"] = _flag(args.xbzrle_cache, parse_size, "--xbzrle-cache")
    if getattr(args, "strategy", None):
        ch["strategy.kind"] = args.strategy
    if args.host:
        ch.update(load_host_json(args.host))
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {item!r}")
        ch[key.strip()] = _literal(value.strip())
    return sc.replace(**ch) if ch else sc


def load_host_json(path: str) -> dict[str, Any]:
    """Host constants from `miglab calibrate-host`, as dotted overrides (``host.*`` / ``link.*``)."""
    d = load_json(path)
    consts = d.get("constants", d) if isinstance(d, dict) else None
    if not isinstance(consts, dict):
        raise ConfigError(f"{path}: expected a JSON object of host constants")
    return {k if "." in k else f"host.{k}": v for k, v in consts.items()}


def _literal(text: str) -> Any:
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


def _fmt_row(name: str, s: dict[str, Any]) -> list[str]:
    return [name, "yes" if s["converged"] else "NO", str(s["rounds"]), format_duration(s["total_time_s"]),
            format_duration(s["downtime_s"]), format_bytes(s["bytes_sent"]),
            f"{s['postcopy_faults']:.0f}", format_duration(s["postcopy_stall_s"]), s["reason"]]


def print_table(rows: list[list[str]], out: Any = None) -> None:
    out = out or sys.stdout
    header = ["strategy", "converged", "rounds", "total time", "downtime", "sent", "pc faults", "pc stall", "why"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def cmd_simulate(args: argparse.Namespace) -> int:
    from .engine import simulate

    sc = scenario_from_args(args)
    r = simulate(sc)
    if args.output:
        with atomic_open(args.output) as f:
            json.dump(r.to_dict(), f, indent=2, default=str)
    if args.json:
        json.dump(r.to_dict(), sys.stdout, indent=2, default=str)
        print()
    else:
        print_table([_fmt_row(sc.strategy.kind, r.summary())])
        if r.trace_looped:
            print("note: the migration outlasted the trace, which was looped")
    return 0 if r.converged else 1


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from .engine import simulate

    base = scenario_from_args(args)
    kinds = [k.strip() for k in args.strategies.split(",") if k.strip()]
    for k in kinds:
        if k not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {k!r} (choose from {', '.join(STRATEGIES)})")
    results = {k: simulate(base.replace(**{"strategy.kind": k})) for k in kinds}
    rows = []
    for k, r in results.items():
        rows.append({"strategy": k, **r.summary(), "trace_sha256": r.trace_sha256, "miglab_version": r.miglab_version,
                     "scenario": json.dumps(r.scenario.to_dict(), sort_keys=True)})
    print_table([_fmt_row(k, r.summary()) for k, r in results.items()])
    if any(r.trace_looped for r in results.values()):
        print("note: at least one migration outlasted the trace, which was looped")
    if args.output:
        out = Path(args.output)
        with atomic_path(out / "summary.csv") as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        with atomic_path(out / "timeline.png") as tmp:
            plot_timelines(results, tmp)
        print(f"wrote {out / 'summary.csv'} and {out / 'timeline.png'}")
    return 0


def _densify(t: Any, y: Any, per_segment: int = 24) -> tuple[Any, Any]:
    """Between marks the stream drains at a constant rate: fill in points so a log axis shows that."""
    import numpy as np

    if len(t) < 2:
        return t, y
    frac = np.linspace(0.0, 1.0, per_segment, endpoint=False)
    tt = (t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac).ravel()
    yy = (y[:-1, None] + (y[1:] - y[:-1])[:, None] * frac).ravel()
    return np.append(tt, t[-1]), np.append(yy, y[-1])


def plot_timelines(results: dict[str, Any], path: Path) -> None:
    """Bytes still to move against time, one line per strategy, downtime shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    switch_times, ends = [], []
    for i, (name, r) in enumerate(results.items()):
        color = f"C{i}"
        t, y = _densify(r.timeline["t_s"].to_numpy(), r.timeline["remaining_bytes"].to_numpy() / 2**20)
        stops = r.rounds_table[r.rounds_table["phase"].isin(["stopcopy", "switchover", "cold"])]
        for ax in axes:
            # Strategies share the first pass; thinner lines on top keep each one visible.
            ax.plot(t, y, color=color, lw=3.2 - 0.6 * i, label=f"{name} (downtime {format_duration(r.downtime_s)})")
            for _, row in stops.iterrows():
                ax.axvspan(row["t_start_s"], row["t_start_s"] + max(row["duration_s"], 1e-9), color=color, alpha=0.2)
                ax.axvline(row["t_start_s"], color=color, ls=":", lw=1)
        switch_times += list(stops["t_start_s"])
        ends.append(r.total_time_s)
    w = next(iter(results.values())).scenario.workload
    axes[0].set_title(f"{Path(w.path).name if w.path else w.spec}: bytes remaining (shaded: guest paused)")
    if switch_times:
        # Stop-and-copy and post-copy switch at the start (after setup): zoom on the switchovers that
        # follow a live phase.
        late = [x for x in switch_times if x > 0.05 * max(ends)] or switch_times
        lo, hi = min(late), max(ends)
        axes[1].set_xlim(lo - 0.25 * (hi - lo) - 1e-3, hi + 0.05 * (hi - lo) + 1e-3)
    axes[1].set_title("around the switchover")
    for ax in axes:
        ax.set_xlabel("time since migration start (s)")
        ax.set_ylabel("memory still to transfer (MiB)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def cmd_synth(args: argparse.Namespace) -> int:
    from . import trace
    from .workload import synth_trace

    t = synth_trace(args.spec, _flag(args.memory, parse_size, "--memory"),
                    seconds=_flag(args.seconds, parse_duration, "--seconds"),
                    interval_s=_flag(args.interval, parse_duration, "--interval"), seed=args.seed,
                    zero_page_fraction=args.zero_fraction)
    sha = trace.save(t, args.output)
    rate = t.counts.mean() / (t.t_end_s - t.t_start_s).mean()
    print(f"wrote {args.output}: {t.n_intervals} intervals, {rate:.0f} changed pages/s, sha256 {sha[:12]}")
    return 0


def register(groups: dict[str, Any]) -> None:
    top, trace = groups[""], groups["trace"]
    p = top.add_parser("simulate", help="predict one migration")
    add_scenario_arguments(p)
    p.add_argument("--strategy", choices=STRATEGIES, help="migration strategy")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the full result as JSON")
    p.set_defaults(func=cmd_simulate)

    p = top.add_parser("compare", help="run several strategies on the same workload and link, and plot them")
    add_scenario_arguments(p)
    p.add_argument("--strategies", default=",".join(COMPARE_DEFAULT), help="comma-separated strategies")
    p.add_argument("-o", "--output", metavar="DIR", help="write summary.csv and timeline.png here")
    p.set_defaults(func=cmd_compare, strategy=None)

    p = trace.add_parser("synth", help="generate a synthetic trace")
    p.add_argument("spec", help="workload spec, e.g. hotcold:hot=48MiB,rate=4000")
    p.add_argument("--memory", default="512MiB")
    p.add_argument("--seconds", default="60s")
    p.add_argument("--interval", default="0.5s")
    p.add_argument("--seed", type=int, required=True, help="explicit random seed")
    p.add_argument("--zero-fraction", type=float, default=0.0, help="share of guest pages that are zero")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(func=cmd_synth)


__all__ = ["register", "scenario_from_args", "add_scenario_arguments"]
