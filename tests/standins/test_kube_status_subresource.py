"""The Kubernetes stand-in serving Gatekeeper constraints: discovery by category and the status subresource.

Over real HTTP with the official ``kubernetes`` client. What the apiserver does with a status subresource
(CustomResourceSubresourceStatus in apiextensions.k8s.io/v1): "PUT requests to the /status subresource
take a custom resource object, and ignore changes to anything except the status stanza; PUT/POST/PATCH
requests to the custom resource ignore changes to the status stanza". Gatekeeper's audit writes
``status.violations`` with ``client.Status().Update`` (gatekeeper ``pkg/audit/manager.go``), so these are
the checks that policyflow's record, an annotation on the constraint, survives every audit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, dynamic

from policyflow.domain.gatekeeper import constraint_kinds, parse_constraint
from policyflow.standins.kube import KubeStandin, strip_server_metadata
from tests.specs import REPORT_CRDS, example

DATA = Path(__file__).resolve().parents[1] / "data" / "gatekeeper"
CRD = DATA / "k8srequiredlabels-crd.yaml"
GROUP, VERSION, PLURAL = "constraints.gatekeeper.sh", "v1beta1", "k8srequiredlabels"
RECORD = "policyflow.io/0123456789abcdef"


@pytest.fixture(scope="module")
def server() -> Iterator[KubeStandin]:
    with KubeStandin([*REPORT_CRDS, CRD]) as standin:
        yield standin


@pytest.fixture
def api(server: KubeStandin, tmp_path: Path) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                            client_configuration=configuration)  # fmt: skip
    with client.ApiClient(configuration) as api_client:
        yield api_client


def constraint(name: str) -> dict[str, Any]:
    """The truncated test constraint under a new name, as a user would apply it (no server fields)."""
    body = strip_server_metadata(yaml.safe_load((DATA / "constraint-truncated.yaml").read_text()))
    body["metadata"]["name"] = name
    return body


def create(objects: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    created = objects.create_cluster_custom_object(GROUP, VERSION, PLURAL, constraint(name))
    assert isinstance(created, dict)
    return created


def discovered(api: client.ApiClient) -> dict[str, Any]:
    """The APIResourceList of the constraints group, as the client reads it (JSON names)."""
    listing = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    return dict(api.sanitize_for_serialization(listing))


def test_discovery_lists_the_constraint_kind_in_the_constraint_category(api: client.ApiClient) -> None:
    listing = discovered(api)
    by_name = {r["name"]: r for r in listing["resources"]}
    main, status = by_name[PLURAL], by_name[f"{PLURAL}/status"]
    assert (main["kind"], main["namespaced"], main["categories"]) == (
        "K8sRequiredLabels", False, ["constraint", "constraints"])  # fmt: skip
    assert status["verbs"] == ["get", "patch", "update"] and "categories" not in status
    assert [k.kind for k in constraint_kinds(listing)] == ["K8sRequiredLabels"]
    served = dynamic.DynamicClient(api).resources.get(api_version=f"{GROUP}/v1alpha1", kind="K8sRequiredLabels")
    assert served.namespaced is False  # the CRD serves v1alpha1 too


def test_create_drops_status_and_a_status_put_writes_only_status(api: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(api)
    created = create(objects, "put-status")
    assert "status" not in created and created["metadata"]["generation"] == 1
    audited = copy.deepcopy(created)
    audited["status"] = constraint("x")["status"]
    audited["metadata"]["annotations"] = {"changed-by": "audit"}
    audited["spec"]["enforcementAction"] = "warn"
    written = objects.replace_cluster_custom_object_status(GROUP, VERSION, PLURAL, "put-status", audited)
    assert written["status"] == audited["status"]
    assert written["spec"] == created["spec"] and written["metadata"]["annotations"] == created["metadata"][
        "annotations"]  # fmt: skip
    assert written["metadata"]["generation"] == 1
    assert int(written["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    parsed = parse_constraint(constraint_kinds(discovered(api))[0], written)
    assert len(parsed.violations) == 20 and not parsed.complete


def test_a_record_annotation_survives_audit_rewriting_the_status(api: client.ApiClient) -> None:
    """policyflow merge-patches its record into the annotations; audit then GETs and PUTs /status."""
    objects = client.CustomObjectsApi(api)
    create(objects, "survives")
    recorded = objects.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, "survives", {"metadata": {"annotations": {RECORD: '{"status":"started"}'}}}
    )
    assert recorded["metadata"]["generation"] == 1  # metadata only
    stale = copy.deepcopy(recorded)
    stale["metadata"]["annotations"] = {}  # what a writer that never saw the record would send
    for total in (27, 3):
        stale["status"] = {"auditTimestamp": "2026-08-20T14:03:11Z", "totalViolations": total}
        current = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, "survives")
        stale["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        after = objects.replace_cluster_custom_object_status(GROUP, VERSION, PLURAL, "survives", stale)
        assert after["metadata"]["annotations"][RECORD] == '{"status":"started"}'
        assert after["status"]["totalViolations"] == total and after["metadata"]["generation"] == 1
    patched = objects.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, "survives", {"status": {"totalViolations": 0}, "metadata": {"annotations": None}}
    )
    assert patched["metadata"]["annotations"][RECORD] == '{"status":"started"}'
    assert patched["status"]["totalViolations"] == 0


def test_writes_to_the_main_resource_keep_the_status(api: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(api)
    create(objects, "main-writes")
    audited = objects.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, "main-writes",
                                                         {"status": {"totalViolations": 27}})  # fmt: skip
    replaced = copy.deepcopy(audited)
    replaced["status"] = {"totalViolations": 1}
    replaced["spec"]["enforcementAction"] = "dryrun"
    put = objects.replace_cluster_custom_object(GROUP, VERSION, PLURAL, "main-writes", replaced)
    assert put["status"] == {"totalViolations": 27} and put["spec"]["enforcementAction"] == "dryrun"
    assert put["metadata"]["generation"] == 2
    patched = objects.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "main-writes", {"status": None})
    assert patched["status"] == {"totalViolations": 27}
    assert patched["metadata"]["resourceVersion"] == put["metadata"]["resourceVersion"]  # a no-op


def test_report_kinds_keep_having_no_status_subresource(server: KubeStandin, api: client.ApiClient) -> None:
    """The recordings (shared/specs/kube, 04-patch-update) show none for the report CRDs."""
    server.ensure_namespace("plain")
    body = strip_server_metadata(example("policyreport-fail.yaml"))
    body["metadata"] = {"name": "r", "namespace": "plain"}
    body["status"] = {"anything": "kept"}  # no schema for it: pruned like any unknown field
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object("wgpolicyk8s.io", "v1alpha2", "plain", "policyreports", body)
    with pytest.raises(client.ApiException) as raised:
        objects.patch_namespaced_custom_object_status("wgpolicyk8s.io", "v1alpha2", "plain", "policyreports", "r",
                                                      {"summary": {"pass": 1}})  # fmt: skip
    assert raised.value.status == 404
    patched = objects.patch_namespaced_custom_object("wgpolicyk8s.io", "v1alpha2", "plain", "policyreports", "r",
                                                     {"summary": {"pass": 9}})  # fmt: skip
    assert patched["summary"]["pass"] == 9 and patched["metadata"]["generation"] == 2
