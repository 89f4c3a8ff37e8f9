"""One exception hierarchy for everything miglab reports to a user.

The CLI turns any :class:`MiglabError` into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MiglabError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(MiglabError, ValueError):
    """A scenario, flag, unit or spec is malformed or out of range."""


class TraceError(MiglabError):
    """A trace file is missing, malformed, truncated or inconsistent."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
