"""The errors of the Kubernetes client: one class per meaningful answer, each carrying the HTTP
status, the ``Status`` object's reason and causes, and Retry-After, so callers branch on the class."""

from __future__ import annotations

import json
from typing import Any

from policyflow.domain.errors import (
    AnnotationsFullError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnauthorizedError,
    parse_retry_after,
)


class KubeError(PermanentError):
    """A request the cluster refused for good (the message says what to fix)."""


class KubeUnavailable(TransientError):
    """The cluster did not answer, or answered with a retryable status."""


class WatchExpired(KubeError):
    """410 Gone on a watch: the resourceVersion is older than the server keeps; list again."""


class ContinueExpired(KubeError):
    """410 on a LIST continue token: list again from the start."""


class AlreadyExists(KubeError):
    """409 AlreadyExists on a create."""


def _status_of(raw: bytes) -> tuple[str, str, tuple[str, ...]]:
    """Message, reason and causes of a ``Status`` body (best effort: a proxy may answer anything)."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return raw[:200].decode("utf-8", "replace").strip(), "", ()
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    causes = tuple(
        f"{c.get('field', '')}: {c.get('message', '')}".strip(": ")
        for c in (details or {}).get("causes") or [] if isinstance(c, dict)
    )
    return str(body.get("message", "")), str(body.get("reason", "")), causes


def error_for(method: str, path: str, status: int, raw: bytes, retry_after: str | None, what: str) -> Exception:
    message, reason, causes = _status_of(raw)
    where = f"{method} {path}"
    fields: dict[str, Any] = {"status": status, "reason": reason, "causes": causes}
    if status == 401:
        return UnauthorizedError(
            f"the cluster rejected policyflow's credentials (401) on {where}: "
            "check the kubeconfig user or the service account token", **fields
        )
    if status == 403:
        return ForbiddenError(
            f"RBAC forbids {what or where}: {message or 'forbidden'}; grant it in policyflow's ClusterRole", **fields
        )
    if status == 404:
        return NotFoundError(f"not found: {where}" + (f" ({message})" if message else ""), **fields)
    if status == 410 and "continue" in message:
        return ContinueExpired(f"{where}: {message}", **fields)
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(f"{where}: {message}", **fields)
    if status == 409:
        return ConflictError(f"cluster answered 409 Conflict on {where}: {message}", **fields)
    if (status == 422 and any(c.startswith("metadata.annotations") and "Too long" in c for c in causes)) or (
        status == 422 and "metadata.annotations" in message and "Too long" in message
    ):
        return AnnotationsFullError(f"{where}: the annotations would pass 256 KiB ({message})", **fields)
    if status == 429 or status >= 500:
        return KubeUnavailable(f"cluster answered {status} on {where}: {message or reason}",
                               retry_after=parse_retry_after(retry_after), **fields)
    return KubeError(f"cluster refused {where} ({status} {reason}): {message}", **fields)
