"""What happens between the steps (pure): plans, routes, failed triggers, outcomes, statuses, the
retry policy's waits and the violation reference."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from policyflow.domain import errors
from policyflow.domain.decisions import (
    Fetched,
    RunMode,
    adjust_plan,
    claim_record,
    next_step,
    replan_after_route_change,
    route_digest,
    trigger_failed,
)
from policyflow.domain.ledger import Action, Planned, Record
from policyflow.domain.model import POLICY_REPORT
from policyflow.domain.outcome import EXIT_OK, EXIT_TEST_NOT_PASSED, EXIT_UNFINISHED, ChainOutcome, exit_status
from policyflow.domain.ref import ViolationRef
from policyflow.domain.reports import parse_report
from policyflow.domain.routing import RoutedTest, RoutingTable
from policyflow.domain.status import (
    EXECUTION_STATUSES,
    EXECUTION_TERMINAL,
    IN_FLIGHT,
    TEST_DONE,
    Outcome,
    Status,
    status_of_execution,
)
from policyflow.retry import RetryPolicy
from tests.specs import example

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ROUTED = RoutedTest(route="default", workflow="smoke-nova", config={}, tags={})


def violation():
    (v,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    return v


def record(status: Status, *, episode: int = 1, owner: str | None = None, workflow: str = "smoke-nova",
           route: str | None = None, execution: str | None = "abc") -> Record:
    v = violation()
    return Record(key=v.key, policy=v.policy, rule=v.rule, resource=str(v.resource), status=status, episode=episode,
                  report_uid=v.report_uid, updated=(NOW - timedelta(seconds=5)).isoformat(), workflow=workflow,
                  execution=execution, owner=owner, route=route)


def planned(action: Action, rec: Record | None, episode: int = 1) -> Planned:
    return Planned(violation(), action, episode, rec, reason=action.value)


def fetched(plan: Planned) -> Fetched:
    v = violation()
    return Fetched(ViolationRef.of(v), v, plan, plan.record, "7")


# --- adjust_plan ------------------------------------------------------------------------------------


def test_our_own_busy_record_is_resumed_not_left() -> None:
    mine = record(Status.PENDING, owner="me")
    assert adjust_plan(planned(Action.BUSY, mine), mine, owner="me", mode=RunMode()).action is Action.RESUME
    assert adjust_plan(planned(Action.BUSY, mine), mine, owner="other", mode=RunMode()).action is Action.BUSY


def test_a_retry_resumes_an_error_or_a_started_run_that_looks_alive() -> None:
    failed = record(Status.ERROR, execution=None)
    assert adjust_plan(planned(Action.HANDLED, failed), failed, owner="me", mode=RunMode(retry=True)).action \
        is Action.RESUME
    alive = record(Status.RUNNING, owner="other")
    assert adjust_plan(planned(Action.BUSY, alive), alive, owner="me", mode=RunMode(retry=True)).action \
        is Action.RESUME
    passed = record(Status.PASSED)
    assert adjust_plan(planned(Action.HANDLED, passed), passed, owner="me", mode=RunMode(retry=True)).action \
        is Action.HANDLED


def test_force_new_episode_turns_a_finished_episode_into_the_next() -> None:
    passed = record(Status.PASSED, episode=3)
    adjusted = adjust_plan(planned(Action.HANDLED, passed, 3), passed, owner="me", mode=RunMode(force_new_episode=True))
    assert (adjusted.action, adjusted.episode) == (Action.NEW, 4)


# --- an error runs again when its route changes -----------------------------------------------------


@pytest.mark.parametrize(("workflow", "route", "routed", "action"), [
    ("smoke-nova", route_digest(ROUTED), ROUTED, Action.HANDLED),  # same route: stays handled
    ("smoke-nova", None, ROUTED, Action.HANDLED),  # a record of the older form, same workflow
    ("gone-workflow", None, ROUTED, Action.RESUME),  # another workflow now
    ("smoke-nova", route_digest(ROUTED), replace(ROUTED, config={"url": "x"}), Action.RESUME),  # new config
])
def test_an_error_is_tried_again_only_when_its_route_changed(workflow: str, route: str | None,
                                                                routed: RoutedTest, action: Action) -> None:
    failed = record(Status.ERROR, workflow=workflow, route=route, execution=None)
    assert replan_after_route_change(planned(Action.HANDLED, failed), routed).action is action


def test_a_finished_test_never_reruns_for_a_route_change() -> None:
    passed = record(Status.PASSED, workflow="old")
    assert replan_after_route_change(planned(Action.HANDLED, passed), ROUTED).action is Action.HANDLED


def test_next_step_reruns_an_errored_violation_whose_route_changed() -> None:
    failed = record(Status.ERROR, workflow="gone-workflow", execution=None)
    step = next_step(fetched(planned(Action.HANDLED, failed)), RoutingTable(default_workflow="smoke-nova"))
    assert step.routed is not None and step.routed.workflow == "smoke-nova"


def test_next_step_leaves_busy_and_handled_and_reports_unrouted() -> None:
    routing = RoutingTable(default_workflow="smoke-nova")
    busy = next_step(fetched(planned(Action.BUSY, record(Status.RUNNING, owner="x"))), routing)
    assert busy.outcome is not None and busy.outcome.status is Outcome.BUSY
    done = next_step(fetched(planned(Action.HANDLED, record(Status.FAILED))), routing)
    assert done.outcome is not None and done.outcome.status is Outcome.FAILED
    unrouted = next_step(fetched(planned(Action.NEW, None)), RoutingTable())
    assert unrouted.outcome is not None and unrouted.outcome.status is Outcome.UNROUTED


@pytest.mark.parametrize(("rec", "resumes", "outcome"), [
    (record(Status.RUNNING), True, None),  # a started test is still awaited and recorded
    (record(Status.PASSED), False, Outcome.PASSED),  # tested: ends with its record's status
    (record(Status.PENDING, execution=None), False, Outcome.PENDING),  # claimed, not started
    (None, False, Outcome.UNFINISHED),  # never tested: left for the cycle that lists it again
])
def test_a_failure_only_maybe_cut_from_its_list_is_never_called_resolved(
        rec: Record | None, resumes: bool, outcome: Outcome | None) -> None:
    unsure = Fetched(ViolationRef.of(violation()), None, None, rec, "7", unsure=True, gone_reason="not listed")
    step = next_step(unsure, RoutingTable(default_workflow="smoke-nova"))
    assert step.resolve is None and (step.resume is not None) is resumes
    assert (step.outcome.status if step.outcome else None) is outcome
    gone = next_step(replace(unsure, unsure=False), RoutingTable(default_workflow="smoke-nova"))
    assert gone.resume is not None or gone.resolve is not None or gone.outcome.status is Outcome.RESOLVED


# --- what a failed trigger means --------------------------------------------------------------------

CASES = [
    (errors.ClaimLostError("taken"), Outcome.BUSY, "none", False),
    (errors.UnknownWorkflowError("no such workflow", status=500), Outcome.ERROR, "record", False),
    (errors.RefusedError("token refused", status=401), Outcome.REFUSED, "release", True),
    (errors.UnreachableError("silent for 300 s"), Outcome.UNFINISHED, "release", True),
    (errors.TransientError("503", status=503), Outcome.UNFINISHED, "release", False),
    (errors.TransientError("connection refused"), Outcome.UNFINISHED, "release", True),
    (errors.PermanentError("400 bad", status=400), Outcome.ERROR, "record", False),
]


@pytest.mark.parametrize(("error", "outcome", "write", "halt"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_a_failed_trigger_leaves_the_ledger_as_its_cause_says(error: Exception, outcome: Outcome, write: str,
                                                                halt: bool) -> None:
    failed = trigger_failed(fetched(planned(Action.NEW, None)), ROUTED, error, now=NOW.isoformat())
    assert (failed.outcome.status, failed.outcome.halt) == (outcome, halt)
    assert {"none": (None, None), "record": ("error", None), "release": (None, "pending")}[write] == (
        failed.record.status.value if failed.record else None, failed.release.status.value if failed.release else None)
    for written in (failed.record, failed.release):
        if written is not None:
            assert written.owner is None and written.route == route_digest(ROUTED)


def test_a_report_deleted_before_the_claim_is_resolved_with_nothing_written() -> None:
    failed = trigger_failed(fetched(planned(Action.NEW, None)), ROUTED, errors.ReportGoneError("gone"),
                            now=NOW.isoformat())
    assert (failed.outcome.status, failed.record, failed.release) == (Outcome.RESOLVED, None, None)


@given(st.text(max_size=5000))
def test_a_recorded_error_is_one_bounded_line(message: str) -> None:
    failed = trigger_failed(fetched(planned(Action.NEW, None)), ROUTED, errors.UnknownWorkflowError(message),
                            now=NOW.isoformat())
    assert failed.record is not None and failed.record.error is not None
    assert len(failed.record.error) <= 500 and "\n" not in failed.record.error


def test_a_claim_keeps_the_episodes_first_detection() -> None:
    earlier = replace(record(Status.PENDING, execution=None), detected="2026-12-01T00:00:00+00:00")
    claim = claim_record(fetched(planned(Action.RESUME, earlier)), ROUTED, now=NOW.isoformat(), owner="me")
    assert (claim.detected, claim.owner, claim.status) == ("2026-12-01T00:00:00+00:00", "me", Status.PENDING)


# --- statuses ---------------------------------------------------------------------------------------


def test_testkube_statuses_map_explicitly_and_only_its_terminal_ones_finish_a_test() -> None:
    assert {"passed", "failed", "aborted", "canceled"} == EXECUTION_TERMINAL
    assert {status_of_execution(s) for s in EXECUTION_TERMINAL} <= TEST_DONE
    assert {status_of_execution(s) for s in EXECUTION_STATUSES - EXECUTION_TERMINAL} <= IN_FLIGHT
    assert status_of_execution("stopping") is Status.RUNNING  # not terminal (SOURCES 3.6)
    with pytest.raises(KeyError):
        status_of_execution("timeout")  # a step status, never an execution's


def test_every_ledger_status_is_an_outcome() -> None:
    assert {Outcome.of(s).value for s in Status} == {s.value for s in Status}


@pytest.mark.parametrize(("statuses", "code"), [
    ([Outcome.PASSED, Outcome.RESOLVED, Outcome.UNROUTED, Outcome.SUBMITTED], EXIT_OK),
    ([Outcome.PASSED, Outcome.BUSY], EXIT_UNFINISHED),  # in flight under another live process
    ([Outcome.PASSED, Outcome.TIMEDOUT], EXIT_TEST_NOT_PASSED),
    ([Outcome.FAILED, Outcome.REFUSED], EXIT_UNFINISHED),
    ([Outcome.ERROR], EXIT_UNFINISHED),
])
def test_exit_status(statuses: list[Outcome], code: int) -> None:
    assert exit_status(ChainOutcome("k", "v", None, None, s) for s in statuses) == code


# --- the retry policy's waits -----------------------------------------------------------------------


@given(st.integers(0, 8), st.floats(0, 1, exclude_max=True), st.one_of(st.none(), st.floats(0, 500)))
def test_a_wait_backs_off_with_jitter_honours_retry_after_and_is_capped(attempt: int, chance: float,
                                                                          retry_after: float | None) -> None:
    policy = RetryPolicy(retries=8, delay=2.0, jitter=0.5, max_delay=60.0)
    wait = policy.delay_for(attempt, errors.TransientError("503", status=503, retry_after=retry_after), chance=chance)
    backoff = 2.0 * 2**attempt
    assert wait <= 60.0
    assert wait >= min(backoff * 0.5, 60.0) and wait >= min(retry_after or 0.0, 60.0)
    assert wait <= max(backoff * 1.5, retry_after or 0.0)


# --- the violation reference ------------------------------------------------------------------------


def test_a_reference_names_tags_and_identifies_a_violation() -> None:
    ref = ViolationRef.of(violation())
    assert ref.title == "require-resources/require-resources-in-deployment default/Deployment/nginx-no-cpu"
    assert ref.tags("smoke-nova") == ["policy:require-resources", "namespace:default", "cluster:default",
                                      "workflow:smoke-nova"]
    assert ViolationRef.model_validate(ref.model_dump()) == ref
    assert ViolationRef.model_validate(ref.model_dump()).identity == ref.identity


def test_a_cluster_report_has_no_namespace_and_bad_input_is_named() -> None:
    ref = ViolationRef(report_name="r", report_namespace="typed-anyway", report_kind="clusterpolicyreports",
                       policy="p", rule="r")
    assert (ref.report_kind, ref.report.namespace) == ("ClusterPolicyReport", None)
    with pytest.raises(ValidationError, match="unknown report kind"):
        ViolationRef(report_name="r", report_kind="Nope", policy="p", rule="r")
    with pytest.raises(ValidationError, match="Extra inputs"):
        ViolationRef.model_validate({"report_name": "r", "policy": "p", "rule": "r", "resource": "x"})
