"""``policy-watch``: one polling cycle. Find the new failures, run each one's chain, say what happened.

(The flow and its deployment keep the name ``policy-watch`` that schedules and automations know; the
module says what it does: it polls. Watch mode, which follows reports as they change, is
``flows/watching.py``.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from prefect import flow

from flows.dispatch import ChainRequest, run_chains
from policyflow import bootstrap, metrics
from policyflow.chain.deps import Deps
from policyflow.domain.ledger import Action
from policyflow.domain.outcome import ChainOutcome, count_statuses
from policyflow.domain.status import Outcome
from tasks import observe
from tasks.detect import detect_violations, record_resolved
from tasks.health import close_resolved, publish_health

log = logging.getLogger("policyflow.flows")


@dataclass
class CycleSummary:
    """What one cycle found and did: counters for logs, and one outcome per violation it acted on."""

    counters: dict[str, int] = field(default_factory=dict)
    outcomes: list[ChainOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def close(self) -> CycleSummary:
        """Count the outcomes into the counters (for the log line and the artifact)."""
        self.counters.update({f"outcome_{k}": v for k, v in count_statuses(self.outcomes).items()})
        return self


@flow(name="policy-watch", log_prints=False)
async def poll_reports(chain_deployment: str | None = None, batch_deployment: str | None = None) -> CycleSummary:
    """One cycle: detect new failures, run the chain for each (bounded concurrency), report outcomes.

    ``chain_deployment`` (e.g. ``handle-violation/handle-violation``) makes each violation's run a
    run of that deployment, so it can be retried from the UI; without it they are subflows.
    ``batch_deployment`` (``handle-violations/handle-violations``) does the same for the batches a
    storm (more than ``storm_threshold`` new chains) runs in.
    """
    return await poll_cycle(bootstrap.for_flows(), chain_deployment=chain_deployment,
                            batch_deployment=batch_deployment)


async def poll_cycle(deps: Deps, *, chain_deployment: str | None = None,
                     batch_deployment: str | None = None) -> CycleSummary:
    """The cycle itself, with its dependencies given (the flow's body)."""
    started, cycle_started = time.monotonic(), deps.clock.now()
    scan = await detect_violations(deps)
    metrics.POLL_DURATION.observe(time.monotonic() - started)
    if scan.resolved:
        await record_resolved(deps, scan.resolved)
    closed = await close_resolved(deps, scan)
    summary = CycleSummary(counters=scan.counters, problems=list(scan.problems))
    chains = [f for f in scan.findings if f.needs_chain]
    for finding in scan.findings:
        if finding.planned.action is Action.BUSY:
            # In flight under another live process: not this cycle's to run, but not done either.
            record = finding.planned.record
            summary.outcomes.append(ChainOutcome(
                finding.violation.key, finding.violation.title, record.workflow if record else None,
                record.execution_name if record else None, Outcome.BUSY,
                detail=f"in flight under {record.owner if record else 'another process'}"))
        if finding.planned.action is not Action.NEW:
            continue
        metrics.VIOLATIONS_DETECTED.inc()
        observe.violation_detected(finding.violation, finding.planned.episode)
        if finding.routed is None:
            metrics.VIOLATIONS_UNROUTED.inc()
            summary.outcomes.append(ChainOutcome(finding.violation.key, finding.violation.title, None, None,
                                                 Outcome.UNROUTED, detail="no route"))
        else:
            metrics.VIOLATIONS_ROUTED.inc()
    if chains:
        requests = [ChainRequest.for_violation(f.violation, f.routed.workflow if f.routed else None)
                    for f in chains]
        summary.outcomes.extend(await run_chains(requests, deps, chain_deployment=chain_deployment,
                                                 batch_deployment=batch_deployment))
    summary.counters["journal_resolved"] = len(closed.resolved)
    summary.close()
    await observe.cycle_artifact(summary.outcomes, summary.counters)
    await publish_health(deps, closed, changed=bool(chains or closed.resolved or scan.resolved),
                         cycle_started=cycle_started)
    metrics.mark_poll_succeeded()
    log.info("cycle: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.counters.items())))
    return summary
