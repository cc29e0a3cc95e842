"""A violation's test run on Testkube (pure): the execution request for one episode, and what
policyflow knows of an execution."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from policyflow.domain.model import Violation
from policyflow.domain.routing import RoutedTest
from policyflow.domain.status import EXECUTION_TERMINAL, Status, status_of_execution

#: The tag the Argo Events pipeline sent; kept so dashboards and filters built on it keep working.
TAG_REPORT_NAME = "PolicyViolationName"
TAG_KEY = "policyflow-key"
TAG_EPISODE = "policyflow-episode"
#: Which configured cluster the violation is in (not looked up by: the key already says it).
TAG_CLUSTER = "policyflow-cluster"
#: Tags policyflow owns: a route's extra tags cannot override them.
RESERVED_TAGS = frozenset(
    {TAG_REPORT_NAME, TAG_KEY, TAG_EPISODE, TAG_CLUSTER, "policy", "rule", "resource-kind", "resource-namespace",
     "resource-name"}
)
MAX_TAG_VALUE = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def tag_value(value: str) -> str:
    """A value safe to store as a Testkube tag: one line, bounded length."""
    return _CONTROL.sub(" ", value).strip()[:MAX_TAG_VALUE]


def execution_tags(violation: Violation, episode_id: str) -> dict[str, str]:
    """The tags that identify this violation's episode on Testkube (what a retried trigger looks up).

    Not the cluster tag: the key already names the cluster, and an execution started before there
    were clusters (no such tag) must still be found."""
    return {TAG_KEY: violation.key, TAG_EPISODE: episode_id}


def execution_request(violation: Violation, routed: RoutedTest, episode_id: str) -> dict[str, Any]:
    """The JSON body of ``POST /test-workflows/{name}/executions`` for this episode."""
    tags = {k: tag_value(v) for k, v in routed.tags.items() if k not in RESERVED_TAGS}
    tags.update(
        {
            TAG_REPORT_NAME: tag_value(violation.report.name),
            "policy": tag_value(violation.policy),
            "rule": tag_value(violation.rule),
            "resource-kind": tag_value(violation.resource.kind),
            "resource-namespace": tag_value(violation.resource.namespace or ""),
            "resource-name": tag_value(violation.resource.name),
            TAG_CLUSTER: tag_value(violation.cluster),
        }
    )
    tags.update(execution_tags(violation, episode_id))
    body: dict[str, Any] = {
        "tags": tags,
        "runningContext": {
            "interface": {"type": "api", "name": "policyflow"},
            "actor": {"type": "program", "name": "policyflow"},
        },
    }
    if routed.config:
        body["config"] = dict(routed.config)
    return body


def execution_url(*, dashboard: str | None, api_base: str, workflow: str, execution_id: str) -> str:
    """Where a person sees the execution: the Testkube dashboard when known, else the API resource."""
    if dashboard:
        path = f"test-workflows/{quote(workflow, safe='')}/execution/{quote(execution_id, safe='')}"
        return f"{dashboard.rstrip('/')}/{path}"
    return f"{api_base.rstrip('/')}/test-workflow-executions/{quote(execution_id, safe='')}"


@dataclass(frozen=True, slots=True)
class Execution:
    """What policyflow needs of a TestWorkflowExecution (or of its summary in a list)."""

    id: str
    name: str
    workflow: str
    #: Testkube's own status (one of ``EXECUTION_STATUSES``).
    status: str
    tags: dict[str, str]
    scheduled_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None

    @property
    def finished(self) -> bool:
        """Whether Testkube will not change its status any more."""
        return self.status in EXECUTION_TERMINAL

    @property
    def ledger_status(self) -> Status:
        """The status a record of this execution says."""
        return status_of_execution(self.status)


@dataclass(frozen=True, slots=True)
class StepSignature:
    """One node of an execution's ``signature`` tree: a step, or a group of steps (``children``)."""

    ref: str
    #: What Testkube shows for the step: its ``name``, else its ``category`` (``Signature.Label()``).
    label: str
    children: tuple[StepSignature, ...] = ()


@dataclass(frozen=True, slots=True)
class StepResult:
    """One entry of ``result.steps`` (or ``result.initialization``)."""

    status: str
    error_message: str = ""
    #: None when Testkube sent none (Go omits a zero exit code).
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionDetail:
    """An execution with what explains its result: the step tree and each step's result."""

    execution: Execution
    signature: tuple[StepSignature, ...]
    steps: dict[str, StepResult]
    initialization: StepResult | None = None
