"""The domain vocabulary: report kinds, the resources they describe, and violations.

Everything here is pure data: no client, no I/O. A :class:`Violation` is one failing result of one
policy rule for one resource, normalised from either report group (wgpolicyk8s.io or openreports.io)
or from an OPA Gatekeeper constraint's audit status (:mod:`policyflow.domain.gatekeeper`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Source(StrEnum):
    """Where violations come from: the ``sources`` setting's values."""

    #: Policy reports: the wgpolicyk8s.io and openreports.io kinds (:data:`REPORT_KINDS`), as Kyverno writes them.
    KYVERNO = "kyverno"
    #: OPA Gatekeeper constraints (``constraints.gatekeeper.sh``), read for their audit status.
    GATEKEEPER = "gatekeeper"


#: The API group of every Gatekeeper constraint kind (one CRD per ConstraintTemplate).
GATEKEEPER_GROUP = "constraints.gatekeeper.sh"


@dataclass(frozen=True, slots=True)
class ReportKind:
    """A custom resource that policyflow reads violations from and writes records on: one of
    :data:`REPORT_KINDS`, or a Gatekeeper constraint kind (:func:`policyflow.domain.gatekeeper.constraint_kind`)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def source(self) -> Source:
        """Which source this kind belongs to."""
        return Source.GATEKEEPER if self.group == GATEKEEPER_GROUP else Source.KYVERNO


POLICY_REPORT = ReportKind("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports", True)
CLUSTER_POLICY_REPORT = ReportKind(
    "wgpolicyk8s.io", "v1alpha2", "ClusterPolicyReport", "clusterpolicyreports", False
)
OPENREPORTS_REPORT = ReportKind("openreports.io", "v1alpha1", "Report", "reports", True)
OPENREPORTS_CLUSTER_REPORT = ReportKind("openreports.io", "v1alpha1", "ClusterReport", "clusterreports", False)

#: Every report kind policyflow reads. Kyverno writes the wgpolicyk8s.io pair by default and the
#: openreports.io pair instead when its reports controller runs with --openreportsEnabled.
REPORT_KINDS: tuple[ReportKind, ...] = (
    POLICY_REPORT,
    CLUSTER_POLICY_REPORT,
    OPENREPORTS_REPORT,
    OPENREPORTS_CLUSTER_REPORT,
)


def report_kind_named(kind: str) -> ReportKind:
    """The report kind called ``kind`` (``PolicyReport``, ``ClusterReport``, ...); ValueError if none."""
    for candidate in REPORT_KINDS:
        if candidate.kind.lower() == kind.lower() or candidate.plural == kind.lower():
            return candidate
    names = ", ".join(k.kind for k in REPORT_KINDS)
    raise ValueError(f"unknown report kind {kind!r}: use one of {names}")


class ResultKind(StrEnum):
    """The values of ``results[].result`` that can make a violation (``pass``/``skip`` never do)."""

    FAIL = "fail"
    ERROR = "error"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class ReportRef:
    """Where a report lives: enough to GET or PATCH it again."""

    kind: ReportKind
    name: str
    namespace: str | None = None

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind.kind} {where}"


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """The Kubernetes object a result is about (the report's ``scope``, or a result's resource)."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}/{where}{self.name}" if not where else f"{where}{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Violation:
    """One non-passing result of one policy rule for one resource, as a report shows it now.

    ``key`` is the violation's identity: it depends only on the cluster, the resource (including its
    uid, so a deleted and re-created resource is a new violation), the policy and the rule. It does
    not change when Kyverno re-scans (new timestamps, reordered results, reworded messages).
    """

    report: ReportRef
    report_uid: str
    resource: ResourceRef
    policy: str
    rule: str
    result: ResultKind
    message: str = ""
    severity: str | None = None
    category: str | None = None
    source: str | None = None
    timestamp: int | None = None
    #: The configured cluster whose report shows it (:data:`DEFAULT_CLUSTER` with one cluster).
    cluster: str = "default"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", violation_key(self.resource, self.policy, self.rule, self.cluster))

    @property
    def title(self) -> str:
        """How people name it: ``policy/rule namespace/Kind/name`` (also the flow-run name), with
        `` @cluster`` after it in any cluster but ``default``."""
        return f"{self.policy}/{self.rule} {self.resource}{cluster_suffix(self.cluster)}"

    def in_cluster(self, cluster: str) -> Violation:
        """The same failure as seen in ``cluster`` (its key includes the cluster unless ``default``)."""
        return self if cluster == self.cluster else replace(self, cluster=cluster)


#: The cluster of a single-cluster configuration, and of every record written before there were
#: several: its violations' keys, titles and tags are what they were before clusters existed.
DEFAULT_CLUSTER = "default"
#: A cluster name: a DNS label (it goes into tags, labels, run names and Testkube tags as it is).
CLUSTER_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def cluster_suffix(cluster: str) -> str:
    """What a title adds for ``cluster``: nothing for ``default``, else `` @<cluster>``."""
    return "" if cluster == DEFAULT_CLUSTER else f" @{cluster}"


#: Length of a key in hex characters: 64 bits, far from collisions at cluster scale, and short
#: enough for an annotation name (``policyflow.io/<key>``, name part at most 63 characters).
KEY_LENGTH = 16


def violation_key(resource: ResourceRef, policy: str, rule: str, cluster: str = DEFAULT_CLUSTER) -> str:
    """The stable identity of a violation: a hash of what it is about, never of when or how it is worded.

    The API version is reduced to its group so that a served-version change does not make every
    violation new again. The cluster is part of it only when it is not ``default``: the same
    resource name in two clusters is two violations, and every key (record, Testkube tag, journal
    entry) written before several clusters existed stays what it was.
    """
    parts: tuple[str, ...] = (
        resource.group,
        resource.kind,
        resource.namespace or "",
        resource.name,
        resource.uid or "",
        policy,
        rule,
    )
    if cluster != DEFAULT_CLUSTER:
        parts = (*parts, f"cluster={cluster}")
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:KEY_LENGTH]
