"""A loopback stand-in for the Testkube agent API (TestWorkflow executions only).

It speaks the API the way the real agent does, not the way ``api/v1/testkube.yaml`` says it does.
``shared/specs/SOURCES.md`` section 3 lists the differences; the ones emulated here:

* ``POST /test-workflows/{name}/executions`` answers with ONE execution object (the spec says an
  array); ``POST /test-workflow-executions?selector=`` answers with an array.
* The run body is only read when ``Content-Type`` is JSON (fiber's ``BodyParser``); otherwise it is
  ignored and the run behaves as if ``{}`` had been sent. ``name`` in the body is ignored: the
  execution is always called ``<workflow>-<number>``.
* An unknown workflow on run is a **500**, not a 404.
* List endpoints answer with one object ``{totals, filtered, results}`` (the spec says an array), read
  ``page``/``pageSize``/``status``/``selector``/``textSearch`` although the spec does not declare them,
  drop the whole ``status`` filter when any value is unknown, and fall back to 100 for ``pageSize=0``.
  ``totals`` is counted with a default filter and so never exceeds 100.
* Unset times are ``"0001-01-01T00:00:00Z"`` (Go's zero ``time.Time``), durations are Go strings.
* Errors are RFC 7807 bodies served as ``application/json`` (fiber's ``c.JSON`` drops problem+json).
* An execution can be addressed by its id or its name.

Executions advance ``queued -> running -> <outcome>`` on each GET of that execution, so tests are
deterministic and never sleep. Faults (HTTP errors, dropped connections, delays, "the answer was lost
after the execution started") are injected with :meth:`TestkubeStandin.inject`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from policyflow.standins.server import LoopbackServer, Standin

__all__ = [
    "ALL_STATUSES",
    "OUTCOMES",
    "TERMINAL_STATUSES",
    "ZERO_TIME",
    "RecordedRequest",
    "TestkubeStandin",
    "go_duration",
    "go_time",
    "matches_label_selector",
    "matches_tag_selector",
    "parse_status_filter",
    "parse_tag_selector",
    "problem",
    "status_after_polls",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Go serializes an unset ``time.Time`` (``omitempty`` never omits a struct)."""

ALL_STATUSES = (
    "queued", "assigned", "starting", "scheduling", "running", "pausing", "paused",
    "resuming", "passed", "failed", "stopping", "aborted", "canceled",
)  # fmt: skip
TERMINAL_STATUSES = frozenset({"passed", "failed", "aborted", "canceled"})
OUTCOMES = frozenset(TERMINAL_STATUSES | {"never"})
"""Accepted values for ``outcome``/``set_outcome``; ``never`` keeps an execution running forever."""

NAMESPACE = "testkube"
DEFAULT_PAGE_SIZE = 100  # pkg/repository/testworkflow/interface.go: PageDefaultLimit

# Error details are built like the agent's handlers build them ("<prefix>: <description>: <error>", read
# in kubeshop/testkube internal/app/api/v1 at commits near the one SOURCES.md names): the wrapped error
# is a Kubernetes NotFound for the TestWorkflow CR, or Mongo's "no documents" for an execution.
_WORKFLOW_NOT_FOUND = 'testworkflows.testworkflows.testkube.io "{name}" not found'
_NO_DOCUMENTS = "mongo: no documents in result"
_WORKFLOW_KEYS = ("name", "namespace", "labels")  # what an execution (summary) keeps of its workflow


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


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


TagSelector = dict[str, frozenset[str] | None]
"""Parsed tagSelector: tag key -> accepted values, or ``None`` for "the tag exists"."""


def parse_tag_selector(selector: str) -> TagSelector:
    """Parse ``k1=v1,k1=v2,k2`` the way the Mongo repository does (``mongo.go`` composeQueryAndOpts).

    The same key repeated ORs its values; a bare key means "tag exists" and wins over values for that
    key; items with more than one ``=`` are silently ignored. Empty items (a trailing comma) are skipped.
    """
    values: dict[str, set[str]] = {}
    exists: set[str] = set()
    for item in selector.split(","):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) == 2:
            values.setdefault(parts[0], set()).add(parts[1])
        elif len(parts) == 1:
            exists.add(parts[0])
    parsed: TagSelector = {key: frozenset(vals) for key, vals in values.items()}
    parsed.update(dict.fromkeys(exists))
    return parsed


