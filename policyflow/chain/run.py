"""The one chain: fetch -> decide -> trigger -> await -> record, for one violation.

How each step is *run* is the caller's choice, through a :class:`Steps`: here, directly with the
retry policy (:class:`DirectSteps`: tests, benchmarks, watch mode's immediate start); in ``tasks/``,
as one Prefect task run per step (a violation's run) or one per step for a whole batch (a storm).
The chain itself, its decisions and its error handling exist once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from policyflow.chain import steps
from policyflow.chain.deps import Deps
from policyflow.domain.decisions import (
    Awaited,
    Fetched,
    RunMode,
    Triggered,
    final_outcome,
    next_step,
    records_error,
    result_record,
    trigger_failed,
    unfinished_outcome,
)
from policyflow.domain.digest import FailureDigest
from policyflow.domain.errors import PolicyflowError, is_violations_own, one_line
from policyflow.domain.ledger import Record
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.outcome import ChainOutcome
from policyflow.domain.ref import ViolationRef
from policyflow.domain.routing import RoutedTest
from policyflow.domain.status import Outcome

log = logging.getLogger("policyflow.chain")


class Steps(Protocol):
    """How a chain's four steps are run (each with the retry policy)."""

    async def fetch(self, ref: ViolationRef, mode: RunMode) -> Fetched:
        """fetch-violation."""
        ...

    async def trigger(self, fetched: Fetched, routed: RoutedTest) -> Triggered:
        """trigger-testkube."""
        ...

    async def await_result(self, report: ReportRef, triggered: Triggered) -> Awaited:
        """await-result."""
        ...

    async def annotate(self, report: ReportRef, record: Record, violation: Violation | None,
                       digest: FailureDigest | None = None) -> Record:
        """annotate-report."""
        ...


class DirectSteps:
    """The steps run right here, each with the retry policy; Testkube starts bounded by ``gate``."""

    def __init__(self, deps: Deps, *, gate: asyncio.Semaphore | None = None) -> None:
        self.deps = deps
        self.gate = gate

    async def fetch(self, ref: ViolationRef, mode: RunMode) -> Fetched:
        return await self.deps.retry.run(lambda: steps.fetch(self.deps, ref, mode),
                                         what=f"fetch-violation {ref.title}", log=log)

    async def trigger(self, fetched: Fetched, routed: RoutedTest) -> Triggered:
        async with self.gate or contextlib.nullcontext():
            return await self.deps.retry.run(lambda: steps.trigger(self.deps, fetched, routed),
                                             what=f"trigger-testkube {fetched.title}", log=log)

    async def await_result(self, report: ReportRef, triggered: Triggered) -> Awaited:
        return await self.deps.retry.run(lambda: steps.await_result(self.deps, report, triggered),
                                         what=f"await-result {triggered.execution.name}", log=log)

    async def annotate(self, report: ReportRef, record: Record, violation: Violation | None,
                       digest: FailureDigest | None = None) -> Record:
        final, _ = await self.annotate_linked(report, record, violation, digest)
        return final

    async def annotate_linked(self, report: ReportRef, record: Record, violation: Violation | None,
                              digest: FailureDigest | None = None) -> tuple[Record, str | None]:
        """annotate-report, answering the execution's link too (the task's artifact shows it)."""
        return await self.deps.retry.run(lambda: steps.annotate(self.deps, report, record, violation, digest),
                                         what=f"annotate-report {record.policy}/{record.rule}", log=log)


async def run_chain(ref: ViolationRef, deps: Deps, run: Steps, mode: RunMode | None = None, *,
                    until_started: bool = False) -> ChainOutcome:
    """Run the chain of the violation ``ref`` names, with ``run`` running each step; its outcome.

    Never raises for what a step raised: the outcome says what happened (and ``halt`` when the cause
    would stop every other chain of the cycle too). ``until_started`` stops once the test runs
    (watch mode's immediate start; a later run awaits and records it).
    """
    started = deps.clock.monotonic()
    try:
        fetched = await run.fetch(ref, mode or RunMode())
    except Exception as exc:
        _log_failure(ref.title, "fetch-violation", exc)
        if is_violations_own(exc):
            return ChainOutcome("", ref.title, None, None, Outcome.ERROR, detail=one_line(str(exc)))
        return unfinished_outcome("", ref.title, None, exc)
    step = next_step(fetched, deps.routing)
    if step.outcome is not None:
        log.debug("%s: %s (%s)", step.outcome.violation, step.outcome.status.value, step.outcome.detail)
        return step.outcome
    report = fetched.ref.report
    if step.resolve is not None:
        try:
            record = await run.annotate(report, step.resolve, None)
        except Exception as exc:
            _log_failure(fetched.title, "annotate-report", exc)
            return unfinished_outcome(step.resolve.key, fetched.title, step.resolve.workflow, exc)
        return ChainOutcome(record.key, fetched.title, record.workflow, record.execution_name, Outcome.RESOLVED,
                            detail=fetched.gone_reason)
    if step.resume is not None:
        triggered = step.resume
    else:
        assert step.routed is not None
        try:
            triggered = await run.trigger(fetched, step.routed)
        except Exception as exc:
            _log_failure(fetched.title, "trigger-testkube", exc)
            return await _after_trigger_failed(fetched, step.routed, exc, deps, run)
    if until_started:
        return ChainOutcome(triggered.record.key, fetched.title, triggered.record.workflow,
                            triggered.execution.name, Outcome.of(triggered.record.status))
    try:
        awaited = await run.await_result(report, triggered)
        final = await run.annotate(report, result_record(triggered, awaited), fetched.violation, awaited.digest)
    except Exception as exc:
        _log_failure(fetched.title, "await-result/annotate-report", exc)
        # Give the episode back (owner cleared) so the next cycle resumes it at once with the same
        # execution, instead of waiting out the lease of a chain that is no more.
        await asyncio.to_thread(deps.records.release, report, triggered.record)
        return unfinished_outcome(triggered.record.key, fetched.title, triggered.record.workflow, exc)
    return final_outcome(final, fetched.title, deps.clock.monotonic() - started, awaited)


async def _after_trigger_failed(fetched: Fetched, routed: RoutedTest, exc: BaseException, deps: Deps,
                                run: Steps) -> ChainOutcome:
    """Leave the ledger as :func:`trigger_failed` says: record the violation's own error, or give
    the claim back so the next cycle tries again at once."""
    failed = trigger_failed(fetched, routed, exc, now=deps.clock.stamp())
    report = fetched.ref.report
    if failed.record is not None:
        try:
            await run.annotate(report, failed.record, fetched.violation)
        except Exception as annotate_exc:  # the original error matters more; say why the record is missing
            log.warning("%s: could not record the error: %s", fetched.title, annotate_exc)
    if failed.release is not None:
        await asyncio.to_thread(deps.records.release, report, failed.release)
    return failed.outcome


def _log_failure(title: str, step: str, exc: BaseException) -> None:
    """One line for what policyflow expects to go wrong; the traceback only for what it does not."""
    if isinstance(exc, PolicyflowError):
        kind = "error" if records_error(exc) else "not finished"
        log.warning("%s: %s %s: %s", title, step, kind, exc)
    else:
        log.error("%s: %s failed unexpectedly", title, step, exc_info=exc)

