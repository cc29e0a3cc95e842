"""Fixtures shared by the suites: the stand-ins on loopback and one real Prefect API per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, answers, standin_env, stop_process, wait_until
from tests.specs import BOTH_SOURCES_CRDS, REPORT_CRDS, ROOT, TESTKUBE_OPENAPI

# Before anything imports Prefect: no telemetry from test servers.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The test servers answer 503 with a Retry-After that doubles from 0.25 s (tests/prefect_app.py): 8
# retries wait about as long in all (0.25 + 0.5 + ... + 32 s) as the client's own 5 (2 + 4 + ... + 32 s).
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
# Served runners (policyflow serve, policyflow demo) look for scheduled and retried runs every second,
# not every 10 s: a served test waits for the run, not for the runner's next look.
os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")

# Property tests without Hypothesis' per-example deadline (200 ms): that is a timing assertion, and on
# two busy cores a plain example of test_a_recorded_error_is_one_bounded_line took longer now and then.
settings.register_profile("policyflow", deadline=None)
settings.load_profile("policyflow")

PREFECT_APP = "tests.prefect_app:create_app"
# How the tests' Prefect servers run, besides Prefect's defaults: all services (the scheduler too,
# for the served tests), no UI, and quick to hand out scheduled runs.
SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT__SERVER_FINAL": "1",
    # New deployments get their scheduled runs within a second or two, not a minute.
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    # A scheduled poll that finds the previous one still running (policy-watch is limited to one at a
    # time) tries again a second later, not 30 s later.
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
}


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API, started once per session (per xdist worker); its URL. A full server on a
    temporary SQLite database (all services: served deployments get their scheduled runs), its 503s
    saying when to retry (tests/prefect_app.py); heartbeats off. Prefect's test harness points this
    process's Prefect client at it."""
    from unittest import mock

    import prefect.testing.utilities
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with mock.patch.object(prefect.testing.utilities, "SubprocessASGIServer", _tests_server()), \
            prefect_test_harness(server_startup_timeout=120), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield str(PREFECT_API_URL.value())


def _tests_server() -> type[Any]:
    """Prefect's test-harness server, serving tests/prefect_app.py with SERVER_SETTINGS."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class TestsServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--factory", PREFECT_APP,
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, **SERVER_SETTINGS,
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
            )

    return TestsServer


@pytest.fixture
def empty_prefect_api(tmp_path: Path) -> Iterator[str]:
    """Another Prefect API, on a database of its own, empty: its URL. For a test that loses Prefect's
    database (the session's API, ``prefect_api``, keeps everything the session ran)."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({**SERVER_SETTINGS, "PREFECT_HOME": str(home), "PREFECT__SERVER_EPHEMERAL": "1"})
    api = f"http://127.0.0.1:{port}/api"
    with (home / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--factory", PREFECT_APP,
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--lifespan", "on"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    try:
        wait_until("the other Prefect server", answers(process, f"{api}/health", home / "server.log",
                                                       "the Prefect server"), timeout=120, every=0.2)
        yield api
    finally:
        stop_process(process)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Iterator[KubeStandin]:
    """The Kubernetes API stand-in, serving the report CRDs from shared/specs (and, for tests marked
    ``gatekeeper``, a Gatekeeper constraint CRD)."""
    crds = BOTH_SOURCES_CRDS if request.node.get_closest_marker("gatekeeper") else REPORT_CRDS
    with KubeStandin(crds) as server:
        yield server


@pytest.fixture
def kubeconfig(kube: KubeStandin, tmp_path: Path) -> Path:
    """A kubeconfig whose server is the stand-in (the client re-applies it before every request)."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def env(kubeconfig: Path, testkube: TestkubeStandin, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """POLICYFLOW_* for a user of the stand-ins (nothing else of the caller's), with short waits so
    tests stay quick. Returned too, for tests that start policyflow as a subprocess."""
    for name in list(os.environ):
        if name.startswith("POLICYFLOW_"):
            monkeypatch.delenv(name)
    values = standin_env(kubeconfig, testkube.url)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def policyflow(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Policyflow:
    """The ``policyflow`` command, run in-process with ``env``, capturing what it prints."""
    return Policyflow(capsys)


@pytest.fixture
def testkube() -> Iterator[TestkubeStandin]:
    """The Testkube agent stand-in with a ``smoke-nova`` TestWorkflow, validating against the spec."""
    with TestkubeStandin(openapi_spec=TESTKUBE_OPENAPI, workflows=["smoke-nova"]) as server:
        yield server


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with one line, when the contract files are not where the tests load them from."""
    from tests.specs import SPECS

    if not (SPECS / "SOURCES.md").is_file():
        pytest.exit(f"contract files not found at {SPECS}: put shared/ beside the checkout or set "
                    "POLICYFLOW_SPECS", returncode=4)

