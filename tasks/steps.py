"""A violation's run in Prefect: each of the chain's four steps as its own task run
(fetch-violation, trigger-testkube, await-result, annotate-report), which is what the UI shows.

Thin wrappers: each task runs :class:`~policyflow.chain.run.DirectSteps`' step, with the one retry
policy inside it (Prefect's own task retries stay off, so a retry is never counted twice); the
dependencies arrive as a parameter.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from policyflow.chain.deps import Deps
from policyflow.chain.run import DirectSteps
from policyflow.domain.decisions import Awaited, Fetched, RunMode, Triggered
from policyflow.domain.digest import FailureDigest
from policyflow.domain.ledger import Record, episode_id
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.ref import ViolationRef
from policyflow.domain.routing import RoutedTest
from tasks.observe import holding_testkube_slots


@task(name="fetch-violation", cache_policy=NO_CACHE)
async def fetch_violation(deps: Deps, ref: ViolationRef, mode: RunMode) -> Fetched:
    """Re-read the report; if the failure is gone say so, else collect what the next steps need."""
    return await DirectSteps(deps).fetch(ref, mode)


def trigger_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """One cached trigger per episode: a retried flow run gets the run it already started back
    without calling Testkube (the key-tag lookup would find it too; this saves the calls)."""
    fetched: Fetched = parameters["fetched"]
    if fetched.violation is None or fetched.planned is None:
        return None
    episode = episode_id(fetched.violation.report_uid, fetched.planned.episode)
    return f"policyflow-trigger-{fetched.violation.key}-{episode}"


@task(name="trigger-testkube", cache_key_fn=trigger_cache_key, persist_result=True)
async def trigger_testkube(deps: Deps, fetched: Fetched, routed: RoutedTest) -> Triggered:
    """Start the routed TestWorkflow for this episode (one slot of the Testkube limit), or find the
    run a previous attempt started."""
    async with holding_testkube_slots():
        return await DirectSteps(deps).trigger(fetched, routed)


@task(name="await-result", cache_policy=NO_CACHE)
async def await_result(deps: Deps, report: ReportRef, triggered: Triggered) -> Awaited:
    """Poll the execution until it finishes or the overall timeout passes (an outcome of its own)."""
    return await DirectSteps(deps).await_result(report, triggered)


@task(name="annotate-report", cache_policy=NO_CACHE)
async def annotate_report(deps: Deps, report: ReportRef, record: Record, violation: Violation | None,
                          digest: FailureDigest | None = None) -> Record:
    """Write the final record onto the report, an Event onto the failing resource (when known), and
    the run's artifact of the violation's test."""
    final, url = await DirectSteps(deps).annotate_linked(report, record, violation, digest)
    if violation is not None and final.execution:
        await deps.observer.violation_artifact(violation, final, url=url, digest=digest)
    return final


class TaskSteps:
    """The chain's :class:`~policyflow.chain.run.Steps` as one Prefect task run each."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def fetch(self, ref: ViolationRef, mode: RunMode) -> Fetched:
        return await fetch_violation(self.deps, ref, mode)

    async def trigger(self, fetched: Fetched, routed: RoutedTest) -> Triggered:
        return await trigger_testkube(self.deps, fetched, routed)

    async def await_result(self, report: ReportRef, triggered: Triggered) -> Awaited:
        return await await_result(self.deps, report, triggered)

    async def annotate(self, report: ReportRef, record: Record, violation: Violation | None,
                       digest: FailureDigest | None = None) -> Record:
        return await annotate_report(self.deps, report, record, violation, digest)
