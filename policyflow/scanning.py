"""One read-only pass over the cluster: every failing result, and what to do about each.

Violations come from the sources the ``sources`` setting names (default: every one whose CRDs the
cluster serves): policy reports (Kyverno) and OPA Gatekeeper constraints, whose audit lists at most
``--constraint-violations-limit`` entries. A constraint's list that is truncated resolves nothing: an
entry missing from it may only have been cut (:attr:`Scan.unsure`).

This is the detection half of a cycle, shared by ``policyflow scan`` (which only prints it) and the
``policy-watch`` flow (which acts on it). It reads; it never writes. It imports no Prefect, so
``policyflow scan`` starts in well under a second.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from policyflow.clients.kube import KubeClient
from policyflow.domain.decisions import replan_after_route_change
from policyflow.domain.errors import ForbiddenError, NotFoundError, PolicyflowError
from policyflow.domain.gatekeeper import CONSTRAINTS_GROUP, CONSTRAINTS_VERSION, constraint_kinds, parse_constraint
from policyflow.domain.ledger import Action, Planned, Record, plan_report, read_records
from policyflow.domain.model import DEFAULT_CLUSTER, REPORT_KINDS, ReportKind, ReportRef, Source, Violation
from policyflow.domain.reports import ViolationFilter, parse_report
from policyflow.domain.routing import RoutedTest, RoutingTable
from policyflow.domain.status import Status
from policyflow.liveness import read_live_owners
from policyflow.settings import ClusterSpec, Settings

log = logging.getLogger(__name__)

_GLOB = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class Finding:
    """A violation in the cluster now, what its record says, and where it would be routed."""

    planned: Planned
    routed: RoutedTest | None

    @property
    def violation(self) -> Violation:
        return self.planned.violation

    @property
    def needs_chain(self) -> bool:
        """Whether a cycle runs the chain for it (a new episode, or one to resume)."""
        return self.planned.action in (Action.NEW, Action.RESUME) and self.routed is not None


@dataclass(slots=True)
class Scan:
    """What one pass found. ``counters`` are for logs, artifacts and metrics."""

    findings: list[Finding] = field(default_factory=list)
    #: Records whose violation is gone from the report: (report, record) pairs to mark resolved.
    resolved: list[tuple[ReportRef, Record]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped_kinds: list[str] = field(default_factory=list)
    reports: int = 0
    #: Keys of records whose violation a truncated constraint list does not show: it may be gone, or
    #: only cut from the list. Neither resolved nor known to fail: the journal keeps them open.
    unsure: set[str] = field(default_factory=set)
    #: Constraint kinds (policies) that could not be listed: nothing of theirs resolves this cycle.
    unread_policies: set[str] = field(default_factory=set)

    @property
    def counters(self) -> dict[str, int]:
        counts = Counter(f.planned.action.value for f in self.findings)
        counts["unrouted"] = sum(1 for f in self.findings if f.routed is None and
                                 f.planned.action in (Action.NEW, Action.RESUME))
        counts["reports"] = self.reports
        counts["violations"] = len(self.findings)
        counts["resolved"] = len(self.resolved)
        return dict(counts)


def _namespaces_to_list(flt: ViolationFilter) -> list[str | None]:
    """Per-namespace LISTs when the include list names plain namespaces (works with namespaced RBAC);
    one cluster-wide LIST otherwise."""
    if flt.namespaces and not any(_GLOB & set(ns) for ns in flt.namespaces):
        return list(flt.namespaces)
    return [None]


@dataclass(frozen=True, slots=True)
class _Read:
    """One report or constraint as read: the violations to plan and the records on it.

    ``complete``: a record whose violation is missing is resolved (False for a truncated constraint
    list). ``elsewhere``: keys of violations it shows outside the namespace filter (a constraint holds
    every namespace's): not this cycle's to plan, and not gone either.
    """

    ref: ReportRef
    violations: list[Violation]
    records: dict[str, Record]
    complete: bool = True
    elsewhere: frozenset[str] = frozenset()


def served_report_kinds(kube: KubeClient, scan: Scan) -> list[ReportKind]:
    """The report kinds whose CRDs are installed; a missing one is noted once, not an error."""
    served = []
    for kind in REPORT_KINDS:
        if kube.is_served(kind):
            served.append(kind)
        else:
            scan.skipped_kinds.append(kind.kind)
    return served


def scan_cluster(
    kube: KubeClient,
    settings: Settings,
    routing: RoutingTable,
    *,
    now: datetime,
    cluster: str = DEFAULT_CLUSTER,
) -> Scan:
    """Read every report of ``cluster`` (which ``kube`` reaches), diff it against the records on it,
    route what needs a chain. Which in-flight records belong to live processes is read once, from
    their Leases."""
    scan = Scan()
    live = read_live_owners(kube, settings.lease_namespace, now)
    flt = settings.violation_filter()
    pending: list[_Read] = []
    if not settings.sources or Source.KYVERNO in settings.sources:
        pending += _read_reports(kube, settings, flt, scan, cluster)
    if not settings.sources or Source.GATEKEEPER in settings.sources:
        pending += _read_constraints(kube, settings, flt, scan, cluster)
    # Resource changes matter only for violations already handled; look up generations for their
    # kinds only, with one metadata LIST per kind.
    generations: dict[str, int] | None = None
    if settings.track_resource_changes:
        kinds = {
            (v.resource.api_version, v.resource.kind)
            for read in pending
            for v in read.violations
            if (r := read.records.get(v.key)) is not None and r.generation is not None and r.status not in
            (Status.RESOLVED, Status.PENDING, Status.QUEUED, Status.RUNNING)
        }
        generations = {}
        for api_version, resource_kind in sorted(kinds):
            try:
                generations.update(kube.resource_generations(api_version, resource_kind,
                                                             page_size=settings.page_size))
            except (ForbiddenError, NotFoundError) as exc:
                scan.problems.append(f"cannot tell whether {resource_kind} objects changed: {exc}")
    for read in pending:
        _plan(kube, settings, routing, read, scan, generations=generations, now=now, live_owners=live)
    return scan


def _plan(kube: KubeClient, settings: Settings, routing: RoutingTable, read: _Read, scan: Scan, *,
          generations: dict[str, int] | None, now: datetime, live_owners: frozenset[str] | None) -> None:
    """Diff one report or constraint against its records into ``scan``: findings, resolved, unsure."""
    plan = plan_report(read.violations, read.records, generations=generations, now=now,
                       lease_seconds=settings.claim_lease, live_owners=live_owners)
    if read.complete:
        scan.resolved.extend((read.ref, r) for r in plan.resolved if r.key not in read.elsewhere)
    else:
        shown = {planned.violation.key for planned in plan.planned} | read.elsewhere
        scan.unsure.update(key for key in read.records if key not in shown)
    scan.findings.extend(_finding(kube, routing, planned, scan) for planned in plan.planned)


def _read_reports(kube: KubeClient, settings: Settings, flt: ViolationFilter, scan: Scan,
                  cluster: str) -> list[_Read]:
    """Every policy report (the Kyverno source) with something to plan."""
    served = served_report_kinds(kube, scan)
    if not served and Source.KYVERNO in settings.sources:
        scan.problems.append("sources names kyverno, but the cluster serves no policy report CRD (wgpolicyk8s.io, "
                             "openreports.io): install Kyverno's report CRDs, or drop kyverno from sources")
    pending = []
    for kind in served:
        namespaces = _namespaces_to_list(flt) if kind.namespaced else [None]
        if not kind.namespaced and not flt.cluster_reports:
            continue
        for namespace in namespaces:
            for item in kube.list_reports(kind, namespace=namespace, label_selector=settings.report_selector,
                                          page_size=settings.page_size):
                if (read := _report(kind, item, flt, scan, cluster)) is not None:
                    pending.append(read)
    return pending


def _report(kind: ReportKind, item: dict[str, Any], flt: ViolationFilter, scan: Scan, cluster: str) -> _Read | None:
    """One policy report as read (None: outside the namespace filter, or nothing to plan)."""
    parsed = parse_report(kind, item)
    if not flt.wants_namespace(parsed.ref.namespace):
        return None
    scan.reports += 1
    scan.problems.extend(parsed.problems)
    records, problems = read_records(parsed.annotations)
    scan.problems.extend(f"{parsed.ref}: {p}" for p in problems)
    wanted = [v.in_cluster(cluster) for v in parsed.violations if flt.wants(v)]
    if not wanted and not records:
        return None
    return _Read(parsed.ref, wanted, records)


def _read_constraints(kube: KubeClient, settings: Settings, flt: ViolationFilter, scan: Scan,
                      cluster: str) -> list[_Read]:
    """Every Gatekeeper constraint (the gatekeeper source) with something to plan.

    Constraint kinds are discovered each cycle (a new ConstraintTemplate adds one). Constraints are
    cluster-scoped and never selected by ``report_selector`` (a Kyverno label); the namespace filters
    apply to each violation's resource instead. A kind policyflow may not list is skipped with a
    problem, and its episodes stay open (:attr:`Scan.unread_policies`).
    """
    document = kube.discover(f"{CONSTRAINTS_GROUP}/{CONSTRAINTS_VERSION}")
    if document is None:
        if Source.GATEKEEPER in settings.sources:
            scan.problems.append(f"sources names gatekeeper, but the cluster serves no {CONSTRAINTS_GROUP}/"
                                 f"{CONSTRAINTS_VERSION}: install OPA Gatekeeper, or drop gatekeeper from sources")
        return []
    pending = []
    for kind in constraint_kinds(document):
        try:
            items = list(kube.list_reports(kind, page_size=settings.page_size))
        except ForbiddenError as exc:
            scan.unread_policies.add(kind.kind)
            scan.problems.append(f"{kind.kind} constraints not read: {exc}")
            continue
        for item in items:
            if (read := _constraint(kind, item, flt, scan, cluster)) is not None:
                pending.append(read)
    return pending


def _constraint(kind: ReportKind, item: dict[str, Any], flt: ViolationFilter, scan: Scan,
                cluster: str) -> _Read | None:
    """One constraint as read (None: nothing to plan). Its list may be cut (``complete`` False), and
    it holds every namespace's violations (the filter's others are ``elsewhere``)."""
    parsed = parse_constraint(kind, item)
    scan.reports += 1
    scan.problems.extend(parsed.problems)
    if parsed.truncated:
        scan.problems.append(f"{kind.kind} {parsed.ref.name}: audit listed {parsed.listed} of "
                             f"{parsed.total_violations} violations; missing entries are not resolved")
    records, problems = read_records(parsed.annotations)
    scan.problems.extend(f"{parsed.ref}: {p}" for p in problems)
    violations = [v.in_cluster(cluster) for v in parsed.violations]
    here = [v for v in violations if flt.wants_namespace(flt.namespace_of(v))]
    wanted = [v for v in here if flt.wants(v)]
    if not wanted and not records:
        return None
    elsewhere = frozenset(v.key for v in violations) - {v.key for v in here}
    return _Read(parsed.ref, wanted, records, complete=parsed.complete, elsewhere=elsewhere)


def _finding(kube: KubeClient, routing: RoutingTable, planned: Planned, scan: Scan) -> Finding:
    """A planned violation with its route: routed afresh when it may run (or ended in its own error,
    which runs again once its route changes), else the workflow its record names."""
    record = planned.record
    errored = planned.action is Action.HANDLED and record is not None and record.status is Status.ERROR
    if planned.action in (Action.NEW, Action.RESUME, Action.BUSY) or errored:
        routed = _route(kube, routing, planned.violation, scan)
        return Finding(planned=replan_after_route_change(planned, routed), routed=routed)
    if record is not None and record.workflow:
        return Finding(planned=planned,
                       routed=RoutedTest(route="recorded", workflow=record.workflow, config={}, tags={}))
    return Finding(planned=planned, routed=None)


def _route(kube: KubeClient, routing: RoutingTable, violation: Violation, scan: Scan) -> RoutedTest | None:
    labels: dict[str, str] | None = None
    if routing.needs_labels:
        labels = resource_labels(kube, violation, scan.problems)
    return routing.route(violation, labels)


def resource_labels(kube: KubeClient, violation: Violation, problems: list[str]) -> dict[str, str] | None:
    """The failing resource's labels (None when it cannot be read; the problem is noted)."""
    try:
        resource = kube.get_resource(violation.resource)
    except (ForbiddenError, NotFoundError) as exc:
        problems.append(f"{violation.title}: cannot read the resource's labels: {exc}")
        return None
    labels = (resource.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}



