"""The Kubernetes API stand-in: the test-side API over the store, and the HTTP side's wiring."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from starlette.requests import Request
from starlette.responses import Response

from policyflow.standins.http import Fault, HttpStandin
from policyflow.standins.kube.api import KubeApi
from policyflow.standins.kube.auth import DEFAULT_USER, Authorizer, request_info
from policyflow.standins.kube.codec import error_response, json_response
from policyflow.standins.kube.discovery import Discovery
from policyflow.standins.kube.errors import (
    CONTINUE_EXPIRED,
    REASONS,
    KubeApiError,
    conflict,
    not_found,
    status_body,
)
from policyflow.standins.kube.objects import Obj, present
from policyflow.standins.kube.resources import Catalog
from policyflow.standins.kube.store import Store
from policyflow.standins.kube.watch import WatchHub

SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


class KubeStandin(HttpStandin):
    """A small, faithful Kubernetes API server on ``127.0.0.1`` for tests and the demo.

    The test side reads and writes the store directly (``create``/``get``/``replace``/``delete``/
    ``objects``), injects faults (``inject``), denies verbs (``deny``), expires continue tokens
    (``expire_continue_tokens``) and reads every request (``requests``).
    """

    def __init__(
        self,
        crd_files: Iterable[Path],
        *,
        token: str = "standin-token",
        user: str = DEFAULT_USER,
        bookmark_interval: float = 60.0,
        anonymous_is_user: bool = False,
    ) -> None:
        """Load the CRDs (every served version) next to the built-in kinds; ``default`` and the other
        system namespaces exist. ``user`` is the name the token authenticates as (in 403 messages);
        ``bookmark_interval`` is how often a quiet watch with bookmarks gets one (the apiserver: 1 min).
        ``anonymous_is_user`` gives requests without credentials the user's rights, like a cluster that
        binds roles to system:anonymous (kubectl sends no bearer token over plain http).
        """
        super().__init__(first_query_values=False)
        self._catalog = Catalog(crd_files)
        self._hub = WatchHub(lambda: self._server.loop, bookmark_interval)
        self._store = Store(self._catalog, self._hub.notify)
        self._auth = Authorizer(token, user, anonymous_is_user=anonymous_is_user)
        discovery = Discovery(self._catalog, self._server.port)
        self._api = KubeApi(self._catalog, self._store, self._hub, self._auth, discovery)
        self._flow_uids = (str(uuid.uuid4()), str(uuid.uuid4()))
        for name in SYSTEM_NAMESPACES:
            self.ensure_namespace(name)
        with self._store.lock:
            self._store.oldest_rv = self._store.rv  # like a fresh watch cache: its window starts now

    # ---------------------------------------------------------------- settings tests change

    @property
    def user(self) -> str:
        """The user the token authenticates as."""
        return self._auth.user

    @user.setter
    def user(self, value: str) -> None:
        self._auth.user = value

    @property
    def bookmark_interval(self) -> float:
        """Seconds between the periodic bookmarks of a watch that asked for them."""
        return self._hub.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, value: float) -> None:
        self._hub.bookmark_interval = value

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Serve in a background thread until :meth:`stop`."""
        self._hub.closing = False
        return super().start()

    def stop(self) -> None:
        """End open watches and stop serving."""
        self._hub.closing = True
        self._hub.notify()
        super().stop()

    def write_kubeconfig(self, path: Path, *, context: str = "standin", token: str | None = None) -> Path:
        """Write a kubeconfig pointing at this server; ``token=""`` writes a user without credentials."""
        secret = self._auth.token if token is None else token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": secret} if secret else {}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
            "current-context": context,
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ---------------------------------------------------------------- test-side store access

    def create(self, obj: Mapping[str, Any]) -> Obj:
        """Create like ``kubectl create`` (no HTTP): server fields are set, errors raise :class:`KubeApiError`.

        Unlike an API create, ``status`` is kept even with a status subresource, so tests can seed an
        object as its controller would have left it (a constraint after an audit).
        """
        res = self._catalog.for_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        namespace = str((obj.get("metadata") or {}).get("namespace") or "default") if res.namespaced else ""
        created, _ = self._store.create(res, namespace, copy.deepcopy(dict(obj)), validation="Ignore", keep_status=True)
        return created

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object, or None."""
        res = self._catalog.for_kind(api_version, kind)
        obj = self._store.lookup(res, self._store.key(res, namespace, name))
        return None if obj is None else present(res, obj)

    def replace(self, obj: Mapping[str, Any]) -> Obj:
        """Update like a controller (status included): labels/annotations/content become exactly ``obj``'s.

        The resourceVersion in ``obj`` is ignored (the write is unconditional); generation grows when
        anything outside metadata (and outside status for kinds with a status subresource) changed.
        """
        res = self._catalog.for_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        meta = obj.get("metadata") or {}
        key = self._store.key(res, meta.get("namespace") or "default", str(meta.get("name", "")))
        with self._store.lock:
            old = self._store.lookup(res, key)
            if old is None:
                raise not_found(res, key[1])
            proposed = copy.deepcopy(dict(obj))
            proposed.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
            updated, _ = self._store.update(res, old, proposed, subresource="*", validation="Ignore")
            return updated

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete now (a namespace takes its objects with it); a missing object raises :class:`KubeApiError`."""
        res = self._catalog.for_kind(api_version, kind)
        self._store.delete(res, self._store.key(res, namespace, name), None)

    def objects(self, api_version: str, kind: str) -> list[Obj]:
        """Every stored object of that kind, all namespaces, in list order."""
        res = self._catalog.for_kind(api_version, kind)
        with self._store.lock:
            bucket = self._store.bucket(res)
            return [present(res, bucket[k]) for k in sorted(bucket)]

    def ensure_namespace(self, name: str) -> Obj:
        """The namespace ``name``, created if missing."""
        res = self._catalog.for_kind("v1", "Namespace")
        with self._store.lock:
            existing = self._store.lookup(res, ("", name))
            if existing is not None:
                return present(res, existing)
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            return self._store.create(res, "", body, validation="Ignore")[0]

    @property
    def resource_version(self) -> str:
        """The current value of the global resourceVersion counter."""
        with self._store.lock:
            return str(self._store.rv)

    # ---------------------------------------------------------------- faults, RBAC, compaction

    def inject(
        self,
        *,
        method: str,
        path: str,
        status: int,
        times: int = 1,
        body: Obj | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        query: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` (``*`` for any) and ``path`` (a regex
        searched in the URL path; ``query`` likewise in the raw query string) with ``status`` and a
        real Status body (or ``body``). ``status=0`` drops the connection without answering; ``delay``
        sleeps before answering. 429 gets ``Retry-After: 1`` unless ``headers`` say otherwise.
        """
        self._faults.add(method=method, path=path, status=status, times=times, body=body, headers=headers,
                         delay=delay, query=query)  # fmt: skip

    def deny(self, *, verb: str, group: str, resource: str) -> None:
        """From now on the token's user may not ``verb`` (``*`` = any) ``resource`` in ``group``: 403."""
        self._auth.deny(verb, group, resource)

    def allow_all(self) -> None:
        """Drop every :meth:`deny`."""
        self._auth.allow_all()

    def expire_continue_tokens(self) -> None:
        """Like an etcd compaction: every continue token issued so far answers 410 Expired, and
        watches or exact lists from a resourceVersion issued so far answer 410 too."""
        self._store.compact()

    # ---------------------------------------------------------------- HTTP

    def _handle(self, request: Request, raw: bytes) -> Response:
        try:
            response = self._api.serve(request.method, request.url.path, dict(request.query_params), raw,
                                       request.headers)  # fmt: skip
        except KubeApiError as exc:
            response = error_response(exc)
        return self._finish(response)

    def _fault_response(self, fault: Fault, request: Request) -> Response:
        """A real Status for the injected code (the resource's NotFound/Conflict/Forbidden when it has one)."""
        headers = dict(fault.headers)
        if fault.status == 429:
            headers.setdefault("Retry-After", "1")
        if fault.body is not None:
            return self._finish(json_response(fault.body, fault.status, headers))
        query = dict(request.query_params)
        info = request_info(request.method, request.url.path, query)
        res = self._catalog.get(info.group, info.version, info.resource)
        if res is not None and info.name and fault.status in (404, 409):
            failure = not_found(res, info.name) if fault.status == 404 else conflict(res, info.name)
            return self._finish(json_response(failure.body, fault.status, headers))
        if fault.status == 403 and info.resource_request:
            return self._finish(json_response(self._auth.forbidden(info, self.user).body, 403, headers))
        reason, message = REASONS.get(fault.status, ("", ""))
        extra: Obj | None = None
        if fault.status == 410 and query.get("continue"):
            message = CONTINUE_EXPIRED
        elif fault.status == 500:
            extra = {"causes": [{"message": "injected fault"}]}
        elif fault.status == 429:
            extra = {"retryAfterSeconds": int(headers["Retry-After"]) if headers["Retry-After"].isdigit() else 1}
        body = status_body(fault.status, message or f"HTTP {fault.status}", reason, extra)
        return self._finish(json_response(body, fault.status, headers))

    def _finish(self, response: Response) -> Response:
        """The headers every apiserver response carries."""
        response.headers["Audit-Id"] = str(uuid.uuid4())
        response.headers["Cache-Control"] = "no-cache, private"
        response.headers["X-Kubernetes-Pf-Flowschema-Uid"] = self._flow_uids[0]
        response.headers["X-Kubernetes-Pf-Prioritylevel-Uid"] = self._flow_uids[1]
        return response
