"""``policyflow demo``: the whole loop on a machine with nothing else installed.

The Kubernetes API and Testkube are the loopback stand-ins from :mod:`policyflow.standins`, loaded
with the CRDs shipped in ``policyflow/data`` (the report CRDs and Gatekeeper's K8sRequiredLabels), the
seed's failing PolicyReport, and a K8sRequiredLabels constraint whose audit found a Deployment without
a ``team`` label: one violation from each source. Prefect is real: the
flows run on a local Prefect API (a temporary one unless ``PREFECT_API_URL`` points at a server).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import CONSTRAINTS_API, audit_status, deployment, report_for, required_labels
from policyflow.standins.testkube import TestkubeStandin

BANNER = """\
================================================================================
 policyflow DEMO MODE: the Kubernetes API and Testkube below are local stand-ins
 (loopback HTTP servers that behave like the real ones), not a real cluster.
 Prefect is real. Against a real cluster use `policyflow run-once` with a kubeconfig.
================================================================================"""


def _data(*parts: str) -> Path:
    return Path(str(resources.files("policyflow").joinpath("data", *parts)))


def _pretty(value: str) -> str:
    """An annotation's value, indented when it is JSON (a record)."""
    try:
        return json.dumps(json.loads(value), indent=2)
    except ValueError:
        return value


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _example(name: str) -> dict[str, Any]:
    data = yaml.safe_load(_data("examples", name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


class Scenario:
    """The stand-ins, loaded with the seed's scenario, and the settings that point policyflow at them."""

    def __init__(self, workdir: Path) -> None:
        crds = [*sorted(_data("crds").glob("*.yaml")), _data("gatekeeper", "k8srequiredlabels-crd.yaml")]
        self.kube = KubeStandin(crds)
        self.testkube = TestkubeStandin(workflows=["smoke-nova"], running_polls=2)
        self.workdir = workdir

    def __enter__(self) -> Scenario:
        self.kube.start()
        self.testkube.start()
        failing = self.kube.create(deployment("nginx-no-cpu", cpu="100m"))
        self.report = self.kube.create(report_for(_example("policyreport-fail.yaml"), failing))
        passing = self.kube.create(deployment("web-ok", cpu="250m", labels={"team": "web"}))
        self.kube.create(report_for(_example("policyreport-pass.yaml"), passing))
        # Gatekeeper's audit found nginx-no-cpu without a team label (web-ok has one).
        constraint = required_labels("deployments-must-have-team", ["team"], namespaces=["default"])
        constraint["status"] = audit_status([(failing, 'you must provide labels: {"team"}')],
                                            timestamp=_now_rfc3339())
        self.constraint = self.kube.create(constraint)
        kubeconfig = self.kube.write_kubeconfig(self.workdir / "kubeconfig")
        #: policyflow's settings for this scenario (a user's POLICYFLOW_DEFAULT_WORKFLOW wins).
        self.settings: dict[str, str] = {
            "kubeconfig": str(kubeconfig),
            "testkube_url": self.testkube.url,
            "poll_interval": "0.5",
            "default_workflow": os.environ.get("POLICYFLOW_DEFAULT_WORKFLOW") or "smoke-nova",
        }
        print(f"Kubernetes API stand-in: {self.kube.url}  (kubeconfig: {kubeconfig})")
        print(f"Testkube API stand-in:   {self.testkube.base_url}  (TestWorkflow: smoke-nova)")
        print(f"Loaded: Deployment default/nginx-no-cpu (cpu 100m, no team label), its failing PolicyReport "
              f"{self.report['metadata']['name']}\n        and the Gatekeeper constraint K8sRequiredLabels "
              "deployments-must-have-team, audited;\n        Deployment default/web-ok (cpu 250m, team web), "
              "passing both.\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.testkube.stop()
        self.kube.stop()


def serve_demo(serve_cli: Callable[[Sequence[str]], int], *, home: Path, port: int | None, interval: float) -> int:
    """The whole loop in the Prefect UI: a local Prefect server, the stand-ins, the served deployments.

    Ctrl-C or SIGTERM stops them in reverse order: the served runner first (on its way out it still
    talks to the Prefect API: it pauses its deployments, records cancelled runs), then the stand-ins,
    and the Prefect server last. SIGTERM before the runner is up (which handles it itself) unwinds
    like Ctrl-C, so the server is stopped whenever it was started.
    """
    from policyflow.localserver import LocalPrefectServer

    print(BANNER)
    workdir = Path(tempfile.mkdtemp(prefix="policyflow-demo-"))
    server = LocalPrefectServer(home, port=port)
    with contextlib.ExitStack() as stack:  # exits in reverse: runner, stand-ins, server, handler, workdir
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack.enter_context(_sigterm_interrupts())
        stack.callback(_uninterrupted, server.stop)  # registered first: also if Ctrl-C comes while it starts
        print(f"Starting a local Prefect server (SQLite in {home}) ...")
        server.start()
        scenario = stack.enter_context(Scenario(workdir))
        # Served runs are processes of their own: the environment is how their settings reach them.
        os.environ.update({f"POLICYFLOW_{name.upper()}": value for name, value in scenario.settings.items()})
        os.environ["PREFECT_API_URL"] = server.api_url
        print(f"\nPrefect UI: {server.url}\n")
        print(f"  Runs:      {server.url}/runs  (policy-watch polls every {interval:.0f} s;"
              " the violation's run")
        print("             is named require-resources/require-resources-in-deployment "
              "default/Deployment/nginx-no-cpu)")
        print(f"  Artifacts: {server.url}/artifacts")
        print("  By hand:   Deployments > handle-violation > Run, with the violation's report_name, report_namespace,")
        print("             policy and rule;")
        print("             any violation run > Retry (the chain resumes; Testkube never runs twice for one episode)")
        print("\nCtrl-C stops everything.\n")
        sys.stdout.flush()
        return serve_cli(["serve", "--interval", str(interval), "--metrics-port", "0"])


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (by default it ends the process on the spot)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _uninterrupted(stop: Callable[[], None]) -> None:
    """``stop()`` with SIGINT and SIGTERM ignored: a second Ctrl-C must not leave the server running."""
    print("Stopping the local Prefect server ...", flush=True)
    if threading.current_thread() is not threading.main_thread():
        stop()
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(run_cycle: Callable[[dict[str, Any]], int], *, cycles: int = 2) -> int:
    """Start the stand-ins, load the seed's scenario, run ``cycles`` detection cycles (``run_cycle``
    with the scenario's settings: ``policyflow run-once``); the last exit status."""
    print(BANNER)
    workdir = Path(tempfile.mkdtemp(prefix="policyflow-demo-"))
    with Scenario(workdir) as scenario:
        kube, testkube, report = scenario.kube, scenario.testkube, scenario.report
        code = 0
        for cycle in range(1, cycles + 1):
            print(f"--- cycle {cycle}: policyflow run-once")
            code = run_cycle(scenario.settings)
            print(f"(exit status {code})\n")
        now = kube.get("wgpolicyk8s.io/v1alpha2", "PolicyReport", report["metadata"]["name"], "default") or {}
        constraint = kube.get(CONSTRAINTS_API, "K8sRequiredLabels", "deployments-must-have-team") or {}
        for where, obj in (("the report", now), ("the Gatekeeper constraint", constraint)):
            print(f"--- what policyflow recorded on {where} (metadata.annotations):")
            for name, value in sorted((obj.get("metadata") or {}).get("annotations", {}).items()):
                if name.startswith("policyflow.io/"):
                    print(f"{name}:\n{_pretty(value)}")
        print("\n--- Events on Deployment default/nginx-no-cpu (what `kubectl describe` shows):")
        for event in kube.objects("v1", "Event"):
            print(f"  {event['type']:8} {event['reason']:18} {event['message']}")
        print(f"\n--- Testkube executions: {len(testkube.executions)}")
        for execution in testkube.executions:
            print(f"  {execution['name']}  {execution['result']['status']}  tags={execution.get('tags')}")
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    return code
