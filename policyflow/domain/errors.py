"""Typed errors. Callers branch on the class, never on the message.

Three questions a caller asks of an error, each answered by the class alone:

- *Try again?* :class:`TransientError` yes (connection trouble, timeouts, 409, 429, 5xx), with at
  least the server's ``retry_after``; :class:`PermanentError` no.
- *Whose fault?* :class:`ViolationError` is the violation's own (its routed workflow does not exist,
  Testkube refuses its request): recorded on the report as ``error``, tried again when its route
  changes. :class:`OutageError` is not (policyflow refused: the token, RBAC, TLS; or a system that
  stopped answering): nothing is recorded, the cycle stops early and the next one tests the
  violation once the cause is fixed. Other permanent errors are recorded as ``error``, as before.
- *What exactly?* The few outcomes a caller acts on have classes of their own: a lost claim, a
  report whose annotations are full, an execution that already finished, a missing object.

API errors carry the HTTP ``status``, the server's ``reason`` and ``causes`` and ``retry_after``.
Every message is one line that says what is wrong and what to do, and never carries a secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class PolicyflowError(Exception):
    """Base of every error policyflow raises on purpose."""


class ConfigError(PolicyflowError):
    """Bad settings or routing file: stop before any work (exit status 2)."""


class ApiError(PolicyflowError):
    """An external system (Kubernetes, Testkube) answered with an error, or not at all."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "",
                 causes: Sequence[str] = (), retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.causes = tuple(causes)
        self.retry_after = retry_after


class TransientError(ApiError):
    """Worth trying again: connection errors, timeouts, 429, 5xx, 409 (``retry_after``: the
    server's ``Retry-After`` in seconds, when it sent one)."""


class ConflictError(TransientError):
    """409 Conflict: the object changed since it was read (a conditional write lost the race)."""


class PermanentError(ApiError):
    """Trying again will not help until someone fixes something (the message says what)."""


class NotFoundError(PermanentError):
    """The object is gone (404)."""


class OutageError(PermanentError):
    """Not the violation's fault: policyflow was refused, or a system stopped answering. Nothing is
    recorded; the next cycle tries again once the cause is fixed."""


class RefusedError(OutageError):
    """policyflow itself was refused (credentials, RBAC, TLS)."""


class UnreachableError(OutageError):
    """A system did not answer for longer than policyflow waits (``await_unreachable``)."""


class ForbiddenError(RefusedError):
    """RBAC (or Testkube's role) forbids a verb on a resource (403)."""


class UnauthorizedError(RefusedError):
    """The credentials were rejected (401)."""


class ViolationError(PermanentError):
    """The violation's own problem: recorded on it as ``error``."""


class UnknownWorkflowError(ViolationError):
    """Testkube has no TestWorkflow by that name."""


class AmbiguousTargetError(ViolationError):
    """A run's parameters name more than one failing resource."""


class AnnotationsFullError(PermanentError):
    """The report's annotations would pass Kubernetes' 256 KiB limit (422 ``Too long``)."""


class AlreadyFinishedError(PermanentError):
    """The execution has already finished (an abort came too late)."""


class ClaimLostError(PolicyflowError):
    """Another policyflow process claimed this episode first; it runs the test."""


class ReportGoneError(PolicyflowError):
    """The report was deleted between fetch-violation and the claim: its failure went away before
    any test started (Kyverno deletes a report when its last failure is fixed)."""


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


def is_violations_own(error: BaseException) -> bool:
    """Whether ``error`` is the violation's own problem (recorded), rather than policyflow's (not)."""
    return isinstance(error, ViolationError)


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` would fail every other chain the same way: policyflow refused, a system
    unreachable for too long, or no answer at all after the retries (no HTTP status)."""
    return isinstance(error, OutageError) or (isinstance(error, TransientError) and error.status is None)
