"""Normalise PolicyReport / ClusterPolicyReport / Report / ClusterReport objects into violations.

Reports arrive as decoded JSON. Their CRDs validate little (only ``results[].policy`` is required and
many fields are free-form), so parsing never trusts a field's presence or type: a result it cannot use
is skipped with a one-line problem that names the report and the field, and the rest of the report is
still read.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyflow.domain.gatekeeper import ParsedConstraint, parse_constraint
from policyflow.domain.model import ReportKind, ReportRef, ResourceRef, ResultKind, Source, Violation

_RESULT_KINDS = {k.value: k for k in ResultKind}
_NON_VIOLATIONS = {"pass", "skip"}


@dataclass(slots=True)
class ParsedReport:
    """The violations of one report, plus what was wrong with the parts that could not be read."""

    ref: ReportRef
    uid: str
    resource_version: str
    annotations: dict[str, str]
    violations: list[Violation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    return None


def _resource_from(obj: Any, default_namespace: str | None) -> ResourceRef | None:
    """A ResourceRef from an ObjectReference-like mapping; None when it names nothing."""
    if not isinstance(obj, Mapping):
        return None
    name = _text(obj.get("name"))
    kind = _text(obj.get("kind"))
    if not name or not kind:
        return None
    return ResourceRef(
        api_version=_text(obj.get("apiVersion")) or "",
        kind=kind,
        name=name,
        namespace=_text(obj.get("namespace")) or default_namespace,
        uid=_text(obj.get("uid")),
    )


def _report_subject(report: Mapping[str, Any], namespace: str | None) -> ResourceRef | None:
    """The resource a per-resource report is about: ``scope``, else its (single) owner."""
    scope = _resource_from(report.get("scope"), namespace)
    if scope is not None:
        return scope
    metadata = report.get("metadata")
    owners = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    if isinstance(owners, list) and owners:
        return _resource_from(owners[0], namespace)
    return None


def _result_resources(result: Mapping[str, Any], namespace: str | None) -> list[ResourceRef]:
    # The pinned openreports CRD (v1alpha1, what Kyverno writes) keeps ``resources``; newer
    # openreports drafts call the same list ``subjects``. Accept either.
    listed = result.get("resources")
    if listed is None:
        listed = result.get("subjects")
    if not isinstance(listed, list):
        return []
    found = (_resource_from(item, namespace) for item in listed)
    return [r for r in found if r is not None]


def parse_report(kind: ReportKind, report: Mapping[str, Any]) -> ParsedReport:
    """Every non-passing result in ``report`` as a :class:`Violation` (any result kind, unfiltered)."""
    metadata = report.get("metadata") if isinstance(report.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    name = _text(metadata.get("name")) or "<unnamed>"
    namespace = _text(metadata.get("namespace")) if kind.namespaced else None
    ref = ReportRef(kind=kind, name=name, namespace=namespace)
    raw_annotations = metadata.get("annotations")
    annotations = (
        {str(k): str(v) for k, v in raw_annotations.items()} if isinstance(raw_annotations, Mapping) else {}
    )
    parsed = ParsedReport(
        ref=ref,
        uid=_text(metadata.get("uid")) or "",
        resource_version=_text(metadata.get("resourceVersion")) or "",
        annotations=annotations,
    )
    results = report.get("results")
    if results is None:
        return parsed
    if not isinstance(results, list):
        parsed.problems.append(f"{ref}: results is {type(results).__name__}, not a list; skipped")
        return parsed
    subject = _report_subject(report, namespace)
    for index, result in enumerate(results):
        parsed.violations.extend(_violations_of(ref, parsed, subject, index, result))
    return parsed


def _violations_of(
    ref: ReportRef, parsed: ParsedReport, subject: ResourceRef | None, index: int, result: Any
) -> Iterator[Violation]:
    where = f"{ref}: results[{index}]"
    if not isinstance(result, Mapping):
        parsed.problems.append(f"{where} is not an object; skipped")
        return
    outcome = _text(result.get("result"))
    if outcome in _NON_VIOLATIONS:
        return
    if outcome not in _RESULT_KINDS:
        parsed.problems.append(
            f"{where}.result is {outcome!r}, not one of pass|fail|warn|error|skip; skipped"
        )
        return
    policy = _text(result.get("policy"))
    if not policy:
        parsed.problems.append(f"{where}.policy is missing; skipped")
        return
    resources = _result_resources(result, ref.namespace) or ([subject] if subject else [])
    if not resources:
        parsed.problems.append(f"{where} names no resource (no scope, resources or subjects); skipped")
        return
    timestamp = result.get("timestamp")
    seconds = timestamp.get("seconds") if isinstance(timestamp, Mapping) else None
    severity = _text(result.get("severity"))
    for resource in resources:
        yield Violation(
            report=ref,
            report_uid=parsed.uid,
            resource=resource,
            policy=policy,
            rule=_text(result.get("rule")) or "",
            result=_RESULT_KINDS[outcome],
            message=_text(result.get("message")) or _text(result.get("description")) or "",
            severity=severity.lower() if severity else None,
            category=_text(result.get("category")),
            source=_text(result.get("source")),
            timestamp=seconds if isinstance(seconds, int) else None,
        )


def _matches_any(value: str | None, patterns: Iterable[str]) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class ViolationFilter:
    """Which violations policyflow acts on. Empty include lists mean "all"; patterns are globs."""

    namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    results: frozenset[ResultKind] = frozenset({ResultKind.FAIL})
    severities: frozenset[str] = frozenset()
    cluster_reports: bool = True

    def wants_namespace(self, namespace: str | None) -> bool:
        """Whether reports in ``namespace`` (None: cluster-scoped reports) are read at all."""
        if namespace is None:
            return self.cluster_reports
        if self.namespaces and not _matches_any(namespace, self.namespaces):
            return False
        return not _matches_any(namespace, self.exclude_namespaces)

    @staticmethod
    def namespace_of(violation: Violation) -> str | None:
        """Where a violation is, for the namespace filters: its report's namespace, or for a Gatekeeper
        constraint (cluster-scoped, holding resources of every namespace) its resource's (None: a
        cluster-scoped resource, read with ``cluster_reports``)."""
        if violation.report.kind.source is Source.GATEKEEPER:
            return violation.resource.namespace
        return violation.report.namespace

    def wants(self, violation: Violation) -> bool:
        """Whether ``violation`` passes every filter."""
        if violation.result not in self.results:
            return False
        if not self.wants_namespace(self.namespace_of(violation)):
            return False
        if self.policies and not _matches_any(violation.policy, self.policies):
            return False
        return not self.severities or (violation.severity or "") in self.severities


def parse_source(kind: ReportKind, obj: Mapping[str, Any]) -> ParsedReport | ParsedConstraint:
    """A policy report, or a Gatekeeper constraint, as ``kind`` says: its violations, records and
    resourceVersion read the same way."""
    if kind.source is Source.GATEKEEPER:
        return parse_constraint(kind, obj)
    return parse_report(kind, obj)
