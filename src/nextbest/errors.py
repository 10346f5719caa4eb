"""Exceptions raised by nextbest.

Every error nextbest raises on purpose derives from one root, so a caller can catch them all::

    NextbestError
     +-- ConfigError       a workspace or its nextbest.toml is missing or wrong
     +-- DataError         input data cannot be read or does not meet the contract
     +-- NotFittedError    a model was used before it was fitted
     +-- InfeasibleError   an allocation problem has no solution

Messages say what was expected, what was received and what to do about it.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "InfeasibleError", "NextbestError", "NotFittedError"]


class NextbestError(Exception):
    """Root of every error nextbest raises on purpose."""


class ConfigError(NextbestError):
    """A workspace or its configuration is missing, malformed or contradictory."""


class DataError(NextbestError):
    """Input data cannot be read, or a whole file breaks the data contract."""


class NotFittedError(NextbestError):
    """A model was asked for a prediction before it was fitted."""


class InfeasibleError(NextbestError):
    """An optimisation problem has no feasible solution."""
