"""Ctrl-C ends ``policyflow demo`` quietly: the served runner stops (through the Prefect API) before the
demo's Prefect server does, and nothing is left running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_until
from tests.specs import ROOT

pytestmark = [pytest.mark.e2e]

DEPLOYMENTS = ("policy-watch", "handle-violation", "handle-violations", "retry-failed-triggers")
TROUBLE = re.compile(r"unexpected|Traceback|\bERROR\b|Error\b")


def servers_on(port: str) -> list[int]:
    """The ``prefect server start`` processes listening on ``port``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().decode(errors="replace").rstrip("\0").split("\0")
            if "server" in args and "start" in args and args[-2:] == ["--port", port]:
                found.append(int(cmdline.parent.name))
    return found


def ready(port: str) -> set[str]:
    """The names of the demo's deployments that are Ready (their runner polled for work)."""
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/api/deployments/filter", json={}, timeout=5)
    except httpx.HTTPError:
        return set()
    return {d["name"] for d in response.json() if d.get("status") == "READY"} if response.is_success else set()


def test_ctrl_c_stops_the_runner_then_the_server_without_an_error_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("POLICYFLOW_")}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / "client-home")})
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # Its own process group, like a shell job: the signal below is a terminal's Ctrl-C.
        demo = subprocess.Popen(
            [sys.executable, "-m", "policyflow.cli", "demo", "--port", "0", "--interval", "30",
             "--home", str(tmp_path / "prefect-home")],
            env=env, stdout=stdout, stderr=stderr, cwd=ROOT, start_new_session=True,
        )
    port = ""
    try:
        def serving() -> bool:
            assert demo.poll() is None, f"policyflow demo exited with {demo.returncode}:\n{err.read_text()}"
            return "being served" in out.read_text()

        wait_until("the demo's served deployments", serving, timeout=120, every=0.2)
        port = re.findall(r"Prefect UI: http://127\.0\.0\.1:(\d+)", out.read_text())[0]
        # The runner is up: it has asked the demo's Prefect API for scheduled runs of each of its
        # deployments, which marks them Ready. No flow run is in flight: the first poll is 30 s away
        # (Ctrl-C cancels runs in flight, which Prefect logs as a crash).
        wait_until("the runner to poll for its deployments' runs", lambda: ready(port) >= set(DEPLOYMENTS),
                   timeout=60, every=0.2)
        assert servers_on(port)
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=15) == 0  # about 3 s
        assert servers_on(port) == [], "the demo's Prefect server is still running"
        assert [line for line in err.read_text().splitlines() if TROUBLE.search(line)] == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        for pid in servers_on(port) if port else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
