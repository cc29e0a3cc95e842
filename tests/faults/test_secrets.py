"""The Testkube token never leaves the Authorization header: not in logs (at DEBUG), flow-run
parameters, task inputs, artifacts, events, records on the report, Events, or execution tags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.specs import ROOT, example

pytestmark = [pytest.mark.usefixtures("prefect_api")]

CANARY = "tkcapi_CANARY_3f9a7c0d5e1b"


def test_the_token_appears_nowhere_but_in_the_authorization_header(
    kube: KubeStandin, kubeconfig: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    api = str(PREFECT_API_URL.value())
    for i in range(2):
        kube.create(report_for(example("policyreport-fail.yaml"), kube.create(deployment(f"app-{i}"))))
    with TestkubeStandin(workflows=["smoke-nova"], token=CANARY) as testkube:
        # One transient failure too, so error paths and retries are logged as well.
        testkube.inject(method="POST", path=r"/executions$", status=503, times=1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYFLOW_")}
        env.update({
            "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "DEBUG",
            "POLICYFLOW_KUBECONFIG": str(kubeconfig), "POLICYFLOW_TESTKUBE_URL": testkube.url,
            "POLICYFLOW_TESTKUBE_TOKEN": CANARY, "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
            "POLICYFLOW_POLL_INTERVAL": "0.05", "POLICYFLOW_RETRY_DELAY": "0.05",
        })
        done = subprocess.run([sys.executable, "-m", "policyflow.cli", "run-once", "--log-level", "DEBUG"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        output = done.stdout + done.stderr
        assert "DEBUG" in output, "the run logged at DEBUG"
        assert CANARY not in output

        sent = [r for r in testkube.requests if r.headers.get("authorization") == f"Bearer {CANARY}"]
        assert len(sent) == len(testkube.requests) > 0, "every Testkube request carries the token"
        assert CANARY not in json.dumps(testkube.executions)

    everything_stored = json.dumps([kube.objects("wgpolicyk8s.io/v1alpha2", "PolicyReport"),
                                    kube.objects("v1", "Event")])
    assert "policyflow.io/" in everything_stored and CANARY not in everything_stored

    client = httpx.Client(base_url=api, timeout=30)
    searched = {
        "flow runs (parameters)": client.post("/flow_runs/filter",
                                              json={"limit": 200, "sort": "START_TIME_DESC"}).json(),
        "task runs (inputs)": client.post("/task_runs/filter",
                                          json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"}).json(),
        "logs": client.post("/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"}).json(),
        "artifacts": client.post("/artifacts/filter", json={"limit": 200, "sort": "CREATED_DESC"}).json(),
        "events": client.post("/events/filter", json={"limit": 200}).json(),
        "deployments": client.post("/deployments/filter", json={"limit": 200}).json(),
        "variables": client.post("/variables/filter", json={"limit": 200}).json(),
    }
    assert searched["flow runs (parameters)"], "the run is in the Prefect API"
    assert any("policyflow" in json.dumps(r) for r in searched["logs"]), "policyflow's own logs reached the API"
    for where, found in searched.items():
        assert CANARY not in json.dumps(found), f"the token leaked into {where}"
