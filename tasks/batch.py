"""A batch's run in Prefect: the chains of many violations with one task run per step for all of them
(fetch-violations -> trigger-testkube-runs -> await-results -> annotate-reports).

Why: in a storm (a new policy turns a thousand results to ``fail``), a flow run and four task runs
per violation make the Prefect API the bottleneck (each is several writes; SQLite answers 503
"database is locked" under that load, and Prefect's client backs off 2, 4, 8... s). A batch costs one
flow run and four task runs for up to ``batch_size`` violations.

Each violation still runs the one chain (:func:`~policyflow.chain.run.run_chain`); :class:`PhasedSteps`
gathers the chains' calls of one step and runs them together in that step's task run, each item with
the retry policy, so one bad item neither fails nor re-runs its neighbours.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from prefect import task
from prefect.cache_policies import NO_CACHE

from policyflow.chain.deps import Deps
from policyflow.chain.run import DirectSteps
from policyflow.domain.decisions import Awaited, Fetched, RunMode, Triggered
from policyflow.domain.digest import FailureDigest
from policyflow.domain.ledger import Record
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.ref import ViolationRef
from policyflow.domain.routing import RoutedTest
from tasks.observe import holding_testkube_slots

In = TypeVar("In")
Out = TypeVar("Out")


async def each(items: Sequence[In], step: Callable[[In], Awaitable[Out]], *, limit: int) -> list[Out | BaseException]:
    """``step`` on every item, at most ``limit`` at once; an item's exception is its result, not the batch's."""
    gate = asyncio.Semaphore(max(limit, 1))

    async def one(item: In) -> Out:
        async with gate:
            return await step(item)

    return list(await asyncio.gather(*(one(item) for item in items), return_exceptions=True))


@task(name="fetch-violations", cache_policy=NO_CACHE)
async def fetch_violations(deps: Deps, items: list[tuple[ViolationRef, RunMode]]) -> list[Fetched | BaseException]:
    """fetch-violation for every item."""
    steps = DirectSteps(deps)
    return await each(items, lambda item: steps.fetch(*item), limit=deps.settings.max_concurrent_chains)


@task(name="trigger-testkube-runs", cache_policy=NO_CACHE)
async def trigger_testkube_runs(deps: Deps, items: list[tuple[Fetched, RoutedTest]]) -> list[Triggered | BaseException]:
    """trigger-testkube for every item, holding slots of the Testkube limit for the batch at once
    (one acquisition instead of one per run; no more starts at once than slots held)."""
    slots = min(len(items), deps.settings.testkube_concurrency)
    steps = DirectSteps(deps)
    async with holding_testkube_slots(occupy=slots):
        return await each(items, lambda item: steps.trigger(*item), limit=slots)


@task(name="await-results", cache_policy=NO_CACHE)
async def await_results(deps: Deps, items: list[tuple[ReportRef, Triggered]]) -> list[Awaited | BaseException]:
    """await-result for every started run (all wait at once: waiting costs no slot)."""
    steps = DirectSteps(deps)
    return await each(items, lambda item: steps.await_result(*item), limit=len(items))


@task(name="annotate-reports", cache_policy=NO_CACHE)
async def annotate_reports(deps: Deps,
                           items: list[tuple[ReportRef, Record, Violation | None, FailureDigest | None]],
                           ) -> list[Record | BaseException]:
    """annotate-report for every item: the record and Event of each (the batch's one table artifact
    is made by its flow, instead of one markdown artifact per violation)."""
    steps = DirectSteps(deps)
    return await each(items, lambda item: steps.annotate(*item), limit=deps.settings.max_concurrent_chains)


BatchTask = Callable[[Deps, list[Any]], Awaitable[list[Any]]]
#: The batch task of each step, in the chain's order.
PHASES: tuple[BatchTask, ...] = cast(
    "tuple[BatchTask, ...]", (fetch_violations, trigger_testkube_runs, await_results, annotate_reports)
)
FETCH, TRIGGER, AWAIT, ANNOTATE = range(4)


class PhasedSteps:
    """The chain's :class:`~policyflow.chain.run.Steps` for ``chains`` chains run side by side: a
    step's call waits until every unfinished chain has called a step; then the earliest step's calls
    run together in its batch task run. Steps only move forward, so each task run happens once."""

    def __init__(self, deps: Deps, chains: int, *, phases: Sequence[BatchTask] = PHASES) -> None:
        self.deps = deps
        self._phases = phases
        self._unfinished = chains
        self._waiting: dict[int, list[tuple[Any, asyncio.Future[Any]]]] = defaultdict(list)
        self._running = False
        self._phase: asyncio.Task[None] | None = None

    async def fetch(self, ref: ViolationRef, mode: RunMode) -> Fetched:
        return cast(Fetched, await self._call(FETCH, (ref, mode)))

    async def trigger(self, fetched: Fetched, routed: RoutedTest) -> Triggered:
        return cast(Triggered, await self._call(TRIGGER, (fetched, routed)))

    async def await_result(self, report: ReportRef, triggered: Triggered) -> Awaited:
        return cast(Awaited, await self._call(AWAIT, (report, triggered)))

    async def annotate(self, report: ReportRef, record: Record, violation: Violation | None,
                       digest: FailureDigest | None = None) -> Record:
        return cast(Record, await self._call(ANNOTATE, (report, record, violation, digest)))

    def finished(self) -> None:
        """One chain is done (whatever its outcome): the others need not wait for it."""
        self._unfinished -= 1
        self._run_when_all_wait()

    async def _call(self, phase: int, item: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[phase].append((item, future))
        self._run_when_all_wait()
        return await future

    def _run_when_all_wait(self) -> None:
        waiting = sum(len(calls) for calls in self._waiting.values())
        if self._running or not waiting or waiting < self._unfinished:
            return
        phase = min(self._waiting)
        self._running = True
        self._phase = asyncio.get_running_loop().create_task(self._run(phase, self._waiting.pop(phase)))

    async def _run(self, phase: int, calls: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results: list[Any] = await self._phases[phase](self.deps, [item for item, _ in calls])
        except BaseException as exc:  # the task run itself failed (Prefect API): every call fails with it
            results = [exc] * len(calls)
        self._running = False
        for (_, future), result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
