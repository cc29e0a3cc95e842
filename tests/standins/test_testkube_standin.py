"""The Testkube stand-in, driven over real HTTP with plain httpx.

Most tests share one running stand-in (starting and stopping uvicorn costs ~0.25 s) and keep out of
each other's way by running their own freshly added workflow. Tests that need another configuration
start their own.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from policyflow.standins.testkube import (
    FAKE_CREDENTIAL_LINE,
    ZERO_TIME,
    Script,
    TestkubeStandin,
    go_duration,
    go_time,
    matches_label_selector,
    matches_tag_selector,
    parse_status_filter,
    parse_tag_selector,
    problem,
    smoke_script,
    start_hint,
    status_after_polls,
)
from tests.specs import TESTKUBE_OPENAPI

_names = itertools.count(1)


@pytest.fixture(scope="module")
def tk() -> Iterator[TestkubeStandin]:
    with TestkubeStandin() as standin:
        yield standin


@pytest.fixture(scope="module")
def client(tk: TestkubeStandin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tk.base_url, timeout=5) as http:
        yield http


@pytest.fixture
def wf(tk: TestkubeStandin) -> str:
    """A workflow of this test's own on the shared stand-in."""
    name = f"wf-{next(_names)}"
    tk.add_workflow(name)
    return name


@pytest.fixture(scope="module")
def validating() -> Iterator[tuple[TestkubeStandin, httpx.Client]]:
    # The spec is parsed once per process (cached in the stand-in module), so this costs it once.
    with TestkubeStandin(openapi_spec=TESTKUBE_OPENAPI) as standin, httpx.Client(base_url=standin.base_url) as http:
        yield standin, http


def run(client: httpx.Client, workflow: str, body: Any = None) -> dict[str, Any]:
    response = client.post(f"/test-workflows/{workflow}/executions", json={} if body is None else body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def status_of(client: httpx.Client, execution_id: str) -> str:
    response = client.get(f"/test-workflow-executions/{execution_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["result"]["status"])


def assert_problem(response: httpx.Response, status: int, detail: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    # The agent sends problem bodies as plain application/json (fiber's c.JSON resets the type).
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    if detail is not None:
        assert body["detail"] == detail
    return body


# --------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nanoseconds", "expected"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (1_000_000, "1ms"),
        (43_000_000, "43ms"),
        (1_500_000_000, "1.5s"),
        (47_092_000_000, "47.092s"),
        (62_500_000_000, "1m2.5s"),
        (60_000_000_000, "1m0s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_000_000_000, "1h2m3s"),
        (-1_500_000_000, "-1.5s"),
    ],
)
def test_go_duration_matches_go_duration_string(nanoseconds: int, expected: str) -> None:
    assert go_duration(nanoseconds) == expected


def test_go_time_trims_fraction_and_keeps_milliseconds() -> None:
    from datetime import UTC, datetime

    assert go_time(None) == ZERO_TIME == "0001-01-01T00:00:00Z"
    assert go_time(datetime(2026, 1, 15, 10, 35, 12, 481_999, tzinfo=UTC)) == "2026-01-15T10:35:12.481Z"
    assert go_time(datetime(2026, 1, 15, 10, 35, 12, 480_000, tzinfo=UTC)) == "2026-01-15T10:35:12.48Z"
    assert go_time(datetime(2026, 1, 15, 10, 35, 12, tzinfo=UTC)) == "2026-01-15T10:35:12Z"


def test_parse_tag_selector_ors_same_key_and_bare_key_means_exists() -> None:
    assert parse_tag_selector("a=1,a=2,b=3,c") == {"a": {"1", "2"}, "b": {"3"}, "c": None}
    # A bare key wins over values for that key; items with two '=' and empty items are ignored.
    assert parse_tag_selector("a=1,a,x=y=z,") == {"a": None}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("policy=p1", True),
        ("policy=p1,resource=r1", True),  # different keys ANDed
        ("policy=p1,resource=r2", False),
        ("policy=p2,policy=p1", True),  # same key ORed
        ("policy", True),  # exists
        ("missing", False),
        ("policy=p1,missing", False),
        ("", True),
    ],
)
def test_matches_tag_selector(selector: str, expected: bool) -> None:
    assert matches_tag_selector({"policy": "p1", "resource": "r1"}, selector) is expected


