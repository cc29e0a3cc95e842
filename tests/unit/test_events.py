"""The Event of a record (pure): named so a retry re-creates it, never so two episodes share one."""

from __future__ import annotations

from dataclasses import replace

from policyflow.domain.events import event_for
from policyflow.domain.ledger import Record, Status
from policyflow.domain.model import POLICY_REPORT, ReportRef, ResourceRef, ResultKind, Violation

VIOLATION = Violation(ReportRef(POLICY_REPORT, "polr", "default"), "uid-a", ResourceRef("apps/v1", "Deployment", "web",
                      "default", "res-uid"), "require-resources", "cpu", ResultKind.FAIL)
RECORD = Record(key=VIOLATION.key, policy="require-resources", rule="cpu", resource="default/Deployment/web",
                status=Status.FAILED, episode=1, report_uid="aaaaaaaa-1111", updated="2026-12-06T00:00:00+00:00",
                workflow="smoke", execution_name="smoke-1", failure='step "curl" failed (exit 7): refused')


def name(record: Record) -> str:
    return str(event_for(VIOLATION, record, now="2026-12-06T00:00:00Z", instance="me")["metadata"]["name"])


def test_a_retry_names_the_same_event_and_a_new_status_another() -> None:
    assert name(RECORD) == name(replace(RECORD, updated="2026-12-06T00:01:00+00:00"))
    assert name(RECORD) != name(replace(RECORD, status=Status.PASSED))


def test_episode_one_of_a_recreated_report_is_a_new_event() -> None:
    # Kyverno deleted the report when the violation was fixed and wrote a new one when it came back.
    assert name(RECORD) != name(replace(RECORD, report_uid="bbbbbbbb-2222"))


def test_the_message_says_why_the_test_failed() -> None:
    message = event_for(VIOLATION, RECORD, now="2026-12-06T00:00:00Z", instance="me")["message"]
    assert message.endswith('execution smoke-1 failed: step "curl" failed (exit 7): refused')
