"""The Kubernetes permissions policyflow uses: what ``policyflow check`` asks the cluster about, and what
the ClusterRoles in ``deployments/kubernetes`` grant (a test keeps the two equal).

Those on Gatekeeper constraints are optional: a Kyverno-only cluster needs none of them (``check``
requires them only when ``sources`` names gatekeeper)."""

from __future__ import annotations

from dataclasses import dataclass

from policyflow.domain.model import GATEKEEPER_GROUP, REPORT_KINDS


@dataclass(frozen=True, slots=True)
class Permission:
    """One verb on one resource, cluster-wide (``own_namespace``: only in policyflow's own namespace,
    ``lease_namespace``). ``required``: policyflow cannot work without it."""

    verb: str
    group: str
    resource: str
    required: bool
    why: str
    own_namespace: bool = False
    #: The setting that names that namespace (Leases and the journal may live apart).
    namespace_setting: str = "lease_namespace"

    def __str__(self) -> str:
        group = self.group or "core"
        where = ", own namespace" if self.own_namespace else ""
        return f"{self.verb} {self.resource} ({group}{where})"


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
    # Gatekeeper makes one constraint kind per ConstraintTemplate: only the group's wildcard covers
    # kinds not created yet (Gatekeeper grants its own controllers the same way).
    for verb, why in (("get", "re-read a constraint"), ("list", "find Gatekeeper violations"),
                      ("watch", "follow Gatekeeper's audit"), ("patch", "record what was done on a constraint")):
        permissions.append(Permission(verb, GATEKEEPER_GROUP, "*", False, why))
    for group, plural in resource_kinds:
        permissions.append(Permission("get", group, plural, False, "labels for routing"))
        permissions.append(Permission("list", group, plural, False, "notice changed resources"))
    for verb in ("get", "list", "create", "update", "delete"):
        permissions.append(Permission(verb, "coordination.k8s.io", "leases", False,
                                      "each process's liveness Lease: a crashed one's chains resume at once",
                                      own_namespace=True))
    for verb in ("list", "create", "patch"):
        permissions.append(Permission(verb, "", "configmaps", False,
                                      "the lifecycle journal (policyflow-journal-*): health figures",
                                      own_namespace=True, namespace_setting="journal_namespace"))
    return permissions
