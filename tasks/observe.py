"""What policyflow tells Prefect about its work: events (for automations), artifacts (for the UI), and
the global concurrency limit that keeps a storm of violations from flooding Testkube."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import concurrency
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.variables import Variable

from policyflow.domain.digest import FailureDigest
from policyflow.domain.ledger import Record
from policyflow.domain.markdown import escape, execution_markdown
from policyflow.domain.model import Violation
from policyflow.domain.outcome import ChainOutcome

log = logging.getLogger("policyflow.observe")

TESTKUBE_LIMIT = "policyflow-testkube"
EVENT_DETECTED = "policyflow.violation.detected"
EVENT_STARTED = "policyflow.test.started"
EVENT_FINISHED = "policyflow.test.finished"
#: The Prefect Variable that holds the clusters the last cycle found down, whichever process ran it
#: (each served poll runs in a process of its own).
CLUSTERS_DOWN = "policyflow-clusters-down"


def _resource(key: str, title: str, policy: str, rule: str, namespace: str | None, cluster: str) -> dict[str, str]:
    """The event's resource labels. ``policyflow.cluster`` is there for every cluster (``default``
    too), so an automation can match one cluster's events without knowing how keys are made."""
    return {
        "prefect.resource.id": f"policyflow.violation.{key}",
        "prefect.resource.name": title,
        "policyflow.policy": policy,
        "policyflow.rule": rule,
        "policyflow.namespace": namespace or "",
        "policyflow.cluster": cluster,
    }


def violation_detected(violation: Violation, episode: int) -> None:
    """Emit ``policyflow.violation.detected``."""
    emit_event(
        EVENT_DETECTED,
        resource=_resource(violation.key, violation.title, violation.policy, violation.rule,
                           violation.resource.namespace, violation.cluster),
        payload={"episode": episode, "severity": violation.severity, "report": str(violation.report),
                 "message": violation.message[:1000]},
    )


def _emit_test_event(name: str, record: Record, *, namespace: str | None, cluster: str, url: str | None = None,
                     digest: FailureDigest | None = None) -> None:
    """Emit ``policyflow.test.started`` / ``policyflow.test.finished`` (status in the resource labels,
    so an automation can match ``policyflow.status: failed`` without code)."""
    resource = _resource(record.key, f"{record.policy}/{record.rule} {record.resource}", record.policy,
                         record.rule, namespace, cluster)
    resource["policyflow.status"] = record.status.value
    resource["policyflow.workflow"] = record.workflow or ""
    emit_event(
        name,
        resource=resource,
        payload={"execution": record.execution, "execution_name": record.execution_name,
                 "episode": record.episode, "status": record.status.value, "url": url,
                 **({"failure": digest.payload()} if digest is not None else {})},
    )


class PrefectObserver:
    """What a chain tells Prefect: ``policyflow.test.*`` events (automations match on them) and the
    violation run's artifact (the chain's :class:`~policyflow.chain.deps.Observer`)."""

    def test_started(self, record: Record, *, namespace: str | None, cluster: str, url: str | None) -> None:
        _emit_test_event(EVENT_STARTED, record, namespace=namespace, cluster=cluster, url=url)

    def test_finished(self, record: Record, *, namespace: str | None, cluster: str, url: str | None,
                      digest: FailureDigest | None = None) -> None:
        _emit_test_event(EVENT_FINISHED, record, namespace=namespace, cluster=cluster, url=url, digest=digest)

    async def violation_artifact(self, violation: Violation, record: Record, *, url: str | None,
                                 digest: FailureDigest | None = None) -> None:
        """The markdown artifact of a violation's run: the Testkube execution, its result, and (when
        the test did not pass) why: the failing step, its error, the log's last lines."""
        page = execution_markdown(violation, record, url=url)
        if digest is not None:
            page += "\n" + digest.markdown(url)
        await acreate_markdown_artifact(
            markdown=page,
            key=f"violation-{violation.key}",
            description=f"Testkube execution for {escape(violation.title)}",
        )


async def cycle_artifact(outcomes: Sequence[ChainOutcome], counters: dict[str, int], *,
                         clusters: Sequence[tuple[str, str | None]] = (), key: str = "policy-watch-cycle") -> None:
    """The table artifact of a poll run (keyed, so the Artifacts page keeps its versions).
    ``clusters``, with several: each cluster's name and why it was down (None: up), said in the
    description, so the page shows which clusters this cycle could see before any row is read."""
    rows: list[dict[str, Any]] = [
        {"violation": o.violation, "workflow": o.workflow or "", "execution": o.execution or "",
         "status": o.status.value, "duration_s": o.duration_s, "detail": o.detail}
        for o in outcomes
    ]
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counters.items()))
    if len(clusters) > 1:
        summary = clusters_line(clusters) + "; " + summary
    await acreate_table_artifact(table=rows or [{"violation": "(nothing new)"}], key=key,
                                 description=f"One detection cycle: {summary}")


def clusters_line(clusters: Sequence[tuple[str, str | None]]) -> str:
    """``clusters: default up, staging DOWN (why)``: each cluster as this cycle saw it."""
    return "clusters: " + ", ".join(f"{name} up" if down is None else f"{name} DOWN ({escape(down)})"
                                    for name, down in clusters)


async def clusters_found_down() -> frozenset[str]:
    """The clusters the last cycle found down: the next cycle tries each of them once, without
    retries. Empty when that cannot be read: each is then tried with every retry, as always."""
    try:
        value: object = await Variable.aget(CLUSTERS_DOWN, default=[])
    except httpx.HTTPError as exc:
        log.debug("variable %s not read (%s): every cluster gets every retry", CLUSTERS_DOWN, exc)
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()


async def remember_clusters_down(down: frozenset[str], *, before: frozenset[str]) -> None:
    """Keep the clusters this cycle found down for the next one: one write, only when they changed."""
    if down == before:
        return
    try:
        await Variable.aset(CLUSTERS_DOWN, sorted(down), tags=["policyflow"], overwrite=True)
    except httpx.HTTPError as exc:
        log.warning("variable %s not written (%s): the next cycle tries every cluster with every retry",
                    CLUSTERS_DOWN, exc)


#: (Prefect API, size) of the limit this process last made sure of.
_ensured: tuple[str, int] | None = None


async def ensure_testkube_limit(limit: int) -> None:
    """Create the global concurrency limit on Testkube calls if it is missing; keep its size in step.

    Once per process (per API and size): run_chains calls this for every cycle, and watch mode for
    every hand-over, once a second; the limit does not come and go on its own.
    """
    global _ensured
    wanted = (str(PREFECT_API_URL.value()), limit)
    if wanted != _ensured:
        await _ensure_testkube_limit(limit)
        _ensured = wanted


async def _ensure_testkube_limit(limit: int) -> None:
    async with get_client() as client:
        try:
            existing = await client.read_global_concurrency_limit_by_name(TESTKUBE_LIMIT)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=TESTKUBE_LIMIT, limit=limit, active=True)
            )
            log.info("created global concurrency limit %s=%d", TESTKUBE_LIMIT, limit)
            return
        if existing.limit != limit:
            await client.update_global_concurrency_limit(
                TESTKUBE_LIMIT, GlobalConcurrencyLimitUpdate(limit=limit)
            )


@asynccontextmanager
async def holding_testkube_slots(occupy: int = 1) -> AsyncIterator[None]:
    """Hold ``occupy`` slots of the Testkube limit (a no-op when the limit does not exist)."""
    async with concurrency(TESTKUBE_LIMIT, occupy=occupy, strict=False):
        yield
