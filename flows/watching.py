"""``policyflow watch``: sub-second detection. Follows the report kinds (and, with the gatekeeper
source, every constraint kind) with Kubernetes watches from the last resourceVersion and runs the
chain of each new failure as soon as its report (or the constraint's audit status) changes.

The exactly-once guarantees are the same as for polling, because they never depended on how a
failure was noticed: each chain re-reads its report, claims its episode with a conditional patch and
looks its execution up by tag before starting one. A full ``policy-watch`` cycle runs at start
(catch-up: what changed while nobody watched), after a 410 Gone (the watch fell too far behind: list
again) and every ``resync`` seconds (resource changes, anything a watch might have missed).

With several clusters, every cluster's report kinds are followed, each by its own threads, and a
change is scanned and its chain run with that cluster's dependencies. A cluster that cannot be read
when the watches start is left to the full cycles, and the next resync comes within
:data:`UNFOLLOWED_RESYNC_SECONDS` to follow it again: one cluster down never holds the others' watches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from flows.dispatch import PREFECT_API_FAILED, ChainRequest, run_chains
from flows.poll import poll_cycle
from policyflow import metrics
from policyflow.chain.deps import Deps
from policyflow.chain.run import DirectSteps, run_chain
from policyflow.clients.kube import WatchExpired
from policyflow.domain.errors import PolicyflowError
from policyflow.domain.gatekeeper import CONSTRAINTS_GROUP, CONSTRAINTS_VERSION, constraint_kinds
from policyflow.domain.model import REPORT_KINDS, ReportKind, Source, Violation
from policyflow.domain.routing import RoutedTest
from policyflow.liveness import read_live_owners
from policyflow.retry import RetryPolicy
from policyflow.scanning import scan_report

log = logging.getLogger("policyflow.watch")

#: A report's change, with the dependencies of the cluster it happened in.
Event = tuple[Deps, ReportKind, dict[str, Any]]

#: How soon the next resync comes when a cluster could not be followed (it is watched from then).
UNFOLLOWED_RESYNC_SECONDS = 60.0


class _Follower(threading.Thread):
    """One report kind's watch in one cluster, in a thread (the client is blocking), feeding the
    event loop's queue."""

    def __init__(self, deps: Deps, kind: ReportKind, version: str, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue[Event], expired: threading.Event) -> None:
        super().__init__(name=f"watch-{deps.cluster}-{kind.plural}", daemon=True)
        self.deps = deps
        self.kube, self.kind, self.version = deps.kube, kind, version
        self.selector = _selector(deps, kind)
        self.retry: RetryPolicy = deps.retry
        self.loop, self.queue, self.expired = loop, queue, expired
        self.stopped = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            try:
                for kind_of, obj in self.kube.watch_reports(self.kind, resource_version=self.version,
                                                            label_selector=self.selector, timeout_seconds=60):
                    failures = 0
                    self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
                    if kind_of in ("ADDED", "MODIFIED") and not self.stopped.is_set():
                        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.deps, self.kind, obj))
            except WatchExpired as exc:
                log.info("%s; listing again", exc)
                self.expired.set()
                return
            except PolicyflowError as exc:
                # A watch is never given up: the retry policy's backoff, capped, for as long as it takes.
                wait = self.retry.delay_for(min(failures, self.retry.retries), exc, chance=0.5)
                failures += 1
                where = f" in cluster {self.deps.cluster}" if len(self.deps.clusters) > 1 else ""
                log.warning("watch of %s%s: %s; watching again in %.1f s", self.kind.plural, where, exc, wait)
                self.stopped.wait(wait)


