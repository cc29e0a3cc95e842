"""The Testkube API, as policyflow uses it: start a TestWorkflow, find an execution by its tags, read
an execution (and, when it did not pass, its step results and its log), abort one.

Two deployments, one client: the OSS agent serves everything under ``{url}/v1``; Testkube Cloud/Pro
serves the same routes under ``{url}/organizations/{org}/environments/{env}/agent`` (no ``/v1``) and
wants ``Authorization: Bearer <token>``. Where the real server differs from its own OpenAPI spec
(single objects where the spec says arrays, 500 for an unknown workflow, year-1 timestamps for "not
set"), this client follows the server (see ``shared/specs/SOURCES.md`` section 3).

The token lives only in the client's default headers: it is never logged, never part of an error
message, and never leaves this module.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from policyflow.domain.errors import (
    AlreadyFinishedError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnauthorizedError,
    UnknownWorkflowError,
    ViolationError,
    one_line,
    parse_retry_after,
)
from policyflow.domain.status import EXECUTION_STATUSES, EXECUTION_TERMINAL
from policyflow.domain.testrun import Execution, ExecutionDetail, StepResult, StepSignature

log = logging.getLogger(__name__)


class TestkubeError(PermanentError):
    """Testkube refused a request for good (the message says what to fix)."""

    __test__ = False  # not a pytest test class, despite the name


class TestkubeUnavailable(TransientError):
    """Testkube did not answer, or answered with a retryable status."""

    __test__ = False


class TestkubeProtocolError(TestkubeError):
    """Testkube answered something that is not a TestWorkflowExecution."""


class TokenRefusedError(UnauthorizedError):
    """Testkube refused the token (401)."""


class TestkubeForbiddenError(ForbiddenError):
    """The token's role may not do this (403)."""

    __test__ = False


class RunRequestRefusedError(ViolationError):
    """Testkube refused this violation's run request (400/422: e.g. a config value the workflow rejects)."""


def _time(value: Any) -> str | None:
    # Go serialises unset time.Time values as year 1 instead of leaving them out (SOURCES 3.4).
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    return value


def parse_execution(data: Any) -> Execution:
    """An :class:`Execution` from a TestWorkflowExecution or TestWorkflowExecutionSummary JSON object."""
    if not isinstance(data, Mapping):
        raise TestkubeProtocolError(f"Testkube answered a {type(data).__name__} where an execution object belongs")
    execution_id = data.get("id")
    if not isinstance(execution_id, str) or not execution_id:
        raise TestkubeProtocolError("Testkube answered an execution without an id")
    result = data.get("result") if isinstance(data.get("result"), Mapping) else {}
    assert isinstance(result, Mapping)
    status = result.get("status") or "queued"
    if not isinstance(status, str) or status not in EXECUTION_STATUSES:
        raise TestkubeProtocolError(
            f"Testkube execution {one_line(execution_id, 64)} has status {one_line(repr(status), 64)}, which "
            "policyflow does not know; upgrade policyflow or check the Testkube version"
        )
    workflow = data.get("workflow") if isinstance(data.get("workflow"), Mapping) else {}
    assert isinstance(workflow, Mapping)
    tags = data.get("tags") if isinstance(data.get("tags"), Mapping) else {}
    assert isinstance(tags, Mapping)
    duration = result.get("durationMs")
    return Execution(
        id=execution_id,
        name=str(data.get("name") or execution_id),
        workflow=str(workflow.get("name") or ""),
        status=status,
        tags={str(k): str(v) for k, v in tags.items()},
        scheduled_at=_time(data.get("scheduledAt")),
        finished_at=_time(result.get("finishedAt")),
        duration_ms=duration if isinstance(duration, int) and status in EXECUTION_TERMINAL else None,
    )


def _signature(data: Any, depth: int = 0) -> tuple[StepSignature, ...]:
    # Depth-bounded: the tree comes from the server, and a step nests only as deep as a workflow does.
    if not isinstance(data, list) or depth > 32:
        return ()
    return tuple(
        StepSignature(ref=str(item.get("ref") or ""), label=str(item.get("name") or item.get("category") or ""),
                      children=_signature(item.get("children"), depth + 1))
        for item in data if isinstance(item, Mapping)
    )


def _step_result(data: Any) -> StepResult | None:
    if not isinstance(data, Mapping):
        return None
    exit_code = data.get("exitCode")  # a Go float64: 7 or 7.0 on the wire
    return StepResult(
        status=str(data.get("status") or "queued"),
        error_message=str(data.get("errorMessage") or ""),
        exit_code=int(exit_code) if isinstance(exit_code, int | float) and not isinstance(exit_code, bool)
        and float(exit_code).is_integer() else None,
    )


