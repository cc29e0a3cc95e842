"""The Kubernetes API, as policyflow uses it: list and read reports, patch their annotations, read a
resource, record an Event.

Configuration (kubeconfig, ``--context``, in-cluster service account, TLS) comes from the official
``kubernetes`` client; requests go through its ``ApiClient`` so auth and TLS behave exactly as
``kubectl`` users expect. Responses are decoded straight from JSON into dicts: building the
client's model objects for tens of thousands of reports costs more than the LIST itself.

Every failure is raised as a typed error carrying the HTTP status, the Status object's reason and
causes, and Retry-After: :class:`TransientError` (connection trouble, 409, 429, 5xx: retried) or
:class:`PermanentError` (401 and 403, naming the verb and resource RBAC refused, are refusals of
policyflow itself; 404; 422 ``Too long`` on annotations; 400/422: not retried).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from policyflow.clients.kube_errors import AlreadyExists as AlreadyExists
from policyflow.clients.kube_errors import ContinueExpired as ContinueExpired
from policyflow.clients.kube_errors import KubeError as KubeError
from policyflow.clients.kube_errors import KubeUnavailable as KubeUnavailable
from policyflow.clients.kube_errors import WatchExpired as WatchExpired
from policyflow.clients.kube_errors import error_for
from policyflow.domain.errors import ConfigError, NotFoundError
from policyflow.domain.model import ReportKind, ReportRef, ResourceRef

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
#: Ask for metadata only when all we need is uids and generations (the apiserver drops spec/status).
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


@dataclass(frozen=True, slots=True)
class ApiResource:
    """One entry of an API group's discovery document."""

    plural: str
    kind: str
    namespaced: bool


def _load_kubeconfig(configuration: k8s.Configuration, kubeconfig: Path | None, context: str | None) -> bool:
    """Load ``kubeconfig`` (or the default one) into ``configuration``; False when there is none to
    load and none was named (then the in-cluster service account is the way)."""
    try:
        k8s_config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context,
                                    client_configuration=configuration)
    except (ConfigException, FileNotFoundError, OSError) as kube_exc:
        if kubeconfig is not None or context is not None:
            raise ConfigError(f"kubeconfig: {kube_exc}; check --kubeconfig/--context") from None
        return False
    return True


