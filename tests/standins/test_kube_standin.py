"""The Kubernetes API stand-in against the recordings of a real kube-apiserver (``kube/`` in tests/specs.py).

The recorded requests are sent again, in recording order, to one stand-in ("the cluster") through the
official ``kubernetes`` client (configured from a kubeconfig whose ``server:`` is the stand-in). Each
answer is compared with the recorded one: status, content type, exact bytes where the recording has
them, ``Warning`` headers, and the body by shape (same keys, same scalar values) except for values that
differ on every run (uid, timestamps, resourceVersion numbers, continue tokens). Those are mapped
recorded -> actual as they appear; a recorded value must always map to the same actual value, and the
resourceVersion mapping must keep the recorded order. ``managedFields`` is not emulated and not compared.

Watches are driven through ``kubernetes.watch.Watch`` and raw streams. The last part tests the test-side
API (store access, faults, RBAC) and the pure helpers directly.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

from policyflow.standins.kube import (
    KubeApiError,
    KubeStandin,
    PatchError,
    Requirement,
    SelectorError,
    decode_continue,
    encode_continue,
    json_patch,
    match_labels,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    strip_server_metadata,
)
from tests.helpers import wait_until
from tests.specs import KUBE_RECORDINGS, REPORT_CRDS, TESTWORKFLOW_EXECUTIONS_CRD, example

PR = ("wgpolicyk8s.io", "v1alpha2")
REPORT = "5b7d0f8e-3c1a-4e0b-9a6d-2f4c8e1b7a90"

pytestmark = pytest.mark.skipif(not KUBE_RECORDINGS.is_dir(), reason=f"{KUBE_RECORDINGS} is not available")


@cache
def recording(name: str) -> list[dict[str, Any]]:
    """The exchanges of ``<name>-*.json`` (e.g. ``"04"``)."""
    (path,) = KUBE_RECORDINGS.glob(f"{name}-*.json")
    return json.loads(path.read_text())


def api_client(standin: KubeStandin, directory: Path, *, token: str | None = None) -> client.ApiClient:
    """A client configured like policyflow's: from a kubeconfig (its hook re-applies it per request)."""
    path = standin.write_kubeconfig(directory / f"kubeconfig-{token}-{standin.url.rsplit(':', 1)[1]}", token=token)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return client.ApiClient(configuration)


# --------------------------------------------------------------------------------------------------
# Replaying recorded exchanges
# --------------------------------------------------------------------------------------------------

MAPPED = frozenset({"uid", "resourceVersion", "continue"})  # recorded -> actual, consistently
TYPE_ONLY = frozenset({"creationTimestamp", "serverAddress"})
IGNORED = frozenset({"managedFields"})


@dataclass
class Answer:
    status: int
    headers: Any  # urllib3.HTTPHeaderDict
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.headers.get("Content-Type") == "application/json" else self.raw.decode()


