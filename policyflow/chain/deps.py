"""What a chain needs besides its inputs, built once at the edge (``policyflow.bootstrap``) and
handed down: settings, routes, the clients, the record store, the clock, who this process is, the
retry policy, and where to tell Prefect (or nobody) what happened.

With several clusters there is one :class:`Deps` per cluster, each with that cluster's settings
(connection, namespace filters, Testkube target), kube client, record store and Lease, and the
shared parts (routes, clock, owner, retry, observer, the one journal in the home cluster). A chain
is given its cluster's and reads like a single-cluster chain; :meth:`Deps.for_cluster` finds a
sibling by name, :attr:`Deps.clusters` lists them all (the home cluster first).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

from policyflow.clients.kube import KubeClient
from policyflow.clients.testkube import TestkubeClient
from policyflow.clock import Clock
from policyflow.domain.digest import FailureDigest
from policyflow.domain.errors import ConfigError
from policyflow.domain.ledger import Record
from policyflow.domain.model import DEFAULT_CLUSTER, Violation
from policyflow.domain.routing import RoutingTable
from policyflow.domain.testrun import execution_url
from policyflow.journal import JournalStore
from policyflow.liveness import ProcessLease
from policyflow.records import RecordStore
from policyflow.retry import RetryPolicy
from policyflow.settings import Settings


class Observer(Protocol):
    """Where a chain says what it did, besides the cluster: Prefect events and artifacts."""

    def test_started(self, record: Record, *, namespace: str | None, cluster: str, url: str | None) -> None:
        """A violation's test run started (or was found again) in ``cluster`` (a record does not
        carry its cluster: the chain's deps know it)."""

    def test_finished(self, record: Record, *, namespace: str | None, cluster: str, url: str | None,
                      digest: FailureDigest | None = None) -> None:
        """A violation's chain wrote its final record (``digest``: why its test did not pass)."""

    async def violation_artifact(self, violation: Violation, record: Record, *, url: str | None,
                                 digest: FailureDigest | None = None) -> None:
        """The run's own account of a violation's test (one per violation run)."""


class TestkubeClients:
    """One long-lived Testkube client per event loop (an httpx client belongs to the loop it was
    made on; Prefect runs sync flows and served runs on loops of their own)."""

    __test__ = False

    def __init__(self, settings: Settings, token: Callable[[], str | None]) -> None:
        self._settings = settings
        self._token = token
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TestkubeClient] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self) -> TestkubeClient:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            s = self._settings
            if s.testkube_url is None:
                raise ConfigError("POLICYFLOW_TESTKUBE_URL is not set: point it at the Testkube API")
            client = TestkubeClient(url=str(s.testkube_url), token=self._token(), org=s.testkube_org,
                                    env=s.testkube_env, timeout=s.testkube_timeout, ca_file=s.testkube_ca_file,
                                    insecure=s.testkube_insecure)
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the running loop's client (at the end of a command's event loop)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


class Deps:
    """Everything a chain, a task or a flow needs besides its inputs.

    A plain class with slots on purpose: Prefect walks task parameters that are dataclasses or
    pydantic models looking for futures; this one it passes as it is.
    """

    __slots__ = ("_lease", "_lease_lock", "_lease_taken", "_siblings", "clock", "cluster", "journal", "kube",
                 "observer", "owner", "records", "retry", "routing", "settings", "testkube")

    def __init__(self, *, settings: Settings, routing: RoutingTable, kube: KubeClient, records: RecordStore,
                 testkube: TestkubeClients, clock: Clock, owner: str, retry: RetryPolicy, observer: Observer,
                 lease: ProcessLease | None, journal: JournalStore, cluster: str = DEFAULT_CLUSTER) -> None:
        #: The configured cluster these dependencies reach (``default`` with one cluster).
        self.cluster = cluster
        self._siblings: dict[str, Deps] = {cluster: self}
        self.settings = settings
        self.routing = routing
        self.kube = kube
        self.records = records
        self.testkube = testkube
        self.clock = clock
        self.owner = owner
        self.retry = retry
        self.observer = observer
        # This process's liveness Lease in this cluster, not taken yet: see take_lease.
        self._lease = lease
        self._lease_taken = False
        self._lease_lock = threading.Lock()
        #: The lifecycle journal (episodes kept after their reports are gone), written after records.
        self.journal = journal

    @classmethod
    def joined(cls, clusters: Sequence[Deps]) -> Deps:
        """Make ``clusters`` (one Deps each, the home cluster first) siblings of one another; the
        home cluster's, which the rest of the process is handed."""
        siblings = {deps.cluster: deps for deps in clusters}
        for deps in clusters:
            deps._siblings = siblings
        return clusters[0]

    @property
    def clusters(self) -> list[Deps]:
        """Every configured cluster's dependencies, the home cluster first."""
        return list(self._siblings.values())

    def for_cluster(self, name: str) -> Deps:
        """The dependencies of cluster ``name`` (a flow run for a violation finds its own by the
        reference's cluster); ConfigError when this process has no such cluster configured."""
        try:
            return self._siblings[name]
        except KeyError:
            known = ", ".join(self._siblings)
            raise ConfigError(f"cluster {name!r} is not configured here (clusters: {known})") from None

    def take_lease(self) -> ProcessLease | None:
        """Take this process's liveness Lease in this cluster, on its first chain here (blocking: run
        it in a thread), before any claim; later calls only answer. Not when the dependencies are
        built: a served run builds every cluster's, and one cluster that does not answer held each
        run's start and end by 30 s (the request timeout) whatever cluster its violation was in."""
        with self._lease_lock:
            if not self._lease_taken:
                self._lease_taken = True
                if self._lease is not None and not self._lease.start():
                    self._lease = None  # Leases cannot be used here (said once, by start)
            return self._lease

    @property
    def lease_taken(self) -> bool:
        """Whether :meth:`take_lease` has run here (then it has nothing left to do)."""
        return self._lease_taken

    @property
    def lease(self) -> ProcessLease | None:
        """This process's liveness Lease here once taken (:meth:`take_lease`); None before that, or
        when Leases cannot be used here (records are refreshed instead)."""
        return self._lease if self._lease_taken else None

    def close(self) -> None:
        """Give every cluster's Lease back (this process's in-flight records are free at once) and
        close the cluster clients. Idempotent."""
        for deps in self.clusters:
            if deps.lease is not None:
                deps.lease.stop()
            deps.kube.close()

    def execution_link(self, workflow: str, execution_id: str) -> str:
        """Where a person looks at an execution (the dashboard when configured, else the API)."""
        s = self.settings
        base = str(s.testkube_url or "").rstrip("/")
        api_base = (f"{base}/organizations/{s.testkube_org}/environments/{s.testkube_env}/agent"
                    if s.testkube_org and s.testkube_env else f"{base}/v1")
        return execution_url(dashboard=s.dashboard_url(), api_base=api_base, workflow=workflow,
                             execution_id=execution_id)