def scan_report(
    kube: KubeClient,
    settings: Settings,
    routing: RoutingTable,
    kind: ReportKind,
    item: dict[str, Any],
    *,
    now: datetime,
    live_owners: frozenset[str] | None,
    cluster: str = DEFAULT_CLUSTER,
) -> Scan:
    """What to do about one report or Gatekeeper constraint as a watch event shows it (no
    resource-change lookup: the periodic full cycle does that)."""
    scan = Scan()
    read_one = _constraint if kind.source is Source.GATEKEEPER else _report
    read = read_one(kind, item, settings.violation_filter(), scan, cluster)
    if read is not None:
        _plan(kube, settings, routing, read, scan, generations=None, now=now, live_owners=live_owners)
    return scan


def scan_spec(settings: Settings, spec: ClusterSpec, routing: RoutingTable, *, now: datetime) -> Scan:
    """Connect to one configured cluster (``spec`` of ``settings``), scan it with its own settings
    (namespace filters, target), and close the client: what read-only commands do per cluster."""
    own = settings.for_cluster(spec)
    kube = KubeClient.connect(**own.kube_options(), in_cluster=spec.in_cluster)
    try:
        return scan_cluster(kube, own, routing, now=now, cluster=spec.name)
    finally:
        kube.close()


def scan_specs(settings: Settings, routing: RoutingTable, *,
               now: datetime) -> tuple[list[tuple[str, Scan]], dict[str, str]]:
    """Every configured cluster scanned at once (read-only commands): (cluster, Scan) for those that
    answered, and why, by cluster, for those that did not; with one cluster its error is raised, as
    it always was. At once: a cluster that does not answer costs its own timeout, not the others'."""
    specs = settings.cluster_specs()
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = [(spec.name, pool.submit(scan_spec, settings, spec, routing, now=now)) for spec in specs]
    scans: list[tuple[str, Scan]] = []
    down: dict[str, str] = {}
    for name, future in futures:
        try:
            scans.append((name, future.result()))
        except PolicyflowError as exc:
            if len(specs) == 1:
                raise
            down[name] = str(exc)
    return scans, down
