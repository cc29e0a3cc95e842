"""Running many violations' chains from one flow run: bounded concurrency, in this process, each as
its own ``handle-violation`` flow run (a run of its deployment when one is given)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import Flow, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_async
from prefect.states import Pending

from flows.handle_violation import handle_violation
from flows.handle_violations import handle_violations
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


async def run_chains(requests: list[ChainRequest], *, chain_deployment: str | None,
                     batch_deployment: str | None = None) -> list[ChainOutcome]:
    """Run every request's chain, at most ``max_concurrent_chains`` at once; one outcome each.

    Up to ``storm_threshold`` chains, each is its own ``handle-violation`` run (a run of
    ``chain_deployment`` when given). Beyond it, a storm: ``handle-violations`` runs of up to
    ``batch_size`` violations each (runs of ``batch_deployment`` when given), because a flow run per
    violation would make the Prefect API the bottleneck.
    """
    if not requests:
        return []
    settings = current().settings
    await observe.ensure_testkube_limit(settings.testkube_concurrency)
    if len(requests) > settings.storm_threshold:
        return await _run_batches(requests, batch_deployment)
    deployment_id = await _deployment_id(chain_deployment)
    gate = asyncio.Semaphore(settings.max_concurrent_chains)
    return list(await asyncio.gather(*(_run_one(r, gate, deployment_id) for r in requests)))


async def _run_batches(requests: list[ChainRequest], batch_deployment: str | None) -> list[ChainOutcome]:
    settings = current().settings
    # One rule's storm stays together (the run is named after it); batches of batch_size.
    ordered = sorted(requests, key=lambda r: (r.parameters["policy"], r.parameters["rule"], r.title))
    batches = [ordered[i:i + settings.batch_size] for i in range(0, len(ordered), settings.batch_size)]
    log.info("storm: %d new chains in %d handle-violations runs of up to %d", len(requests), len(batches),
             settings.batch_size)
    deployment_id = await _deployment_id(batch_deployment)
    # Each batch runs its items max_concurrent_chains at once; two batches overlap so one batch's
    # waiting (await-results) hides behind the next one's starting.
    gate = asyncio.Semaphore(2)
    results = await asyncio.gather(*(_run_batch(batch, gate, deployment_id) for batch in batches))
    return [outcome for outcomes in results for outcome in outcomes]


async def _run_batch(batch: list[ChainRequest], gate: asyncio.Semaphore,
                     deployment_id: UUID | None) -> list[ChainOutcome]:
    parameters: dict[str, Any] = {"violations": [r.parameters for r in batch]}
    tags_ = [*sorted({t for r in batch for t in r.tags if t.startswith("policy:")}), "storm"]
    async with gate:
        try:
            if deployment_id is not None:
                state = await run_as_deployment_run(deployment_id, parameters, flow=handle_violations,
                                                    tags=tags_)
            else:
                with tags(*tags_):
                    state = await handle_violations(**parameters, return_state=True)
        except Exception as exc:  # the Prefect API itself failed: not these chains' fault
            log.warning("a batch of %d chains could not run: %s; the next cycle resumes them", len(batch), exc)
            detail = f"Prefect API: {type(exc).__name__}"
            return [ChainOutcome(r.key, r.title, r.workflow, None, UNFINISHED, detail=detail) for r in batch]
    result = state.result(raise_on_failure=False)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, list):
        return [o for o in result if isinstance(o, ChainOutcome)]
    return [ChainOutcome(r.key, r.title, r.workflow, None, UNFINISHED, detail=str(result)) for r in batch]


async def _run_one(request: ChainRequest, gate: asyncio.Semaphore, deployment_id: UUID | None) -> ChainOutcome:
    async with gate:
        try:
            if deployment_id is not None:
                state = await run_as_deployment_run(deployment_id, request.parameters, flow=handle_violation,
                                                    name=request.title, tags=request.tags)
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


async def run_as_deployment_run(deployment_id: UUID, parameters: dict[str, Any], *, flow: Flow[Any, Any],
                                name: str | None = None, tags: list[str] | None = None) -> State[Any]:
    """Run ``flow`` in this process as a run *of its deployment*.

    Why a deployment run: Prefect's Retry button (and ``prefect flow-run retry``) exists only for
    runs that belong to a deployment. Why in this process: a storm of a thousand new violations
    cannot afford a thousand subprocesses; only a retry, which is rare, goes to the served runner.
    The run is created Pending, so the runner (which picks up Scheduled runs) leaves it alone.
    """
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters=parameters, state=Pending(), name=name, tags=tags
        )
    state = await run_flow_async(flow, flow_run=flow_run, parameters=parameters, return_type="state")
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