def matches_tag_selector(tags: Mapping[str, str] | None, selector: str) -> bool:
    """True when ``tags`` satisfies the tagSelector: different keys ANDed, one key's values ORed."""
    tags = tags or {}
    for key, accepted in parse_tag_selector(selector).items():
        if key not in tags:
            return False
        if accepted is not None and tags[key] not in accepted:
            return False
    return True


def matches_label_selector(labels: Mapping[str, str] | None, selector: str) -> bool:
    """The executions list ``selector`` on workflow labels: ``k=v`` equals, bare ``k`` exists.

    As in ``mongo.go`` a later item for the same key replaces an earlier one, and items with more than
    one ``=`` are ignored.
    """
    labels = labels or {}
    wanted: dict[str, str | None] = {}
    for item in selector.split(","):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) == 2:
            wanted[parts[0]] = parts[1]
        elif len(parts) == 1:
            wanted[parts[0]] = None
    return all(key in labels and (value is None or labels[key] == value) for key, value in wanted.items())


def parse_status_filter(value: str) -> frozenset[str] | None:
    """The ``status`` list filter, or ``None`` for "no filter".

    Faithful to ``ParseTestWorkflowStatusList`` + ``Filter.WithStatus``: one unknown value makes the
    parse fail, and the handler then drops the whole filter instead of answering 400.
    """
    if not value:
        return None
    statuses = value.split(",")
    if any(status not in ALL_STATUSES for status in statuses):
        return None
    return frozenset(statuses)


def status_after_polls(polls: int, *, queued_polls: int, running_polls: int, outcome: str) -> str:
    """Status an execution shows on its ``polls``-th GET (0 = the POST response).

    The first ``queued_polls`` GETs see ``queued``, the next ``running_polls`` see ``running``, every
    later one the terminal ``outcome`` (``never`` = running forever).
    """
    if polls <= queued_polls:
        return "queued"
    if outcome == "never" or polls <= queued_polls + running_polls:
        return "running"
    return outcome


def _go_atoi(value: str | None) -> int | None:
    """``strconv.Atoi``: an optional sign and digits, nothing else."""
    if value is None or not re.fullmatch(r"[+-]?[0-9]+", value):
        return None
    return int(value)


def _now() -> datetime:
    # Truncate to milliseconds, like every time read back from Mongo, so durations add up exactly.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _object_id(counter: Iterator[int]) -> str:
    """A Mongo ObjectID: 4-byte timestamp, 5 random bytes, 3-byte counter (24 hex chars)."""
    return f"{int(time.time()):08x}{secrets.token_hex(5)}{next(counter) % 0xFFFFFF:06x}"


# --------------------------------------------------------------------------------------------------
# Request body checks (what Go's json.Unmarshal into TestWorkflowExecutionRequest would reject)
# --------------------------------------------------------------------------------------------------

_STRING_MAP_FIELDS = ("config", "tags")
_OBJECT_FIELDS = ("runningContext", "silentMode", "target", "runtime")
_STRING_FIELDS = ("name", "testWorkflowExecutionName")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _unmarshal_error(value: Any, where: str, go_type: str) -> str:
    return f"json: cannot unmarshal {_json_kind(value)} into Go {where} of type {go_type}"


