"""Faults of the process itself: SIGKILL at each step of the chain, two pollers at once, the Prefect
API down or its database wiped, failures that appear while policyflow is down.

policyflow runs as a real subprocess (``python -m policyflow.cli run-once``) against the stand-ins
and the session's Prefect API; every test asserts the end state: one execution per violation
episode, its outcome on the report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import wait_until
from tests.specs import ROOT, example

pytestmark = [pytest.mark.usefixtures("prefect_api")]


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture
def base_env(kubeconfig: Path, testkube: TestkubeStandin) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYFLOW_")}
    env.update({
        "PREFECT_API_URL": api_url(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "POLICYFLOW_KUBECONFIG": str(kubeconfig),
        "POLICYFLOW_TESTKUBE_URL": testkube.url,
        "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
        "POLICYFLOW_POLL_INTERVAL": "0.1",
        "POLICYFLOW_POLL_INTERVAL_MAX": "0.2",
        "POLICYFLOW_RETRY_DELAY": "0.05",
        # A killed process's Lease lasts this long: then its chains are free (the default is 30 s).
        "POLICYFLOW_LEASE_DURATION": "3",
    })
    return env


@pytest.fixture
def spawn(base_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def run(*args: str, **env: str) -> subprocess.Popen[str]:
        log = tmp_path / f"policyflow-{len(started)}.log"
        process = subprocess.Popen([sys.executable, "-m", "policyflow.cli", *args], cwd=ROOT,
                                   env={**base_env, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
        process.log = log  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(process: subprocess.Popen[str], timeout: float = 120) -> int:
    code = process.wait(timeout=timeout)
    print(Path(process.log).read_text()[-3000:])  # type: ignore[attr-defined]
    return code


def no_live_owner(kube: KubeStandin) -> bool:
    """Every policyflow Lease has expired or is gone (a killed process's runs out by itself)."""
    from datetime import UTC, datetime

    from policyflow.domain.owners import current_holder

    now = datetime.now(UTC)
    return all(current_holder(lease, now) is None for lease in kube.objects("coordination.k8s.io/v1", "Lease"))


def restart_after_the_kill(spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin) -> int:
    """Once the killed process's Lease has expired (until then its chains are a live process's: see
    tests/chain), one run-once resumes them and finishes; its exit status."""
    wait_until("the killed process's Lease to expire", lambda: no_live_owner(kube), timeout=30, every=0.2)
    return finish(spawn("run-once"))


def failing_reports(kube: KubeStandin, count: int) -> list[dict[str, Any]]:
    template = example("policyreport-fail.yaml")
    return [kube.create(report_for(template, kube.create(deployment(f"app-{i}")))) for i in range(count)]


def record(kube: KubeStandin, report: dict[str, Any]) -> dict[str, Any] | None:
    now = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"], report["metadata"]["namespace"])
    assert now is not None
    values = [v for k, v in (now["metadata"].get("annotations") or {}).items() if k.startswith("policyflow.io/")]
    return json.loads(values[0]) if values else None


def assert_exactly_once(kube: KubeStandin, testkube: TestkubeStandin, reports: list[dict[str, Any]],
                        scenario: str, injected: str) -> None:
    """One execution per violation and its outcome on the report; prints the row of the fault table."""
    per_key = Counter(e["tags"]["policyflow-key"] for e in testkube.executions)
    records = [record(kube, r) for r in reports]
    recorded = [r for r in records if r and r["status"] == "passed"]
    keys = {r["key"] for r in records if r}
    duplicates = sum(n - 1 for n in per_key.values())
    lost = len(reports) - len(recorded)
    columns = (scenario, injected, len(reports), len(testkube.executions), len(recorded), duplicates, lost)
    row = " | ".join(str(c) for c in columns)
    print(row)
    out = ROOT / "test-output" / "faults.tsv"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as table:
        table.write(row.replace(" | ", "\t") + "\n")
    assert duplicates == 0, per_key
    assert lost == 0, records
    assert set(per_key) == keys


def test_killed_after_the_trigger_before_the_annotation(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    reports = failing_reports(kube, 1)
    # The agent starts the run, then its answer hangs: policyflow is killed before it learns the id.
    testkube.inject(method="POST", path=r"/executions$", status=0, after=True, delay=60)
    first = spawn("run-once")
    wait_until("the execution to start", lambda: testkube.executions)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert record(kube, reports[0])["status"] == "pending"  # type: ignore[index]
    assert restart_after_the_kill(spawn, kube) == 0
    assert_exactly_once(kube, testkube, reports, "SIGKILL after trigger, before annotation", "kill -9")


def test_killed_while_awaiting(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    reports = failing_reports(kube, 2)
    testkube.set_outcome("smoke-nova", "never")
    first = spawn("run-once")
    wait_until("both runs to be recorded as started",
                lambda: all((r := record(kube, rep)) and r["status"] in ("queued", "running") for rep in reports))
    first.send_signal(signal.SIGKILL)
    first.wait()
    testkube.set_outcome("smoke-nova", "passed")
    assert restart_after_the_kill(spawn, kube) == 0
    assert_exactly_once(kube, testkube, reports, "SIGKILL while awaiting", "kill -9")


def test_killed_during_the_annotation(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    reports = failing_reports(kube, 1)
    testkube.set_outcome("smoke-nova", "never")
    first = spawn("run-once")
    wait_until("the run to be recorded as started",
                lambda: (r := record(kube, reports[0])) and r["status"] in ("queued", "running"))
    patches = sum(1 for r in kube.requests if r.method == "PATCH")
    kube.inject(method="PATCH", path=r"/policyreports/", status=500, delay=60)
    testkube.set_outcome("smoke-nova", "passed")
    wait_until("the final annotation to be under way",
               lambda: sum(1 for r in kube.requests if r.method == "PATCH") > patches)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert restart_after_the_kill(spawn, kube) == 0
    assert_exactly_once(kube, testkube, reports, "SIGKILL during annotation", "kill -9")


def test_two_pollers_at_once(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    reports = failing_reports(kube, 6)
    a, b = spawn("run-once"), spawn("run-once")
    codes = (finish(a), finish(b))
    # A process that found some of the other's chains in flight (or lost a claim to it) says so:
    # busy, exit status 3. Interleaved, both may.
    assert set(codes) <= {0, 3}, codes
    assert finish(spawn("run-once")) == 0
    assert_exactly_once(kube, testkube, reports, "two processes poll at once", "2 x run-once")


def test_prefect_api_unreachable_then_back(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    reports = failing_reports(kube, 2)
    down = spawn("run-once", PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES="1")
    assert finish(down) != 0
    assert testkube.executions == [], "nothing starts a test without the Prefect API"
    assert finish(spawn("run-once")) == 0
    assert_exactly_once(kube, testkube, reports, "Prefect API unreachable, then back", "connection refused")


def test_prefect_database_wiped_and_even_the_record_lost(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin, empty_prefect_api: str
) -> None:
    reports = failing_reports(kube, 2)
    assert finish(spawn("run-once")) == 0
    # A Prefect server with an empty database: the record on the report says it was handled.
    assert finish(spawn("run-once", PREFECT_API_URL=empty_prefect_api)) == 0
    # Worse: the record is gone too (someone removed the annotation). The key-tag lookup on Testkube
    # still finds the episode's execution.
    for report in reports:
        now = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"], "default")
        assert now is not None
        now["metadata"]["annotations"] = {}
        kube.replace(now)
    assert finish(spawn("run-once", PREFECT_API_URL=empty_prefect_api)) == 0
    assert_exactly_once(kube, testkube, reports, "Prefect DB wiped (and annotation removed)", "new Prefect DB")


def test_a_failure_that_appeared_while_down_is_caught_up_once(
    spawn: Callable[..., subprocess.Popen[str]], kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    assert finish(spawn("run-once")) == 0
    reports = failing_reports(kube, 3)  # while no policyflow runs
    assert finish(spawn("run-once")) == 0
    assert finish(spawn("run-once")) == 0
    assert_exactly_once(kube, testkube, reports, "failures appear while policyflow is down", "catch-up")
