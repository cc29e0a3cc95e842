"""coordination.k8s.io/v1 Lease on the Kubernetes stand-in, driven through the official client.

A real apiserver serves leases as a typed kind: discovery lists them, writes get uid/resourceVersion/
creationTimestamp (no generation), a PUT needs the current resourceVersion (stale: 409 Conflict) and
creates a missing lease, ``acquireTime``/``renewTime`` are MicroTimes with exactly six fraction digits.
Error bodies are checked against the recorded ones for policyreports (``kube/`` in tests/specs.py),
translated to leases: same Status shape, same key order, same message formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from policyflow.standins.kube import KubeStandin
from tests.specs import KUBE_RECORDINGS

GROUP = "coordination.k8s.io"
REPORT = "5b7d0f8e-3c1a-4e0b-9a6d-2f4c8e1b7a90"  # the recorded report's name
RENEWED = datetime(2026, 11, 26, 17, 38, 12, 123456, tzinfo=UTC)

pytestmark = pytest.mark.skipif(not KUBE_RECORDINGS.is_dir(), reason=f"{KUBE_RECORDINGS} is not available")


@cache
def recorded(name: str, index: int) -> dict[str, Any]:
    """The response body of exchange ``index`` in ``<name>-*.json``."""
    (path,) = KUBE_RECORDINGS.glob(f"{name}-*.json")
    body: dict[str, Any] = json.loads(path.read_text())[index]["response"]["body"]
    return body


def as_lease(body: dict[str, Any], name: str) -> dict[str, Any]:
    """A recorded policyreport Status as the apiserver words it for lease ``name``."""
    text = json.dumps(body).replace(REPORT, name).replace("wgpolicyk8s.io", GROUP).replace("policyreports", "leases")
    translated: dict[str, Any] = json.loads(text)
    return translated


def failure(raised: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(raised.value.body)
    return body


def api_client(standin: KubeStandin, directory: Path, *, token: str | None = None) -> client.ApiClient:
    """A client configured from a kubeconfig whose ``server:`` is the stand-in (like policyflow's)."""
    path = standin.write_kubeconfig(directory / f"kubeconfig-{standin.url.rsplit(':', 1)[1]}", token=token)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture(scope="module")
def server() -> Iterator[KubeStandin]:
    with KubeStandin([]) as standin:
        for namespace in ("east", "west"):
            standin.ensure_namespace(namespace)
        yield standin


@pytest.fixture
def standin(server: KubeStandin) -> Iterator[KubeStandin]:
    yield server
    server.allow_all()


@pytest.fixture
def api(server: KubeStandin, tmp_path: Path) -> Iterator[client.ApiClient]:
    with api_client(server, tmp_path) as configured:
        yield configured


@pytest.fixture
def leases(api: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api)


def lease(name: str, *, holder: str = "pod-a", renewed: datetime = RENEWED, **labels: str) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name, labels=labels or None),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15, acquire_time=renewed,
                                renew_time=renewed, lease_transitions=0),
    )  # fmt: skip


def raw_get(api: client.ApiClient, path: str) -> Any:
    """GET ``path`` and return the parsed JSON as sent (no model in between)."""
    method, url, headers, _, _ = api.param_serialize(
        method="GET", resource_path=path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
    )
    response = api.rest_client.pool_manager.request(method, url, headers=headers, retries=False)
    assert response.status == 200, response.data
    return json.loads(response.data)


def test_discovery_serves_leases(api: client.ApiClient) -> None:
    groups = {g["name"]: g for g in raw_get(api, "/apis")["groups"]}
    real = {g["name"]: g for g in recorded("01", 2)["groups"]}
    assert groups[GROUP] == real[GROUP]  # the recorded apiserver's entry: v1, preferred v1
    resources = raw_get(api, f"/apis/{GROUP}/v1")
    assert (resources["kind"], resources["groupVersion"]) == ("APIResourceList", f"{GROUP}/v1")
    (entry,) = resources["resources"]
    assert entry == {
        "name": "leases", "singularName": "lease", "namespaced": True, "kind": "Lease",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "storageVersionHash": entry["storageVersionHash"],
    }  # fmt: skip
    assert raw_get(api, f"/apis/{GROUP}")["preferredVersion"] == {"groupVersion": f"{GROUP}/v1", "version": "v1"}


