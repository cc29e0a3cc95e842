"""A storm: more new failures in one cycle than ``storm_threshold`` run as ``handle-violations``
batches (one flow run and four task runs per batch), with the same exactly-once outcome as one run
per violation. Real CLI, real flows, stand-ins over HTTP, the session's Prefect API."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, deploy, load_report, records

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

BATCH_STEPS = ["fetch-violations", "trigger-testkube-runs", "await-results", "annotate-reports"]


def statuses(kube: KubeStandin) -> Counter[str]:
    return Counter(record["status"] for report in kube.objects("wgpolicyk8s.io/v1alpha2", "PolicyReport")
                   for record in records(kube, report))


def keys(testkube: TestkubeStandin) -> Counter[str]:
    return Counter(e["tags"]["policyflow-key"] for e in testkube.executions)


def batch_runs(since: Any) -> list[tuple[Any, list[str]]]:
    """handle-violations runs started after ``since``, each with its task run names in order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["handle-violations"])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
            sort=FlowRunSort.START_TIME_DESC, limit=50,
        )
        out = []
        for run in runs:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            out.append((run, [t.name.rsplit("-", 1)[0] for t in sorted(tasks, key=lambda t: t.start_time or 0)]))
    return out


def now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


@pytest.fixture
def storm(kube: KubeStandin, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Seven Deployments fail require-resources at once; more than 3 new chains is a storm, 3 a batch."""
    monkeypatch.setenv("POLICYFLOW_STORM_THRESHOLD", "3")
    monkeypatch.setenv("POLICYFLOW_BATCH_SIZE", "3")
    return [load_report(kube, resource=deploy(kube, f"storm-{i}")) for i in range(7)]


def test_a_storm_runs_in_batches_and_starts_one_test_per_failure(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, storm: list[dict[str, Any]]
) -> None:
    since = now()
    result = policyflow("run-once")
    assert result.code == 0, result.err
    assert len(testkube.executions) == 7
    assert set(keys(testkube).values()) == {1}, "one execution per violation"
    assert statuses(kube) == Counter(passed=7)
    assert Counter(e["reason"] for e in kube.objects("v1", "Event")) == Counter(PolicyTestStarted=7,
                                                                                 PolicyTestPassed=7)
    for i in range(7):
        assert f"default/Deployment/storm-{i}" in result.out

    runs = batch_runs(since)
    assert sorted(len(r.parameters["violations"]) for r, _ in runs) == [1, 3, 3]
    for run, steps in runs:
        assert run.state_type.value == "COMPLETED"
        assert steps == BATCH_STEPS, "one task run per step for the whole batch"
        assert run.name.startswith("require-resources/require-resources-in-deployment ×")

    again = policyflow("run-once")
    assert again.code == 0, again.err
    assert len(testkube.executions) == 7, "a storm handled is not new"


def test_a_chain_that_fails_in_a_batch_fails_the_batch_not_its_neighbours_and_resumes_next_cycle(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, storm: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICYFLOW_RETRIES", "0")
    testkube.inject(method="POST", path="/v1/test-workflows/smoke-nova/executions", status=503)
    since = now()
    first = policyflow("run-once")
    assert first.code == 3, "one chain could not finish"
    rows = [line for line in first.out.splitlines() if "default/Deployment/storm-" in line]
    assert len(rows) == 7, "one outcome per violation, the failed batch's included"
    assert sum("passed" in row for row in rows) == 6 and sum("unfinished" in row for row in rows) == 1
    assert statuses(kube)["passed"] == 6
    assert len(testkube.executions) == 6
    assert sorted(r.state_type.value for r, _ in batch_runs(since)) == ["COMPLETED", "COMPLETED", "FAILED"]

    second = policyflow("run-once")
    assert second.code == 0, second.err
    assert statuses(kube) == Counter(passed=7)
    assert set(keys(testkube).values()) == {1} and len(testkube.executions) == 7