async def watch(deps: Deps, *, resync_seconds: float = 600.0, chain_deployment: str | None = None,
                batch_deployment: str | None = None, max_cycles: int | None = None) -> None:
    """Watch until interrupted (or, for tests, until ``max_cycles`` resyncs have started)."""
    loop = asyncio.get_running_loop()
    cycles = 0
    while max_cycles is None or cycles < max_cycles:
        cycles += 1
        # Where each watch starts: before the full cycle, so nothing changes unseen in between.
        starts = await asyncio.gather(*(_watch_starts(cluster) for cluster in deps.clusters))
        await poll_cycle(deps, chain_deployment=chain_deployment, batch_deployment=batch_deployment)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        expired = threading.Event()
        followers = [_Follower(cluster, kind, version, loop, queue, expired)
                     for cluster, versions in zip(deps.clusters, starts, strict=True) if versions is not None
                     for kind, version in versions.items()]
        for follower in followers:
            follower.start()
        resync = resync_seconds if None not in starts else min(resync_seconds, UNFOLLOWED_RESYNC_SECONDS)
        try:
            await _react(deps, queue, expired, deadline=time.monotonic() + resync,
                         chain_deployment=chain_deployment, batch_deployment=batch_deployment)
        finally:
            for follower in followers:
                follower.stopped.set()


def _selector(deps: Deps, kind: ReportKind) -> str:
    """The label selector a kind is listed and watched with: Kyverno's reports may be selected by
    label (``report_selector``); constraints never are."""
    return deps.settings.report_selector if kind.source is Source.KYVERNO else ""


async def _watch_starts(deps: Deps) -> dict[ReportKind, str] | None:
    """One cluster's report kinds to follow and the resourceVersion each watch starts from; None
    when the cluster cannot be read now (with several clusters: the full cycle reports it down)."""
    kube, settings = deps.kube, deps.settings

    def read() -> dict[ReportKind, str]:
        kinds: list[ReportKind] = []
        if not settings.sources or Source.KYVERNO in settings.sources:
            kinds += [k for k in REPORT_KINDS if kube.is_served(k) and (k.namespaced or settings.cluster_reports)]
        if not settings.sources or Source.GATEKEEPER in settings.sources:
            # The constraint kinds there are now; one a new ConstraintTemplate adds is followed from the
            # next resync (the full cycles read it before that).
            document = kube.discover(f"{CONSTRAINTS_GROUP}/{CONSTRAINTS_VERSION}")
            kinds += constraint_kinds(document) if document is not None else []
        return {k: kube.list_version(k, label_selector=_selector(deps, k)) for k in kinds}

    if len(deps.clusters) == 1:
        return await asyncio.to_thread(read)  # one cluster: its outage is the watch's, as it always was
    try:
        return await asyncio.wait_for(asyncio.to_thread(read), timeout=settings.cluster_timeout)
    except (PolicyflowError, TimeoutError) as exc:
        log.warning("watch: cluster %s cannot be followed now (%s); followed again from the next resync, "
                    "within %g s", deps.cluster, exc or "no answer", UNFOLLOWED_RESYNC_SECONDS)
        return None


async def _react(deps: Deps, queue: asyncio.Queue[Event], expired: threading.Event, *, deadline: float,
                 chain_deployment: str | None, batch_deployment: str | None) -> None:
    """Start the tests of new failures as their reports change, and record them through Prefect, until
    a resync is due."""
    reactor = _Reactor(deps, chain_deployment, batch_deployment)
    handed_over = time.monotonic()
    while time.monotonic() < deadline and not expired.is_set():
        reactor.check()
        if time.monotonic() - handed_over >= HAND_OVER_SECONDS:
            reactor.hand_over()
            handed_over = time.monotonic()
        try:
            first = await asyncio.wait_for(queue.get(), timeout=0.2)
        except TimeoutError:
            continue
        # Coalesce: a burst of changes to one report needs one look at its latest state.
        batch = {_report_of(first): first}
        while not queue.empty():
            event = queue.get_nowait()
            batch[_report_of(event)] = event
        now = deps.clock.now()
        live: dict[str, frozenset[str] | None] = {}
        for cluster, kind, obj in batch.values():
            if cluster.cluster not in live:
                live[cluster.cluster] = read_live_owners(cluster.kube, cluster.settings.lease_namespace, now)
            scan = scan_report(cluster.kube, cluster.settings, cluster.routing, kind, obj, now=now,
                               live_owners=live[cluster.cluster], cluster=cluster.cluster)
            for finding in scan.findings:
                if finding.needs_chain and finding.routed:
                    reactor.notice(cluster, finding.violation, finding.routed)
    await reactor.drain()