def test_create_sets_server_fields_and_writes_micro_times(
    standin: KubeStandin, leases: client.CoordinationV1Api, api: client.ApiClient
) -> None:
    before = int(standin.resource_version)
    created = leases.create_namespaced_lease("default", lease("created", app="demo"))
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and int(meta.resource_version) > before
    assert meta.generation is None  # leases have no generation
    assert created.spec.renew_time == RENEWED and created.spec.holder_identity == "pod-a"
    wire = raw_get(api, "/apis/coordination.k8s.io/v1/namespaces/default/leases/created")
    assert list(wire) == ["kind", "apiVersion", "metadata", "spec"]  # Go struct order, like every typed kind
    assert wire["spec"] == {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                            "acquireTime": "2026-11-26T17:38:12.123456Z", "renewTime": "2026-11-26T17:38:12.123456Z",
                            "leaseTransitions": 0}  # fmt: skip
    # Offsets are written back in UTC; the test-side API sees the same object.
    east = datetime(2026, 11, 26, 19, 38, 12, 5, tzinfo=timezone(timedelta(hours=2)))
    leases.create_namespaced_lease("default", lease("offset", renewed=east))
    stored = standin.get("coordination.k8s.io/v1", "Lease", "offset", "default")
    assert stored is not None and stored["spec"]["renewTime"] == "2026-11-26T17:38:12.000005Z"


def test_create_twice_is_409_already_exists(leases: client.CoordinationV1Api) -> None:
    leases.create_namespaced_lease("default", lease("twice"))
    with pytest.raises(ApiException) as raised:
        leases.create_namespaced_lease("default", lease("twice"))
    assert raised.value.status == 409
    body = failure(raised)
    assert body == as_lease(recorded("02", 2), "twice") and list(body) == list(recorded("02", 2))


def test_get_of_a_missing_lease_is_404_not_found(leases: client.CoordinationV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        leases.read_namespaced_lease("no-such-report", "default")
    assert raised.value.status == 404
    assert failure(raised) == as_lease(recorded("05", 0), "no-such-report")


def test_update_needs_the_current_resource_version(leases: client.CoordinationV1Api) -> None:
    first = leases.create_namespaced_lease("default", lease("renewing"))
    renewed = leases.read_namespaced_lease("renewing", "default")
    renewed.spec.renew_time = RENEWED + timedelta(seconds=10, microseconds=1)
    second = leases.replace_namespaced_lease("renewing", "default", renewed)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert second.spec.renew_time == RENEWED + timedelta(seconds=10, microseconds=1)

    stale = first  # still carries the first resourceVersion
    stale.spec.holder_identity = "pod-b"
    with pytest.raises(ApiException) as raised:
        leases.replace_namespaced_lease("renewing", "default", stale)
    assert raised.value.status == 409
    assert failure(raised) == as_lease(recorded("04", 18), "renewing")

    stale.metadata.resource_version = None  # an unconditional update is refused for leases
    with pytest.raises(ApiException) as raised:
        leases.replace_namespaced_lease("renewing", "default", stale)
    assert raised.value.status == 422
    assert failure(raised) == as_lease(recorded("04", 19), "renewing")
    assert leases.read_namespaced_lease("renewing", "default").spec.holder_identity == "pod-a"


def test_put_of_a_missing_lease_creates_it(leases: client.CoordinationV1Api) -> None:
    _, status, _ = leases.replace_namespaced_lease_with_http_info("put-created", "default", lease("put-created"))
    assert status == 201
    assert leases.read_namespaced_lease("put-created", "default").spec.holder_identity == "pod-a"


def test_list_by_label_selector_in_a_namespace_and_across(
    leases: client.CoordinationV1Api, api: client.ApiClient
) -> None:
    for namespace, name, role in (("east", "e1", "leader"), ("east", "e2", "other"), ("west", "w1", "leader"),
                                  ("west", "w2", "leader")):  # fmt: skip
        leases.create_namespaced_lease(namespace, lease(name, role=role))

    def names(listed: client.V1LeaseList) -> list[str]:
        return [f"{item.metadata.namespace}/{item.metadata.name}" for item in listed.items]

    assert names(leases.list_namespaced_lease("east", label_selector="role=leader")) == ["east/e1"]
    everywhere = leases.list_lease_for_all_namespaces(label_selector="role in (leader)")
    assert names(everywhere) == ["east/e1", "west/w1", "west/w2"]
    assert names(leases.list_namespaced_lease("west", label_selector="role!=leader")) == []
    first = leases.list_lease_for_all_namespaces(label_selector="role=leader", limit=2)
    assert names(first) == ["east/e1", "west/w1"] and first.metadata._continue
    token = first.metadata._continue
    rest = leases.list_lease_for_all_namespaces(label_selector="role=leader", limit=2, _continue=token)
    assert names(rest) == ["west/w2"] and not rest.metadata._continue
    wire = raw_get(api, "/apis/coordination.k8s.io/v1/namespaces/west/leases?labelSelector=role%3Dleader")
    assert (wire["kind"], wire["apiVersion"]) == ("LeaseList", f"{GROUP}/v1")
    assert list(wire["metadata"]) == ["resourceVersion"]  # no empty "continue" on typed lists
    assert "kind" not in wire["items"][0]  # typed lists leave kind/apiVersion off their items


def test_merge_patch(leases: client.CoordinationV1Api) -> None:
    created = leases.create_namespaced_lease("default", lease("patched"))
    patch = {"spec": {"holderIdentity": None, "leaseTransitions": 1}, "metadata": {"labels": {"x": "1"}}}
    patched = leases.patch_namespaced_lease("patched", "default", patch, _content_type="application/merge-patch+json")
    assert patched.spec.holder_identity is None and patched.spec.lease_transitions == 1
    assert patched.metadata.labels == {"x": "1"}
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    default = leases.patch_namespaced_lease("patched", "default", {"spec": {"holderIdentity": "pod-c"}})
    assert default.spec.holder_identity == "pod-c"  # the client's default, strategic merge, works on a typed kind
    stale = {"metadata": {"resourceVersion": created.metadata.resource_version}, "spec": {"leaseTransitions": 2}}
    with pytest.raises(ApiException) as raised:
        leases.patch_namespaced_lease("patched", "default", stale, _content_type="application/merge-patch+json")
    assert raised.value.status == 409


def test_watch_sees_a_renewal(leases: client.CoordinationV1Api) -> None:
    created = leases.create_namespaced_lease("default", lease("watched"))
    created.spec.renew_time = RENEWED + timedelta(seconds=5, microseconds=7)
    leases.replace_namespaced_lease("watched", "default", created)
    stream = watch.Watch()
    events = []
    for event in stream.stream(leases.list_namespaced_lease, "default", field_selector="metadata.name=watched",
                               resource_version=created.metadata.resource_version, timeout_seconds=2):  # fmt: skip
        events.append(event)
        stream.stop()
    assert [e["type"] for e in events] == ["MODIFIED"]
    assert events[0]["raw_object"]["spec"]["renewTime"] == "2026-11-26T17:38:17.123463Z"


def test_delete(leases: client.CoordinationV1Api) -> None:
    created = leases.create_namespaced_lease("default", lease("deleted"))
    status = leases.delete_namespaced_lease("deleted", "default")  # typed "object" by the client: a dict
    assert status == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                      "details": {"name": "deleted", "group": GROUP, "kind": "leases", "uid": created.metadata.uid}}
    with pytest.raises(ApiException) as raised:
        leases.delete_namespaced_lease("deleted", "default")
    assert raised.value.status == 404


