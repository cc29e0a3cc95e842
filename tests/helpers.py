"""Small helpers the test suites share."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policyflow.cli import main
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from tests.specs import example


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60.0, every: float = 0.05) -> Any:
    """Poll ``probe`` until it returns something truthy (returned); AssertionError naming ``what`` after
    ``timeout`` seconds. For outcomes that other processes or threads bring about."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def standin_env(kubeconfig: Path, testkube_url: str) -> dict[str, str]:
    """POLICYFLOW_* for a user of the stand-ins, with short waits so tests stay quick."""
    return {
        "POLICYFLOW_KUBECONFIG": str(kubeconfig),
        "POLICYFLOW_TESTKUBE_URL": testkube_url,
        "POLICYFLOW_DEFAULT_WORKFLOW": "smoke-nova",
        "POLICYFLOW_POLL_INTERVAL": "0.05",
        "POLICYFLOW_POLL_INTERVAL_MAX": "0.2",
        "POLICYFLOW_RETRY_DELAY": "0.05",
        "POLICYFLOW_TESTKUBE_TIMEOUT": "2",
    }


def answers(process: subprocess.Popen[Any], url: str, log: Path, what: str) -> Callable[[], bool]:
    """A probe for :func:`wait_until`: whether ``url`` answers 200; an AssertionError with the tail of
    ``log`` as soon as ``process`` (``what``) has exited, instead of waiting out the timeout."""
    import httpx

    def probe() -> bool:
        assert process.poll() is None, f"{what} exited: {log.read_text()[-3000:]}"
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 20 s: a child process of a test, gone either way."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Result:
    """What one ``policyflow`` command did."""

    code: int
    out: str
    err: str
    seconds: float = 0.0


class Policyflow:
    """Runs the ``policyflow`` command in-process and captures what it prints."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str) -> Result:
        self._capsys.readouterr()
        started = time.monotonic()
        code = main(list(args))
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err, time.monotonic() - started)

    def take(self) -> tuple[str, str]:
        """What was printed since the last call (e.g. by a run in a background thread)."""
        captured = self._capsys.readouterr()
        return captured.out, captured.err

    def show(self, line: str) -> None:
        """Print past pytest's capture, so the line is in the test output."""
        with self._capsys.disabled():
            print(f"\nFAULT-ROW {line}")


def deploy(kube: KubeStandin, name: str, namespace: str = "default") -> dict[str, Any]:
    """A Deployment, as the failing resource a report points at."""
    kube.ensure_namespace(namespace)
    return kube.create(deployment(name, namespace))


def load_report(kube: KubeStandin, file: str = "policyreport-fail.yaml", *, resource: dict[str, Any]) -> dict[str, Any]:
    """An example report from shared/specs, as Kyverno would write it for ``resource``."""
    return kube.create(report_for(example(file), resource))


def records(kube: KubeStandin, report: dict[str, Any]) -> list[dict[str, Any]]:
    """policyflow's records (``policyflow.io/*`` annotations, parsed) on ``report`` as the stand-in has it now."""
    now = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"],
                   report["metadata"].get("namespace"))
    annotations = ((now or {}).get("metadata") or {}).get("annotations") or {}
    return [json.loads(v) for k, v in annotations.items() if k.startswith("policyflow.io/")]
