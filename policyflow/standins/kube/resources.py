"""What the stand-in serves: built-in kinds plus the resources of CustomResourceDefinitions.

A :class:`Resource` is one group/version/resource as discovery describes it, plus the few strategy
switches the store needs (generation, status subresource, unconditional update, create on update).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policyflow.standins.kube.objects import Obj

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: CRDs load 10x faster

CR_VERBS = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")
_BUILTIN_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_EVENT_FIELDS = (
    ("involvedObject.kind", "involvedObject.kind"), ("involvedObject.namespace", "involvedObject.namespace"),
    ("involvedObject.name", "involvedObject.name"), ("involvedObject.uid", "involvedObject.uid"),
    ("involvedObject.apiVersion", "involvedObject.apiVersion"),
    ("involvedObject.resourceVersion", "involvedObject.resourceVersion"),
    ("involvedObject.fieldPath", "involvedObject.fieldPath"), ("reason", "reason"),
    ("reportingComponent", "reportingComponent"), ("source", "source.component"), ("type", "type"),
)  # fmt: skip
_POD_FIELDS = tuple(
    (f, f)
    for f in ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
              "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName")
)  # fmt: skip


@dataclass(frozen=True)
class Resource:
    """One served group/version/resource, as discovery describes it plus what the store needs."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    list_kind: str = ""
    verbs: tuple[str, ...] = CR_VERBS
    categories: tuple[str, ...] = ()
    schema: Obj | None = field(default=None, compare=False, hash=False)  # openAPIV3Schema of a CR
    builtin: bool = False  # typed object: Go field order, list items without kind, no empty "continue"
    status_subresource: bool = False
    has_generation: bool = True
    unconditional_update: bool = False  # PUT without resourceVersion is allowed (most built-ins)
    create_on_update: bool = False  # PUT of a missing object creates it (Lease)
    delete_returns_object: bool = False
    fields: tuple[tuple[str, str], ...] = ()  # extra field-selector labels -> dotted path

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``policyreports.wgpolicyk8s.io`` (``events`` for core), as in NotFound/Conflict messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are shared by all versions of a group/resource (conversion strategy None)."""
        return (self.group, self.plural)


def _builtin(group: str, plural: str, kind: str, namespaced: bool, **kw: Any) -> Resource:
    kw.setdefault("verbs", _BUILTIN_VERBS)
    kw.setdefault("unconditional_update", True)
    return Resource(group, "v1", plural, kind, kind.lower(), namespaced, list_kind=f"{kind}List", builtin=True, **kw)


BUILTIN_RESOURCES = (
    _builtin("", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True,
             has_generation=False, delete_returns_object=True, fields=(("status.phase", "status.phase"),),
             verbs=("create", "delete", "get", "list", "patch", "update", "watch")),
    _builtin("", "events", "Event", True, short_names=("ev",), has_generation=False, fields=_EVENT_FIELDS),
    _builtin("", "configmaps", "ConfigMap", True, short_names=("cm",), has_generation=False),
    _builtin("", "pods", "Pod", True, short_names=("po",), categories=("all",), status_subresource=True,
             has_generation=False, delete_returns_object=True, fields=_POD_FIELDS),
    _builtin("apps", "deployments", "Deployment", True, short_names=("deploy",), categories=("all",),
             status_subresource=True),
    _builtin("authorization.k8s.io", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
             has_generation=False, verbs=("create",)),
    # pkg/registry/coordination/lease/strategy.go: no generation, AllowUnconditionalUpdate false,
    # AllowCreateOnUpdate true.
    _builtin("coordination.k8s.io", "leases", "Lease", True, has_generation=False, unconditional_update=False,
             create_on_update=True),
)  # fmt: skip
BUILTIN_GROUP_ORDER = {"": 0, "apps": 1, "authorization.k8s.io": 2, "coordination.k8s.io": 3}
"""Where the apiserver lists the built-in groups (``/apis``), before every CRD group."""


def resources_from_crd(crd: Mapping[str, Any]) -> list[Resource]:
    """The resources a CustomResourceDefinition serves: one per version with ``served: true``."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", False):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is not None:  # ObjectMeta is validated on its own, never by the CRD schema
            meta = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            text = {"type": "string"}
            schema = {
                **schema,
                "properties": {"apiVersion": text, "kind": text, **schema.get("properties", {}), "metadata": meta},
            }
        selectable = tuple(
            (f["jsonPath"].lstrip("."), f["jsonPath"].lstrip(".")) for f in version.get("selectableFields") or ()
        )
        out.append(
            Resource(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                list_kind=names.get("listKind") or f"{names['kind']}List",
                categories=tuple(names.get("categories") or ()),
                schema=schema,
                status_subresource="status" in (version.get("subresources") or {}),
                fields=selectable,
            )
        )
    return out


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kube-aware version order: GA before beta before alpha, higher numbers first, others last."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), version)


def storage_version_hash(res: Resource) -> str:
    """As the apiserver computes it: the first 8 bytes of sha256("group/version/Kind"), base64."""
    digest = hashlib.sha256(f"{res.group}/{res.version}/{res.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


class Catalog:
    """Every served resource, by (group, version, plural) and by apiVersion + kind."""

    def __init__(self, crd_files: Iterable[Path]) -> None:
        self._resources: dict[tuple[str, str, str], Resource] = {}
        for res in BUILTIN_RESOURCES:
            self._resources[(res.group, res.version, res.plural)] = res
        for path in crd_files:
            for doc in yaml.load_all(Path(path).read_text(), Loader=_YAML_LOADER):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    for res in resources_from_crd(doc):
                        self._resources[(res.group, res.version, res.plural)] = res

    def __iter__(self) -> Iterator[Resource]:
        return iter(self._resources.values())

    def get(self, group: str, version: str, plural: str) -> Resource | None:
        return self._resources.get((group, version, plural))

    def for_kind(self, api_version: str, kind: str) -> Resource:
        """The resource serving ``kind`` in ``api_version``; KeyError for the test side's typos."""
        group, _, version = api_version.rpartition("/")
        for res in self._resources.values():
            if (res.group, res.version, res.kind) == (group, version, kind):
                return res
        raise KeyError(f"the stand-in does not serve {kind} in {api_version or '(no apiVersion)'}")

    def namespaced_storage(self) -> list[Resource]:
        """One resource per stored group/resource that lives in namespaces (what a namespace deletion takes)."""
        return list({r.storage_key: r for r in self._resources.values() if r.namespaced}.values())

    def groups(self) -> dict[str, list[Resource]]:
        """Resources by group, in the apiserver's group order (built-ins first)."""
        groups: dict[str, list[Resource]] = {}
        for res in sorted(self._resources.values(), key=lambda r: (BUILTIN_GROUP_ORDER.get(r.group, 9), r.group)):
            groups.setdefault(res.group, []).append(res)
        return groups
