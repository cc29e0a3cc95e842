"""Dropping a client's TCP connection without answering, which ASGI has no message for.

:func:`remember_connection` wraps the app so every HTTP scope carries uvicorn's request cycle (it
owns the transport); :class:`DropConnection` closes that transport instead of sending a response.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

CONNECTION = "policyflow.standins.connection"  # scope key: uvicorn's RequestResponseCycle


def remember_connection(app: ASGIApp) -> ASGIApp:
    """``app`` with uvicorn's request cycle stored in each HTTP scope (a plain function: uvicorn sees ASGI 3)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[CONNECTION] = getattr(receive, "__self__", None)  # receive is a bound method of the cycle
        await app(scope, receive, send)

    return asgi


class DropConnection(Response):
    """A "response" that closes the client's connection without sending a byte."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = scope.get(CONNECTION)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError("stand-in could not find the connection to drop (app not wrapped?)")
        transport.close()
        for _ in range(100):  # uvicorn marks the cycle disconnected on a later loop iteration
            if getattr(cycle, "disconnected", True):
                return
            await asyncio.sleep(0)
