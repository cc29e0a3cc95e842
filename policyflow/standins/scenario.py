"""Objects for the stand-ins, made the way the real controllers make them (tests and demo share these)."""

from __future__ import annotations

import copy
from typing import Any

SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def without_server_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` fit for a create: the fields the API server sets are removed."""
    clean = copy.deepcopy(obj)
    for name in SERVER_SET:
        clean.get("metadata", {}).pop(name, None)
    return clean


def deployment(name: str, namespace: str = "default", *, cpu: str = "100m") -> dict[str, Any]:
    """A Deployment like the seed's: one nginx container requesting ``cpu`` (100m fails require-resources)."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
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
