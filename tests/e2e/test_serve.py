"""The Prefect way: the deployments served by ``policyflow serve`` (a real subprocess) against the
session's Prefect API (a full server: its scheduler runs the served schedules) and the stand-ins;
retries through the Prefect API and the CLI; ``prefect deploy --all`` with the project's prefect.yaml."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from policyflow.cli import main
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import records, stop_process, wait_until
from tests.specs import ROOT, example

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

TITLE = "require-resources/require-resources-in-deployment default/Deployment/nginx-no-cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture
def scenario(kube: KubeStandin) -> dict[str, Any]:
    return kube.create(report_for(example("policyreport-fail.yaml"), kube.create(deployment("nginx-no-cpu"))))


def flow_runs(flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))


def polls_completed_after(moment: Any) -> int:
    """How many ``policy-watch`` runs started after ``moment`` and completed (read from the Prefect API)."""
    return sum(1 for run in flow_runs("policy-watch")
               if run.deployment_id is not None  # a served poll, not another test's in-process cycle
               and run.state_type is not None and run.state_type.value == "COMPLETED"
               and run.start_time is not None and run.start_time > moment)


def run_named(title: str, state: str, report: dict[str, Any], *, run_count: int = 1) -> Any:
    """This test's violation run (named ``title``, for ``report``: the session's server holds other
    tests' runs of the same name) once it is in ``state``."""
    for run in flow_runs("handle-violation"):
        if run.name == title and run.state and run.state.type.value == state and (run.run_count or 1) >= run_count \
                and (run.parameters.get("violation") or {}).get("report_name") == report["metadata"]["name"]:
            return run
    return None


def serve(env: dict[str, str], log: Path, *, interval: float, metrics_port: int = 0,
          **extra: str) -> subprocess.Popen[bytes]:
    """``policyflow serve`` in a subprocess against the session's Prefect API, its output in ``log``."""
    child_env = {**os.environ, **env, "PREFECT_API_URL": api_url(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 **extra}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "policyflow.cli", "serve", "--interval", f"{interval:g}",
             "--metrics-port", str(metrics_port)],
            env=child_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    print(log.read_text()[-6000:])  # shown by pytest when the test fails
    stop_process(process)


def poll_now() -> Any:
    """A run of the served ``policy-watch`` deployment, now, as its schedule would start one (through
    the Prefect API; the served runner picks it up); the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    def served() -> bool:
        with get_client(sync_client=True) as client:
            return any(d.name == "policy-watch" for d in client.read_deployments())

    # (Registered by an earlier test's process on the same server, it may be there already: then the
    # run waits for this test's runner, which picks up whatever of its deployments is scheduled.)
    wait_until("the policy-watch deployment to be served", served, timeout=120, every=0.5)
    return run_deployment("policy-watch/policy-watch", timeout=0)


def completed(run: Any) -> bool:
    """Whether the flow run ``run`` is COMPLETED now (read from the Prefect API)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state_type
    return state is not None and state.value == "COMPLETED"


