"""The deployments, and ``policyflow serve``: all of them served from one process (no work pool).

``prefect.yaml`` declares the same four deployments for ``prefect deploy --all``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from flows.handle_violation import handle_violation
from flows.handle_violations import handle_violations
from flows.poll import poll_reports
from flows.retry_failed import retry_failed_triggers

CHAIN_DEPLOYMENT = "handle-violation/handle-violation"
BATCH_DEPLOYMENT = "handle-violations/handle-violations"


#: The stored parameters of the deployments that dispatch chains (``policy-watch``,
#: ``retry-failed-triggers``); ``prefect.yaml`` says the same (a test checks both against the flows).
DISPATCH = {"chain_deployment": CHAIN_DEPLOYMENT, "batch_deployment": BATCH_DEPLOYMENT}


def deployments(*, interval: float = 60.0, retry_interval: float | None = None) -> list[RunnerDeployment]:
    """``policy-watch`` (every ``interval`` seconds, never two at once), ``handle-violation`` (by hand,
    and the target of violation runs), ``handle-violations`` (a storm's batches) and
    ``retry-failed-triggers`` (by hand, or every ``retry_interval`` seconds)."""
    # Module entrypoints: the runner finds the flows in the installed package, wherever it runs.
    common: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH}
    poll = poll_reports.to_deployment(
        name="policy-watch",
        interval=timedelta(seconds=interval),
        parameters=dict(DISPATCH),
        concurrency_limit=1,
        description="Poll the cluster for new PolicyReport failures and run each one's chain.",
        tags=["policyflow"],
        **common,
    )
    chain = handle_violation.to_deployment(
        name="handle-violation",
        description="The chain for one violation: fetch-violation, trigger-testkube, await-result, "
        "annotate-report. Run by hand with the report's namespace/name and the policy/rule.",
        tags=["policyflow"],
        **common,
    )
    batch = handle_violations.to_deployment(
        name="handle-violations",
        description="The chains of many violations as one run, step by step (a storm: more new failures "
        "in one cycle than storm_threshold). Started by policy-watch; Retry resumes the chains that failed.",
        tags=["policyflow"],
        **common,
    )
    retry = retry_failed_triggers.to_deployment(
        name="retry-failed-triggers",
        interval=timedelta(seconds=retry_interval) if retry_interval else None,
        parameters=dict(DISPATCH),
        concurrency_limit=1,
        description="Run again the chains whose last run failed (from the annotations and the run history).",
        tags=["policyflow"],
        **common,
    )
    # to_deployment answers a coroutine only when called from async code; this module is sync.
    return [d for d in (poll, chain, batch, retry) if isinstance(d, RunnerDeployment)]
