"""The four steps for a batch of violations at once: one task run per step for the whole batch.

Why: in a storm (a new policy turns a thousand results to ``fail``), a flow run and four task runs
per violation make the Prefect API the bottleneck (each is several writes; SQLite answers 503
"database is locked" under that load, and Prefect's client backs off 2, 4, 8... s). A batch costs
one flow run and four task runs for up to ``batch_size`` violations. Each item runs the very step
functions of the one-violation chain (``task.fn``), with the same retry policy applied per item, so
one bad item neither fails nor re-runs its neighbours. The ledger and the exactly-once rules are the
same as for a single chain: the claim, the tag lookup and the records do not care how they were called.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from policyflow.domain.errors import TransientError
from policyflow.domain.ledger import Record
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.routing import RoutedTest
from tasks import observe
from tasks.chain import (
    Awaited,
    Fetched,
    Target,
    Triggered,
    await_result,
    fetch_violation,
    record_outcome,
    trigger_testkube,
)
from tasks.runtime import current

log = logging.getLogger("policyflow.batch")

In = TypeVar("In")
Out = TypeVar("Out")


async def with_retries(step: Callable[[], Awaitable[Out]]) -> Out:
    """``step()``, tried again after a transient error as the task retry policy would: ``retries``
    times, exponential backoff from ``retry_delay`` with jitter (the step itself has already waited
    out any Retry-After)."""
    settings = current().settings
    for attempt in range(settings.retries + 1):
        try:
            return await step()
        except TransientError:
            if attempt == settings.retries:
                raise
            delay = settings.retry_delay * 2**attempt
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable")


async def each(items: Sequence[In], step: Callable[[In], Awaitable[Out]], *,
               limit: int | None = None) -> list[Out | BaseException]:
    """Run ``step`` on every item, at most ``limit`` at once (``max_concurrent_chains`` by default);
    an item's exception is its result, not the batch's."""
    gate = asyncio.Semaphore(limit or current().settings.max_concurrent_chains)

    async def one(item: In) -> Out:
        async with gate:
            return await with_retries(lambda: step(item))

    return list(await asyncio.gather(*(one(item) for item in items), return_exceptions=True))


@task(name="fetch-violations", cache_policy=NO_CACHE)
async def fetch_violations(targets: list[Target]) -> list[Fetched | BaseException]:
    """fetch-violation for every target."""
    return await each(targets, fetch_violation.fn)


@task(name="trigger-testkube-runs", cache_policy=NO_CACHE)
async def trigger_testkube_runs(items: list[tuple[Fetched, RoutedTest]]) -> list[Triggered | BaseException]:
    """trigger-testkube for every item, holding slots of the Testkube limit for the batch at once
    (one acquisition instead of one per run; no more starts at once than slots held)."""
    if not items:
        return []
    slots = min(len(items), current().settings.testkube_concurrency)
    async with observe.holding_testkube_slots(occupy=slots):
        return await each(items, lambda item: trigger_testkube.fn(*item), limit=slots)


@task(name="await-results", cache_policy=NO_CACHE)
async def await_results(items: list[tuple[ReportRef, Triggered]]) -> list[Awaited | BaseException]:
    """await-result for every started run (all wait at once: waiting costs no slot)."""
    return await each(items, lambda item: await_result.fn(*item), limit=max(len(items), 1))


@task(name="annotate-reports", cache_policy=NO_CACHE)
async def annotate_reports(items: list[tuple[ReportRef, Record, Violation | None]]) -> list[Record | BaseException]:
    """annotate-report for every item: the record and Event of each, one table artifact for the
    batch (made by the flow) instead of one markdown artifact per violation."""
    async def annotate(item: tuple[ReportRef, Record, Violation | None]) -> Record:
        final, _ = await record_outcome(*item)
        return final

    return await each(items, annotate)
