"""Watch mode: new failures are handled as their reports change, exactly once, with catch-up at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from policyflow.clients.kube import KubeClient, WatchExpired
from policyflow.domain.model import POLICY_REPORT
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import CONSTRAINTS_API, audit_status, deployment, report_for, required_labels
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import records, wait_until
from tests.specs import REPORT_CRDS, ROOT, example

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]


def test_the_client_streams_changes_and_says_when_its_version_expired(kube: KubeStandin, kubeconfig: Path) -> None:
    client = KubeClient.connect(kubeconfig=kubeconfig)
    start = client.list_version(POLICY_REPORT)
    created = kube.create(report_for(example("policyreport-fail.yaml"), kube.create(deployment("web"))))
    events = list(client.watch_reports(POLICY_REPORT, resource_version=start, timeout_seconds=1))
    assert ("ADDED", created["metadata"]["name"]) in [(t, o["metadata"]["name"]) for t, o in events]
    kube.expire_continue_tokens()
    with pytest.raises(WatchExpired):
        list(client.watch_reports(POLICY_REPORT, resource_version=start, timeout_seconds=1))


def test_watch_handles_new_failures_once_and_catches_up(
    kube: KubeStandin, kubeconfig: Path, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    template = example("policyreport-fail.yaml")
    before = kube.create(report_for(template, kube.create(deployment("before-start"))))
    reports = [before]
    with watching(watch_env(kubeconfig, testkube), tmp_path) as process:
        wait_until("catch-up of the failure that was there before", lambda: len(testkube.executions) == 1, timeout=90)
        for i in range(4):
            reports.append(kube.create(report_for(template, kube.create(deployment(f"app-{i}")))))
        wait_until("every new failure to be handled",
                   lambda: all(status(kube, r) == "passed" for r in reports), timeout=90)
        # Kyverno re-scans: the same failures, new timestamps. Nothing new.
        for report in reports:
            now = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"], "default")
            assert now is not None
            now["results"][0]["timestamp"]["seconds"] += 3600
            kube.replace(now)
        # Then one more new failure. The watch delivers changes in order, so once this one is handled
        # the re-scans before it have been looked at too (and must not have started anything).
        reports.append(kube.create(report_for(template, kube.create(deployment("after-rescans")))))
        wait_until("the failure after the re-scans to be handled", lambda: status(kube, reports[-1]) == "passed",
                   timeout=90)
    assert process.returncode == 143  # stopped by SIGTERM, and said so (128 + 15)
    per_key = Counter(e["tags"]["policyflow-key"] for e in testkube.executions)
    assert len(per_key) == len(reports) and set(per_key.values()) == {1}, per_key


@contextmanager
def watching(env: dict[str, str], tmp_path: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A ``policyflow watch --resync 600`` process (its output in ``watch.log``), stopped with SIGTERM
    on the way out and waited for: it gives its Lease back as it goes; a loaded machine is slow."""
    log = tmp_path / "watch.log"
    process = subprocess.Popen([sys.executable, "-m", "policyflow.cli", "watch", "--resync", "600", *args],
                               cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        print(log.read_text()[-4000:])
        process.wait(timeout=60)


def watch_env(kubeconfig: Path, testkube: TestkubeStandin, **extra: str) -> dict[str, str]:
    """The environment of a ``policyflow watch`` process against the stand-ins and the session's API."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYFLOW_")}
    env.update({"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "POLICYFLOW_KUBECONFIG": str(kubeconfig), "POLICYFLOW_TESTKUBE_URL": testkube.url,
                "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova", "POLICYFLOW_POLL_INTERVAL": "0.05",
                "POLICYFLOW_POLL_INTERVAL_MAX": "0.1", **extra})
    return env


@pytest.mark.gatekeeper
def test_watch_tests_a_gatekeeper_violation_as_soon_as_audit_writes_it_and_a_rewrite_starts_nothing(
    kube: KubeStandin, kubeconfig: Path, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    template = example("policyreport-fail.yaml")
    reports = [kube.create(report_for(template, kube.create(deployment("before-start"))))]
    kube.create(required_labels("must-have-team", ["team"]))
    no_team = kube.create(deployment("no-team"))
    with watching(watch_env(kubeconfig, testkube), tmp_path) as process:
        wait_until("catch-up of the report that was there before", lambda: len(testkube.executions) == 1,
                   timeout=90)
        audit(kube, [no_team], "2026-12-06T10:00:00Z")  # the only change: the status audit writes
        wait_until("the constraint's violation to be tested", lambda: len(testkube.executions) == 2, timeout=90)
        audit(kube, [no_team], "2026-12-06T10:01:00Z")  # audit's next interval: the same violation
        # A report after the rewrite: the watch delivers changes in order, so once it is handled the
        # rewrite has been looked at too (and must not have started anything).
        reports.append(kube.create(report_for(template, kube.create(deployment("after-rewrite")))))
        wait_until("the report after the rewrite to be handled", lambda: status(kube, reports[-1]) == "passed",
                   timeout=90)
    assert process.returncode == 143
    policies = Counter(e["tags"]["policy"] for e in testkube.executions)
    assert policies == {"require-resources": 2, "K8sRequiredLabels": 1}, policies
    assert set(Counter(e["tags"]["policyflow-key"] for e in testkube.executions).values()) == {1}
    (constraint,) = kube.objects(CONSTRAINTS_API, "K8sRequiredLabels")
    assert [r["status"] for r in records(kube, constraint)] == ["passed"]


def audit(kube: KubeStandin, found: list[dict[str, Any]], at: str) -> None:
    """Gatekeeper's audit writing the constraint's status (the stand-in's controller-side write)."""
    constraint = kube.get(CONSTRAINTS_API, "K8sRequiredLabels", "must-have-team")
    assert constraint is not None
    constraint["status"] = audit_status([(r, 'you must provide labels: {"team"}') for r in found], timestamp=at)
    kube.replace(constraint)


def status(kube: KubeStandin, report: dict[str, Any]) -> str | None:
    now = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"],
                   report["metadata"].get("namespace", "default")) or {}
    values = [v for k, v in (now.get("metadata", {}).get("annotations") or {}).items()
              if k.startswith("policyflow.io/")]
    return json.loads(values[0])["status"] if values else None


def test_watch_follows_every_cluster_and_one_that_is_down_holds_up_no_other(
    kube: KubeStandin, kubeconfig: Path, testkube: TestkubeStandin, tmp_path: Path
) -> None:
    template = example("policyreport-fail.yaml")
    with KubeStandin(REPORT_CRDS) as gone:
        gone_kubeconfig = gone.write_kubeconfig(tmp_path / "gone.kubeconfig")  # then nothing answers there
    with KubeStandin(REPORT_CRDS) as staging:
        config = tmp_path / "clusters.yaml"
        config.write_text(f"""
clusters:
  - name: default
  - name: staging
    kubeconfig: {staging.write_kubeconfig(tmp_path / "staging.kubeconfig")}
  - name: gone
    kubeconfig: {gone_kubeconfig}
""")
        before = kube.create(report_for(template, kube.create(deployment("before-start"))))
        env = watch_env(kubeconfig, testkube, POLICYFLOW_CLUSTER_TIMEOUT="3")
        there: list[tuple[KubeStandin, dict[str, Any]]] = [(kube, before)]
        with watching(env, tmp_path, "--config", str(config)) as process:
            wait_until("catch-up in default with gone down", lambda: status(kube, before) == "passed", timeout=90)
            # Changes after the catch-up reach each cluster's own watch, which runs them with that
            # cluster's clients: the same resource name in both is two violations.
            for cluster in (staging, kube):
                there.append((cluster, cluster.create(report_for(template, cluster.create(deployment("web"))))))
            wait_until("the failures in staging and default to be handled",
                       lambda: all(status(c, r) == "passed" for c, r in there), timeout=90)
    assert process.returncode == 143
    assert "watch: cluster gone cannot be followed now" in (tmp_path / "watch.log").read_text()
    per_cluster = Counter(e["tags"].get("policyflow-cluster") for e in testkube.executions)
    assert per_cluster == {"default": 2, "staging": 1}, per_cluster
    assert set(Counter(e["tags"]["policyflow-key"] for e in testkube.executions).values()) == {1}
