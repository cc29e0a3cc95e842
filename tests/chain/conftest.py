"""The chain without Prefect: the real steps, record store and clients against the stand-ins on
loopback, run by DirectSteps, with a recording observer (a fake, not a mock) and short waits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policyflow import bootstrap
from policyflow import settings as settings_module
from policyflow.chain.deps import Deps
from policyflow.clock import Clock
from policyflow.domain.digest import FailureDigest
from policyflow.domain.ledger import Record
from policyflow.domain.model import Violation
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import deploy, load_report


@dataclass
class Heard:
    """What the chain told its observer, in order: ("started"|"finished"|"artifact", status)."""

    said: list[tuple[str, str]] = field(default_factory=list)
    digests: list[FailureDigest | None] = field(default_factory=list)
    #: The cluster each test event was told of, in order.
    clusters: list[str] = field(default_factory=list)

    def test_started(self, record: Record, *, namespace: str | None, cluster: str, url: str | None) -> None:
        self.said.append(("started", record.status.value))
        self.clusters.append(cluster)

    def test_finished(self, record: Record, *, namespace: str | None, cluster: str, url: str | None,
                      digest: FailureDigest | None = None) -> None:
        self.said.append(("finished", record.status.value))
        self.clusters.append(cluster)
        self.digests.append(digest)

    async def violation_artifact(self, violation: Violation, record: Record, *, url: str | None,
                                 digest: FailureDigest | None = None) -> None:
        self.said.append(("artifact", record.status.value))


@pytest.fixture
def heard() -> Heard:
    return Heard()


Make = Callable[..., Deps]


@pytest.fixture
def make_deps(kubeconfig: Path, testkube: TestkubeStandin, heard: Heard,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    """``make_deps(**settings)``: the composition root's dependencies for the stand-ins, with short
    waits; each call is a new process as far as records are concerned (its own owner id)."""
    import os

    for name in list(os.environ):
        if name.startswith("POLICYFLOW_"):
            monkeypatch.delenv(name)
    made: list[Deps] = []

    def make(clock: Clock | None = None, **overrides: Any) -> Deps:
        values: dict[str, Any] = {
            "kubeconfig": str(kubeconfig), "testkube_url": testkube.url, "default_workflow": "smoke-nova",
            "poll_interval": 0.01, "poll_interval_max": 0.05, "retry_delay": 0.01, "testkube_timeout": 2,
            **overrides,
        }
        deps = bootstrap.build(*settings_module.load(values), observer=heard, clock=clock)
        made.append(deps)
        return deps

    yield make
    for deps in made:
        deps.close()


@pytest.fixture
def failing(kube: KubeStandin) -> dict[str, Any]:
    """The seed's failing PolicyReport for Deployment default/nginx-no-cpu."""
    return load_report(kube, resource=deploy(kube, "nginx-no-cpu"))


class Later(Clock):
    """The system clock, ``seconds`` ahead: another process's Lease has expired by its reading."""

    def __init__(self, seconds: float) -> None:
        self.ahead = timedelta(seconds=seconds)

    def now(self) -> datetime:
        return super().now() + self.ahead
