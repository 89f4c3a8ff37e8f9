"""Calibrated workload model: page classes with per-page dirty rates.

The working-set curve D(T), the number of distinct pages dirtied in a window
of length T, is modelled as a sum of page classes::

    D(T) = sum_k D_k(T)
    poisson class: D_k(T) = n_k * (1 - exp(-lambda_k * T))   (random rewrites)
    sweep class:   D_k(T) = n_k * min(1, lambda_k * T)       (each page once per cycle)

``n_k`` is a page count and ``lambda_k`` writes per page per second. The model
is saved as JSON (``format: miglab-model``). :meth:`DirtyModel.rescale` moves
it to another guest size under a named scaling law:

* ``absolute``: classes other than the largest (the "cold" remainder) keep
  their page counts and rates; the remainder absorbs the size change. A hot
  set of 48 MiB stays 48 MiB in a 1 TiB guest.
* ``proportional``: every class scales with memory at unchanged per-page
  rates, so the total dirty rate grows in proportion too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .atomic import atomic_open
from .errors import ConfigError
from .units import PAGE_SIZE_BYTES

MODEL_FORMAT = "miglab-model"
MODEL_VERSION = 1
ClassKind = Literal["poisson", "sweep"]


@dataclass(frozen=True)
class PageClass:
    """``pages`` pages, each written ``rate_per_page_per_s`` times per second."""

    pages: float
    rate_per_page_per_s: float
    kind: ClassKind = "poisson"

    def dirtied(self, window_s: np.ndarray | float) -> np.ndarray | float:
        """Expected distinct pages of this class dirtied in a window."""
        x = self.rate_per_page_per_s * np.asarray(window_s, dtype=np.float64)
        if self.kind == "sweep":
            return self.pages * np.minimum(1.0, x)
        return self.pages * -np.expm1(-x)


@dataclass(frozen=True)
class DirtyModel:
    """A working-set model of one workload on a guest of ``n_pages`` pages."""

    n_pages: int
    page_size: int = PAGE_SIZE_BYTES
    classes: tuple[PageClass, ...] = ()
    zero_page_fraction: float = 0.0
    fit: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return self.n_pages * self.page_size

    @property
    def write_rate_pages_per_s(self) -> float:
        """Total writes per second (counting repeats)."""
        return float(sum(c.pages * c.rate_per_page_per_s for c in self.classes))

    def working_set(self, window_s: np.ndarray | float) -> np.ndarray | float:
        """D(T): expected distinct pages dirtied in a window of ``window_s`` seconds."""
        w = np.asarray(window_s, dtype=np.float64)
        return sum((c.dirtied(w) for c in self.classes), np.zeros_like(w))

    def rescale(self, memory_bytes: int, law: str = "absolute") -> DirtyModel:
        """Return the model for a guest of ``memory_bytes`` under scaling ``law``."""
        n_new = int(memory_bytes // self.page_size)
        if n_new <= 0:
            raise ConfigError(f"cannot rescale to {memory_bytes} bytes")
        if n_new == self.n_pages or not self.classes:
            return replace(self, n_pages=n_new)
        factor = n_new / self.n_pages
        if law == "proportional":
            classes = tuple(replace(c, pages=c.pages * factor) for c in self.classes)
        elif law == "absolute":
            big = max(range(len(self.classes)), key=lambda i: self.classes[i].pages)
            fixed = sum(c.pages for i, c in enumerate(self.classes) if i != big)
            if fixed > n_new:
                raise ConfigError(f"cannot shrink to {memory_bytes} bytes under 'absolute': the fixed classes "
                                  f"alone need {int(fixed)} pages")
            old = self.classes[big]
            remainder = n_new - fixed
            # Keep the cold remainder's total write rate when it grows; its pages just get colder.
            rate = old.rate_per_page_per_s * old.pages / remainder if remainder > 0 else 0.0
            classes = tuple(replace(c, pages=remainder, rate_per_page_per_s=rate) if i == big else c
                            for i, c in enumerate(self.classes))
        else:
            raise ConfigError(f"unknown scaling law {law!r} (choose absolute or proportional)")
        return replace(self, n_pages=n_new, classes=classes,
                       source={**self.source, "rescaled_from_pages": self.n_pages, "scaling": law})

    # -- persistence ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = [asdict(c) for c in self.classes]
        return {"format": MODEL_FORMAT, "version": MODEL_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model") -> DirtyModel:
        """Build from the JSON form; every value is checked (finite, in range, right type), and a
        refusal names ``where`` and the key (``classes[2].rate_per_page_per_s``)."""
        from .inputs import number, whole

        if d.get("format") != MODEL_FORMAT:
            raise ConfigError(f"not a miglab model (format is {d.get('format')!r})", where=where, key="format")
        if d.get("version") != MODEL_VERSION:
            raise ConfigError(f"model version {d.get('version')!r} is not supported", where=where, key="version")
        for key in ("n_pages", "page_size", "classes"):
            if key not in d:
                raise ConfigError("missing", where=where, key=key)
        n_pages = whole(d["n_pages"], where=where, key="n_pages", low=1, high=2**52)
        page_size = whole(d["page_size"], where=where, key="page_size", low=512, high=2**30)
        if page_size & (page_size - 1):
            raise ConfigError(f"must be a power of two, not {page_size}", where=where, key="page_size")
        zpf = number(d.get("zero_page_fraction", 0.0), where=where, key="zero_page_fraction", low=0, high=1)
        if not isinstance(d["classes"], list):
            raise ConfigError("must be a list of page classes", where=where, key="classes")
        classes = []
        for i, c in enumerate(d["classes"]):
            key = f"classes[{i}]"
            if not isinstance(c, dict):
                raise ConfigError("must be an object", where=where, key=key)
            for k in ("pages", "rate_per_page_per_s"):
                if k not in c:
                    raise ConfigError("missing", where=where, key=f"{key}.{k}")
            kind = c.get("kind", "poisson")
            if kind not in ("poisson", "sweep"):
                raise ConfigError(f"unknown kind {kind!r} (choose poisson or sweep)", where=where, key=f"{key}.kind")
            classes.append(PageClass(number(c["pages"], where=where, key=f"{key}.pages", low=0),
                                     number(c["rate_per_page_per_s"], where=where,
                                            key=f"{key}.rate_per_page_per_s", low=0), kind))
        for key in ("fit", "source"):
            if not isinstance(d.get(key, {}), dict):
                raise ConfigError("must be an object", where=where, key=key)
        m = cls(n_pages, page_size, tuple(classes), zpf, dict(d.get("fit", {})), dict(d.get("source", {})))
        if sum(c.pages for c in m.classes) > m.n_pages * (1 + 1e-9):
            raise ConfigError(f"page classes do not fit in {m.n_pages} pages", where=where, key="classes")
        return m

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON atomically."""
        with atomic_open(path) as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DirtyModel:
        from .scenario import load_json

        d = load_json(str(path))
        if not isinstance(d, dict):
            raise ConfigError("not a miglab model (not a JSON object)", where=path)
        return cls.from_dict(d, str(path))
