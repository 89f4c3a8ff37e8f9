"""Small shared helpers for the notebooks: locating the repository, Pareto fronts, saving figures.

Nothing here models a migration: the notebooks build scenarios, call
:func:`sim.simulate` (directly or through :mod:`sim.sweep`) and hand the
resulting tables to these helpers to tabulate and plot.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Figure resolution for the committed PNGs: legible, and small enough to keep in git.
FIGURE_DPI = 90


def find_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The miglab checkout containing ``start`` (default: the working directory).

    Notebooks run with their own directory as the working directory under
    Jupyter, and with the caller's under papermill; their path parameters are
    relative to the repository root, which this finds either way (falling
    back to the checkout ``sim`` was imported from).
    """
    here = Path(start or Path.cwd()).resolve()
    # Then the checkout this package was imported from (an editable install), e.g. papermill run elsewhere.
    package = Path(__file__).resolve().parent.parent
    for d in (here, *here.parents, package):
        pyproject = d / "pyproject.toml"
        if pyproject.is_file() and 'name = "miglab"' in pyproject.read_text():
            return d
    raise FileNotFoundError(f"no miglab checkout (pyproject.toml naming miglab) at or above {here}")


def resolve(path: str | os.PathLike[str], root: Path) -> Path:
    """``path`` if absolute, else relative to ``root``."""
    p = Path(path)
    return p if p.is_absolute() else root / p


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows of ``df`` not dominated when minimising both ``x`` and ``y``, sorted by ``x``.

    A row is dominated when another has ``x`` and ``y`` both no larger and one
    strictly smaller. Rows with a NaN in ``x`` or ``y`` (a migration that did
    not converge) are never on the front; of several rows with the same
    ``(x, y)`` the first is kept. Along the returned front ``x`` strictly
    increases and ``y`` strictly decreases.
    """
    ok = df[np.isfinite(df[x].to_numpy(dtype=float)) & np.isfinite(df[y].to_numpy(dtype=float))]
    if ok.empty:
        return ok
    ordered = ok.sort_values([x, y], kind="mergesort")
    ys = ordered[y].to_numpy(dtype=float)
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(ys)[:-1]])
    return ordered[ys < best_before]


def dominated_by(df: pd.DataFrame, point: pd.Series | dict[str, Any], x: str, y: str) -> pd.DataFrame:
    """Rows of ``df`` that dominate ``point`` (no worse in ``x`` and ``y``, strictly better in one)."""
    px, py = float(point[x]), float(point[y])
    xs, ys = df[x].to_numpy(dtype=float), df[y].to_numpy(dtype=float)
    mask = (xs <= px) & (ys <= py) & ((xs < px) | (ys < py))
    return df[mask]


def savefig(fig: Any, out_dir: str | os.PathLike[str] | None, name: str, *, palette: bool = True) -> Path | None:
    """Write ``fig`` as ``out_dir/name.png`` atomically; return the path (None if ``out_dir`` is None).

    With ``palette`` the image is reduced to 256 colours, which makes line plots about three
    times smaller without a visible change (the figures are committed).
    """
    if out_dir is None:
        return None
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
        if palette:
            from PIL import Image

            with Image.open(tmp) as im:
                small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            small.save(tmp, format="PNG", optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp made it private; a figure is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)
    return path


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as CSV atomically (no index, 6 significant digits); return the path."""
    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def gbit(bandwidth_Bps: float) -> str:
    """A link rate as a short label: ``1 Gbit/s``, ``100 Mbit/s``."""
    bits = float(bandwidth_Bps) * 8
    if bits >= 1e9:
        return f"{bits / 1e9:g} Gbit/s"
    return f"{bits / 1e6:g} Mbit/s"


__all__ = ["find_root", "resolve", "pareto_front", "dominated_by", "savefig", "write_csv", "gbit", "FIGURE_DPI"]
