"""The example automation parses as a Prefect automation and fires on the events policyflow emits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from policyflow.domain.ledger import Record, Status
from tests.specs import ROOT

AUTOMATION = ROOT / "deployments" / "automations" / "notify-on-failed-smoke-test.yaml"


def emitted_resource(status: Status, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The resource of the ``policyflow.test.finished`` event policyflow emits for a record (Prefect's
    emit_event is replaced by a recorder: here we read what would be sent, not whether it is sent)."""
    from tasks import observe

    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(observe, "emit_event",
                        lambda event, resource, **kw: captured.append({"event": event, "resource": resource}))
    record = Record(key="0123456789abcdef", policy="require-resources", rule="r", resource="default/Deployment/x",
                    status=status, episode=1, report_uid="u", updated="", workflow="smoke-nova")
    observe.PrefectObserver().test_finished(record, namespace="default", cluster="default", url=None)
    (event,) = captured
    assert event["event"] == "policyflow.test.finished"
    resource: dict[str, str] = event["resource"]
    assert resource["policyflow.cluster"] == "default"
    return resource


@pytest.mark.parametrize(("status", "fires"), [(Status.FAILED, True), (Status.TIMEDOUT, True),
                                                (Status.PASSED, False)])
def test_the_example_automation_fires_on_tests_that_did_not_pass(
    status: Status, fires: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.events.schemas.automations import AutomationCore
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    data = yaml.safe_load(AUTOMATION.read_text())
    automation = AutomationCore.model_validate(data)
    assert automation.actions[0].type == "send-notification"
    trigger = EventTrigger.model_validate(data["trigger"])
    event = ReceivedEvent(occurred=datetime.now(UTC), event="policyflow.test.finished",
                          resource=emitted_resource(status, monkeypatch), id=uuid.uuid4())
    assert trigger.covers(event) is fires
