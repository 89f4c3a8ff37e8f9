"""Workload specs (``PATTERN:key=value,...``): parsing, analytic page classes, synthetic traces.

One grammar serves the CLI, scenario files and the harness's in-guest workload
program. Rates are pages per second (bare number) or bytes per second with a
unit; sizes take units.

=========  =====================================================================
pattern    meaning
=========  =====================================================================
uniform    distinct pages at a constant rate: the span is visited in a fixed,
           seeded pseudo-random permutation, each page once per cycle of
           ``span/rate`` seconds. This is the geometric closed form's
           "uniform dirty rate": D(T) = min(rate*T, span).
random     independent uniform random picks in the span (repeats count once):
           D(T) = span*(1 - exp(-rate*T/span)).
hotcold    ``hot_share`` of writes (default 0.9) uniformly random in the first
           ``hot`` bytes, the rest uniformly random in the remainder.
zipf       page of rank i chosen with probability proportional to 1/i**s; ranks
           scattered over the span by a fixed permutation.
seq        sequential sweep in address order, wrapping: D(T) = min(rate*T, span).
idle       no writes.
=========  =====================================================================

Common keys: ``rate`` (required except idle), ``span`` (default: all memory).
``hotcold`` takes ``hot`` (required) and ``hot_share``; ``zipf`` takes ``s``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .model import DirtyModel, PageClass
from .trace import Trace, make_trace
from .units import parse_rate, parse_size

PATTERNS: dict[str, tuple[set[str], set[str]]] = {
    # pattern: (required keys, optional keys)
    "uniform": ({"rate"}, {"span"}),
    "random": ({"rate"}, {"span"}),
    "hotcold": ({"rate", "hot"}, {"hot_share", "span"}),
    "zipf": ({"rate"}, {"s", "span"}),
    "seq": ({"rate"}, {"span"}),
    "idle": (set(), set()),
}
ZIPF_BINS = 48


@dataclass(frozen=True)
class WorkloadSpec:
    """A parsed ``PATTERN:key=value,...`` spec, resolved against a guest size."""

    pattern: str
    rate_pages_per_s: float
    span_pages: int
    hot_pages: int = 0
    hot_share: float = 0.9
    s: float = 1.1
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "rate_pages_per_s": self.rate_pages_per_s, "span_pages": self.span_pages,
                "hot_pages": self.hot_pages, "hot_share": self.hot_share, "s": self.s, "text": self.text}


def parse_spec(text: str, memory_bytes: int, page_size: int = 4096, *, where: str = "workload") -> WorkloadSpec:
    """Parse and resolve a spec; raise ConfigError naming ``where`` on any problem."""
    pattern, _, rest = str(text).strip().partition(":")
    pattern = pattern.strip()
    if pattern not in PATTERNS:
        raise ConfigError(f"{where}: unknown workload pattern {pattern!r} in {text!r} "
                          f"(choose from {', '.join(PATTERNS)})")
    required, optional = PATTERNS[pattern]
    kv: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"{where}: expected key=value, got {item!r} in {text!r}")
        key = key.strip()
        if key not in required | optional:
            raise ConfigError(f"{where}: unknown key {key!r} for pattern {pattern!r} "
                              f"(allowed: {', '.join(sorted(required | optional))})")
        kv[key] = value.strip()
    missing = sorted(required - set(kv))
    if missing:
        raise ConfigError(f"{where}: pattern {pattern!r} needs {', '.join(missing)} (in {text!r})")
    n_pages = memory_bytes // page_size
    try:
        rate = parse_rate(kv["rate"], page_size)[0] if "rate" in kv else 0.0
        span = parse_size(kv["span"]) // page_size if "span" in kv else n_pages
        hot = parse_size(kv["hot"]) // page_size if "hot" in kv else 0
        hot_share = float(kv.get("hot_share", 0.9))
        s = float(kv.get("s", 1.1))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ValueError:
        raise ConfigError(f"{where}: bad number in {text!r}") from None
    if rate < 0 or not np.isfinite(rate):
        raise ConfigError(f"{where}: rate must be a non-negative number in {text!r}")
    if not 0 < span <= n_pages:
        raise ConfigError(f"{where}: span must be between one page and the guest's memory in {text!r}")
    if pattern == "hotcold" and not 0 < hot < span:
        raise ConfigError(f"{where}: hot set must be smaller than the span and at least a page in {text!r}")
    if not 0 <= hot_share <= 1:
        raise ConfigError(f"{where}: hot_share must lie in [0, 1] in {text!r}")
    if s <= 0:
        raise ConfigError(f"{where}: zipf exponent s must be positive in {text!r}")
    return WorkloadSpec(pattern, rate, int(span), int(hot), hot_share, s, str(text))


def zipf_weights(n: int, s: float) -> np.ndarray:
    """Normalised Zipf probabilities for ranks 1..n (float64)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


_ZIPF_EXACT = 1 << 16


