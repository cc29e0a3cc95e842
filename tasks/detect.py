"""The detection tasks of a cycle: read every report (read-only), and mark what went away."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from policyflow.domain.ledger import Action, Record, Status, resolved_record
from policyflow.domain.model import ReportRef
from policyflow.scanning import Finding, Scan, scan_cluster
from tasks.chain import now_iso, retry_on_transient, write_record
from tasks.runtime import current

log = logging.getLogger("policyflow.detect")
_warned_kinds: set[str] = set()


@task(name="detect-violations", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2,
      retry_condition_fn=retry_on_transient)
async def detect_violations() -> Scan:
    """List every report and diff it against the records on it (read-only)."""
    runtime = current()
    scan = await asyncio.to_thread(scan_cluster, runtime.kube, runtime.settings, runtime.routing,
                                   now=datetime.now(UTC), lease_seconds=runtime.settings.claim_lease)
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
        await asyncio.to_thread(write_record, current().kube, report, resolved_record(record, now=now))
    return len(resolved)


#: Outcomes after which a violation's test is done; a failed flow run of such a violation is not retried.
_TEST_DONE = frozenset({Status.PASSED, Status.FAILED, Status.ABORTED, Status.CANCELED, Status.TIMEDOUT})


@task(name="find-failed-chains", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2,
      retry_condition_fn=retry_on_transient)
async def find_failed_chains(since_hours: float = 24.0) -> list[Finding]:
    """Violations whose last chain failed: from the records on the reports (status ``error``, or an
    unfinished chain nobody is running), and from the run history (the latest ``handle-violation``
    run of a violation that failed or crashed, while its record shows no finished test)."""
    runtime = current()
    scan = await asyncio.to_thread(scan_cluster, runtime.kube, runtime.settings, runtime.routing,
                                   now=datetime.now(UTC), lease_seconds=runtime.settings.claim_lease)
    chosen: dict[str, Finding] = {}
    for finding in scan.findings:
        record = finding.planned.record
        if finding.routed is None:
            continue
        if (record is not None and record.status is Status.ERROR) or finding.planned.action is Action.RESUME:
            chosen[finding.violation.key] = finding
    latest = await _latest_chain_runs(since_hours)
    for finding in scan.findings:
        run = latest.get(_run_identity(finding.violation.report.name, finding.violation.policy,
                                       finding.violation.rule, finding.violation.resource.uid))
        record = finding.planned.record
        if run is None or finding.routed is None or run.state is None:
            continue
        if run.state.type in (StateType.FAILED, StateType.CRASHED) and (
            record is None or record.status not in _TEST_DONE
        ):
            chosen.setdefault(finding.violation.key, finding)
    return list(chosen.values())


def _run_identity(report: Any, policy: Any, rule: Any, uid: Any) -> tuple[str, str, str, str]:
    return (str(report), str(policy), str(rule), str(uid or ""))


async def _latest_chain_runs(since_hours: float) -> dict[tuple[str, str, str, str], FlowRun]:
    """The newest ``handle-violation`` run per violation in the last ``since_hours``."""
    since = datetime.now(UTC) - timedelta(hours=since_hours)
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["handle-violation"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),  # type: ignore[arg-type]
            sort=FlowRunSort.START_TIME_DESC,
            limit=200,  # the API's maximum page
        )
    latest: dict[tuple[str, str, str, str], FlowRun] = {}
    for run in runs:
        p = run.parameters
        latest.setdefault(_run_identity(p.get("report_name"), p.get("policy"), p.get("rule"),
                                        p.get("resource_uid")), run)
    return latest
