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
from policyflow.standins.testkube.scripts import smoke_script

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


#: The demo's routes: the shop namespace's violations run a smoke test that fails (its app is down).
ROUTES = """\
routes:
  - name: shop
    match: {namespaces: [shop]}
    workflow: smoke-shop
"""


class Scenario:
    """The stand-ins, loaded with the seed's scenario, and the settings that point policyflow at them.

    Three failing Deployments: ``default/nginx-no-cpu`` (its smoke test passes), ``shop/checkout``
    (its smoke test fails: curl cannot reach the app; the log also leaks a token, which policyflow
    redacts), and ``default/flappy``, whose report :meth:`flap` deletes and re-creates as Kyverno does
    when a violation is fixed and comes back (resolved, then reopened: the health table counts it).
    """

    def __init__(self, workdir: Path) -> None:
        crds = [*sorted(_data("crds").glob("*.yaml")), _data("gatekeeper", "k8srequiredlabels-crd.yaml")]
        self.kube = KubeStandin(crds)
        self.testkube = TestkubeStandin(workflows=["smoke-nova", "smoke-shop"], running_polls=2)
        self.testkube.set_outcome("smoke-shop", "failed")
        self.testkube.set_script("smoke-shop", smoke_script(leak_credential=True))
        self.workdir = workdir
        self._flappy: dict[str, Any] | None = None
        self._flappy_report: dict[str, Any] | None = None

    def __enter__(self) -> Scenario:
        self.kube.start()
        self.testkube.start()
        failing = self.kube.create(deployment("nginx-no-cpu", cpu="100m"))
        self.report = self.kube.create(report_for(_example("policyreport-fail.yaml"), failing))
        passing = self.kube.create(deployment("web-ok", cpu="250m", labels={"team": "web"}))
        self.kube.create(report_for(_example("policyreport-pass.yaml"), passing))
        self.kube.ensure_namespace("shop")
        checkout = self.kube.create(deployment("checkout", "shop", cpu="50m"))
        self.kube.create(report_for(_example("policyreport-fail.yaml"), checkout))
        self._flappy = self.kube.create(deployment("flappy", cpu="150m"))
        self.flap()
        # Gatekeeper's audit found nginx-no-cpu without a team label (web-ok has one).
        constraint = required_labels("deployments-must-have-team", ["team"], namespaces=["default"])
        constraint["status"] = audit_status([(failing, 'you must provide labels: {"team"}')],
                                            timestamp=_now_rfc3339())
        self.constraint = self.kube.create(constraint)
        kubeconfig = self.kube.write_kubeconfig(self.workdir / "kubeconfig")
        config = self.workdir / "routes.yaml"
        config.write_text(ROUTES, encoding="utf-8")
        #: policyflow's settings for this scenario (a user's POLICYFLOW_DEFAULT_WORKFLOW wins).
        self.settings: dict[str, str] = {
            "kubeconfig": str(kubeconfig),
            "config": str(config),
            "testkube_url": self.testkube.url,
            "poll_interval": "0.5",
            "default_workflow": os.environ.get("POLICYFLOW_DEFAULT_WORKFLOW") or "smoke-nova",
        }
        print(f"Kubernetes API stand-in: {self.kube.url}  (kubeconfig: {kubeconfig})")
        print(f"Testkube API stand-in:   {self.testkube.base_url}  (TestWorkflows: smoke-nova, smoke-shop)")
        print(f"Loaded: Deployment default/nginx-no-cpu (cpu 100m, no team label), its failing PolicyReport "
              f"{self.report['metadata']['name']} (smoke-nova passes)\n"
              "        and the Gatekeeper constraint K8sRequiredLabels deployments-must-have-team, audited;\n"
              "        Deployment shop/checkout (cpu 50m), failing (smoke-shop fails: its app is down);\n"
              "        Deployment default/flappy (cpu 150m), failing, fixed and broken again every few polls;\n"
              "        Deployment default/web-ok (cpu 250m, team web), passing both.\n")
        return self

    def flap(self) -> str:
        """Kyverno's view of ``default/flappy`` changes: a failing report appears, or (fixed) goes away."""
        assert self._flappy is not None
        if self._flappy_report is None:
            self._flappy_report = self.kube.create(report_for(_example("policyreport-fail.yaml"), self._flappy))
            return "default/flappy fails require-resources again"
        report, self._flappy_report = self._flappy_report, None
        self.kube.delete(report["apiVersion"], report["kind"], report["metadata"]["name"], "default")
        return "default/flappy was fixed (Kyverno deleted its report)"

    def __exit__(self, *exc: object) -> None:
        self.testkube.stop()
        self.kube.stop()


