"""miglab's simulator: trace format, workload models and a SimPy model of live migration.

The one entry point that sweeps, notebooks, the CLI and validation all call is
:func:`simulate`::

    from sim import Scenario, simulate
    result = simulate(Scenario())
    print(result.downtime_s, result.bytes_sent)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ConfigError, MiglabError, TraceError  # noqa: E402
from .scenario import Host, Link, Scenario, Strategy, Workload  # noqa: E402

__all__ = [
    "__version__", "ConfigError", "MiglabError", "TraceError",
    "Host", "Link", "Scenario", "Strategy", "Workload",
    "simulate", "Result",
]


def __getattr__(name: str):  # lazy: importing sim.trace on a FreeBSD host must not pull in SimPy/pandas
    if name in ("simulate", "Result"):
        from . import engine, result

        return {"simulate": engine.simulate, "Result": result.Result}[name]
    raise AttributeError(name)
