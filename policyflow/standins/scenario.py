"""Objects for the stand-ins, made the way the real controllers make them (tests and demo share these)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def without_server_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` fit for a create: the fields the API server sets are removed."""
    clean = copy.deepcopy(obj)
    for name in SERVER_SET:
        clean.get("metadata", {}).pop(name, None)
    return clean


def deployment(name: str, namespace: str = "default", *, cpu: str = "100m",
               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Deployment like the seed's: one nginx container requesting ``cpu`` (100m fails require-resources).
    ``labels`` are the Deployment's own, besides ``app`` (which its pods and selector carry)."""
    selector = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {**selector, **(labels or {})}},
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(selector)},
                "spec": {"containers": [{"name": "web", "image": "nginx",
                                         "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
            },
        },
    }


def report_for(template: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """``template`` (an example report) as Kyverno would write it for ``resource`` (as created).

    Kyverno names a report after its resource's uid, and copies the resource into ``scope`` and the
    single ownerReference; the namespace is the resource's.
    """
    report = without_server_metadata(template)
    meta = resource["metadata"]
    uid, name, namespace = meta["uid"], meta["name"], meta.get("namespace")
    report["metadata"]["name"] = uid
    if namespace:
        report["metadata"]["namespace"] = namespace
    scope = {"apiVersion": resource["apiVersion"], "kind": resource["kind"], "name": name, "uid": uid}
    if namespace:
        scope["namespace"] = namespace
    report["scope"] = scope
    report["metadata"]["ownerReferences"] = [
        {"apiVersion": resource["apiVersion"], "kind": resource["kind"], "name": name, "uid": uid}
    ]
    return report


CONSTRAINTS_API = "constraints.gatekeeper.sh/v1beta1"
#: Gatekeeper audit's ``--constraint-violations-limit`` default: entries listed per constraint.
AUDIT_LIMIT = 20


def required_labels(name: str, labels: Iterable[str], *, kinds: Iterable[tuple[str, str]] = (("apps", "Deployment"),),
                    namespaces: Iterable[str] = (), action: str = "deny") -> dict[str, Any]:
    """A K8sRequiredLabels constraint (gatekeeper-library's requiredlabels template) as a user applies
    it: objects of ``kinds`` ((group, kind) pairs) in ``namespaces`` (all when empty) need ``labels``."""
    by_group: dict[str, list[str]] = {}
    for group, kind in kinds:
        by_group.setdefault(group, []).append(kind)
    match: dict[str, Any] = {"kinds": [{"apiGroups": [g], "kinds": k} for g, k in by_group.items()]}
    if namespaces:
        match["namespaces"] = list(namespaces)
    return {
        "apiVersion": CONSTRAINTS_API,
        "kind": "K8sRequiredLabels",
        "metadata": {"name": name},
        "spec": {"enforcementAction": action, "match": match,
                 "parameters": {"labels": [{"key": key} for key in labels]}},
    }


def audit_status(found: Iterable[tuple[Mapping[str, Any], str]], *, timestamp: str, action: str = "deny",
                 limit: int = AUDIT_LIMIT) -> dict[str, Any]:
    """The ``status`` Gatekeeper's audit writes for the violations it ``found`` ((resource as created,
    message) pairs), as gatekeeper ``pkg/audit/manager.go`` writes it: ``totalViolations`` counts all of
    them; ``violations`` keeps the ``limit`` smallest by (group, version, kind, namespace, name, message,
    action), written largest first, and is left out when there are none."""
    entries = []
    for resource, message in found:
        group, _, version = str(resource["apiVersion"]).rpartition("/")
        meta = resource["metadata"]
        entry = {"enforcementAction": action, "group": group, "kind": resource["kind"], "message": message,
                 "name": meta["name"], "version": version}
        if meta.get("namespace"):
            entry["namespace"] = meta["namespace"]
        entries.append(entry)
    order = ("group", "version", "kind", "namespace", "name", "message", "enforcementAction")
    kept = sorted(entries, key=lambda e: tuple(e.get(f, "") for f in order))[:limit]
    status: dict[str, Any] = {"auditTimestamp": timestamp, "totalViolations": len(entries)}
    if kept:
        status["violations"] = kept[::-1]
    return status
