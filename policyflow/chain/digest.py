"""collect-digest: why a test that did not pass failed, read from Testkube, for the record and its sinks.

Reading it is a courtesy: the test's outcome is already decided, so nothing here may change or
delay it beyond the retries. Whatever Testkube does (a 404, 5xx after the retries, a log too large,
no answer), the digest is still made and says in ``log_note`` what could not be read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from policyflow.clients.testkube import LogText, TestkubeClient
from policyflow.domain.digest import FailureDigest, digest_of
from policyflow.domain.errors import ApiError, NotFoundError
from policyflow.domain.testrun import ExecutionDetail
from policyflow.retry import RetryPolicy

log = logging.getLogger("policyflow.chain")
T = TypeVar("T")
_NO_RETRY = RetryPolicy(retries=0)


def byte_size(count: int) -> str:
    """``1 MiB``, ``512 KiB``, ``300 bytes``: how a size limit reads in a note."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def _why_unread(error: Exception) -> str:
    """What a note says about an error (its class and HTTP status; never its text, which is the server's)."""
    if isinstance(error, NotFoundError):
        return "not found (404)"
    if isinstance(error, ApiError) and error.status is not None:
        return f"unreadable: Testkube answered {error.status}"
    if isinstance(error, ApiError):
        return "unreadable: Testkube did not answer"
    return "unreadable: unexpected error (see policyflow's log)"


async def _read(call: Callable[[], Awaitable[T]], *, retry: RetryPolicy, what: str) -> T | Exception:
    """``call``'s result, or the error that stopped it after the retries."""
    try:
        return await retry.run(call, what=what, log=log)
    except ApiError as exc:
        log.info("%s: %s", what, exc)
        return exc
    except Exception as exc:  # a bug must not turn a test's result into an error
        log.error("%s failed unexpectedly", what, exc_info=exc)
        return exc


async def collect_digest(testkube: TestkubeClient, execution_id: str, *, tail_lines: int, max_log_bytes: int,
                         retry: RetryPolicy | None) -> FailureDigest:
    """The failure digest of execution ``execution_id``; never raises for what Testkube answers.

    ``tail_lines``: how many of the failing step's last log lines to keep; ``max_log_bytes``: how much
    of the log's end to read at most; ``retry``: for transient errors (None: one try each).
    """
    policy = retry or _NO_RETRY
    notes: list[str] = []
    detail = await _read(lambda: testkube.get_execution_detail(execution_id=execution_id), retry=policy,
                         what=f"collect-digest {execution_id}: execution")
    if isinstance(detail, Exception):
        notes.append(f"execution details {_why_unread(detail)}")
    logs = await _read(lambda: testkube.get_logs(execution_id=execution_id, max_bytes=max_log_bytes),
                       retry=policy, what=f"collect-digest {execution_id}: log")
    if isinstance(logs, Exception):
        notes.append(f"log {_why_unread(logs)}")
    elif logs.cut:
        limit = byte_size(max_log_bytes)
        notes.append(f"log larger than {limit}: read its last {limit}")
    return digest_of(
        detail if isinstance(detail, ExecutionDetail) else None,
        logs.text if isinstance(logs, LogText) else None,
        tail_lines=tail_lines,
        log_cut=isinstance(logs, LogText) and logs.cut,
        log_note="; ".join(notes) or None,
    )
