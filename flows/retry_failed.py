"""``retry-failed-triggers``: run again the chains that failed (from the records and the run history)."""

from __future__ import annotations

import logging

from prefect import flow

from flows.dispatch import ChainRequest, run_chains
from flows.poll import CycleSummary
from policyflow import bootstrap
from policyflow.domain.errors import PolicyflowError
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
    summary = CycleSummary(counters={"failed_chains": 0})
    clusters = bootstrap.for_flows().clusters
    for deps in clusters:  # each cluster's own: one that is down waits for the next retry
        try:
            failed = await find_failed_chains(deps, since_hours)
        except PolicyflowError as exc:
            if len(clusters) == 1:
                raise
            summary.problems.append(f"cluster {deps.cluster}: down: {exc}")
            log.warning("cluster %s: failed chains not looked for: %s", deps.cluster, exc)
            continue
        requests = [ChainRequest.for_violation(f.violation, f.routed.workflow if f.routed else None, retry=True)
                    for f in failed]
        summary.counters["failed_chains"] += len(requests)
        summary.outcomes += await run_chains(requests, deps, chain_deployment=chain_deployment,
                                             batch_deployment=batch_deployment)
    summary.close()
    await observe.cycle_artifact(summary.outcomes, summary.counters, key="retry-failed-triggers")
    log.info("retried %d failed chains: %s", summary.counters["failed_chains"], summary.counters)
    return summary
