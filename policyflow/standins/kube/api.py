"""The resource API: authentication and authorization first, then a route table of handlers.

The apiserver authorizes before it routes (a user without RBAC gets 403 even for a group that does
not exist [05#12]), so :meth:`KubeApi.serve` authenticates, reads the request info and authorizes,
and only then looks the path up: discovery for non-resource paths, else the resource routes below.
Each handler first resolves the resource (404 ``page not found`` when the server has no such route:
unknown group/version/plural, the namespaced URL of a cluster-scoped kind and the reverse, an unknown
subresource), then answers in the apiserver's terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.responses import Response

from policyflow.standins.http.routes import RouteTable
from policyflow.standins.kube.admission import decode_object
from policyflow.standins.kube.auth import Authorizer, request_info
from policyflow.standins.kube.codec import (
    CREATE_PREFIX,
    METADATA_TYPE,
    decode_json,
    json_response,
    metadata_view,
    truthy,
)
from policyflow.standins.kube.discovery import Discovery
from policyflow.standins.kube.errors import details, error, method_not_allowed, not_found, page_not_found
from policyflow.standins.kube.listing import delete_collection, list_objects
from policyflow.standins.kube.objects import Key, partial, present
from policyflow.standins.kube.patch import patched, read_patch
from policyflow.standins.kube.resources import Catalog, Resource
from policyflow.standins.kube.store import Store
from policyflow.standins.kube.watch import WatchHub, watch

_RESOURCE = r"(?!status$|finalize$)[^/]+"  # after namespaces/{ns}/, these two are the namespace's subresources
_PREFIXES = ("/api/{version}", "/apis/{group}/{version}")
_SCOPES = ("/namespaces/{namespace}/{resource:" + _RESOURCE + "}", "/{resource}")  # namespaced first


@dataclass(frozen=True)
class Call:
    """What a handler gets: the request and the path parameters its route matched."""

    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # case-insensitive (Starlette's Headers)
    raw: bytes
    params: dict[str, str] = field(default_factory=dict)

    @property
    def namespaced_path(self) -> bool:
        return "namespace" in self.params


Handler = Callable[[Call], Response]


class KubeApi:
    """Routes and handlers of the resource API, over the stand-in's store."""

    def __init__(self, catalog: Catalog, store: Store, hub: WatchHub, auth: Authorizer, discovery: Discovery) -> None:
        self._catalog, self._store, self._hub, self._auth, self._discovery = catalog, store, hub, auth, discovery
        self.routes: RouteTable[Handler] = RouteTable()
        reviews = r"/apis/{group:authorization\.k8s\.io}/{version}/{resource:selfsubjectaccessreviews}"
        self.routes.add("*", reviews, self._access_review)
        self.routes.add("*", reviews + "/{name}", self._access_review)
        for prefix in _PREFIXES:
            for scope in _SCOPES:
                collection, item = prefix + scope, prefix + scope + "/{name}"
                self.routes.add("GET HEAD", collection, self._read_collection)
                self.routes.add("POST", collection, self._create)
                self.routes.add("DELETE", collection, self._delete_collection)
                self.routes.add("*", collection, self._not_allowed)
                for path in (item, item + "/{subresource}"):
                    self.routes.add("GET HEAD", path, self._get)
                    self.routes.add("PUT", path, self._replace)
                    self.routes.add("PATCH", path, self._patch)
                    self.routes.add("DELETE", path, self._delete)
                    self.routes.add("*", path, self._not_allowed)

    def serve(
        self, method: str, path: str, query: Mapping[str, str], raw: bytes, headers: Mapping[str, str]
    ) -> Response:
        """Answer one request; errors are raised as :class:`~policyflow.standins.kube.errors.KubeApiError`."""
        user = self._auth.authenticate(headers)
        info = request_info(method, path, query)
        self._auth.authorize(user, path, info)
        if not info.resource_request:
            return self._discovery.serve(method, path)
        found = self.routes.match(method, "/" + path.strip("/"))
        if found is None:
            raise page_not_found()
        return found.handler(Call(method, query, headers, raw, found.params))

    # ---- resolving the route to a resource

    def _resource(self, call: Call) -> Resource:
        """The resource this URL names, or the mux's 404 when no such route exists."""
        p = call.params
        res = self._catalog.get(p.get("group", ""), p["version"], p["resource"])
        if res is None or (call.namespaced_path and not res.namespaced):
            raise page_not_found()
        subresource = p.get("subresource", "")
        if subresource and not (subresource == "status" and res.status_subresource):
            raise page_not_found()
        if res.namespaced and "name" in p and not call.namespaced_path:
            raise page_not_found()  # /apis/g/v/policyreports/{name}: no such route
        return res

    def _namespace(self, res: Resource, call: Call) -> str:
        return call.params.get("namespace", "") if res.namespaced else ""

    def _key(self, res: Resource, call: Call) -> Key:
        return (self._namespace(res, call), call.params["name"])

    # ---- collections

    def _read_collection(self, call: Call) -> Response:
        res = self._resource(call)
        namespace, accept = self._namespace(res, call), call.headers.get("accept", "")
        if truthy(call.query.get("watch")):
            return watch(self._store, self._hub, res, namespace, call.query,
                         metadata_only=metadata_view(accept, "PartialObjectMetadata"))  # fmt: skip
        return list_objects(self._store, res, namespace, call.query,
                            metadata_only=metadata_view(accept, "PartialObjectMetadataList"))  # fmt: skip

    def _create(self, call: Call) -> Response:
        res = self._resource(call)
        if res.namespaced and not call.namespaced_path:
            raise method_not_allowed()
        obj = decode_object(res, decode_json(call.raw, CREATE_PREFIX), call.raw)
        created, warnings = self._store.create(res, self._namespace(res, call), obj,
                                               validation=call.query.get("fieldValidation", "Warn"))  # fmt: skip
        return json_response(created, 201, warnings=warnings)

    def _delete_collection(self, call: Call) -> Response:
        res = self._resource(call)
        return delete_collection(self._store, res, self._namespace(res, call), call.query)

    def _not_allowed(self, call: Call) -> Response:
        self._resource(call)  # an unknown resource is a 404 before the method is a 405
        raise method_not_allowed()

    # ---- single objects

    def _get(self, call: Call) -> Response:
        res = self._resource(call)
        key = self._key(res, call)
        stored = self._store.lookup(res, key)
        if stored is None:
            raise not_found(res, key[1])
        if metadata_view(call.headers.get("accept", ""), "PartialObjectMetadata"):
            response = json_response(partial(present(res, stored)))
            response.headers["Content-Type"] = METADATA_TYPE
            return response
        return json_response(present(res, stored))

    def _replace(self, call: Call) -> Response:
        res = self._resource(call)
        namespace, name = self._key(res, call)
        body = decode_object(res, decode_json(call.raw, CREATE_PREFIX), call.raw)
        validation = call.query.get("fieldValidation", "Warn")
        with self._store.lock:
            old = self._store.lookup(res, (namespace, name))
            body_name = body["metadata"].get("name") if isinstance(body.get("metadata"), dict) else None
            if body_name and body_name != name:
                raise error(400, f"the name of the object ({body_name}) does not match the name on the URL ({name})")
            if old is None:
                if not res.create_on_update:
                    raise not_found(res, name)
                meta = body.get("metadata")
                if meta is None:
                    meta = body["metadata"] = {}
                if isinstance(meta, dict):  # anything else is refused by the create path
                    meta.setdefault("name", name)
                    meta.pop("resourceVersion", None)  # storage clears it on a create-on-update
                created, warnings = self._store.create(res, namespace, body, validation=validation)
                return json_response(created, 201, warnings=warnings)
            subresource = call.params.get("subresource", "")
            updated, warnings = self._store.update(res, old, body, subresource=subresource, validation=validation)
        return json_response(updated, warnings=warnings)

    def _patch(self, call: Call) -> Response:
        res = self._resource(call)
        key = self._key(res, call)
        content_type = call.headers.get("content-type", "").split(";")[0].strip().lower()
        request = read_patch(res, content_type, call.raw, call.query)
        with self._store.lock:
            old = self._store.lookup(res, key)
            if old is None:
                if request.applied is not None:  # server-side apply creates
                    created, warnings = self._store.create(res, key[0], request.applied, validation=request.validation)
                    return json_response(created, 201, warnings=warnings)
                raise not_found(res, key[1])
            proposed = patched(request, present(res, old))
            updated, warnings = self._store.update(res, old, proposed, subresource=call.params.get("subresource", ""),
                                                   validation=request.validation)  # fmt: skip
        return json_response(updated, warnings=warnings)

    def _delete(self, call: Call) -> Response:
        res = self._resource(call)
        key = self._key(res, call)
        options = decode_json(call.raw, "couldn't decode DeleteOptions: ") if call.raw.strip() else None
        gone = self._store.delete(res, key, options)
        if res.delete_returns_object:
            return json_response(present(res, gone))
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {**details(res, key[1]), "uid": gone["metadata"]["uid"]}}  # fmt: skip
        return json_response(body)

    # ---- authorization.k8s.io

    def _access_review(self, call: Call) -> Response:
        self._resource(call)
        review, status = self._auth.access_review(call.method, call.params.get("name", ""), call.raw)
        return json_response(review, status)
