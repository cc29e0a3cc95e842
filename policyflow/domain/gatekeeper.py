"""Normalise OPA Gatekeeper constraints (their audit status) into violations.

What Gatekeeper writes, as read in open-policy-agent/gatekeeper at ``dd8507eb`` (v3.24.0-beta.0-70)
and open-policy-agent/frameworks at ``9a75fe2c``:

* Every ConstraintTemplate gets a cluster-scoped CRD in ``constraints.gatekeeper.sh`` (served as
  ``v1beta1`` and ``v1alpha1``), plural = lower-cased kind, categories ``constraint`` and
  ``constraints``, with a status subresource (frameworks ``constraint/pkg/client/crds/crds.go``,
  ``CreateCRD``). That is how :func:`constraint_kinds` finds them in discovery.
* Audit (gatekeeper ``pkg/audit/manager.go``, ``updateConstraintStatus``) sets ``status.auditTimestamp``
  (RFC 3339), ``status.totalViolations`` (all it found) and ``status.violations`` (``StatusViolation``:
  group, version, kind, name, namespace, message, enforcementAction, enforcementActions), and writes them
  with ``client.Status().Update``: through the status subresource, which ignores metadata, so the
  ``policyflow.io/<key>`` annotations policyflow writes on the constraint survive every audit.
* The list holds at most ``--constraint-violations-limit`` entries (default 20): the smallest by
  (group, version, kind, namespace, name, message, action), written largest first (``LimitQueue``,
  ``SVQueue.Less``). So an entry can drop out of a truncated list only because smaller ones appeared:
  absence from a truncated list says nothing (:attr:`ParsedConstraint.complete`).
* ``enforcementAction`` is ``deny``, ``dryrun`` or ``warn``, or ``scoped`` with the actions for the
  audit enforcement point in ``enforcementActions`` (gatekeeper ``pkg/util/enforcement_action.go``;
  frameworks ``constraint/pkg/client/client.go`` fills them in per result).

How a constraint maps onto :class:`~policyflow.domain.model.Violation`:

* ``policy`` is the constraint's kind (its template, e.g. ``K8sRequiredLabels``) and ``rule`` its name.
  Constraints are cluster-scoped, so (kind, name) is one constraint, and the title reads like Kyverno's
  ``policy/rule``.
* ``report`` points at the constraint itself (:func:`constraint_kind`), so the chain re-reads it like a
  report and writes its record into the constraint's ``metadata.annotations``.
* The resource never has a uid: audit does not report one. The key is therefore computed without it,
  always, and must stay so: a chain that looks the uid up (for labels, generation) keeps it beside the
  violation, never in ``violation.resource``, or the key would change with the lookup's success. The
  price: a resource deleted and re-created under the same name is the same violation to Gatekeeper
  sources.
* One violation per (constraint, resource): a template may report one resource several times (the
  requiredlabels template yields one message per label that fails its regex). Those entries merge: the
  messages, sorted and de-duplicated, joined with ``"; "``; the strongest action wins.
* ``deny`` and ``dryrun`` are :attr:`ResultKind.FAIL` (``dryrun`` is audit-only, the analogue of a
  Kyverno ``Audit`` policy, whose failures Kyverno reports as ``fail``); ``warn`` is
  :attr:`ResultKind.WARN`. Anything else is a problem, and the entry is skipped.
* ``severity``: the constraint's ``policyflow.io/severity`` annotation, else that label, else the common
  ``severity`` label; lower-cased. Gatekeeper itself has no severity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from policyflow.domain.model import (
    GATEKEEPER_GROUP,
    ReportKind,
    ReportRef,
    ResourceRef,
    ResultKind,
    Source,
    Violation,
)

CONSTRAINTS_GROUP = GATEKEEPER_GROUP
CONSTRAINTS_VERSION = "v1beta1"
CONSTRAINT_CATEGORY = "constraint"
SOURCE = Source.GATEKEEPER.value
SEVERITY_KEY = "policyflow.io/severity"
"""Annotation (or label) that gives a constraint's violations a severity; the ``severity`` label also works."""

#: What each action audit reports means; the order is the strength used when entries merge.
_ACTIONS: dict[str, ResultKind] = {"deny": ResultKind.FAIL, "dryrun": ResultKind.FAIL, "warn": ResultKind.WARN}
_STRENGTH = {ResultKind.WARN: 0, ResultKind.FAIL: 1}
_SCOPED = "scoped"


def constraint_kind(kind: str, *, version: str = CONSTRAINTS_VERSION) -> ReportKind:
    """The constraint kind ``kind`` (a template's kind) as a readable, cluster-scoped "report" kind."""
    if not kind:
        raise ValueError("a constraint kind needs a name")
    return ReportKind(CONSTRAINTS_GROUP, version, kind, kind.lower(), namespaced=False)


def constraint_kinds(resource_list: Mapping[str, Any]) -> list[ReportKind]:
    """The constraint kinds in an APIResourceList (``/apis/constraints.gatekeeper.sh/<version>``).

    Only resources in the ``constraint`` category count; subresources (``k8srequiredlabels/status``)
    and anything namespaced are left out. Plurals come from discovery, not from the lower-cased kind.
    """
    group, _, version = str(resource_list.get("groupVersion") or "").rpartition("/")
    if group != CONSTRAINTS_GROUP or not version:
        return []
    found = []
    for entry in resource_list.get("resources") or ():
        if not isinstance(entry, Mapping):
            continue
        name, kind = _text(entry.get("name")), _text(entry.get("kind"))
        categories = entry.get("categories")
        if not name or not kind or "/" in name or entry.get("namespaced") is not False:
            continue
        if isinstance(categories, list) and CONSTRAINT_CATEGORY in categories:
            found.append(ReportKind(CONSTRAINTS_GROUP, version, kind, name, namespaced=False))
    return found


