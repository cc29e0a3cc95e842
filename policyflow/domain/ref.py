"""Which violation a run is for: one typed reference, used as the flow parameter schema of
``handle-violation`` (and the items of ``handle-violations``), as the run's identity for
de-duplication and history, and as the source of its run name and tags.

It names a failure as people and the Prefect UI do: a report, and a policy/rule in it, and (for a
report with several failing resources) the resource. It is not the violation itself: the chain
re-reads the report, so a reference can be typed by hand in the UI's Run form.

A Gatekeeper violation (``source: gatekeeper``) names its constraint as the report: ``report_kind`` is
the constraint kind (``K8sRequiredLabels``), ``report_name`` the constraint, and ``policy``/``rule``
are that kind and name again. Audit names no resource uid, so the resource's kind, namespace and name
are what choose among a constraint's resources (and what tell two runs of one constraint apart).
Parameters without ``source`` are Kyverno's, as they always were.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from policyflow.domain.gatekeeper import constraint_kind
from policyflow.domain.model import (
    CLUSTER_NAME,
    DEFAULT_CLUSTER,
    ReportKind,
    ReportRef,
    Source,
    Violation,
    cluster_suffix,
    report_kind_named,
)

#: What a constraint kind (a ConstraintTemplate's ``spec.crd.spec.names.kind``) can be called.
_CONSTRAINT_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")

#: Identity of a violation run: (report kind, report namespace, report name, policy, rule, resource
#: uid, cluster).
Identity = tuple[str, str, str, str, str, str, str]


class ViolationRef(BaseModel):
    """A failing ``policy``/``rule`` result in one report (and for one resource, when given)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_name: str = Field(min_length=1, description="The report's metadata.name")
    policy: str = Field(min_length=1, description="The policy of the failing result")
    rule: str = Field(min_length=1, description="The rule of the failing result")
    report_namespace: str | None = Field(default=None, description="The report's namespace (none for cluster reports)")
    source: Source = Field(default=Source.KYVERNO,
                           description="kyverno: a policy report; gatekeeper: an OPA Gatekeeper constraint")
    report_kind: str = Field(default="PolicyReport",
                             description="PolicyReport, ClusterPolicyReport, Report or ClusterReport; for gatekeeper "
                             "the constraint kind (K8sRequiredLabels)")
    resource_kind: str | None = Field(default=None, description="The failing resource's kind (names the run)")
    resource_name: str | None = Field(default=None, description="The failing resource's name (chooses among several)")
    resource_namespace: str | None = Field(default=None, description="The failing resource's namespace (names the run)")
    resource_uid: str | None = Field(default=None, description="The failing resource's uid (chooses among several)")
    cluster: str = Field(default=DEFAULT_CLUSTER, pattern=CLUSTER_NAME.pattern,
                         description="The configured cluster whose report it is (default: the only one)")

    @field_validator("report_kind")
    @classmethod
    def _known_kind(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("source") is Source.GATEKEEPER:
            if not _CONSTRAINT_KIND.fullmatch(value):
                raise ValueError(f"{value[:80]!r} is not a constraint kind (a template's kind, e.g. K8sRequiredLabels)")
            return value
        return report_kind_named(value).kind

    @classmethod
    def of(cls, violation: Violation) -> ViolationRef:
        """The reference of a violation a scan found."""
        return cls(
            report_name=violation.report.name,
            report_namespace=violation.report.namespace,
            source=violation.report.kind.source,
            report_kind=violation.report.kind.kind,
            policy=violation.policy,
            rule=violation.rule,
            resource_kind=violation.resource.kind,
            resource_name=violation.resource.name,
            resource_namespace=violation.resource.namespace,
            resource_uid=violation.resource.uid,
            cluster=violation.cluster,
        )

    @property
    def report(self) -> ReportRef:
        """Where the report lives (a cluster report, or a constraint, has no namespace, whatever was typed)."""
        kind: ReportKind = (constraint_kind(self.report_kind) if self.source is Source.GATEKEEPER
                            else report_kind_named(self.report_kind))
        return ReportRef(kind=kind, name=self.report_name,
                         namespace=self.report_namespace if kind.namespaced else None)

    @property
    def identity(self) -> Identity:
        """What makes two runs the same violation's: a run waiting with it is not submitted again,
        and history joins runs with records by it. A Gatekeeper resource has no uid: its kind,
        namespace and name stand in."""
        resource = self.resource_uid or ""
        if self.source is Source.GATEKEEPER and not resource:
            resource = f"{self.resource_kind or ''}/{self.resource_namespace or ''}/{self.resource_name or ''}"
        return (self.report_kind, self.report_namespace or "", self.report_name, self.policy, self.rule, resource,
                self.cluster)

    @property
    def title(self) -> str:
        """``policy/rule namespace/Kind/name``: the violation as people name it (the run's name), with
        `` @cluster`` after it in any cluster but ``default``."""
        where = self.resource_namespace or self.report_namespace or ""
        if self.resource_kind and self.resource_name:
            thing = f"{self.resource_kind}/{self.resource_name}"
        else:
            thing = self.report_name
        title = f"{self.policy}/{self.rule} {where}/{thing}" if where else f"{self.policy}/{self.rule} {thing}"
        return title + cluster_suffix(self.cluster)

    def tags(self, workflow: str | None = None) -> list[str]:
        """The run's Prefect tags: policy, namespace, cluster, and the routed workflow when known."""
        run_tags = [f"policy:{self.policy}", f"namespace:{self.resource_namespace or '-'}",
                    f"cluster:{self.cluster}"]
        if workflow:
            run_tags.append(f"workflow:{workflow}")
        return run_tags
