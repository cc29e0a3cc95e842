"""``handle-violation``: the chain for one violation, as its own flow run.

fetch-violation -> trigger-testkube -> await-result -> annotate-report. Runnable by hand with the
report's namespace/name and the policy/rule; the poll flow runs it for every new failure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from policyflow.clients.testkube import Execution
from policyflow.domain.errors import PermanentError, TransientError
from policyflow.domain.ledger import IN_FLIGHT, Action, Record, Status
from policyflow.domain.model import ReportRef, report_kind_named
from policyflow.domain.outcome import BUSY, UNROUTED, ChainOutcome
from policyflow.domain.routing import RoutedTest
from tasks.chain import (
    Awaited,
    ClaimLost,
    Fetched,
    Target,
    Triggered,
    annotate_report,
    await_result,
    fetch_violation,
    now_iso,
    release,
    step_options,
    trigger_testkube,
)
from tasks.runtime import current

log = logging.getLogger("policyflow.flows")


def run_name() -> str:
    """``policy/rule namespace/Kind/name``: the violation, as people name it."""
    p: dict[str, Any] = flow_run.parameters
    where = p.get("resource_namespace") or p.get("report_namespace") or ""
    if p.get("resource_kind") and p.get("resource_name"):
        thing = f"{p['resource_kind']}/{p['resource_name']}"
        thing = f"{where}/{thing}" if where else thing
    else:
        thing = f"{where}/{p.get('report_name')}" if where else str(p.get("report_name"))
    return f"{p.get('policy')}/{p.get('rule')} {thing}"


@flow(name="handle-violation", flow_run_name=run_name, log_prints=False)
async def handle_violation(
    report_name: str,
    policy: str,
    rule: str,
    report_namespace: str | None = None,
    report_kind: str = "PolicyReport",
    resource_kind: str | None = None,
    resource_name: str | None = None,
    resource_namespace: str | None = None,
    resource_uid: str | None = None,
    force_new_episode: bool = False,
    retry: bool = False,
) -> ChainOutcome:
    """Run the chain for the ``policy``/``rule`` failure in one report (and one resource, if given).

    ``force_new_episode`` starts a new test run even when this failure's test already finished.
    ``retry`` runs again what failed (an episode recorded as ``error``); Prefect's own Retry of
    this flow run does the same.
    """
    kind = report_kind_named(report_kind)
    target = Target(
        report=ReportRef(kind=kind, name=report_name, namespace=report_namespace if kind.namespaced else None),
        policy=policy,
        rule=rule,
        resource_uid=resource_uid,
        resource_name=resource_name,
        force_new_episode=force_new_episode,
        # Prefect's Retry (button, `prefect flow-run retry`) re-runs the same flow run: count > 1.
        retry=retry or (flow_run.run_count or 1) > 1,
    )
    options = step_options()
    started = time.monotonic()
    fetched = await fetch_violation.with_options(**options)(target)
    if fetched.violation is None:
        return await _gone(fetched, options, started)
    violation, planned = fetched.violation, fetched.planned
    assert planned is not None
    title = violation.title
    if planned.action is Action.BUSY:
        record = planned.record
        return ChainOutcome(violation.key, title, record.workflow if record else None,
                            record.execution_name if record else None, BUSY,
                            detail="another policyflow process is running its chain")
    if planned.action is Action.HANDLED:
        record = planned.record
        return ChainOutcome(violation.key, title, record.workflow if record else None,
                            record.execution_name if record else None,
                            record.status.value if record else planned.action.value, detail=planned.reason)
    routed = current().routing.route(violation, fetched.labels)
    if routed is None:
        log.info("%s: no route (add one to the config file, or set POLICYFLOW_DEFAULT_WORKFLOW)", title)
        return ChainOutcome(violation.key, title, None, None, UNROUTED, detail="no route")
    try:
        triggered = await trigger_testkube.with_options(**options)(fetched, routed)
    except ClaimLost as exc:
        return ChainOutcome(violation.key, title, routed.workflow, None, BUSY, detail=str(exc))
    except PermanentError as exc:
        await _record_error(fetched, routed, exc, options)
        raise
    except TransientError:
        await _release_claim(fetched, routed)
        raise
    try:
        awaited = await await_result.with_options(**options)(violation.report, triggered)
        final = await annotate_report.with_options(**options)(violation.report, _result_record(triggered, awaited),
                                                              violation)
    except Exception:
        # Give the episode back (owner cleared) so the next cycle resumes it at once with the same
        # execution, instead of waiting out the lease of a chain that is no more.
        await release(violation.report, triggered.record)
        raise
    return _outcome(final, title, time.monotonic() - started, awaited)


def _result_record(triggered: Triggered, awaited: Awaited) -> Record:
    return replace(triggered.record, status=awaited.status, execution=awaited.execution.id,
                   execution_name=awaited.execution.name, error=None)


def _outcome(record: Record, title: str, seconds: float, awaited: Awaited | None = None) -> ChainOutcome:
    duration = seconds
    if awaited is not None and awaited.execution.duration_ms is not None:
        duration = awaited.execution.duration_ms / 1000
    return ChainOutcome(record.key, title, record.workflow, record.execution_name or record.execution,
                        record.status.value, duration_s=round(duration, 1))


async def _gone(fetched: Fetched, options: dict[str, Any], started: float) -> ChainOutcome:
    """The failure went away: record it resolved; a test already running still gets its outcome."""
    record = fetched.record
    target = fetched.target
    title = f"{target.policy}/{target.rule} {target.report}"
    log.info("%s: %s; no test", title, fetched.gone_reason)
    if record is None:
        return ChainOutcome("", title, None, None, Status.RESOLVED.value, detail=fetched.gone_reason)
    if record.status in IN_FLIGHT and record.execution:
        # Let a started test finish and record its outcome (policyflow does not abort it).
        execution = Execution(id=record.execution, name=record.execution_name or record.execution,
                              workflow=record.workflow or "", status="running", tags={})
        triggered = Triggered(record=record, execution=execution, reused=True)
        awaited = await await_result.with_options(**options)(target.report, triggered)
        final = await annotate_report.with_options(**options)(target.report, _result_record(triggered, awaited), None)
        return _outcome(final, title, time.monotonic() - started, awaited)
    if record.status is not Status.RESOLVED:
        record = await annotate_report.with_options(**options)(
            target.report, replace(record, status=Status.RESOLVED), None
        )
    return ChainOutcome(record.key, title, record.workflow, record.execution_name, Status.RESOLVED.value,
                        detail=fetched.gone_reason)


async def _record_error(fetched: Fetched, routed: RoutedTest, exc: Exception, options: dict[str, Any]) -> None:
    violation, planned = fetched.violation, fetched.planned
    assert violation is not None and planned is not None
    record = Record(
        key=violation.key, policy=violation.policy, rule=violation.rule, resource=str(violation.resource),
        status=Status.ERROR, episode=planned.episode, report_uid=violation.report_uid, updated=now_iso(),
        workflow=routed.workflow, generation=fetched.generation, detected=now_iso(), error=str(exc)[:500],
    )
    try:
        await annotate_report.with_options(**options)(violation.report, record, violation)
    except Exception as annotate_exc:  # the original error matters more; say why the record is missing
        log.warning("%s: could not record the error: %s", violation.title, annotate_exc)


async def _release_claim(fetched: Fetched, routed: RoutedTest) -> None:
    violation, planned = fetched.violation, fetched.planned
    assert violation is not None and planned is not None
    record = Record(
        key=violation.key, policy=violation.policy, rule=violation.rule, resource=str(violation.resource),
        status=Status.PENDING, episode=planned.episode, report_uid=violation.report_uid, updated=now_iso(),
        workflow=routed.workflow, generation=fetched.generation, detected=now_iso(),
    )
    await release(violation.report, record)
