"""The Prefect API the tests run against: Prefect's own server app, unchanged, except that its 503
answers say when to try again.

On SQLite every write takes the one database lock; two at once and one is answered 503 ("database
is locked"), which Prefect's client retries after 2, 4, 8 s unless the answer carries a
``Retry-After``. The tests make such collisions all the time (a chain's task runs, the task-run
recorder, logs and events write together), so most of the suite's time used to go to those
back-offs. Here a 503 says ``Retry-After: 0.1..0.5`` (random, so colliding clients do not collide
again), and the client retries at once; what the server does is otherwise Prefect's.

Served by uvicorn (``--factory tests.prefect_app:create_app``), from ``tests/conftest.py``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RetrySoon:
    """ASGI middleware: a 503 without ``Retry-After`` gets a short one."""

    def __init__(self, app: ASGIApp, low: float = 0.1, high: float = 0.5) -> None:
        self.app = app
        self.low, self.high = low, high

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers") or [])
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    seconds = random.uniform(self.low, self.high)
                    headers.append((b"retry-after", f"{seconds:.2f}".encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


def create_app() -> RetrySoon:
    """Prefect's app as ``prefect server start`` and the test harness build it (the flags come from
    the environment: ``PREFECT__SERVER_EPHEMERAL``, ``PREFECT__SERVER_FINAL``...)."""
    from prefect.server.api.server import create_app as prefect_app

    return RetrySoon(prefect_app())
