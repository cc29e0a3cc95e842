"""The four steps of a violation's chain, each a Prefect task with its own retry policy:
fetch-violation -> trigger-testkube -> await-result -> annotate-report.

Each task calls a client and a pure function; the retry policy reads only the error's type:
:class:`TransientError` is retried with exponential backoff and jitter (after at least the server's
``Retry-After``), anything else fails the step at once with a message that says what to fix.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from policyflow import metrics
from policyflow.clients.kube import ConflictError, ForbiddenError, KubeClient, KubeError
from policyflow.clients.testkube import Execution, TestkubeClient
from policyflow.domain.errors import NotFoundError, PermanentError, PolicyflowError, TransientError, is_transient
from policyflow.domain.events import event_for
from policyflow.domain.ledger import (
    IN_FLIGHT,
    Action,
    Planned,
    Record,
    Status,
    annotation_name,
    episode_id,
    plan_violation,
    prune_patch,
    read_records,
    record_age,
)
from policyflow.domain.model import ReportRef, Violation, report_kind_named
from policyflow.domain.outcome import BUSY, UNFINISHED, UNROUTED, ChainOutcome
from policyflow.domain.reports import parse_report
from policyflow.domain.routing import RoutedTest
from policyflow.domain.testrun import execution_request, execution_tags, execution_url
from tasks import observe
from tasks.observe import holding_testkube_slots
from tasks.runtime import current

log = logging.getLogger("policyflow.chain")

#: Who writes in-flight records from this process (see Record.owner).
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def now_iso() -> str:
    """Now, as the records write it (UTC, ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ClaimLost(PolicyflowError):
    """Another policyflow process claimed this episode first; it will run the test."""


# --- data passed between the steps -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Which violation a chain is for: a report, and the policy/rule (and resource) in it."""

    report: ReportRef
    policy: str
    rule: str
    resource_uid: str | None = None
    resource_name: str | None = None
    force_new_episode: bool = False
    #: A retry (by hand, from the UI, or by retry-failed-triggers): run again what failed, i.e.
    #: resume an episode recorded as ``error``, or one whose run exists but whose chain looks alive.
    retry: bool = False

    @property
    def title(self) -> str:
        """``policy/rule report``: how logs and outcomes name it before the violation is known."""
        return f"{self.policy}/{self.rule} {self.report}"

    @classmethod
    def of(cls, *, report_name: str, policy: str, rule: str, report_namespace: str | None = None,
           report_kind: str = "PolicyReport", resource_name: str | None = None, resource_uid: str | None = None,
           force_new_episode: bool = False, retry: bool = False, **_: Any) -> Target:
        """The target named by a ``handle-violation`` run's parameters (resource kind/namespace only
        name the run; the report and resource uid/name choose the failure)."""
        kind = report_kind_named(report_kind)
        report = ReportRef(kind=kind, name=report_name, namespace=report_namespace if kind.namespaced else None)
        return cls(report=report, policy=policy, rule=rule, resource_uid=resource_uid, resource_name=resource_name,
                   force_new_episode=force_new_episode, retry=retry)


@dataclass(frozen=True, slots=True)
class Fetched:
    """What fetch-violation found. ``violation`` is None when the failure is gone."""

    target: Target
    violation: Violation | None
    planned: Planned | None
    record: Record | None
    report_version: str
    labels: dict[str, str] | None = None
    generation: int | None = None
    gone_reason: str = ""

    @property
    def title(self) -> str:
        """The violation's title when it is there, else the target's."""
        return self.violation.title if self.violation is not None else self.target.title


@dataclass(frozen=True, slots=True)
class Triggered:
    """The episode's execution, started now or found again, and the record written for it."""

    record: Record
    execution: Execution
    reused: bool


@dataclass(frozen=True, slots=True)
class Awaited:
    """How the execution ended, from policyflow's point of view (``timedout`` included)."""

    status: Status
    execution: Execution
    waited_seconds: float


# --- retry policy ----------------------------------------------------------------------------------


def retry_on_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: only transient errors are worth another try."""
    # An unpersisted failed state carries its exception as data; otherwise ask for the result,
    # synchronously (this hook is called from async task engines too).
    exception = state.data if isinstance(state.data, BaseException) else state.result(
        raise_on_failure=False, _sync=True  # type: ignore[call-overload]
    )
    return is_transient(exception)


async def _respect_retry_after(exc: TransientError) -> None:
    # Prefect's backoff is fixed per task; honour a server's Retry-After before handing over to it.
    if exc.retry_after:
        await asyncio.sleep(min(exc.retry_after, 60.0))


def step_options() -> dict[str, Any]:
    """Retry options from the settings, for ``task.with_options`` (tests shorten the delays)."""
    settings = current().settings
    return {
        "retries": settings.retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=settings.retry_delay)
        if settings.retry_delay
        else 0,
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_on_transient,
    }


# --- fetch-violation -------------------------------------------------------------------------------


@task(name="fetch-violation", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient)
async def fetch_violation(target: Target) -> Fetched:
    """Re-read the report; if the failure is gone say so, else collect what the next steps need."""
    runtime = current()
    kube = runtime.kube
    try:
        report = await asyncio.to_thread(kube.get_report, target.report)
    except NotFoundError:
        return Fetched(target, None, None, None, "", gone_reason="the report was deleted")
    except TransientError as exc:
        await _respect_retry_after(exc)
        raise
    parsed = parse_report(target.report.kind, report)
    records, _ = read_records(parsed.annotations)
    results = runtime.settings.violation_filter().results
    matches = [
        v for v in parsed.violations
        if v.policy == target.policy and v.rule == target.rule and v.result in results
        and (target.resource_uid is None or v.resource.uid == target.resource_uid)
        and (target.resource_name is None or v.resource.name == target.resource_name)
    ]
    if not matches:
        previous = [r for r in records.values() if r.policy == target.policy and r.rule == target.rule]
        record = max(previous, key=lambda r: r.updated) if previous else None
        return Fetched(target, None, None, record, parsed.resource_version,
                       gone_reason="the report no longer shows this failure")
    if len({v.key for v in matches}) > 1:
        raise PermanentError(
            f"{target.report} has {len(matches)} failing resources for {target.policy}/{target.rule}: "
            "give resource_name to choose one"
        )
    violation = matches[0]
    record = records.get(violation.key)
    labels, generation = None, None
    try:
        resource = await asyncio.to_thread(kube.get_resource, violation.resource)
    except NotFoundError:
        return Fetched(target, None, None, record, parsed.resource_version,
                       gone_reason="the failing resource was deleted")
    except ForbiddenError as exc:
        log.warning("%s: cannot read the resource (%s); routing without its labels", violation.title, exc)
    else:
        metadata = resource.get("metadata") or {}
        labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
        generation = metadata.get("generation") if isinstance(metadata.get("generation"), int) else None
    track = runtime.settings.track_resource_changes and generation is not None and violation.resource.uid
    planned = plan_violation(
        violation,
        record,
        generations={violation.resource.uid or "": generation} if track and generation is not None else None,
        now=datetime.now(UTC),
        lease_seconds=runtime.settings.claim_lease,
    )
    if record is not None and record.owner == OWNER and planned.action is Action.BUSY:
        # Our own earlier attempt in this process (a Prefect retry): carry on with it.
        planned = replace(planned, action=Action.RESUME)
    if target.retry and record is not None and record.episode == planned.episode and (
        record.status is Status.ERROR or (planned.action is Action.BUSY and record.execution)
    ):
        planned = replace(planned, action=Action.RESUME, reason=f"retry ({record.status})")
    if target.force_new_episode and planned.action is Action.HANDLED:
        planned = replace(planned, action=Action.NEW, episode=planned.episode + 1, reason="run by hand")
    return Fetched(target, violation, planned, record, parsed.resource_version, labels, generation)


# --- trigger-testkube ------------------------------------------------------------------------------


def _claim(kube: KubeClient, violation: Violation, claim: Record, report_version: str,
           previous: Record | None) -> None:
    """Write ``claim`` only if nobody else wrote this violation's record since we read it.

    The patch is conditional on the report's resourceVersion. A 409 means the report changed: if the
    record is still what we read (Kyverno rewrote its results, say), try again on the new version; if
    another process wrote the record, it owns the episode.
    """
    name = annotation_name(violation.key)
    version = report_version
    for _ in range(8):
        try:
            kube.patch_report_annotations(violation.report, {name: claim.to_json()}, resource_version=version)
            return
        except KubeError as exc:
            if not _annotations_full(exc):
                raise
            make_room(kube, violation.report, name, claim.to_json())
            continue  # the version moved: the conflict path below re-reads it next time round
        except ConflictError:
            report = kube.get_report(violation.report)
            records, _ = read_records((report.get("metadata") or {}).get("annotations") or {})
            now = records.get(violation.key)
            ours = now is not None and now.owner == OWNER and now.episode == claim.episode
            if now != previous and not ours:
                raise ClaimLost(f"{violation.title}: another policyflow process is handling it") from None
            version = (report.get("metadata") or {}).get("resourceVersion") or ""
    raise TransientError(f"{violation.report}: kept changing while policyflow tried to claim {violation.title}")


def write_record(kube: KubeClient, violation_report: ReportRef, record: Record) -> bool:
    """Merge-patch ``record`` onto its report. False (logged) when the report is gone.

    When the API server refuses because the report's annotations would pass 256 KiB, the oldest of
    our finished records make room (``prune_patch``) and the write is tried once more.
    """
    name, value = annotation_name(record.key), record.to_json()
    try:
        try:
            kube.patch_report_annotations(violation_report, {name: value})
        except KubeError as exc:
            if not _annotations_full(exc):
                raise
            make_room(kube, violation_report, name, value)
            kube.patch_report_annotations(violation_report, {name: value})
    except NotFoundError:
        log.warning("%s vanished; the record of %s/%s was not written", violation_report, record.policy, record.rule)
        return False
    return True


def _annotations_full(exc: Exception) -> bool:
    return "metadata.annotations" in str(exc) and "Too long" in str(exc)


def make_room(kube: KubeClient, report_ref: ReportRef, name: str, value: str) -> None:
    """Delete the oldest of our finished records so that ``name: value`` fits (see ``prune_patch``).
    Deleting finished records needs no precondition: no chain is working on them."""
    report = kube.get_report(report_ref)
    annotations = (report.get("metadata") or {}).get("annotations") or {}
    deletions = {k: v for k, v in prune_patch(annotations, name, value).items() if v is None}
    log.warning("%s: annotations at the 256 KiB limit; pruning %d old records", report_ref, len(deletions))
    if deletions:
        kube.patch_report_annotations(report_ref, deletions)


def _post_event(kube: KubeClient, violation: Violation, record: Record) -> None:
    event = event_for(violation, record, now=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), instance=OWNER)
    try:
        kube.create_event(event)
    except (ForbiddenError, NotFoundError) as exc:
        log.warning("no Event for %s: %s", violation.title, exc)


def trigger_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """One cached trigger per episode: a retried flow run gets the run it already started back
    without calling Testkube (the key-tag lookup would find it too; this saves the calls)."""
    fetched = parameters["fetched"]
    if fetched.violation is None or fetched.planned is None:
        return None
    episode = episode_id(fetched.violation.report_uid, fetched.planned.episode)
    return f"policyflow-trigger-{fetched.violation.key}-{episode}"


@task(name="trigger-testkube", cache_key_fn=trigger_cache_key, persist_result=True,
      retry_condition_fn=retry_on_transient)
async def trigger_testkube(fetched: Fetched, routed: RoutedTest) -> Triggered:
    """Start the routed TestWorkflow for this episode, or find the run a previous attempt started."""
    runtime = current()
    violation, planned = fetched.violation, fetched.planned
    assert violation is not None and planned is not None
    kube = runtime.kube
    episode = planned.episode
    previous = fetched.record
    try:
        async with await runtime.testkube() as testkube:
            if previous is not None and previous.episode == episode and previous.execution:
                execution = await testkube.get_execution(execution_id=previous.execution)
                log.info("%s: resuming with execution %s", violation.title, execution.name)
                return Triggered(record=previous, execution=execution, reused=True)
            same_episode = previous is not None and previous.episode == episode
            claim = Record(
                key=violation.key, policy=violation.policy, rule=violation.rule, resource=str(violation.resource),
                status=Status.PENDING, episode=episode, report_uid=violation.report_uid, updated=now_iso(),
                workflow=routed.workflow, generation=fetched.generation,
                detected=previous.detected if same_episode and previous else now_iso(), owner=OWNER,
            )
            await asyncio.to_thread(_claim, kube, violation, claim, fetched.report_version, previous)
            async with holding_testkube_slots():
                started = await _start_once(testkube, violation, routed,
                                            episode_id(violation.report_uid, episode))
    except TransientError as exc:
        await _respect_retry_after(exc)
        raise
    execution, reused = started
    record = replace(
        claim,
        status=Status.RUNNING if execution.status not in ("queued",) else Status.QUEUED,
        execution=execution.id,
        execution_name=execution.name,
        updated=now_iso(),
    )
    if await asyncio.to_thread(write_record, kube, violation.report, record):
        await asyncio.to_thread(_post_event, kube, violation, record)
    metrics.TRIGGERS_STARTED.labels(reused=str(reused).lower()).inc()
    observe.emit_test_event(observe.EVENT_STARTED, record, namespace=violation.resource.namespace,
                       url=execution_link(execution.workflow or routed.workflow, execution.id))
    log.info("%s: %s execution %s of %s", violation.title, "found" if reused else "started",
             execution.name, routed.workflow)
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


# --- await-result ----------------------------------------------------------------------------------


@task(name="await-result", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient)
async def await_result(report: ReportRef, triggered: Triggered) -> Awaited:
    """Poll the execution until it finishes or the overall timeout passes (an outcome of its own)."""
    runtime = current()
    settings = runtime.settings
    title = f"{triggered.record.policy}/{triggered.record.rule} {triggered.record.resource}"
    execution = triggered.execution
    started = time.monotonic()
    deadline = started + settings.await_timeout
    delay = settings.poll_interval
    last_heartbeat = time.monotonic()
    record = triggered.record
    async with await runtime.testkube() as testkube:
        while not execution.finished:
            if time.monotonic() >= deadline:
                log.warning("%s: no result from %s after %.0f s", title, execution.name,
                            settings.await_timeout)
                return Awaited(Status.TIMEDOUT, execution, time.monotonic() - started)
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 1.5, settings.poll_interval_max)
            try:
                execution = await testkube.get_execution(execution_id=execution.id)
            except TransientError as exc:
                # Keep waiting through Testkube hiccups; the overall timeout still bounds the wait.
                log.info("%s: polling %s: %s", title, execution.name, exc)
                continue
            if time.monotonic() - last_heartbeat > settings.claim_lease / 3:
                # Refresh the record so other pollers see this chain is alive (see Record.owner).
                record = replace(record, status=Status.RUNNING, updated=now_iso(), owner=OWNER)
                await asyncio.to_thread(write_record, runtime.kube, report, record)
                last_heartbeat = time.monotonic()
    return Awaited(Status(execution.status), execution, time.monotonic() - started)


# --- annotate-report -------------------------------------------------------------------------------


async def record_outcome(report: ReportRef, record: Record, violation: Violation | None) -> tuple[Record, str | None]:
    """Write the final record onto the report and an Event onto the failing resource (when known);
    emit ``policyflow.test.finished``. Answers the record written and the execution's link."""
    runtime = current()
    final = replace(record, updated=now_iso(), owner=None,
                    finished=now_iso() if record.status not in IN_FLIGHT else None)
    try:
        if await asyncio.to_thread(write_record, runtime.kube, report, final) and violation is not None:
            await asyncio.to_thread(_post_event, runtime.kube, violation, final)
    except TransientError as exc:
        await _respect_retry_after(exc)
        raise
    metrics.OUTCOMES.labels(status=final.status.value).inc()
    if final.detected and final.status not in IN_FLIGHT:
        age = record_age(replace(final, updated=final.detected), datetime.now(UTC))
        if age is not None:
            metrics.DETECTION_TO_RESULT.observe(age)
    url = execution_link(final.workflow or "", final.execution) if final.execution else None
    observe.emit_test_event(observe.EVENT_FINISHED, final,
                            namespace=violation.resource.namespace if violation else report.namespace, url=url)
    return final, url


@task(name="annotate-report", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient)
async def annotate_report(report: ReportRef, record: Record, violation: Violation | None) -> Record:
    """Write the final record onto the report, and an Event onto the failing resource (when known)."""
    final, url = await record_outcome(report, record, violation)
    if violation is not None and final.execution:
        await observe.violation_artifact(violation, final, url=url)
    return final


def execution_link(workflow: str, execution_id: str) -> str:
    """Where a person looks at an execution (dashboard when configured, else the API)."""
    runtime = current()
    settings = runtime.settings
    org, env = settings.testkube_org, settings.testkube_env
    base = str(settings.testkube_url or "").rstrip("/")
    api_base = f"{base}/organizations/{org}/environments/{env}/agent" if org and env else f"{base}/v1"
    return execution_url(dashboard=settings.dashboard_url(), api_base=api_base, workflow=workflow,
                         execution_id=execution_id)


async def release(report: ReportRef, record: Record) -> None:
    """Best effort: mark an in-flight record as abandoned so the next cycle resumes it at once.

    Tried a few times over transient errors: a release that fails leaves the episode to wait out
    the lease (``claim_lease``) before anyone resumes it.
    """
    released = replace(record, owner=None, updated=now_iso())
    for attempt in range(4):
        try:
            await asyncio.to_thread(write_record, current().kube, report, released)
            return
        except TransientError as exc:
            await asyncio.sleep(0.2 * 2**attempt + (exc.retry_after or 0))
        except PolicyflowError as exc:
            log.info("could not release %s/%s: %s", record.policy, record.rule, exc)
            return
    log.warning("could not release %s/%s; it resumes after the lease", record.policy, record.rule)


# --- between the steps: what a chain does next, and how it gives up cleanly ------------------------


@dataclass(frozen=True, slots=True)
class NextStep:
    """What a chain does after fetch-violation; exactly one field is set."""

    #: Nothing more to do (handled, busy elsewhere, unrouted, or gone without a record).
    outcome: ChainOutcome | None = None
    #: Start the routed test (or find the one a previous attempt started).
    routed: RoutedTest | None = None
    #: The failure is gone but its test is running: await it and record its outcome.
    resume: Triggered | None = None
    #: The failure is gone: record it resolved.
    resolve: Record | None = None


def next_step(fetched: Fetched) -> NextStep:
    """Decide from what fetch-violation found; shared by the one-violation and the batch flows."""
    violation, planned, record = fetched.violation, fetched.planned, fetched.record
    if violation is None:
        title = fetched.title
        log.info("%s: %s; no test", title, fetched.gone_reason)
        if record is None:
            return NextStep(outcome=ChainOutcome("", title, None, None, Status.RESOLVED.value,
                                                 detail=fetched.gone_reason))
        if record.status in IN_FLIGHT and record.execution:
            # Let a started test finish and record its outcome (policyflow does not abort it).
            execution = Execution(id=record.execution, name=record.execution_name or record.execution,
                                  workflow=record.workflow or "", status="running", tags={})
            return NextStep(resume=Triggered(record=record, execution=execution, reused=True))
        if record.status is not Status.RESOLVED:
            return NextStep(resolve=replace(record, status=Status.RESOLVED))
        return NextStep(outcome=ChainOutcome(record.key, title, record.workflow, record.execution_name,
                                             Status.RESOLVED.value, detail=fetched.gone_reason))
    assert planned is not None
    if planned.action in (Action.BUSY, Action.HANDLED):
        status, detail = (BUSY, "another policyflow process is running its chain") if planned.action is Action.BUSY \
            else (record.status.value if record else planned.action.value, planned.reason)
        return NextStep(outcome=ChainOutcome(violation.key, violation.title, record.workflow if record else None,
                                             record.execution_name if record else None, status, detail=detail))
    routed = current().routing.route(violation, fetched.labels)
    if routed is None:
        log.info("%s: no route (add one to the config file, or set POLICYFLOW_DEFAULT_WORKFLOW)", violation.title)
        return NextStep(outcome=ChainOutcome(violation.key, violation.title, None, None, UNROUTED,
                                             detail="no route"))
    return NextStep(routed=routed)


async def after_trigger_failed(fetched: Fetched, routed: RoutedTest, exc: BaseException) -> ChainOutcome:
    """Leave the ledger right after trigger-testkube gave up: a lost claim is another process's
    episode; a permanent error is recorded (retry-failed and the UI's Retry pick it up); a transient
    one gives the claim back so the next cycle tries again at once."""
    violation, planned = fetched.violation, fetched.planned
    assert violation is not None and planned is not None
    if isinstance(exc, ClaimLost):
        return ChainOutcome(violation.key, violation.title, routed.workflow, None, BUSY, detail=str(exc))
    record = Record(
        key=violation.key, policy=violation.policy, rule=violation.rule, resource=str(violation.resource),
        status=Status.ERROR if isinstance(exc, PermanentError) else Status.PENDING, episode=planned.episode,
        report_uid=violation.report_uid, updated=now_iso(), workflow=routed.workflow,
        generation=fetched.generation, detected=now_iso(),
        error=str(exc)[:500] if isinstance(exc, PermanentError) else None,
    )
    if isinstance(exc, PermanentError):
        try:
            await record_outcome(violation.report, record, violation)
        except Exception as annotate_exc:  # the original error matters more; say why the record is missing
            log.warning("%s: could not record the error: %s", violation.title, annotate_exc)
        status = Status.ERROR.value
    else:
        await release(violation.report, record)
        status = UNFINISHED
    return ChainOutcome(violation.key, violation.title, routed.workflow, None, status, detail=str(exc))


def failed_outcome(key: str, title: str, workflow: str | None, exc: BaseException) -> ChainOutcome:
    """A chain that could not finish: recorded as ``error`` when permanent, else the next cycle resumes it."""
    status = Status.ERROR.value if isinstance(exc, PermanentError) else UNFINISHED
    return ChainOutcome(key, title, workflow, None, status, detail=str(exc) or type(exc).__name__)


def result_record(triggered: Triggered, awaited: Awaited) -> Record:
    """The record of a finished wait: the test's status and execution."""
    return replace(triggered.record, status=awaited.status, execution=awaited.execution.id,
                   execution_name=awaited.execution.name, error=None)


def final_outcome(record: Record, title: str, seconds: float, awaited: Awaited | None = None) -> ChainOutcome:
    """The outcome row of a chain that ran to the end (the test's own duration when Testkube knows it)."""
    duration = seconds
    if awaited is not None and awaited.execution.duration_ms is not None:
        duration = awaited.execution.duration_ms / 1000
    return ChainOutcome(record.key, title, record.workflow, record.execution_name or record.execution,
                        record.status.value, duration_s=round(duration, 1))


async def start_at_once(target: Target, routed: RoutedTest, gate: asyncio.Semaphore) -> Triggered | None:
    """fetch-violation and trigger-testkube right now, outside Prefect: the watch's sub-second start.

    Best effort: the chain's Prefect run follows and resumes from the record this writes (same owner,
    same episode, the execution found by its id or tags), so whatever this could not do, the run does,
    with its retries. None when nothing was started (already handled, claimed elsewhere, an error).
    """
    try:
        fetched = await fetch_violation.fn(target)
        if fetched.violation is None or fetched.planned is None or \
                fetched.planned.action not in (Action.NEW, Action.RESUME):
            return None
        async with observe.bounded_here(gate):
            return await trigger_testkube.fn(fetched, routed)
    except PolicyflowError as exc:
        log.info("%s/%s: not started at once (%s); its run will", target.policy, target.rule, exc)
        return None
