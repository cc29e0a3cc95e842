"""The Kubernetes Event that tells ``kubectl describe`` what happened to a violation's test (pure)."""

from __future__ import annotations

import re
from typing import Any

from policyflow.domain.ledger import Record
from policyflow.domain.model import Violation
from policyflow.domain.status import Status

REASONS = {
    Status.QUEUED: "PolicyTestStarted",
    Status.RUNNING: "PolicyTestStarted",
    Status.PASSED: "PolicyTestPassed",
    Status.FAILED: "PolicyTestFailed",
    Status.ABORTED: "PolicyTestAborted",
    Status.CANCELED: "PolicyTestCanceled",
    Status.TIMEDOUT: "PolicyTestTimedOut",
    Status.ERROR: "PolicyTestError",
}
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")
MAX_MESSAGE = 1024


def event_for(violation: Violation, record: Record, *, now: str, instance: str) -> dict[str, Any]:
    """A core/v1 Event on the failing resource for ``record``'s state.

    Its name is derived from the violation key, report, episode and status, so a retried annotate step
    re-creates the same Event (409 AlreadyExists) instead of adding a second one.
    """
    resource = violation.resource
    # Events of cluster-scoped objects live in "default", as kubectl and the kubelet do it.
    namespace = resource.namespace or "default"
    # The report's uid too: a violation fixed and back on a re-created report starts again at
    # episode 1, and its Event must not be taken for the earlier one's (409: no Event at all).
    report = (record.report_uid or "no-uid")[:8]
    suffix = f".policyflow-{violation.key[:12]}-{report}-{record.episode}-{record.status.value}"
    stem = _NOT_DNS.sub("-", resource.name.lower()).strip(".-") or "resource"
    name = stem[: 253 - len(suffix)] + suffix
    execution = record.execution_name or record.execution or "-"
    message = (
        f"Policy {violation.policy} rule {violation.rule}: TestWorkflow {record.workflow or '-'} "
        f"execution {execution} {record.status.value}"
    )
    if record.error:
        message += f": {record.error}"
    elif record.failure:
        message += f": {record.failure}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "name": resource.name,
            **({"namespace": resource.namespace} if resource.namespace else {}),
            **({"uid": resource.uid} if resource.uid else {}),
        },
        "reason": REASONS.get(record.status, "PolicyTest"),
        "message": message[:MAX_MESSAGE],
        "type": "Normal" if record.status in (Status.PASSED, Status.QUEUED, Status.RUNNING) else "Warning",
        "source": {"component": "policyflow"},
        "reportingComponent": "policyflow.io/policyflow",
        "reportingInstance": instance[:128],
        "action": "RunPolicyTest",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
