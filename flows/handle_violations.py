"""``handle-violations``: the chains of many violations as one flow run, step by step.

A storm's way through Prefect: one flow run and four task runs (fetch-violations ->
trigger-testkube-runs -> await-results -> annotate-reports) for up to ``batch_size`` violations,
where one-violation runs would cost a flow run and four task runs each. Per violation, the history
stays where people look for it: the record on the report, the Kubernetes Events, the
``policyflow.test.*`` Prefect events (automations fire per violation as before) and a row in the
run's table artifact. A run with failed chains ends Failed; Prefect's Retry runs it again, and what
already finished is left alone (the ledger says so), so only what failed runs again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from flows.handle_violation import is_prefect_retry
from policyflow.domain.ledger import Record
from policyflow.domain.model import ReportRef, Violation
from policyflow.domain.outcome import UNFINISHED, ChainOutcome, count_statuses
from policyflow.domain.routing import RoutedTest
from tasks import observe
from tasks.batch import annotate_reports, await_results, fetch_violations, trigger_testkube_runs
from tasks.chain import (
    Awaited,
    Fetched,
    Target,
    Triggered,
    after_trigger_failed,
    failed_outcome,
    final_outcome,
    next_step,
    release,
    result_record,
)

log = logging.getLogger("policyflow.flows")


def batch_name() -> str:
    """``policy/rule ×N`` when the batch is one rule (a new policy's storm), else ``N violations``."""
    violations: list[dict[str, Any]] = flow_run.parameters.get("violations") or []
    rules = Counter(f"{v.get('policy')}/{v.get('rule')}" for v in violations)
    if len(rules) == 1:
        return f"{next(iter(rules))} ×{len(violations)}"
    return f"{len(violations)} violations of {len(rules)} rules"


@flow(name="handle-violations", flow_run_name=batch_name, log_prints=False)
async def handle_violations(violations: list[dict[str, Any]], retry: bool = False) -> State[list[ChainOutcome]]:
    """Run the chain of every violation in ``violations`` (each a ``handle-violation`` run's parameters).

    Ends Completed with one outcome per violation, or Failed (same outcomes) when some chain could
    not finish; its Retry then resumes exactly those.
    """
    retry = retry or is_prefect_retry()
    started = time.monotonic()
    targets = [Target.of(**{**parameters, "retry": retry or bool(parameters.get("retry"))})
               for parameters in violations]
    outcomes: list[ChainOutcome | None] = [None] * len(targets)
    titles = [t.title for t in targets]

    fetched_all = await fetch_violations(targets)
    to_trigger: list[tuple[int, Fetched, RoutedTest]] = []
    running: list[tuple[int, Fetched, Triggered]] = []
    resolving: list[tuple[int, Fetched, Record]] = []
    for i, fetched in enumerate(fetched_all):
        if isinstance(fetched, BaseException):
            outcomes[i] = failed_outcome("", titles[i], None, fetched)
            continue
        titles[i] = fetched.title
        step = next_step(fetched)
        if step.outcome is not None:
            outcomes[i] = step.outcome
        elif step.resolve is not None:
            resolving.append((i, fetched, step.resolve))
        elif step.resume is not None:
            running.append((i, fetched, step.resume))
        else:
            assert step.routed is not None
            to_trigger.append((i, fetched, step.routed))

    triggered_all = await trigger_testkube_runs([(f, routed) for _, f, routed in to_trigger])
    for (i, fetched, routed), triggered in zip(to_trigger, triggered_all, strict=True):
        if isinstance(triggered, BaseException):
            outcomes[i] = await after_trigger_failed(fetched, routed, triggered)
        else:
            running.append((i, fetched, triggered))

    awaited_all = await await_results([(f.target.report, t) for _, f, t in running])
    finishing: list[tuple[int, Fetched, Triggered, Awaited]] = []
    for (i, fetched, triggered), awaited in zip(running, awaited_all, strict=True):
        if isinstance(awaited, BaseException):
            await release(fetched.target.report, triggered.record)
            outcomes[i] = failed_outcome(triggered.record.key, titles[i], triggered.record.workflow, awaited)
        else:
            finishing.append((i, fetched, triggered, awaited))

    records: list[tuple[ReportRef, Record, Violation | None]] = [
        (f.target.report, result_record(t, a), f.violation) for _, f, t, a in finishing
    ] + [(f.target.report, record, None) for _, f, record in resolving]
    annotated = await annotate_reports(records)
    order = [(i, a) for i, _, _, a in finishing] + [(i, None) for i, _, _ in resolving]
    for (i, waited), (report, record, _), final in zip(order, records, annotated, strict=True):
        if isinstance(final, BaseException):
            await release(report, record)
            outcomes[i] = failed_outcome(record.key, titles[i], record.workflow, final)
        else:
            outcomes[i] = final_outcome(final, titles[i], time.monotonic() - started, waited)

    done = [o for o in outcomes if o is not None]
    counters = count_statuses(done)
    await observe.cycle_artifact(done, counters, key="handle-violations")
    unfinished = counters.get(UNFINISHED, 0) + counters.get("error", 0)
    if unfinished:
        return Failed(message=f"{unfinished} of {len(done)} chains could not finish; Retry resumes them",
                      data=done)
    return Completed(message=", ".join(f"{k}={v}" for k, v in sorted(counters.items())), data=done)