def _zipf_mass(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """Sum of i**-s for i in [a, b) per bin, without materialising every rank.

    Ranks below 2**16 are summed exactly; beyond, the midpoint-rule integral of
    x**-s over [a - 1/2, b - 1/2] is accurate to far better than 1e-9 relative.
    """
    head = np.concatenate([[0.0], np.cumsum(np.arange(1, _ZIPF_EXACT + 1, dtype=np.float64) ** -s)])

    def prefix(n: np.ndarray) -> np.ndarray:  # sum_{i=1}^{n-1} i**-s
        n = np.asarray(n, dtype=np.float64)
        small = np.minimum(n - 1, _ZIPF_EXACT).astype(np.int64)
        lo, hi = _ZIPF_EXACT + 0.5, np.maximum(n - 0.5, _ZIPF_EXACT + 0.5)
        tail = np.log(hi / lo) if s == 1 else (hi ** (1 - s) - lo ** (1 - s)) / (1 - s)
        return head[small] + np.where(n - 1 > _ZIPF_EXACT, tail, 0.0)

    return prefix(b) - prefix(a)


@functools.lru_cache(maxsize=256)
def spec_model(spec: WorkloadSpec, n_pages: int, page_size: int = 4096) -> DirtyModel:
    """The exact page-class model of a synthetic pattern (expected-value mode)."""
    r, span = spec.rate_pages_per_s, spec.span_pages
    classes: list[PageClass] = []
    if spec.pattern in ("uniform", "seq"):
        classes.append(PageClass(span, r / span, "sweep"))
    elif spec.pattern == "random":
        classes.append(PageClass(span, r / span))
    elif spec.pattern == "hotcold":
        cold = span - spec.hot_pages
        classes.append(PageClass(spec.hot_pages, r * spec.hot_share / spec.hot_pages))
        classes.append(PageClass(cold, r * (1 - spec.hot_share) / cold))
    elif spec.pattern == "zipf":
        # Pages of similar rank share a rate; log-spaced rank bins keep the class count small
        # while the head (where the rate falls fastest) gets fine bins.
        edges = np.unique(np.geomspace(1, span + 1, ZIPF_BINS + 1).astype(np.int64))
        edges[0], edges[-1] = 1, span + 1
        mass = _zipf_mass(edges[:-1], edges[1:], spec.s)
        mass /= mass.sum()
        for a, b, share in zip(edges[:-1], edges[1:], mass, strict=True):
            pages = float(b - a)
            classes.append(PageClass(pages, r * share / pages))
    elif spec.pattern == "idle":
        pass
    used = sum(c.pages for c in classes)
    if used < n_pages:
        classes.append(PageClass(n_pages - used, 0.0))  # never written: matters for the first pass and post-copy
    return DirtyModel(n_pages=n_pages, page_size=page_size, classes=tuple(classes),
                      source={"spec": spec.to_dict()})


def _permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x5EED]).permutation(n).astype(np.int64)


def synth_trace(text: str, memory_bytes: int, *, seconds: float = 60.0, interval_s: float = 0.5, seed: int = 0,
                page_size: int = 4096, zero_page_fraction: float = 0.0) -> Trace:
    """Generate a page-exact trace of a synthetic pattern.

    Writes are drawn per interval, all vectorised: a Poisson number of picks for
    the random patterns, a contiguous slice of the permutation or address order
    for ``uniform`` and ``seq``.
    """
    spec = parse_spec(text, memory_bytes, page_size)
    n_pages = memory_bytes // page_size
    if seconds <= 0 or interval_s <= 0:
        raise ConfigError("trace length and interval must be positive")
    n = int(round(seconds / interval_s))
    rng = np.random.default_rng(seed)
    perm = _permutation(spec.span_pages, seed) if spec.pattern in ("uniform", "zipf") else None
    weights = zipf_weights(spec.span_pages, spec.s) if spec.pattern == "zipf" else None
    lists: list[np.ndarray] = []
    pos = 0.0
    writes_per_interval = spec.rate_pages_per_s * interval_s
    for _ in range(n):
        if spec.pattern in ("uniform", "seq"):
            a, b = int(pos), int(pos + writes_per_interval)
            pos += writes_per_interval
            idx = np.arange(a, b, dtype=np.int64) % spec.span_pages
            pages = perm[idx] if perm is not None else idx
        elif spec.pattern == "idle":
            pages = np.zeros(0, dtype=np.int64)
        else:
            k = rng.poisson(writes_per_interval)
            if spec.pattern == "random":
                pages = rng.integers(0, spec.span_pages, size=k)
            elif spec.pattern == "hotcold":
                hot = rng.random(k) < spec.hot_share
                pages = np.where(hot, rng.integers(0, spec.hot_pages, size=k),
                                 rng.integers(spec.hot_pages, spec.span_pages, size=k))
            else:  # zipf
                assert perm is not None
                ranks = rng.choice(spec.span_pages, size=k, p=weights)
                pages = perm[ranks]
        lists.append(np.unique(pages))
    t = np.arange(n + 1, dtype=np.float64) * interval_s
    meta = {"hypervisor": "synthetic", "host": "", "collector": "synth", "workload": text, "seed": seed,
            "guest_memory_bytes": int(memory_bytes), "zero_page_fraction": zero_page_fraction,
            "blind_spot": "none: generated writes are exact", "interval_s": interval_s}
    return make_trace(lists, t[:-1], t[1:], n_pages=n_pages, page_size=page_size, meta=meta)
