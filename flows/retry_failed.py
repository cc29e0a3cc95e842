"""``retry-failed-triggers``: run again the chains that failed (from the records and the run history)."""

from __future__ import annotations

import logging

from prefect import flow

from flows.chains import ChainRequest, run_chains
from flows.policy_watch import CycleSummary
from policyflow.domain.outcome import count_statuses
from tasks import observe
from tasks.detect import find_failed_chains

log = logging.getLogger("policyflow.flows")


@flow(name="retry-failed-triggers", log_prints=False)
async def retry_failed_triggers(chain_deployment: str | None = None, since_hours: float = 24.0) -> CycleSummary:
    """Find violations whose last chain failed and run their chains again, as retries.

    A retry resumes the failed episode: a run that was started is found again by its tags, never
    started twice.
    """
    failed = await find_failed_chains(since_hours)
    requests = [ChainRequest.for_violation(f.violation, f.routed.workflow if f.routed else None, retry=True)
                for f in failed]
    summary = CycleSummary(counters={"failed_chains": len(requests)})
    summary.outcomes = await run_chains(requests, chain_deployment=chain_deployment)
    summary.counters.update({f"outcome_{k}": v for k, v in count_statuses(summary.outcomes).items()})
    await observe.cycle_artifact(summary.outcomes, summary.counters, key="retry-failed-triggers")
    log.info("retried %d failed chains: %s", len(requests), summary.counters)
    return summary