def _check_run_request(body: Any) -> str | None:
    """Return Go's unmarshal error for a body the agent would answer 400 to, else ``None``."""
    struct = "TestWorkflowExecutionRequest"
    if body is None:
        return None  # JSON null leaves the struct empty
    if not isinstance(body, dict):
        return _unmarshal_error(body, "value", f"testkube.{struct}")
    for key in _STRING_FIELDS:
        if body.get(key) is not None and not isinstance(body[key], str):
            return _unmarshal_error(body[key], f"struct field {struct}.{key}", "string")
    if body.get("disableWebhooks") is not None and not isinstance(body["disableWebhooks"], bool):
        return _unmarshal_error(body["disableWebhooks"], f"struct field {struct}.disableWebhooks", "bool")
    for key in _STRING_MAP_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return _unmarshal_error(value, f"struct field {struct}.{key}", "map[string]string")
        for item in value.values():
            if not isinstance(item, str):
                return _unmarshal_error(item, f"struct field {struct}.{key}", "string")
    for key in _OBJECT_FIELDS:
        if body.get(key) is not None and not isinstance(body[key], dict):
            return _unmarshal_error(body[key], f"struct field {struct}.{key}", "object")
    return None


# --------------------------------------------------------------------------------------------------
# OpenAPI request validation
# --------------------------------------------------------------------------------------------------


def _drop_undeclared_path_params(spec: dict[str, Any]) -> None:
    """Remove path parameters whose ``{name}`` is not in the path template (a spec bug).

    ``GET /test-workflow-executions`` lists ``$ref: ID`` (``in: path, required``) although the path has
    no ``{id}``; openapi-core would reject every call. The real server has no such parameter.
    """
    shared = spec.get("components", {}).get("parameters", {})

    def resolve(param: dict[str, Any]) -> dict[str, Any]:
        ref = param.get("$ref", "")
        return dict(shared.get(ref.rsplit("/", 1)[-1], {})) if ref else param

    for template, item in spec.get("paths", {}).items():
        for operation in [item, *(v for v in item.values() if isinstance(v, dict))]:
            params = operation.get("parameters")
            if isinstance(params, list):
                operation["parameters"] = [
                    p
                    for p in params
                    if resolve(p).get("in") != "path" or "{" + str(resolve(p).get("name")) + "}" in template
                ]


