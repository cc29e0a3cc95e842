"""Running many violations' chains from one flow run: each as its own ``handle-violation`` run (a run
of its deployment when one is given), in this process with bounded concurrency; a storm in
``handle-violations`` batches; or, for scale-out, submitted for served processes and workers to run.

A chain whose cause is not its own (policyflow refused, a system down) stops the cycle: the chains
not started yet are left for the next cycle, which tests them once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from prefect import Flow, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_async
from prefect.states import Pending
from pydantic import ValidationError

from flows.handle_violation import handle_violation
from flows.handle_violations import handle_violations
from policyflow import metrics
from policyflow.chain.deps import Deps
from policyflow.domain.decisions import unfinished_outcome
from policyflow.domain.errors import PermanentError
from policyflow.domain.model import Violation
from policyflow.domain.outcome import ChainOutcome
from policyflow.domain.ref import Identity, ViolationRef
from policyflow.domain.status import Outcome
from tasks import observe

log = logging.getLogger("policyflow.flows")

#: The detail of an outcome whose chain never ran because the Prefect API failed.
PREFECT_API_FAILED = "Prefect API"


@dataclass(frozen=True)
class ChainRequest:
    """One violation's chain to run: which violation, its key, and the workflow its route chose."""

    ref: ViolationRef
    key: str
    workflow: str | None = None
    retry: bool = False
    tags: list[str] = field(default_factory=list)

    @classmethod
    def for_violation(cls, violation: Violation, workflow: str | None, *, retry: bool = False) -> ChainRequest:
        """The run for ``violation``, named and tagged after it (no secrets, nothing derived)."""
        ref = ViolationRef.of(violation)
        return cls(ref, violation.key, workflow, retry, ref.tags(workflow))

    @property
    def parameters(self) -> dict[str, Any]:
        """The ``handle-violation`` run's parameters."""
        return {"violation": self.ref.model_dump(), **({"retry": True} if self.retry else {})}


@dataclass
class Cycle:
    """One cycle's dispatch: its requests, and whether a chain's outage stopped it."""

    deps: Deps
    stopped: str = ""

    def not_run(self, request: ChainRequest, why: str) -> ChainOutcome:
        """The outcome of a chain this cycle did not run: the next cycle resumes it."""
        return ChainOutcome(request.key, request.ref.title, request.workflow, None, Outcome.UNFINISHED,
                            detail=f"not run: {why}")

    def heard(self, outcome: ChainOutcome) -> ChainOutcome:
        """Stop the cycle at the first outage (every other chain would fail the same way)."""
        if outcome.halt and not self.stopped:
            self.stopped = outcome.detail
            log.warning("stopping this cycle: %s; the chains not started yet are left for the next cycle",
                        outcome.detail)
        return outcome


async def run_chains(requests: list[ChainRequest], deps: Deps, *, chain_deployment: str | None,
                     batch_deployment: str | None = None, storm_threshold: int | None = None) -> list[ChainOutcome]:
    """Run every request's chain, at most ``max_concurrent_chains`` at once; one outcome each.

    Up to ``storm_threshold`` chains, each is its own ``handle-violation`` run (a run of
    ``chain_deployment`` when given). Beyond it, a storm: ``handle-violations`` runs of up to
    ``batch_size`` violations each (runs of ``batch_deployment`` when given), because a flow run per
    violation would make the Prefect API the bottleneck. ``storm_threshold`` overrides the setting.
    """
    if not requests:
        return []
    settings = deps.settings
    await observe.ensure_testkube_limit(settings.testkube_concurrency)
    storm = len(requests) > (settings.storm_threshold if storm_threshold is None else storm_threshold)
    if settings.chain_dispatch == "submit":
        return await submit(requests, deps, batch_deployment if storm else chain_deployment, batched=storm)
    cycle = Cycle(deps)
    if storm:
        return await _run_batches(requests, cycle, batch_deployment)
    deployment_id = await _deployment_id(chain_deployment)
    gate = asyncio.Semaphore(settings.max_concurrent_chains)
    return list(await asyncio.gather(*(_run_one(r, cycle, gate, deployment_id) for r in requests)))


def batches(requests: list[ChainRequest], size: int) -> list[list[ChainRequest]]:
    """One rule's storm stays together (the run is named after it); batches of ``size``, each of one
    cluster (its run uses that cluster's clients)."""
    chunks: list[list[ChainRequest]] = []
    for cluster in sorted({r.ref.cluster for r in requests}):
        ordered = sorted((r for r in requests if r.ref.cluster == cluster),
                         key=lambda r: (r.ref.policy, r.ref.rule, r.ref.title))
        chunks += [ordered[i:i + size] for i in range(0, len(ordered), size)]
    return chunks


def _batch_tags(batch: list[ChainRequest]) -> list[str]:
    return [*sorted({t for r in batch for t in r.tags if t.startswith(("policy:", "cluster:"))}), "storm"]


def _batch_parameters(batch: list[ChainRequest]) -> dict[str, Any]:
    return {"violations": [r.ref.model_dump() for r in batch], **({"retry": True} if batch[0].retry else {})}


async def _run_batches(requests: list[ChainRequest], cycle: Cycle, batch_deployment: str | None) -> list[ChainOutcome]:
    size = cycle.deps.settings.batch_size
    chunks = batches(requests, size)
    log.info("storm: %d new chains in %d handle-violations runs of up to %d", len(requests), len(chunks), size)
    deployment_id = await _deployment_id(batch_deployment)
    # One batch at a time, each running its items max_concurrent_chains at once. Measured: two at
    # once were no faster (the CPU is the limit), took each other's Testkube slots (a batch waits out
    # the server's Retry-After for them) and made SQLite-backed servers answer 503 more often.
    outcomes: list[ChainOutcome] = []
    for batch in chunks:
        if cycle.stopped:
            outcomes += [cycle.not_run(r, cycle.stopped) for r in batch]
            continue
        outcomes += [cycle.heard(o) for o in await _run_batch(batch, deployment_id)]
    return outcomes


