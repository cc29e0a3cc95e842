"""``policy-watch``: one detection cycle. Find the new failures, run each one's chain, say what happened."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from flows.handle_violation import handle_violation
from policyflow.domain.errors import PermanentError
from policyflow.domain.ledger import Action, Record, resolved_record
from policyflow.domain.model import ReportRef
from policyflow.domain.outcome import UNFINISHED, UNROUTED, ChainOutcome, count_statuses
from policyflow.scanning import Finding, Scan, scan_cluster
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


async def _run_chain(finding: Finding, gate: asyncio.Semaphore) -> ChainOutcome:
    violation = finding.violation
    async with gate:
        state: State[Any] = await handle_violation(
            report_name=violation.report.name,
            report_namespace=violation.report.namespace,
            report_kind=violation.report.kind.kind,
            policy=violation.policy,
            rule=violation.rule,
            resource_kind=violation.resource.kind,
            resource_name=violation.resource.name,
            resource_namespace=violation.resource.namespace,
            resource_uid=violation.resource.uid,
            return_state=True,
        )
    result = state.result(raise_on_failure=False)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, ChainOutcome):
        return result
    workflow = finding.routed.workflow if finding.routed else None
    status = "error" if isinstance(result, PermanentError) else UNFINISHED
    return ChainOutcome(violation.key, violation.title, workflow, None, status, detail=str(result))


@flow(name="policy-watch", log_prints=False)
async def policy_watch() -> CycleSummary:
    """One cycle: detect new failures, run the chain for each (bounded concurrency), report outcomes."""
    scan = await detect_violations()
    if scan.resolved:
        await record_resolved(scan.resolved)
    summary = CycleSummary(counters=scan.counters, problems=list(scan.problems))
    gate = asyncio.Semaphore(current().settings.max_concurrent_chains)
    chains = [f for f in scan.findings if f.needs_chain]
    for finding in scan.findings:
        if finding.routed is None and finding.planned.action in (Action.NEW, Action.RESUME):
            summary.outcomes.append(ChainOutcome(finding.violation.key, finding.violation.title, None, None,
                                                 UNROUTED, detail="no route"))
    summary.outcomes.extend(await asyncio.gather(*(_run_chain(f, gate) for f in chains)))
    summary.counters.update({f"outcome_{k}": v for k, v in count_statuses(summary.outcomes).items()})
    log.info("cycle: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.counters.items())))
    return summary