@functools.lru_cache(maxsize=4)
def _load_openapi(path: str) -> Any:
    """Parse the spec once per process (390 KB of YAML) and build an openapi-core ``OpenAPI``."""
    import yaml
    from openapi_core import Config, OpenAPI

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
    with open(path, encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
    _drop_undeclared_path_params(spec)
    # The upstream file is trusted; validating the spec itself would only cost seconds.
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


@dataclass
class _SpecRequest:
    """The request as openapi-core sees it; the path is relative to the agent base (no ``servers``)."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: Any

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


def _describe_errors(errors: Iterable[Exception]) -> str:
    messages = []
    for error in errors:
        # Schema errors hide in the cause; their own messages read better than the cause's repr.
        schema_errors = getattr(error.__cause__, "schema_errors", None) or ()
        if schema_errors:
            summary = str(error).partition(":")[0]
            messages.append(f"{summary}: " + "; ".join(getattr(e, "message", str(e)) for e in schema_errors))
        else:
            messages.append(str(error))
    return "; ".join(messages)


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it (recorded before auth, faults and validation)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def raw_body(self) -> bytes:
        """Alias of :attr:`raw`."""
        return self.raw


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int
    body: Any
    headers: dict[str, str]
    delay: float
    after: bool


@dataclass
class _Execution:
    """An execution's JSON document plus what the state machine needs."""

    doc: dict[str, Any]
    workflow: str
    seq: int
    polls: int = 0
    started: datetime | None = None
    status_at: datetime = field(default_factory=_now)

    @property
    def status(self) -> str:
        return str(self.doc["result"]["status"])

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class _Call:
    """What a route handler gets: decoded path parameters, first query values, the raw body."""

    params: dict[str, str]
    query: dict[str, str]
    content_type: str
    raw: bytes


Handler = Callable[[_Call], Response]


class _DropConnection(Response):
    """A "response" that closes the client's TCP connection without sending a byte."""

    def __init__(self, closer: Callable[[Scope], Coroutine[Any, Any, bool]]) -> None:
        super().__init__(status_code=500)
        self._closer = closer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self._closer(scope):
            raise RuntimeError("stand-in could not find the connection to drop")


# --------------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------------


class TestkubeStandin(Standin):
    """The Testkube agent API (TestWorkflow executions) on a loopback port.

    ``base_url`` is what policyflow is configured with: ``<url>/v1`` (OSS agent) or
    ``<url>/organizations/<org>/environments/<env>/agent`` when ``cloud=(org, env)``.
    """

    __test__ = False  # not a pytest test class, despite the name

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
        _check_outcome(outcome)
        if queued_polls < 0 or running_polls < 0:
            raise ValueError("queued_polls and running_polls must be >= 0")
        self._lock = threading.Lock()
        self._openapi: Any = _load_openapi(os.fspath(openapi_spec)) if openapi_spec is not None else None
        self._token = token
        self._prefix = f"/organizations/{cloud[0]}/environments/{cloud[1]}/agent" if cloud else "/v1"
        self._outcome = outcome
        self._outcomes: dict[str, str] = {}
        self._queued_polls = queued_polls
        self._running_polls = running_polls
        self._workflows: dict[str, dict[str, Any]] = {}
        self._numbers: dict[str, int] = {}
        self._executions: list[_Execution] = []
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._ids = itertools.count(secrets.randbelow(0xFFFFFF))
        for name in workflows:
            self.add_workflow(name)
        routes: list[tuple[str, str, Handler, bool]] = [
            # method, path under the base, handler, whether the body is a TestWorkflowExecutionRequest
            ("GET", "/test-workflows", self._list_workflows, False),
            ("GET", "/test-workflows/{name}", self._get_workflow, False),
            ("POST", "/test-workflows/{name}/executions", self._run, True),
            ("GET", "/test-workflows/{name}/executions", self._list_executions, False),
            ("GET", "/test-workflows/{name}/executions/{id}", self._get, False),
            ("POST", "/test-workflows/{name}/executions/{id}/abort", self._abort, False),
            ("POST", "/test-workflows/{name}/abort", self._abort_all, False),
            ("POST", "/test-workflow-executions", self._run_by_selector, True),
            ("GET", "/test-workflow-executions", self._list_executions, False),
            ("GET", "/test-workflow-executions/{id}", self._get, False),
            ("POST", "/test-workflow-executions/{id}/abort", self._abort, False),
        ]
        self._routes = [
            (method, re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)), handler, has_body)
            for method, template, handler, has_body in routes
        ]
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])
        self._server = LoopbackServer(app)

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the port is bound at construction)."""
        return self._server.url

    @property
    def base_url(self) -> str:
        """``url + "/v1"``, or ``url + "/organizations/{org}/environments/{env}/agent"`` in cloud mode."""
        return self.url + self._prefix

    def start(self) -> TestkubeStandin:
        """Start serving in a background thread; returns ``self``."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.stop()

    # ---- test controls ---------------------------------------------------------------------------

    @property
    def executions(self) -> list[dict[str, Any]]:
        """Every execution created so far (full TestWorkflowExecution JSON, copies), oldest first."""
        with self._lock:
            return [copy.deepcopy(e.doc) for e in self._executions]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def add_workflow(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Make TestWorkflow ``name`` exist (``labels`` feed the ``selector`` filters)."""
        workflow: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
        if labels:
            workflow["labels"] = dict(labels)
        workflow["created"] = go_time(_now())
        workflow["spec"] = {}
        with self._lock:
            self._workflows[name] = workflow

    def set_outcome(self, workflow: str, status: str) -> None:
        """Terminal status for ``workflow``'s executions that have not finished yet (incl. running ones)."""
        _check_outcome(status)
        with self._lock:
            self._outcomes[workflow] = status

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
        fault = _Fault(
            method=method.upper(),
            path=re.compile(path),
            status=status,
            remaining=times,
            body=body,
            headers=dict(headers or {}),
            delay=delay,
            after=after,
        )
        with self._lock:
            self._faults.append(fault)

    # ---- HTTP plumbing ---------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        raw = await request.body()
        path = request.url.path
        self._record(request, raw)
        fault = self._take_fault(request.method, path)
        if fault is not None and not fault.after:
            return await self._fault_response(fault)
        response = self._handle(request, raw)
        if fault is not None:
            return await self._fault_response(fault)
        return response

    def _record(self, request: Request, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=_first_values(request),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw=raw,
        )
        with self._lock:
            self._requests.append(recorded)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    async def _fault_response(self, fault: _Fault) -> Response:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status == 0:
            return _DropConnection(self._close_connection)
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

    async def _close_connection(self, scope: Scope) -> bool:
        """Close the TCP connection the request in ``scope`` came on.

        ASGI has no "abort" message, so find uvicorn's protocol object for this client and close its
        transport; once uvicorn has seen the disconnect it sends nothing for this request.
        """
        server = getattr(self._server, "_server", None)  # the uvicorn.Server inside LoopbackServer
        connections: set[Any] = getattr(getattr(server, "server_state", None), "connections", set())
        client = tuple(scope.get("client") or ())
        for protocol in list(connections):
            if getattr(protocol, "client", None) == client:
                protocol.transport.close()
                for _ in range(100):  # connection_lost runs on a later loop iteration
                    if protocol not in connections:
                        break
                    await asyncio.sleep(0)
                return True
        return False

    def _handle(self, request: Request, raw: bytes) -> Response:
        if self._token is not None and request.headers.get("authorization") != f"Bearer {self._token}":
            return _error(401, "missing or invalid api token")
        path = request.url.path
        # fiber routes are not strict about a trailing slash.
        relative = path[len(self._prefix) :].rstrip("/") if path.startswith(self._prefix + "/") else ""
        route = self._match(request.method, relative)
        if route is None:
            return PlainTextResponse(f"Cannot {request.method} {path}", 404)  # fiber's unknown-route answer
        handler, params, has_body = route
        content_type = request.headers.get("content-type", "")
        if self._openapi is not None:
            invalid = self._validate(request, relative, raw, content_type, has_body)
            if invalid is not None:
                return _error(400, f"request does not match the OpenAPI spec: {invalid}")
        return handler(_Call(params=params, query=_first_values(request), content_type=content_type, raw=raw))

    def _match(self, method: str, relative: str) -> tuple[Handler, dict[str, str], bool] | None:
        for route_method, pattern, handler, has_body in self._routes:
            found = pattern.fullmatch(relative)
            if found and route_method == method:
                return handler, found.groupdict(), has_body
        return None

    def _validate(self, request: Request, relative: str, raw: bytes, content_type: str, has_body: bool) -> str | None:
        from openapi_core.datatypes import RequestParameters

        body: bytes | None = raw or None
        if has_body and not _is_json(content_type):
            # The agent ignores a non-JSON body and runs as if {} was sent; validate what it acts on.
            body, content_type = b"{}", "application/json"
        spec_request = _SpecRequest(
            host_url=f"{request.url.scheme}://{request.url.netloc}",
            path=relative,
            method=request.method.lower(),
            body=body,
            content_type=content_type.lower(),
            parameters=RequestParameters(query=request.query_params, header=request.headers),
        )
        # Undeclared query params (page, pageSize, status, selector, textSearch) are not errors for
        # openapi-core, which matches the agent reading them anyway.
        errors = list(self._openapi.iter_request_errors(spec_request))
        return _describe_errors(errors) if errors else None

    # ---- workflows -------------------------------------------------------------------------------

    def _list_workflows(self, call: _Call) -> Response:
        selector = call.query.get("selector", "")
        search = call.query.get("textSearch", "")
        with self._lock:
            found = [
                copy.deepcopy(w)
                for name, w in sorted(self._workflows.items())
                if matches_label_selector(w.get("labels"), selector) and search in name
            ]
        return JSONResponse(found)

    def _get_workflow(self, call: _Call) -> Response:
        name = call.params["name"]
        with self._lock:
            workflow = copy.deepcopy(self._workflows.get(name))
        if workflow is None:
            detail = f"failed to get test workflow '{name}': client not found: " + _WORKFLOW_NOT_FOUND.format(name=name)
            return _error(404, detail)
        return JSONResponse(workflow)

    # ---- running ---------------------------------------------------------------------------------

    def _parse_run_body(self, call: _Call) -> tuple[dict[str, Any], Response | None]:
        """The run request as the agent reads it, or a 400 for a body Go could not unmarshal."""
        if not _is_json(call.content_type):
            return {}, None  # fiber's BodyParser: ErrUnprocessableEntity, which the handler tolerates
        prefix = "failed to execute test workflow: invalid body: "
        try:
            body = json.loads(call.raw)
        except ValueError as error:
            return {}, _error(400, prefix + ("unexpected end of JSON input" if not call.raw else str(error)))
        invalid = _check_run_request(body)
        if invalid is not None:
            return {}, _error(400, prefix + invalid)
        return body or {}, None

    def _run(self, call: _Call) -> Response:
        body, error = self._parse_run_body(call)
        if error is not None:
            return error
        name = call.params["name"]
        with self._lock:
            if name not in self._workflows:
                # Unknown workflow: the scheduler's fetch fails and the handler wraps it as a 500.
                detail = (
                    "failed to execute test workflow: execution error: "
                    f"cannot fetch Test Workflow by name: {name}: " + _WORKFLOW_NOT_FOUND.format(name=name)
                )
                return _error(500, detail)
            created = self._create(name, body, group_id=None)
        return JSONResponse(created)

    def _run_by_selector(self, call: _Call) -> Response:
        body, error = self._parse_run_body(call)
        if error is not None:
            return error
        prefix = "failed to execute test workflow: "
        labels: dict[str, str] = {}
        for item in filter(None, call.query.get("selector", "").split(",")):
            found = re.fullmatch(r"([^=!]+?)\s*==?\s*([^=!]*)", item.strip())
            if found is None:  # set-based requirements become MatchExpressions, which are refused
                return _error(500, prefix + "invalid selector: only simple selectors are allowed")
            labels[found.group(1)] = found.group(2)
        with self._lock:
            names = sorted(
                name
                for name, w in self._workflows.items()
                if labels and all(w.get("labels", {}).get(k) == v for k, v in labels.items())
            )
            group_id = _object_id(self._ids) if len(names) > 1 else None
            created = [self._create(name, body, group_id=group_id) for name in names]
        if not created:
            return _error(500, prefix + "error: no execution results")
        return JSONResponse(created)

    def _create(self, workflow_name: str, body: Mapping[str, Any], *, group_id: str | None) -> dict[str, Any]:
        """Create an execution (caller holds the lock) and return a copy of its JSON."""
        number = self._numbers.get(workflow_name, 0) + 1
        self._numbers[workflow_name] = number
        now = _now()
        execution_id = _object_id(self._ids)
        workflow = self._workflows[workflow_name]
        doc: dict[str, Any] = {
            "id": execution_id,
            "groupId": group_id or execution_id,  # a single run is its own group
            "name": f"{workflow_name}-{number}",  # body "name" is not passed on by the OSS agent
            "namespace": NAMESPACE,
            "number": number,
            "scheduledAt": go_time(now),
            "assignedAt": ZERO_TIME,  # not assigned to a runner while queued
            "statusAt": go_time(now),
            "result": {
                "status": "queued",
                "predictedStatus": "passed",
                "queuedAt": go_time(now),
                "startedAt": ZERO_TIME,
                "finishedAt": ZERO_TIME,
                "durationMs": 0,
                "pausedMs": 0,
                "totalDurationMs": 0,
                "initialization": {"status": "queued"},
                "steps": {},
            },
            "workflow": {key: copy.deepcopy(workflow[key]) for key in _WORKFLOW_KEYS if key in workflow} | {"spec": {}},
        }
        # Optional request fields land on the execution only when set (Go's omitempty).
        if body.get("testWorkflowExecutionName"):
            doc["testWorkflowExecutionName"] = body["testWorkflowExecutionName"]
        if body.get("disableWebhooks"):
            doc["disableWebhooks"] = True
        if body.get("silentMode"):
            doc["silentMode"] = copy.deepcopy(body["silentMode"])
        if body.get("tags"):
            doc["tags"] = dict(body["tags"])
        if body.get("runningContext"):
            doc["runningContext"] = copy.deepcopy(body["runningContext"])
        if body.get("config"):
            doc["configParams"] = {
                key: ({"value": value} if value != "" else {"emptyValue": True})
                for key, value in body["config"].items()
            }
        if body.get("runtime"):
            doc["runtime"] = copy.deepcopy(body["runtime"])
        self._executions.append(_Execution(doc=doc, workflow=workflow_name, seq=len(self._executions), status_at=now))
        return copy.deepcopy(doc)

    # ---- reading and the state machine -------------------------------------------------------------

    def _find(self, key: str, workflow: str | None) -> _Execution | None:
        """By id or name (Mongo matches either); with a workflow, that workflow's only (caller locks)."""
        for execution in self._executions:
            if key in (execution.doc["id"], execution.doc["name"]) and workflow in (None, execution.workflow):
                return execution
        return None

    def _get(self, call: _Call) -> Response:
        with self._lock:
            execution = self._find(call.params["id"], call.params.get("name"))
            if execution is None:
                return _error(404, f"get execution: client not found: {_NO_DOCUMENTS}")
            self._advance(execution)
            return JSONResponse(copy.deepcopy(execution.doc))

    def _advance(self, execution: _Execution) -> None:
        """One GET of ``execution``: move it along queued -> running -> outcome (caller holds the lock)."""
        execution.polls += 1
        if execution.finished:
            return
        outcome = self._outcomes.get(execution.workflow, self._outcome)
        status = status_after_polls(
            execution.polls,
            queued_polls=self._queued_polls,
            running_polls=self._running_polls,
            outcome=outcome,
        )
        if status == execution.status:
            return
        now = _now()
        if execution.started is None:
            self._mark_started(execution, now)
        if status in TERMINAL_STATUSES:
            self._finish(execution, status, now)
        else:
            execution.doc["result"]["status"] = status
            self._touch(execution, now)

    def _mark_started(self, execution: _Execution, now: datetime) -> None:
        doc = execution.doc
        execution.started = now
        doc["assignedAt"] = go_time(now)
        doc["result"]["startedAt"] = go_time(now)
        doc["result"]["initialization"] = {
            "status": "passed",
            "queuedAt": doc["result"]["queuedAt"],
            "startedAt": go_time(now),
            "finishedAt": go_time(now),
        }

    def _finish(self, execution: _Execution, status: str, now: datetime) -> None:
        result = execution.doc["result"]
        elapsed = (now - execution.started) if execution.started else timedelta(0)
        milliseconds = elapsed // timedelta(milliseconds=1)
        result["status"] = status
        result["predictedStatus"] = status
        result["finishedAt"] = go_time(now)
        result["duration"] = result["totalDuration"] = go_duration(milliseconds * 1_000_000)
        result["durationMs"] = result["totalDurationMs"] = milliseconds
        if execution.started is None:  # aborted while still queued: initialization never ran
            result["initialization"] = {"status": status, "queuedAt": result["queuedAt"]}
        self._touch(execution, now)

    @staticmethod
    def _touch(execution: _Execution, now: datetime) -> None:
        execution.status_at = now
        execution.doc["statusAt"] = go_time(now)

    # ---- listing ---------------------------------------------------------------------------------

    def _list_executions(self, call: _Call) -> Response:
        workflow = call.params.get("name")
        query = call.query
        page = max(_go_atoi(query.get("page")) or 0, 0)
        page_size = abs(_go_atoi(query.get("pageSize")) or 0) or DEFAULT_PAGE_SIZE
        statuses = parse_status_filter(query.get("status", ""))
        text_search = query.get("textSearch", "")
        try:
            name_pattern = re.compile(text_search, re.IGNORECASE) if text_search else None
        except re.error as error:
            prefix = "failed to list test workflow executions: get execution results"
            return _error(502, f"{prefix}: client problem: {error}")
        with self._lock:
            mine = [e for e in self._executions if workflow in (None, e.workflow)]
            matching = [
                e
                for e in mine
                if (statuses is None or e.status in statuses)
                and matches_tag_selector(e.doc.get("tags"), query.get("tagSelector", ""))
                and matches_label_selector(e.doc["workflow"].get("labels"), query.get("selector", ""))
                and (name_pattern is None or name_pattern.search(e.doc["name"]))
            ]
            matching.sort(key=lambda e: e.seq, reverse=True)  # scheduledAt descending
            # `totals` reuses a default filter, whose page size (100) applies to the count as well.
            newest = sorted(mine, key=lambda e: (e.status_at, e.seq), reverse=True)[:DEFAULT_PAGE_SIZE]
            body = {
                "totals": _totals(newest),
                "filtered": _totals(matching),
                "results": [_summary(e.doc) for e in matching[page * page_size : (page + 1) * page_size]],
            }
        return JSONResponse(body)

    # ---- aborting --------------------------------------------------------------------------------

    def _abort(self, call: _Call) -> Response:
        key = call.params["id"]
        prefix = f"failed to abort test workflow execution '{key}'"
        with self._lock:
            execution = self._find(key, call.params.get("name"))
            if execution is None:
                return _error(404, f"{prefix}: client not found: {_NO_DOCUMENTS}")
            if execution.finished:
                return _error(400, f"{prefix}: checking execution: execution already finished")
            self._finish(execution, "aborted", _now())
        return Response(status_code=204)

    def _abort_all(self, call: _Call) -> Response:
        with self._lock:
            now = _now()
            for execution in self._executions:
                if execution.workflow == call.params["name"] and not execution.finished:
                    self._finish(execution, "aborted", now)
        return Response(status_code=204)


# --------------------------------------------------------------------------------------------------
# Module-private helpers used by the stand-in
# --------------------------------------------------------------------------------------------------


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")


def _first_values(request: Request) -> dict[str, str]:
    """Query parameters with the first value of each (fasthttp's ``Query()``; Starlette keeps the last)."""
    query: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, value)
    return query


