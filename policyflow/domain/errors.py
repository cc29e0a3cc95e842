"""Typed errors. The retry policy reads only the class: transient ones are retried, permanent ones not.

Every message is one line that says what is wrong and what to do about it, and never carries a secret.
"""

from __future__ import annotations

import re


class PolicyflowError(Exception):
    """Base of every error policyflow raises on purpose."""


class ConfigError(PolicyflowError):
    """Bad settings or routing file: stop before any work (exit status 2)."""


class TransientError(PolicyflowError):
    """Worth trying again: connection errors, timeouts, 429, 5xx, 409.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(PolicyflowError):
    """Trying again will not help until someone fixes something (the message says what)."""


class NotFoundError(PermanentError):
    """The object is gone (404)."""


class UnknownWorkflowError(PermanentError):
    """Testkube has no TestWorkflow by that name."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` safe to put in a one-line message: control characters (newlines included) shown as
    escapes, and at most ``limit`` characters (a value from a file or a server can be huge)."""
    shown = _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def parse_retry_after(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds form); None when absent or a date."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def is_transient(error: BaseException) -> bool:
    """Whether the retry policy should try ``error`` again."""
    return isinstance(error, TransientError)
