"""The Prefect API the tests run against: Prefect's own server app, unchanged, except that its 503
answers say when to try again.

On SQLite every write takes the one database lock; two at once and one is answered 503 ("database
is locked"), which Prefect's client retries after 2, 4, 8, 16, 32 s unless the answer carries a
``Retry-After``. The tests make such collisions all the time (a chain's task runs, the task-run
recorder, logs and events write together), and most of the suite's time used to go to those
back-offs. Here a 503 says ``Retry-After``: the same exponential back-off, but from 0.25 s instead of
2 s (0.25, 0.5, 1, 2... for the same request answered 503 again, with jitter, at most 2 s), so the
client retries at once and still backs off when the database stays busy. What the server does is
otherwise Prefect's.

Served by uvicorn (``--factory tests.prefect_app:create_app``), from ``tests/conftest.py``.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RetrySoon:
    """ASGI middleware: a 503 without ``Retry-After`` gets one, doubling from ``first`` seconds for a
    request (method, path, query, body) answered 503 again within ``memory`` seconds, at most
    ``longest``. The memory is short on purpose: many different calls send identical bodies (a
    concurrency slot, a filter), and a long memory made each new one wait out the others' back-off
    (measured: the suite went from 11 to 27 minutes)."""

    def __init__(self, app: ASGIApp, first: float = 0.25, longest: float = 2.0, memory: float = 3.0) -> None:
        self.app = app
        self.first, self.longest, self.memory = first, longest, memory
        self._refused: dict[bytes, tuple[int, float]] = {}  # request -> (503s so far, when the last)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = hashlib.sha256()

        async def receive_and_remember() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.update(message.get("body", b""))
            return message

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers") or [])
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    request = b"%s %s?%s %s" % (scope["method"].encode(), scope["path"].encode(),
                                                 scope.get("query_string", b""), body.digest())
                    headers.append((b"retry-after", f"{self._delay(request):.2f}".encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive_and_remember, send_with_retry_after)

    def _delay(self, request: bytes) -> float:
        now = time.monotonic()
        if len(self._refused) > 10_000:
            self._refused = {k: v for k, v in self._refused.items() if now - v[1] < self.memory}
        count, last = self._refused.get(request, (0, now))
        count = count + 1 if now - last < self.memory else 1
        self._refused[request] = (count, now)
        return min(self.first * 2 ** (count - 1), self.longest) * random.uniform(1.0, 1.5)


def create_app() -> RetrySoon:
    """Prefect's app as ``prefect server start`` and the test harness build it (the flags come from
    the environment: ``PREFECT__SERVER_EPHEMERAL``, ``PREFECT__SERVER_FINAL``...)."""
    from prefect.server.api.server import create_app as prefect_app

    return RetrySoon(prefect_app())