@dataclass
class Replayer:
    """Sends recorded requests with the official client and compares the answers with the recording."""

    api: client.ApiClient
    seen: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in (*MAPPED, "name")})

    def _substitute(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self._substitute(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v) for v in value]
        if key in MAPPED and isinstance(value, str):
            return self.seen[key].get(value, value)
        return value

    def open(self, request: dict[str, Any], api: client.ApiClient | None = None, **query: str) -> Any:
        """Send ``request`` (recorded values substituted, ``query`` overriding) and return the raw response."""
        api = api or self.api
        pairs = urllib.parse.parse_qsl(request["query_string"], keep_blank_values=True)
        params = {k: self._substitute(v, k) for k, v in pairs} | query
        path = request["path"] + (
            "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="/") if params else ""
        )
        headers = {"Accept": "application/json"}
        if "Content-Type" in request["headers"]:
            headers["Content-Type"] = request["headers"]["Content-Type"]
        body = request["body"]
        data = body.encode() if isinstance(body, str) else None if body is None else json.dumps(self._substitute(body))
        method, url, headers, _, _ = api.param_serialize(
            method=request["method"], resource_path=path, header_params=headers, auth_settings=["BearerToken"]
        )
        return api.rest_client.pool_manager.request(
            method, url, body=data, headers=headers, preload_content=False, timeout=10, retries=False
        )

    def send(self, request: dict[str, Any], api: client.ApiClient | None = None) -> Answer:
        response = self.open(request, api)
        try:
            return Answer(response.status, response.headers, response.read())
        finally:
            response.release_conn()

    def check(self, exchange: dict[str, Any], api: client.ApiClient | None = None) -> Answer:
        """Replay one exchange and assert the answer matches the recording."""
        recorded, where = exchange["response"], exchange["client_call"][:90]
        answer = self.send(exchange["request"], api)
        assert answer.status == recorded["status"], f"{where}: got {answer.status} {answer.raw[:400]!r}"
        assert answer.headers.get("Content-Type") == recorded["headers"]["Content-Type"], where
        if isinstance(recorded["body"], str):
            assert answer.raw.decode() == recorded["body"], where
        elif recorded.get("body_raw") is not None:
            assert answer.raw.decode() == recorded["body_raw"], where
        else:
            assert answer.raw.endswith(b"\n") and b"\n" not in answer.raw[:-1], f"{where}: not compact JSON + \\n"
            self.compare(recorded["body"], answer.body, where)
        warnings = recorded["headers"].get("Warning", [])
        assert answer.headers.getlist("Warning") == ([warnings] if isinstance(warnings, str) else warnings), where
        return answer

    def compare(self, recorded: Any, actual: Any, where: str, path: str = "$", *, learn: bool = True) -> None:
        """Same shape and values, with volatile values mapped (``learn=False``: only their type)."""
        if isinstance(recorded, dict):
            assert isinstance(actual, dict), f"{where} {path}: {actual!r}"
            keys = set(recorded) - IGNORED
            assert keys == set(actual) - IGNORED, f"{where} {path}: keys {sorted(keys)} != {sorted(set(actual))}"
            for key in sorted(keys):
                rec, act, sub = recorded[key], actual[key], f"{path}.{key}"
                if key == "items" and isinstance(rec, list):
                    self._compare_items(rec, act, where, sub, learn=learn)
                elif key in TYPE_ONLY or (key in MAPPED and isinstance(rec, str) and not learn):
                    assert isinstance(act, type(rec)) and bool(act) == bool(rec), f"{where} {sub}: {act!r}"
                elif (key in MAPPED and isinstance(rec, str)) or (key == "name" and "generateName" in recorded):
                    self._map(key, rec, act, f"{where} {sub}")
                else:
                    self.compare(rec, act, where, sub, learn=learn)
        elif isinstance(recorded, list):
            assert isinstance(actual, list) and len(actual) == len(recorded), f"{where} {path}: {actual!r}"
            for i, (rec, act) in enumerate(zip(recorded, actual, strict=True)):
                self.compare(rec, act, where, f"{path}[{i}]", learn=learn)
        else:
            assert actual == recorded, f"{where} {path}: recorded {recorded!r}, got {actual!r}"

    def _map(self, key: str, recorded: str, actual: Any, where: str) -> None:
        assert isinstance(actual, str) and bool(actual) == bool(recorded), f"{where}: {actual!r}"
        if recorded:
            known = self.seen[key].setdefault(recorded, actual)
            assert known == actual, f"{where}: recorded {key} {recorded} was {known} before, now {actual}"

    def _compare_items(self, recorded: list[Any], actual: Any, where: str, path: str, *, learn: bool) -> None:
        """List items in etcd key order; generated names may sort differently than in the recording."""

        def key(item: dict[str, Any]) -> str:
            meta = item["metadata"]
            return f"{meta.get('namespace', '')}/{self.seen['name'].get(meta['name'], meta['name'])}"

        assert isinstance(actual, list) and [key(a) for a in actual] == sorted(key(a) for a in actual), where
        if [key(r) for r in recorded] != [key(a) for a in actual]:
            recorded = sorted(recorded, key=key)
        self.compare(recorded, actual, where, path, learn=learn)

    def rv(self, recorded: str) -> str:
        """The stand-in's resourceVersion for a recorded one."""
        return self.seen["resourceVersion"][recorded]

    def assert_rv_order(self) -> None:
        """resourceVersions keep the recorded order (one global counter, bumped on every write)."""
        pairs = sorted((int(r), int(a)) for r, a in self.seen["resourceVersion"].items() if r.isdigit())
        actual = [a for _, a in pairs]
        assert actual == sorted(set(actual)), f"resourceVersion order differs: {pairs}"


def is_watch(exchange: dict[str, Any]) -> bool:
    return exchange["request"] is not None and "watch=true" in exchange["request"]["query_string"]


def read_lines(response: Any, count: int | None = None, limit: float = 5.0) -> list[dict[str, Any]]:
    """Read watch events from a raw streaming response (all of them, or ``count``) and close it."""
    buffer, events, deadline = b"", [], time.monotonic() + limit
    try:
        for chunk in response.stream(1024):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                events.append(json.loads(line))
            if (count is not None and len(events) >= count) or time.monotonic() > deadline:
                break
    finally:
        response.close()  # an unfinished stream must not go back to the pool
        response.release_conn()
    return events


