"""nextbest: an open-source next-best-action engine for retailers."""

from __future__ import annotations

from nextbest.errors import ConfigError, DataError, InfeasibleError, NextbestError, NotFittedError

__all__ = [
    "ConfigError",
    "DataError",
    "InfeasibleError",
    "NextbestError",
    "NotFittedError",
    "__version__",
]

__version__ = "0.1.0"
