"""``policyflow demo``: the whole loop on a machine with nothing else installed.

The Kubernetes API and Testkube are the loopback stand-ins from :mod:`policyflow.standins`, loaded
with the CRDs and the seed's failing PolicyReport shipped in ``policyflow/data``. Prefect is real: the
flows run on a local Prefect API (a temporary one unless ``PREFECT_API_URL`` points at a server).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin

BANNER = """\
================================================================================
 policyflow DEMO MODE: the Kubernetes API and Testkube below are local stand-ins
 (loopback HTTP servers that behave like the real ones), not a real cluster.
 Prefect is real. Against a real cluster use `policyflow run-once` with a kubeconfig.
================================================================================"""


def _data(*parts: str) -> Path:
    return Path(str(resources.files("policyflow").joinpath("data", *parts)))


def _example(name: str) -> dict[str, Any]:
    data = yaml.safe_load(_data("examples", name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def run_demo(run_cli: Callable[[Sequence[str]], int], *, cycles: int = 2) -> int:
    """Start the stand-ins, load the seed's scenario, run ``cycles`` detection cycles; the last exit status."""
    print(BANNER)
    workdir = Path(tempfile.mkdtemp(prefix="policyflow-demo-"))
    crds = sorted(_data("crds").glob("*.yaml"))
    with KubeStandin(crds) as kube, TestkubeStandin(workflows=["smoke-nova"], running_polls=2) as testkube:
        failing = kube.create(deployment("nginx-no-cpu", cpu="100m"))
        report = kube.create(report_for(_example("policyreport-fail.yaml"), failing))
        passing = kube.create(deployment("web-ok", cpu="250m"))
        kube.create(report_for(_example("policyreport-pass.yaml"), passing))
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        os.environ.update({
            "POLICYFLOW_KUBECONFIG": str(kubeconfig),
            "POLICYFLOW_TESTKUBE_URL": testkube.url,
            "POLICYFLOW_POLL_INTERVAL": "0.5",
        })
        os.environ.setdefault("POLICYFLOW_DEFAULT_WORKFLOW", "smoke-nova")
        print(f"Kubernetes API stand-in: {kube.url}  (kubeconfig: {kubeconfig})")
        print(f"Testkube API stand-in:   {testkube.base_url}  (TestWorkflow: smoke-nova)")
        print(f"Loaded: Deployment default/nginx-no-cpu (cpu 100m) and its failing PolicyReport "
              f"{report['metadata']['name']};\n        Deployment default/web-ok (cpu 250m), passing.\n")
        code = 0
        for cycle in range(1, cycles + 1):
            print(f"--- cycle {cycle}: policyflow run-once")
            code = run_cli(["run-once"])
            print(f"(exit status {code})\n")
        now = kube.get("wgpolicyk8s.io/v1alpha2", "PolicyReport", report["metadata"]["name"], "default") or {}
        print("--- what policyflow recorded on the report (metadata.annotations):")
        for name, value in sorted((now.get("metadata") or {}).get("annotations", {}).items()):
            print(f"{name}:\n{json.dumps(json.loads(value), indent=2)}")
        print("\n--- Events on Deployment default/nginx-no-cpu (what `kubectl describe` shows):")
        for event in kube.objects("v1", "Event"):
            print(f"  {event['type']:8} {event['reason']:18} {event['message']}")
        print(f"\n--- Testkube executions: {len(testkube.executions)}")
        for execution in testkube.executions:
            print(f"  {execution['name']}  {execution['result']['status']}  tags={execution.get('tags')}")
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    return code
