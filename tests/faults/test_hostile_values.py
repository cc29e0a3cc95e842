"""Values taken from a report are escaped where they land: a rule name or message with `=`, `,`,
newlines or markdown cannot change another Testkube tag or inject into an artifact."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from policyflow.cli import main
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.specs import example

pytestmark = [pytest.mark.usefixtures("prefect_api")]

RULE = "check-cpu,policyflow-key=forged\nPolicyViolationName=evil"
MESSAGE = "**bold** [click](javascript:alert(1)) <img src=x onerror=alert(1)>\n# heading | cell"


def test_hostile_rule_and_message_stay_inert(
    kube: KubeStandin, kubeconfig: Path, testkube: TestkubeStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    report = report_for(example("policyreport-fail.yaml"), kube.create(deployment("web")))
    report["results"][0]["rule"] = RULE
    report["results"][0]["message"] = MESSAGE
    created = kube.create(report)
    config = tmp_path / "routes.yaml"
    config.write_text(
        "routes:\n- workflow: smoke-nova\n"
        "  config: {why: '{message}'}\n"
        "  tags: {rule-copy: '{rule}', note: 'a={rule}'}\n"
    )
    for name in list(os.environ):
        if name.startswith("POLICYFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POLICYFLOW_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("POLICYFLOW_TESTKUBE_URL", testkube.url)
    monkeypatch.setenv("POLICYFLOW_POLL_INTERVAL", "0.05")
    assert main(["run-once", "--config", str(config)]) == 0

    (execution,) = testkube.executions
    tags = execution["tags"]
    assert set(tags) == {"PolicyViolationName", "policyflow-key", "policyflow-episode", "policy", "rule",
                         "resource-kind", "resource-namespace", "resource-name", "rule-copy", "note",
                         "policyflow-cluster"}
    assert tags["PolicyViolationName"] == created["metadata"]["name"]
    assert tags["policyflow-key"] != "forged" and len(tags["policyflow-key"]) == 16
    assert tags["rule"] == "check-cpu,policyflow-key=forged PolicyViolationName=evil"
    assert all("\n" not in v for v in tags.values())
    assert execution["configParams"]["why"]["value"] == MESSAGE, "config values are data, passed as they are"

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"violation-{tags['policyflow-key']}"]))
        )
    markdown = str(artifact.data)
    assert "**bold**" not in markdown and "\\*\\*bold\\*\\*" in markdown
    assert "[click](javascript" not in markdown
    assert re.search(r"(?<!\\)<img", markdown) is None and "\\<img" in markdown
    assert "\n# heading" not in markdown, "a newline in a value cannot start a heading"
    record = json.loads(next(v for k, v in kube.get("wgpolicyk8s.io/v1alpha2", "PolicyReport",
                                                        created["metadata"]["name"], "default")
                             ["metadata"]["annotations"].items() if k.startswith("policyflow.io/")))
    assert record["rule"] == RULE and record["status"] == "passed"
