"""``handle-violation``: the chain for one violation, as its own flow run.

fetch-violation -> trigger-testkube -> await-result -> annotate-report, one task run each. Runnable
by hand from the UI's Run form (the violation's report and policy/rule); the poll flow runs it for
every new failure, as a run of this deployment so that the UI's Retry works on it.
"""

from __future__ import annotations

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from policyflow import bootstrap
from policyflow.chain.run import run_chain
from policyflow.domain.decisions import RunMode
from policyflow.domain.outcome import ChainOutcome
from policyflow.domain.ref import ViolationRef
from policyflow.domain.status import Outcome
from tasks.steps import TaskSteps

#: Outcomes after which a violation's run ends Failed, so the UI offers its Retry.
RETRYABLE = frozenset({Outcome.UNFINISHED, Outcome.REFUSED, Outcome.ERROR})


def run_name() -> str:
    """``policy/rule namespace/Kind/name``: the violation, as people name it."""
    return ViolationRef.model_validate(flow_run.parameters["violation"]).title


def is_prefect_retry() -> bool:
    """Prefect's Retry (button, ``prefect flow-run retry``) re-runs the same flow run: count > 1."""
    return (flow_run.run_count or 1) > 1


def outcome_state(outcome: ChainOutcome) -> State[ChainOutcome]:
    """The run's final state: Failed (with its Retry) when the chain could not finish."""
    if outcome.status in RETRYABLE:
        return Failed(message=f"{outcome.status.value}: {outcome.detail}", data=outcome)
    return Completed(message=outcome.status.value, data=outcome)


@flow(name="handle-violation", flow_run_name=run_name, log_prints=False)
async def handle_violation(violation: ViolationRef, force_new_episode: bool = False,
                           retry: bool = False) -> State[ChainOutcome]:
    """Run the chain for ``violation``: a failing policy/rule result in one report (and one resource,
    if given).

    ``force_new_episode`` starts a new test run even when this failure's test already finished.
    ``retry`` runs again what failed (an episode recorded as ``error``); Prefect's own Retry of
    this flow run does the same.
    """
    deps = bootstrap.for_flows().for_cluster(violation.cluster)
    mode = RunMode(retry=retry or is_prefect_retry(), force_new_episode=force_new_episode)
    return outcome_state(await run_chain(violation, deps, TaskSteps(deps), mode))