@dataclass(slots=True)
class ParsedConstraint:
    """The violations of one constraint as its last audit listed them, plus what could not be read.

    ``complete`` is True only when the listed entries are every violation audit found and all of them
    could be read: only then does a violation missing from ``violations`` mean it is resolved.
    """

    ref: ReportRef
    uid: str
    resource_version: str
    annotations: dict[str, str]
    violations: list[Violation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    total_violations: int | None = None
    audit_timestamp: str | None = None
    complete: bool = False
    #: How many entries ``status.violations`` holds (before entries of one resource merge).
    listed: int = 0

    @property
    def audited(self) -> bool:
        """Whether an audit has written this constraint's status yet."""
        return self.audit_timestamp is not None

    @property
    def truncated(self) -> bool:
        """Whether audit found more violations than it listed (``--constraint-violations-limit``)."""
        return self.total_violations is not None and self.total_violations > self.listed


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _string_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def parse_constraint(kind: ReportKind, constraint: Mapping[str, Any]) -> ParsedConstraint:
    """Every violation in ``constraint``'s audit status, one per resource; never raises on bad status."""
    raw_metadata = constraint.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    ref = ReportRef(kind=kind, name=_text(metadata.get("name")) or "<unnamed>")
    annotations = _string_map(metadata.get("annotations"))
    labels = _string_map(metadata.get("labels"))
    parsed = ParsedConstraint(
        ref=ref,
        uid=_text(metadata.get("uid")) or "",
        resource_version=_text(metadata.get("resourceVersion")) or "",
        annotations=annotations,
    )
    status = constraint.get("status")
    if status is None:
        return parsed  # never audited: nothing known, so nothing complete
    if not isinstance(status, Mapping):
        parsed.problems.append(f"{ref}: status is {type(status).__name__}, not an object; skipped")
        return parsed
    parsed.audit_timestamp = _text(status.get("auditTimestamp"))
    total = status.get("totalViolations")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        parsed.total_violations = total
    elif parsed.audited:
        parsed.problems.append(f"{ref}: status.totalViolations is {total!r}, not a count")
    entries = status.get("violations", [])
    if not isinstance(entries, list):
        parsed.problems.append(f"{ref}: status.violations is {type(entries).__name__}, not a list; skipped")
        return parsed
    parsed.listed = len(entries)
    severity = annotations.get(SEVERITY_KEY) or labels.get(SEVERITY_KEY) or labels.get("severity")
    merged = _merge(ref, parsed.problems, entries)
    readable = merged.read == len(entries)
    for resource, (result, messages) in merged.by_resource.items():
        parsed.violations.append(
            Violation(
                report=ref,
                report_uid=parsed.uid,
                resource=resource,
                policy=kind.kind,
                rule=ref.name,
                result=result,
                message="; ".join(sorted(messages)),
                severity=severity.lower() if severity else None,
                source=SOURCE,
                timestamp=_epoch_seconds(parsed.audit_timestamp),
            )
        )
    parsed.violations.sort(key=lambda v: v.key)
    parsed.complete = (
        parsed.audited and readable and parsed.total_violations is not None
        and parsed.total_violations <= len(entries)
    )  # fmt: skip
    return parsed


@dataclass(slots=True)
class _Merged:
    read: int = 0  # how many entries could be read
    by_resource: dict[ResourceRef, tuple[ResultKind, set[str]]] = field(default_factory=dict)


class _Unusable(Exception):
    """One status entry policyflow cannot act on; the message says why."""


def _merge(ref: ReportRef, problems: list[str], entries: Iterable[Any]) -> _Merged:
    merged = _Merged()
    for index, entry in enumerate(entries):
        try:
            resource, result, message = _entry(entry)
        except _Unusable as exc:
            problems.append(f"{ref}: status.violations[{index}] {exc}; skipped")
            continue
        merged.read += 1
        known = merged.by_resource.get(resource)
        if known is None:
            merged.by_resource[resource] = (result, {message} if message else set())
            continue
        strongest = result if _STRENGTH[result] > _STRENGTH[known[0]] else known[0]
        merged.by_resource[resource] = (strongest, known[1] | ({message} if message else set()))
    return merged


def _entry(entry: Any) -> tuple[ResourceRef, ResultKind, str]:
    """The resource, result and message of one ``StatusViolation``; :class:`_Unusable` says why not."""
    if not isinstance(entry, Mapping):
        raise _Unusable("is not an object")
    kind, name, version = _text(entry.get("kind")), _text(entry.get("name")), _text(entry.get("version"))
    if not kind or not name or not version:
        raise _Unusable("lacks kind, name or version")
    group = _text(entry.get("group")) or ""
    resource = ResourceRef(
        api_version=f"{group}/{version}" if group else version,
        kind=kind,
        name=name,
        namespace=_text(entry.get("namespace")) or None,
    )
    return resource, _result(entry), _text(entry.get("message")) or ""


def _result(entry: Mapping[str, Any]) -> ResultKind:
    action = _text(entry.get("enforcementAction"))
    if action in _ACTIONS:
        return _ACTIONS[action]
    if action != _SCOPED:
        raise _Unusable(f"has enforcementAction {action!r}, not one of deny|dryrun|warn|scoped")
    scoped = entry.get("enforcementActions")
    actions = [a for a in scoped if isinstance(a, str)] if isinstance(scoped, list) else []
    results = [_ACTIONS[a] for a in actions if a in _ACTIONS]
    if not results:
        raise _Unusable(f"is scoped, but its enforcementActions {scoped!r} name none of deny|dryrun|warn")
    return max(results, key=_STRENGTH.__getitem__)


def _epoch_seconds(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
