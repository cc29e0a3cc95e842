"""Injected faults: the next N matching requests get a chosen answer, a delay or a dropped connection.

The matching and counting are the same for both stand-ins; what a fault's answer looks like is each
stand-in's own (a Kubernetes Status or a Testkube problem body), so :class:`Fault` carries only the
test's wishes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """``status`` 0 drops the connection; ``after`` answers only once the real operation has run."""

    method: str  # upper case, or "*"
    path: re.Pattern[str]  # searched in the URL path
    status: int
    remaining: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    after: bool = False
    query: re.Pattern[str] | None = None  # searched in the raw query string

    def matches(self, method: str, path: str, query_string: str) -> bool:
        return (
            self.method in ("*", method)
            and self.path.search(path) is not None
            and (self.query is None or self.query.search(query_string) is not None)
        )


class FaultPlan:
    """The faults waiting to fire, first-in first-out; each fires ``times`` times, then is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        *,
        method: str,
        path: str,
        status: int,
        times: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        after: bool = False,
        query: str | None = None,
    ) -> Fault:
        fault = Fault(
            method=method.upper(),
            path=re.compile(path),
            status=status,
            remaining=times,
            body=body,
            headers=dict(headers or {}),
            delay=delay,
            after=after,
            query=re.compile(query) if query is not None else None,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str, query_string: str = "") -> Fault | None:
        """The first fault matching this request, counted as fired (None when none matches)."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, query_string):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
