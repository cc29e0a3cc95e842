"""``policyflow history``: recent violation runs from Prefect, joined with the records on the reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import ValidationError

from policyflow.clients.kube import KubeClient
from policyflow.domain.ledger import Record
from policyflow.domain.ref import Identity, ViolationRef
from policyflow.domain.routing import RoutingTable
from policyflow.scanning import scan_cluster
from policyflow.settings import Settings


def recent_history(settings: Settings, routing: RoutingTable, *, limit: int = 50) -> list[dict[str, Any]]:
    """One row per recent ``handle-violation`` run: the violation, the run's state and time, and the
    execution and outcome recorded on its report now."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["handle-violation"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
    kube = KubeClient.connect(**settings.kube_options())
    try:
        scan = scan_cluster(kube, settings, routing, now=datetime.now(UTC))
    finally:
        kube.close()
    records: dict[Identity, Record] = {}
    for finding in scan.findings:
        if finding.planned.record is not None:
            records[ViolationRef.of(finding.violation).identity] = finding.planned.record
    gone: dict[tuple[str, str, str, str, str], Record] = {
        (report.kind.kind, report.namespace or "", report.name, record.policy, record.rule): record
        for report, record in scan.resolved
    }
    rows = []
    for run in runs:
        try:
            ref: ViolationRef | None = ViolationRef.model_validate(run.parameters.get("violation"))
        except ValidationError:
            ref = None  # a run of an older form
        record = None if ref is None else records.get(ref.identity) or gone.get(ref.identity[:5])
        rows.append({
            "violation": run.name,
            "run": run.state.name if run.state else "?",
            "started": run.start_time.strftime("%Y-%m-%d %H:%M:%S") if run.start_time else "-",
            "retries": max((run.run_count or 1) - 1, 0),
            "workflow": record.workflow if record else "-",
            "execution": (record.execution_name or record.execution) if record else "-",
            "outcome": record.status.value if record else "-",
            "episode": record.episode if record else "-",
        })
    return rows
