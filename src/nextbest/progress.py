"""Progress reporting for long work, silent unless a front end plugs a reporter in.

Library code calls ``reporter.start(total, description)``, ``reporter.advance(n)`` and
``reporter.finish()``; the CLI passes a reporter that draws rich progress bars.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullReporter", "Reporter"]


class Reporter(Protocol):
    """What long-running work tells the outside world about its progress."""

    def start(self, total: float | None, description: str) -> None: ...

    def advance(self, amount: float = 1) -> None: ...

    def finish(self) -> None: ...


class NullReporter:
    """The default reporter: does nothing."""

    def start(self, total: float | None, description: str) -> None:
        return None

    def advance(self, amount: float = 1) -> None:
        return None

    def finish(self) -> None:
        return None