@dataclass(slots=True)
class KubeClient:
    """A thin client over the official ``ApiClient``; one per process, safe to share between threads."""

    api: k8s.ApiClient
    request_timeout: float = 30.0
    _discovery: dict[str, dict[str, ApiResource] | None] = field(default_factory=dict)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, *, kubeconfig: Path | None = None, context: str | None = None, ca_file: Path | None = None,
        in_cluster: bool = False,
    ) -> KubeClient:
        """Load the normal client configuration: ``kubeconfig``/``$KUBECONFIG``/``~/.kube/config``,
        else the in-cluster service account (only that with ``in_cluster``). ConfigError when neither
        is usable.

        ``ca_file`` replaces the CA the configuration names (a private CA in front of the API server).
        """
        configuration = k8s.Configuration()
        if in_cluster or not _load_kubeconfig(configuration, kubeconfig, context):
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                raise ConfigError(
                    "not running in a cluster (no service account token): in_cluster needs a pod"
                    if in_cluster else
                    "no cluster configuration: no kubeconfig found ($KUBECONFIG, ~/.kube/config) and not "
                    "running in a cluster; set POLICYFLOW_KUBECONFIG or --kubeconfig"
                ) from None
        # Retries are the task retry policy's job, with backoff; urllib3 retrying underneath would
        # multiply them and hide connection trouble.
        configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=2, status=0)
        if ca_file is not None:
            if not ca_file.is_file():
                raise ConfigError(
                    f"kube_ca_file {ca_file}: no such file; point POLICYFLOW_KUBE_CA_FILE at a PEM bundle"
                )
            configuration.ssl_ca_cert = str(ca_file)
            configuration.verify_ssl = True
        return cls(api=k8s.ApiClient(configuration))

    def close(self) -> None:
        self.api.close()

    # --- the one request function ---------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
        what: str = "",
    ) -> Any:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, str(v)) for k, v in (query or {}).items()]
        _, url, headers, body_out, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(method, url, header_params=headers, body=body_out,
                                         _request_timeout=self.request_timeout)
            raw = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"cluster unreachable for {method} {path}: {type(exc).__name__}") from None
        except k8s.ApiException as exc:  # raised for TLS errors, with status 0
            raise KubeUnavailable(f"cluster unreachable for {method} {path}: {exc.reason}") from None
        status = response.status
        if 200 <= status < 300:
            return json.loads(raw) if raw else None
        raise error_for(method, path, status, raw, response.getheader("Retry-After"), what)

    # --- discovery ------------------------------------------------------------------------------

    def discover(self, api_version: str) -> dict[str, Any] | None:
        """The APIResourceList of an API group version as the server answers it now (never cached:
        Gatekeeper adds a constraint kind whenever a template is created); None when it is not served."""
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            document: dict[str, Any] = self._request("GET", path)
        except NotFoundError:
            return None
        return document

    def api_resources(self, api_version: str) -> dict[str, ApiResource] | None:
        """The resources an API group version serves, by kind; None when it is not installed."""
        if api_version not in self._discovery:
            document = self.discover(api_version)
            if document is None:
                self._discovery[api_version] = None
            else:
                self._discovery[api_version] = {
                    r["kind"]: ApiResource(plural=r["name"], kind=r["kind"], namespaced=bool(r.get("namespaced")))
                    for r in document.get("resources", [])
                    if "/" not in r.get("name", "")
                }
        return self._discovery[api_version]

    def is_served(self, kind: ReportKind) -> bool:
        """Whether the cluster serves this report kind (its CRD is installed)."""
        resources = self.api_resources(kind.api_version)
        return resources is not None and kind.kind in resources

    # --- reports --------------------------------------------------------------------------------

    @staticmethod
    def _report_path(kind: ReportKind, *, namespace: str | None = None, name: str | None = None) -> str:
        path = f"/apis/{kind.group}/{kind.version}"
        if kind.namespaced and namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{kind.plural}"
        if name:
            path += f"/{quote(name, safe='')}"
        return path

    def list_reports(
        self,
        kind: ReportKind,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Every report of ``kind`` (in ``namespace``, or all), page by page with ``limit``/``continue``.

        A continue token that expired mid-list (410 Gone, after etcd compaction) restarts the list
        from the beginning; reports already yielded are not yielded twice, so no report is missed and
        none is seen twice in one cycle.
        """
        path = self._report_path(kind, namespace=namespace)
        seen: set[str] = set()
        token = ""
        while True:
            query: dict[str, str | int] = {"limit": page_size}
            if label_selector:
                query["labelSelector"] = label_selector
            if token:
                query["continue"] = token
            try:
                page = self._request("GET", path, query=query, what=f"list {kind.plural}")
            except ContinueExpired:
                log.warning("list of %s: continue token expired; listing again from the start", kind.plural)
                token = ""
                continue
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                ident = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
                if ident in seen:
                    continue
                seen.add(ident)
                # A LIST's items carry no kind/apiVersion; put them back so an item reads like a GET.
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
                yield item
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def list_version(self, kind: ReportKind, *, label_selector: str = "") -> str:
        """The collection's current resourceVersion (a LIST of one item): where a watch starts."""
        query: dict[str, str | int] = {"limit": 1}
        if label_selector:
            query["labelSelector"] = label_selector
        page = self._request("GET", self._report_path(kind), query=query, what=f"list {kind.plural}")
        return str((page.get("metadata") or {}).get("resourceVersion") or "")

    def watch_reports(
        self, kind: ReportKind, *, resource_version: str, label_selector: str = "", timeout_seconds: int = 300
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Changes to reports of ``kind`` after ``resource_version``, as (type, object) pairs, until the
        server ends the watch (``timeout_seconds``). BOOKMARK events carry only a newer resourceVersion.

        Raises :class:`WatchExpired` when the version is too old (410 Gone): list again, then watch.
        """
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", str(timeout_seconds))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        path = self._report_path(kind)
        _, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api("GET", url, header_params=headers,
                                         _request_timeout=(10.0, timeout_seconds + 30.0))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"cluster unreachable for watch {kind.plural}: {type(exc).__name__}") from None
        if response.status != 200:
            raw = response.read()
            error = error_for("GET", path, response.status, raw, response.getheader("Retry-After"),
                               f"watch {kind.plural}")
            if response.status == 410:
                raise WatchExpired(str(error))
            raise error
        buffer = b""
        try:
            for chunk in response.response.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind_of, obj = event.get("type", ""), event.get("object") or {}
                    if kind_of == "ERROR":
                        if obj.get("code") == 410:
                            raise WatchExpired(f"watch {kind.plural}: {obj.get('message', 'too old')}")
                        raise KubeUnavailable(f"watch {kind.plural}: {obj.get('message', 'error event')}")
                    obj.setdefault("apiVersion", kind.api_version)
                    obj.setdefault("kind", kind.kind)
                    yield kind_of, obj
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"watch {kind.plural} broke off: {type(exc).__name__}") from None
        finally:
            response.response.release_conn()

    def get_report(self, ref: ReportRef) -> dict[str, Any]:
        """The report now. NotFoundError when it is gone."""
        path = self._report_path(ref.kind, namespace=ref.namespace, name=ref.name)
        result: dict[str, Any] = self._request("GET", path, what=f"get {ref.kind.plural}")
        return result

    def patch_report_annotations(
        self, ref: ReportRef, annotations: Mapping[str, str | None], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """JSON merge-patch these annotations onto the report (None removes one).

        A merge-patch touches nothing else, so it never fights Kyverno's rewrites of ``results``.
        With ``resource_version`` the patch is conditional: 409 if the report changed meanwhile.
        """
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        path = self._report_path(ref.kind, namespace=ref.namespace, name=ref.name)
        result: dict[str, Any] = self._request(
            "PATCH", path, body={"metadata": metadata}, content_type=MERGE_PATCH, what=f"patch {ref.kind.plural}"
        )
        return result

    # --- the failing resource -------------------------------------------------------------------

    def _resource_path(self, resource: ResourceRef, *, with_name: bool = True) -> str:
        api_version = resource.api_version or "v1"
        served = self.api_resources(api_version)
        if served is None or resource.kind not in served:
            raise NotFoundError(f"{api_version} {resource.kind} is not served by this cluster")
        info = served[resource.kind]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if info.namespaced and resource.namespace:
            base += f"/namespaces/{quote(resource.namespace, safe='')}"
        base += f"/{info.plural}"
        return f"{base}/{quote(resource.name, safe='')}" if with_name else base

    def get_resource(self, resource: ResourceRef) -> dict[str, Any]:
        """The failing resource itself (for its labels and generation). NotFoundError when gone."""
        result: dict[str, Any] = self._request("GET", self._resource_path(resource), what=f"get {resource.kind}")
        return result

    def resource_generations(self, api_version: str, kind: str, *, page_size: int = 500) -> dict[str, int]:
        """``metadata.generation`` of every object of one kind, by uid: one metadata-only LIST.

        This is the cheap signal that a failing resource changed: per cycle it costs one paginated
        metadata LIST per kind among the handled violations (served from the apiserver's watch cache),
        instead of one GET per violation.
        """
        probe = ResourceRef(api_version=api_version, kind=kind, name="-")
        path = self._resource_path(probe, with_name=False)
        generations: dict[str, int] = {}
        token = ""
        while True:
            query: dict[str, str | int] = {"limit": page_size}
            if token:
                query["continue"] = token
            try:
                page = self._request("GET", path, query=query, accept=METADATA_ONLY, what=f"list {kind}")
            except ContinueExpired:
                token = ""
                continue
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                uid, generation = meta.get("uid"), meta.get("generation")
                if isinstance(uid, str) and isinstance(generation, int):
                    generations[uid] = generation
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return generations

    # --- events ---------------------------------------------------------------------------------

    def create_event(self, event: Mapping[str, Any]) -> None:
        """Create a core/v1 Event (an existing one with the same name counts as done)."""
        namespace = event["metadata"]["namespace"]
        try:
            self._request("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/events", body=dict(event),
                          content_type="application/json", what="create events")
        except AlreadyExists:
            log.debug("event %s already exists", event["metadata"].get("name"))

    # --- process leases (coordination.k8s.io) ---------------------------------------------------

    @staticmethod
    def _lease_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"
        return f"{path}/{quote(name, safe='')}" if name else path

    def create_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Create a Lease (AlreadyExists when one has its name)."""
        result: dict[str, Any] = self._request("POST", self._lease_path(lease["metadata"]["namespace"]),
                                               body=dict(lease), content_type="application/json",
                                               what="create leases")
        return result

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Replace a Lease; with ``metadata.resourceVersion``, only that version (ConflictError if not)."""
        metadata = lease["metadata"]
        result: dict[str, Any] = self._request("PUT", self._lease_path(metadata["namespace"], metadata["name"]),
                                               body=dict(lease), content_type="application/json",
                                               what="update leases")
        return result

    def get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        """A Lease (NotFoundError when there is none)."""
        result: dict[str, Any] = self._request("GET", self._lease_path(namespace, name), what="get leases")
        return result

    def list_leases(self, namespace: str, *, label_selector: str) -> list[dict[str, Any]]:
        """The Leases in ``namespace`` that ``label_selector`` selects (few: one per policyflow process)."""
        return self._list_all(self._lease_path(namespace), label_selector=label_selector, what="list leases")

    def _list_all(self, path: str, *, label_selector: str, what: str) -> list[dict[str, Any]]:
        """Every item of a paginated LIST (pages of 500)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query: dict[str, str | int] = {"labelSelector": label_selector, "limit": 500}
            if token:
                query["continue"] = token
            page = self._request("GET", path, query=query, what=what)
            items += [i for i in (page or {}).get("items") or [] if isinstance(i, dict)]
            token = ((page or {}).get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def delete_lease(self, namespace: str, name: str) -> None:
        """Delete a Lease (one already gone counts as deleted)."""
        with contextlib.suppress(NotFoundError):
            self._request("DELETE", self._lease_path(namespace, name), what="delete leases")

    # --- the lifecycle journal's ConfigMaps -------------------------------------------------------

    @staticmethod
    def _config_map_path(namespace: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps"
        return f"{path}/{quote(name, safe='')}" if name else path

    def list_config_maps(self, namespace: str, *, label_selector: str) -> list[dict[str, Any]]:
        """The ConfigMaps in ``namespace`` that ``label_selector`` selects."""
        return self._list_all(self._config_map_path(namespace), label_selector=label_selector,
                              what="list configmaps")

    def patch_config_map_data(self, namespace: str, name: str, data: Mapping[str, str | None]) -> None:
        """Merge ``data`` into a ConfigMap's data (``None`` deletes a key); NotFoundError when it is missing."""
        self._request("PATCH", self._config_map_path(namespace, name), body={"data": dict(data)},
                      content_type="application/merge-patch+json", what="patch configmaps")

    def create_config_map(self, config_map: Mapping[str, Any]) -> None:
        """Create a ConfigMap (AlreadyExists when one has its name)."""
        self._request("POST", self._config_map_path(config_map["metadata"]["namespace"]), body=dict(config_map),
                      content_type="application/json", what="create configmaps")

    # --- preflight (policyflow check) -----------------------------------------------------------

    def server_version(self) -> str:
        """The apiserver's ``gitVersion`` (``GET /version``): proof that the cluster answers."""
        data = self._request("GET", "/version", what="get /version")
        return str((data or {}).get("gitVersion") or "unknown version")

    def access_review(self, *, verb: str, group: str, resource: str, namespace: str | None = None) -> bool:
        """Whether policyflow's credentials may ``verb`` ``resource`` in ``group`` cluster-wide (or in
        ``namespace``), as the apiserver's authorizer answers a SelfSubjectAccessReview (``group`` "" is core)."""
        attributes = {"verb": verb, "group": group, "resource": resource}
        if namespace:
            attributes["namespace"] = namespace
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        data = self._request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review,
                             content_type="application/json", what="create selfsubjectaccessreviews")
        return bool(((data or {}).get("status") or {}).get("allowed"))
