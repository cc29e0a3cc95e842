"""A cycle's lifecycle-journal work: mark the episodes that resolved, then (when the cycle changed
anything) publish the health figures: the ``policy-health`` artifact and the gauges."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from prefect.artifacts import acreate_markdown_artifact

from policyflow import metrics
from policyflow.chain.deps import Deps
from policyflow.domain.errors import PolicyflowError
from policyflow.domain.health import GroupBy, flips, health
from policyflow.domain.health_render import render
from policyflow.domain.journal import Journal, Lifecycle, decode, to_resolve
from policyflow.scanning import Scan

log = logging.getLogger("policyflow.health")

#: The window of the artifact's table (``policyflow health --since`` picks any other).
ARTIFACT_WINDOW = timedelta(days=30)
ARTIFACT_KEY = "policy-health"


@dataclass(frozen=True, slots=True)
class Closed:
    """What the journal said before this cycle (decoded, and its shards as read), and the lifecycles
    this cycle marked resolved."""

    before: Journal
    shards: dict[str, dict[str, str]] | None
    resolved: list[Lifecycle]


async def close_resolved(deps: Deps, scan: Scan) -> Closed:
    """Mark resolved, in the journal, every open episode whose violation this cycle no longer saw
    failing (its result went away, or Kyverno deleted the whole report). Only where the cycle looked:
    a namespace outside the filter, or another cluster's violation, is not resolved by not being read."""
    try:
        shards: dict[str, dict[str, str]] | None = await asyncio.to_thread(deps.journal.read_shards)
    except PolicyflowError as exc:
        log.warning("the lifecycle journal cannot be read (%s): nothing resolved in it this cycle", exc)
        return Closed(Journal(), None, [])
    journal = decode(shards.values() if shards else ())
    for problem in journal.problems:
        log.warning("%s", problem)
    failing = {f.violation.key for f in scan.findings} | scan.unsure  # unsure: maybe only cut from a list
    flt = deps.settings.violation_filter()
    in_scope = {key: lc.identity.cluster == deps.cluster and flt.wants_namespace(lc.identity.namespace or None)
                and lc.identity.policy not in scan.unread_policies for key, lc in journal.lifecycles.items()}
    closing = to_resolve(journal, failing, in_scope=in_scope)
    now, stamp = deps.clock.now(), deps.clock.stamp()
    for lifecycle in closing:
        latest = lifecycle.latest
        assert latest is not None
        await asyncio.to_thread(deps.journal.resolved, lifecycle.key, latest.tag, stamp)
        if latest.opened is not None:
            metrics.observe_resolved(scope_of(lifecycle), max((now - latest.opened).total_seconds(), 0.0))
        log.info("%s/%s %s: resolved (episode %d)", lifecycle.identity.policy, lifecycle.identity.rule,
                 lifecycle.identity.resource, len(lifecycle.episodes))
    return Closed(journal, shards, closing)


async def publish_health(deps: Deps, unchanged: Closed | None, *, changed: bool,
                         cycle_started: datetime) -> Journal:
    """The journal as this cycle left it (``unchanged``: as read before, when nothing wrote to it
    since; else read again); prune it; set the gauges; when the cycle changed anything, write the
    ``policy-health`` artifact (keyed: the Artifacts page keeps every version, a trend over runs)."""
    shards = unchanged.shards if unchanged is not None else None
    if shards is None:
        try:
            shards = await asyncio.to_thread(deps.journal.read_shards)
        except PolicyflowError as exc:
            log.warning("no health figures this cycle: the lifecycle journal cannot be read (%s)", exc)
            return Journal()
    journal = unchanged.before if unchanged is not None and unchanged.shards is not None else decode(shards.values())
    now = deps.clock.now()
    await asyncio.to_thread(deps.journal.prune, shards, now=now,
                            retention=timedelta(days=deps.settings.journal_retention_days))
    _publish_gauges(journal, now=now, cycle_started=cycle_started, flip_window=deps.settings.flip_window)
    if changed:
        table = health(journal.lifecycles.values(), now=now, window=ARTIFACT_WINDOW, by=GroupBy.RULE,
                       flip_window=deps.settings.flip_window)
        await acreate_markdown_artifact(markdown=render(table, "markdown"), key=ARTIFACT_KEY,
                                        description="Policy health over the last 30 days (policyflow health)")
    return journal


def scope_of(lifecycle: Lifecycle) -> metrics.Scope:
    """The metric labels of a violation: its policy, rule, namespace, workflow and cluster (never its
    resource)."""
    who = lifecycle.identity
    return metrics.Scope(policy=who.policy, rule=who.rule, namespace=who.namespace, workflow=who.workflow,
                         cluster=who.cluster)


def _publish_gauges(journal: Journal, *, now: datetime, cycle_started: datetime, flip_window: int) -> None:
    """Open violations by age, flip rates per scope (over each violation's last ``flip_window`` tested
    episodes), and the reopenings this cycle started (counted once: by the cycle they opened in)."""
    open_rows: list[metrics.OpenViolation] = []
    pairs: dict[metrics.Scope, list[int]] = {}
    for lifecycle in journal.lifecycles.values():
        scope, latest = scope_of(lifecycle), lifecycle.latest
        if latest is not None and lifecycle.is_open and latest.start is not None:
            open_rows.append(metrics.OpenViolation(scope, max((now - latest.start).total_seconds(), 0.0)))
        outcomes = [p for e in lifecycle.episodes if (p := e.test_passed) is not None][-flip_window:]
        flipped, compared = flips(outcomes)
        if compared:
            total = pairs.setdefault(scope, [0, 0])
            total[0] += flipped
            total[1] += compared
        for episode in lifecycle.reopenings():
            if episode.opened is not None and cycle_started <= episode.opened <= now:
                metrics.count_reopened(scope)
    metrics.set_open_violations(open_rows)
    metrics.set_flip_rates({scope: flipped / compared for scope, (flipped, compared) in pairs.items()})
