"""The Testkube stand-in: the agent's routes, their answers and quirks, and the test-side controls."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from policyflow.standins.http import Fault, HttpStandin, RouteTable
from policyflow.standins.http.log import query_values
from policyflow.standins.testkube.body import read_run_body
from policyflow.standins.testkube.executions import DEFAULT_PAGE_SIZE, Executions, ListQuery, check_outcome
from policyflow.standins.testkube.gotypes import go_atoi, problem
from policyflow.standins.testkube.openapi import load_openapi, validation_errors
from policyflow.standins.testkube.scripts import Script
from policyflow.standins.testkube.selectors import parse_status_filter

# Error details are built like the agent's handlers build them ("<prefix>: <description>: <error>", read
# in kubeshop/testkube internal/app/api/v1 at commits near the one SOURCES.md names): the wrapped error
# is a Kubernetes NotFound for the TestWorkflow CR, or Mongo's "no documents" for an execution.
_WORKFLOW_NOT_FOUND = 'testworkflows.testworkflows.testkube.io "{name}" not found'
_NO_DOCUMENTS = "mongo: no documents in result"
_NO_SUCH_KEY = "The specified key does not exist."  # MinIO's answer for a log that was never saved
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


@dataclass(frozen=True)
class _Call:
    """What a route handler gets: decoded path parameters, first query values, the raw body."""

    params: dict[str, str]
    query: dict[str, str]
    content_type: str
    raw: bytes


@dataclass(frozen=True)
class _Route:
    handler: Callable[[_Call], Response]
    has_body: bool  # the body is a TestWorkflowExecutionRequest (validated as the agent reads it)
    in_spec: bool = True  # the OpenAPI spec lists the route (so requests to it can be validated)


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(problem(status, detail), status_code=status)


class TestkubeStandin(HttpStandin):
    """The Testkube agent API (TestWorkflow executions) on a loopback port.

    ``base_url`` is what policyflow is configured with: ``<url>/v1`` (OSS agent) or
    ``<url>/organizations/<org>/environments/<env>/agent`` when ``cloud=(org, env)``.
    """

    __test__ = False  # not a pytest test class, despite the name
    METHODS: ClassVar[tuple[str, ...]] = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def __init__(
        self,
        *,
        openapi_spec: Path | None = None,
        workflows: Iterable[str] = ("smoke-nova",),
        token: str | None = None,
        cloud: tuple[str, str] | None = None,
        outcome: str = "passed",
        queued_polls: int = 1,
        running_polls: int = 1,
    ) -> None:
        """Configure the stand-in; nothing listens until :meth:`start`.

        ``openapi_spec``: validate every request (not the responses) against this spec with openapi-core.
        ``token``: require ``Authorization: Bearer <token>``. ``outcome``: terminal status executions reach
        (``passed|failed|aborted|canceled|never``). ``queued_polls``/``running_polls``: how many GETs of
        an execution see ``queued`` and then ``running`` before the outcome.
        """
        check_outcome(outcome)
        if queued_polls < 0 or running_polls < 0:
            raise ValueError("queued_polls and running_polls must be >= 0")
        super().__init__(first_query_values=True)  # fasthttp's Query() reads the first value
        self._openapi: Any = load_openapi(os.fspath(openapi_spec)) if openapi_spec is not None else None
        self._token = token
        self._prefix = f"/organizations/{cloud[0]}/environments/{cloud[1]}/agent" if cloud else "/v1"
        self._state = Executions(outcome=outcome, queued_polls=queued_polls, running_polls=running_polls)
        for name in workflows:
            self.add_workflow(name)
        self._routes: RouteTable[_Route] = RouteTable()
        for method, template, handler, has_body, in_spec in (
            ("GET", "/test-workflows", self._list_workflows, False, True),
            ("GET", "/test-workflows/{name}", self._get_workflow, False, True),
            ("POST", "/test-workflows/{name}/executions", self._run, True, True),
            ("GET", "/test-workflows/{name}/executions", self._list_executions, False, True),
            ("GET", "/test-workflows/{name}/executions/{id}", self._get, False, True),
            ("POST", "/test-workflows/{name}/executions/{id}/abort", self._abort, False, True),
            ("POST", "/test-workflows/{name}/abort", self._abort_all, False, True),
            ("POST", "/test-workflow-executions", self._run_by_selector, True, True),
            ("GET", "/test-workflow-executions", self._list_executions, False, True),
            ("GET", "/test-workflow-executions/{id}", self._get, False, True),
            ("POST", "/test-workflow-executions/{id}/abort", self._abort, False, True),
            # Served by the agent, missing from its OpenAPI spec.
            ("GET", "/test-workflows/{name}/executions/{id}/logs", self._logs, False, False),
            ("GET", "/test-workflow-executions/{id}/logs", self._logs, False, False),
        ):
            self._routes.add(method, template, _Route(handler, has_body, in_spec))

    # ---- lifecycle and test controls ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``url + "/v1"``, or ``url + "/organizations/{org}/environments/{env}/agent"`` in cloud mode."""
        return self.url + self._prefix

    @property
    def executions(self) -> list[dict[str, Any]]:
        """Every execution created so far (full TestWorkflowExecution JSON, copies), oldest first."""
        return self._state.documents()

    def add_workflow(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Make TestWorkflow ``name`` exist (``labels`` feed the ``selector`` filters)."""
        self._state.add_workflow(name, labels)

    def set_outcome(self, workflow: str, status: str) -> None:
        """Terminal status for ``workflow``'s executions that have not finished yet (incl. running ones)."""
        check_outcome(status)
        self._state.set_outcome(workflow, status)

    def set_script(self, workflow: str, script: Script) -> None:
        """What ``workflow``'s executions created from now on do, step by step (default: :func:`smoke_script`)."""
        self._state.set_script(workflow, script)

    def inject(
        self,
        *,
        method: str,
        path: str,
        status: int,
        times: int = 1,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        after: bool = False,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path`` with a fault.

        ``path`` is a regex searched in the full request path (``/v1/...``); ``method`` may be ``*``.
        ``status`` 0 drops the connection without a response; otherwise the answer has that status and
        ``body`` (an RFC 7807 body when ``None``; bytes/str are sent as-is, anything else as JSON) plus
        ``headers``. ``delay`` sleeps before answering. ``after=True`` performs the real operation first
        (e.g. creates the execution) and only then answers with the fault. Faults fire first-in first-out.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        self._faults.add(method=method, path=path, status=status, times=times, body=body, headers=headers,
                         delay=delay, after=after)  # fmt: skip

    # ---- HTTP ------------------------------------------------------------------------------------

    def _fault_response(self, fault: Fault, request: Request) -> Response:
        if fault.body is None:
            if fault.status in (204, 304):
                return Response(status_code=fault.status, headers=fault.headers)
            detail = f"injected fault: HTTP {fault.status}"
            return JSONResponse(problem(fault.status, detail), fault.status, headers=fault.headers)
        if isinstance(fault.body, bytes):
            media_type = "application/octet-stream"
            return Response(fault.body, fault.status, headers=fault.headers, media_type=media_type)
        if isinstance(fault.body, str):
            return PlainTextResponse(fault.body, fault.status, headers=fault.headers)
        return JSONResponse(fault.body, fault.status, headers=fault.headers)

    def _handle(self, request: Request, raw: bytes) -> Response:
        if self._token is not None and request.headers.get("authorization") != f"Bearer {self._token}":
            return _error(401, "missing or invalid api token")
        path = request.url.path
        # fiber routes are not strict about a trailing slash.
        relative = path[len(self._prefix) :].rstrip("/") if path.startswith(self._prefix + "/") else ""
        found = self._routes.match(request.method, relative)
        if found is None:
            return PlainTextResponse(f"Cannot {request.method} {path}", 404)  # fiber's unknown-route answer
        route = found.handler
        if self._openapi is not None and route.in_spec:
            invalid = validation_errors(self._openapi, request, relative, raw, route.has_body)
            if invalid is not None:
                return _error(400, f"request does not match the OpenAPI spec: {invalid}")
        content_type = request.headers.get("content-type", "")
        return route.handler(_Call(found.params, query_values(request, first=True), content_type, raw))

    # ---- workflows -------------------------------------------------------------------------------

    def _list_workflows(self, call: _Call) -> Response:
        return JSONResponse(self._state.workflows(call.query.get("selector", ""), call.query.get("textSearch", "")))

    def _get_workflow(self, call: _Call) -> Response:
        name = call.params["name"]
        workflow = self._state.workflow(name)
        if workflow is None:
            detail = f"failed to get test workflow '{name}': client not found: " + _WORKFLOW_NOT_FOUND.format(name=name)
            return _error(404, detail)
        return JSONResponse(workflow)

    # ---- running ---------------------------------------------------------------------------------

    def _run(self, call: _Call) -> Response:
        body, invalid = read_run_body(call.content_type, call.raw)
        if invalid is not None:
            return _error(400, invalid)
        name = call.params["name"]
        created = self._state.run(name, body)
        if created is None:
            # Unknown workflow: the scheduler's fetch fails and the handler wraps it as a 500.
            detail = (
                "failed to execute test workflow: execution error: "
                f"cannot fetch Test Workflow by name: {name}: " + _WORKFLOW_NOT_FOUND.format(name=name)
            )
            return _error(500, detail)
        return JSONResponse(created)

    def _run_by_selector(self, call: _Call) -> Response:
        body, invalid = read_run_body(call.content_type, call.raw)
        if invalid is not None:
            return _error(400, invalid)
        prefix = "failed to execute test workflow: "
        labels: dict[str, str] = {}
        for item in filter(None, call.query.get("selector", "").split(",")):
            found = re.fullmatch(r"([^=!]+?)\s*==?\s*([^=!]*)", item.strip())
            if found is None:  # set-based requirements become MatchExpressions, which are refused
                return _error(500, prefix + "invalid selector: only simple selectors are allowed")
            labels[found.group(1)] = found.group(2)
        created = self._state.run_labelled(labels, body)
        if not created:
            return _error(500, prefix + "error: no execution results")
        return JSONResponse(created)

    # ---- reading ---------------------------------------------------------------------------------

    def _get(self, call: _Call) -> Response:
        doc = self._state.poll(call.params["id"], call.params.get("name"))
        if doc is None:
            return _error(404, f"get execution: client not found: {_NO_DOCUMENTS}")
        return JSONResponse(doc)

    def _logs(self, call: _Call) -> Response:
        key = call.params["id"]
        found, log = self._state.log(key, call.params.get("name"))
        if not found:
            return _error(404, f"get execution: client not found: {_NO_DOCUMENTS}")
        # ReadLog looks the log up by the path's value, which is only right for an id (a name finds
        # the execution, then no log); a run that has not finished has not saved its log yet.
        if log is None or not _OBJECT_ID.fullmatch(key):
            return _error(500, f"can't get log: {key}: {_NO_SUCH_KEY}")
        return Response(log.encode(), headers={"content-type": "text/plain"})

    def _list_executions(self, call: _Call) -> Response:
        query = call.query
        text_search = query.get("textSearch", "")
        try:
            name_pattern = re.compile(text_search, re.IGNORECASE) if text_search else None
        except re.error as exc:
            prefix = "failed to list test workflow executions: get execution results"
            return _error(502, f"{prefix}: client problem: {exc}")
        listed = ListQuery(
            workflow=call.params.get("name"),
            page=max(go_atoi(query.get("page")) or 0, 0),
            page_size=abs(go_atoi(query.get("pageSize")) or 0) or DEFAULT_PAGE_SIZE,
            statuses=parse_status_filter(query.get("status", "")),
            tag_selector=query.get("tagSelector", ""),
            selector=query.get("selector", ""),
            name_pattern=name_pattern,
        )
        return JSONResponse(self._state.listing(listed))

    # ---- aborting --------------------------------------------------------------------------------

    def _abort(self, call: _Call) -> Response:
        key = call.params["id"]
        prefix = f"failed to abort test workflow execution '{key}'"
        outcome = self._state.abort(key, call.params.get("name"))
        if outcome == "missing":
            return _error(404, f"{prefix}: client not found: {_NO_DOCUMENTS}")
        if outcome == "finished":
            return _error(400, f"{prefix}: checking execution: execution already finished")
        return Response(status_code=204)

    def _abort_all(self, call: _Call) -> Response:
        self._state.abort_all(call.params["name"])
        return Response(status_code=204)
