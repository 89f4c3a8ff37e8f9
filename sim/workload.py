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
Sizes (``span``, ``hot``, ``total``) are bytes with a unit or a share of the
guest's memory written ``N%`` (``hot=10%``).

This module holds the one parser of the grammar (:func:`split_spec` for the
words, :func:`parse_spec` for their meaning); ``harness/guest.py`` resolves the
same specs for a real guest through it.

Harness-only keys
-----------------
:data:`HARNESS_ONLY_KEYS` are keys only the in-guest program
(``harness/workload/miglab-load.c``) acts on. The model **accepts and ignores**
them, so one spec describes both a measured and a predicted run:

* ``total=SIZE`` / ``fill=SHARE`` (``fill=0.25`` or ``fill=25%``; give one):
  the region the guest program allocates and fills with non-zero data before
  it starts writing (default: all the guest's free memory). The model's page
  classes span the whole memory regardless; its zero pages come from a trace
  or a calibrated model, never from these keys. For ``hotcold`` the guest
  writes its cold share over the region minus the hot set, which is the
  model's ``span``: give ``span`` equal to the region to make the two agree.
* ``seed=N``: the guest program's random seed; the simulator uses the
  scenario's seed.

:data:`GUEST_ONLY_PATTERNS` (``redis``) run only in a real guest: the model
refuses them in one line (simulate them from a trace of a real run).
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
    # pattern: (required keys, optional keys) -- the keys the model acts on
    "uniform": ({"rate"}, {"span"}),
    "random": ({"rate"}, {"span"}),
    "hotcold": ({"rate", "hot"}, {"hot_share", "span"}),
    "zipf": ({"rate"}, {"s", "span"}),
    "seq": ({"rate"}, {"span"}),
    "idle": (set(), set()),
}
#: Keys only the in-guest program acts on; every synthetic pattern takes them and the model ignores them.
HARNESS_ONLY_KEYS: frozenset[str] = frozenset({"total", "fill", "seed"})
#: Patterns that only a real guest runs (their keys), resolved by ``harness.guest.parse_workload``.
GUEST_ONLY_PATTERNS: dict[str, frozenset[str]] = {
    "redis": frozenset({"keys", "value", "clients", "pipeline", "tests"}),
}
ZIPF_BINS = 48
_REQUIRED_WORDS = {"rate": "rate=R is required (pages/s, or bytes/s with a unit)", "hot": "needs hot=SIZE"}


@dataclass(frozen=True)
class WorkloadSpec:
    """A parsed ``PATTERN:key=value,...`` spec, resolved against a guest size.

    ``guest_keys`` holds the harness-only keys as given (``(key, text)`` pairs),
    for ``harness.guest`` to resolve; the model never reads them.
    """

    pattern: str
    rate_pages_per_s: float
    span_pages: int
    hot_pages: int = 0
    hot_share: float = 0.9
    s: float = 1.1
    text: str = ""
    guest_keys: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "rate_pages_per_s": self.rate_pages_per_s, "span_pages": self.span_pages,
                "hot_pages": self.hot_pages, "hot_share": self.hot_share, "s": self.s, "text": self.text}


def allowed_keys(pattern: str) -> frozenset[str]:
    """Every key ``pattern`` takes anywhere (model keys plus the harness-only ones)."""
    if pattern in GUEST_ONLY_PATTERNS:
        return GUEST_ONLY_PATTERNS[pattern]
    required, optional = PATTERNS[pattern]
    extra = {"fill"} if pattern == "idle" else HARNESS_ONLY_KEYS  # an idle guest can hold data, not a seed
    return frozenset(required | optional | extra)


def split_spec(text: str, *, where: str = "workload") -> tuple[str, dict[str, str]]:
    """The words of a spec: ``(pattern, {key: value text})``, every key checked against the grammar.

    Raises ConfigError, one line starting ``{where} {text!r}:``, for an unknown
    pattern or key, a word that is not ``key=value``, or a key given twice.
    """
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{where} {str(text)!r}: {problem}")

    pattern, _, rest = str(text).strip().partition(":")
    pattern = pattern.strip().lower()
    if pattern not in PATTERNS and pattern not in GUEST_ONLY_PATTERNS:
        raise bad(f"unknown pattern {pattern!r} (an unknown workload pattern: "
                  f"choose from {', '.join([*PATTERNS, *GUEST_ONLY_PATTERNS])})")
    allowed = allowed_keys(pattern)
    kv: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise bad(f"{item!r} is not key=value")
        if key not in allowed:
            raise bad(f"unknown key {key!r} for {pattern} (allowed: {', '.join(sorted(allowed)) or 'none'})")
        if key in kv:
            raise bad(f"key {key!r} given twice")
        kv[key] = value.strip()
    return pattern, kv


