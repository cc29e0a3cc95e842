"""The log of every request a stand-in received, so tests can assert on what a client sent and how often."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it (recorded before faults, authentication and routing)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    raw: bytes = b""
    query_string: str = ""

    @property
    def raw_body(self) -> bytes:
        """Alias of :attr:`raw`."""
        return self.raw


class RequestLog:
    """Thread-safe: requests arrive on the server thread while tests read on theirs.

    ``first_values`` picks which value of a repeated query parameter :attr:`RecordedRequest.query`
    keeps: the first (what Go's ``url.Values.Get`` and fasthttp read) or the last (Starlette's dict).
    """

    def __init__(self, *, first_values: bool) -> None:
        self._first_values = first_values
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    def record(self, request: Request, raw: bytes) -> RecordedRequest:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=query_values(request, first=self._first_values),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw=raw,
            query_string=request.url.query,
        )
        with self._lock:
            self._requests.append(recorded)
        return recorded

    def snapshot(self) -> list[RecordedRequest]:
        """A copy: the server may append while the caller iterates."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


def query_values(request: Request, *, first: bool) -> dict[str, str]:
    """One value per query parameter: the first one when ``first``, else the last (Starlette's choice)."""
    if not first:
        return dict(request.query_params)
    query: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, value)
    return query
