"""``handle-violation``: the chain for one violation, as its own flow run.

fetch-violation -> trigger-testkube -> await-result -> annotate-report. Runnable by hand with the
report's namespace/name and the policy/rule; the poll flow runs it for every new failure.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from policyflow.domain.errors import PermanentError, TransientError
from policyflow.domain.outcome import ChainOutcome
from tasks.chain import (
    ClaimLost,
    Target,
    after_trigger_failed,
    annotate_report,
    await_result,
    fetch_violation,
    final_outcome,
    next_step,
    release,
    result_record,
    step_options,
    trigger_testkube,
)

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


def is_prefect_retry() -> bool:
    """Prefect's Retry (button, ``prefect flow-run retry``) re-runs the same flow run: count > 1."""
    return (flow_run.run_count or 1) > 1


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
    target = Target.of(report_name=report_name, policy=policy, rule=rule, report_namespace=report_namespace,
                       report_kind=report_kind, resource_name=resource_name, resource_uid=resource_uid,
                       force_new_episode=force_new_episode, retry=retry or is_prefect_retry())
    options = step_options()
    started = time.monotonic()
    fetched = await fetch_violation.with_options(**options)(target)
    step = next_step(fetched)
    if step.outcome is not None:
        return step.outcome
    title = fetched.title
    if step.resolve is not None:
        record = await annotate_report.with_options(**options)(target.report, step.resolve, None)
        return ChainOutcome(record.key, title, record.workflow, record.execution_name, record.status.value,
                            detail=fetched.gone_reason)
    if step.resume is not None:
        triggered = step.resume
    else:
        assert step.routed is not None
        try:
            triggered = await trigger_testkube.with_options(**options)(fetched, step.routed)
        except (ClaimLost, PermanentError, TransientError) as exc:
            outcome = await after_trigger_failed(fetched, step.routed, exc)
            if isinstance(exc, ClaimLost):
                return outcome
            raise
    try:
        awaited = await await_result.with_options(**options)(target.report, triggered)
        final = await annotate_report.with_options(**options)(target.report, result_record(triggered, awaited),
                                                              fetched.violation)
    except Exception:
        # Give the episode back (owner cleared) so the next cycle resumes it at once with the same
        # execution, instead of waiting out the lease of a chain that is no more.
        await release(target.report, triggered.record)
        raise
    return final_outcome(final, title, time.monotonic() - started, awaited)
