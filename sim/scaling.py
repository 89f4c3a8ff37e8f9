"""Which scaling law a workload follows, chosen from calibrated models of it at two or more guest sizes.

:meth:`sim.model.DirtyModel.rescale` moves a model to another size under
``absolute`` (the hot classes keep their page counts; a 32 MiB hot set stays
32 MiB) or ``proportional`` (every class grows with memory). Which one a real
workload follows is a fact about the workload, so it is decided by data:
:func:`choose_law` rescales each smaller size's model to every bigger size
under both laws and compares the predicted working-set curve D(T) with the
one measured there; the law with the smaller median relative error wins, and
:attr:`LawChoice.line` is the report line that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .model import DirtyModel

LAWS: tuple[str, ...] = ("absolute", "proportional")
#: Windows (s) the curves are compared at when the caller gives none: the rounds of a migration.
DEFAULT_WINDOWS_S = np.geomspace(0.05, 30.0, 24)


@dataclass(frozen=True)
class LawChoice:
    """The law the data supports, each law's error (median relative D(T) error over pairs and windows)."""

    law: str
    errors: dict[str, float]
    pairs: tuple[tuple[int, int], ...]  # (from_bytes, to_bytes) compared
    name: str = ""

    @property
    def line(self) -> str:
        """``hotfixed: scaling law absolute (absolute 3.1 % off, proportional 61 % off; 1 -> 4, 16 GiB)``."""
        sizes = sorted({s for p in self.pairs for s in p})
        errs = ", ".join(f"{k} {100 * v:.1f} % off" for k, v in self.errors.items())
        what = f"{self.name}: " if self.name else ""
        return (f"{what}scaling law {self.law} ({errs}; D(T) predicted across "
                f"{', '.join(f'{s / 2**30:g}' for s in sizes)} GiB)")


def curve_error(predicted: DirtyModel, measured: DirtyModel, windows_s: np.ndarray) -> float:
    """Median relative error of ``predicted``'s D(T) against ``measured``'s over ``windows_s``."""
    p = np.asarray(predicted.working_set(windows_s), dtype=np.float64)
    m = np.asarray(measured.working_set(windows_s), dtype=np.float64)
    return float(np.median(np.abs(p - m) / np.maximum(m, 1.0)))


def choose_law(models: Sequence[DirtyModel], *, windows_s: np.ndarray | None = None, name: str = "") -> LawChoice:
    """The scaling law that best carries each size's model to the bigger sizes (needs >= 2 sizes).

    Ties go to ``absolute`` (the default law and the simpler claim).
    """
    by_size = {m.memory_bytes: m for m in models}
    if len(by_size) < 2:
        raise ConfigError(f"choosing a scaling law needs models at two or more guest sizes, not {len(by_size)}")
    w = DEFAULT_WINDOWS_S if windows_s is None else np.asarray(windows_s, dtype=np.float64)
    sizes = sorted(by_size)
    pairs = tuple((a, b) for i, a in enumerate(sizes) for b in sizes[i + 1:])
    errors = {}
    for law in LAWS:
        errs = []
        for a, b in pairs:
            try:
                errs.append(curve_error(by_size[a].rescale(b, law), by_size[b], w))
            except ConfigError:
                errs.append(np.inf)
        errors[law] = float(np.median(errs))
    law = min(LAWS, key=lambda k: (errors[k], LAWS.index(k)))
    return LawChoice(law, errors, pairs, name)