def test_invalid_values_are_refused_like_the_typed_apiserver(leases: client.CoordinationV1Api) -> None:
    zero = lease("zero")
    zero.spec.lease_duration_seconds = 0
    with pytest.raises(ApiException) as raised:
        leases.create_namespaced_lease("default", zero)
    body = failure(raised)
    assert (raised.value.status, body["reason"], body["details"]["kind"]) == (422, "Invalid", "Lease")
    assert body["message"] == (
        'Lease.coordination.k8s.io "zero" is invalid: '
        "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    )
    # datetime.isoformat() of a whole second has no fraction, which RFC3339Micro parsing refuses.
    with pytest.raises(ApiException) as raised:
        leases.create_namespaced_lease("default", lease("whole-second", renewed=RENEWED.replace(microsecond=0)))
    assert raised.value.status == 400 and failure(raised)["message"] == (
        'Lease in version "v1" cannot be handled as a Lease: parsing time "2026-11-26T17:38:12+00:00" as '
        '"2006-01-02T15:04:05.000000Z07:00": cannot parse "+00:00" as ".000000"'
    )


def test_rbac_refusals(tmp_path: Path) -> None:
    with KubeStandin([], token="limited-token", user="limited") as limited, api_client(limited, tmp_path) as api:
        leases = client.CoordinationV1Api(api)
        leases.create_namespaced_lease("default", lease(REPORT))
        limited.deny(verb="get", group=GROUP, resource="leases")
        with pytest.raises(ApiException) as raised:
            leases.read_namespaced_lease(REPORT, "default")
        assert raised.value.status == 403
        assert failure(raised) == as_lease(recorded("05", 9), REPORT)
        limited.deny(verb="update", group=GROUP, resource="leases")
        with pytest.raises(ApiException) as raised:
            leases.replace_namespaced_lease(REPORT, "default", lease(REPORT))
        assert failure(raised)["message"] == (
            f'leases.{GROUP} "{REPORT}" is forbidden: User "limited" cannot update resource "leases" in API group '
            f'"{GROUP}" in the namespace "default"'
        )
