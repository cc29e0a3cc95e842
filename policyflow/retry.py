"""The one retry policy: what every step, record write and reconnect does after a transient error.

Exponential backoff from ``retry_delay`` with jitter, never sooner than the server's ``Retry-After``,
at most ``retries`` more tries; anything that is not a :class:`TransientError` fails at once. Built
once from the settings (``bootstrap``) and handed to whoever retries, so tests shorten it in one place.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from policyflow.domain.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to try again after a transient error."""

    retries: int = 4
    delay: float = 2.0
    #: The delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.5
    #: No wait is longer than this, whatever the backoff or the server asks.
    max_delay: float = 60.0

    def delay_for(self, attempt: int, error: BaseException, *, chance: float = 0.5) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0); ``chance`` in [0, 1)
        places the jitter (0.5: none)."""
        backoff = self.delay * 2**attempt * (1 - self.jitter + 2 * self.jitter * chance)
        retry_after: float = error.retry_after if isinstance(error, TransientError) and error.retry_after else 0.0
        return float(min(max(backoff, retry_after), self.max_delay))

    def _wait_after(self, attempt: int, error: TransientError, *, what: str, log: logging.Logger) -> float:
        """The wait before the next try, said in the log; ``error`` again when the tries are used up."""
        if attempt >= self.retries:
            raise error
        wait = self.delay_for(attempt, error, chance=random.random())  # noqa: S311 - jitter, not crypto
        log.warning("%s: %s; try %d of %d in %.1f s", what, error, attempt + 2, self.retries + 1, wait)
        return wait

    async def run(self, call: Callable[[], Awaitable[T]], *, what: str, log: logging.Logger) -> T:
        """``await call()``, tried again after a transient error as this policy says."""
        attempt = 0
        while True:
            try:
                return await call()
            except TransientError as error:
                await asyncio.sleep(self._wait_after(attempt, error, what=what, log=log))
                attempt += 1

    def run_sync(self, call: Callable[[], T], *, what: str, log: logging.Logger) -> T:
        """``call()`` (blocking code: the Kubernetes client), tried again as :meth:`run`."""
        attempt = 0
        while True:
            try:
                return call()
            except TransientError as error:
                time.sleep(self._wait_after(attempt, error, what=what, log=log))
                attempt += 1

