"""The record on the report, and the diff of a report against it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from policyflow.domain.ledger import (
    Action,
    Record,
    Status,
    annotation_name,
    plan_report,
    read_records,
)
from policyflow.domain.model import POLICY_REPORT
from policyflow.domain.reports import parse_report
from tests.specs import example

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def violation():
    (v,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    return v


def record(status: Status, *, episode: int = 1, generation: int | None = 3, owner: str | None = None,
           age: float = 3600) -> Record:
    v = violation()
    return Record(key=v.key, policy=v.policy, rule=v.rule, resource=str(v.resource), status=status,
                  episode=episode, report_uid=v.report_uid, updated=(NOW - timedelta(seconds=age)).isoformat(),
                  workflow="smoke-nova", execution="abc", generation=generation, owner=owner)


def plan(rec: Record | None, generations: dict[str, int] | None = None):
    v = violation()
    records = {v.key: rec} if rec else {}
    return plan_report([v], records, generations=generations, now=NOW, lease_seconds=300)


def test_record_round_trips_through_its_annotation() -> None:
    rec = record(Status.PASSED)
    assert Record.from_json(rec.to_json()) == rec
    annotations = {annotation_name(rec.key): rec.to_json(), "other.io/x": "y"}
    records, problems = read_records(annotations)
    assert records == {rec.key: rec}
    assert problems == []
    assert annotation_name(rec.key) == f"policyflow.io/{rec.key}"
    assert len(annotation_name(rec.key).split("/")[1]) <= 63


@pytest.mark.parametrize("value", ["not json", "[1]", '{"status": "passed"}', '{"key": "k", "status": "weird"}'])
def test_unreadable_records_are_reported_and_treated_as_absent(value: str) -> None:
    records, problems = read_records({"policyflow.io/0123456789abcdef": value})
    assert records == {}
    assert len(problems) == 1
    assert "policyflow.io/0123456789abcdef" in problems[0]


def test_first_seen_is_a_new_episode_one() -> None:
    (p,) = plan(None).planned
    assert (p.action, p.episode) == (Action.NEW, 1)


@pytest.mark.parametrize("status", [Status.PASSED, Status.FAILED, Status.TIMEDOUT, Status.ERROR])
def test_finished_is_handled(status: Status) -> None:
    (p,) = plan(record(status)).planned
    assert p.action is Action.HANDLED


def test_back_after_resolving_is_the_next_episode() -> None:
    (p,) = plan(record(Status.RESOLVED, episode=2)).planned
    assert (p.action, p.episode) == (Action.NEW, 3)


def test_a_changed_resource_that_still_fails_is_a_new_episode() -> None:
    v = violation()
    (p,) = plan(record(Status.PASSED, generation=3), {v.resource.uid: 4}).planned
    assert (p.action, p.episode) == (Action.NEW, 2)
    (same,) = plan(record(Status.PASSED, generation=3), {v.resource.uid: 3}).planned
    assert same.action is Action.HANDLED
    (untracked,) = plan(record(Status.PASSED, generation=3), None).planned
    assert untracked.action is Action.HANDLED


def test_in_flight_with_a_live_owner_is_busy_and_a_stale_or_released_one_resumes() -> None:
    (busy,) = plan(record(Status.QUEUED, owner="host:1:x", age=10)).planned
    assert busy.action is Action.BUSY
    (stale,) = plan(record(Status.QUEUED, owner="host:1:x", age=301)).planned
    assert (stale.action, stale.episode) == (Action.RESUME, 1)
    (released,) = plan(record(Status.PENDING, owner=None, age=1)).planned
    assert released.action is Action.RESUME


def test_records_of_vanished_failures_are_resolved_but_in_flight_ones_are_left_to_their_chain() -> None:
    done = replace(record(Status.PASSED), key="aaaaaaaaaaaaaaaa")
    running = replace(record(Status.RUNNING), key="bbbbbbbbbbbbbbbb")
    result = plan_report([], {done.key: done, running.key: running}, now=NOW, lease_seconds=300)
    assert result.resolved == [done]
