"""End to end: what a cycle with several clusters reports about them. The real CLI in-process
against two Kubernetes API stand-ins (the second stopped), the Testkube stand-in and the session's
Prefect API, whose ``policy-watch-cycle`` artifact is read back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, deploy, load_report
from tests.specs import REPORT_CRDS

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

#: A name no other test gives a cluster: the artifact's key is shared by every cycle of the session.
OTHER = "report-staging"


def cycle_descriptions() -> list[str]:
    """The description of every version of the ``policy-watch-cycle`` artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["policy-watch-cycle"])))

    return [str(a.description) for a in asyncio.run(read())]


def test_the_cycle_artifact_says_which_clusters_were_up_and_why_one_was_down(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    with KubeStandin(REPORT_CRDS) as other:
        config = tmp_path / "clusters.yaml"
        config.write_text(f"""
clusters:
  - name: default
  - name: {OTHER}
    kubeconfig: {other.write_kubeconfig(tmp_path / "other.kubeconfig")}
""")
    load_report(kube, resource=deploy(kube, "web"))
    down = policyflow("run-once", "--config", str(config))
    assert down.code == 3, down.err
    (description,) = [d for d in cycle_descriptions() if f"{OTHER} DOWN" in d]
    assert description.startswith(f"One detection cycle: clusters: default up, {OTHER} DOWN (")
    assert "unreachable" in description and "clusters_down=1" in description
    assert len(testkube.executions) == 1


def test_history_reads_each_runs_record_from_its_own_cluster(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    with KubeStandin(REPORT_CRDS) as other:
        config = tmp_path / "clusters.yaml"
        config.write_text(f"""
clusters:
  - name: default
  - name: {OTHER}
    kubeconfig: {other.write_kubeconfig(tmp_path / "other.kubeconfig")}
""")
        load_report(kube, resource=deploy(kube, "history-both"))
        load_report(other, resource=deploy(other, "history-both"))
        assert policyflow("run-once", "--config", str(config)).code == 0
        executions = {e["tags"]["policyflow-cluster"]: e["name"] for e in testkube.executions}
        assert sorted(executions) == ["default", OTHER]
        result = policyflow("history", "--config", str(config))
        assert result.code == 0, result.err
        header, *rows = result.out.splitlines()
        assert header.split()[:2] == ["violation", "cluster"]
        for cluster, execution in executions.items():
            (row,) = [r for r in rows if "history-both" in r and execution in r]
            assert f" {cluster} " in row and "passed" in row, row
        other.stop()
        partial = policyflow("history", "--config", str(config))
    assert partial.code == 3
    assert f"cluster {OTHER}: down" in partial.err
    (row,) = [r for r in partial.out.splitlines() if executions["default"] in r]
    assert "passed" in row