def test_matches_label_selector_equality_exists_and_last_one_wins() -> None:
    labels = {"app": "demo", "tier": "e2e"}
    assert matches_label_selector(labels, "app=demo,tier")
    assert not matches_label_selector(labels, "app=other")
    assert matches_label_selector(labels, "app=other,app=demo")  # a later item replaces an earlier one
    assert not matches_label_selector(None, "app")


def test_parse_status_filter_drops_the_whole_filter_on_one_unknown_value() -> None:
    assert parse_status_filter("passed,failed") == frozenset({"passed", "failed"})
    assert parse_status_filter("passed,success") is None
    assert parse_status_filter("") is None


def test_status_after_polls() -> None:
    seen = [status_after_polls(n, queued_polls=1, running_polls=2, outcome="failed") for n in range(6)]
    assert seen == ["queued", "queued", "running", "running", "failed", "failed"]
    assert status_after_polls(99, queued_polls=0, running_polls=0, outcome="never") == "running"
    assert status_after_polls(1, queued_polls=0, running_polls=0, outcome="canceled") == "canceled"


def test_problem_uses_go_status_text() -> None:
    assert problem(404, "x") == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "x"}
    assert problem(599, "x")["title"] == ""


# --------------------------------------------------------------------------------------------------
# Running a workflow
# --------------------------------------------------------------------------------------------------


