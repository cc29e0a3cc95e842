"""The detection tasks of a cycle: read every report (read-only), mark what went away, and find the
chains that failed (for retry-failed-triggers)."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import replace
from datetime import timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import ValidationError

from policyflow.chain.deps import Deps
from policyflow.domain.ledger import Action, Record, resolved_record
from policyflow.domain.model import ReportRef
from policyflow.domain.ref import Identity, ViolationRef
from policyflow.domain.status import TEST_DONE, Status
from policyflow.scanning import Finding, Scan, scan_cluster

log = logging.getLogger("policyflow.detect")


async def _scan(deps: Deps, *, once: bool = False) -> Scan:
    """One cluster's scan, tried again as the retry policy says (``once``: a single try). The waits
    between tries are the event loop's, not a thread's: a cycle that gives up on a cluster
    (``cluster_timeout``) cancels them, and no thread goes on retrying after it (which held the
    cycle's end, and a stop, ~30 s)."""
    retry = replace(deps.retry, retries=0) if once else deps.retry
    return await retry.run(
        lambda: asyncio.to_thread(scan_cluster, deps.kube, deps.settings, deps.routing, now=deps.clock.now(),
                                  cluster=deps.cluster),
        what="detect-violations", log=log,
    )


@task(name="detect-violations", cache_policy=NO_CACHE)
async def detect_violations(deps: Deps, *, once: bool = False) -> Scan:
    """List every report and diff it against the records on it (read-only); ``once``: without retries
    (a cluster that was down at the last cycle)."""
    scan = await _scan(deps, once=once)
    for kind in scan.skipped_kinds:
        log.info("%s is not served by this cluster (its CRD is not installed); skipped", kind)
    for problem in scan.problems:
        log.warning("%s", problem)
    return scan


@task(name="record-resolved", cache_policy=NO_CACHE)
async def record_resolved(deps: Deps, resolved: list[tuple[ReportRef, Record]]) -> int:
    """Mark the records whose failure went away: if it comes back, it is a new episode."""
    now = deps.clock.stamp()

    def write_all() -> None:
        for report, record in resolved:
            deps.retry.run_sync(functools.partial(deps.records.write, report, resolved_record(record, now=now)),
                                what=f"record-resolved {record.policy}/{record.rule}", log=log)

    await asyncio.to_thread(write_all)
    return len(resolved)


@task(name="find-failed-chains", cache_policy=NO_CACHE)
async def find_failed_chains(deps: Deps, since_hours: float = 24.0) -> list[Finding]:
    """Violations whose last chain failed: from the records on the reports (status ``error``, or an
    unfinished chain nobody is running), and from the run history (the latest ``handle-violation``
    run of a violation that failed or crashed, while its record shows no finished test)."""
    scan = await _scan(deps)
    chosen: dict[str, Finding] = {}
    for finding in scan.findings:
        record = finding.planned.record
        if finding.routed is None:
            continue
        if (record is not None and record.status is Status.ERROR) or finding.planned.action is Action.RESUME:
            chosen[finding.violation.key] = finding
    latest = await _latest_chain_runs(deps, since_hours)
    for finding in scan.findings:
        run = latest.get(ViolationRef.of(finding.violation).identity)
        record = finding.planned.record
        if run is None or finding.routed is None or run.state is None:
            continue
        if run.state.type in (StateType.FAILED, StateType.CRASHED) and (
            record is None or record.status not in TEST_DONE
        ):
            chosen.setdefault(finding.violation.key, finding)
    return list(chosen.values())


def run_ref(run: FlowRun) -> ViolationRef | None:
    """The violation a ``handle-violation`` run was for (None for a run of an older form)."""
    try:
        return ViolationRef.model_validate(run.parameters.get("violation"))
    except ValidationError:
        return None


async def _latest_chain_runs(deps: Deps, since_hours: float) -> dict[Identity, FlowRun]:
    """The newest ``handle-violation`` run per violation in the last ``since_hours``."""
    since = deps.clock.now() - timedelta(hours=since_hours)
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["handle-violation"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),  # type: ignore[arg-type]
            sort=FlowRunSort.START_TIME_DESC,
            limit=200,  # the API's maximum page
        )
    latest: dict[Identity, FlowRun] = {}
    for run in runs:
        ref = run_ref(run)
        if ref is not None:
            latest.setdefault(ref.identity, run)
    return latest