def parse_execution_detail(data: Any) -> ExecutionDetail:
    """An :class:`ExecutionDetail` from a TestWorkflowExecution JSON object (not a summary: those have
    neither ``signature`` nor ``result.steps``)."""
    execution = parse_execution(data)
    result = data.get("result") if isinstance(data.get("result"), Mapping) else {}
    assert isinstance(result, Mapping)
    raw_steps = result.get("steps") if isinstance(result.get("steps"), Mapping) else {}
    assert isinstance(raw_steps, Mapping)
    steps = {str(ref): step for ref, value in raw_steps.items() if (step := _step_result(value)) is not None}
    return ExecutionDetail(execution=execution, signature=_signature(data.get("signature")), steps=steps,
                           initialization=_step_result(result.get("initialization")))


@dataclass(frozen=True, slots=True)
class LogText:
    """An execution's log as read: all of it, or its end when it was longer than asked for."""

    text: str
    #: Whether ``text`` is only the log's end (starting at a line boundary).
    cut: bool
    #: How many bytes the whole log has.
    size: int


def selector(tags: Mapping[str, str]) -> str:
    """A ``tagSelector`` value: ``k1=v1,k2=v2`` (different keys are ANDed by the server)."""
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


class TestkubeClient:
    """An async client for one Testkube API (OSS agent or Cloud/Pro environment)."""

    __test__ = False

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        org: str | None = None,
        env: str | None = None,
        timeout: float = 15.0,
        ca_file: Path | None = None,
        insecure: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = url.rstrip("/")
        self.base = f"{url}/organizations/{quote(org)}/environments/{quote(env)}/agent" if org and env else f"{url}/v1"
        headers = {"Accept": "application/json", "User-Agent": "policyflow"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        verify: ssl.SSLContext | bool = False if insecure else _tls_context(ca_file)
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout), verify=verify, transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TestkubeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    json_body: Any = None) -> Any:
        url = f"{self.base}{path}"
        with _transport_errors(method, path):
            if json_body is None:
                response = await self._http.request(method, url, params=params)
            else:
                # The agent ignores a body sent without this exact content type (SOURCES 3.3).
                response = await self._http.request(
                    method, url, params=params, json=json_body, headers={"Content-Type": "application/json"}
                )
        if response.is_success:
            if not response.content:
                return None
            try:
                return response.json()
            except RecursionError:
                raise TestkubeProtocolError(
                    f"Testkube answered {method} {path} with a body that is not JSON policyflow can read "
                    "(nested too deep)"
                ) from None
            except ValueError:
                raise TestkubeProtocolError(
                    f"Testkube answered {method} {path} with {response.status_code} but the body is not JSON "
                    f"({response.headers.get('content-type', 'no content type')}); is the URL the Testkube API?"
                ) from None
        raise _error_for(method, path, response)

    async def run_workflow(self, *, workflow: str, request: Mapping[str, Any]) -> Execution:
        """Start ``workflow`` (``POST /test-workflows/{name}/executions``); the new execution."""
        data = await self._call("POST", f"/test-workflows/{quote(workflow, safe='')}/executions",
                                json_body=dict(request))
        # The agent answers one object; the spec says a list. Accept a one-element list too.
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        return parse_execution(data)

    async def find_executions(self, *, tags: Mapping[str, str], workflow: str | None = None) -> list[Execution]:
        """Executions carrying every one of ``tags``, newest first."""
        path = (f"/test-workflows/{quote(workflow, safe='')}/executions" if workflow
                else "/test-workflow-executions")
        data = await self._call("GET", path, params={"tagSelector": selector(tags), "pageSize": "100"})
        # The agent answers {totals, filtered, results}; the spec says a bare list. Anything else
        # cannot rule out an existing run, so it must not read as "none found".
        items = data.get("results") if isinstance(data, Mapping) else data
        if isinstance(data, Mapping) and "results" in data and data["results"] is None:
            items = []  # Go writes an empty result list as null
        if not isinstance(items, list):
            raise TestkubeProtocolError(
                "Testkube's execution list has no results array; cannot tell whether this episode already ran"
            )
        return [parse_execution(item) for item in items]

    async def get_execution(self, *, execution_id: str) -> Execution:
        """The execution now."""
        data = await self._call("GET", f"/test-workflow-executions/{quote(execution_id, safe='')}")
        return parse_execution(data)

    async def get_execution_detail(self, *, execution_id: str) -> ExecutionDetail:
        """The execution now, with its step tree and step results."""
        data = await self._call("GET", f"/test-workflow-executions/{quote(execution_id, safe='')}")
        return parse_execution_detail(data)

    async def get_logs(self, *, execution_id: str, max_bytes: int) -> LogText:
        """The execution's stored log (plain text), at most its last ``max_bytes``.

        ``GET /test-workflow-executions/{id}/logs`` is served by the agent although its OpenAPI spec
        does not list it (``internal/app/api/v1/server.go``). A log that is not stored (yet) is a
        500 from the agent, a missing execution a 404. The body is streamed, so a huge log costs
        ``max_bytes`` of memory, not its size.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        path = f"/test-workflow-executions/{quote(execution_id, safe='')}/logs"
        kept = bytearray()
        size = 0
        with _transport_errors("GET", path):
            async with self._http.stream("GET", f"{self.base}{path}", headers={"Accept": "text/plain"}) as response:
                if not response.is_success:
                    await response.aread()
                    raise _error_for("GET", path, response)
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    kept += chunk
                    if len(kept) > 2 * max_bytes:  # trim now and then, not on every chunk
                        del kept[: len(kept) - max_bytes]
        cut = size > max_bytes
        if cut:
            del kept[: len(kept) - max_bytes]
            newline = kept.find(b"\n")
            del kept[: newline + 1 if newline >= 0 else len(kept)]  # the first line is only its end
        return LogText(text=kept.decode("utf-8", errors="replace"), cut=cut, size=size)

    async def abort(self, *, execution_id: str) -> None:
        """Abort a running execution (one that already finished is left alone)."""
        try:
            await self._call("POST", f"/test-workflow-executions/{quote(execution_id, safe='')}/abort")
        except AlreadyFinishedError:
            log.info("execution %s had already finished; nothing to abort", execution_id)

    async def list_workflows(self) -> list[str]:
        """The names of the TestWorkflows Testkube has (a GET that needs the token, so also an auth probe)."""
        data = await self._call("GET", "/test-workflows")
        if not isinstance(data, list):
            raise TestkubeProtocolError("Testkube's TestWorkflow list is not an array; is the URL the Testkube API?")
        return [str(item["name"]) for item in data if isinstance(item, Mapping) and item.get("name")]

    async def workflow_exists(self, *, workflow: str) -> bool:
        """Whether Testkube has a TestWorkflow called ``workflow``."""
        try:
            await self._call("GET", f"/test-workflows/{quote(workflow, safe='')}")
        except NotFoundError:
            return False
        return True


@contextlib.contextmanager
def _transport_errors(method: str, path: str) -> Iterator[None]:
    """No answer at all, as the transient error callers retry (httpx's message may name the URL)."""
    try:
        yield
    except httpx.TimeoutException:
        raise TestkubeUnavailable(f"Testkube timed out on {method} {path}") from None
    except httpx.TransportError as exc:
        raise TestkubeUnavailable(f"Testkube unreachable on {method} {path}: {type(exc).__name__}") from None


@functools.lru_cache(maxsize=8)
def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """One TLS context per CA bundle for the whole process. Building one loads the CA bundle, which
    cost a quarter of a chain's CPU when every task built its own client (measured with py-spy)."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    return httpx.create_ssl_context()


def _problem_detail(response: httpx.Response) -> tuple[str, str]:
    """The RFC 7807 body's ``detail`` and ``title`` (SOURCES 3.9), or the start of a non-JSON body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip(), ""
    if isinstance(body, Mapping):
        return str(body.get("detail") or body.get("title") or "")[:500], str(body.get("title") or "")[:100]
    return "", ""


def _error_for(method: str, path: str, response: httpx.Response) -> Exception:
    status = response.status_code
    detail, title = _problem_detail(response)
    where = f"{method} {path}"
    fields: dict[str, Any] = {"status": status, "reason": title, "causes": (detail,) if detail else ()}
    run_request = method == "POST" and path.endswith("/executions")
    if status == 401:
        return TokenRefusedError(
            f"Testkube rejected the token (401) on {where}: set a valid POLICYFLOW_TESTKUBE_TOKEN "
            "(or POLICYFLOW_TESTKUBE_TOKEN_BLOCK)", **fields
        )
    if status == 403:
        return TestkubeForbiddenError(
            f"Testkube forbids {where} (403): give the token's role access to run TestWorkflows", **fields
        )
    if status == 404:
        return NotFoundError(f"Testkube has no {path} (404): {detail}", **fields)
    if status == 500 and run_request and "not found" in detail.lower():
        # The agent answers an unknown workflow with 500, not 404 (SOURCES 3.8).
        workflow = path.split("/")[2]
        return UnknownWorkflowError(
            f"Testkube has no TestWorkflow {workflow!r} ({detail}); create it or fix the route's workflow", **fields
        )
    if path.endswith("/abort") and "finished" in detail.lower():
        return AlreadyFinishedError(f"Testkube: {where}: {detail}", **fields)
    if status == 429 or status >= 500 or status == 409:
        return TestkubeUnavailable(f"Testkube answered {status} on {where}: {detail}",
                                   retry_after=parse_retry_after(response.headers.get("Retry-After")), **fields)
    if run_request and status in (400, 422):
        return RunRequestRefusedError(f"Testkube refused the run request {where} ({status}): {detail}", **fields)
    return TestkubeError(f"Testkube refused {where} ({status}): {detail}", **fields)
