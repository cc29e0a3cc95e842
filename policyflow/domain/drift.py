"""Drift between clusters (pure): the same failure in one cluster and not in another.

A violation is compared across clusters by what it is about as people name it: policy, rule, and the
resource's kind, namespace and name (never its uid, which differs between clusters). Failing in
``prod`` and not in ``staging`` is a fix that was never promoted; the other way round, a change
that broke staging first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policyflow.domain.model import Violation

#: (policy, rule, resource kind, namespace, name).
Subject = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Drift:
    """One subject failing in some of the compared clusters and not in the others."""

    policy: str
    rule: str
    kind: str
    namespace: str
    name: str
    failing: tuple[str, ...]
    not_failing: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "rule": self.rule, "kind": self.kind, "namespace": self.namespace,
                "name": self.name, "failing": list(self.failing), "not_failing": list(self.not_failing)}


def subject(violation: Violation) -> Subject:
    r = violation.resource
    return (violation.policy, violation.rule, r.kind, r.namespace or "", r.name)


def drift(failing: Mapping[str, Iterable[Violation]]) -> list[Drift]:
    """Every subject failing in some clusters of ``failing`` (cluster -> its failing violations, for
    the clusters that could be read) but not all; sorted by policy, rule, namespace, kind, name."""
    clusters = tuple(failing)
    where: dict[Subject, set[str]] = {}
    for cluster, violations in failing.items():
        for violation in violations:
            where.setdefault(subject(violation), set()).add(cluster)
    rows = []
    for (policy, rule, kind, namespace, name), seen in where.items():
        if len(seen) < len(clusters):
            rows.append(Drift(policy, rule, kind, namespace, name,
                              tuple(c for c in clusters if c in seen), tuple(c for c in clusters if c not in seen)))
    return sorted(rows, key=lambda d: (d.policy, d.rule, d.namespace, d.kind, d.name))
