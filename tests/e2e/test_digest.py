"""The failure digest end to end: a smoke test that fails (with a log that leaks a credential) runs
through the real CLI, flows and a real Prefect API; why it failed lands, bounded and redacted, on the
report, the Event, the violation's artifact and the ``policyflow.test.finished`` event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from policyflow.standins.testkube.scripts import smoke_script
from tests.helpers import Policyflow, deploy, load_report, records, wait_until

pytestmark = [pytest.mark.e2e]

SECRET = "tkcapi_0123456789abcdef0123456789abcdef"  # what scripts.FAKE_CREDENTIAL_LINE carries
HEADLINE = 'step "Run smoke test" failed (exit 7)'


def events_on(kube: KubeStandin, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.objects("v1", "Event") if e["involvedObject"]["name"] == name]


def finished_event(api: str, key: str) -> dict[str, Any] | None:
    found = httpx.post(f"{api}/events/filter", timeout=10, json={"filter": {
        "event": {"name": ["policyflow.test.finished"]},
        "resource": {"id": [f"policyflow.violation.{key}"]}}}).json()["events"]
    return found[0] if found else None


def artifact(key: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    found = asyncio.run(read())
    return str(found[0].data) if found else None


def test_a_failing_tests_digest_reaches_the_report_the_event_the_artifact_and_the_prefect_event(
    prefect_api: str, policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    testkube.set_script("smoke-nova", smoke_script(leak_credential=True))
    testkube.set_outcome("smoke-nova", "failed")
    report = load_report(kube, resource=deploy(kube, "nginx-no-cpu"))

    result = policyflow("run-once")
    assert result.code == 1, result.err

    (record,) = records(kube, report)
    assert record["status"] == "failed"
    assert record["failure"].startswith(HEADLINE) and "curl: (7) Failed to connect" in record["failure"]
    assert len(record["failure"]) <= 300

    (event,) = [e for e in events_on(kube, "nginx-no-cpu") if e["reason"] == "PolicyTestFailed"]
    assert HEADLINE in event["message"] and len(event["message"]) <= 1024

    page = wait_until("the violation's artifact", lambda: artifact(f"violation-{record['key']}"), timeout=30)
    assert '### step "Run smoke test" failed \\(exit 7\\)' in page and "- Exit code: 7" in page
    assert "Last 3 log lines:" in page and "```text" in page
    assert "curl: (7) Failed to connect to nginx.default.svc" in page and "[REDACTED]" in page
    assert "[Execution in Testkube]" in page

    finished = wait_until("policyflow.test.finished", lambda: finished_event(prefect_api, record["key"]), timeout=60)
    failure = finished["payload"]["failure"]
    assert failure["step"] == "Run smoke test" and failure["exitCode"] == 7
    assert any("curl: (7)" in line for line in failure["logTail"])

    everything = json.dumps([record, event, page, finished])
    assert SECRET not in everything


@pytest.mark.parametrize(("status", "note"), [(404, r"not found \(404\)"), (503, "Testkube answered 503")])
def test_an_unreadable_log_leaves_the_outcome_and_says_so(
    prefect_api: str, policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, status: int, note: str
) -> None:
    testkube.set_outcome("smoke-nova", "failed")
    testkube.inject(method="GET", path=r"/logs$", status=status, times=50)
    report = load_report(kube, resource=deploy(kube, "nginx-no-cpu"))

    result = policyflow("run-once")
    assert result.code == 1, result.err
    (record,) = records(kube, report)
    assert record["status"] == "failed"
    assert record["failure"].startswith(HEADLINE)
    page = wait_until("the violation's artifact", lambda: artifact(f"violation-{record['key']}"), timeout=30)
    assert note in page
