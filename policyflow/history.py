"""``policyflow history``: recent violation runs from Prefect, joined with the records on the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import ValidationError

from policyflow.domain.ledger import Record
from policyflow.domain.ref import Identity, ViolationRef
from policyflow.domain.routing import RoutingTable
from policyflow.scanning import scan_specs
from policyflow.settings import Settings


@dataclass
class History:
    """Recent runs joined with their records, and the clusters that could not be read (their runs
    show no record; with one cluster an outage is an error, as before)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Why, by cluster name, for each cluster that did not answer.
    down: dict[str, str] = field(default_factory=dict)


def recent_history(settings: Settings, routing: RoutingTable, *, limit: int = 50) -> History:
    """One row per recent ``handle-violation`` run: the violation, the run's state and time, and the
    execution and outcome recorded on its report now, read from the run's own cluster (a ``cluster``
    column when several are configured: the same resource can be a violation in each)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["handle-violation"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
    several = len(settings.cluster_specs()) > 1
    history = History()
    records: dict[Identity, Record] = {}
    gone: dict[tuple[str, ...], Record] = {}
    scans, history.down = scan_specs(settings, routing, now=datetime.now(UTC))
    for cluster, scan in scans:
        for finding in scan.findings:
            if finding.planned.record is not None:
                records[ViolationRef.of(finding.violation).identity] = finding.planned.record
        for report, record in scan.resolved:
            where = (report.kind.kind, report.namespace or "", report.name, record.policy, record.rule)
            gone[(*where, cluster)] = record
    for run in runs:
        try:
            ref: ViolationRef | None = ViolationRef.model_validate(run.parameters.get("violation"))
        except ValidationError:
            ref = None  # a run of an older form
        found = None if ref is None else records.get(ref.identity) or gone.get((*ref.identity[:5], ref.cluster))
        row: dict[str, Any] = {"violation": run.name}
        if several:
            row["cluster"] = ref.cluster if ref is not None else "?"
        row.update({
            "run": run.state.name if run.state else "?",
            "started": run.start_time.strftime("%Y-%m-%d %H:%M:%S") if run.start_time else "-",
            "retries": max((run.run_count or 1) - 1, 0),
            "workflow": found.workflow if found else "-",
            "execution": (found.execution_name or found.execution) if found else "-",
            "outcome": found.status.value if found else "-",
            "episode": found.episode if found else "-",
        })
        history.rows.append(row)
    return history

