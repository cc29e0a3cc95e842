"""Policy health end to end: real poll cycles (a real Prefect API, the stand-ins) drive a violation
through four episodes: Kyverno deletes its report when it is fixed and re-creates it when it comes
back. Time is the deps' clock, moved by hand, so the figures are exact."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.poll import poll_reports
from policyflow import bootstrap
from policyflow import settings as settings_module
from policyflow.chain.deps import Deps
from policyflow.clock import Clock
from policyflow.domain.status import Outcome
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, deploy, load_report
from tests.specs import ROOT


class HandClock(Clock):
    """Wall time that moves only when the test says so (monotonic time stays real: waits still work)."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def now(self) -> datetime:
        return self.at


def build(env: dict[str, str], clock: Clock) -> Deps:
    values: dict[str, Any] = {k.removeprefix("POLICYFLOW_").lower(): v for k, v in env.items()}
    return bootstrap.build(*settings_module.load(values), clock=clock)


def cycle(deps: Deps) -> list[Outcome]:
    bootstrap.install(deps)
    try:
        summary = asyncio.run(poll_reports())
    finally:
        bootstrap.install(None)
    return [o.status for o in summary.outcomes]


def test_four_episodes_give_exact_reopen_resolve_and_flip_figures_that_survive_a_restart(
    prefect_api: str, env: dict[str, str], kube: KubeStandin, testkube: TestkubeStandin, policyflow: Policyflow,
    kubeconfig: Path,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    clock = HandClock(start)
    deps = build(env, clock)
    resource = deploy(kube, "nginx-no-cpu")

    def episode(minutes: float, outcome: str, fixed_after: float | None) -> None:
        clock.at = start + timedelta(minutes=minutes)
        testkube.set_outcome("smoke-nova", outcome)
        report = load_report(kube, resource=resource)  # Kyverno re-creates the report: a new uid
        assert cycle(deps) == [Outcome(outcome)]
        if fixed_after is not None:
            kube.delete(report["apiVersion"], report["kind"], report["metadata"]["name"], "default")
            clock.at = start + timedelta(minutes=minutes + fixed_after)
            assert cycle(deps) == []  # nothing to run; the journal marks the episode resolved

    episode(0, "passed", fixed_after=10)
    episode(60, "failed", fixed_after=30)
    episode(120, "passed", fixed_after=5)
    episode(180, "failed", fixed_after=None)
    deps.close()
    assert len(testkube.executions) == 4

    # A new policyflow process (nothing in memory) reads the same history, though every report but
    # the last was deleted.
    result = policyflow("health", "--output", "json", "--since", "1d")
    assert result.code == 0, result.err
    [row] = json.loads(result.out)["rows"]
    assert (row["policy"], row["rule"]) == ("require-resources", "require-resources-in-deployment")
    assert (row["open_now"], row["opened"], row["resolved"], row["reopened"]) == (1, 4, 3, 3)
    assert (row["resolve_p50_seconds"], row["resolve_p90_seconds"]) == (600.0, 1800.0)
    assert (row["tests"], row["passed"], row["pass_rate"]) == (4, 2, 0.5)
    assert (row["flips"], row["flip_pairs"], row["flip_rate"]) == (3, 3, 1.0)

    table = policyflow("health", "--by", "namespace")
    assert table.code == 0 and "default" in table.out and "50% (4)" in table.out

    # The poll published the same table as a versioned artifact.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            wanted = ArtifactFilter(key=ArtifactFilterKey(any_=["policy-health"]))
            return await client.read_artifacts(artifact_filter=wanted)

    versions = asyncio.run(artifacts())
    assert len(versions) >= 7
    latest = max(versions, key=lambda a: a.created)
    # open 1, opened 4, resolved 3, reopened 3
    assert re.search(r"\| require-resources +\| require-resources-in-deployment +\| +1 \| +4 \| +3 \| +3 \|",
                     str(latest.data)), latest.data


@pytest.mark.parametrize("since", ["30x", "0d", "d"])
def test_a_bad_window_is_one_line_naming_the_fix(policyflow: Policyflow, since: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        policyflow("health", "--since", since)
    assert exit_.value.code == 2
    _, err = policyflow.take()
    assert "is not a duration: write a positive number and a unit (s, m, h, d, w), e.g. 30d" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["health", "scan"])
def test_health_and_scan_never_import_prefect(env: dict[str, str], command: str) -> None:
    # `import prefect` alone costs seconds: the read-only commands must not pay it.
    code = ("import sys; from policyflow.cli import main; code = main([sys.argv[1]]); "
            "print(code, 'prefect' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env}, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "0 False", result.stdout + result.stderr
