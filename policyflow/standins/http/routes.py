"""A route table: method + path template -> handler, first match wins.

Both stand-ins serve one catch-all Starlette route (so every request is logged and can be faulted
before routing) and dispatch through a table like this instead of a chain of ifs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H")

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


def compile_template(template: str) -> re.Pattern[str]:
    """``/a/{name}/b`` -> a full-match regex; ``{name}`` is one path segment, ``{name:regex}`` a custom one."""
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        parts.append(f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Match(Generic[H]):
    handler: H
    params: dict[str, str]
    template: str


@dataclass(frozen=True)
class _Route(Generic[H]):
    methods: frozenset[str]  # empty: any method
    template: str
    pattern: re.Pattern[str]
    handler: H


class RouteTable(Generic[H]):
    """Routes in the order added; ``methods`` is a space-separated list, ``*`` for any method."""

    def __init__(self) -> None:
        self._routes: list[_Route[H]] = []

    def add(self, methods: str, template: str, handler: H) -> None:
        wanted = frozenset(m.upper() for m in methods.split() if m != "*")
        self._routes.append(_Route(wanted, template, compile_template(template), handler))

    def match(self, method: str, path: str) -> Match[H] | None:
        for route in self._routes:
            if route.methods and method.upper() not in route.methods:
                continue
            found = route.pattern.fullmatch(path)
            if found is not None:
                params = {k: v for k, v in found.groupdict().items() if v is not None}
                return Match(route.handler, params, route.template)
        return None

    def __iter__(self) -> Iterator[tuple[frozenset[str], str]]:
        return ((route.methods, route.template) for route in self._routes)
