"""End to end: the real CLI and flows against both stand-ins and a real Prefect API.

Nothing of policyflow is mocked: the CLI's ``main`` runs in-process (one test runs it as a separate
process), talks HTTP to the stand-ins, and runs the flows on the session's Prefect server. Every
assertion reads an outcome: executions on Testkube, annotations on the report, Events in the cluster.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from policyflow.cli import main
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, deploy, load_report
from tests.specs import example

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

ANNOTATION_PREFIX = "policyflow.io/"


def records_on(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    annotations = report["metadata"].get("annotations") or {}
    return {k: json.loads(v) for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)}


def current(kube: KubeStandin, report: dict[str, Any]) -> dict[str, Any]:
    got = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"],
                   report["metadata"].get("namespace"))
    assert got is not None
    return got


def posts(testkube: TestkubeStandin) -> list[Any]:
    return [r for r in testkube.requests if r.method == "POST" and r.path.endswith("/executions")]


@pytest.fixture
def failing(kube: KubeStandin) -> dict[str, Any]:
    """The seed's scenario: Deployment default/nginx-no-cpu fails require-resources."""
    return load_report(kube, resource=deploy(kube, "nginx-no-cpu"))


def test_run_once_starts_one_execution_records_it_and_a_second_run_starts_nothing(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    first = policyflow("run-once")
    assert first.code == 0, first.err
    (execution,) = testkube.executions
    assert execution["workflow"]["name"] == "smoke-nova"
    assert execution["tags"]["PolicyViolationName"] == failing["metadata"]["name"]
    assert execution["result"]["status"] == "passed"
    assert "require-resources/require-resources-in-deployment default/Deployment/nginx-no-cpu" in first.out
    assert execution["name"] in first.out and "passed" in first.out

    (record,) = records_on(current(kube, failing)).values()
    assert record["status"] == "passed"
    assert record["execution"] == execution["id"]
    assert record["workflow"] == "smoke-nova"
    assert record["policy"] == "require-resources"
    assert record["rule"] == "require-resources-in-deployment"
    assert record["key"] == execution["tags"]["policyflow-key"]
    assert record["updated"]

    events = kube.objects("v1", "Event")
    reasons = sorted(e["reason"] for e in events)
    assert reasons == ["PolicyTestPassed", "PolicyTestStarted"]
    passed = next(e for e in events if e["reason"] == "PolicyTestPassed")
    assert passed["involvedObject"]["kind"] == "Deployment"
    assert passed["involvedObject"]["name"] == "nginx-no-cpu"
    assert passed["involvedObject"]["uid"] == failing["scope"]["uid"]
    for word in ("require-resources", "require-resources-in-deployment", "smoke-nova", execution["name"]):
        assert word in passed["message"]

    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert patches, "the record is written with merge-patch"
    assert all(r.headers.get("content-type", "").startswith("application/merge-patch+json") for r in patches)
    assert not [r for r in kube.requests if r.method == "PUT"], "never update-with-resourceVersion"

    second = policyflow("run-once")
    assert second.code == 0, second.err
    assert len(testkube.executions) == 1
    assert "nothing new" in second.out


def test_the_tags_are_exactly_what_the_pipeline_sent_plus_ours(
    policyflow: Policyflow, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    assert policyflow("run-once").code == 0
    (post,) = posts(testkube)
    assert post.headers["content-type"] == "application/json"
    assert post.path == "/v1/test-workflows/smoke-nova/executions"
    tags = post.body["tags"]
    assert tags == {
        "PolicyViolationName": failing["metadata"]["name"],
        "policyflow-key": tags["policyflow-key"],
        "policyflow-episode": f"{failing['metadata']['uid']}.1",
        "policy": "require-resources",
        "rule": "require-resources-in-deployment",
        "resource-kind": "Deployment",
        "resource-namespace": "default",
        "resource-name": "nginx-no-cpu",
        "policyflow-cluster": "default",
    }
    assert len(tags["policyflow-key"]) == 16
    lookups = [r for r in testkube.requests if r.method == "GET" and "tagSelector" in r.query]
    assert lookups and lookups[0].query["tagSelector"].startswith("policyflow-episode=")


@pytest.mark.parametrize(
    ("file", "scoped"),
    [
        ("policyreport-fail.yaml", True),
        ("openreports-report-fail.yaml", True),
        ("clusterpolicyreport-fail.yaml", False),
    ],
)
def test_each_report_group_and_scope(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, file: str, scoped: bool
) -> None:
    if scoped:
        resource = deploy(kube, "nginx-no-cpu")
    else:
        resource = kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    report = load_report(kube, file, resource=resource)
    result = policyflow("run-once")
    assert result.code == 0, result.err
    (execution,) = testkube.executions
    assert execution["tags"]["PolicyViolationName"] == report["metadata"]["name"]
    (record,) = records_on(current(kube, report)).values()
    assert record["status"] == "passed"
    event = next(e for e in kube.objects("v1", "Event") if e["reason"] == "PolicyTestPassed")
    assert event["involvedObject"]["kind"] == resource["kind"]
    assert event["metadata"]["namespace"] == ("default" if not scoped else resource["metadata"]["namespace"])


def test_pagination_reads_every_report(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICYFLOW_PAGE_SIZE", "4")
    for i in range(11):
        load_report(kube, resource=deploy(kube, f"app-{i:02d}"))
    result = policyflow("run-once")
    assert result.code == 0, result.err
    assert len(testkube.executions) == 11
    assert len({e["tags"]["policyflow-key"] for e in testkube.executions}) == 11
    lists = [r for r in kube.requests if r.method == "GET" and r.path.endswith("/policyreports") and "limit" in r.query]
    assert any("continue" in r.query for r in lists)
    assert {r.query["limit"] for r in lists} == {"4"}


def test_a_failure_that_clears_and_comes_back_is_new_again(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    assert policyflow("run-once").code == 0
    passing = copy.deepcopy(current(kube, failing))
    passing["results"][0]["result"] = "pass"
    passing["summary"].update({"fail": 0, "pass": 1})
    kube.replace(passing)
    assert policyflow("run-once").code == 0
    (record,) = records_on(current(kube, failing)).values()
    assert record["status"] == "resolved"
    assert len(testkube.executions) == 1

    failing_again = copy.deepcopy(current(kube, failing))
    failing_again["results"][0]["result"] = "fail"
    failing_again["results"][0]["timestamp"]["seconds"] += 7200
    kube.replace(failing_again)
    result = policyflow("run-once")
    assert result.code == 0, result.err
    assert len(testkube.executions) == 2
    assert testkube.executions[1]["tags"]["policyflow-episode"].endswith(".2")
    (record,) = records_on(current(kube, failing)).values()
    assert (record["status"], record["episode"]) == ("passed", 2)


def test_kyverno_rescan_is_not_new_but_a_changed_resource_is(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    assert policyflow("run-once").code == 0
    rescanned = copy.deepcopy(current(kube, failing))
    rescanned["results"][0]["timestamp"]["seconds"] += 3600
    rescanned["results"][0]["message"] += " "
    kube.replace(rescanned)
    assert policyflow("run-once").code == 0
    assert len(testkube.executions) == 1

    deployment = kube.get("apps/v1", "Deployment", "nginx-no-cpu", "default")
    assert deployment is not None
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.27"
    kube.replace(deployment)
    monkeypatch.setenv("POLICYFLOW_TRACK_RESOURCE_CHANGES", "false")
    assert policyflow("run-once").code == 0
    assert len(testkube.executions) == 1, "switched off: a resource change is not new"
    monkeypatch.setenv("POLICYFLOW_TRACK_RESOURCE_CHANGES", "true")
    assert policyflow("run-once").code == 0
    assert len(testkube.executions) == 2


def test_routing_file_chooses_workflow_config_and_tags(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any],
    tmp_path: Path
) -> None:
    testkube.add_workflow("deploy-smoke")
    config = tmp_path / "routes.yaml"
    config.write_text(
        "routes:\n"
        "- name: other-namespaces\n"
        "  match: {namespaces: [prod-*]}\n"
        "  workflow: never-this\n"
        "- name: deployments\n"
        "  match: {kinds: [Deployment], policies: [require-*], labels: {app: nginx-*}}\n"
        "  workflow: deploy-smoke\n"
        "  config: {url: 'http://{resource.name}.{resource.namespace}.svc'}\n"
        "  tags: {team: web, policyflow-key: forged}\n"
    )
    result = policyflow("run-once", "--config", str(config))
    assert result.code == 0, result.err
    (post,) = posts(testkube)
    assert post.path == "/v1/test-workflows/deploy-smoke/executions"
    assert post.body["config"] == {"url": "http://nginx-no-cpu.default.svc"}
    assert post.body["tags"]["team"] == "web"
    assert post.body["tags"]["policyflow-key"] != "forged"


def test_unrouted_violation_is_reported_not_triggered(
    policyflow: Policyflow, testkube: TestkubeStandin, failing: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLICYFLOW_DEFAULT_WORKFLOW")
    config = tmp_path / "routes.yaml"
    config.write_text("routes:\n- match: {namespaces: [prod]}\n  workflow: smoke-nova\n")
    result = policyflow("run-once", "--config", str(config))
    assert result.code == 0, result.err
    assert "unrouted" in result.out
    assert testkube.executions == []


def test_a_lost_response_after_the_run_started_does_not_start_a_second(
    policyflow: Policyflow, testkube: TestkubeStandin, kube: KubeStandin, failing: dict[str, Any]
) -> None:
    testkube.inject(method="POST", path=r"/test-workflows/smoke-nova/executions$", status=0, after=True)
    result = policyflow("run-once")
    assert result.code == 0, result.err
    assert len(posts(testkube)) == 1
    assert len(testkube.executions) == 1
    (record,) = records_on(current(kube, failing)).values()
    assert record["status"] == "passed"


def test_transient_testkube_errors_are_retried(
    policyflow: Policyflow, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    testkube.inject(method="POST", path=r"/executions$", status=503, times=2)
    result = policyflow("run-once")
    assert result.code == 0, result.err
    assert len(testkube.executions) == 1
    assert len(posts(testkube)) == 3


def test_refused_token_stops_the_cycle_records_no_error_and_the_next_cycle_tests_it(
    policyflow: Policyflow, kube: KubeStandin, failing: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal that is not the violation's fault: one line, exit 3, nothing recorded as ``error``;
    once the token is fixed, the next cycle tests the violation (no retry-failed needed)."""
    from policyflow.standins.testkube import TestkubeStandin

    with TestkubeStandin(workflows=["smoke-nova"], token="tkcapi_right") as guarded:
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_URL", guarded.url)
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_TOKEN", "tkcapi_wrong_token_value")
        result = policyflow("run-once")
        assert result.code == 3
        assert "POLICYFLOW_TESTKUBE_TOKEN" in result.err
        # A traceback ends with the exception's qualified name (the engine's would: "...TokenRefusedError: ...").
        # (Python's own "--- Logging error ---" reports, when a handler from an earlier test writes to a
        # closed capture, print the exception being handled: not policyflow's output.)
        shown = re.sub(r"--- Logging error ---.*?Arguments: [^\n]*\n", "", result.err + result.out, flags=re.S)
        assert "testkube.TokenRefusedError:" not in shown
        (line,) = [line for line in result.err.splitlines() if line.startswith("policyflow:")]
        assert "stopped" in line
        assert "tkcapi_wrong_token_value" not in result.err + result.out
        assert len(guarded.requests) == 1, "a 401 is not retried"
        assert guarded.executions == []
        records = list(records_on(current(kube, failing)).values())
        assert all(r["status"] != "error" for r in records), records

        monkeypatch.setenv("POLICYFLOW_TESTKUBE_TOKEN", "tkcapi_right")
        fixed = policyflow("run-once")
        assert fixed.code == 0, fixed.err
        assert len(guarded.executions) == 1
    (record,) = records_on(current(kube, failing)).values()
    assert record["status"] == "passed"


def test_cloud_paths_and_bearer_token(
    policyflow: Policyflow, failing: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from policyflow.standins.testkube import TestkubeStandin

    with TestkubeStandin(workflows=["smoke-nova"], token="tkcapi_right", cloud=("tkcorg_1", "tkcenv_2")) as cloud:
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_URL", cloud.url)
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_TOKEN", "tkcapi_right")
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_ORG", "tkcorg_1")
        monkeypatch.setenv("POLICYFLOW_TESTKUBE_ENV", "tkcenv_2")
        result = policyflow("run-once")
        assert result.code == 0, result.err
        (post,) = posts(cloud)
        assert post.path == "/organizations/tkcorg_1/environments/tkcenv_2/agent/test-workflows/smoke-nova/executions"
        assert post.headers["authorization"] == "Bearer tkcapi_right"


def test_unknown_workflow_is_permanent(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICYFLOW_DEFAULT_WORKFLOW", "no-such-workflow")
    result = policyflow("run-once")
    assert result.code == 3
    assert "no-such-workflow" in result.err
    assert len(posts(testkube)) == 1, "an unknown workflow is not retried"
    (record,) = records_on(current(kube, failing)).values()
    assert record["status"] == "error"


def test_a_test_that_never_finishes_times_out(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    testkube.set_outcome("smoke-nova", "never")
    monkeypatch.setenv("POLICYFLOW_AWAIT_TIMEOUT", "0.5")
    result = policyflow("run-once")
    assert result.code == 1
    assert "timedout" in result.out
    (record,) = records_on(current(kube, failing)).values()
    assert record["status"] == "timedout"
    assert any(e["reason"] == "PolicyTestTimedOut" for e in kube.objects("v1", "Event"))


def test_a_failed_test_exits_1(
    policyflow: Policyflow, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    testkube.set_outcome("smoke-nova", "failed")
    result = policyflow("run-once")
    assert result.code == 1
    assert "failed" in result.out


def test_scan_is_read_only_and_shows_what_was_done(
    policyflow: Policyflow, kube: KubeStandin, failing: dict[str, Any]
) -> None:
    before = policyflow("scan", "--output", "json")
    assert before.code == 0, before.err
    (row,) = json.loads(before.out)["violations"]
    assert (row["status"], row["action"], row["workflow"]) == ("new", "new", "smoke-nova")
    assert not [r for r in kube.requests if r.method != "GET"]
    assert policyflow("run-once").code == 0
    after = policyflow("scan")
    assert after.code == 0
    assert "passed" in after.out and "handled" in after.out


def test_a_missing_crd_is_skipped_with_one_warning(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.specs import CRDS

    with KubeStandin([CRDS / "wgpolicyk8s.io_policyreports.yaml"]) as only_wg:
        monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(only_wg.write_kubeconfig(tmp_path / "kc")))
        assert main(["scan"]) == 0
    err = capsys.readouterr().err
    assert err.count("ClusterReport is not served") == 1
    assert "Traceback" not in err


def test_bad_config_stops_before_any_work_with_exit_2(
    policyflow: Policyflow, kube: KubeStandin, tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("routes:\n- workflow: '{resource.nme}'\n")
    result = policyflow("run-once", "--config", str(config))
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "routes[0]: workflow: unknown placeholder {resource.nme}" in result.err
    assert kube.requests == []


def test_dedup_holds_across_a_restart(
    policyflow: Policyflow, env: dict[str, str], testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    assert policyflow("run-once").code == 0
    from prefect.settings import PREFECT_API_URL

    child_env = {**os.environ, **env, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                 "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": ""}
    child_env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    done = subprocess.run([sys.executable, "-m", "policyflow.cli", "run-once"], env=child_env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "nothing new" in done.stdout
    assert len(testkube.executions) == 1


def test_rbac_refusal_names_the_verb_and_resource(
    policyflow: Policyflow, kube: KubeStandin, failing: dict[str, Any]
) -> None:
    kube.deny(verb="list", group="wgpolicyk8s.io", resource="policyreports")
    result = policyflow("scan")
    assert result.code == 3
    line = result.err.strip().splitlines()[-1]
    assert "RBAC forbids list policyreports" in line
    assert 'cannot list resource "policyreports" in API group "wgpolicyk8s.io"' in line
    assert "Traceback" not in result.err


def test_a_refused_annotation_patch_fails_the_chain_with_the_verb_named(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    kube.deny(verb="patch", group="wgpolicyk8s.io", resource="policyreports")
    result = policyflow("run-once")
    assert result.code == 3
    assert "RBAC forbids patch policyreports" in result.err
    assert testkube.executions == [], "no test runs unless its record can be written first"


def test_history_lists_violation_runs_with_execution_and_outcome(
    policyflow: Policyflow, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    assert policyflow("run-once").code == 0
    (execution,) = testkube.executions
    result = policyflow("history")
    assert result.code == 0, result.err
    line = next(row for row in result.out.splitlines()
                if "default/Deployment/nginx-no-cpu" in row and execution["name"] in row)
    assert "Completed" in line and "passed" in line and "smoke-nova" in line


def test_the_testkube_concurrency_limit_is_created_on_first_use(
    policyflow: Policyflow, failing: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("POLICYFLOW_TESTKUBE_CONCURRENCY", "7")
    assert policyflow("run-once").code == 0
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("policyflow-testkube")
    assert limit.limit == 7
    assert limit.active_slots == 0, "every slot is given back"


def test_a_report_full_of_old_records_makes_room_for_the_new_one(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    report = report_for(example("policyreport-fail.yaml"), deploy(kube, "crowded"))
    old = {"key": "", "policy": "p", "rule": "r", "resource": "default/Deployment/x" + "x" * 150,
           "status": "resolved", "episode": 1, "report_uid": "u", "updated": "2025-01-01T00:00:00+00:00"}
    annotations: dict[str, str] = {}
    while sum(len(k) + len(v) for k, v in annotations.items()) < 262144 - 400:
        key = f"{len(annotations):016x}"
        annotations[f"policyflow.io/{key}"] = json.dumps({**old, "key": key})
    report["metadata"]["annotations"] = annotations
    created = kube.create(report)  # fits, barely: the next record would not
    result = policyflow("run-once")
    assert result.code == 0, result.err
    annotations = current(kube, created)["metadata"]["annotations"]
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 256 * 1024
    (execution,) = testkube.executions
    new = json.loads(annotations[f"policyflow.io/{execution['tags']['policyflow-key']}"])
    assert new["status"] == "passed"
    assert len(annotations) < len(report["metadata"]["annotations"]), "old resolved records made room"
