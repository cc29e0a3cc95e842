"""End to end: two clusters, and the second one's API server stops while its chain is in flight.

The real CLI in-process (in a thread, so the test can act while it runs) against two Kubernetes API
stand-ins, the Testkube stand-in and the session's Prefect API. ``staging`` is stopped after its test
started and was awaited once, before its outcome can be recorded; it is started again on the same
port, with its store, and the run-once after that finishes the episode with the same execution.

The stopped run could neither give the episode back nor delete its liveness Lease in ``staging``:
the episode is its (busy) until that Lease expires, so the Leases here last 3 s, and the test waits
for the dead owner's Lease to expire before the run that resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policyflow.domain.owners import live_owners
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.e2e.test_clusters import by_cluster, staging, two_clusters  # noqa: F401 - staging is a fixture
from tests.helpers import Policyflow, deploy, load_report, records, wait_until
from tests.specs import TESTKUBE_OPENAPI

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

#: GETs of an execution that see it running: long enough for the test to stop ``staging`` while
#: both chains still await their test (the tests use 0.05-0.2 s between polls).
RUNNING_POLLS = 15


@pytest.fixture
def testkube() -> Iterator[TestkubeStandin]:
    """The Testkube stand-in of conftest, with tests that run for a while."""
    with TestkubeStandin(openapi_spec=TESTKUBE_OPENAPI, workflows=["smoke-nova"],
                         running_polls=RUNNING_POLLS) as server:
        yield server


def awaited(testkube: TestkubeStandin, cluster: str) -> str | None:
    """The id of ``cluster``'s execution once policyflow has polled it (its record holds it by then)."""
    for execution in by_cluster(testkube).get(cluster, []):
        path = f"/test-workflow-executions/{execution['id']}"
        if any(r.method == "GET" and r.path.endswith(path) for r in testkube.requests):
            return str(execution["id"])
    return None


def test_a_cluster_stopped_while_its_chain_is_in_flight_is_finished_with_the_same_execution_when_back(
    policyflow: Policyflow, kube: KubeStandin, staging: KubeStandin,  # noqa: F811 - the fixture
    testkube: TestkubeStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLICYFLOW_LEASE_DURATION", "3")
    config = two_clusters(tmp_path, staging)
    here = load_report(kube, resource=deploy(kube, "web"))
    there = load_report(staging, resource=deploy(staging, "api"))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(policyflow, "run-once", "--config", config)
        execution = wait_until("staging's test started and awaited", lambda: awaited(testkube, "staging"))
        staging.stop()
        cut = running.result(timeout=120)
    assert cut.code == 3, cut.err  # staging's chain could not finish: unfinished, not an error
    (here_record,) = records(kube, here)
    assert here_record["status"] == "passed"  # the default cluster's chain finished and was recorded
    assert "cluster staging" in cut.out or "@staging" in cut.out
    assert "error" not in [o.split()[0] for o in cut.out.splitlines() if o.strip()]

    staging.start()
    (left,) = records(staging, there)
    assert left["status"] not in ("passed", "failed", "error")  # in flight, as the stop left it
    assert left["execution"] == execution
    wait_until("the stopped run's Lease in staging to expire", lambda: left["owner"] not in live_owners(
        staging.objects("coordination.k8s.io/v1", "Lease"), datetime.now(UTC)))
    back = policyflow("run-once", "--config", config)
    assert back.code == 0, back.err
    assert [e["id"] for e in by_cluster(testkube)["staging"]] == [execution]  # resumed, not run again
    (there_record,) = records(staging, there)
    assert (there_record["status"], there_record["execution"]) == ("passed", execution)
    assert records(kube, here) == [here_record]
    assert policyflow("run-once", "--config", config).out.strip() == "nothing new"
    assert {k: len(v) for k, v in by_cluster(testkube).items()} == {"default": 1, "staging": 1}
