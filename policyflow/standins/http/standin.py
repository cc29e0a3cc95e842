"""The request pipeline both stand-ins share: log, fault, handle, and the loopback server's lifecycle."""

from __future__ import annotations

import asyncio
from typing import ClassVar, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policyflow.standins.http.drop import DropConnection, remember_connection
from policyflow.standins.http.faults import Fault, FaultPlan
from policyflow.standins.http.log import RecordedRequest, RequestLog
from policyflow.standins.server import LoopbackServer, Standin


class HttpStandin(Standin):
    """A Starlette app on a loopback port that records every request and fires injected faults.

    Every request goes through one endpoint, in this order: recorded, matched against the faults,
    answered by :meth:`_handle` (unless a fault answers first), and for an ``after`` fault the real
    answer is thrown away and the fault's sent instead. Subclasses say how to answer (:meth:`_handle`)
    and what a fault looks like in their server's dialect (:meth:`_fault_response`).
    """

    METHODS: ClassVar[tuple[str, ...]] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def __init__(self, *, first_query_values: bool) -> None:
        self._log = RequestLog(first_values=first_query_values)
        self._faults = FaultPlan()
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=list(self.METHODS))])
        self._server = LoopbackServer(remember_connection(self.app))

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the port is bound at construction, so known before :meth:`start`)."""
        return self._server.url

    def start(self) -> Self:
        """Serve in a background thread until :meth:`stop`."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.stop()

    # ---- what tests read and control -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        return self._log.snapshot()

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._log.clear()

    def clear_faults(self) -> None:
        """Forget the faults that have not fired yet."""
        self._faults.clear()

    # ---- the pipeline ----------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        raw = await request.body()
        self._log.record(request, raw)
        fault = self._faults.take(request.method, request.url.path, request.url.query)
        if fault is not None and not fault.after:
            return await self._answer_fault(fault, request)
        response = self._handle(request, raw)
        if fault is not None:
            return await self._answer_fault(fault, request)
        return response

    async def _answer_fault(self, fault: Fault, request: Request) -> Response:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status == 0:
            return DropConnection()
        return self._fault_response(fault, request)

    def _handle(self, request: Request, raw: bytes) -> Response:
        """The real answer to ``request`` (``raw`` is its body)."""
        raise NotImplementedError

    def _fault_response(self, fault: Fault, request: Request) -> Response:
        """What an injected HTTP error looks like on this server."""
        raise NotImplementedError
