"""Time, as one dependency: records and outcomes read it here, so tests can drive it."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """The system clock (tests pass a subclass that they move by hand)."""

    def now(self) -> datetime:
        """Now, in UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines)."""
        return time.monotonic()

    def stamp(self) -> str:
        """Now, as records write it (UTC, ISO 8601, milliseconds)."""
        return self.now().isoformat(timespec="milliseconds")
