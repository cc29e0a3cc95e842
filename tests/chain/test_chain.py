"""The one chain, run directly (no Prefect): every path between the steps, against the stand-ins.

Each test reads its outcome from what the chain returns, the records on the report, the Testkube
executions and what the observer heard; none waits on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from policyflow.chain.run import DirectSteps, run_chain
from policyflow.domain.decisions import RunMode, route_digest
from policyflow.domain.journal import Identity
from policyflow.domain.outcome import ChainOutcome
from policyflow.domain.owners import lease_name
from policyflow.domain.ref import ViolationRef
from policyflow.domain.routing import RoutedTest
from policyflow.domain.status import Outcome, Status
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.chain.conftest import Heard, Later, Make
from tests.helpers import records

POLICY, RULE = "require-resources", "require-resources-in-deployment"


def ref_of(report: dict[str, Any]) -> ViolationRef:
    return ViolationRef(report_name=report["metadata"]["name"], report_namespace="default", policy=POLICY, rule=RULE)


def chain(make: Make, ref: ViolationRef, mode: RunMode | None = None, **settings: Any) -> ChainOutcome:
    deps = make(**settings)
    return asyncio.run(run_chain(ref, deps, DirectSteps(deps), mode))


def test_a_new_failure_runs_one_test_and_records_its_outcome(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any], heard: Heard
) -> None:
    outcome = chain(make_deps, ref_of(failing))
    assert outcome.status is Outcome.PASSED
    assert outcome.violation == f"{POLICY}/{RULE} default/Deployment/nginx-no-cpu"
    (execution,) = testkube.executions
    assert outcome.execution == execution["name"]
    (record,) = records(kube, failing)
    assert (record["status"], record["execution"], record.get("owner")) == ("passed", execution["id"], None)
    assert record["route"] == route_digest(RoutedTest("default", "smoke-nova", {}, {}))
    assert heard.said == [("started", "queued"), ("finished", "passed")]
    assert heard.clusters == ["default", "default"]

    again = chain(make_deps, ref_of(failing))
    assert (again.status, again.detail) == (Outcome.PASSED, "handled (passed)")
    assert len(testkube.executions) == 1


def test_until_started_leaves_the_test_running_and_the_full_chain_resumes_it(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    deps = make_deps()
    first = asyncio.run(run_chain(ref_of(failing), deps, DirectSteps(deps), until_started=True))
    assert first.status in (Outcome.QUEUED, Outcome.RUNNING)
    assert records(kube, failing)[0]["owner"] == deps.owner
    # The same process's run (watch mode's hand-over) carries on with the episode it started.
    final = asyncio.run(run_chain(ref_of(failing), deps, DirectSteps(deps)))
    assert final.status is Outcome.PASSED
    assert len(testkube.executions) == 1


def test_another_live_owner_makes_it_busy_and_nothing_starts(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    other = make_deps()
    asyncio.run(run_chain(ref_of(failing), other, DirectSteps(other), until_started=True))
    outcome = chain(make_deps, ref_of(failing))
    assert outcome.status is Outcome.BUSY
    assert len(testkube.executions) == 1


def test_a_process_that_stopped_cleanly_leaves_its_chains_free_at_once(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    testkube.set_outcome("smoke-nova", "never")
    first = make_deps()
    asyncio.run(run_chain(ref_of(failing), first, DirectSteps(first), until_started=True))
    assert kube.get("coordination.k8s.io/v1", "Lease", lease_name(first.owner), "default") is not None
    first.close()  # its Lease is deleted: no waiting out anything
    assert kube.get("coordination.k8s.io/v1", "Lease", lease_name(first.owner), "default") is None
    testkube.set_outcome("smoke-nova", "passed")
    assert chain(make_deps, ref_of(failing)).status is Outcome.PASSED
    assert len(testkube.executions) == 1


def test_a_report_deleted_between_fetch_and_claim_is_resolved_and_starts_no_test(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    """Kyverno deletes the report after fetch-violation read it (the demo's flappy, fixed meanwhile):
    the claim's merge-patch answers 404. Seen in the demo as a failed run recording nothing."""
    kube.inject(method="PATCH", path=f"/policyreports/{failing['metadata']['name']}$", status=404)
    outcome = chain(make_deps, ref_of(failing))
    assert (outcome.status, outcome.detail) == (Outcome.RESOLVED, f"PolicyReport default/{failing['metadata']['name']} "
                                                "was deleted before its test started")
    assert testkube.executions == []


def test_a_cluster_that_never_answers_is_asked_nothing_by_a_chain_elsewhere_nor_by_the_processs_end(
    make_deps: Make, kube: KubeStandin, failing: dict[str, Any], tmp_path: Path
) -> None:
    """A process builds every configured cluster's dependencies (each served run does); its liveness
    Lease in a cluster is taken by its first chain there. A cluster that accepts connections and never
    answers held each such run's start and end by the request timeout (30 s), whatever its violation."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        hole.setblocking(False)
        silent = tmp_path / "hole.kubeconfig"
        silent.write_text(kube.write_kubeconfig(tmp_path / "kubeconfig").read_text().replace(
            kube.url, f"http://127.0.0.1:{hole.getsockname()[1]}"))
        config = tmp_path / "clusters.yaml"
        config.write_text(f"clusters:\n  - name: default\n  - name: hole\n    kubeconfig: {silent}\n")
        deps = make_deps(config=str(config))
        outcome = asyncio.run(run_chain(ref_of(failing), deps, DirectSteps(deps)))
        assert outcome.status is Outcome.PASSED
        assert kube.get("coordination.k8s.io/v1", "Lease", lease_name(deps.owner), "default") is not None
        deps.close()
        with pytest.raises(BlockingIOError):
            hole.accept()  # nobody ever connected


def test_a_crashed_processs_chains_are_busy_while_its_lease_lasts_then_resumed(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    testkube.set_outcome("smoke-nova", "never")
    crashed = make_deps()  # never closed: its Lease stays until it expires
    asyncio.run(run_chain(ref_of(failing), crashed, DirectSteps(crashed), until_started=True))
    testkube.set_outcome("smoke-nova", "passed")
    assert chain(make_deps, ref_of(failing)).status is Outcome.BUSY
    # Read when the Lease (lease_duration, 30 s) has run out: the episode is free, and resumed.
    resumed = chain(make_deps, ref_of(failing), clock=Later(31))
    assert resumed.status is Outcome.PASSED
    assert len(testkube.executions) == 1


def test_an_unknown_workflow_is_the_violations_own_error_and_runs_again_when_its_route_changes(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    outcome = chain(make_deps, ref_of(failing), default_workflow="no-such-workflow")
    assert (outcome.status, outcome.halt) == (Outcome.ERROR, False)
    (record,) = records(kube, failing)
    assert record["status"] == "error" and "no-such-workflow" in record["error"]
    # Same route: handled, nothing tried.
    assert chain(make_deps, ref_of(failing), default_workflow="no-such-workflow").status is Outcome.ERROR
    assert len([r for r in testkube.requests if r.method == "POST"]) == 1
    # The route now runs a workflow that exists: the violation is tried again, same episode.
    fixed = chain(make_deps, ref_of(failing))
    assert fixed.status is Outcome.PASSED
    (record,) = records(kube, failing)
    assert (record["status"], record["episode"]) == ("passed", 1)


def test_a_refused_token_records_nothing_halts_and_gives_the_claim_back(
    make_deps: Make, kube: KubeStandin, failing: dict[str, Any]
) -> None:
    with TestkubeStandin(workflows=["smoke-nova"], token="right") as guarded:
        outcome = chain(make_deps, ref_of(failing), testkube_url=guarded.url, testkube_token="wrong")
        assert (outcome.status, outcome.halt) == (Outcome.REFUSED, True)
        assert "POLICYFLOW_TESTKUBE_TOKEN" in outcome.detail
        records_now = records(kube, failing)
        assert all(r["status"] != "error" and r.get("owner") is None for r in records_now), records_now
        fixed = chain(make_deps, ref_of(failing), testkube_url=guarded.url, testkube_token="right")
        assert fixed.status is Outcome.PASSED
        assert len(guarded.executions) == 1


def test_testkube_silent_while_awaiting_fails_the_step_and_a_retry_waits_on_the_same_execution(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    # More 503s than the first wait sees; the retry waits through the rest (await_unreachable: 300 s).
    testkube.inject(method="GET", path=r"/test-workflow-executions/[^/]+$", status=503, times=30)
    outcome = chain(make_deps, ref_of(failing), await_unreachable=0.2, retries=0)
    assert (outcome.status, outcome.halt) == (Outcome.UNFINISHED, True)
    assert "Retry waits on the same execution" in outcome.detail
    (record,) = records(kube, failing)
    assert record["status"] in ("queued", "running") and record.get("owner") is None and record["execution"]
    retried = chain(make_deps, ref_of(failing), RunMode(retry=True))
    assert retried.status is Outcome.PASSED
    assert len(testkube.executions) == 1


def test_a_failure_gone_with_its_test_finished_is_recorded_resolved(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    assert chain(make_deps, ref_of(failing)).status is Outcome.PASSED
    report = kube.get(failing["apiVersion"], failing["kind"], failing["metadata"]["name"], "default")
    assert report is not None
    report["results"] = [dict(r, result="pass") for r in report["results"]]
    kube.replace(report)
    outcome = chain(make_deps, ref_of(failing))
    assert outcome.status is Outcome.RESOLVED
    assert records(kube, failing)[0]["status"] == "resolved"


def test_a_deleted_report_is_gone_and_nothing_is_written(make_deps: Make, testkube: TestkubeStandin) -> None:
    ref = ViolationRef(report_name="no-such-report", report_namespace="default", policy=POLICY, rule=RULE)
    outcome = chain(make_deps, ref)
    assert (outcome.status, outcome.detail) == (Outcome.RESOLVED, "the report was deleted")
    assert testkube.requests == []


def test_force_new_episode_runs_a_second_test_for_a_finished_one(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, failing: dict[str, Any]
) -> None:
    assert chain(make_deps, ref_of(failing)).status is Outcome.PASSED
    assert chain(make_deps, ref_of(failing), RunMode(force_new_episode=True)).status is Outcome.PASSED
    episodes = sorted(e["tags"]["policyflow-episode"] for e in testkube.executions)
    assert [e.rsplit(".", 1)[1] for e in episodes] == ["1", "2"]
    assert json.loads(json.dumps(records(kube, failing)))[0]["episode"] == 2


def test_the_journal_keeps_the_episode_opened_and_its_outcome(make_deps: Make, failing: dict[str, Any]) -> None:
    deps = make_deps()
    outcome = asyncio.run(run_chain(ref_of(failing), deps, DirectSteps(deps)))
    lifecycle = deps.journal.read().lifecycles[outcome.key]
    assert lifecycle.identity == Identity(POLICY, RULE, "default", "default/Deployment/nginx-no-cpu", "smoke-nova")
    (episode,) = lifecycle.episodes
    assert episode.outcome is Status.PASSED and episode.resolved is None
    assert episode.opened is not None and episode.tested is not None and episode.opened <= episode.tested
    # The episode's own retry writes the same facts again: still one episode.
    asyncio.run(run_chain(ref_of(failing), deps, DirectSteps(deps), RunMode(retry=True)))
    assert len(deps.journal.read().lifecycles[outcome.key].episodes) == 1


def test_a_journal_that_cannot_be_written_never_fails_the_chain(
    make_deps: Make, kube: KubeStandin, failing: dict[str, Any]
) -> None:
    deps = make_deps(journal_namespace="no-such-namespace")
    outcome = chain(make_deps, ref_of(failing), journal_namespace="no-such-namespace")
    assert outcome.status is Outcome.PASSED
    assert deps.journal.read().lifecycles == {}