def parse_size_or_share(text: str, memory_bytes: int) -> int:
    """Bytes from a size with a unit (``64MiB``) or a share of guest memory (``10%``)."""
    t = str(text).strip()
    if t.endswith("%"):
        try:
            share = float(t[:-1])
        except ValueError:
            raise ConfigError(f"not a share of memory: {text!r}") from None
        if not 0 < share <= 100:
            raise ConfigError(f"share of memory {text!r} is outside (0%, 100%]")
        return int(memory_bytes * share / 100.0)
    return parse_size(t)


def parse_fill(text: str) -> float:
    """A share of guest memory in [0, 1], written ``0.25`` or ``25%``."""
    t = str(text).strip()
    try:
        share = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"fill={text} is not a share (0.25 or 25%)") from None
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"fill={text} is outside [0, 1]")
    return share


def parse_spec(text: str, memory_bytes: int, page_size: int = 4096, *, where: str = "workload") -> WorkloadSpec:
    """Parse and resolve a spec; raise ConfigError naming ``where`` and the spec on any problem.

    Harness-only keys are accepted and kept unread in ``guest_keys``; a
    guest-only pattern (redis) is refused in one line.
    """
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{where} {str(text)!r}: {problem}")

    pattern, kv = split_spec(text, where=where)
    if pattern in GUEST_ONLY_PATTERNS:
        raise bad(f"{pattern} runs only in a real guest; simulate it from a trace of one "
                  "(miglab trace collect --workload ...)")
    required, _optional = PATTERNS[pattern]
    for key in sorted(required - set(kv)):
        raise bad(f"{pattern} {_REQUIRED_WORDS[key]}" if key == "hot" else _REQUIRED_WORDS[key])
    n_pages = memory_bytes // page_size
    try:
        rate = parse_rate(kv["rate"], page_size)[0] if "rate" in kv else 0.0
        span_bytes = parse_size_or_share(kv["span"], memory_bytes) if "span" in kv else n_pages * page_size
        hot = parse_size_or_share(kv["hot"], memory_bytes) // page_size if "hot" in kv else 0
        hot_share = float(kv.get("hot_share", 0.9))
        s = float(kv.get("s", 1.1))
        if "fill" in kv:
            parse_fill(kv["fill"])
        if "total" in kv:
            parse_size_or_share(kv["total"], memory_bytes)
    except ConfigError as e:
        raise bad(str(e)) from None
    except ValueError:
        raise bad("bad number") from None
    span = span_bytes // page_size
    if rate < 0 or not np.isfinite(rate):
        raise bad("rate must be a non-negative number")
    if span_bytes > n_pages * page_size:
        raise bad(f"span={kv.get('span')} exceeds the guest memory ({memory_bytes >> 20} MiB)")
    if span < 1:
        raise bad("span must be at least one page")
    if pattern == "hotcold" and not 0 < hot < span:
        raise bad("hot set must be smaller than the span and at least a page")
    if not 0 <= hot_share <= 1:
        raise bad(f"hot_share={kv.get('hot_share')} is outside [0, 1]")
    if s <= 0:
        raise bad("zipf exponent s must be positive")
    if "total" in kv and "fill" in kv:
        raise bad("give total= or fill=, not both")
    guest = tuple((k, kv[k]) for k in sorted(kv) if k in HARNESS_ONLY_KEYS)
    return WorkloadSpec(pattern, rate, int(span), int(hot), hot_share, s, str(text), guest)


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
    from .inputs import check_allocation, number

    number(seconds, key="seconds", low=0, low_open=True)
    number(interval_s, key="interval_s", low=0, low_open=True)
    number(zero_page_fraction, key="zero_page_fraction", low=0, high=1)
    if memory_bytes < page_size:
        raise ConfigError(f"must be at least one page ({page_size} bytes), not {memory_bytes}", key="memory_bytes")
    n_pages = memory_bytes // page_size
    n = int(round(seconds / interval_s))
    if n < 1:
        raise ConfigError(f"an interval of {interval_s:g} s is longer than the trace ({seconds:g} s): "
                          "no interval to write", key="interval_s")
    # Estimate before spending: per interval a page array and its bookkeeping (about 200 bytes), a
    # page number (8 bytes) per write, and the permutation of the guest's pages (8 bytes a page).
    check_allocation(n * 200.0, f"{n:,} intervals", key="interval_s")
    check_allocation(8.0 * n_pages, f"a synthetic guest of {n_pages:,} pages", key="memory_bytes")
    spec = parse_spec(text, memory_bytes, page_size)
    check_allocation(n * 200.0 + 8.0 * spec.rate_pages_per_s * seconds + 8.0 * n_pages,
                     f"{n:,} intervals of {spec.rate_pages_per_s * interval_s:,.3g} writes",
                     where=f"workload spec {text!r}")
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