async def _run_batch(batch: list[ChainRequest], deployment_id: UUID | None) -> list[ChainOutcome]:
    try:
        result = await _run_flow(handle_violations, _batch_parameters(batch), deployment_id,
                                 run_tags=_batch_tags(batch))
    except Exception as exc:  # the Prefect API itself failed: not these chains' fault
        log.warning("a batch of %d chains could not run: %s; the next cycle resumes them", len(batch), exc)
        return [_not_run(r, exc) for r in batch]
    if isinstance(result, list):
        return [o for o in result if isinstance(o, ChainOutcome)]
    return [unfinished_outcome(r.key, r.ref.title, r.workflow, result) for r in batch]


async def _run_one(request: ChainRequest, cycle: Cycle, gate: asyncio.Semaphore,
                   deployment_id: UUID | None) -> ChainOutcome:
    async with gate:
        if cycle.stopped:
            return cycle.not_run(request, cycle.stopped)
        try:
            result = await _run_flow(handle_violation, request.parameters, deployment_id, name=request.ref.title,
                                     run_tags=request.tags)
        except Exception as exc:  # the Prefect API itself failed (overloaded, unreachable): not this chain's fault
            log.warning("%s: could not run its chain: %s; the next cycle resumes it", request.ref.title, exc)
            metrics.TRIGGERS_FAILED.labels(kind=type(exc).__name__).inc()
            return _not_run(request, exc)
    if not isinstance(result, ChainOutcome):
        result = unfinished_outcome(request.key, request.ref.title, request.workflow, result)
    if result.status in (Outcome.UNFINISHED, Outcome.REFUSED, Outcome.ERROR):
        metrics.TRIGGERS_FAILED.labels(kind=result.status.value).inc()
    return cycle.heard(result)


def _not_run(request: ChainRequest, exc: Exception) -> ChainOutcome:
    """The outcome of a chain whose run the Prefect API failed to make: the next cycle resumes it."""
    return ChainOutcome(request.key, request.ref.title, request.workflow, None, Outcome.UNFINISHED,
                        detail=f"{PREFECT_API_FAILED}: {type(exc).__name__}")


async def _run_flow(flow: Flow[Any, Any], parameters: dict[str, Any], deployment_id: UUID | None, *,
                    run_tags: list[str], name: str | None = None) -> Any:
    """Run ``flow`` here (a run of its deployment when one is given, else a subflow) and answer its
    result: the flow's return value (its state's data), or the exception a crashed run ended with."""
    if deployment_id is not None:
        state = await run_as_deployment_run(deployment_id, parameters, flow=flow, name=name, tags=run_tags)
    else:
        with tags(*run_tags):
            # Flow.__call__'s overloads cannot tell an async flow's awaitable state from Flow[Any, Any].
            state = await cast("Awaitable[State[Any]]", flow(**parameters, return_state=True))
    result = state.result(raise_on_failure=False)
    return await result if inspect.isawaitable(result) else result


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


def queued_identities(parameters: dict[str, Any]) -> set[Identity]:
    """The violations a waiting or running run's parameters name (a batch names several)."""
    items = parameters.get("violations") or [parameters.get("violation")]
    identities: set[Identity] = set()
    for item in items:
        try:
            identities.add(ViolationRef.model_validate(item).identity)
        except ValidationError:
            continue  # a run of an older form: it cannot hold a violation this cycle would submit
    return identities


async def submit(requests: list[ChainRequest], deps: Deps, deployment: str | None, *,
                 batched: bool) -> list[ChainOutcome]:
    """Schedule the chains as runs of ``deployment`` for any served process or worker to run now
    (``chain_dispatch: submit``, the scale-out path); answer at once, one ``submitted`` outcome each.

    A violation already waiting in, or running in, a live run of that deployment is not submitted
    again: the next poll comes before a busy worker gets to it. Two runs of one violation would
    still start one test (the claim and the tag lookup decide), but cost a run each.
    """
    deployment_id = await _deployment_id(deployment)
    if deployment_id is None:
        raise PermanentError(f"chain_dispatch is submit but deployment {deployment!r} does not exist: serve or "
                             "deploy it (policyflow serve, prefect deploy --all)")
    async with get_client() as client:
        live: list[Any] = []
        while True:  # every live run, a page at a time (the API answers at most 200)
            page = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))),
                limit=200, offset=len(live),
            )
            live += page
            if len(page) < 200:
                break
        queued = {identity for run in live for identity in queued_identities(run.parameters)}
        fresh = [r for r in requests if r.ref.identity not in queued]
        runs: list[tuple[dict[str, Any], str | None, list[str]]] = (
            [(_batch_parameters(b), None, _batch_tags(b)) for b in batches(fresh, deps.settings.batch_size)]
            if batched else [(r.parameters, r.ref.title, r.tags) for r in fresh]
        )
        for parameters, name, run_tags in runs:
            await client.create_flow_run_from_deployment(deployment_id, parameters=parameters, name=name,
                                                         tags=run_tags)
    log.info("submitted %d chains in %d runs of %s (%d already queued)", len(fresh), len(runs), deployment,
             len(requests) - len(fresh))
    return [ChainOutcome(r.key, r.ref.title, r.workflow, None, Outcome.SUBMITTED,
                         detail="" if r in fresh else "already queued") for r in requests]


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
