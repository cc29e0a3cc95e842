"""How the Go agent writes values: ``time.Time``, ``time.Duration``, ``strconv.Atoi``, Mongo ObjectIDs and
RFC 7807 problem bodies, so the stand-in's JSON reads like the real agent's byte for byte."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Go serializes an unset ``time.Time`` (``omitempty`` never omits a struct)."""


def problem(status: int, detail: str) -> dict[str, Any]:
    """The agent's RFC 7807 error body (``pkg/problem/problem.go``); title is Go's ``http.StatusText``."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = ""  # Go's StatusText is "" for codes it does not know
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def go_time(value: datetime | None) -> str:
    """Format like Go's ``time.Time`` JSON (RFC 3339, trailing zeros trimmed) after a Mongo round trip.

    Mongo keeps milliseconds, so at most three fraction digits survive. ``None`` is the zero time.
    """
    if value is None:
        return ZERO_TIME
    value = value.astimezone(UTC)
    fraction = f"{value.microsecond // 1000:03d}".rstrip("0")
    stamp = value.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def _fraction(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    decimals = f"{rest:0{digits}d}".rstrip("0")
    return f"{whole}.{decimals}" if decimals else str(whole)


def go_duration(nanoseconds: int) -> str:
    """Format a duration exactly like Go's ``time.Duration.String()`` (``1.5s``, ``1m2.5s``, ``1h0m0s``)."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    ns = abs(nanoseconds)
    if ns < 1_000:
        text = f"{ns}ns"
    elif ns < 1_000_000:
        text = _fraction(ns, 3) + "µs"
    elif ns < 1_000_000_000:
        text = _fraction(ns, 6) + "ms"
    else:
        whole_seconds = ns // 1_000_000_000
        text = _fraction(ns % 60_000_000_000, 9) + "s"
        minutes = whole_seconds // 60
        if minutes:
            hours = minutes // 60
            text = (f"{hours}h" if hours else "") + f"{minutes % 60}m" + text
    return sign + text


def go_atoi(value: str | None) -> int | None:
    """``strconv.Atoi``: an optional sign and digits, nothing else."""
    if value is None or not re.fullmatch(r"[+-]?[0-9]+", value):
        return None
    return int(value)


def now() -> datetime:
    """Now, truncated to milliseconds like every time read back from Mongo, so durations add up exactly."""
    current = datetime.now(UTC)
    return current.replace(microsecond=current.microsecond // 1000 * 1000)


def object_id(counter: Iterator[int]) -> str:
    """A Mongo ObjectID: 4-byte timestamp, 5 random bytes, 3-byte counter (24 hex chars)."""
    return f"{int(time.time()):08x}{secrets.token_hex(5)}{next(counter) % 0xFFFFFF:06x}"
