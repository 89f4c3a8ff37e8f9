"""TEMPORARY bridge for the old ``harness/cli.py``: delete this file when ``harness/cli/`` is merged.

The old parser imports every module in its ``VERB_MODULES`` and calls
``register(groups)``. The verbs now live in ``harness/cli/validate.py`` and
``harness/cli/calibrate_host.py`` (``add_arguments`` / ``run``), but on this
branch ``harness.cli`` is still the single module ``harness/cli.py``, so its
``__path__`` is pointed at the ``harness/cli/`` directory to make those two
importable as its submodules.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_VERBS = (("validate", "harness.cli.validate"), ("calibrate-host", "harness.cli.calibrate_host"))


def register(groups: dict[str, Any]) -> None:
    """``miglab validate`` and ``miglab calibrate-host``, built from their verb modules."""
    import harness.cli

    if not hasattr(harness.cli, "__path__"):
        harness.cli.__path__ = [str(Path(harness.cli.__file__).with_suffix(""))]  # type: ignore[attr-defined]
    for name, module_name in _VERBS:
        module = importlib.import_module(module_name)
        p = groups[""].add_parser(name, help=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
