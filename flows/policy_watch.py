"""``policy-watch``: one detection cycle. Find the new failures, run each one's chain, say what happened."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow_async
from prefect.states import Pending

from flows.handle_violation import handle_violation
from policyflow import metrics
from policyflow.domain.errors import PermanentError
from policyflow.domain.ledger import Action, Record, resolved_record
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.outcome import UNFINISHED, UNROUTED, ChainOutcome, count_statuses
from policyflow.scanning import Finding, Scan, scan_cluster
from tasks import observe
from tasks.chain import LEASE_SECONDS, _write_record, now_iso, retry_on_transient
from tasks.runtime import current

log = logging.getLogger("policyflow.flows")
_warned_kinds: set[str] = set()


@dataclass
class CycleSummary:
    """What one cycle found and did: counters for logs, and one outcome per violation it acted on."""

    counters: dict[str, int] = field(default_factory=dict)
    outcomes: list[ChainOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@task(name="detect-violations", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2,
      retry_condition_fn=retry_on_transient)
async def detect_violations() -> Scan:
    """List every report and diff it against the records on it (read-only)."""
    runtime = current()
    scan = await asyncio.to_thread(scan_cluster, runtime.kube, runtime.settings, runtime.routing,
                                   now=datetime.now(UTC), lease_seconds=LEASE_SECONDS)
    for kind in scan.skipped_kinds:
        if kind not in _warned_kinds:
            _warned_kinds.add(kind)
            log.warning("%s is not served by this cluster (its CRD is not installed); skipped", kind)
    for problem in scan.problems:
        log.warning("%s", problem)
    return scan


@task(name="record-resolved", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2,
      retry_condition_fn=retry_on_transient)
async def record_resolved(resolved: list[tuple[ReportRef, Record]]) -> int:
    """Mark the records whose failure went away: if it comes back, it is a new episode."""
    now = now_iso()
    for report, record in resolved:
        await asyncio.to_thread(_write_record, current().kube, report, resolved_record(record, now=now))
    return len(resolved)


def chain_parameters(violation: Violation) -> dict[str, Any]:
    """The ``handle-violation`` parameters that name this violation (no secrets, nothing derived)."""
    return {
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


def chain_tags(violation: Violation, workflow: str | None) -> list[str]:
    """Tags of a violation's flow run, for filtering in the UI."""
    tags = [f"policy:{violation.policy}", f"namespace:{violation.resource.namespace or '-'}"]
    if workflow:
        tags.append(f"workflow:{workflow}")
    return tags


async def _run_chain(finding: Finding, gate: asyncio.Semaphore, deployment_id: UUID | None) -> ChainOutcome:
    violation = finding.violation
    workflow = finding.routed.workflow if finding.routed else None
    parameters = chain_parameters(violation)
    async with gate:
        if deployment_id is not None:
            state = await run_as_deployment_run(deployment_id, parameters, violation.title,
                                                chain_tags(violation, workflow))
        else:
            with tags(*chain_tags(violation, workflow)):
                state = await handle_violation(**parameters, return_state=True)
    result = state.result(raise_on_failure=False)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, ChainOutcome):
        return result
    metrics.TRIGGERS_FAILED.labels(kind=type(result).__name__).inc()
    status = "error" if isinstance(result, PermanentError) else UNFINISHED
    return ChainOutcome(violation.key, violation.title, workflow, None, status, detail=str(result))


async def run_as_deployment_run(deployment_id: UUID, parameters: dict[str, Any], name: str,
                                 run_tags: list[str]) -> State[Any]:
    """Run ``handle-violation`` in this process as a run *of its deployment*.

    Why a deployment run: Prefect's Retry button (and ``prefect flow-run retry``) exists only for
    runs that belong to a deployment. Why in this process: a storm of a thousand new violations
    cannot afford a thousand subprocesses; only a retry, which is rare, goes to the served runner.
    The run is created Pending, so the runner (which picks up Scheduled runs) leaves it alone.
    """
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters=parameters, state=Pending(), name=name, tags=run_tags
        )
    state = await run_flow_async(handle_violation, flow_run=flow_run, parameters=parameters, return_type="state")
    assert isinstance(state, State)
    return state


async def _chain_deployment_id(name: str | None) -> UUID | None:
    if not name:
        return None
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            log.warning("deployment %s not found: violation runs are subflows (no Retry button)", name)
            return None
    return deployment.id


@flow(name="policy-watch", log_prints=False)
async def policy_watch(chain_deployment: str | None = None) -> CycleSummary:
    """One cycle: detect new failures, run the chain for each (bounded concurrency), report outcomes.

    ``chain_deployment`` (e.g. ``handle-violation/handle-violation``) makes each violation's run a
    run of that deployment, so it can be retried from the UI; without it they are subflows.
    """
    started = time.monotonic()
    settings = current().settings
    scan = await detect_violations()
    metrics.POLL_DURATION.observe(time.monotonic() - started)
    if scan.resolved:
        await record_resolved(scan.resolved)
    summary = CycleSummary(counters=scan.counters, problems=list(scan.problems))
    chains = [f for f in scan.findings if f.needs_chain]
    for finding in scan.findings:
        if finding.planned.action is not Action.NEW:
            continue
        metrics.VIOLATIONS_DETECTED.inc()
        observe.violation_detected(finding.violation, finding.planned.episode)
        if finding.routed is None:
            metrics.VIOLATIONS_UNROUTED.inc()
            summary.outcomes.append(ChainOutcome(finding.violation.key, finding.violation.title, None, None,
                                                 UNROUTED, detail="no route"))
        else:
            metrics.VIOLATIONS_ROUTED.inc()
    if chains:
        await observe.ensure_testkube_limit(settings.testkube_concurrency)
        deployment_id = await _chain_deployment_id(chain_deployment)
        gate = asyncio.Semaphore(settings.max_concurrent_chains)
        summary.outcomes.extend(await asyncio.gather(*(_run_chain(f, gate, deployment_id) for f in chains)))
    summary.counters.update({f"outcome_{k}": v for k, v in count_statuses(summary.outcomes).items()})
    await observe.cycle_artifact(summary.outcomes, summary.counters)
    log.info("cycle: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.counters.items())))
    return summary
