"""``policyflow watch``: sub-second detection. Follows the report kinds with Kubernetes watches from
the last resourceVersion and runs the chain of each new failure as soon as its report changes.

The exactly-once guarantees are the same as for polling, because they never depended on how a
failure was noticed: each chain re-reads its report, claims its episode with a conditional patch and
looks its execution up by tag before starting one. A full ``policy-watch`` cycle runs at start
(catch-up: what changed while nobody watched), after a 410 Gone (the watch fell too far behind: list
again) and every ``resync`` seconds (resource changes, anything a watch might have missed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from flows.chains import ChainRequest, run_chains
from flows.policy_watch import policy_watch
from policyflow import metrics
from policyflow.clients.kube import KubeClient, WatchExpired
from policyflow.domain.errors import PolicyflowError
from policyflow.domain.model import REPORT_KINDS, ReportKind
from policyflow.domain.routing import RoutedTest
from policyflow.scanning import scan_report
from tasks.chain import Target, start_at_once
from tasks.runtime import current

log = logging.getLogger("policyflow.watch")

Event = tuple[ReportKind, dict[str, Any]]


class _Follower(threading.Thread):
    """One report kind's watch, in a thread (the client is blocking), feeding the event loop's queue."""

    def __init__(self, kube: KubeClient, kind: ReportKind, version: str, selector: str,
                 loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Event], expired: threading.Event) -> None:
        super().__init__(name=f"watch-{kind.plural}", daemon=True)
        self.kube, self.kind, self.version, self.selector = kube, kind, version, selector
        self.loop, self.queue, self.expired = loop, queue, expired
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                for kind_of, obj in self.kube.watch_reports(self.kind, resource_version=self.version,
                                                            label_selector=self.selector, timeout_seconds=60):
                    self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
                    if kind_of in ("ADDED", "MODIFIED") and not self.stopped.is_set():
                        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.kind, obj))
            except WatchExpired as exc:
                log.info("%s; listing again", exc)
                self.expired.set()
                return
            except PolicyflowError as exc:
                log.warning("watch of %s: %s; watching again in 1 s", self.kind.plural, exc)
                time.sleep(1.0)


async def watch(*, resync_seconds: float = 600.0, chain_deployment: str | None = None,
                batch_deployment: str | None = None, max_cycles: int | None = None) -> None:
    """Watch until interrupted (or, for tests, until ``max_cycles`` resyncs have started)."""
    runtime = current()
    kube, settings = runtime.kube, runtime.settings
    kinds = [k for k in REPORT_KINDS if await asyncio.to_thread(kube.is_served, k)
             and (k.namespaced or settings.cluster_reports)]
    loop = asyncio.get_running_loop()
    cycles = 0
    while max_cycles is None or cycles < max_cycles:
        cycles += 1
        # Where each watch starts: before the full cycle, so nothing changes unseen in between.
        versions = {k: await asyncio.to_thread(kube.list_version, k, label_selector=settings.report_selector)
                    for k in kinds}
        await policy_watch(chain_deployment=chain_deployment, batch_deployment=batch_deployment)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        expired = threading.Event()
        followers = [_Follower(kube, k, versions[k], settings.report_selector, loop, queue, expired) for k in kinds]
        for follower in followers:
            follower.start()
        try:
            await _react(queue, expired, deadline=time.monotonic() + resync_seconds,
                         chain_deployment=chain_deployment)
        finally:
            for follower in followers:
                follower.stopped.set()


async def _react(queue: asyncio.Queue[Event], expired: threading.Event, *, deadline: float,
                 chain_deployment: str | None) -> None:
    """Start the tests of new failures as their reports change, then run their chains, until a
    resync is due."""
    runtime = current()
    running: dict[str, asyncio.Task[Any]] = {}
    # Immediate starts are bounded in this process (see observe.bounded_here).
    gate = asyncio.Semaphore(runtime.settings.testkube_concurrency)
    while time.monotonic() < deadline and not expired.is_set():
        try:
            first = await asyncio.wait_for(queue.get(), timeout=0.5)
        except TimeoutError:
            continue
        # Coalesce: a burst of changes to one report needs one look at its latest state.
        batch = {(first[1]["metadata"].get("namespace"), first[1]["metadata"]["name"]): first}
        while not queue.empty():
            event = queue.get_nowait()
            batch[(event[1]["metadata"].get("namespace"), event[1]["metadata"]["name"])] = event
        now = datetime.now(UTC)
        for kind, obj in batch.values():
            scan = scan_report(runtime.kube, runtime.settings, runtime.routing, kind, obj, now=now,
                               lease_seconds=runtime.settings.claim_lease)
            for finding in scan.findings:
                key = finding.violation.key
                if finding.needs_chain and finding.routed and (key not in running or running[key].done()):
                    metrics.VIOLATIONS_DETECTED.inc()
                    request = ChainRequest.for_violation(finding.violation, finding.routed.workflow)
                    running[key] = asyncio.create_task(
                        _start_and_run(request, finding.routed, gate, chain_deployment=chain_deployment))
        for key in [k for k, task in running.items() if task.done()]:
            running.pop(key)
    if running:
        await asyncio.gather(*running.values(), return_exceptions=True)


async def _start_and_run(request: ChainRequest, routed: RoutedTest, gate: asyncio.Semaphore, *,
                         chain_deployment: str | None) -> None:
    """Start the test now (Prefect's bookkeeping costs more than the one-second goal), then run the
    chain as a Prefect run, which finds the started test and records its outcome."""
    await start_at_once(Target.of(**request.parameters), routed, gate)
    await run_chains([request], chain_deployment=chain_deployment)
