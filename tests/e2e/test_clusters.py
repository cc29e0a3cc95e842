"""End to end: one policyflow, two clusters (two Kubernetes API stand-ins on loopback at once).

The real CLI in-process against both stand-ins, the Testkube stand-in and the session's Prefect API.
The second cluster is stopped between cycles and started again on the same port, with its store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, deploy, load_report, records
from tests.specs import REPORT_CRDS

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def staging() -> Iterator[KubeStandin]:
    """A second cluster's API server."""
    with KubeStandin(REPORT_CRDS) as server:
        yield server


def two_clusters(tmp_path: Path, staging: KubeStandin) -> str:
    """``default`` (the top-level kubeconfig, as before) and ``staging``, whose violations a route
    sends to smoke-nova with the cluster in a tag."""
    config = tmp_path / "clusters.yaml"
    config.write_text(f"""
clusters:
  - name: default
  - name: staging
    kubeconfig: {staging.write_kubeconfig(tmp_path / "staging.kubeconfig")}
routes:
  - match: {{clusters: ["stag*"]}}
    workflow: smoke-nova
    tags: {{env: "{{cluster}}"}}
""")
    return str(config)


def by_cluster(testkube: TestkubeStandin) -> dict[str, list[dict[str, Any]]]:
    seen: dict[str, list[dict[str, Any]]] = {}
    for execution in testkube.executions:
        seen.setdefault(execution["tags"].get("policyflow-cluster", "?"), []).append(execution)
    return seen


def test_the_same_resource_in_two_clusters_is_two_violations_tested_once_each(
    policyflow: Policyflow, kube: KubeStandin, staging: KubeStandin, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    config = two_clusters(tmp_path, staging)
    here = load_report(kube, resource=deploy(kube, "nginx-no-cpu"))
    there = load_report(staging, resource=deploy(staging, "nginx-no-cpu"))
    first = policyflow("run-once", "--config", config)
    assert first.code == 0, first.err
    executions = by_cluster(testkube)
    assert sorted(executions) == ["default", "staging"]
    assert [len(e) for e in executions.values()] == [1, 1]
    assert executions["staging"][0]["tags"]["env"] == "staging"
    assert "env" not in executions["default"][0]["tags"]
    (here_record,), (there_record,) = records(kube, here), records(staging, there)
    assert here_record["key"] != there_record["key"]
    assert "@staging" in first.out
    again = policyflow("run-once", "--config", config)
    assert (again.code, again.out.strip()) == (0, "nothing new")
    assert len(testkube.executions) == 2
    scanned = policyflow("scan", "--config", config, "-o", "json")
    assert sorted(v["cluster"] for v in json.loads(scanned.out)["violations"]) == ["default", "staging"]


def test_a_cluster_that_is_down_is_reported_and_caught_up_exactly_once_when_back(
    policyflow: Policyflow, kube: KubeStandin, staging: KubeStandin, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    config = two_clusters(tmp_path, staging)
    load_report(kube, resource=deploy(kube, "web"))
    there = load_report(staging, resource=deploy(staging, "api"))
    staging.stop()
    down = policyflow("run-once", "--config", config)
    assert down.code == 3, down.err  # something could not finish: staging's part
    assert list(by_cluster(testkube)) == ["default"]  # the other cluster's cycle completed
    assert "cluster staging" in down.out and "cluster staging" in down.err
    staging.start()
    back = policyflow("run-once", "--config", config)
    assert back.code == 0, back.err
    assert {k: len(v) for k, v in by_cluster(testkube).items()} == {"default": 1, "staging": 1}
    assert records(staging, there)[0]["status"] == "passed"
    assert policyflow("run-once", "--config", config).out.strip() == "nothing new"
    assert len(testkube.executions) == 2


def test_a_cluster_still_down_is_tried_once_a_cycle_and_caught_up_when_it_answers(
    env: dict[str, str], kube: KubeStandin, staging: KubeStandin, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    """A cluster found down (after every try of the retry policy) is tried once at each cycle after,
    so it holds no cycle's end for long; each cycle here has dependencies of its own, as each served
    poll runs in a process of its own: the memory is the Prefect API's."""
    from prefect.variables import Variable

    from flows.poll import poll_cycle
    from policyflow import bootstrap
    from policyflow import settings as settings_module
    from tasks.observe import CLUSTERS_DOWN

    config = two_clusters(tmp_path, staging)
    Variable.set(CLUSTERS_DOWN, [], overwrite=True)  # the session's API: whatever an earlier test left

    def cycle() -> tuple[int, int]:
        """One cycle as a new process runs it: its down-cluster count, and the GETs staging received."""
        deps = bootstrap.build(*settings_module.load({"config": config}))
        bootstrap.install(deps)  # what its flow runs use
        staging.clear_requests()
        try:
            summary = asyncio.run(poll_cycle(deps))
        finally:
            bootstrap.install(None)
            deps.close()
        return summary.counters["clusters_down"], sum(1 for r in staging.requests if r.method == "GET")

    there = load_report(staging, resource=deploy(staging, "api"))
    staging.inject(method="*", path="", status=503, times=1_000_000)
    retries = settings_module.load({"config": config})[0].retry_policy().retries
    assert [cycle(), cycle()] == [(1, retries + 1), (1, 1)]
    assert Variable.get(CLUSTERS_DOWN) == ["staging"]
    staging.clear_faults()
    assert cycle()[0] == 0
    assert records(staging, there)[0]["status"] == "passed"
    assert {k: len(v) for k, v in by_cluster(testkube).items()} == {"staging": 1}
    assert Variable.get(CLUSTERS_DOWN) == []


def test_records_of_the_single_cluster_version_stay_valid_after_adding_a_cluster(
    policyflow: Policyflow, kube: KubeStandin, staging: KubeStandin, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    report = load_report(kube, resource=deploy(kube, "nginx-no-cpu"))
    before = policyflow("run-once")  # no clusters: configured the old way
    assert before.code == 0, before.err
    (record,) = records(kube, report)
    after = policyflow("run-once", "--config", two_clusters(tmp_path, staging))
    assert (after.code, after.out.strip()) == (0, "nothing new")
    assert len(testkube.executions) == 1
    assert records(kube, report) == [record]


@pytest.mark.parametrize(("clusters", "expected"), [
    ("[{name: prod}, {name: prod}]", "cluster 'prod' is named twice"),
    ("[{name: Prod_1}]", "clusters.0.name: 'Prod_1' is not a cluster name"),
])
def test_a_bad_cluster_configuration_is_one_line_and_exit_2(
    policyflow: Policyflow, tmp_path: Path, clusters: str, expected: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"clusters: {clusters}\n")
    result = policyflow("run-once", "--config", str(config))
    assert result.code == 2
    assert expected in result.err and len(result.err.strip().splitlines()) == 1


def test_drift_shows_a_fix_never_promoted_as_a_table_and_json(
    policyflow: Policyflow, kube: KubeStandin, staging: KubeStandin, tmp_path: Path
) -> None:
    config = two_clusters(tmp_path, staging)
    load_report(kube, resource=deploy(kube, "nginx-no-cpu"))  # failing in default, fixed in staging
    deploy(staging, "nginx-no-cpu")
    table = policyflow("drift", "--config", config)
    assert table.code == 0, table.err
    assert "nginx-no-cpu" in table.out and "default" in table.out and "staging" in table.out
    data = json.loads(policyflow("drift", "--config", config, "-o", "json").out)
    (row,) = data["drift"]
    assert (row["name"], row["failing"], row["not_failing"]) == ("nginx-no-cpu", ["default"], ["staging"])