def _is_json(content_type: str) -> bool:
    # fiber lower-cases the header and checks the prefix, so parameters like charset are fine.
    return content_type.lower().startswith("application/json")


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(problem(status, detail), status_code=status)


def _totals(executions: Iterable[_Execution]) -> dict[str, int]:
    """``ExecutionsTotals``: every status counts in ``results``; only four have their own counter."""
    totals = {"results": 0, "passed": 0, "failed": 0, "queued": 0, "running": 0}
    for execution in executions:
        totals["results"] += 1
        if execution.status in totals:
            totals[execution.status] += 1
    return totals


_SUMMARY_RESULT_KEYS = (
    "status", "predictedStatus", "queuedAt", "startedAt", "finishedAt", "duration", "totalDuration",
    "durationMs", "totalDurationMs", "pausedMs",
)  # fmt: skip
_SUMMARY_TOP_KEYS = ("id", "groupId", "name", "number", "scheduledAt", "statusAt")
_SUMMARY_KEYS = ("tags", "runningContext", "configParams", "runtime", "silentMode")


def _summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``TestWorkflowExecutionSummary`` of an execution (what list endpoints return)."""
    summary: dict[str, Any] = {key: doc[key] for key in _SUMMARY_TOP_KEYS}
    summary["result"] = {key: doc["result"][key] for key in _SUMMARY_RESULT_KEYS if key in doc["result"]}
    summary["workflow"] = {key: doc["workflow"][key] for key in _WORKFLOW_KEYS if key in doc["workflow"]}
    summary.update({key: doc[key] for key in _SUMMARY_KEYS if key in doc})
    return copy.deepcopy(summary)
