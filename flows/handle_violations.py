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

import asyncio
import logging
from collections import Counter

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from flows.handle_violation import RETRYABLE, is_prefect_retry
from policyflow import bootstrap
from policyflow.chain.run import run_chain
from policyflow.chain.story import told_in_summary
from policyflow.domain.decisions import RunMode
from policyflow.domain.outcome import ChainOutcome, count_statuses
from policyflow.domain.ref import ViolationRef
from tasks import observe
from tasks.batch import PhasedSteps

log = logging.getLogger("policyflow.flows")


def batch_name() -> str:
    """``policy/rule ×N`` when the batch is one rule (a new policy's storm), else ``N violations``."""
    violations = [ViolationRef.model_validate(v) for v in flow_run.parameters.get("violations") or []]
    rules = Counter(f"{v.policy}/{v.rule}" for v in violations)
    if len(rules) == 1:
        return f"{next(iter(rules))} ×{len(violations)}"
    return f"{len(violations)} violations of {len(rules)} rules"


@flow(name="handle-violations", flow_run_name=batch_name, log_prints=False)
async def handle_violations(violations: list[ViolationRef], retry: bool = False) -> State[list[ChainOutcome]]:
    """Run the chain of every violation in ``violations``.

    Ends Completed with one outcome per violation, or Failed (same outcomes) when some chain could
    not finish; its Retry then resumes exactly those.
    """
    deps = bootstrap.for_flows()
    mode = RunMode(retry=retry or is_prefect_retry())
    by_cluster = Counter(ref.cluster for ref in violations)  # one cluster per batch a cycle makes
    phased = {name: PhasedSteps(deps.for_cluster(name), chains=n) for name, n in by_cluster.items()}

    async def chain(ref: ViolationRef) -> ChainOutcome:
        steps = phased[ref.cluster]
        try:
            with told_in_summary():
                outcome = await run_chain(ref, steps.deps, steps, mode)
            log.info("%s", outcome.line())
            return outcome
        finally:
            steps.finished()

    outcomes = list(await asyncio.gather(*(chain(ref) for ref in violations)))
    counters = count_statuses(outcomes)
    await observe.cycle_artifact(outcomes, counters, key="handle-violations")
    unfinished = sum(1 for o in outcomes if o.status in RETRYABLE)
    if unfinished:
        return Failed(message=f"{unfinished} of {len(outcomes)} chains could not finish; Retry resumes them",
                      data=outcomes)
    return Completed(message=", ".join(f"{k}={v}" for k, v in sorted(counters.items())), data=outcomes)
