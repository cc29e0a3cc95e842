"""``policy-watch``: one detection cycle. Find the new failures, run each one's chain, say what happened."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from prefect import flow

from flows.chains import ChainRequest, run_chains
from policyflow import metrics
from policyflow.domain.ledger import Action
from policyflow.domain.outcome import UNROUTED, ChainOutcome, count_statuses
from tasks import observe
from tasks.detect import detect_violations, record_resolved

log = logging.getLogger("policyflow.flows")
_warned_kinds: set[str] = set()


@dataclass
class CycleSummary:
    """What one cycle found and did: counters for logs, and one outcome per violation it acted on."""

    counters: dict[str, int] = field(default_factory=dict)
    outcomes: list[ChainOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@flow(name="policy-watch", log_prints=False)
async def policy_watch(chain_deployment: str | None = None, batch_deployment: str | None = None) -> CycleSummary:
    """One cycle: detect new failures, run the chain for each (bounded concurrency), report outcomes.

    ``chain_deployment`` (e.g. ``handle-violation/handle-violation``) makes each violation's run a
    run of that deployment, so it can be retried from the UI; without it they are subflows.
    ``batch_deployment`` (``handle-violations/handle-violations``) does the same for the batches a
    storm (more than ``storm_threshold`` new chains) runs in.
    """
    started = time.monotonic()
    scan = await detect_violations()
    metrics.POLL_DURATION.observe(time.monotonic() - started)
    if scan.resolved:
        await record_resolved(scan.resolved)
    summary = CycleSummary(counters=scan.counters, problems=list(scan.problems))
    chains = [f for f in scan.findings if f.needs_chain]
    for finding in scan.findings:
        if finding.planned.action is not Action.NEW:
            continue
        metrics.VIOLATIONS_DETECTED.inc()
        observe.violation_detected(finding.violation, finding.planned.episode)
        if finding.routed is None:
            metrics.VIOLATIONS_UNROUTED.inc()
            summary.outcomes.append(ChainOutcome(finding.violation.key, finding.violation.title, None, None,
                                                 UNROUTED, detail="no route"))
        else:
            metrics.VIOLATIONS_ROUTED.inc()
    if chains:
        requests = [ChainRequest.for_violation(f.violation, f.routed.workflow if f.routed else None)
                    for f in chains]
        summary.outcomes.extend(await run_chains(requests, chain_deployment=chain_deployment,
                                                   batch_deployment=batch_deployment))
    summary.counters.update({f"outcome_{k}": v for k, v in count_statuses(summary.outcomes).items()})
    await observe.cycle_artifact(summary.outcomes, summary.counters)
    log.info("cycle: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.counters.items())))
    return summary