def test_run_returns_one_execution_object_shaped_like_the_agents(client: httpx.Client, wf: str) -> None:
    response = client.post(
        f"/test-workflows/{wf}/executions",
        json={
            "name": "ignored-by-the-agent",
            "tags": {"kyverno.policy": "require-resources"},
            "config": {"target": "nginx", "empty": ""},
            "runningContext": {"interface": {"type": "api"}, "actor": {"type": "program", "name": "pf"}},
            "disableWebhooks": True,
        },
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    execution = response.json()
    assert isinstance(execution, dict)  # not the array the spec promises
    assert re.fullmatch(r"[0-9a-f]{24}", execution["id"])
    assert execution["groupId"] == execution["id"]
    assert execution["name"] == f"{wf}-1"
    assert execution["number"] == 1
    assert execution["namespace"] == "testkube"
    assert execution["scheduledAt"].endswith("Z") and execution["scheduledAt"] != ZERO_TIME
    assert execution["assignedAt"] == ZERO_TIME
    result = execution["result"]
    assert result["status"] == "queued"
    assert result["predictedStatus"] == "passed"
    assert result["startedAt"] == result["finishedAt"] == ZERO_TIME
    assert (result["durationMs"], result["pausedMs"], result["totalDurationMs"]) == (0, 0, 0)
    assert result["initialization"] == {"status": "queued"}
    assert result["steps"] == {}
    assert "duration" not in result
    assert execution["workflow"] == {"name": wf, "namespace": "testkube", "spec": {}}
    assert execution["tags"] == {"kyverno.policy": "require-resources"}
    assert execution["configParams"] == {"target": {"value": "nginx"}, "empty": {"emptyValue": True}}
    assert execution["runningContext"]["actor"]["name"] == "pf"
    assert execution["disableWebhooks"] is True


def test_run_numbers_executions_per_workflow(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    other = f"{wf}-other"
    tk.add_workflow(other)

    names = [run(client, wf)["name"], run(client, other)["name"], run(client, wf)["name"]]

    assert names == [f"{wf}-1", f"{other}-1", f"{wf}-2"]
    assert [e["name"] for e in tk.executions if e["workflow"]["name"] == wf] == [f"{wf}-1", f"{wf}-2"]


def test_run_ignores_a_body_that_is_not_declared_json(client: httpx.Client, wf: str) -> None:
    response = client.post(f"/test-workflows/{wf}/executions", content=b'{"tags": {"a": "b"}}')

    assert response.status_code == 200
    assert "tags" not in response.json()


@pytest.mark.parametrize(
    ("content", "detail_part"),
    [
        (b"{nope", "invalid body"),
        (b"", "unexpected end of JSON input"),
        (b'{"tags": {"a": 1}}', "cannot unmarshal number into Go struct field TestWorkflowExecutionRequest.tags"),
        (b"[]", "cannot unmarshal array"),
    ],
)
def test_run_rejects_a_json_body_go_cannot_unmarshal(
    client: httpx.Client, tk: TestkubeStandin, wf: str, content: bytes, detail_part: str
) -> None:
    response = client.post(
        f"/test-workflows/{wf}/executions", content=content, headers={"Content-Type": "application/json"}
    )

    body = assert_problem(response, 400)
    assert body["detail"].startswith("failed to execute test workflow: invalid body: ")
    assert detail_part in body["detail"]
    assert not [e for e in tk.executions if e["workflow"]["name"] == wf]


def test_run_of_an_unknown_workflow_is_a_500(client: httpx.Client) -> None:
    response = client.post("/test-workflows/no-such-wf/executions", json={})

    body = assert_problem(
        response,
        500,
        "failed to execute test workflow: execution error: cannot fetch Test Workflow by name: no-such-wf: "
        'testworkflows.testworkflows.testkube.io "no-such-wf" not found',
    )
    assert body["title"] == "Internal Server Error"


def test_run_by_label_selector_returns_an_array_sharing_one_group(client: httpx.Client, tk: TestkubeStandin) -> None:
    tk.add_workflow("sel-a", labels={"suite": "sel"})
    tk.add_workflow("sel-b", labels={"suite": "sel"})

    response = client.post("/test-workflow-executions", params={"selector": "suite=sel"}, json={"tags": {"t": "1"}})

    assert response.status_code == 200
    executions = response.json()
    assert [e["workflow"]["name"] for e in executions] == ["sel-a", "sel-b"]
    assert executions[0]["groupId"] == executions[1]["groupId"] != executions[0]["id"]
    assert all(e["tags"] == {"t": "1"} for e in executions)
    assert executions[0]["workflow"]["labels"] == {"suite": "sel"}
    assert_problem(client.post("/test-workflow-executions", params={"selector": "suite=none"}, json={}), 500)
    assert_problem(client.post("/test-workflow-executions", params={"selector": "suite in (a)"}, json={}), 500)


# --------------------------------------------------------------------------------------------------
# Reading executions and the state machine
# --------------------------------------------------------------------------------------------------


def test_each_get_advances_queued_running_then_passed(client: httpx.Client, wf: str) -> None:
    execution = run(client, wf)

    assert [status_of(client, execution["id"]) for _ in range(4)] == ["queued", "running", "passed", "passed"]
    done = client.get(f"/test-workflow-executions/{execution['id']}").json()
    result = done["result"]
    assert result["predictedStatus"] == "passed"
    assert ZERO_TIME not in (result["startedAt"], result["finishedAt"], done["assignedAt"])
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)|0s", result["duration"])
    assert result["durationMs"] == result["totalDurationMs"] >= 0
    assert result["initialization"]["status"] == "passed"


def test_get_by_name_and_through_the_workflow_path(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    execution = run(client, wf)
    other = f"{wf}-x"
    tk.add_workflow(other)

    by_name = client.get(f"/test-workflow-executions/{execution['name']}")
    nested = client.get(f"/test-workflows/{wf}/executions/{execution['id']}")
    wrong_workflow = client.get(f"/test-workflows/{other}/executions/{execution['id']}")

    assert by_name.status_code == nested.status_code == 200
    assert by_name.json()["id"] == nested.json()["id"] == execution["id"]
    assert_problem(wrong_workflow, 404, "get execution: client not found: mongo: no documents in result")


def test_get_of_an_unknown_execution_is_a_404(client: httpx.Client) -> None:
    body = assert_problem(client.get("/test-workflow-executions/000000000000000000000000"), 404)
    assert body["title"] == "Not Found"


@pytest.mark.parametrize("outcome", ["failed", "aborted", "canceled"])
def test_set_outcome_decides_how_a_workflows_executions_end(
    client: httpx.Client, tk: TestkubeStandin, wf: str, outcome: str
) -> None:
    tk.set_outcome(wf, outcome)
    execution = run(client, wf)

    statuses = [status_of(client, execution["id"]) for _ in range(3)]

    assert statuses == ["queued", "running", outcome]
    assert tk.executions[-1]["result"]["predictedStatus"] == outcome


def test_never_keeps_running_until_the_outcome_changes(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.set_outcome(wf, "never")
    execution = run(client, wf)

    assert {status_of(client, execution["id"]) for _ in range(6)} == {"queued", "running"}
    tk.set_outcome(wf, "failed")
    assert status_of(client, execution["id"]) == "failed"


def test_poll_counts_and_default_outcome_are_configurable() -> None:
    with (
        TestkubeStandin(workflows=["w"], outcome="failed", queued_polls=0, running_polls=2) as standin,
        httpx.Client(base_url=standin.base_url) as http,
    ):
        execution = run(http, "w")
        assert [status_of(http, execution["id"]) for _ in range(3)] == ["running", "running", "failed"]
    with pytest.raises(ValueError, match="outcome"):
        TestkubeStandin(outcome="success")


def test_executions_property_is_a_snapshot(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    run(client, wf)
    snapshot = tk.executions
    snapshot[-1]["result"]["status"] = "tampered"

    assert tk.executions[-1]["result"]["status"] == "queued"


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------


def test_list_is_one_object_with_totals_filtered_and_newest_first(client: httpx.Client, wf: str) -> None:
    first, second, third = (run(client, wf) for _ in range(3))
    for _ in range(3):
        status_of(client, first["id"])  # -> passed
    status_of(client, second["id"])  # -> queued still (first GET)

    listing = client.get(f"/test-workflows/{wf}/executions").json()

    assert set(listing) == {"totals", "filtered", "results"}
    assert [r["id"] for r in listing["results"]] == [third["id"], second["id"], first["id"]]
    assert listing["totals"] == {"results": 3, "passed": 1, "failed": 0, "queued": 2, "running": 0}
    assert listing["filtered"] == listing["totals"]
    summary = listing["results"][-1]
    assert summary["workflow"] == {"name": wf, "namespace": "testkube"}
    assert set(summary["result"]) >= {"status", "predictedStatus", "durationMs", "duration", "finishedAt"}
    assert "steps" not in summary["result"] and "initialization" not in summary["result"]
    # Listing does not advance anything: the third execution is still on its POST state.
    assert status_of(client, third["id"]) == "queued"


def test_list_pages_are_zero_based_and_page_size_zero_means_100(client: httpx.Client, wf: str) -> None:
    names = [run(client, wf)["name"] for _ in range(5)][::-1]

    def page(**params: str) -> list[str]:
        response = client.get(f"/test-workflows/{wf}/executions", params=params)
        return [r["name"] for r in response.json()["results"]]

    assert page(page="0", pageSize="2") == names[:2]
    assert page(page="2", pageSize="2") == names[4:]
    assert page(pageSize="0") == names
    assert page(page="junk") == names  # strconv.Atoi fails -> default
    filtered = client.get(f"/test-workflows/{wf}/executions", params={"pageSize": "2"}).json()["filtered"]
    assert filtered["results"] == 5  # pagination does not change the counts


def test_list_status_filter_and_its_unknown_value_quirk(client: httpx.Client, wf: str) -> None:
    done = run(client, wf)
    run(client, wf)
    for _ in range(3):
        status_of(client, done["id"])

    def ids(status: str) -> list[str]:
        response = client.get(f"/test-workflows/{wf}/executions", params={"status": status})
        return [r["id"] for r in response.json()["results"]]

    assert ids("passed") == [done["id"]]
    assert len(ids("queued,passed")) == 2
    assert len(ids("passed,success")) == 2  # one unknown value drops the whole filter


def test_list_tag_selector(client: httpx.Client, wf: str) -> None:
    a = run(client, wf, {"tags": {"policy": "p1", "resource": "r1"}})
    b = run(client, wf, {"tags": {"policy": "p2", "resource": "r1"}})
    run(client, wf, {"tags": {"other": "x"}})

    def names(selector: str) -> set[str]:
        response = client.get(f"/test-workflows/{wf}/executions", params={"tagSelector": selector})
        return {r["name"] for r in response.json()["results"]}

    assert names("policy=p1,resource=r1") == {a["name"]}
    assert names("policy=p1,policy=p2") == {a["name"], b["name"]}
    assert names("resource") == {a["name"], b["name"]}
    assert names("policy=p1,resource=r2") == set()


def test_list_text_search_is_a_case_insensitive_regex(client: httpx.Client, wf: str) -> None:
    for _ in range(3):
        run(client, wf)
    response = client.get(f"/test-workflows/{wf}/executions", params={"textSearch": wf.upper() + "-[23]$"})

    assert sorted(r["name"] for r in response.json()["results"]) == [f"{wf}-2", f"{wf}-3"]
    assert_problem(client.get(f"/test-workflows/{wf}/executions", params={"textSearch": "("}), 502)


def test_list_selector_filters_on_workflow_labels_across_workflows() -> None:
    with TestkubeStandin(workflows=["plain"]) as standin, httpx.Client(base_url=standin.base_url) as http:
        standin.add_workflow("labelled", labels={"team": "sec"})
        run(http, "plain")
        run(http, "labelled")

        everything = http.get("/test-workflow-executions").json()
        sec = http.get("/test-workflow-executions", params={"selector": "team=sec"}).json()

        assert [r["name"] for r in everything["results"]] == ["labelled-1", "plain-1"]
        assert [r["name"] for r in sec["results"]] == ["labelled-1"]
        assert (sec["totals"]["results"], sec["filtered"]["results"]) == (2, 1)


def test_listing_an_unknown_workflow_is_empty_not_404(client: httpx.Client) -> None:
    response = client.get("/test-workflows/never-created/executions")

    assert response.status_code == 200
    assert response.json() == {
        "totals": {"results": 0, "passed": 0, "failed": 0, "queued": 0, "running": 0},
        "filtered": {"results": 0, "passed": 0, "failed": 0, "queued": 0, "running": 0},
        "results": [],
    }


# --------------------------------------------------------------------------------------------------
# Aborting
# --------------------------------------------------------------------------------------------------


def test_abort_is_204_then_aborted_then_400_when_finished(client: httpx.Client, wf: str) -> None:
    execution = run(client, wf)

    response = client.post(f"/test-workflow-executions/{execution['id']}/abort")

    assert response.status_code == 204
    assert response.content == b""
    assert status_of(client, execution["id"]) == "aborted"
    assert_problem(
        client.post(f"/test-workflows/{wf}/executions/{execution['name']}/abort"),
        400,
        f"failed to abort test workflow execution '{execution['name']}': checking execution: "
        "execution already finished",
    )


def test_abort_through_the_workflow_path_and_of_unknown_executions(client: httpx.Client, wf: str) -> None:
    execution = run(client, wf)
    status_of(client, execution["id"])
    status_of(client, execution["id"])  # running

    assert client.post(f"/test-workflows/{wf}/executions/{execution['id']}/abort").status_code == 204
    done = client.get(f"/test-workflow-executions/{execution['id']}").json()
    assert done["result"]["status"] == done["result"]["predictedStatus"] == "aborted"
    assert done["result"]["finishedAt"] != ZERO_TIME
    assert_problem(client.post("/test-workflow-executions/missing/abort"), 404)


def test_abort_all_of_a_workflow(client: httpx.Client, wf: str) -> None:
    ids = [run(client, wf)["id"] for _ in range(2)]

    assert client.post(f"/test-workflows/{wf}/abort").status_code == 204
    assert [status_of(client, i) for i in ids] == ["aborted", "aborted"]


# --------------------------------------------------------------------------------------------------
# Workflows
# --------------------------------------------------------------------------------------------------


def test_get_workflow_and_list_workflows(client: httpx.Client, tk: TestkubeStandin) -> None:
    found = client.get("/test-workflows/smoke-nova")

    assert found.status_code == 200
    assert {k: found.json()[k] for k in ("name", "namespace", "spec")} == {
        "name": "smoke-nova",
        "namespace": "testkube",
        "spec": {},
    }
    assert_problem(
        client.get("/test-workflows/ghost"),
        404,
        "failed to get test workflow 'ghost': client not found: "
        'testworkflows.testworkflows.testkube.io "ghost" not found',
    )
    listed = client.get("/test-workflows").json()
    assert isinstance(listed, list)
    assert "smoke-nova" in {w["name"] for w in listed}


def test_unknown_routes_get_fibers_plain_404(client: httpx.Client, tk: TestkubeStandin) -> None:
    response = client.get("/test-suites")

    assert response.status_code == 404
    assert response.text == "Cannot GET /v1/test-suites"


# --------------------------------------------------------------------------------------------------
# Auth, cloud paths, recording
# --------------------------------------------------------------------------------------------------


def test_token_is_required_as_a_bearer_header() -> None:
    with TestkubeStandin(token="tkcapi_secret") as standin:
        url = standin.base_url + "/test-workflows/smoke-nova/executions"

        missing = httpx.post(url, json={})
        wrong = httpx.post(url, json={}, headers={"Authorization": "Bearer: tkcapi_secret"})
        right = httpx.post(url, json={}, headers={"Authorization": "Bearer tkcapi_secret"})

        assert assert_problem(missing, 401)["title"] == "Unauthorized"
        assert_problem(wrong, 401)
        assert right.status_code == 200
        assert len(standin.executions) == 1
        assert len(standin.requests) == 3  # rejected requests are recorded too


def test_cloud_mode_serves_the_agent_prefix_instead_of_v1() -> None:
    with TestkubeStandin(cloud=("tkcorg_1", "tkcenv_2")) as standin:
        assert standin.base_url == standin.url + "/organizations/tkcorg_1/environments/tkcenv_2/agent"

        cloud = httpx.post(standin.base_url + "/test-workflows/smoke-nova/executions", json={})
        oss = httpx.post(standin.url + "/v1/test-workflows/smoke-nova/executions", json={})
        other_env = httpx.get(standin.url + "/organizations/tkcorg_1/environments/x/agent/test-workflows")

        assert cloud.status_code == 200
        assert cloud.json()["name"] == "smoke-nova-1"
        assert oss.status_code == other_env.status_code == 404


def test_requests_are_recorded(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    client.post(f"/test-workflows/{wf}/executions", params={"a": "1"}, json={"tags": {"k": "v"}})

    recorded = next(r for r in reversed(tk.requests) if r.path == f"/v1/test-workflows/{wf}/executions")
    assert recorded.method == "POST"
    assert recorded.query == {"a": "1"}
    assert recorded.headers["content-type"] == "application/json"
    assert recorded.body == {"tags": {"k": "v"}}
    assert recorded.raw == recorded.raw_body == b'{"tags":{"k":"v"}}'


def test_concurrent_runs_get_unique_numbers(tk: TestkubeStandin, wf: str) -> None:
    def worker() -> None:
        with httpx.Client(base_url=tk.base_url) as http:
            for _ in range(3):
                run(http, wf)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    numbers = sorted(e["number"] for e in tk.executions if e["workflow"]["name"] == wf)
    assert numbers == list(range(1, 19))


# --------------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------------


def test_inject_status_answers_that_many_times_then_recovers(
    client: httpx.Client, tk: TestkubeStandin, wf: str
) -> None:
    tk.inject(method="POST", path=f"/{wf}/executions$", status=503, times=2, headers={"Retry-After": "1"})

    first = client.post(f"/test-workflows/{wf}/executions", json={})
    second = client.post(f"/test-workflows/{wf}/executions", json={})
    third = client.post(f"/test-workflows/{wf}/executions", json={})

    assert assert_problem(first, 503)["title"] == "Service Unavailable"
    assert first.headers["retry-after"] == "1"
    assert second.status_code == 503
    assert third.status_code == 200
    assert [e["name"] for e in tk.executions if e["workflow"]["name"] == wf] == [f"{wf}-1"]


def test_inject_custom_body(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.inject(method="GET", path=f"/{wf}/executions$", status=200, body=[{"not": "the real shape"}])
    tk.inject(method="*", path=f"/{wf}$", status=502, body="<html>bad gateway</html>")

    assert client.get(f"/test-workflows/{wf}/executions").json() == [{"not": "the real shape"}]
    html = client.get(f"/test-workflows/{wf}")
    assert (html.status_code, html.text) == (502, "<html>bad gateway</html>")
    assert html.headers["content-type"].startswith("text/plain")


def test_inject_drop_before_the_operation(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.inject(method="POST", path=f"/{wf}/executions$", status=0)

    with pytest.raises(httpx.RemoteProtocolError):
        client.post(f"/test-workflows/{wf}/executions", json={})

    assert not [e for e in tk.executions if e["workflow"]["name"] == wf]
    assert run(client, wf)["name"] == f"{wf}-1"


def test_inject_drop_after_the_execution_started(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.inject(method="POST", path=f"/{wf}/executions$", status=0, after=True)

    with pytest.raises(httpx.RemoteProtocolError):
        client.post(f"/test-workflows/{wf}/executions", json={"tags": {"k": "v"}})

    # The answer was lost, but the run happened: a retry must find it instead of starting another.
    assert [e["name"] for e in tk.executions if e["workflow"]["name"] == wf] == [f"{wf}-1"]
    found = client.get(f"/test-workflows/{wf}/executions", params={"tagSelector": "k=v"}).json()
    assert [r["name"] for r in found["results"]] == [f"{wf}-1"]


def test_inject_after_with_an_error_status(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.inject(method="POST", path=f"/{wf}/executions$", status=504, after=True)

    assert_problem(client.post(f"/test-workflows/{wf}/executions", json={}), 504)
    assert len([e for e in tk.executions if e["workflow"]["name"] == wf]) == 1


def test_inject_delay_times_the_client_out(tk: TestkubeStandin, wf: str) -> None:
    tk.inject(method="POST", path=f"/{wf}/executions$", status=500, delay=0.4, after=True)

    with httpx.Client(base_url=tk.base_url, timeout=0.1) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"/test-workflows/{wf}/executions", json={})

    assert len([e for e in tk.executions if e["workflow"]["name"] == wf]) == 1


def test_inject_rejects_times_below_one(tk: TestkubeStandin) -> None:
    with pytest.raises(ValueError, match="times"):
        tk.inject(method="GET", path="x", status=500, times=0)


# --------------------------------------------------------------------------------------------------
# OpenAPI request validation
# --------------------------------------------------------------------------------------------------


def test_validation_rejects_a_body_against_the_spec(validating: tuple[TestkubeStandin, httpx.Client]) -> None:
    standin, http = validating

    bad_type = http.post("/test-workflows/smoke-nova/executions", json={"tags": {"a": 1}})
    bad_enum = http.post(
        "/test-workflows/smoke-nova/executions",
        json={"runningContext": {"interface": {"type": "robot"}, "actor": {"type": "program"}}},
    )
    bad_param = http.post("/test-workflow-executions/abc/abort", params={"forceAgent": "maybe"})

    assert "1 is not of type 'string'" in assert_problem(bad_type, 400)["detail"]
    assert "'robot' is not one of" in assert_problem(bad_enum, 400)["detail"]
    assert "forceAgent" in assert_problem(bad_param, 400)["detail"]
    assert standin.executions == []


def test_validation_accepts_what_the_real_agent_accepts(validating: tuple[TestkubeStandin, httpx.Client]) -> None:
    _, http = validating
    execution = run(
        http,
        "smoke-nova",
        {
            "tags": {"a": "b"},
            "config": {"k": "v"},
            "runningContext": {"interface": {"type": "api"}, "actor": {"type": "program", "name": "pf"}},
        },
    )
    lenient = {"page": "0", "pageSize": "10", "status": "queued", "selector": "x=y", "textSearch": "smoke"}

    no_content_type = http.post("/test-workflows/smoke-nova/executions", content=b"")
    by_workflow = http.get("/test-workflows/smoke-nova/executions", params=lenient | {"tagSelector": "a=b"})
    # The spec gives this path a required {id} path parameter it does not have; the agent has none.
    all_executions = http.get("/test-workflow-executions", params=lenient)
    one = http.get(f"/test-workflow-executions/{execution['id']}")
    abort = http.post(f"/test-workflow-executions/{execution['id']}/abort", params={"forceAgent": "true"})

    assert no_content_type.status_code == 200, no_content_type.text
    assert by_workflow.status_code == all_executions.status_code == one.status_code == 200
    assert abort.status_code == 204


# --------------------------------------------------------------------------------------------------
# Step results, signature and the /logs route
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_schema() -> Any:
    """A validator factory for a schema of the OpenAPI spec's components (OpenAPI 3.0 dialect)."""
    import yaml
    from openapi_schema_validator import OAS30Validator

    spec = yaml.load(TESTKUBE_OPENAPI.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

    def validator(name: str) -> Any:
        return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})

    return validator


def finished_execution(client: httpx.Client, tk: TestkubeStandin, workflow: str, outcome: str) -> dict[str, Any]:
    tk.set_outcome(workflow, outcome)
    execution = run(client, workflow)
    for _ in range(3):
        doc: dict[str, Any] = client.get(f"/test-workflow-executions/{execution['id']}").json()
    assert doc["result"]["status"] == outcome
    return doc


@pytest.mark.parametrize("outcome", ["passed", "failed", "aborted", "canceled"])
def test_signature_and_step_results_match_the_spec(
    client: httpx.Client, tk: TestkubeStandin, wf: str, outcome: str, spec_schema: Any
) -> None:
    doc = finished_execution(client, tk, wf, outcome)
    for node in doc["signature"]:
        spec_schema("TestWorkflowSignature").validate(node)
        assert re.fullmatch(r"r[bcdfghjklmnpqrstvwxz2456789]{5}[0-9a-z]+", node["ref"])
    for step in doc["result"]["steps"].values():
        spec_schema("TestWorkflowStepResult").validate(step)
    spec_schema("TestWorkflowResult").validate(doc["result"])
    refs = [node["ref"] for node in doc["signature"]]
    assert set(doc["result"]["steps"]) == set(refs)
    statuses = [doc["result"]["steps"][ref]["status"] for ref in refs]
    expected = {"passed": ["passed"] * 3, "failed": ["passed", "failed", "skipped"],
                "aborted": ["passed", "aborted", "skipped"], "canceled": ["passed", "canceled", "skipped"]}
    assert statuses == expected[outcome]
    failing = doc["result"]["steps"][refs[1]]
    if outcome == "failed":
        assert failing["exitCode"] == 7 and "errorMessage" not in failing  # a plain exit: no message
    if outcome in ("aborted", "canceled"):
        assert failing["errorMessage"] == f"The execution has been {outcome}. (Job has been aborted)"
        skipped = doc["result"]["steps"][refs[2]]["errorMessage"]
        assert skipped.startswith(f"The execution was {outcome} before.")


def test_a_script_with_a_group_nests_its_steps(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.set_script(wf, Script(steps=("a", "b"), failing_step="b", group="Tests", exit_code=2, error_message="oom"))
    doc = finished_execution(client, tk, wf, "failed")
    [group] = doc["signature"]
    assert group["name"] == "Tests" and [c["name"] for c in group["children"]] == ["a", "b"]
    steps = doc["result"]["steps"]
    assert steps[group["ref"]]["status"] == "failed"
    failing = steps[group["children"][1]["ref"]]
    assert (failing["status"], failing["exitCode"], failing["errorMessage"]) == ("failed", 2, "oom")


def test_logs_are_plain_text_in_the_format_the_digest_reads(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    from policyflow.domain.testlog import split_log

    tk.set_script(wf, smoke_script(leak_credential=True))
    doc = finished_execution(client, tk, wf, "failed")
    response = client.get(f"/test-workflow-executions/{doc['id']}/logs")
    by_workflow = client.get(f"/test-workflows/{wf}/executions/{doc['id']}/logs")

    assert response.status_code == 200 and response.headers["content-type"] == "text/plain"
    assert by_workflow.text == response.text
    text = response.text
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", text)
    refs = [node["ref"] for node in doc["signature"]]
    assert start_hint(refs[0]) in text and start_hint(refs[2]) not in text  # a skipped step logs nothing
    per_step = split_log(text)
    assert list(per_step) == ["", refs[0], refs[1]]
    assert per_step[refs[1]][-2:] == [FAKE_CREDENTIAL_LINE, per_step[refs[1]][-1]]
    assert per_step[refs[1]][-1].startswith("curl: (7) Failed to connect")


def test_logs_of_unfinished_unknown_and_named_executions(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    tk.set_outcome(wf, "never")
    running = run(client, wf)
    missing = "The specified key does not exist."
    assert_problem(client.get(f"/test-workflow-executions/{running['id']}/logs"), 500,
                   f"can't get log: {running['id']}: {missing}")
    assert_problem(client.get("/test-workflow-executions/nope/logs"), 404)
    done = finished_execution(client, tk, wf, "passed")
    # The handler finds the execution by name, then reads the log by the path's value.
    assert_problem(client.get(f"/test-workflow-executions/{done['name']}/logs"), 500,
                   f"can't get log: {done['name']}: {missing}")


def test_logs_route_is_not_validated_against_the_spec_that_lacks_it(
    validating: tuple[TestkubeStandin, httpx.Client],
) -> None:
    standin, http = validating
    standin.set_outcome("smoke-nova", "failed")
    execution = run(http, "smoke-nova")
    for _ in range(3):
        http.get(f"/test-workflow-executions/{execution['id']}")
    assert http.get(f"/test-workflow-executions/{execution['id']}/logs").status_code == 200


def test_faults_can_be_injected_on_the_logs_route(client: httpx.Client, tk: TestkubeStandin, wf: str) -> None:
    doc = finished_execution(client, tk, wf, "failed")
    tk.inject(method="GET", path=r"/logs$", status=404)
    tk.inject(method="GET", path=r"/logs$", status=503)
    assert client.get(f"/test-workflow-executions/{doc['id']}/logs").status_code == 404
    assert client.get(f"/test-workflow-executions/{doc['id']}/logs").status_code == 503
    assert client.get(f"/test-workflow-executions/{doc['id']}/logs").status_code == 200
