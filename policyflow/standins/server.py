"""Run an ASGI app on a loopback port in a background thread.

Both stand-ins are Starlette apps served by uvicorn (both already come with Prefect), so tests and
the demo talk to them over real HTTP exactly as policyflow talks to the real servers.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn


class LoopbackServer:
    """An ASGI app listening on ``127.0.0.1:<port>`` (port 0 picks a free one) until :meth:`stop`."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._bind(port)

    def _bind(self, port: int) -> None:
        """A listening socket and a server for it (again on the same port after :meth:`stop`)."""
        # IPPROTO_TCP matters: with it asyncio turns on TCP_NODELAY for accepted connections; without it
        # every response on a kept-alive connection waits ~40 ms for Nagle + delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self._host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Watches are long-lived streams; keep-alive must not cut them.
            timeout_keep_alive=30,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> LoopbackServer:
        """Serve from a background thread; after :meth:`stop`, serve again on the same port (an
        outage that ends, with whatever the app keeps)."""
        if self._sock.fileno() == -1:
            self._bind(self.port)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
            loop.close()

        self._thread = threading.Thread(target=run, name=f"standin-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"stand-in on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Standin:
    """What every stand-in is: started by :meth:`start`, stopped by :meth:`stop`, and usable as a
    context manager that does both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
