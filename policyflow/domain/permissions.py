"""The Kubernetes permissions policyflow uses: what ``policyflow check`` asks the cluster about, and what
the ClusterRoles in ``deployments/kubernetes`` grant (a test keeps the two equal)."""

from __future__ import annotations

from dataclasses import dataclass

from policyflow.domain.model import REPORT_KINDS


@dataclass(frozen=True, slots=True)
class Permission:
    """One verb on one resource, cluster-wide. ``required``: policyflow cannot work without it."""

    verb: str
    group: str
    resource: str
    required: bool
    why: str

    def __str__(self) -> str:
        group = self.group or "core"
        return f"{self.verb} {self.resource} ({group})"


def needed(resource_kinds: tuple[tuple[str, str], ...] = (("apps", "deployments"),)) -> list[Permission]:
    """Every permission policyflow uses. ``resource_kinds`` are (group, plural) of the failing resources
    it reads for their labels and generation (optional: without them it routes without labels and does
    not notice resource changes)."""
    permissions = []
    for kind in REPORT_KINDS:
        for verb, why in (("get", "re-read a report"), ("list", "find failures"), ("watch", "follow reports"),
                          ("patch", "record what was done")):
            permissions.append(Permission(verb, kind.group, kind.plural, True, why))
    permissions.append(Permission("create", "", "events", True, "tell kubectl describe"))
    for group, plural in resource_kinds:
        permissions.append(Permission("get", group, plural, False, "labels for routing"))
        permissions.append(Permission("list", group, plural, False, "notice changed resources"))
    return permissions
