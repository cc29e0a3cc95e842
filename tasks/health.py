"""A cycle's lifecycle-journal work: mark the episodes that resolved, then (when the cycle changed
anything) publish the health figures: the ``policy-health`` artifact and the gauges."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from prefect.artifacts import acreate_markdown_artifact

from policyflow.chain.deps import Deps
from policyflow.domain.errors import PolicyflowError
from policyflow.domain.health import GroupBy, health
from policyflow.domain.health_render import render
from policyflow.domain.journal import Journal, Lifecycle, decode, to_resolve
from policyflow.scanning import Scan

log = logging.getLogger("policyflow.health")

#: The window of the artifact's table (``policyflow health --since`` picks any other).
ARTIFACT_WINDOW = timedelta(days=30)
ARTIFACT_KEY = "policy-health"


@dataclass(frozen=True, slots=True)
class Closed:
    """What the journal said before this cycle, and the lifecycles this cycle marked resolved."""

    before: Journal
    resolved: list[Lifecycle]


async def close_resolved(deps: Deps, scan: Scan) -> Closed:
    """Mark resolved, in the journal, every open episode whose violation this cycle no longer saw
    failing (its result went away, or Kyverno deleted the whole report). Only where the cycle looked:
    a namespace outside the filter, or another cluster's violation, is not resolved by not being read."""
    journal = await asyncio.to_thread(deps.journal.read)
    for problem in journal.problems:
        log.warning("%s", problem)
    failing = {f.violation.key for f in scan.findings}
    flt = deps.settings.violation_filter()
    in_scope = {key: lc.identity.cluster == deps.cluster and flt.wants_namespace(lc.identity.namespace or None)
                for key, lc in journal.lifecycles.items()}
    closing = to_resolve(journal, failing, in_scope=in_scope)
    now = deps.clock.stamp()
    for lifecycle in closing:
        assert lifecycle.latest is not None
        await asyncio.to_thread(deps.journal.resolved, lifecycle.key, lifecycle.latest.tag, now)
        log.info("%s/%s %s: resolved (episode %d)", lifecycle.identity.policy, lifecycle.identity.rule,
                 lifecycle.identity.resource, len(lifecycle.episodes))
    return Closed(journal, closing)


async def publish_health(deps: Deps, *, changed: bool, cycle_started: datetime) -> Journal:
    """Read the journal as this cycle left it; prune it; when the cycle changed anything, write the
    ``policy-health`` artifact (keyed: the Artifacts page keeps every version, a trend over runs)."""
    try:
        shards = await asyncio.to_thread(deps.journal.read_shards)
    except PolicyflowError as exc:
        log.warning("no health figures this cycle: the lifecycle journal cannot be read (%s)", exc)
        return Journal()
    journal = decode(shards.values())
    now = deps.clock.now()
    await asyncio.to_thread(deps.journal.prune, shards, now=now,
                            retention=timedelta(days=deps.settings.journal_retention_days))
    if changed:
        table = health(journal.lifecycles.values(), now=now, window=ARTIFACT_WINDOW, by=GroupBy.RULE,
                       flip_window=deps.settings.flip_window)
        await acreate_markdown_artifact(markdown=render(table, "markdown"), key=ARTIFACT_KEY,
                                        description="Policy health over the last 30 days (policyflow health)")
    return journal