@contextlib.contextmanager
def flapping(scenario: Scenario, every: float) -> Iterator[None]:
    """Fix and break ``default/flappy`` every ``every`` seconds while the demo is served."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            print(f"demo: {scenario.flap()}", flush=True)

    thread = threading.Thread(target=run, name="demo-flappy", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


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
        stack.enter_context(flapping(scenario, every=max(3 * interval, 10.0)))
        # Served runs are processes of their own: the environment is how their settings reach them.
        os.environ.update({f"POLICYFLOW_{name.upper()}": value for name, value in scenario.settings.items()})
        os.environ["PREFECT_API_URL"] = server.api_url
        print(f"\nPrefect UI: {server.url}\n")
        print(f"  Runs:      {server.url}/runs  (policy-watch polls every {interval:.0f} s;"
              " the violation's run")
        print("             is named require-resources/require-resources-in-deployment "
              "default/Deployment/nginx-no-cpu)")
        print("             shop/checkout's run fails: its artifact and Logs tab say why (step, exit code, log)")
        print(f"  Artifacts: {server.url}/artifacts  (policy-health: the health table, a version per poll)")
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


def run_demo(run_cycle: Callable[[dict[str, Any]], int], show_health: Callable[[dict[str, Any]], int], *,
             cycles: int = 3) -> int:
    """Start the stand-ins, load the seed's scenario, run ``cycles`` detection cycles (``run_cycle``
    with the scenario's settings: ``policyflow run-once``), fixing and breaking ``default/flappy``
    between cycles, then show the health table (``show_health``: ``policyflow health``); the last
    cycle's exit status."""
    print(BANNER)
    workdir = Path(tempfile.mkdtemp(prefix="policyflow-demo-"))
    with Scenario(workdir) as scenario:
        kube, testkube = scenario.kube, scenario.testkube
        code = 0
        for cycle in range(1, cycles + 1):
            print(f"--- cycle {cycle}: policyflow run-once")
            code = run_cycle(scenario.settings)
            print(f"(exit status {code})\n")
            if cycle < cycles:
                print(f"demo: {scenario.flap()}\n")
        constraint = kube.get(CONSTRAINTS_API, "K8sRequiredLabels", "deployments-must-have-team") or {}
        reports = kube.objects("wgpolicyk8s.io/v1alpha2", "PolicyReport")
        for where, obj in [*((f"PolicyReport {r['metadata'].get('namespace')}/{r['metadata']['name']}", r)
                             for r in reports), ("the Gatekeeper constraint", constraint)]:
            records = {k: v for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()
                       if k.startswith("policyflow.io/")}
            if records:
                print(f"--- what policyflow recorded on {where} (metadata.annotations):")
            for name, value in sorted(records.items()):
                print(f"{name}:\n{_pretty(value)}")
        print("\n--- Events on the failing resources (what `kubectl describe` shows):")
        for event in kube.objects("v1", "Event"):
            where = f"{event['involvedObject'].get('namespace', '')}/{event['involvedObject']['name']}"
            print(f"  {where:22} {event['type']:8} {event['reason']:18} {event['message']}")
        print(f"\n--- Testkube executions: {len(testkube.executions)}")
        for execution in testkube.executions:
            print(f"  {execution['name']}  {execution['result']['status']}  tags={execution.get('tags')}")
        print("\n--- policyflow health (from the lifecycle journal)")
        show_health(scenario.settings)
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    return code
