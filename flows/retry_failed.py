"""``retry-failed-triggers``: run again the chains that failed (from the records and the run history)."""

from __future__ import annotations

import logging

from prefect import flow

from flows.dispatch import ChainRequest, run_chains
from flows.poll import CycleSummary
from policyflow import bootstrap
from tasks import observe
from tasks.detect import find_failed_chains

log = logging.getLogger("policyflow.flows")


@flow(name="retry-failed-triggers", log_prints=False)
async def retry_failed_triggers(chain_deployment: str | None = None, batch_deployment: str | None = None,
                                since_hours: float = 24.0) -> CycleSummary:
    """Find violations whose last chain failed and run their chains again, as retries.

    A retry resumes the failed episode: a run that was started is found again by its tags, never
    started twice. ``chain_deployment``/``batch_deployment`` make the retried runs runs of those
    deployments (as ``policy-watch`` does); ``since_hours`` is how far back the run history is read.
    """
    deps = bootstrap.for_flows()
    failed = await find_failed_chains(deps, since_hours)
    requests = [ChainRequest.for_violation(f.violation, f.routed.workflow if f.routed else None, retry=True)
                for f in failed]
    summary = CycleSummary(counters={"failed_chains": len(requests)})
    summary.outcomes = await run_chains(requests, deps, chain_deployment=chain_deployment,
                                        batch_deployment=batch_deployment)
    summary.close()
    await observe.cycle_artifact(summary.outcomes, summary.counters, key="retry-failed-triggers")
    log.info("retried %d failed chains: %s", len(requests), summary.counters)
    return summary
