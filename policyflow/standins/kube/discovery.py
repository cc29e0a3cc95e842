"""Discovery: ``/version``, ``/api``, ``/apis`` and the group/version documents, from the catalog.

Served with and without a trailing slash (the typed client adds one to ``/version/``, ``/api/`` and
``/apis/``; the DynamicClient does not); anything else is the mux's plain-text 404 [01, 01b, 05].
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.responses import Response

from policyflow.standins.http.routes import RouteTable
from policyflow.standins.kube.codec import json_response
from policyflow.standins.kube.errors import page_not_found
from policyflow.standins.kube.objects import Obj
from policyflow.standins.kube.resources import Catalog, Resource, storage_version_hash, version_priority

VERSION_INFO: Obj = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-beta.0.snapshot+cd13ec4ae44e",
    "gitCommit": "cd13ec4ae44e35ce12aefbb05627be4474ff2b1f",
    "gitTreeState": "clean",
    "buildDate": "2026-11-26T17:05:47Z",
    "goVersion": "go1.23.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
PUBLIC_PATHS = frozenset({"/version", *HEALTH_PATHS})  # system:public-info-viewer: allowed for anonymous

Page = Callable[[dict[str, str]], Response]


class Discovery:
    """The non-resource paths; :meth:`serve` takes the path without its trailing slash."""

    def __init__(self, catalog: Catalog, port: int) -> None:
        self._catalog = catalog
        self._port = port
        self._routes: RouteTable[Page] = RouteTable()
        self._routes.add("*", "/version", lambda _: self._version())
        for path in HEALTH_PATHS:
            self._routes.add("*", path, lambda _: Response(b"ok", media_type="text/plain; charset=utf-8"))
        self._routes.add("*", "/", lambda _: self._root())
        self._routes.add("*", "/api", lambda _: self._core_versions())
        self._routes.add("*", "/api/v1", lambda _: json_response(self.resource_list("", "v1")))
        self._routes.add("*", "/apis", lambda _: self._group_list())
        self._routes.add("*", "/apis/{group}", lambda p: self._group(p["group"]))
        self._routes.add("*", "/apis/{group}/{version}", lambda p: self._group_version(p["group"], p["version"]))

    def serve(self, method: str, path: str) -> Response:
        found = self._routes.match(method, path.rstrip("/") or "/")
        if found is None:
            raise page_not_found()
        return found.handler(found.params)

    # ---- documents

    def _version(self) -> Response:
        return Response(json.dumps(VERSION_INFO, indent=2).encode(), media_type="application/json")

    def _root(self) -> Response:
        groups = self._catalog.groups()
        paths = ["/api", "/api/v1", "/apis", *[f"/apis/{g}" for g in groups if g],
                 *[f"/apis/{r.group}/{r.version}" for r in self._catalog if r.group],
                 *HEALTH_PATHS, "/version"]  # fmt: skip
        return json_response({"paths": sorted(set(paths))})

    def _core_versions(self) -> Response:
        cidrs = [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self._port}"}]
        return json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": cidrs})

    def _group_list(self) -> Response:
        docs = [self._group_doc(g, rs) for g, rs in self._catalog.groups().items() if g]
        return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": docs})

    def _group(self, group: str) -> Response:
        resources = self._catalog.groups().get(group) if group else None
        if not resources:
            raise page_not_found()
        return json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, resources)})

    def _group_version(self, group: str, version: str) -> Response:
        resources = self._catalog.groups().get(group) if group else None
        if not resources or not any(r.version == version for r in resources):
            raise page_not_found()
        return json_response(self.resource_list(group, version))

    @staticmethod
    def _group_doc(group: str, resources: list[Resource]) -> Obj:
        versions = sorted({r.version for r in resources}, key=version_priority)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def resource_list(self, group: str, version: str) -> Obj:
        """The APIResourceList of one group/version (``/api/v1`` for core)."""
        resources = []
        for res in self._catalog:
            if (res.group, res.version) != (group, version):
                continue
            entry: Obj = {"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                          "kind": res.kind, "verbs": list(res.verbs)}  # fmt: skip
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            if res.categories:
                entry["categories"] = list(res.categories)
            if res.plural != "selfsubjectaccessreviews":
                entry["storageVersionHash"] = storage_version_hash(res)
            resources.append(entry)
            if res.status_subresource:
                resources.append({"name": f"{res.plural}/status", "singularName": "", "namespaced": res.namespaced,
                                  "kind": res.kind, "verbs": ["get", "patch", "update"]})  # fmt: skip
        group_version = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}