def watch_events(func: Callable[..., Any], *args: Any, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """The first ``count`` events of ``watch.Watch().stream`` (then the watch is stopped)."""
    stream, events = watch.Watch(), []
    for event in stream.stream(func, *args, **kwargs):
        events.append(event)
        if len(events) >= count:
            stream.stop()
            break
    return events


# --------------------------------------------------------------------------------------------------
# The replayed cluster: one stand-in, the recordings replayed in file order
# --------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    standin: KubeStandin
    api: client.ApiClient
    replayer: Replayer
    directory: Path
    done: list[str] = field(default_factory=list)

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def replay(self, name: str, indices: Collection[int] | None = None) -> None:
        """Check the plain (non-watch) exchanges of a recording, in order."""
        for i, exchange in enumerate(recording(name)):
            if (indices is None or i in indices) and exchange["request"] is not None and not is_watch(exchange):
                self.replayer.check(exchange)

    def run(self, step: str) -> None:
        """Run ``step`` after every earlier step that has not run yet (so each test can run alone)."""
        for name, function in STEPS:
            if name not in self.done:
                self.done.append(name)
                function(self)
            if name == step:
                return


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with KubeStandin(REPORT_CRDS) as standin:
        api = api_client(standin, tmp_path_factory.mktemp("kube"))
        yield Cluster(standin, api, Replayer(api), tmp_path_factory.mktemp("kube-cluster"))
        api.close()


def step_01(cluster: Cluster) -> None:
    """Discovery; /apis lists only the served groups, which must equal the recorded entries."""
    for i, exchange in enumerate(recording("01")):
        if i != 2:
            cluster.replayer.check(exchange)
    for exchange in (recording("01")[2], recording("01b")[1]):
        answer = cluster.replayer.send(exchange["request"])
        assert answer.status == 200 and answer.body["kind"] == "APIGroupList"
        recorded = {g["name"]: g for g in exchange["response"]["body"]["groups"]}
        names = [g["name"] for g in answer.body["groups"]]
        assert names == ["apps", "authorization.k8s.io", "coordination.k8s.io", "openreports.io", "wgpolicyk8s.io"]
        assert all(group == recorded[group["name"]] for group in answer.body["groups"])


def step_02(cluster: Cluster) -> None:
    cluster.replay("02")


def step_03(cluster: Cluster) -> None:
    cluster.standin.ensure_namespace("paging")  # created before the recording started
    cluster.replay("03")


def step_04(cluster: Cluster) -> None:
    exchanges = recording("04")
    cluster.replay("04", range(9))
    # 422 with several causes: the apiserver's cause order is Go map order, compare them as a set
    exchange = exchanges[9]
    answer = cluster.replayer.send(exchange["request"])
    recorded = exchange["response"]["body"]
    assert answer.status == 422
    body = answer.body
    causes = body["details"].pop("causes")
    recorded_causes = recorded["details"]["causes"]
    assert sorted(causes, key=json.dumps) == sorted(recorded_causes, key=json.dumps)
    assert body["details"] == {k: v for k, v in recorded["details"].items() if k != "causes"}
    listed = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    assert body["message"] == recorded["message"].split(": [")[0] + f": [{listed}]"
    # 04#10 (invalid label key -> 422) is not emulated: the stand-in does not validate label syntax.
    # 04#11: the typed client refuses a str body before sending anything.
    before = len(cluster.standin.requests)
    with pytest.raises(ValueError, match="validation error"):
        cluster.objects.patch_namespaced_custom_object(*PR, "default", "policyreports", REPORT, "{not json")
    assert len(cluster.standin.requests) == before
    cluster.replay("04", range(12, 23))


def step_05(cluster: Cluster) -> None:
    exchanges = recording("05")
    cluster.replay("05", [0, 1, 2, 3, 4, 5, 6, 17, 18, 19])
    limited_user = [i for i, e in enumerate(exchanges) if e["client_call"].startswith("[limited kubeconfig]")]
    assert limited_user == list(range(7, 14))
    with KubeStandin(REPORT_CRDS, token="limited-token", user="limited") as limited:
        limited.deny(verb="*", group="*", resource="*")
        api = api_client(limited, cluster.directory)
        for i in limited_user:
            cluster.replayer.check(exchanges[i], api)
        api.close()
    wrong = api_client(cluster.standin, cluster.directory, token="not-the-token")
    anonymous = api_client(cluster.standin, cluster.directory, token="")
    cluster.replayer.check(exchanges[14], wrong)
    cluster.replayer.check(exchanges[15], anonymous)
    cluster.replayer.check(exchanges[16], anonymous)
    wrong.close()
    anonymous.close()


def watch_requests(standin: KubeStandin) -> int:
    """How many watch requests ``standin`` has received so far."""
    return sum(1 for r in standin.requests if r.query.get("watch", "").lower() == "true")


def watch_connected(standin: KubeStandin, before: int) -> None:
    """Wait until a watch request beyond the first ``before`` has reached ``standin`` (it is recorded
    on arrival: the watch's starting resourceVersion was chosen before it)."""
    wait_until("the watch to reach the stand-in", lambda: watch_requests(standin) > before, timeout=10, every=0.01)


def step_06(cluster: Cluster) -> None:
    """Watches: replay, live events with the pre-timeout bookmark, initial events, too old, future."""
    exchanges, replayer, objects = recording("06"), cluster.replayer, cluster.objects
    replayer.check(exchanges[0])
    r0 = replayer.rv(exchanges[0]["response"]["body"]["metadata"]["resourceVersion"])
    cluster.replay("06", [1, 2, 3])

    def compare_events(index: int, events: list[dict[str, Any]], *, learn: bool = True) -> None:
        recorded = exchanges[index]["response"]["body"]
        assert [e["type"] for e in events] == [e["type"] for e in recorded], exchanges[index]["client_call"]
        for rec, event in zip(recorded, events, strict=True):
            replayer.compare(
                rec["object"], event["raw_object"], f"06#{index}", learn=learn and rec["type"] != "BOOKMARK"
            )

    # 06#4: everything after R0 is replayed at once, DELETED carries the deletion's resourceVersion
    args = (objects.list_namespaced_custom_object, *PR, "default", "policyreports")
    events = watch_events(*args, count=3, resource_version=r0, allow_watch_bookmarks=True, timeout_seconds=10)
    compare_events(4, events)

    # 06#5: live events written by another thread, then a BOOKMARK about 2 s before the timeout
    recorded = [e["object"] for e in exchanges[5]["response"]["body"]]

    watches = watch_requests(cluster.standin)

    def writer() -> None:
        watch_connected(cluster.standin, watches)  # live: written while the watch is open
        cluster.standin.create(strip_server_metadata(recorded[0]))
        for obj in recorded[1:3]:
            cluster.standin.replace(strip_server_metadata(obj))
        cluster.standin.delete("wgpolicyk8s.io/v1alpha2", "PolicyReport", "live-demo", "default")

    thread = threading.Thread(target=writer)
    start = time.monotonic()
    thread.start()
    events = watch_events(
        *args, count=5, resource_version=cluster.standin.resource_version, allow_watch_bookmarks=True, timeout_seconds=3
    )
    bookmark_after = time.monotonic() - start
    thread.join()
    compare_events(5, events)
    assert 0.8 < bookmark_after < 1.7, bookmark_after  # timeoutSeconds - 2
    assert events[4]["raw_object"]["metadata"]["resourceVersion"] == replayer.rv("232")  # == the last event's

    # 06#6/#7: without a resourceVersion or with "0": a synthetic ADDED per existing object
    compare_events(6, watch_events(*args, count=1, timeout_seconds=3))
    compare_events(7, watch_events(*args, count=1, resource_version="0", timeout_seconds=3))
    # 06#8/#9: "0" + bookmarks is a watch-list: ADDED..., then the initial-events-end BOOKMARK
    events = watch_events(*args, count=2, resource_version="0", allow_watch_bookmarks=True, timeout_seconds=3)
    compare_events(8, events)
    events = read_lines(replayer.open(exchanges[9]["request"]), count=2)
    compare_events(9, [{"type": e["type"], "raw_object": e["object"]} for e in events])

    # 06#10: cluster-wide watch from R0 replays the seven changes in order
    cluster_args = (objects.list_cluster_custom_object, *PR, "policyreports")
    compare_events(10, watch_events(*cluster_args, count=7, resource_version=r0, timeout_seconds=2))

    # 06#11/#12: too old -> HTTP 200 with one ERROR event (410 Expired), then the stream ends
    oldest = r"too old resource version: 1 \(\d+\)"
    with pytest.raises(ApiException, match=f"Expired: {oldest}") as raised:
        watch_events(*args, count=1, resource_version="1", timeout_seconds=5)
    assert raised.value.status == 410
    start = time.monotonic()
    response = replayer.open(exchanges[12]["request"])
    assert response.status == 200 and response.headers["Content-Type"] == "application/json"
    (event,) = read_lines(response)
    assert time.monotonic() - start < 1
    recorded_error = exchanges[12]["response"]["body"][0]["object"]
    assert re.fullmatch(oldest, event["object"].pop("message"))
    assert event["type"] == "ERROR" and event["object"] == {k: v for k, v in recorded_error.items() if k != "message"}

    # 06#13: a malformed resourceVersion is a 500 Status without reason
    replayer.check(exchanges[13])
    # 06#14: a resourceVersion from the future: no events until the timeout (shortened to 1 s)
    start = time.monotonic()
    assert read_lines(replayer.open(exchanges[14]["request"], timeoutSeconds="1")) == []
    assert 0.9 < time.monotonic() - start < 2


def step_06_compaction(cluster: Cluster) -> None:
    """After compaction: stale continue token and exact list give 410; the fresh token still works."""
    exchanges = recording("06")
    cluster.standin.expire_continue_tokens()
    answer = cluster.replayer.check(exchanges[15])
    fresh = answer.body["metadata"]["continue"]
    assert decode_continue(fresh) == (-1, "page-2")
    page = cluster.objects.list_namespaced_custom_object(*PR, "paging", "policyreports", limit=3, _continue=fresh)
    assert [i["metadata"]["name"] for i in page["items"]] == ["page-3", "page-4", "page-5"]
    cluster.replayer.check(exchanges[16])
    # 06#17 differs on purpose: the real watch cache still held R0's events; the stand-in's
    # expire_continue_tokens() expires watches from older resourceVersions too (ERROR 410).
    r0 = cluster.replayer.rv("224")
    with pytest.raises(ApiException) as raised:
        watch_events(cluster.objects.list_namespaced_custom_object, *PR, "default", "policyreports", count=1,
                     resource_version=r0, timeout_seconds=3)  # fmt: skip
    assert raised.value.status == 410


def step_07(cluster: Cluster) -> None:
    cluster.replay("07")


def step_08(cluster: Cluster) -> None:
    cluster.replay("08")
    cluster.replayer.assert_rv_order()


STEPS: list[tuple[str, Callable[[Cluster], None]]] = [
    ("01", step_01),
    ("02", step_02),
    ("03", step_03),
    ("04", step_04),
    ("05", step_05),
    ("06", step_06),
    ("06-compaction", step_06_compaction),
    ("07", step_07),
    ("08", step_08),
]


def test_01_discovery(cluster: Cluster) -> None:
    cluster.run("01")


def test_01b_dynamic_client_discovery(cluster: Cluster, tmp_path: Path) -> None:
    cluster.standin.clear_requests()
    resources = dynamic.DynamicClient(cluster.api, cache_file=str(tmp_path / "discovery.json")).resources
    reports = resources.get(api_version="wgpolicyk8s.io/v1alpha2", kind="PolicyReport")
    assert (reports.name, reports.namespaced, reports.kind) == ("policyreports", True, "PolicyReport")
    sent = [(r.method, r.path) for r in cluster.standin.requests]
    assert sent == [(e["request"]["method"], e["request"]["path"]) for e in recording("01b")]
    cluster.replayer.check(recording("01b")[0])
    cluster.replayer.check(recording("01b")[2])


def test_02_create_get_list_selectors_delete(cluster: Cluster) -> None:
    cluster.run("02")


def test_03_pagination(cluster: Cluster) -> None:
    cluster.run("03")


def test_04_patch_and_update(cluster: Cluster) -> None:
    cluster.run("04")


def test_05_errors_and_auth(cluster: Cluster) -> None:
    cluster.run("05")


def test_06_watch(cluster: Cluster) -> None:
    cluster.run("06")


def test_06_compaction(cluster: Cluster) -> None:
    cluster.run("06-compaction")


def test_07_core_events(cluster: Cluster) -> None:
    cluster.run("07")


def test_08_cluster_reports_and_openreports(cluster: Cluster) -> None:
    cluster.run("08")


# --------------------------------------------------------------------------------------------------
# The test-side API on a scratch stand-in (each test uses its own namespace)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch_server() -> Iterator[KubeStandin]:
    with KubeStandin([*REPORT_CRDS, TESTWORKFLOW_EXECUTIONS_CRD]) as standin:
        yield standin


@pytest.fixture
def scratch(scratch_server: KubeStandin) -> Iterator[KubeStandin]:
    yield scratch_server
    scratch_server.allow_all()
    scratch_server.clear_faults()


@pytest.fixture
def api(scratch_server: KubeStandin, tmp_path: Path) -> Iterator[client.ApiClient]:
    configuration_client = api_client(scratch_server, tmp_path)
    yield configuration_client
    configuration_client.close()


def report(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    body = strip_server_metadata(example("policyreport-fail.yaml"))
    body["metadata"] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/managed-by": "kyverno", **labels},
    }
    return body


def test_typed_client_pages_through_a_consistent_snapshot(scratch: KubeStandin, api: client.ApiClient) -> None:
    scratch.ensure_namespace("typed")
    for i in range(5):
        scratch.create(report(f"r{i}", "typed", parity="even" if i % 2 == 0 else "odd"))
    objects = client.CustomObjectsApi(api)
    first = objects.list_namespaced_custom_object(*PR, "typed", "policyreports", limit=2)
    assert first["metadata"]["remainingItemCount"] == 3
    scratch.create(report("r-late", "typed"))  # written after the first page: not in this list
    names, token = [i["metadata"]["name"] for i in first["items"]], first["metadata"]["continue"]
    while token:
        page = objects.list_namespaced_custom_object(*PR, "typed", "policyreports", limit=2, _continue=token)
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"]["continue"]
    assert names == ["r0", "r1", "r2", "r3", "r4"]
    selected = objects.list_namespaced_custom_object(
        *PR, "typed", "policyreports", label_selector="parity notin (odd),parity"
    )
    assert [i["metadata"]["name"] for i in selected["items"]] == ["r0", "r2", "r4"]
    by_name = objects.list_cluster_custom_object(
        *PR, "policyreports", field_selector="metadata.namespace=typed,metadata.name!=r0"
    )
    assert len(by_name["items"]) == 5
    with pytest.raises(ApiException) as raised:
        objects.list_namespaced_custom_object(*PR, "typed", "policyreports", label_selector="a in (b")
    assert raised.value.status == 400 and json.loads(raised.value.body)["reason"] == "BadRequest"


def test_store_api_generation_and_namespaces(scratch: KubeStandin) -> None:
    with pytest.raises(KubeApiError) as raised:
        scratch.create(report("r", "store"))
    assert raised.value.code == 404 and raised.value.body["message"] == 'namespaces "store" not found'
    scratch.ensure_namespace("store")
    created = scratch.create({**report("r", "store"), "bogus": 1})  # pruned like the apiserver does
    assert "bogus" not in created and created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    annotated = strip_server_metadata(created)
    annotated["metadata"]["annotations"] = {"a": "1"}
    after_meta = scratch.replace(annotated)
    assert after_meta["metadata"]["generation"] == 1
    assert int(after_meta["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert scratch.replace(annotated) == after_meta  # no change: no new resourceVersion
    annotated["summary"]["fail"] = 3
    after_content = scratch.replace(annotated)
    assert (
        after_content["metadata"]["generation"] == 2 and after_content["metadata"]["uid"] == created["metadata"]["uid"]
    )
    assert scratch.get("wgpolicyk8s.io/v1alpha2", "PolicyReport", "r", "store") == after_content
    assert [
        o["metadata"]["name"]
        for o in scratch.objects("wgpolicyk8s.io/v1alpha2", "PolicyReport")
        if o["metadata"]["namespace"] == "store"
    ] == ["r"]
    with pytest.raises(KubeApiError, match="already exists"):
        scratch.create(report("r", "store"))
    scratch.delete("v1", "Namespace", "store")  # takes its objects with it
    assert scratch.get("wgpolicyk8s.io/v1alpha2", "PolicyReport", "r", "store") is None
    with pytest.raises(KubeApiError, match='"r" not found'):
        scratch.delete("wgpolicyk8s.io/v1alpha2", "PolicyReport", "r", "store")


def test_status_subresource(scratch: KubeStandin, api: client.ApiClient) -> None:
    scratch.ensure_namespace("status")
    group = ("testworkflows.testkube.io", "v1", "status", "testworkflowexecutions")
    body = {"apiVersion": "testworkflows.testkube.io/v1", "kind": "TestWorkflowExecution",
            "metadata": {"name": "e1", "namespace": "status"}, "spec": {"testWorkflow": {"name": "w"}}}  # fmt: skip
    objects = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(*group, body)
    main = objects.patch_namespaced_custom_object(*group, "e1", {"status": {"generation": 7}})
    assert "status" not in main and main["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    status = objects.patch_namespaced_custom_object_status(
        *group, "e1", {"status": {"generation": 7}, "spec": {"testWorkflow": {"name": "x"}}}
    )
    assert status["status"] == {"generation": 7} and status["metadata"]["generation"] == 1
    assert status["spec"] == created["spec"]
    spec = objects.patch_namespaced_custom_object(*group, "e1", {"spec": {"testWorkflow": {"name": "w2"}}})
    assert spec["metadata"]["generation"] == 2 and spec["status"] == {"generation": 7}


def test_watch_follows_test_side_writes_and_selectors(scratch: KubeStandin, api: client.ApiClient) -> None:
    scratch.ensure_namespace("watched")
    objects = client.CustomObjectsApi(api)
    start = scratch.resource_version

    watches = watch_requests(scratch)

    def writer() -> None:
        watch_connected(scratch, watches)  # live: written while the watch is open
        created = scratch.create(report("w", "watched", tier="gold"))
        relabelled = strip_server_metadata(created)
        relabelled["metadata"]["labels"]["tier"] = "silver"  # stops matching the selector
        scratch.replace(relabelled)

    thread = threading.Thread(target=writer)
    began = time.monotonic()
    thread.start()
    events = watch_events(objects.list_namespaced_custom_object, *PR, "watched", "policyreports", count=2,
                          resource_version=start, label_selector="tier=gold", timeout_seconds=5)  # fmt: skip
    thread.join()
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    assert time.monotonic() - began < 1  # woken by the writes, not by a timer
    assert events[1]["object"]["metadata"]["labels"]["tier"] == "gold"  # the last state that matched


def test_periodic_bookmark(scratch: KubeStandin, api: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(api)
    start = scratch.resource_version
    scratch.ensure_namespace("bookmarks")  # moves the resourceVersion past the watch's start
    scratch.bookmark_interval = 0.2
    try:
        events = watch_events(objects.list_namespaced_custom_object, *PR, "bookmarks", "policyreports", count=1,
                              resource_version=start, allow_watch_bookmarks=True, timeout_seconds=3)  # fmt: skip
    finally:
        scratch.bookmark_interval = 60.0
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["raw_object"] == {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
                                       "metadata": {"resourceVersion": scratch.resource_version}}  # fmt: skip


def test_injected_faults(scratch: KubeStandin, api: client.ApiClient) -> None:
    scratch.ensure_namespace("faults")
    scratch.create(report("f", "faults"))
    objects = client.CustomObjectsApi(api)
    expected = {
        500: ("InternalError", "Internal error occurred: injected fault"),
        503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
        409: ("Conflict", 'Operation cannot be fulfilled on policyreports.wgpolicyk8s.io "f": the object has been '
                          "modified; please apply your changes to the latest version and try again"),
        429: ("TooManyRequests", "Too many requests, please try again later."),
    }  # fmt: skip
    for status, (reason, message) in expected.items():
        scratch.inject(method="PATCH", path=r"/policyreports/f$", status=status)
        with pytest.raises(ApiException) as raised:
            objects.patch_namespaced_custom_object(
                *PR, "faults", "policyreports", "f", {"metadata": {"labels": {"x": "1"}}}
            )
        body = json.loads(raised.value.body)
        assert (raised.value.status, body["kind"], body["reason"], body["message"]) == (
            status,
            "Status",
            reason,
            message,
        )
        if status == 429:
            assert raised.value.headers["Retry-After"] == "1"
    # times, query regex, custom body, delay
    scratch.inject(method="GET", path="/policyreports$", query="limit=7", status=410, times=2, body={"custom": True})
    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            objects.list_namespaced_custom_object(*PR, "faults", "policyreports", limit=7)
        assert raised.value.status == 410 and json.loads(raised.value.body) == {"custom": True}
    assert objects.list_namespaced_custom_object(*PR, "faults", "policyreports", limit=7)["items"]
    assert objects.list_namespaced_custom_object(*PR, "faults", "policyreports")["items"]
    scratch.inject(method="*", path="/faults/", status=404, delay=0.2)
    began = time.monotonic()
    with pytest.raises(ApiException) as raised:
        objects.get_namespaced_custom_object(*PR, "faults", "policyreports", "f")
    assert raised.value.status == 404 and time.monotonic() - began >= 0.2
    # status 0 drops the connection; urllib3 retries, so drop every attempt
    scratch.clear_requests()
    scratch.inject(method="GET", path=r"/policyreports/f$", status=0, times=10)
    with pytest.raises(urllib3.exceptions.HTTPError):
        objects.get_namespaced_custom_object(*PR, "faults", "policyreports", "f")
    assert len(scratch.requests) > 1 and {r.path for r in scratch.requests} == {
        "/apis/wgpolicyk8s.io/v1alpha2/namespaces/faults/policyreports/f"
    }
    scratch.clear_faults()
    assert objects.get_namespaced_custom_object(*PR, "faults", "policyreports", "f")["metadata"]["name"] == "f"


def test_deny_and_self_subject_access_review(scratch: KubeStandin, api: client.ApiClient) -> None:
    objects = client.CustomObjectsApi(api)
    scratch.deny(verb="list", group="wgpolicyk8s.io", resource="policyreports")
    with pytest.raises(ApiException) as raised:
        objects.list_namespaced_custom_object(*PR, "default", "policyreports")
    assert json.loads(raised.value.body)["message"] == (
        'policyreports.wgpolicyk8s.io is forbidden: User "system:serviceaccount:policyflow:policyflow" cannot list '
        'resource "policyreports" in API group "wgpolicyk8s.io" in the namespace "default"'
    )
    with pytest.raises(ApiException, match="Not Found"):  # get is still allowed
        objects.get_namespaced_custom_object(*PR, "default", "policyreports", "missing")
    reviews = client.AuthorizationV1Api(api)

    def allowed(verb: str) -> bool:
        attributes = client.V1ResourceAttributes(
            verb=verb, group="wgpolicyk8s.io", resource="policyreports", namespace="default"
        )
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
        )
        return bool(reviews.create_self_subject_access_review(review).status.allowed)

    assert (allowed("list"), allowed("watch")) == (False, True)
    scratch.allow_all()
    assert allowed("list")
    assert scratch.requests[-1].body["spec"]["resourceAttributes"]["verb"] == "list"
    assert scratch.requests[-1].headers["authorization"] == "Bearer standin-token"


def test_core_events_typed(scratch: KubeStandin, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    involved = client.V1ObjectReference(kind="Deployment", name="web", namespace="default", api_version="apps/v1")
    event = client.CoreV1Event(metadata=client.V1ObjectMeta(generate_name="web."), involved_object=involved,
                               reason="PolicyViolation", message="m", type="Warning", count=1)  # fmt: skip
    created = core.create_namespaced_event("default", event)
    assert created.metadata.name.startswith("web.") and len(created.metadata.name) == len("web.") + 5
    core.patch_namespaced_event(created.metadata.name, "default", {"count": 2})
    listed = core.list_namespaced_event("default", field_selector="involvedObject.name=web,reason=PolicyViolation")
    assert [(e.metadata.name, e.count) for e in listed.items] == [(created.metadata.name, 2)]
    with pytest.raises(ApiException) as raised:
        core.list_namespaced_event("default", field_selector="spec.nope=1")
    assert json.loads(raised.value.body)["message"] == "field label not supported: spec.nope"


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app in (web, db),!legacy", {"app": "db"}, True),
        ("app notin (web)", {"app": "web"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("app.kubernetes.io/managed-by=kyverno", {"app.kubernetes.io/managed-by": "kyverno"}, True),
        ("tier=", {"tier": ""}, True),
        ("replicas>2", {"replicas": "3"}, True),
        ("replicas<2", {"replicas": "x"}, False),
        ("", {"anything": "goes"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert match_labels(parse_label_selector(selector), labels) is expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("this is not = a selector", "unable to parse requirement: found 'is', expected: in, notin, =, ==, !=, gt, lt"),
        ("a in b", "unable to parse requirement: found 'b' expected: '('"),
        ("a,", "found '', expected: identifier after ','"),
        ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("=x", "found '=', expected: !, identifier, or 'end of string'"),
    ],
)
def test_label_selector_errors(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as raised:
        parse_label_selector(selector)
    assert str(raised.value) == message


def test_label_selector_parse_result() -> None:
    assert parse_label_selector("a in (x,y), b!=c") == [
        Requirement("a", "in", ("x", "y")),
        Requirement("b", "!=", ("c",)),
    ]


def test_field_selectors() -> None:
    assert parse_field_selector("involvedObject.kind=Deployment,metadata.name!=x") == [
        ("involvedObject.kind", "=", "Deployment"),
        ("metadata.name", "!=", "x"),
    ]
    assert parse_field_selector(r"a==b\,c") == [("a", "=", "b,c")]
    with pytest.raises(SelectorError, match="invalid selector: 'nonsense'; can't understand 'nonsense'"):
        parse_field_selector("nonsense")


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1]}
    patch = {"a": "z", "c": {"f": None}, "l": [2], "n": {"x": None}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [2], "n": {}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1]}  # untouched
    assert merge_patch({"a": 1}, ["x"]) == ["x"]


def test_json_patch_rfc6902() -> None:
    doc = {"metadata": {"annotations": {}}, "list": [1, 2]}
    ops = [
        {"op": "add", "path": "/metadata/annotations/example.com~1x", "value": "1"},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "replace", "path": "/list/0", "value": 0},
        {"op": "move", "from": "/list/1", "path": "/moved"},
        {"op": "copy", "from": "/moved", "path": "/copied"},
        {"op": "test", "path": "/copied", "value": 2},
        {"op": "remove", "path": "/list/0"},
    ]
    assert json_patch(doc, ops) == {
        "metadata": {"annotations": {"example.com/x": "1"}},
        "list": [3],
        "moved": 2,
        "copied": 2,
    }
    for bad in (
        {"op": "test", "path": "/list/0", "value": 9},
        {"op": "remove", "path": "/nope"},
        {"op": "jump", "path": ""},
    ):
        with pytest.raises(PatchError):
            json_patch(doc, [bad])


def test_continue_tokens() -> None:
    recorded = recording("03")[7]["response"]["body"]["metadata"]["continue"]
    assert decode_continue(recorded) == (217, "page-2")
    later = recording("03")[8]["response"]["body"]["metadata"]["continue"]
    assert encode_continue(217, "page-5") == later
    assert decode_continue(encode_continue(5, "ns/name")) == (5, "ns/name")
    with pytest.raises(SelectorError) as raised:
        decode_continue("not-a-valid-token")
    assert str(raised.value) == recording("03")[15]["response"]["body"]["message"]


def test_metadata_only_views(scratch: KubeStandin, api: client.ApiClient) -> None:
    """``Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`` (what policyflow asks)."""
    scratch.ensure_namespace("partial")
    for name in ("a", "b", "c"):
        metadata = {"name": name, "namespace": "partial"}
        scratch.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": {"replicas": 1}})

    def get(path: str, accept: str) -> Answer:
        method, url, headers, _, _ = api.param_serialize(
            method="GET", resource_path=path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
        )
        response = api.rest_client.pool_manager.request(method, url, headers=headers, retries=False)
        return Answer(response.status, response.headers, response.data)

    wanted = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
    page = get("/apis/apps/v1/namespaces/partial/deployments?limit=2", f"{wanted},application/json")
    assert page.status == 200 and page.headers["Content-Type"] == wanted
    body = json.loads(page.raw)
    assert (body["kind"], body["apiVersion"], sorted(body["metadata"])) == (
        "PartialObjectMetadataList", "meta.k8s.io/v1", ["continue", "remainingItemCount", "resourceVersion"]
    )  # fmt: skip
    assert [(i["kind"], i["metadata"]["name"], i["metadata"]["generation"]) for i in body["items"]] == [
        ("PartialObjectMetadata", "a", 1), ("PartialObjectMetadata", "b", 1)
    ]  # fmt: skip
    assert "spec" not in body["items"][0]
    one = get("/apis/apps/v1/namespaces/partial/deployments/c", f"{wanted},application/json")
    assert one.headers["Content-Type"] == "application/json" and json.loads(one.raw)["spec"] == {"replicas": 1}
    assert (
        get("/apis/apps/v1/namespaces/partial/deployments", "application/json;as=Table;g=meta.k8s.io;v=v1").status
        == 406
    )