@pytest.fixture
def serve_interval() -> float:
    """The served policy-watch's schedule: none to speak of, unless a test says otherwise. Tests start
    the polls they need (``poll_now``), so each is a run of its own, not one every few seconds."""
    return 3600


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path, serve_interval: float) -> Iterator[dict[str, Any]]:
    """``policyflow serve`` in a subprocess: the four deployments and the metrics endpoint."""
    metrics_port = free_port()
    (tmp_path / "metrics").mkdir()
    log = tmp_path / "serve.log"
    process = serve(env, log, interval=serve_interval, metrics_port=metrics_port,
                    PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    try:
        yield {"metrics": f"http://127.0.0.1:{metrics_port}/metrics", "log": log,
               "env": {**os.environ, **env, "PREFECT_API_URL": api_url()}}
    finally:
        stop(process, log)


@pytest.mark.parametrize("serve_interval", [5])
def test_a_scheduled_poll_creates_a_named_tagged_violation_run_with_artifacts(
    served: dict[str, Any], scenario: dict[str, Any], testkube: TestkubeStandin
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    run = wait_until("the violation's run to complete", lambda: run_named(TITLE, "COMPLETED", scenario),
                     timeout=120, every=0.5)
    assert set(run.tags) >= {"policy:require-resources", "namespace:default", "workflow:smoke-nova"}
    assert run.deployment_id is not None, "a deployment run, so the UI offers Retry"
    (execution,) = testkube.executions
    assert execution["tags"]["PolicyViolationName"] == scenario["metadata"]["name"]

    keys = [f"violation-{execution['tags']['policyflow-key']}", "policy-watch-cycle"]

    def both_artifacts() -> list[Any] | None:
        # The poll run writes its table when all its chains are done: a moment after the violation's run.
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        return found if {a.key for a in found} == set(keys) else None

    artifacts = wait_until("both artifacts", both_artifacts, timeout=60, every=0.5)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        names = {t.name.rsplit("-", 1)[0] for t in task_runs}
        assert names == {"fetch-violation", "trigger-testkube", "await-result", "annotate-report"}
    kinds = {a.key: a.type for a in artifacts}
    assert kinds[f"violation-{execution['tags']['policyflow-key']}"] == "markdown"
    assert kinds["policy-watch-cycle"] == "table"
    violation_md = next(a for a in artifacts if a.type == "markdown")
    assert f"[{execution['name']}](<" in violation_md.data

    passed = {"status": "passed", "policy": "require-resources", "rule": "require-resources-in-deployment",
              "namespace": "default", "workflow": "smoke-nova", "cluster": "default"}
    body = wait_until("metrics", lambda: _metrics_with(served["metrics"], "policyflow_outcomes_total", passed),
                      timeout=120)
    assert 'policyflow_violations_detected_total 1.0' in body
    assert "policyflow_poll_duration_seconds_count" in body

    resource_id = f"policyflow.violation.{execution['tags']['policyflow-key']}"

    def policyflow_events() -> list[dict[str, Any]] | None:
        """This violation's events (the session's server has other tests' too), once all three are in."""
        found = httpx.post(f"{api_url()}/events/filter", timeout=10, json={"filter": {
            "event": {"prefix": ["policyflow."]}, "resource": {"id": [resource_id]}}}).json()["events"]
        names = {e["event"] for e in found}
        return found if {"policyflow.violation.detected", "policyflow.test.started",
                         "policyflow.test.finished"} <= names else None

    # Events travel asynchronously (client worker, then the server's pipeline): wait for them.
    events = wait_until("policyflow's events", policyflow_events, timeout=60)
    names = {e["event"] for e in events}
    assert names >= {"policyflow.violation.detected", "policyflow.test.started", "policyflow.test.finished"}
    finished = next(e for e in events if e["event"] == "policyflow.test.finished")
    assert finished["resource"]["policyflow.status"] == "passed"
    assert finished["resource"]["policyflow.cluster"] == "default"
    assert finished["payload"]["execution"] == execution["id"]

    # A scheduled poll that started after the violation's run had finished: nothing new, no second run.
    wait_until("a later poll to complete", lambda: polls_completed_after(run.end_time) >= 1, timeout=120, every=0.5)
    assert len(testkube.executions) == 1
    assert len([r for r in flow_runs("handle-violation") if r.name == TITLE and
                (r.parameters.get("violation") or {}).get("report_name") == scenario["metadata"]["name"]]) == 1


def _metrics_with(url: str, sample: str, labels: dict[str, str]) -> str | None:
    """The metrics page at ``url`` once it has a ``sample`` with exactly ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None
    found = any(s.name == sample and s.labels == labels
                for family in text_string_to_metric_families(body) for s in family.samples)
    return body if found else None


def test_a_failed_violation_run_retried_through_the_api_does_not_start_a_second_execution(
    served: dict[str, Any], scenario: dict[str, Any], testkube: TestkubeStandin
) -> None:
    # The run starts its execution, then await-result is told the execution does not exist (a
    # permanent error): the violation's run fails with the execution already started.
    testkube.inject(method="GET", path=r"/test-workflow-executions/[0-9a-f]{24}$", status=404)
    poll_now()
    run = wait_until("the violation's run to fail", lambda: run_named(TITLE, "FAILED", scenario),
                     timeout=180, every=0.5)
    (first,) = testkube.executions
    done = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", str(run.id)], env=served["env"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    retried = wait_until("the retried run to complete", lambda: run_named(TITLE, "COMPLETED", scenario, run_count=2),
                         timeout=180, every=0.5)
    assert retried.id == run.id
    assert [e["id"] for e in testkube.executions] == [first["id"]]


def test_retry_failed_reruns_only_what_failed_without_a_second_execution(
    env: dict[str, str], scenario: dict[str, Any], kube: KubeStandin, testkube: TestkubeStandin,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICYFLOW_DEFAULT_WORKFLOW", "smoke-later")
    assert main(["run-once"]) == 3
    record = _record(kube, scenario)
    assert record["status"] == "error"
    testkube.add_workflow("smoke-later")
    assert main(["run-once"]) == 0, "the poll does not retry a recorded error by itself"
    assert testkube.executions == []
    assert main(["retry-failed"]) == 0
    (execution,) = testkube.executions
    assert execution["workflow"]["name"] == "smoke-later"
    assert _record(kube, scenario)["status"] == "passed"
    assert main(["retry-failed"]) == 0
    assert len(testkube.executions) == 1


def _record(kube: KubeStandin, report: dict[str, Any]) -> dict[str, Any]:
    (record,) = records(kube, report)
    return record


def test_prefect_deploy_all_with_the_projects_prefect_yaml() -> None:
    env = {**os.environ, "PREFECT_API_URL": api_url(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    subprocess.run(["prefect", "work-pool", "create", "policyflow", "--type", "process", "--overwrite"],
                   env=env, check=True, capture_output=True, timeout=120)
    done = subprocess.run(["prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name in ("policy-watch/policy-watch", "handle-violation/handle-violation",
                     "handle-violations/handle-violations", "retry-failed-triggers/retry-failed-triggers"):
            found = client.read_deployment_by_name(name)
            assert found.work_pool_name == "policyflow"
        watch = client.read_deployment_by_name("policy-watch/policy-watch")
        assert watch.global_concurrency_limit is not None
        assert watch.global_concurrency_limit.limit == 1


def test_served_processes_share_submitted_batches_and_start_one_test_per_failure(
    env: dict[str, str], tmp_path: Path, kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    """The scale-out path: polls submit the storm's batches as deployment runs (chain_dispatch=submit)
    and two served processes run them; every failure gets exactly one test and its outcome."""
    reports = [kube.create(report_for(example("policyreport-fail.yaml"), kube.create(deployment(f"scale-{i}"))))
               for i in range(6)]
    extra = {"POLICYFLOW_CHAIN_DISPATCH": "submit", "POLICYFLOW_STORM_THRESHOLD": "2", "POLICYFLOW_BATCH_SIZE": "2"}
    logs = [tmp_path / f"serve-{i}.log" for i in range(2)]
    processes = [serve(env, log, interval=3600, **extra) for log in logs]
    try:
        # One poll submits the storm's batches; the two processes' runners share them.
        poll_now()
        wait_until("every failure's outcome on its report",
                   lambda: all([rec["status"] for rec in records(kube, r)] == ["passed"] for r in reports),
                   timeout=180, every=0.5)
        # Two more polls, after every outcome was recorded: nothing may start twice.
        later = [poll_now(), poll_now()]
        wait_until("two later polls to complete", lambda: all(completed(run) for run in later), timeout=120,
                   every=0.5)
    finally:
        for process, log in zip(processes, logs, strict=True):
            stop(process, log)
    keys = [e["tags"]["policyflow-key"] for e in testkube.executions]
    assert len(keys) == 6 and len(set(keys)) == 6, "one execution per failure, across both processes"
    batches = [r for r in flow_runs("handle-violations") if r.deployment_id is not None
               and any(p.get("resource_name", "").startswith("scale-") for p in r.parameters.get("violations", []))]
    assert batches and all(r.state_type.value == "COMPLETED" for r in batches)
    assert sum(len(r.parameters["violations"]) for r in batches) >= 6


def test_every_served_deployment_runs_to_completed_when_run_through_the_api_as_the_ui_does(
    served: dict[str, Any], scenario: dict[str, Any], testkube: TestkubeStandin
) -> None:
    """The UI's Run on each deployment: a flow run created through the API with the deployment's
    stored parameters (plus the violation for the two chain deployments), run by the served runner."""
    from prefect.client.orchestration import get_client

    from policyflow.domain.ref import ViolationRef

    violation = ViolationRef(report_name=scenario["metadata"]["name"], report_namespace="default",
                             policy="require-resources", rule="require-resources-in-deployment").model_dump()
    asked = {
        "policy-watch/policy-watch": {},
        "handle-violation/handle-violation": {"violation": violation},
        "handle-violations/handle-violations": {"violations": [violation]},
        "retry-failed-triggers/retry-failed-triggers": {},
    }
    with get_client(sync_client=True) as client:
        ids = {}
        for name, parameters in asked.items():
            deployment_id = wait_until(f"{name} to be served", lambda n=name: _deployment_id(client, n),
                                       timeout=60, every=0.5)
            ids[name] = client.create_flow_run_from_deployment(deployment_id, parameters=parameters).id

        def states() -> dict[str, str]:
            return {name: (client.read_flow_run(run_id).state_type or "").__str__() for name, run_id in ids.items()}

        def finished() -> dict[str, str] | None:
            now = states()
            return now if all(s.endswith(("COMPLETED", "FAILED", "CRASHED", "CANCELLED")) for s in now.values()) \
                else None

        final = wait_until("every deployment's run to finish", finished, timeout=180, every=0.5)
    assert all(s.endswith("COMPLETED") for s in final.values()), final
    assert len(testkube.executions) == 1, "one violation, one test, however many runs looked at it"


def _deployment_id(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name).id
    except ObjectNotFound:
        return None
