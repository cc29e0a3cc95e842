"""Fixtures shared by the suites: the stand-ins on loopback and one real Prefect API per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow
from tests.specs import REPORT_CRDS, ROOT, TESTKUBE_OPENAPI

# Before anything imports Prefect: no telemetry from test servers.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The test server answers 503 with a short Retry-After (tests/prefect_app.py): allow a few more of them.
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "10")

PREFECT_APP = "tests.prefect_app:create_app"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API (temporary server on SQLite), started once per session (per xdist worker),
    heartbeats off; its 503s say when to retry (tests/prefect_app.py)."""
    from unittest import mock

    import prefect.testing.utilities
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with mock.patch.object(prefect.testing.utilities, "SubprocessASGIServer", _retry_soon_server()), \
            prefect_test_harness(server_startup_timeout=60), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _retry_soon_server() -> type[Any]:
    """Prefect's test-harness server, serving tests/prefect_app.py's app instead of Prefect's own."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class RetrySoonServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--factory", PREFECT_APP,
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                     "PREFECT__SERVER_FINAL": "1",
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
            )

    return RetrySoonServer


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A full local Prefect server (API, UI, scheduler) for tests that need schedules or the UI; its
    API URL. Started once per session, only by the tests that ask for it."""
    from policyflow.localserver import LocalPrefectServer

    with LocalPrefectServer(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server.api_url


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    """The Kubernetes API stand-in, serving the report CRDs from shared/specs."""
    with KubeStandin(REPORT_CRDS) as server:
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
    values = {
        "POLICYFLOW_KUBECONFIG": str(kubeconfig),
        "POLICYFLOW_TESTKUBE_URL": testkube.url,
        "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
        "POLICYFLOW_POLL_INTERVAL": "0.05",
        "POLICYFLOW_POLL_INTERVAL_MAX": "0.2",
        "POLICYFLOW_RETRY_DELAY": "0.05",
        "POLICYFLOW_TESTKUBE_TIMEOUT": "2",
    }
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
