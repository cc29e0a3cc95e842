"""The object store: one global resourceVersion counter, a change history for watches and snapshots.

Writes follow the apiserver's registry order (decode/prune, namespace, name, validation,
resourceVersion precondition, existence) and commit under the next resourceVersion. The history is
the watch cache: watches replay from it, paginated lists read a consistent snapshot out of it, and
anything older than ``oldest_rv`` counts as compacted (410).
"""

from __future__ import annotations

import copy
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policyflow.standins.kube.admission import admit, typed_defaults
from policyflow.standins.kube.errors import (
    NAMESPACE_MISMATCH,
    already_exists,
    cause,
    conflict,
    details,
    error,
    internal,
    invalid,
    not_found,
)
from policyflow.standins.kube.objects import Key, Obj, canonical, now, present
from policyflow.standins.kube.resources import Catalog, Resource

HISTORY_LIMIT = 10_000  # watch-cache size; older changes are "compacted"
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand


@dataclass(frozen=True)
class Change:
    """One committed write: ``obj`` is the new state (None when deleted), ``prev`` the old one."""

    rv: int
    storage_key: tuple[str, str]
    key: Key
    obj: Obj | None
    prev: Obj | None


class Store:
    """Objects of every resource, guarded by one re-entrant lock (the server thread and tests write)."""

    def __init__(self, catalog: Catalog, on_commit: Callable[[], None]) -> None:
        self.catalog = catalog
        self.lock = threading.RLock()
        self.rv = 0
        self.oldest_rv = 0  # watches/continue tokens older than this are "compacted"
        self.history: list[Change] = []
        self._objects: dict[tuple[str, str], dict[Key, Obj]] = {}
        self._on_commit = on_commit

    # ---- reading (callers that need several reads to agree hold ``lock``)

    @staticmethod
    def key(res: Resource, namespace: str | None, name: str) -> Key:
        return ((namespace or "default") if res.namespaced else "", name)

    def bucket(self, res: Resource) -> dict[Key, Obj]:
        """The live objects of ``res`` (all versions share them); read it under the lock."""
        return self._objects.get(res.storage_key, {})

    def lookup(self, res: Resource, key: Key) -> Obj | None:
        with self.lock:
            return self.bucket(res).get(key)

    def state_at(self, res: Resource, rv: int) -> dict[Key, Obj]:
        """The objects of ``res`` as they were at ``rv`` (undo the later changes; caller holds the lock)."""
        state = dict(self.bucket(res))
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            if change.storage_key == res.storage_key:
                if change.prev is None:
                    state.pop(change.key, None)
                else:
                    state[change.key] = change.prev
        return state

    def compact(self) -> None:
        """Like an etcd compaction past every version handed out, so that new ones stay valid."""
        with self.lock:
            self.rv += 1
            self.oldest_rv = self.rv

    # ---- writing

    def commit(self, res: Resource, key: Key, new: Obj | None, prev: Obj | None) -> None:
        """Store ``new`` (None deletes) under the next resourceVersion, log it and wake the watchers."""
        with self.lock:
            self.rv += 1
            store = self._objects.setdefault(res.storage_key, {})
            if new is None:
                store.pop(key, None)
            else:
                new["metadata"]["resourceVersion"] = str(self.rv)
                store[key] = new
            self.history.append(Change(self.rv, res.storage_key, key, new, prev))
            if len(self.history) > HISTORY_LIMIT:
                dropped = self.history[: HISTORY_LIMIT // 2]
                del self.history[: HISTORY_LIMIT // 2]
                self.oldest_rv = max(self.oldest_rv, dropped[-1].rv)
        self._on_commit()

    def create(
        self, res: Resource, namespace: str, obj: Obj, *, validation: str, keep_status: bool = False
    ) -> tuple[Obj, list[str]]:
        """The create path in apiserver order: decode/prune, namespace, name, validation, RV, existence.

        A custom resource with a status subresource loses ``status`` on create, as on the apiserver
        (CustomResourceSubresourceStatus: "PUT/POST/PATCH requests to the custom resource ignore changes
        to the status stanza"); ``keep_status`` is for the test side, which seeds objects as a controller
        would have left them. Built-in kinds keep theirs (their own strategies are not emulated).
        """
        if res.status_subresource and not res.builtin and not keep_status:
            obj.pop("status", None)
        obj, warnings, causes = admit(res, obj, validation)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise error(400, NAMESPACE_MISMATCH)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)  # silently dropped for cluster-scoped kinds
        with self.lock:
            if res.namespaced and ("", namespace) not in self._objects.get(("", "namespaces"), {}):
                raise error(404, f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
            if not meta.get("name"):
                if not meta.get("generateName"):
                    problem = cause("FieldValueRequired", "Required value: name or generateName is required",
                                    "metadata.name")  # fmt: skip
                    raise invalid(res.qualified_kind, "", [problem], details(res, kind=res.kind))
                store = self.bucket(res)
                while not meta.get("name") or (namespace, meta["name"]) in store:
                    meta["name"] = meta["generateName"] + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
            name = str(meta["name"])
            if causes:
                raise invalid(res.qualified_kind, name, causes, details(res, name, kind=res.kind))
            typed_defaults(res, obj, name)
            if meta.get("resourceVersion"):
                raise internal("resourceVersion should not be set on objects to be created")
            key = (namespace, name)
            if key in self.bucket(res):
                raise already_exists(res, name)
            meta.pop("managedFields", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta.pop("generation", None)
            if res.has_generation:
                meta["generation"] = 1
            stored = canonical(res, obj)
            self.commit(res, key, stored, None)
            return present(res, stored), warnings

    def update(
        self, res: Resource, old: Obj, proposed: Obj, *, subresource: str, validation: str
    ) -> tuple[Obj, list[str]]:
        """PUT/PATCH after the new object is known: RV precondition, validation, generation, no-op check."""
        name = str(old["metadata"]["name"])
        meta = proposed.get("metadata")
        if not isinstance(meta, dict):
            meta = proposed["metadata"] = {}
        if meta.get("name", name) != name:
            raise error(400, f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if res.namespaced and meta.get("namespace", old["metadata"]["namespace"]) != old["metadata"]["namespace"]:
            raise error(400, NAMESPACE_MISMATCH)
        rv = str(meta.get("resourceVersion") or "")
        with self.lock:
            current = self.bucket(res).get(self.key(res, old["metadata"].get("namespace"), name))
            if current is None:
                raise not_found(res, name)
            if not rv and not res.unconditional_update:
                message = "Invalid value: 0x0: must be specified for an update"
                problem = cause("FieldValueInvalid", message, "metadata.resourceVersion")
                raise invalid(res.qualified, name, [problem], details(res, name))
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            proposed = _with_status_rules(res, current, proposed, subresource)
            proposed, warnings, causes = admit(res, proposed, validation)
            uid = proposed.get("metadata", {}).get("uid")
            if uid and uid != current["metadata"]["uid"]:
                causes.append(cause("FieldValueInvalid", f'Invalid value: "{uid}": field is immutable', "metadata.uid"))
            if causes:
                raise invalid(res.qualified_kind, name, causes, details(res, name, kind=res.kind))
            meta = proposed.setdefault("metadata", {})
            for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
            meta.pop("managedFields", None)
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            if res.plural == "events":
                typed_defaults(res, proposed, name)
            proposed["apiVersion"] = current["apiVersion"]  # stored once for all versions
            stored = canonical(res, proposed)
            if stored == current:
                return present(res, current), warnings  # no-op: no new resourceVersion, no event
            if res.has_generation and _content(res, stored) != _content(res, current):
                stored["metadata"]["generation"] = int(stored["metadata"].get("generation") or 0) + 1
            self.commit(res, (str(current["metadata"].get("namespace") or ""), name), stored, current)
            return present(res, stored), warnings

    def delete(self, res: Resource, key: Key, options: Any) -> Obj:
        """Delete with optional preconditions; returns what was stored. A namespace takes its objects along."""
        with self.lock:
            current = self.bucket(res).get(key)
            if current is None:
                raise not_found(res, key[1])
            pre = options.get("preconditions") if isinstance(options, dict) else None
            if isinstance(pre, dict):
                meta = current["metadata"]
                if pre.get("uid") and pre["uid"] != meta["uid"]:
                    raise conflict(res, key[1], f"Precondition failed: UID in precondition: {pre['uid']}, "
                                                f"UID in object meta: {meta['uid']}")  # fmt: skip
                if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                    raise conflict(res, key[1], "Precondition failed: ResourceVersion in precondition: "
                                                f"{pre['resourceVersion']}, ResourceVersion in meta: "
                                                f"{meta['resourceVersion']}")  # fmt: skip
            if res.plural == "namespaces":  # no namespace controller: its objects go at once
                for other in self.catalog.namespaced_storage():
                    for other_key in sorted(k for k in self.bucket(other) if k[0] == key[1]):
                        self.delete(other, other_key, None)
            self.commit(res, key, None, current)
            return current


def _with_status_rules(res: Resource, current: Obj, proposed: Obj, subresource: str) -> Obj:
    """With a status subresource, ``/status`` writes only status and the main resource never does."""
    if not res.status_subresource:
        return proposed
    if subresource == "status":
        status = proposed.get("status")
        proposed = copy.deepcopy(current)
        proposed.pop("status", None)
        if status is not None:
            proposed["status"] = status
    elif subresource == "":
        proposed.pop("status", None)
        if "status" in current:
            proposed["status"] = copy.deepcopy(current["status"])
    return proposed


def _content(res: Resource, obj: Obj) -> Obj:
    """What generation tracks: everything but metadata (and status with a status subresource)."""
    skip = ("metadata", "status") if res.status_subresource else ("metadata",)
    return {k: v for k, v in obj.items() if k not in skip}
