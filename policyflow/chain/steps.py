"""The four steps of a violation's chain, as plain async functions of their dependencies.

Each step does its I/O and asks :mod:`policyflow.domain.decisions` what it means. None retries by
itself: the one retry policy wraps whole steps (:mod:`.run`), so a retried step starts from what it
was given, and every write it repeats is idempotent (merge-patches, Events named by episode, the
execution found again by its tags).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from policyflow import metrics
from policyflow.chain.deps import Deps
from policyflow.chain.digest import collect_digest
from policyflow.chain.story import story
from policyflow.clients.testkube import TestkubeClient
from policyflow.domain.decisions import (
    Awaited,
    Fetched,
    RunMode,
    Triggered,
    adjust_plan,
    claim_record,
    failures_named,
    final_record,
    last_record,
    resumable,
    started_record,
    trigger_lag,
    unlisted,
)
from policyflow.domain.digest import FailureDigest
from policyflow.domain.errors import (
    AmbiguousTargetError,
    ForbiddenError,
    NotFoundError,
    ReportGoneError,
    TransientError,
    UnreachableError,
    one_line,
)
from policyflow.domain.events import REASONS
from policyflow.domain.gatekeeper import ParsedConstraint
from policyflow.domain.ledger import (
    Action,
    Record,
    annotation_name,
    episode_id,
    plan_violation,
    read_records,
    record_age,
)
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.ref import ViolationRef
from policyflow.domain.reports import parse_source
from policyflow.domain.routing import RoutedTest
from policyflow.domain.status import FINISHED, IN_FLIGHT, Status
from policyflow.domain.testrun import Execution, execution_request, execution_tags
from policyflow.liveness import owner_is_alive

log = logging.getLogger("policyflow.chain")

_ACTION_SAYS = {Action.NEW: "a new episode", Action.RESUME: "resuming its unfinished chain",
                Action.HANDLED: "already handled", Action.BUSY: "another process is on it"}


async def fetch(deps: Deps, ref: ViolationRef, mode: RunMode) -> Fetched:
    """fetch-violation: re-read the report; if the failure is gone say so, else collect what the
    next steps need (the record, the resource's labels and generation, the plan)."""
    if not deps.lease_taken:  # this process's liveness here, before it claims anything
        await asyncio.to_thread(deps.take_lease)
    try:
        report = await asyncio.to_thread(deps.records.read, ref.report)
    except NotFoundError:
        return Fetched(ref, None, None, None, "", gone_reason="the report was deleted")
    parsed = parse_source(ref.report.kind, report)
    records, _ = read_records(parsed.annotations)
    matches = failures_named([v.in_cluster(deps.cluster) for v in parsed.violations], ref,
                             deps.settings.violation_filter().results)
    if not matches and isinstance(parsed, ParsedConstraint) and not parsed.complete:
        return unlisted(ref, parsed, last_record(records, ref))
    if not matches:
        return Fetched(ref, None, None, last_record(records, ref), parsed.resource_version,
                       gone_reason="the report no longer shows this failure")
    if len({v.key for v in matches}) > 1:
        raise AmbiguousTargetError(
            f"{ref.report} has {len(matches)} failing resources for {ref.policy}/{ref.rule}: "
            "give resource_name to choose one"
        )
    violation = matches[0]
    record = records.get(violation.key)
    labels, generation = None, None
    try:
        resource = await asyncio.to_thread(deps.kube.get_resource, violation.resource)
    except NotFoundError:
        return Fetched(ref, None, None, record, parsed.resource_version, gone_reason="the failing resource was deleted")
    except ForbiddenError as exc:
        log.warning("%s: cannot read the resource (%s); routing without its labels", violation.title, exc)
    else:
        metadata = resource.get("metadata") or {}
        labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
        generation = metadata.get("generation") if isinstance(metadata.get("generation"), int) else None
    track = deps.settings.track_resource_changes and generation is not None and violation.resource.uid
    now = deps.clock.now()
    live = None  # Leases unusable here (this process holds none): the record's age decides
    if deps.lease is not None and record is not None and record.status in IN_FLIGHT and record.owner and \
            record.owner != deps.owner:
        live = await asyncio.to_thread(owner_is_alive, deps.kube, deps.settings.lease_namespace, record.owner, now)
    planned = plan_violation(
        violation, record,
        generations={violation.resource.uid or "": generation} if track and generation is not None else None,
        now=now, lease_seconds=deps.settings.claim_lease, live_owners=live,
    )
    planned = adjust_plan(planned, record, owner=deps.owner, mode=mode)
    message = f": {one_line(violation.message)[:200]}" if violation.message else ""
    story(log, violation.title, "%s %s in %s%s; %s, episode %d (%s)", violation.result.value.upper(),
          violation.resource, violation.report, message, _ACTION_SAYS[planned.action], planned.episode,
          planned.reason)
    return Fetched(ref, violation, planned, record, parsed.resource_version, labels, generation)


async def trigger(deps: Deps, fetched: Fetched, routed: RoutedTest) -> Triggered:
    """trigger-testkube: start the routed TestWorkflow for this episode, or find the run a previous
    attempt started. The episode is claimed first, so two processes never both start one."""
    violation, planned = fetched.violation, fetched.planned
    assert violation is not None and planned is not None
    known = resumable(fetched)
    if known is not None:
        story(log, violation.title, "resuming with execution %s (id %s), started earlier", known.execution.name,
              known.execution.id)
        return known
    testkube = deps.testkube()
    claim = claim_record(fetched, routed, now=deps.clock.stamp(), owner=deps.owner)
    try:
        await asyncio.to_thread(deps.records.claim, violation, claim, report_version=fetched.report_version,
                                previous=fetched.record)
    except NotFoundError:
        raise ReportGoneError(f"{violation.report} was deleted before its test started") from None
    if fetched.record is None or fetched.record.episode != planned.episode:
        await asyncio.to_thread(deps.journal.opened, claim, violation.resource.namespace)
    execution, reused = await _start_once(testkube, violation, routed, episode_id(violation.report_uid,
                                                                                   planned.episode))
    record = started_record(claim, execution, now=deps.clock.stamp())
    if await asyncio.to_thread(deps.records.write, violation.report, record):
        await asyncio.to_thread(deps.records.post_event, violation, record)
    metrics.TRIGGERS_STARTED.labels(reused=str(reused).lower()).inc()
    if not reused:
        metrics.observe_trigger_lag(routed.workflow, trigger_lag(violation, claim, deps.clock.now()))
    deps.observer.test_started(record, namespace=violation.resource.namespace, cluster=deps.cluster,
                               url=deps.execution_link(execution.workflow or routed.workflow, execution.id))
    story(log, violation.title, "%s TestWorkflow %s execution %s (id %s): %s",
          "found the earlier attempt's" if reused else "started", routed.workflow, execution.name, execution.id,
          deps.execution_link(execution.workflow or routed.workflow, execution.id))
    return Triggered(record=record, execution=execution, reused=reused)


async def _start_once(testkube: TestkubeClient, violation: Violation, routed: RoutedTest,
                      episode: str) -> tuple[Execution, bool]:
    """The episode's execution: the one already tagged with its key and episode, else a new one.

    Looking first is what makes a retried trigger safe: when a POST's response was lost after the
    agent started the run, the retry finds that run instead of starting a second.
    """
    existing = await testkube.find_executions(tags=execution_tags(violation, episode))
    if existing:
        return existing[0], True
    request = execution_request(violation, routed, episode)
    return await testkube.run_workflow(workflow=routed.workflow, request=request), False


async def await_result(deps: Deps, report: ReportRef, triggered: Triggered) -> Awaited:
    """await-result: poll the execution until it finishes or ``await_timeout`` passes (``timedout``,
    an outcome of its own). Testkube not answering is waited through for ``await_unreachable``
    seconds in a row; then the step fails, and its Retry waits on the same execution."""
    settings, clock = deps.settings, deps.clock
    record = triggered.record
    title = f"{record.policy}/{record.rule} {record.resource}"
    execution = triggered.execution
    testkube = deps.testkube()
    started = clock.monotonic()
    deadline = started + settings.await_timeout
    delay = settings.poll_interval
    failing_since: float | None = None
    heartbeat = clock.monotonic()
    while not execution.finished:
        if clock.monotonic() >= deadline:
            log.warning("%s: no result from %s after %.0f s", title, execution.name, settings.await_timeout)
            return Awaited(Status.TIMEDOUT, execution, clock.monotonic() - started)
        await asyncio.sleep(min(delay, max(deadline - clock.monotonic(), 0.0)))
        delay = min(delay * 1.5, settings.poll_interval_max)
        try:
            execution = await testkube.get_execution(execution_id=execution.id)
        except TransientError as exc:
            failing_since = failing_since if failing_since is not None else clock.monotonic()
            if clock.monotonic() - failing_since >= settings.await_unreachable:
                raise UnreachableError(
                    f"{title}: Testkube has not answered about {execution.name} for "
                    f"{settings.await_unreachable:g} s ({exc}); Retry waits on the same execution"
                ) from None
            log.info("%s: polling %s: %s", title, execution.name, exc)
            continue
        failing_since = None
        if deps.lease is None and clock.monotonic() - heartbeat > settings.claim_lease / 3:
            # No liveness Lease here: refresh the record so others see this chain is alive.
            record = replace(record, status=Status.RUNNING, updated=clock.stamp(), owner=deps.owner)
            await asyncio.to_thread(deps.records.write, report, record)
            heartbeat = clock.monotonic()
    waited = clock.monotonic() - started
    status = execution.ledger_status
    digest = None
    if status is not Status.PASSED:
        digest = await collect_digest(testkube, execution.id, tail_lines=settings.failure_log_lines,
                                      max_log_bytes=settings.failure_log_max_bytes, retry=deps.retry)
    took = f"{execution.duration_ms / 1000:.1f} s" if execution.duration_ms is not None else f"{waited:.1f} s"
    story(log, title, "execution %s %s after %s%s", execution.name, status.value, took,
          f": {digest.short()}" if digest is not None else "")
    return Awaited(status, execution, waited, digest)


async def annotate(deps: Deps, report: ReportRef, record: Record, violation: Violation | None,
                   digest: FailureDigest | None = None) -> tuple[Record, str | None]:
    """annotate-report: write the final record onto the report and an Event onto the failing
    resource (when known); tell Prefect (``policyflow.test.finished``). Answers the record written
    and the execution's link."""
    final = final_record(record, now=deps.clock.stamp())
    written = await asyncio.to_thread(deps.records.write, report, final)
    if written and violation is not None:
        await asyncio.to_thread(deps.records.post_event, violation, final)
    if final.status in FINISHED:
        await asyncio.to_thread(deps.journal.finished, final)
    namespace = violation.resource.namespace if violation else report.namespace
    metrics.count_outcome(metrics.Scope(policy=final.policy, rule=final.rule, namespace=namespace or "",
                                        workflow=final.workflow or "", cluster=deps.cluster), final.status.value)
    if final.detected and final.status not in IN_FLIGHT:
        age = record_age(replace(final, updated=final.detected), deps.clock.now())
        if age is not None:
            metrics.DETECTION_TO_RESULT.observe(age)
    url = deps.execution_link(final.workflow or "", final.execution) if final.execution else None
    deps.observer.test_finished(final, namespace=namespace, cluster=deps.cluster, url=url, digest=digest)
    if written:
        event = f"; Event {REASONS.get(final.status, 'PolicyTest')} on {violation.resource}" if violation else ""
        story(log, f"{final.policy}/{final.rule} {final.resource}", "recorded %s on %s (annotation %s)%s",
              final.status.value, report, annotation_name(final.key), event)
    return final, url
