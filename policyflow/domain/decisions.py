"""What happens between the steps of a violation's chain (pure).

The chain is fetch-violation -> trigger-testkube -> await-result -> annotate-report. The steps do I/O;
everything they decide is here, as functions of what the previous step found: which failure a run is
for, what to do about it, what a failed trigger means, which record to write, how the chain ended.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from policyflow.domain.digest import FailureDigest
from policyflow.domain.errors import (
    ClaimLostError,
    OutageError,
    PermanentError,
    RefusedError,
    ReportGoneError,
    is_outage,
    is_violations_own,
    one_line,
)
from policyflow.domain.gatekeeper import ParsedConstraint
from policyflow.domain.ledger import Action, Planned, Record
from policyflow.domain.model import ResultKind, Source, Violation
from policyflow.domain.outcome import ChainOutcome
from policyflow.domain.ref import ViolationRef
from policyflow.domain.routing import RoutedTest, RoutingTable
from policyflow.domain.status import IN_FLIGHT, Outcome, Status
from policyflow.domain.testrun import Execution

#: The longest error message a record keeps (records share the report's 256 KiB of annotations).
MAX_RECORD_ERROR = 500


@dataclass(frozen=True, slots=True)
class RunMode:
    """How a run was asked for: a Retry (by hand, the UI's, or retry-failed-triggers) resumes what
    failed; ``force_new_episode`` runs a new test even when this episode's test finished."""

    retry: bool = False
    force_new_episode: bool = False


@dataclass(frozen=True, slots=True)
class Fetched:
    """What fetch-violation found. ``violation`` is None when the failure is gone."""

    ref: ViolationRef
    violation: Violation | None
    planned: Planned | None
    record: Record | None
    report_version: str
    labels: dict[str, str] | None = None
    generation: int | None = None
    gone_reason: str = ""
    #: The failure is not listed, but its source may only have cut it (a truncated Gatekeeper audit
    #: list): nothing is resolved, the record keeps its meaning.
    unsure: bool = False

    @property
    def title(self) -> str:
        """The violation's title when it is there, else the reference's."""
        return self.violation.title if self.violation is not None else self.ref.title


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
    #: Why the test did not pass (None when it passed, or policyflow stopped waiting).
    digest: FailureDigest | None = None


@dataclass(frozen=True, slots=True)
class NextStep:
    """What a chain does after fetch-violation; exactly one field is set."""

    #: Nothing more to do (handled, busy elsewhere, unrouted, or gone without a record).
    outcome: ChainOutcome | None = None
    #: Start the routed test (or find the one a previous attempt started).
    routed: RoutedTest | None = None
    #: The failure is gone, or resumed, while its test runs: await it and record its outcome.
    resume: Triggered | None = None
    #: The failure is gone: record it resolved.
    resolve: Record | None = None


@dataclass(frozen=True, slots=True)
class TriggerFailed:
    """What to do after trigger-testkube gave up: the chain's outcome, and at most one record to
    write (``record``: the violation's own error; ``release``: the claim given back)."""

    outcome: ChainOutcome
    record: Record | None = None
    release: Record | None = None


# --- fetch-violation -------------------------------------------------------------------------------


def failures_named(violations: Iterable[Violation], ref: ViolationRef,
                   results: Iterable[ResultKind]) -> list[Violation]:
    """The failing results of a report that ``ref`` names (one, unless it leaves the resource open).

    A constraint holds resources of every namespace and names none by uid, so for a Gatekeeper ``ref``
    the resource's kind and namespace, when given, must match too."""
    wanted = frozenset(results)
    by_path = ref.source is Source.GATEKEEPER
    return [
        v for v in violations
        if v.policy == ref.policy and v.rule == ref.rule and v.result in wanted
        and (ref.resource_uid is None or v.resource.uid == ref.resource_uid)
        and (ref.resource_name is None or v.resource.name == ref.resource_name)
        and (not by_path or ref.resource_kind is None or v.resource.kind == ref.resource_kind)
        and (not by_path or ref.resource_namespace is None or v.resource.namespace == ref.resource_namespace)
    ]


def unlisted(ref: ViolationRef, constraint: ParsedConstraint, record: Record | None) -> Fetched:
    """What fetch found when an incomplete constraint (its audit list truncated, unreadable, or not
    written yet) does not list the failure: it may only have been cut from the list, so it is not
    gone. A started test is still awaited and recorded; nothing else is written."""
    listed = (f"audit listed {constraint.listed} of {constraint.total_violations} violations"
              if constraint.truncated else "its audit status is incomplete")
    return Fetched(ref, None, None, record, constraint.resource_version, unsure=True,
                   gone_reason=f"{constraint.ref} does not list this failure, but {listed}: left as recorded")


def last_record(records: Mapping[str, Record], ref: ViolationRef) -> Record | None:
    """The newest record of ``ref``'s policy/rule on a report (its failure is gone from it)."""
    previous = [r for r in records.values() if r.policy == ref.policy and r.rule == ref.rule]
    return max(previous, key=lambda r: r.updated) if previous else None


def adjust_plan(planned: Planned, record: Record | None, *, owner: str, mode: RunMode) -> Planned:
    """The plan of a chain, from the cycle's plan and how the run was asked for.

    - our own earlier attempt in this process (a Prefect retry of the step) carries on with it;
    - a Retry resumes an episode recorded as ``error``, or whose run exists but looks alive elsewhere;
    - ``force_new_episode`` turns a finished episode into the next one.
    """
    if record is not None and record.owner == owner and planned.action is Action.BUSY:
        return replace(planned, action=Action.RESUME)
    if mode.retry and record is not None and record.episode == planned.episode and (
        record.status is Status.ERROR or (planned.action is Action.BUSY and record.execution)
    ):
        return replace(planned, action=Action.RESUME, reason=f"retry ({record.status})")
    if mode.force_new_episode and planned.action is Action.HANDLED:
        return replace(planned, action=Action.NEW, episode=planned.episode + 1, reason="run by hand")
    return planned


def route_digest(routed: RoutedTest) -> str:
    """A short digest of what a route runs (workflow and config): a record of an ``error`` remembers
    it, and a different one later means the route changed, so the violation is tried again."""
    text = json.dumps([routed.workflow, routed.config], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def replan_after_route_change(planned: Planned, routed: RoutedTest | None) -> Planned:
    """An episode that ended in its own ``error`` is tried again once its route runs something else
    (another workflow or config than the record names); otherwise it stays handled."""
    record = planned.record
    if routed is None or record is None or record.status is not Status.ERROR or planned.action is not Action.HANDLED:
        return planned
    if record.workflow == routed.workflow and record.route in (None, route_digest(routed)):
        return planned
    return replace(planned, action=Action.RESUME, reason="its route changed since its error")


def _unsure(fetched: Fetched) -> NextStep:
    """After fetch, for a failure its source may only have cut from the list: a started test is
    awaited and recorded; a record ends the chain with its own status (nothing resolved); with no
    record nothing was tested, so it is left for the cycle that lists it again."""
    record = fetched.record
    if record is not None and record.status in IN_FLIGHT and record.execution:
        return NextStep(resume=resumed(record))
    if record is not None:
        return NextStep(outcome=ChainOutcome(record.key, fetched.title, record.workflow, record.execution_name,
                                             Outcome.of(record.status), detail=fetched.gone_reason))
    return NextStep(outcome=ChainOutcome("", fetched.title, None, None, Outcome.UNFINISHED,
                                         detail=f"{fetched.gone_reason}; the cycle that lists it again tests it"))


def next_step(fetched: Fetched, routing: RoutingTable) -> NextStep:
    """What the chain does after fetch-violation."""
    violation, planned, record = fetched.violation, fetched.planned, fetched.record
    title = fetched.title
    if violation is None and fetched.unsure:
        return _unsure(fetched)
    if violation is None:
        if record is None:
            return NextStep(outcome=ChainOutcome("", title, None, None, Outcome.RESOLVED, detail=fetched.gone_reason))
        if record.status in IN_FLIGHT and record.execution:
            # Let a started test finish and record its outcome (policyflow does not abort it).
            return NextStep(resume=resumed(record))
        if record.status is not Status.RESOLVED:
            return NextStep(resolve=replace(record, status=Status.RESOLVED))
        return NextStep(outcome=ChainOutcome(record.key, title, record.workflow, record.execution_name,
                                             Outcome.RESOLVED, detail=fetched.gone_reason))
    assert planned is not None
    if planned.action is Action.BUSY:
        return NextStep(outcome=ChainOutcome(violation.key, title, record.workflow if record else None,
                                             record.execution_name if record else None, Outcome.BUSY,
                                             detail="another policyflow process is running its chain"))
    errored = planned.action is Action.HANDLED and record is not None and record.status is Status.ERROR
    routed = routing.route(violation, fetched.labels) if planned.action is not Action.HANDLED or errored else None
    planned = replan_after_route_change(planned, routed)
    if planned.action is Action.HANDLED:
        status = Outcome.of(record.status) if record else Outcome.RESOLVED
        return NextStep(outcome=ChainOutcome(violation.key, title, record.workflow if record else None,
                                             record.execution_name if record else None, status,
                                             detail=planned.reason))
    if routed is None:
        return NextStep(outcome=ChainOutcome(violation.key, title, None, None, Outcome.UNROUTED, detail="no route"))
    return NextStep(routed=routed)


# --- trigger-testkube ------------------------------------------------------------------------------


def claim_record(fetched: Fetched, routed: RoutedTest, *, now: str, owner: str) -> Record:
    """The ``pending`` record that claims this episode for ``owner`` before its test starts."""
    violation, planned, previous = fetched.violation, fetched.planned, fetched.record
    assert violation is not None and planned is not None
    same_episode = previous is not None and previous.episode == planned.episode
    return Record(
        key=violation.key, policy=violation.policy, rule=violation.rule, resource=str(violation.resource),
        status=Status.PENDING, episode=planned.episode, report_uid=violation.report_uid, updated=now,
        workflow=routed.workflow, generation=fetched.generation,
        detected=previous.detected if same_episode and previous and previous.detected else now, owner=owner,
        route=route_digest(routed),
    )


def started_record(claim: Record, execution: Execution, *, now: str) -> Record:
    """The record once the episode's execution exists."""
    status = execution.ledger_status if execution.ledger_status in IN_FLIGHT else Status.RUNNING
    return replace(claim, status=status, execution=execution.id, execution_name=execution.name, updated=now,
                   error=None)


def trigger_lag(violation: Violation, claim: Record, now: datetime) -> float:
    """Seconds from detection to the test's start: from the result's own timestamp (when the engine
    found the failure) when the report has one, else from the claim (when policyflow saw it)."""
    if violation.timestamp is not None:
        return max(now.timestamp() - violation.timestamp, 0.0)
    try:
        return max((now - datetime.fromisoformat(claim.detected or claim.updated)).total_seconds(), 0.0)
    except (ValueError, TypeError):
        return 0.0


def resumable(fetched: Fetched) -> Triggered | None:
    """The execution a previous attempt of this episode recorded: await it, start nothing."""
    previous, planned = fetched.record, fetched.planned
    if previous is not None and planned is not None and previous.episode == planned.episode and previous.execution:
        return resumed(previous)
    return None


def resumed(record: Record) -> Triggered:
    """The recorded execution of ``record``, to await again (await-result reads its status)."""
    assert record.execution is not None
    execution = Execution(id=record.execution, name=record.execution_name or record.execution,
                          workflow=record.workflow or "", status="running", tags={})
    return Triggered(record=record, execution=execution, reused=True)


def unfinished_outcome(key: str, title: str, workflow: str | None, error: BaseException) -> ChainOutcome:
    """A chain that could not finish and writes nothing: refused, or left for the next cycle."""
    status = Outcome.REFUSED if isinstance(error, RefusedError) else Outcome.UNFINISHED
    return ChainOutcome(key, title, workflow, None, status, detail=one_line(str(error) or type(error).__name__),
                        halt=is_outage(error))


def trigger_failed(fetched: Fetched, routed: RoutedTest, error: BaseException, *, now: str) -> TriggerFailed:
    """After trigger-testkube gave up: a lost claim is another process's episode; the violation's
    own error (and any permanent error that is not a refusal) is recorded, so retry-failed and the
    UI's Retry pick it up; anything else gives the claim back so the next cycle tries again at once."""
    violation, planned = fetched.violation, fetched.planned
    assert violation is not None and planned is not None
    title = fetched.title
    if isinstance(error, ClaimLostError):
        return TriggerFailed(ChainOutcome(violation.key, title, routed.workflow, None, Outcome.BUSY,
                                          detail=str(error)))
    if isinstance(error, ReportGoneError):  # nothing was claimed or started: nothing to write back
        return TriggerFailed(ChainOutcome(violation.key, title, routed.workflow, None, Outcome.RESOLVED,
                                          detail=str(error)))
    base = replace(claim_record(fetched, routed, now=now, owner=""), owner=None)
    if records_error(error):
        record = replace(base, status=Status.ERROR, error=one_line(str(error), MAX_RECORD_ERROR))
        return TriggerFailed(ChainOutcome(violation.key, title, routed.workflow, None, Outcome.ERROR,
                                          detail=one_line(str(error))), record=record)
    return TriggerFailed(unfinished_outcome(violation.key, title, routed.workflow, error), release=base)


def records_error(error: BaseException) -> bool:
    """Whether ``error`` is recorded on the violation as ``error``: its own, or a permanent one that
    is no outage (an outage records nothing: fixing it must not need a retry)."""
    return is_violations_own(error) or (isinstance(error, PermanentError) and not isinstance(error, OutageError))


# --- await-result and annotate-report --------------------------------------------------------------


def result_record(triggered: Triggered, awaited: Awaited) -> Record:
    """The record of a finished wait: the test's status and execution."""
    return replace(triggered.record, status=awaited.status, execution=awaited.execution.id,
                   execution_name=awaited.execution.name, error=None,
                   failure=awaited.digest.short() if awaited.digest is not None else None)


def final_record(record: Record, *, now: str) -> Record:
    """The record annotate-report writes: no owner any more, finished when its episode is."""
    return replace(record, updated=now, owner=None, finished=now if record.status not in IN_FLIGHT else None)


def released_record(record: Record, *, now: str) -> Record:
    """An in-flight record given back (owner cleared): the next cycle resumes it at once."""
    return replace(record, owner=None, updated=now)


def final_outcome(record: Record, title: str, seconds: float, awaited: Awaited | None = None) -> ChainOutcome:
    """The outcome row of a chain that ran to the end (the test's own duration when Testkube knows it)."""
    duration = seconds
    if awaited is not None and awaited.execution.duration_ms is not None:
        duration = awaited.execution.duration_ms / 1000
    return ChainOutcome(record.key, title, record.workflow, record.execution_name or record.execution,
                        Outcome.of(record.status), duration_s=round(duration, 1), detail=record.failure or "")
