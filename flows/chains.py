"""Running many violations' chains from one flow run: bounded concurrency, in this process, each as
its own ``handle-violation`` flow run (a run of its deployment when one is given)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_async
from prefect.states import Pending

from flows.handle_violation import handle_violation
from policyflow import metrics
from policyflow.domain.errors import PermanentError
from policyflow.domain.model import Violation
from policyflow.domain.outcome import UNFINISHED, ChainOutcome
from tasks import observe
from tasks.runtime import current

log = logging.getLogger("policyflow.flows")


@dataclass(frozen=True)
class ChainRequest:
    """One ``handle-violation`` run to make: its parameters, name and tags."""

    key: str
    title: str
    parameters: dict[str, Any]
    workflow: str | None = None
    tags: list[str] = field(default_factory=list)

    @classmethod
    def for_violation(cls, violation: Violation, workflow: str | None, *, retry: bool = False) -> ChainRequest:
        """The run for ``violation``, named and tagged after it (no secrets, nothing derived)."""
        parameters: dict[str, Any] = {
            "report_name": violation.report.name,
            "report_namespace": violation.report.namespace,
            "report_kind": violation.report.kind.kind,
            "policy": violation.policy,
            "rule": violation.rule,
            "resource_kind": violation.resource.kind,
            "resource_name": violation.resource.name,
            "resource_namespace": violation.resource.namespace,
            "resource_uid": violation.resource.uid,
        }
        if retry:
            parameters["retry"] = True
        run_tags = [f"policy:{violation.policy}", f"namespace:{violation.resource.namespace or '-'}"]
        if workflow:
            run_tags.append(f"workflow:{workflow}")
        return cls(violation.key, violation.title, parameters, workflow, run_tags)


async def run_chains(requests: list[ChainRequest], *, chain_deployment: str | None) -> list[ChainOutcome]:
    """Run every request's chain, at most ``max_concurrent_chains`` at once; one outcome each."""
    if not requests:
        return []
    settings = current().settings
    await observe.ensure_testkube_limit(settings.testkube_concurrency)
    deployment_id = await _deployment_id(chain_deployment)
    gate = asyncio.Semaphore(settings.max_concurrent_chains)
    return list(await asyncio.gather(*(_run_one(r, gate, deployment_id) for r in requests)))


async def _run_one(request: ChainRequest, gate: asyncio.Semaphore, deployment_id: UUID | None) -> ChainOutcome:
    async with gate:
        try:
            if deployment_id is not None:
                state = await run_as_deployment_run(deployment_id, request)
            else:
                with tags(*request.tags):
                    state = await handle_violation(**request.parameters, return_state=True)
        except Exception as exc:  # the Prefect API itself failed (overloaded, unreachable): not this chain's fault
            log.warning("%s: could not run its chain: %s; the next cycle resumes it", request.title, exc)
            metrics.TRIGGERS_FAILED.labels(kind=type(exc).__name__).inc()
            return ChainOutcome(request.key, request.title, request.workflow, None, UNFINISHED,
                                detail=f"Prefect API: {type(exc).__name__}")
    result = state.result(raise_on_failure=False)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, ChainOutcome):
        return result
    metrics.TRIGGERS_FAILED.labels(kind=type(result).__name__).inc()
    status = "error" if isinstance(result, PermanentError) else UNFINISHED
    return ChainOutcome(request.key, request.title, request.workflow, None, status, detail=str(result))


async def run_as_deployment_run(deployment_id: UUID, request: ChainRequest) -> State[Any]:
    """Run ``handle-violation`` in this process as a run *of its deployment*.

    Why a deployment run: Prefect's Retry button (and ``prefect flow-run retry``) exists only for
    runs that belong to a deployment. Why in this process: a storm of a thousand new violations
    cannot afford a thousand subprocesses; only a retry, which is rare, goes to the served runner.
    The run is created Pending, so the runner (which picks up Scheduled runs) leaves it alone.
    """
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters=request.parameters, state=Pending(), name=request.title, tags=request.tags
        )
    state = await run_flow_async(handle_violation, flow_run=flow_run, parameters=request.parameters,
                                 return_type="state")
    assert isinstance(state, State)
    return state


async def _deployment_id(name: str | None) -> UUID | None:
    if not name:
        return None
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            log.warning("deployment %s not found: violation runs are subflows (no Retry button)", name)
            return None
    return deployment.id
