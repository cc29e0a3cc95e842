"""Authentication and authorization, which the apiserver runs before routing [05].

A bearer token other than the stand-in's is 401; no token is ``system:anonymous`` (403 on
everything but the public info paths); the token's user may do anything except what
:meth:`Authorizer.deny` took away, which is 403 with the RBAC message even for paths that do not
exist. SelfSubjectAccessReviews answer from the same deny list.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from policyflow.standins.kube.codec import CREATE_PREFIX, decode_json, truthy
from policyflow.standins.kube.discovery import PUBLIC_PATHS
from policyflow.standins.kube.errors import KubeApiError, cause, error, invalid, method_not_allowed
from policyflow.standins.kube.objects import Obj

DEFAULT_USER = "system:serviceaccount:policyflow:policyflow"
ANONYMOUS = "system:anonymous"


@dataclass
class RequestInfo:
    """What the apiserver's RequestInfoFactory reads from a path; authorization runs on it before routing."""

    resource_request: bool
    verb: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""


def request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    elif len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        return RequestInfo(False)
    if not rest:
        return RequestInfo(False)
    info = RequestInfo(True, group=group, version=version)
    if rest[0] == "namespaces" and len(rest) > 1:
        info.namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    info.resource = rest[0]
    info.name = rest[1] if len(rest) > 1 else ""
    info.subresource = rest[2] if len(rest) > 2 else ""
    if method in ("GET", "HEAD"):
        info.verb = "get" if info.name else ("watch" if truthy(query.get("watch")) else "list")
    else:
        info.verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
        if method == "DELETE":
            info.verb = "delete" if info.name else "deletecollection"
    return info


class Authorizer:
    """One token, one user, and the verbs that user was denied."""

    def __init__(self, token: str, user: str, *, anonymous_is_user: bool) -> None:
        self.token = token
        self.user = user
        self._anonymous_is_user = anonymous_is_user
        self._lock = threading.Lock()
        self._denied: list[tuple[str, str, str]] = []

    def deny(self, verb: str, group: str, resource: str) -> None:
        with self._lock:
            self._denied.append((verb, group, resource))

    def allow_all(self) -> None:
        with self._lock:
            self._denied.clear()

    def allowed(self, verb: str, group: str, resource: str) -> bool:
        with self._lock:
            return not any(v in ("*", verb) and g in ("*", group) and r in ("*", resource) for v, g, r in self._denied)

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The requesting user; a wrong bearer token is 401."""
        authorization = headers.get("authorization")
        if authorization is not None and authorization != f"Bearer {self.token}":
            raise error(401, "Unauthorized")
        return self.user if authorization is not None or self._anonymous_is_user else ANONYMOUS

    def authorize(self, user: str, path: str, info: RequestInfo) -> None:
        """403 unless ``user`` may do what ``info`` describes (or read a public non-resource path)."""
        if not info.resource_request:
            if user == ANONYMOUS and path.rstrip("/") not in PUBLIC_PATHS:
                raise error(403, f'forbidden: User "{user}" cannot get path "{path}"', {})
            return
        sub = f"{info.resource}/{info.subresource}"
        if (
            user == ANONYMOUS
            or not self.allowed(info.verb, info.group, info.resource)
            or (info.subresource and not self.allowed(info.verb, info.group, sub))
        ):
            raise self.forbidden(info, user)

    @staticmethod
    def forbidden(info: RequestInfo, user: str) -> KubeApiError:
        resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
        qualified = f"{info.resource}.{info.group}" if info.group else info.resource
        subject = f'{qualified} "{info.name}"' if info.name else qualified
        scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        message = (f'{subject} is forbidden: User "{user}" cannot {info.verb} resource "{resource}" '
                   f'in API group "{info.group}" {scope}')  # fmt: skip
        details: Obj = {"name": info.name} if info.name else {}
        if info.group:
            details["group"] = info.group
        details["kind"] = info.resource
        return error(403, message, details)

    def access_review(self, method: str, name: str, raw: bytes) -> tuple[Obj, int]:
        """POST of a SelfSubjectAccessReview: whether the token's user may do what it asks."""
        if method != "POST" or name:
            raise method_not_allowed()
        body = decode_json(raw, CREATE_PREFIX)
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            message = "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified"
            problem = cause("FieldValueRequired", message, "spec.resourceAttributes")
            raise invalid("SelfSubjectAccessReview.authorization.k8s.io", "", [problem],
                          {"group": "authorization.k8s.io", "kind": "SelfSubjectAccessReview"})  # fmt: skip
        attrs = spec.get("resourceAttributes")
        allowed = True
        if isinstance(attrs, dict):
            resource = str(attrs.get("resource", ""))
            verb, group, sub = str(attrs.get("verb", "")), str(attrs.get("group", "")), attrs.get("subresource")
            allowed = self.allowed(verb, group, resource)
            allowed = allowed and (not sub or self.allowed(verb, group, f"{resource}/{sub}"))
        review = {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"allowed": allowed},
        }
        return review, 201
