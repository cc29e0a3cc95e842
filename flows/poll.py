"""``policy-watch``: one polling cycle. Find the new failures, run each one's chain, say what happened.

(The flow and its deployment keep the name ``policy-watch`` that schedules and automations know; the
module says what it does: it polls. Watch mode, which follows reports as they change, is
``flows/watching.py``.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from prefect import flow

from flows.dispatch import ChainRequest, run_chains
from policyflow import bootstrap, metrics
from policyflow.chain.deps import Deps
from policyflow.domain.decisions import unfinished_outcome
from policyflow.domain.errors import PolicyflowError, UnreachableError
from policyflow.domain.ledger import Action
from policyflow.domain.outcome import ChainOutcome, count_statuses
from policyflow.domain.status import Outcome
from tasks import observe
from tasks.detect import detect_violations, record_resolved
from tasks.health import Closed, close_resolved, publish_health

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
    """The cycle itself, with its dependencies given (the flow's body): every configured cluster's
    part at once, each on its own (a cluster that is down, slow or refusing is that cluster's
    outcome, never a delay or a halt of the others'), then the health figures from the one journal."""
    started, cycle_started = time.monotonic(), deps.clock.now()
    if len(deps.clusters) > 1:
        # Made sure of once, before the clusters' parts would race to create it (once per process).
        await observe.ensure_testkube_limit(deps.settings.testkube_concurrency)
    # With several clusters, one found down by the last cycle (of whichever process) is tried once, so
    # a cluster that stays down holds each cycle's end for one try, not for the whole retry policy.
    found_down = await observe.clusters_found_down() if len(deps.clusters) > 1 else frozenset()
    parts = await asyncio.gather(*(_cluster_cycle(c, chain_deployment, batch_deployment,
                                                  once=c.cluster in found_down) for c in deps.clusters))
    metrics.POLL_DURATION.observe(time.monotonic() - started)
    summary = CycleSummary()
    for part in parts:
        for name, value in part.counters.items():
            summary.counters[name] = summary.counters.get(name, 0) + value
        summary.outcomes.extend(part.outcomes)
        summary.problems.extend(part.problems)
    summary.counters["clusters_down"] = sum(1 for part in parts if not part.up)
    seen = [(cluster.cluster, part.down) for cluster, part in zip(deps.clusters, parts, strict=True)]
    if len(deps.clusters) > 1:
        await observe.remember_clusters_down(frozenset(name for name, why in seen if why is not None),
                                             before=found_down)
    summary.close()
    await observe.cycle_artifact(summary.outcomes, summary.counters, clusters=seen)
    changed = any(part.changed for part in parts)
    unchanged = parts[0].closed if len(parts) == 1 and not changed else None
    await publish_health(deps, unchanged, changed=changed, cycle_started=cycle_started)
    metrics.mark_poll_succeeded()
    log.info("cycle: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.counters.items())))
    return summary


@dataclass
class _ClusterPart(CycleSummary):
    """One cluster's part of a cycle."""

    up: bool = True
    #: Why it was down (None while up).
    down: str | None = None
    changed: bool = False
    #: The journal as its cluster's part read it (reused when nothing changed anywhere).
    closed: Closed | None = None


async def _cluster_cycle(deps: Deps, chain_deployment: str | None, batch_deployment: str | None, *,
                         once: bool = False) -> _ClusterPart:
    """Detect, resolve and run one cluster's chains. A cluster that cannot be read within
    ``cluster_timeout`` (after the retries) is reported down: one outcome and one problem line, its
    violations left as they are (nothing resolved while it cannot be seen) for the cycle after it
    answers again. ``once``: a single try, no retries (it was down at the last cycle)."""
    prefix = "" if len(deps.clusters) == 1 else f"cluster {deps.cluster}: "
    try:
        scan = await asyncio.wait_for(detect_violations(deps, once=once),
                                      timeout=deps.settings.cluster_timeout)
    except (PolicyflowError, TimeoutError) as exc:
        if len(deps.clusters) == 1:
            raise  # one cluster: its outage is the cycle's, as it always was
        metrics.CLUSTER_UP.labels(cluster=deps.cluster).set(0)
        reason = exc if isinstance(exc, PolicyflowError) else UnreachableError(
            f"no answer within {deps.settings.cluster_timeout:g} s")
        down = replace(unfinished_outcome("", f"cluster {deps.cluster}", None, reason), halt=False)
        log.warning("cluster %s is down this cycle: %s; its violations wait for it", deps.cluster, down.detail)
        return _ClusterPart(outcomes=[down], problems=[f"{prefix}down: {down.detail}"], up=False, down=down.detail)
    metrics.CLUSTER_UP.labels(cluster=deps.cluster).set(1)
    if scan.resolved:
        await record_resolved(deps, scan.resolved)
    closed = await close_resolved(deps, scan)
    part = _ClusterPart(counters=scan.counters, problems=[prefix + p for p in scan.problems])
    chains = [f for f in scan.findings if f.needs_chain]
    for finding in scan.findings:
        if finding.planned.action is Action.BUSY:
            # In flight under another live process: not this cycle's to run, but not done either.
            record = finding.planned.record
            part.outcomes.append(ChainOutcome(
                finding.violation.key, finding.violation.title, record.workflow if record else None,
                record.execution_name if record else None, Outcome.BUSY,
                detail=f"in flight under {record.owner if record else 'another process'}"))
        if finding.planned.action is not Action.NEW:
            continue
        metrics.VIOLATIONS_DETECTED.inc()
        observe.violation_detected(finding.violation, finding.planned.episode)
        if finding.routed is None:
            metrics.VIOLATIONS_UNROUTED.inc()
            part.outcomes.append(ChainOutcome(finding.violation.key, finding.violation.title, None, None,
                                              Outcome.UNROUTED, detail="no route"))
        else:
            metrics.VIOLATIONS_ROUTED.inc()
    if chains:
        requests = [ChainRequest.for_violation(f.violation, f.routed.workflow if f.routed else None)
                    for f in chains]
        part.outcomes.extend(await run_chains(requests, deps, chain_deployment=chain_deployment,
                                              batch_deployment=batch_deployment))
    part.counters["journal_resolved"] = len(closed.resolved)
    part.changed = bool(chains or closed.resolved or scan.resolved)
    part.closed = closed
    return part
