"""A local Prefect server (``prefect server start``: the API, the UI, and the services such as the
scheduler) in a subprocess, for the demo and the tests that need schedules or the UI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPrefectServer:
    """``prefect server start`` on loopback with its own PREFECT_HOME: SQLite (the embedded default) in
    that home, or the database at ``database_url`` (e.g. ``postgresql+asyncpg://user:pw@host:port/db``)."""

    def __init__(self, home: Path, *, port: int | None = None, log: Path | None = None,
                 scheduler_seconds: float = 2.0, database_url: str | None = None) -> None:
        self.home = home
        self.database_url = database_url
        self.port = port or _free_port()
        self.log_path = log or home / "server.log"
        self._scheduler_seconds = scheduler_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The UI's address."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def start(self, timeout: float = 120.0) -> LocalPrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_UI_API_URL": self.api_url,
            # New deployments get their scheduled runs within seconds, not a minute.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(self._scheduler_seconds),
        })
        if self.database_url is not None:
            # Prefect 3 reads PREFECT_SERVER_DATABASE_CONNECTION_URL first, then its old alias
            # PREFECT_API_DATABASE_CONNECTION_URL: set both so that neither can come from outside.
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C or SIGTERM to our process group must not kill the server
            # before the runner has paused its deployments through it; stop() ends it.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prefect server exited early; see {self.log_path}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
