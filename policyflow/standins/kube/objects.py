"""Object shapes: metadata fields, server-set fields, key order on the wire, copies handed out.

The apiserver writes custom resources with sorted keys (Go maps) and typed objects in Go struct order;
the recordings compare bytes, so the stand-in stores objects already in that order.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policyflow.standins.kube.resources import Resource

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)

META_FIELDS = (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
)  # fmt: skip
"""ObjectMeta's fields in Go struct order; anything else in ``metadata`` is an unknown field."""
SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def strip_server_metadata(obj: Mapping[str, Any]) -> Obj:
    """A deep copy of ``obj`` without the fields the server sets (so it can be created again)."""
    out = copy.deepcopy(dict(obj))
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for key in SERVER_META:
            meta.pop(key, None)
    return out


def now() -> str:
    """metav1.Time now: RFC 3339, whole seconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sorted_keys(value: Any) -> Any:
    """Unstructured (CR) objects serialize with sorted keys, like Go's map encoding."""
    if isinstance(value, dict):
        return {k: sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(v) for v in value]
    return value


def canonical(res: Resource, obj: Obj) -> Obj:
    """Field order as the apiserver writes it: sorted for CRs, Go struct order at the top for built-ins."""
    if not res.builtin:
        return dict(sorted_keys(obj))
    meta = obj.get("metadata") or {}
    ordered_meta = {k: meta[k] for k in META_FIELDS if k in meta}
    ordered_meta.update({k: v for k, v in meta.items() if k not in ordered_meta})
    head = {"kind": obj.get("kind", res.kind), "apiVersion": obj.get("apiVersion", res.api_version)}
    return {**head, "metadata": ordered_meta, **{k: v for k, v in obj.items() if k not in (*head, "metadata")}}


def present(res: Resource, obj: Obj) -> Obj:
    """A copy for the caller, in the requested version (all versions share one stored object)."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = res.api_version  # the key exists, so its position (sorted for CRs) stays
    return out


def partial(obj: Obj) -> Obj:
    """The ``PartialObjectMetadata`` view of an object (``Accept: ...;as=PartialObjectMetadata...``)."""
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}