def _report_of(event: Event) -> tuple[str, str, str | None, str]:
    """Which report or constraint an event is about: its cluster, kind, namespace and name (two
    constraint kinds may each have one of the same name)."""
    metadata = event[2]["metadata"]
    return event[0].cluster, event[1].kind, metadata.get("namespace"), metadata["name"]


#: How often started tests are handed to Prefect runs. Why not at once: a run per violation at a
#: few violations a second is what makes a SQLite-backed Prefect server answer 503 (and the chain
#: wait out its client's backoff); a second's worth of starts goes into one run instead.
HAND_OVER_SECONDS = 1.0
#: Hand-overs tried again when the Prefect API itself failed (the test has started; its outcome
#: still needs a run to record it). Beyond this, the next resync resumes it from the record.
HAND_OVER_ATTEMPTS = 5


class _Reactor:
    """The watch's work in flight: immediate starts, then their chains in Prefect runs."""

    def __init__(self, deps: Deps, chain_deployment: str | None, batch_deployment: str | None) -> None:
        # Immediate starts are bounded in this process, not by the global limit: taking a global slot
        # is a Prefect API call, and one 503 from a busy server costs its client a 2 s backoff.
        self.deps = deps
        self.gate = asyncio.Semaphore(deps.settings.testkube_concurrency)
        self.chain_deployment, self.batch_deployment = chain_deployment, batch_deployment
        self.in_flight: set[str] = set()
        self.ready: list[ChainRequest] = []
        self.attempts: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()

    def notice(self, cluster: Deps, violation: Violation, routed: RoutedTest) -> None:
        """A new failure in ``cluster``: start its test now, unless its chain is already under way here."""
        if violation.key in self.in_flight:
            return
        self.in_flight.add(violation.key)
        metrics.VIOLATIONS_DETECTED.inc()
        self._spawn(self._start(cluster, ChainRequest.for_violation(violation, routed.workflow)))

    async def _start(self, cluster: Deps, request: ChainRequest) -> None:
        """The chain's first half right now, outside Prefect: the watch's sub-second start. The
        chain's Prefect run follows and resumes from the record this writes (same owner, same
        episode, the execution found by its id or tags), so whatever this could not do, it does."""
        outcome = await run_chain(request.ref, cluster, DirectSteps(cluster, gate=self.gate), until_started=True)
        log.debug("%s: %s at once", outcome.violation, outcome.status.value)
        self.ready.append(request)

    def hand_over(self) -> None:
        """Give the tests started since the last hand-over to Prefect runs (one run: a batch)."""
        if self.ready:
            requests, self.ready = self.ready, []
            self._spawn(self._record(requests))

    async def _record(self, requests: list[ChainRequest]) -> None:
        outcomes = {o.key: o for o in await run_chains(requests, self.deps, chain_deployment=self.chain_deployment,
                                                       batch_deployment=self.batch_deployment, storm_threshold=1)}
        for request in requests:
            outcome = outcomes.get(request.key)
            if outcome is not None and outcome.detail.startswith(PREFECT_API_FAILED) and \
                    self.attempts[request.key] < HAND_OVER_ATTEMPTS:
                self.attempts[request.key] += 1
                self.ready.append(request)
                continue
            self.attempts.pop(request.key, None)
            self.in_flight.discard(request.key)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self.tasks.add(asyncio.create_task(work))

    def check(self) -> None:
        """Collect finished work. A chain's flow run turns SIGTERM into ``TerminationSignal`` inside
        its own task: stop watching then (what is cancelled resumes at the next start)."""
        for task in [t for t in self.tasks if t.done()]:
            self.tasks.discard(task)
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, Exception):
                for other in self.tasks:
                    other.cancel()
                raise exc
            if exc is not None:
                log.warning("watch: %s", exc)

    async def drain(self) -> None:
        """Before a resync: finish the starts, hand everything over, wait for the runs."""
        while self.tasks or self.ready:
            self.hand_over()
            await asyncio.sleep(0.1)
            self.check()
