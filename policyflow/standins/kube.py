"""A loopback stand-in for the Kubernetes API server (the part policyflow and its tests use).

It answers the official ``kubernetes`` Python client the way kube-apiserver v1.32 did in the recordings
under ``shared/specs/kube`` (see the checklist in its README). Served over real HTTP by
:class:`~policyflow.standins.server.LoopbackServer`:

* Discovery: ``/version``, ``/api``, ``/apis``, ``/apis/{group}``, ``/apis/{group}/{version}``, with and
  without a trailing slash. Anything the server cannot route is ``404`` text/plain ``404 page not found``.
* Custom resources from CustomResourceDefinition YAMLs (every served version, scope from the CRD), plus
  core/v1 ``namespaces``, ``events``, ``pods``, apps/v1 ``deployments`` and authorization.k8s.io/v1
  ``selfsubjectaccessreviews``. CR bodies are pruned and validated against the structural schema
  (unknown fields dropped with a ``Warning`` header or 400 under ``fieldValidation=Strict``;
  type/enum/required violations give 422 ``Invalid`` with ``details.causes``).
* One global ``resourceVersion`` counter; lists with ``limit``/``continue`` served from a consistent
  snapshot, label and field selectors, ``resourceVersionMatch=Exact``.
* Create/get/PUT/merge-patch/JSON-patch/delete with the real Status bodies (409 Conflict and
  AlreadyExists, 422 on a PUT without resourceVersion, 415 for strategic merge on a CR, ...).
* Watches: newline-delimited WatchEvents, replay from a resourceVersion, initial ADDED events,
  watch-list end BOOKMARK, periodic and pre-timeout BOOKMARKs, ``ERROR`` 410 for a too-old version.
* Bearer-token authentication (401), per-verb denials (403 with the RBAC message), fault injection,
  "etcd compaction" (:meth:`KubeStandin.expire_continue_tokens`) and a log of every request.

Deliberate simplifications: no managedFields, no admission webhooks or controllers (deleting a
namespace removes its objects at once), no label-key syntax validation, strategic merge patch on
built-in kinds is applied as a JSON merge patch, server-side apply (``application/apply-patch+yaml``)
is a merge patch that may create the object (no field ownership), ``dryRun`` is not supported.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import hashlib
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from policyflow.standins.server import LoopbackServer, Standin

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: CRDs load 10x faster

__all__ = [
    "DEFAULT_USER",
    "KubeApiError",
    "KubeStandin",
    "PatchError",
    "RecordedRequest",
    "Requirement",
    "Resource",
    "SelectorError",
    "decode_continue",
    "encode_continue",
    "json_patch",
    "match_labels",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
    "resources_from_crd",
    "status_body",
    "strip_server_metadata",
]

Obj = dict[str, Any]

DEFAULT_USER = "system:serviceaccount:policyflow:policyflow"
ANONYMOUS = "system:anonymous"
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
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)
NAMESPACE_MISMATCH = "the namespace of the provided object does not match the namespace sent on the request"
CONFLICT = "the object has been modified; please apply your changes to the latest version and try again"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
DEFAULT_WATCH_TIMEOUT = 1800.0  # the apiserver's --min-request-timeout
HISTORY_LIMIT = 10_000  # watch-cache size; older changes are "compacted"
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
METADATA_LIST_TYPE = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_UNAUTHENTICATED_PATHS = {"/version", "/healthz", "/livez", "/readyz"}  # system:public-info-viewer
_CYCLE = "policyflow.standins.kube.cycle"  # scope key: uvicorn's request cycle, to drop a connection
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
_META_FIELDS = (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
)  # fmt: skip
_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
_REASONS = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    406: ("NotAcceptable", "not acceptable"),
    409: ("Conflict", "the server reported a conflict"),
    410: ("Expired", "The resourceVersion for the provided list is too old."),
    415: ("UnsupportedMediaType", "the body of the request was in an unknown format"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be "
          "processing the request"),
}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Errors and Status bodies
# --------------------------------------------------------------------------------------------------


def status_body(code: int, message: str, reason: str = "", details: Obj | None = None) -> Obj:
    """A failure ``Status`` in the apiserver's field order; empty ``reason``/``details`` are omitted."""
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class KubeApiError(Exception):
    """An answer other than success: the HTTP status, a Status body (or plain text) and extra headers.

    Raised by the test-side store methods too (e.g. ``create`` of an existing object: 409).
    """

    def __init__(self, code: int, body: Obj | str, headers: Mapping[str, str] | None = None) -> None:
        self.code = code
        self.body = body
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {body['message'] if isinstance(body, dict) else body.strip()}")


def _error(code: int, message: str, details: Obj | None = None) -> KubeApiError:
    return KubeApiError(code, status_body(code, message, _REASONS.get(code, ("", ""))[0], details))


def _page_not_found() -> KubeApiError:
    return KubeApiError(404, "404 page not found\n")


def _details(res: Resource, name: str = "", *, kind: str = "") -> Obj:
    """``details`` as the apiserver fills it: name if any, group unless core, kind (plural by default)."""
    out: Obj = {}
    if name:
        out["name"] = name
    if res.group:
        out["group"] = res.group
    out["kind"] = kind or res.plural
    return out


def _not_found(res: Resource, name: str) -> KubeApiError:
    return _error(404, f'{res.qualified} "{name}" not found', _details(res, name))


def _conflict(res: Resource, name: str, why: str = CONFLICT) -> KubeApiError:
    return _error(409, f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}', _details(res, name))


def _cause(reason: str, message: str, path: str) -> Obj:
    return {"reason": reason, "message": message, "field": path}


def _invalid(qualified_kind: str, name: str, causes: list[Obj], details: Obj) -> KubeApiError:
    """422 Invalid: ``Kind.group "name" is invalid: <one error>`` or ``... is invalid: [a, b]``."""
    errors = [f"{c['field']}: {c['message']}" for c in causes]
    joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    return _error(422, f'{qualified_kind} "{name}" is invalid: {joined}', {**details, "causes": causes})


# --------------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------------

_CR_VERBS = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")
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
    verbs: tuple[str, ...] = _CR_VERBS
    categories: tuple[str, ...] = ()
    schema: Obj | None = field(default=None, compare=False, hash=False)  # openAPIV3Schema of a CR
    builtin: bool = False  # typed object: Go field order, list items without kind, no empty "continue"
    status_subresource: bool = False
    has_generation: bool = True
    unconditional_update: bool = False  # built-ins accept a PUT without resourceVersion
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
    kw.setdefault("verbs", ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"))
    return Resource(group, "v1", plural, kind, kind.lower(), namespaced, list_kind=f"{kind}List",
                    builtin=True, unconditional_update=True, **kw)  # fmt: skip


BUILTIN_RESOURCES = (
    _builtin("", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True,
             has_generation=False, delete_returns_object=True, fields=(("status.phase", "status.phase"),),
             verbs=("create", "delete", "get", "list", "patch", "update", "watch")),
    _builtin("", "events", "Event", True, short_names=("ev",), has_generation=False, fields=_EVENT_FIELDS),
    _builtin("", "pods", "Pod", True, short_names=("po",), categories=("all",), status_subresource=True,
             has_generation=False, delete_returns_object=True, fields=_POD_FIELDS),
    _builtin("apps", "deployments", "Deployment", True, short_names=("deploy",), categories=("all",),
             status_subresource=True),
    _builtin("authorization.k8s.io", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
             has_generation=False, verbs=("create",)),
)  # fmt: skip


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


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Kube-aware version order: GA before beta before alpha, higher numbers first, others last."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), version)


def _storage_version_hash(res: Resource) -> str:
    digest = hashlib.sha256(f"{res.group}/{res.version}/{res.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


# --------------------------------------------------------------------------------------------------
# Pure helpers: metadata, patches, selectors, continue tokens, schema
# --------------------------------------------------------------------------------------------------


def strip_server_metadata(obj: Mapping[str, Any]) -> Obj:
    """A deep copy of ``obj`` without the fields the server sets (so it can be created again)."""
    out = copy.deepcopy(dict(obj))
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for key in _SERVER_META:
            meta.pop(key, None)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, anything else replaces.

    Neither argument is modified.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PatchError(ValueError):
    """A JSON patch that cannot be applied (bad op, missing path, failed ``test``)."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]] if path else []


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            raise PatchError(f"path not found: /{'/'.join(tokens)}")
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _resolve(doc, tokens[:-1]), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and (last == "-" or (last.isdigit() and int(last) <= len(parent))):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        raise PatchError(f"cannot add at /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    _resolve(doc, tokens)  # must exist
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _resolve(doc, tokens[:-1]), tokens[-1]
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test) to a copy of ``doc``."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict):
            raise PatchError(f"not an operation: {op!r}")
        kind, path = op.get("op"), _pointer(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            doc = _add(_remove(doc, path), path, copy.deepcopy(op["value"])) if path else op["value"]
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = copy.deepcopy(_resolve(doc, source))
            if kind == "move":
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
        elif kind == "test":
            if _resolve(doc, path) != op["value"]:
                raise PatchError(f"test failed at {op.get('path')}")
        else:
            raise PatchError(f"unknown op {kind!r}")
    return doc


class SelectorError(ValueError):
    """An unparsable label or field selector; the message is the apiserver's (400 BadRequest)."""


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is ``exists``, ``!``, ``=``, ``!=``, ``in``, ``notin``, ``gt``, ``lt``."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present or not re.fullmatch(r"-?\d+", value):
            return False
        return int(value) > int(self.values[0]) if self.op == "gt" else int(value) < int(self.values[0])


_BINARY_OPS = "in, notin, =, ==, !=, gt, lt"


def _lex_selector(text: str) -> list[tuple[str, str]]:
    """Tokens as k8s.io/apimachinery/pkg/labels lexes them: (kind, literal)."""
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith(("!=", "=="), i):
            tokens.append(("op", text[i : i + 2]))
            i += 2
        elif text[i] in "=<>":
            tokens.append(("op", {"<": "lt", ">": "gt"}.get(text[i], text[i])))
            i += 1
        elif text[i] in "!(),":
            tokens.append((text[i], text[i]))
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "!=<>(),":
                j += 1
            word = text[i:j]
            tokens.append(("op" if word in ("in", "notin") else "id", word))
            i = j
    return tokens


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a label selector (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``)."""
    tokens = _lex_selector(text)
    pos = 0

    def peek() -> tuple[str, str]:
        return tokens[pos] if pos < len(tokens) else ("end", "")

    def fail(message: str) -> SelectorError:
        return SelectorError(f"unable to parse requirement: {message}")

    requirements: list[Requirement] = []
    while tokens:
        kind, literal = peek()
        if kind not in ("id", "!"):
            raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")
        negated = kind == "!"
        pos += 1 if negated else 0
        kind, key = peek()
        if kind != "id":
            raise fail(f"found '{key}', expected: identifier")
        pos += 1
        kind, literal = peek()
        if negated or kind in ("end", ","):
            requirements.append(Requirement(key, "!" if negated else "exists"))
        elif kind != "op":
            raise fail(f"found '{literal}', expected: {_BINARY_OPS}")
        else:
            pos += 1
            op = "=" if literal == "==" else literal
            if op in ("in", "notin"):
                if peek()[0] != "(":
                    raise fail(f"found '{peek()[1]}' expected: '('")
                pos += 1
                values: list[str] = []
                while peek()[0] != ")":
                    kind, literal = peek()
                    if kind == "id":
                        values.append(literal)
                        pos += 1
                    elif kind == ",":
                        pos += 1
                    else:
                        raise fail(f"found '{literal}', expected: ',', ')' or identifier")
                pos += 1
                if not values:
                    raise fail("for 'in', 'notin' operators, values set can't be empty")
                requirements.append(Requirement(key, op, tuple(values)))
            else:
                kind, literal = peek()
                if kind == "id":
                    pos += 1
                elif kind not in ("end", ","):
                    raise fail(f"found '{literal}', expected: identifier")
                value = literal if kind == "id" else ""
                if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", value):
                    raise fail(f"for 'Gt', 'Lt' operators, the value must be an integer: {value!r}")
                requirements.append(Requirement(key, op, (value,)))
        kind, literal = peek()
        if kind == "end":
            break
        if kind != ",":
            raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
        pos += 1
        if peek()[0] not in ("id", "!"):
            raise SelectorError(f"found '{peek()[1]}', expected: identifier after ','")
    return requirements


def match_labels(requirements: Iterable[Requirement], labels: Mapping[str, str] | None) -> bool:
    """True when every requirement holds for ``labels`` (an empty selector matches everything)."""
    return all(r.matches(labels or {}) for r in requirements)


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    """Parse ``a=b,c!=d`` into ``(field, op, value)`` with op ``=`` or ``!=`` (``==`` means ``=``)."""
    out: list[tuple[str, str, str]] = []
    for term in (t for t in re.split(r"(?<!\\),", text) if t) if text else ():
        m = re.match(r"(.*?)(!=|==|=)(.*)", term, re.S)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        value = re.sub(r"\\(.)", r"\1", m.group(3))
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", value))
    return out


def encode_continue(resource_version: int, start: str) -> str:
    """A continue token the way the apiserver builds it (unpadded base64url JSON; clients must not parse)."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": resource_version, "start": start + "\x00"}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    """``(resourceVersion, last key)`` of a token; :class:`SelectorError` with the apiserver's message."""
    prefix = "invalid continue token: continue key is not valid: "
    alphabet = re.compile(r"[A-Za-z0-9_-]")
    for i, char in enumerate(token):
        if not alphabet.fullmatch(char):
            raise SelectorError(f"{prefix}illegal base64 data at input byte {i}")
    if len(token) % 4 == 1:
        raise SelectorError(f"{prefix}illegal base64 data at input byte {len(token) - 1}")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError as exc:
        raise SelectorError(f"{prefix}{exc}") from None
    if not isinstance(data, dict) or data.get("v") != "meta.k8s.io/v1":
        raise SelectorError(f"{prefix}server does not recognize this encoded version")
    rv, start = data.get("rv"), data.get("start")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv == 0 or rv < -1:
        raise SelectorError(f"{prefix}incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    if not isinstance(start, str) or not start.strip("/\x00"):
        raise SelectorError(f"{prefix}encoded start key empty")
    return rv, start.rstrip("\x00").lstrip("/")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def _type_ok(expected: str, value: Any) -> bool:
    actual = _json_type(value)
    if expected == "number":
        return actual in ("integer", "number")
    if expected == "integer" and actual == "number":
        return float(value).is_integer()
    return actual == expected


def _go_quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool) or value is None else str(value)


def _check_schema(value: Any, schema: Mapping[str, Any], path: str, unknown: list[str], causes: list[Obj]) -> Any:
    """Prune what the structural schema does not declare and collect type/enum/required violations."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok("integer", value)):
            actual = _json_type(value)
            message = f'Invalid value: "{actual}": {path} in body must be of type integer,string: "{actual}"'
            causes.append(_cause("FieldValueTypeInvalid", message, path))
        return value
    expected = schema.get("type")
    if expected and not _type_ok(expected, value):
        actual = _json_type(value)
        message = f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'
        causes.append(_cause("FieldValueTypeInvalid", message, path))
        return value
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_go_quote(v) for v in schema["enum"])
        message = f"Unsupported value: {_go_quote(value)}: supported values: {supported}"
        causes.append(_cause("FieldValueNotSupported", message, path))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        out: Obj = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                if keep_unknown:
                    out[key] = item
                else:
                    unknown.append(child)
            elif item is not None or sub.get("nullable"):  # nulls of non-nullable fields are pruned
                out[key] = item if item is None else _check_schema(item, sub, child, unknown, causes)
        for key in schema.get("required") or ():
            if key not in out:
                causes.append(_cause("FieldValueRequired", "Required value", f"{path}.{key}" if path else key))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_check_schema(v, schema["items"], f"{path}[{i}]", unknown, causes) for i, v in enumerate(value)]
    return value


def _go_json_error(exc: json.JSONDecodeError) -> str:
    """Go's encoding/json wording for the common syntax errors."""
    if exc.pos >= len(exc.doc.rstrip()):
        return "unexpected end of JSON input"
    char = exc.doc[exc.pos]
    where = (
        "looking for beginning of object key string"
        if "property name" in exc.msg
        else ("after object key:value pair" if "delimiter" in exc.msg else "looking for beginning of value")
    )
    return f"invalid character {json.dumps(char)[1:-1]!r} {where}"


def _decode_json(raw: bytes, prefix: str) -> Any:
    try:
        return json.loads(raw or b"null")
    except json.JSONDecodeError as exc:
        raise _error(400, f"{prefix}{_go_json_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise _error(400, f"{prefix}{exc}") from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalize_time(value: Any, kind: str) -> Any:
    """RFC 3339 with ``+00:00`` or fractions comes back as whole seconds with ``Z`` (metav1.Time)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _error(400, f'{kind} in version "v1" cannot be handled as a {kind}: parsing time "{value}"') from None
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sorted(value: Any) -> Any:
    """Unstructured (CR) objects serialize with sorted keys, like Go's map encoding."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _truthy(value: str | None) -> bool:
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _field_value(res: Resource, obj: Obj, label: str) -> str:
    meta = obj.get("metadata") or {}
    if label in ("metadata.name", "metadata.namespace"):
        return str(meta.get(label.split(".")[1]) or "")
    value: Any = obj
    for part in dict(res.fields)[label].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# --------------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it (recorded before faults, authentication and routing)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    raw: bytes = b""
    query_string: str = ""


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    query: re.Pattern[str] | None
    status: int
    remaining: int
    body: Obj | None
    headers: dict[str, str]
    delay: float


@dataclass(frozen=True)
class _Change:
    """One committed write: ``obj`` is the new state (None when deleted), ``prev`` the old one."""

    rv: int
    storage_key: tuple[str, str]
    key: tuple[str, str]  # (namespace or "", name)
    obj: Obj | None
    prev: Obj | None


@dataclass
class _Info:
    """What the apiserver's RequestInfoFactory reads from a path; authorization runs on it before routing."""

    resource_request: bool
    verb: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""
    namespace_path: bool = False  # .../namespaces/{ns}/{resource}...
    extra: bool = False  # more segments than any resource URL has


def _request_info(method: str, path: str, query: Mapping[str, str]) -> _Info:
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    elif len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        return _Info(False)
    if not rest:
        return _Info(False)
    info = _Info(True, group=group, version=version)
    if rest[0] == "namespaces" and len(rest) > 1:
        info.namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest, info.namespace_path = rest[2:], True
    info.resource = rest[0]
    info.name = rest[1] if len(rest) > 1 else ""
    info.subresource = rest[2] if len(rest) > 2 else ""
    info.extra = len(rest) > 3
    if method in ("GET", "HEAD"):
        info.verb = "get" if info.name else ("watch" if _truthy(query.get("watch")) else "list")
    else:
        info.verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
        if method == "DELETE":
            info.verb = "delete" if info.name else "deletecollection"
    return info


class _DropConnection(Response):
    """Closes the client's TCP connection without answering (ASGI has no "abort" message)."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = scope.get(_CYCLE)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError("kube stand-in could not find the connection to drop")
        transport.close()
        for _ in range(100):  # uvicorn marks the cycle disconnected on a later loop iteration
            if getattr(cycle, "disconnected", True):
                return
            await asyncio.sleep(0)


class KubeStandin(Standin):
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
        self._token = token
        self._anonymous_is_user = anonymous_is_user
        self.user = user
        self.bookmark_interval = bookmark_interval
        self._resources: dict[tuple[str, str, str], Resource] = {}
        for res in BUILTIN_RESOURCES:
            self._resources[(res.group, res.version, res.plural)] = res
        for path in crd_files:
            for doc in yaml.load_all(Path(path).read_text(), Loader=_YAML_LOADER):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    for res in resources_from_crd(doc):
                        self._resources[(res.group, res.version, res.plural)] = res
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._history: list[_Change] = []
        self._rv = 0
        self._oldest_rv = 0  # watches/continue tokens older than this are "compacted"
        self._faults: list[_Fault] = []
        self._denied: list[tuple[str, str, str]] = []
        self.requests: list[RecordedRequest] = []
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._flow_uids = (str(uuid.uuid4()), str(uuid.uuid4()))
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:  # a function: uvicorn sees ASGI 3
            if scope["type"] == "http":
                scope[_CYCLE] = getattr(receive, "__self__", None)  # uvicorn's cycle owns the transport
            await self.app(scope, receive, send)

        self._server = LoopbackServer(asgi)
        for name in SYSTEM_NAMESPACES:
            self.ensure_namespace(name)
        with self._lock:
            self._oldest_rv = self._rv  # like a fresh watch cache: its window starts now

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (known before :meth:`start`)."""
        return self._server.url

    def start(self) -> KubeStandin:
        """Serve in a background thread until :meth:`stop`."""
        self._closing = False
        self._server.start()
        return self

    def stop(self) -> None:
        """End open watches and stop serving."""
        self._closing = True
        self._notify()
        self._server.stop()

    def write_kubeconfig(self, path: Path, *, context: str = "standin", token: str | None = None) -> Path:
        """Write a kubeconfig pointing at this server; ``token=""`` writes a user without credentials."""
        secret = self._token if token is None else token
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
        """Create like ``kubectl create`` (no HTTP): server fields are set, errors raise :class:`KubeApiError`."""
        res = self._resource_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        namespace = str((obj.get("metadata") or {}).get("namespace") or "default") if res.namespaced else ""
        created, _ = self._create(res, namespace, copy.deepcopy(dict(obj)), validation="Ignore")
        return created

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object, or None."""
        res = self._resource_for(api_version, kind)
        with self._lock:
            obj = self._objects.get(res.storage_key, {}).get(self._key(res, namespace, name))
            return None if obj is None else self._present(res, obj)

    def replace(self, obj: Mapping[str, Any]) -> Obj:
        """Update like a controller (status included): labels/annotations/content become exactly ``obj``'s.

        The resourceVersion in ``obj`` is ignored (the write is unconditional); generation grows when
        anything outside metadata (and outside status for kinds with a status subresource) changed.
        """
        res = self._resource_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        meta = obj.get("metadata") or {}
        key = self._key(res, meta.get("namespace") or "default", str(meta.get("name", "")))
        with self._lock:
            old = self._objects.get(res.storage_key, {}).get(key)
            if old is None:
                raise _not_found(res, key[1])
            proposed = copy.deepcopy(dict(obj))
            proposed.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
            updated, _ = self._update(res, old, proposed, subresource="*", validation="Ignore")
            return updated

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete now (a namespace takes its objects with it); a missing object raises :class:`KubeApiError`."""
        res = self._resource_for(api_version, kind)
        self._delete(res, self._key(res, namespace, name), None)

    def objects(self, api_version: str, kind: str) -> list[Obj]:
        """Every stored object of that kind, all namespaces, in list order."""
        res = self._resource_for(api_version, kind)
        with self._lock:
            store = self._objects.get(res.storage_key, {})
            return [self._present(res, store[k]) for k in sorted(store)]

    def ensure_namespace(self, name: str) -> Obj:
        """The namespace ``name``, created if missing."""
        res = self._resources[("", "v1", "namespaces")]
        with self._lock:
            existing = self._objects.get(res.storage_key, {}).get(("", name))
            if existing is not None:
                return self._present(res, existing)
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            return self._create(res, "", body, validation="Ignore")[0]

    @property
    def resource_version(self) -> str:
        """The current value of the global resourceVersion counter."""
        with self._lock:
            return str(self._rv)

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
        fault = _Fault(
            method=method.upper(),
            path=re.compile(path),
            query=re.compile(query) if query is not None else None,
            status=status,
            remaining=times,
            body=body,
            headers=dict(headers or {}),
            delay=delay,
        )
        with self._lock:
            self._faults.append(fault)

    def deny(self, *, verb: str, group: str, resource: str) -> None:
        """From now on the token's user may not ``verb`` (``*`` = any) ``resource`` in ``group``: 403."""
        with self._lock:
            self._denied.append((verb, group, resource))

    def allow_all(self) -> None:
        """Drop every :meth:`deny`."""
        with self._lock:
            self._denied.clear()

    def expire_continue_tokens(self) -> None:
        """Like an etcd compaction: every continue token issued so far answers 410 Expired, and
        watches or exact lists from a resourceVersion issued so far answer 410 too."""
        with self._lock:
            self._rv += 1  # compact past every version handed out, so that new ones stay valid
            self._oldest_rv = self._rv

    def clear_faults(self) -> None:
        """Forget the faults that have not fired yet."""
        with self._lock:
            self._faults.clear()

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def _allowed(self, verb: str, group: str, resource: str) -> bool:
        with self._lock:
            return not any(v in ("*", verb) and g in ("*", group) and r in ("*", resource) for v, g, r in self._denied)

    # ---------------------------------------------------------------- store internals

    def _resource_for(self, api_version: str, kind: str) -> Resource:
        group, _, version = api_version.rpartition("/")
        for res in self._resources.values():
            if (res.group, res.version, res.kind) == (group, version, kind):
                return res
        raise KeyError(f"the stand-in does not serve {kind} in {api_version or '(no apiVersion)'}")

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "default") if res.namespaced else "", name)

    @staticmethod
    def _present(res: Resource, obj: Obj) -> Obj:
        """A copy for the caller, in the requested version (all versions share one stored object)."""
        out = copy.deepcopy(obj)
        out["apiVersion"] = res.api_version  # the key exists, so its position (sorted for CRs) stays
        return out

    def _canonical(self, res: Resource, obj: Obj) -> Obj:
        """Field order as the apiserver writes it: sorted for CRs, Go struct order at the top for built-ins."""
        if not res.builtin:
            return dict(_sorted(obj))
        meta = obj.get("metadata") or {}
        ordered_meta = {k: meta[k] for k in _META_FIELDS if k in meta}
        ordered_meta.update({k: v for k, v in meta.items() if k not in ordered_meta})
        head = {"kind": obj.get("kind", res.kind), "apiVersion": obj.get("apiVersion", res.api_version)}
        return {**head, "metadata": ordered_meta, **{k: v for k, v in obj.items() if k not in (*head, "metadata")}}

    def _commit(self, res: Resource, key: tuple[str, str], new: Obj | None, prev: Obj | None) -> None:
        """Store ``new`` (None deletes) under the next resourceVersion, log it and wake the watchers."""
        with self._lock:
            self._rv += 1
            store = self._objects.setdefault(res.storage_key, {})
            if new is None:
                store.pop(key, None)
            else:
                new["metadata"]["resourceVersion"] = str(self._rv)
                store[key] = new
            self._history.append(_Change(self._rv, res.storage_key, key, new, prev))
            if len(self._history) > HISTORY_LIMIT:
                dropped = self._history[: HISTORY_LIMIT // 2]
                del self._history[: HISTORY_LIMIT // 2]
                self._oldest_rv = max(self._oldest_rv, dropped[-1].rv)
        self._notify()

    def _state_at(self, res: Resource, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects of ``res`` as they were at ``rv`` (undo the later changes; caller holds the lock)."""
        state = dict(self._objects.get(res.storage_key, {}))
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.storage_key == res.storage_key:
                if change.prev is None:
                    state.pop(change.key, None)
                else:
                    state[change.key] = change.prev
        return state

    def _admit(self, res: Resource, obj: Obj, validation: str) -> tuple[Obj, list[str], list[Obj]]:
        """Prune unknown fields (400 under Strict) and collect schema violations for later (422)."""
        unknown: list[str] = []
        causes: list[Obj] = []
        meta = obj.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise _error(400, f"{res.kind} in version \"{res.version}\" cannot be handled as a {res.kind}: "
                              "metadata must be an object")  # fmt: skip
        if isinstance(meta, dict):
            unknown += [f"metadata.{k}" for k in meta if k not in _META_FIELDS]
            obj["metadata"] = {k: v for k, v in meta.items() if k in _META_FIELDS}
            annotations = obj["metadata"].get("annotations")
            if isinstance(annotations, dict):
                # apimachinery ValidateAnnotationsSize: keys plus values, 256 KiB in all.
                total = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
                if total > 262144:
                    causes.append(_cause("FieldValueTooLong", "Too long: must have at most 262144 bytes",
                                         "metadata.annotations"))
        if res.schema is not None:
            obj = _check_schema(obj, res.schema, "", unknown, causes)
        unknown.sort()
        if unknown and validation == "Strict":
            fields = ", ".join(f'unknown field "{f}"' for f in unknown)
            raise _error(400, f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                              f"strict decoding error: {fields}")  # fmt: skip
        return obj, ([] if validation == "Ignore" else unknown), causes

    def _decode_object(self, res: Resource, raw_body: Any, raw: bytes) -> Obj:
        """Check apiVersion/kind against the URL (built-ins default them) and return the body as a dict."""
        if not isinstance(raw_body, dict):
            raise _error(400, f"Object 'Kind' is missing in '{raw.decode(errors='replace').strip()}'")
        obj: Obj = raw_body
        if res.builtin:
            obj.setdefault("kind", res.kind)
            obj.setdefault("apiVersion", res.api_version)
        if not obj.get("kind"):
            raise _error(400, f"Object 'Kind' is missing in '{raw.decode(errors='replace').strip()}'")
        if not obj.get("apiVersion"):
            raise _error(400, f"Object 'apiVersion' is missing in '{raw.decode(errors='replace').strip()}'")
        if obj["apiVersion"] != res.api_version:
            raise _error(400, f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                              f"API version ({res.api_version})")  # fmt: skip
        if obj["kind"] != res.kind:
            raise _error(400, f"the kind in the data ({obj['kind']}) does not match the expected kind ({res.kind})")
        return obj

    def _builtin_checks(self, res: Resource, obj: Obj, name: str) -> None:
        """Defaults and validation of the typed kinds: Event fields and involvedObject namespace, Namespace status."""
        meta = obj["metadata"]
        if res.plural == "events":
            involved = obj.setdefault("involvedObject", {})
            other = involved.get("namespace")
            if other and other != meta.get("namespace"):
                message = f'Invalid value: "{other}": does not match event.namespace'
                cause = _cause("FieldValueInvalid", message, "involvedObject.namespace")
                raise _invalid(res.kind, name, [cause], _details(res, name, kind=res.kind))
            obj.setdefault("source", {})
            for key in ("firstTimestamp", "lastTimestamp", "eventTime"):
                obj[key] = _normalize_time(obj.get(key), res.kind) if key != "eventTime" else obj.get(key)
            obj.setdefault("reportingComponent", "")
            obj.setdefault("reportingInstance", "")
        elif res.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")

    def _create(self, res: Resource, namespace: str, obj: Obj, *, validation: str) -> tuple[Obj, list[str]]:
        """The create path in apiserver order: decode/prune, namespace, name, validation, RV, existence."""
        obj, warnings, causes = self._admit(res, obj, validation)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _error(400, NAMESPACE_MISMATCH)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)  # silently dropped for cluster-scoped kinds
        with self._lock:
            if res.namespaced and ("", namespace) not in self._objects.get(("", "namespaces"), {}):
                raise _error(404, f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
            if not meta.get("name"):
                if not meta.get("generateName"):
                    cause = _cause("FieldValueRequired", "Required value: name or generateName is required",
                                   "metadata.name")  # fmt: skip
                    raise _invalid(res.qualified_kind, "", [cause], _details(res, kind=res.kind))
                store = self._objects.get(res.storage_key, {})
                while not meta.get("name") or (namespace, meta["name"]) in store:
                    meta["name"] = meta["generateName"] + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
            name = str(meta["name"])
            if causes:
                raise _invalid(res.qualified_kind, name, causes, _details(res, name, kind=res.kind))
            self._builtin_checks(res, obj, name)
            if meta.get("resourceVersion"):
                raise KubeApiError(500, status_body(500, "resourceVersion should not be set on objects to be created"))
            key = (namespace, name)
            if key in self._objects.get(res.storage_key, {}):
                message = f'{res.qualified} "{name}" already exists'
                raise KubeApiError(409, status_body(409, message, "AlreadyExists", _details(res, name)))
            meta.pop("managedFields", None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta.pop("generation", None)
            if res.has_generation:
                meta["generation"] = 1
            stored = self._canonical(res, obj)
            self._commit(res, key, stored, None)
            return self._present(res, stored), warnings

    def _content(self, res: Resource, obj: Obj) -> Obj:
        """What generation tracks: everything but metadata (and status with a status subresource)."""
        skip = ("metadata", "status") if res.status_subresource else ("metadata",)
        return {k: v for k, v in obj.items() if k not in skip}

    def _update(
        self, res: Resource, old: Obj, proposed: Obj, *, subresource: str, validation: str
    ) -> tuple[Obj, list[str]]:
        """PUT/PATCH after the new object is known: RV precondition, validation, generation, no-op check."""
        name = str(old["metadata"]["name"])
        meta = proposed.get("metadata")
        if not isinstance(meta, dict):
            meta = proposed["metadata"] = {}
        if meta.get("name", name) != name:
            raise _error(400, f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if res.namespaced and meta.get("namespace", old["metadata"]["namespace"]) != old["metadata"]["namespace"]:
            raise _error(400, NAMESPACE_MISMATCH)
        rv = str(meta.get("resourceVersion") or "")
        with self._lock:
            current = self._objects.get(res.storage_key, {}).get(self._key(res, old["metadata"].get("namespace"), name))
            if current is None:
                raise _not_found(res, name)
            if not rv and not res.unconditional_update:
                message = "Invalid value: 0x0: must be specified for an update"
                cause = _cause("FieldValueInvalid", message, "metadata.resourceVersion")
                raise _invalid(res.qualified, name, [cause], _details(res, name))
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise _conflict(res, name)
            if res.status_subresource and subresource == "status":  # only status may change
                status = proposed.get("status")
                proposed = copy.deepcopy(current)
                proposed.pop("status", None)
                if status is not None:
                    proposed["status"] = status
            elif res.status_subresource and subresource == "":  # status is ignored on the main resource
                proposed.pop("status", None)
                if "status" in current:
                    proposed["status"] = copy.deepcopy(current["status"])
            proposed, warnings, causes = self._admit(res, proposed, validation)
            uid = proposed.get("metadata", {}).get("uid")
            if uid and uid != current["metadata"]["uid"]:
                causes.append(
                    _cause("FieldValueInvalid", f'Invalid value: "{uid}": field is immutable', "metadata.uid")
                )
            if causes:
                raise _invalid(res.qualified_kind, name, causes, _details(res, name, kind=res.kind))
            meta = proposed.setdefault("metadata", {})
            for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
            meta.pop("managedFields", None)
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            if res.plural == "events":
                self._builtin_checks(res, proposed, name)
            proposed["apiVersion"] = current["apiVersion"]  # stored once for all versions
            stored = self._canonical(res, proposed)
            if stored == current:
                return self._present(res, current), warnings  # no-op: no new resourceVersion, no event
            if res.has_generation and self._content(res, stored) != self._content(res, current):
                meta = stored["metadata"]
                meta["generation"] = int(meta.get("generation") or 0) + 1
            self._commit(res, (str(current["metadata"].get("namespace") or ""), name), stored, current)
            return self._present(res, stored), warnings

    def _delete(self, res: Resource, key: tuple[str, str], options: Any) -> Obj:
        """Delete with optional preconditions; returns what was stored."""
        with self._lock:
            current = self._objects.get(res.storage_key, {}).get(key)
            if current is None:
                raise _not_found(res, key[1])
            pre = options.get("preconditions") if isinstance(options, dict) else None
            if isinstance(pre, dict):
                meta = current["metadata"]
                if pre.get("uid") and pre["uid"] != meta["uid"]:
                    raise _conflict(res, key[1], f"Precondition failed: UID in precondition: {pre['uid']}, "
                                                 f"UID in object meta: {meta['uid']}")  # fmt: skip
                if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                    raise _conflict(res, key[1], "Precondition failed: ResourceVersion in precondition: "
                                                 f"{pre['resourceVersion']}, ResourceVersion in meta: "
                                                 f"{meta['resourceVersion']}")  # fmt: skip
            if res.plural == "namespaces":  # no namespace controller: its objects go at once
                for other in {r.storage_key: r for r in self._resources.values() if r.namespaced}.values():
                    for other_key in sorted(k for k in self._objects.get(other.storage_key, {}) if k[0] == key[1]):
                        self._delete(other, other_key, None)
            self._commit(res, key, None, current)
            return current

    # ---------------------------------------------------------------- watch wake-ups

    def _notify(self) -> None:
        """Wake the watch streams; test code writes from other threads, so hop onto the server loop."""
        loop = self._server.loop
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        event, self._wakeup = self._wakeup, asyncio.Event()
        if event is not None:
            event.set()

    def _wakeup_event(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    # ---------------------------------------------------------------- HTTP

    async def _endpoint(self, request: Request) -> Response:
        raw = await request.body()
        path, query_string = request.url.path, request.url.query
        query = dict(request.query_params)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(request.method, path, query, {k.lower(): v for k, v in request.headers.items()},
                                 body, raw, query_string)  # fmt: skip
        info = _request_info(request.method, path, query)
        with self._lock:
            self.requests.append(record)
            fault = self._take_fault(request.method, path, query_string)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status == 0:
                return _DropConnection()
            return self._finish(self._fault_response(fault, info, query))
        try:
            return self._finish(self._serve(request.method, path, query, raw, request.headers, info))
        except KubeApiError as exc:
            return self._finish(self._error_response(exc))

    def _take_fault(self, method: str, path: str, query_string: str) -> _Fault | None:
        for fault in self._faults:
            if (
                fault.method in ("*", method)
                and fault.path.search(path)
                and (fault.query is None or fault.query.search(query_string))
            ):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: _Fault, info: _Info, query: Mapping[str, str]) -> Response:
        headers = dict(fault.headers)
        if fault.status == 429:
            headers.setdefault("Retry-After", "1")
        if fault.body is not None:
            return _json_response(fault.body, fault.status, headers)
        reason, message = _REASONS.get(fault.status, ("", ""))
        details: Obj | None = None
        res = self._resources.get((info.group, info.version, info.resource))
        if res is not None and info.name and fault.status in (404, 409):
            error = _not_found(res, info.name) if fault.status == 404 else _conflict(res, info.name)
            return _json_response(error.body, fault.status, headers)
        if fault.status == 403 and info.resource_request:
            return _json_response(self._forbidden(info, self.user).body, 403, headers)
        if fault.status == 410 and query.get("continue"):
            message = CONTINUE_EXPIRED
        elif fault.status == 500:
            details = {"causes": [{"message": "injected fault"}]}
        elif fault.status == 429:
            details = {"retryAfterSeconds": int(headers["Retry-After"]) if headers["Retry-After"].isdigit() else 1}
        return _json_response(status_body(fault.status, message or f"HTTP {fault.status}", reason, details),
                              fault.status, headers)  # fmt: skip

    def _finish(self, response: Response) -> Response:
        response.headers["Audit-Id"] = str(uuid.uuid4())
        response.headers["Cache-Control"] = "no-cache, private"
        response.headers["X-Kubernetes-Pf-Flowschema-Uid"] = self._flow_uids[0]
        response.headers["X-Kubernetes-Pf-Prioritylevel-Uid"] = self._flow_uids[1]
        return response

    @staticmethod
    def _error_response(exc: KubeApiError) -> Response:
        if isinstance(exc.body, str):
            response = Response(exc.body.encode(), exc.code, media_type="text/plain; charset=utf-8")
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
        return _json_response(exc.body, exc.code, exc.headers)

    def _forbidden(self, info: _Info, user: str) -> KubeApiError:
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
        return _error(403, message, details)

    def _serve(
        self, method: str, path: str, query: Mapping[str, str], raw: bytes, headers: Mapping[str, str], info: _Info
    ) -> Response:
        authorization = headers.get("authorization")
        if authorization is not None and authorization != f"Bearer {self._token}":
            raise _error(401, "Unauthorized")
        user = self.user if authorization is not None or self._anonymous_is_user else ANONYMOUS
        if not info.resource_request:
            if user == ANONYMOUS and path.rstrip("/") not in _UNAUTHENTICATED_PATHS:
                raise _error(403, f'forbidden: User "{user}" cannot get path "{path}"', {})
            return self._discovery(path)
        if (
            user == ANONYMOUS
            or not self._allowed(info.verb, info.group, info.resource)
            or (info.subresource and not self._allowed(info.verb, info.group, f"{info.resource}/{info.subresource}"))
        ):
            raise self._forbidden(info, user)
        res = self._resources.get((info.group, info.version, info.resource))
        if res is None or info.extra or (info.namespace_path and not res.namespaced):
            raise _page_not_found()
        if info.subresource and not (info.subresource == "status" and res.status_subresource):
            raise _page_not_found()
        if res.plural == "selfsubjectaccessreviews":
            return self._access_review(method, raw, info)
        namespace = info.namespace if res.namespaced else ""
        if res.namespaced and info.name and not info.namespace_path:
            raise _page_not_found()  # /apis/g/v/policyreports/{name}: no such route
        if not info.name:
            if method in ("GET", "HEAD"):
                accept = headers.get("accept", "")
                if info.verb == "watch":
                    return self._watch(res, namespace, query, _metadata_view(accept, "PartialObjectMetadata"))
                return self._list(res, namespace, query, _metadata_view(accept, "PartialObjectMetadataList"))
            if method == "POST" and (info.namespace_path or not res.namespaced):
                obj = self._decode_object(res, _decode_json(raw, "couldn't get version/kind; json parse error: "), raw)
                created, warnings = self._create(res, namespace, obj, validation=query.get("fieldValidation", "Warn"))
                return _json_response(created, 201, warnings=warnings)
            if method == "DELETE":
                return self._delete_collection(res, namespace, query)
            raise _error(405, _REASONS[405][1])
        key = (namespace, info.name)
        if method in ("GET", "HEAD"):
            with self._lock:
                stored = self._objects.get(res.storage_key, {}).get(key)
                if stored is None:
                    raise _not_found(res, info.name)
                if _metadata_view(headers.get("accept", ""), "PartialObjectMetadata"):
                    response = _json_response(_partial(self._present(res, stored)))
                    response.headers["Content-Type"] = METADATA_LIST_TYPE.replace("List", "")
                    return response
                return _json_response(self._present(res, stored))
        if method == "PUT":
            body = self._decode_object(res, _decode_json(raw, "couldn't get version/kind; json parse error: "), raw)
            with self._lock:
                old = self._objects.get(res.storage_key, {}).get(key)
                body_name = body["metadata"].get("name") if isinstance(body.get("metadata"), dict) else None
                if body_name and body_name != info.name:
                    raise _error(400, f"the name of the object ({body_name}) does not match the name on the URL "
                                      f"({info.name})")  # fmt: skip
                if old is None:
                    raise _not_found(res, info.name)
                updated, warnings = self._update(res, old, body, subresource=info.subresource,
                                                 validation=query.get("fieldValidation", "Warn"))  # fmt: skip
            return _json_response(updated, warnings=warnings)
        if method == "PATCH":
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            return self._patch(res, key, content_type, raw, query, info.subresource)
        if method == "DELETE":
            options = _decode_json(raw, "couldn't decode DeleteOptions: ") if raw.strip() else None
            gone = self._delete(res, key, options)
            if res.delete_returns_object:
                return _json_response(self._present(res, gone))
            details = {**_details(res, info.name), "uid": gone["metadata"]["uid"]}
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
            return _json_response(body)
        raise _error(405, _REASONS[405][1])

    def _patch(
        self, res: Resource, key: tuple[str, str], content_type: str, raw: bytes, query: Mapping[str, str], sub: str
    ) -> Response:
        accepted = [JSON_PATCH, MERGE_PATCH, *([STRATEGIC_PATCH] if res.builtin else []), APPLY_PATCH]
        if content_type not in accepted:
            raise _error(415, "the body of the request was in an unknown format - accepted media types include: "
                              + ", ".join(accepted))  # fmt: skip
        validation = query.get("fieldValidation", "Strict" if content_type == APPLY_PATCH else "Warn")
        if content_type == APPLY_PATCH:
            if not query.get("fieldManager"):
                cause = _cause("FieldValueRequired", "Required value: is required for apply patch", "fieldManager")
                details = {"group": "meta.k8s.io", "kind": "PatchOptions"}
                raise _invalid("PatchOptions.meta.k8s.io", "", [cause], details)
            try:
                applied = yaml.safe_load(raw.decode() or "null")
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise _error(400, f"error decoding YAML: {exc}") from None
            patch = self._decode_object(res, applied, raw)
        with self._lock:
            old = self._objects.get(res.storage_key, {}).get(key)
            if old is None:
                if content_type == APPLY_PATCH:  # server-side apply creates
                    created, warnings = self._create(res, key[0], patch, validation=validation)
                    return _json_response(created, 201, warnings=warnings)
                raise _not_found(res, key[1])
            if content_type == JSON_PATCH:
                operations = _decode_json(raw, "error decoding patch: ")
                if not isinstance(operations, list):
                    raise _error(400, "error decoding patch: json: cannot unmarshal object into Go value of "
                                      "type jsonpatch.Patch")  # fmt: skip
                try:
                    proposed = json_patch(self._present(res, old), operations)
                except PatchError:
                    raise _error(422, _REASONS[422][1], {}) from None
            else:
                if content_type != APPLY_PATCH:
                    document = _decode_json(raw, "error decoding patch: ")
                    if not isinstance(document, dict | None):
                        go_type = {"boolean": "bool", "integer": "number"}.get(
                            _json_type(document), _json_type(document)
                        )
                        raise _error(400, f"error decoding patch: json: cannot unmarshal {go_type} into Go value "
                                          "of type map[string]interface {}")  # fmt: skip
                    patch = document or {}
                proposed = merge_patch(self._present(res, old), patch)
            if not isinstance(proposed, dict):
                raise _error(422, _REASONS[422][1], {})
            updated, warnings = self._update(res, old, proposed, subresource=sub, validation=validation)
        return _json_response(updated, warnings=warnings)

    def _access_review(self, method: str, raw: bytes, info: _Info) -> Response:
        if method != "POST" or info.name:
            raise _error(405, _REASONS[405][1])
        body = _decode_json(raw, "couldn't get version/kind; json parse error: ")
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            message = "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified"
            cause = _cause("FieldValueRequired", message, "spec.resourceAttributes")
            raise _invalid("SelfSubjectAccessReview.authorization.k8s.io", "", [cause],
                           {"group": "authorization.k8s.io", "kind": "SelfSubjectAccessReview"})  # fmt: skip
        attrs = spec.get("resourceAttributes")
        allowed = True
        if isinstance(attrs, dict):
            resource = str(attrs.get("resource", ""))
            verb, group, sub = str(attrs.get("verb", "")), str(attrs.get("group", "")), attrs.get("subresource")
            allowed = self._allowed(verb, group, resource)
            allowed = allowed and (not sub or self._allowed(verb, group, f"{resource}/{sub}"))
        review = {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"allowed": allowed},
        }
        return _json_response(review, 201)

    # ---------------------------------------------------------------- lists and watches

    def _matcher(self, res: Resource, namespace: str, query: Mapping[str, str]) -> tuple[Callable[[Obj], bool], bool]:
        """A predicate for namespace + label + field selectors, and whether any selector was given."""
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(query.get("fieldSelector", ""))
        except SelectorError as exc:
            raise _error(400, str(exc)) from None
        supported = {"metadata.name", "metadata.namespace", *dict(res.fields)}
        for label, _, _ in fields:
            if label not in supported:
                raise _error(400, f"field label not supported: {label}")

        def matches(obj: Obj) -> bool:
            meta = obj.get("metadata") or {}
            if namespace and meta.get("namespace") != namespace:
                return False
            if not match_labels(labels, meta.get("labels")):
                return False
            return all((_field_value(res, obj, f) == v) == (op == "=") for f, op, v in fields)

        return matches, bool(labels or fields)

    @staticmethod
    def _parse_rv(value: str) -> int:
        if not re.fullmatch(r"\d+", value):
            message = (f'resourceVersion: Invalid value: "{value}": strconv.ParseUint: parsing '
                       f'"{value}": invalid syntax')  # fmt: skip
            raise KubeApiError(500, status_body(500, message))
        return int(value)

    def _list_body(self, res: Resource, items: list[Obj], meta: Obj) -> Obj:
        if res.builtin:
            meta = {k: v for k, v in meta.items() if v or k == "resourceVersion"}  # omitempty
            plain = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
            return {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta, "items": plain}
        return {"apiVersion": res.api_version, "items": items, "kind": res.list_kind, "metadata": _sorted(meta)}

    def _list(self, res: Resource, namespace: str, query: Mapping[str, str], metadata_only: bool = False) -> Response:
        matches, selective = self._matcher(res, namespace, query)
        limit_text = query.get("limit") or "0"
        if not re.fullmatch(r"-?\d+", limit_text):
            raise _error(400, f'limit: Invalid value: "{limit_text}": must be an integer')
        limit = max(int(limit_text), 0)
        rv_param, token = query.get("resourceVersion", ""), query.get("continue", "")
        start = ""
        with self._lock:
            if token:
                if rv_param:
                    raise _error(400, "specifying resource version is not allowed when using continue")
                try:
                    token_rv, start = decode_continue(token)
                except SelectorError as exc:
                    raise _error(400, str(exc)) from None
                if token_rv == -1:  # an explicitly inconsistent continuation: read the latest state
                    list_rv, state = self._rv, dict(self._objects.get(res.storage_key, {}))
                elif token_rv < self._oldest_rv:
                    body = status_body(410, CONTINUE_EXPIRED, "Expired")
                    body["metadata"] = {"continue": encode_continue(-1, start)}
                    raise KubeApiError(410, body)
                else:
                    list_rv, state = token_rv, self._state_at(res, token_rv)
            else:
                list_rv = self._parse_rv(rv_param) if rv_param else self._rv
                if list_rv > self._rv:
                    raise _error(504, f"Too large resource version: {list_rv}, current: {self._rv}",
                                 {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource "
                                              "version"}], "retryAfterSeconds": 1})  # fmt: skip
                if query.get("resourceVersionMatch") == "Exact":
                    if list_rv < self._oldest_rv:
                        raise _error(410, "The resourceVersion for the provided list is too old.")
                    state = self._state_at(res, list_rv)
                else:
                    list_rv, state = self._rv, dict(self._objects.get(res.storage_key, {}))
                if rv_param == "0":
                    limit = 0  # served from the watch cache, which ignores limit
        # etcd key order: "<ns>/<name>" across namespaces, "<name>" within one
        keyed = sorted(((f"{k[0]}/{k[1]}" if res.namespaced and not namespace else k[1]), obj)
                       for k, obj in state.items())  # fmt: skip
        selected = [(key, obj) for key, obj in keyed if key > start and matches(obj)]
        page = selected[:limit] if limit else selected
        meta: Obj = {"continue": "", "resourceVersion": str(list_rv)}
        if limit and len(selected) > limit:
            meta["continue"] = encode_continue(list_rv, page[-1][0])
            if not selective:
                meta["remainingItemCount"] = len(selected) - limit
        items = [self._present(res, obj) for _, obj in page]
        if not metadata_only:
            return _json_response(self._list_body(res, items, meta))
        meta = {k: v for k, v in meta.items() if v or k == "resourceVersion"}  # ListMeta: omitempty
        body = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "items": [_partial(item) for item in items]}  # fmt: skip
        response = _json_response(body)
        response.headers["Content-Type"] = METADATA_LIST_TYPE
        return response

    def _delete_collection(self, res: Resource, namespace: str, query: Mapping[str, str]) -> Response:
        matches, _ = self._matcher(res, namespace, query)
        with self._lock:
            store = self._objects.get(res.storage_key, {})
            doomed = [key for key in sorted(store) if matches(store[key])]
            gone = [self._present(res, self._delete(res, key, None)) for key in doomed]
            return _json_response(self._list_body(res, gone, {"continue": "", "resourceVersion": str(self._rv)}))

    def _watch(self, res: Resource, namespace: str, query: Mapping[str, str], metadata_only: bool = False) -> Response:
        matches, _ = self._matcher(res, namespace, query)
        rv_param = query.get("resourceVersion", "")
        start_rv = self._parse_rv(rv_param) if rv_param not in ("", "0") else None
        bookmarks = _truthy(query.get("allowWatchBookmarks"))
        initial = _truthy(query["sendInitialEvents"]) if "sendInitialEvents" in query else start_rv is None
        try:
            timeout = float(query.get("timeoutSeconds") or 0) or DEFAULT_WATCH_TIMEOUT
        except ValueError:
            raise _error(400, f'timeoutSeconds: Invalid value: "{query["timeoutSeconds"]}"') from None
        stream = self._watch_stream(res, matches, start_rv, initial, bookmarks, timeout)
        if metadata_only:
            stream = _partial_events(stream)
        return StreamingResponse(stream, media_type="application/json")

    def _watch_event(self, res: Resource, change: _Change, matches: Callable[[Obj], bool]) -> Obj | None:
        """The cacher's conversion: a change that makes an object stop matching is a DELETED."""
        now = change.obj is not None and matches(change.obj)
        before = change.prev is not None and matches(change.prev)
        if now and change.obj is not None:
            return {"type": "MODIFIED" if before else "ADDED", "object": self._present(res, change.obj)}
        if before and change.prev is not None:
            gone = self._present(res, change.prev)
            gone["metadata"]["resourceVersion"] = str(change.rv)  # the deletion's resourceVersion
            return {"type": "DELETED", "object": gone}
        return None

    def _bookmark(self, res: Resource, rv: int, annotations: Obj | None = None) -> Obj:
        meta: Obj = {"resourceVersion": str(rv)}
        if annotations:
            meta = {"annotations": annotations, **meta}
        return {"type": "BOOKMARK", "object": self._canonical(res, {"kind": res.kind, "apiVersion": res.api_version,
                                                                    "metadata": meta})}  # fmt: skip

    async def _watch_stream(
        self,
        res: Resource,
        matches: Callable[[Obj], bool],
        start_rv: int | None,
        initial: bool,
        bookmarks: bool,
        timeout: float,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._lock:
            oldest = self._oldest_rv
            position = self._rv if start_rv is None or initial else start_rv
            snapshot = sorted(self._objects.get(res.storage_key, {}).items()) if initial else []
        if start_rv is not None and start_rv < oldest:  # HTTP 200 carrying one ERROR event, then the end
            message = f"too old resource version: {start_rv} ({oldest})"
            yield _line({"type": "ERROR", "object": status_body(410, message, "Expired")})
            return
        for _, obj in snapshot:
            if matches(obj):
                yield _line({"type": "ADDED", "object": self._present(res, obj)})
        if initial and bookmarks:  # watch-list: tell the client the initial state is complete
            empty = self._list_body(res, [], {})
            if not res.builtin:
                empty.pop("metadata")
            blueprint = json.dumps(empty, separators=(",", ":")) + "\n"
            annotations = {
                "k8s.io/initial-events-end": "true",
                "kubernetes.io/initial-events-list-blueprint": base64.b64encode(blueprint.encode()).decode(),
            }
            yield _line(self._bookmark(res, position, annotations))
        started = position

        def next_bookmark(now: float) -> float | None:
            # like the cacher: periodically, and once 2 s before the timeout; never in the past
            when = min(now + self.bookmark_interval, deadline - 2)
            return when if bookmarks and when > now else None

        bookmark_at = next_bookmark(loop.time())
        while not self._closing:
            wakeup = self._wakeup_event()
            with self._lock:
                index = bisect.bisect_right(self._history, position, key=lambda c: c.rv)
                changes = [c for c in self._history[index:] if c.storage_key == res.storage_key]
                position, current = max(position, self._rv), self._rv
            for change in changes:
                event = self._watch_event(res, change, matches)
                if event is not None:
                    yield _line(event)
            now = loop.time()
            if now >= deadline:
                return
            if bookmark_at is not None and now >= bookmark_at:
                if current > started:  # a quiet watch gets no bookmark
                    yield _line(self._bookmark(res, current))
                bookmark_at = next_bookmark(now)
            wait = min(deadline, bookmark_at if bookmark_at is not None else deadline) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=max(wait, 0))

    # ---------------------------------------------------------------- discovery

    def _groups(self) -> dict[str, list[Resource]]:
        groups: dict[str, list[Resource]] = {}
        builtin_order = {"": 0, "apps": 1, "authorization.k8s.io": 2}
        for res in sorted(self._resources.values(), key=lambda r: (builtin_order.get(r.group, 9), r.group)):
            groups.setdefault(res.group, []).append(res)
        return groups

    def _group_doc(self, group: str, resources: list[Resource]) -> Obj:
        versions = sorted({r.version for r in resources}, key=_version_priority)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources = []
        for res in self._resources.values():
            if (res.group, res.version) != (group, version):
                continue
            entry: Obj = {"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                          "kind": res.kind, "verbs": list(res.verbs)}  # fmt: skip
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            if res.categories:
                entry["categories"] = list(res.categories)
            if res.plural != "selfsubjectaccessreviews":
                entry["storageVersionHash"] = _storage_version_hash(res)
            resources.append(entry)
            if res.status_subresource:
                resources.append({"name": f"{res.plural}/status", "singularName": "", "namespaced": res.namespaced,
                                  "kind": res.kind, "verbs": ["get", "patch", "update"]})  # fmt: skip
        group_version = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}

    def _discovery(self, path: str) -> Response:
        path = path.rstrip("/") or "/"
        groups = self._groups()
        if path == "/version":
            return Response(json.dumps(VERSION_INFO, indent=2).encode(), media_type="application/json")
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(b"ok", media_type="text/plain; charset=utf-8")
        if path == "/":
            paths = ["/api", "/api/v1", "/apis", *[f"/apis/{g}" for g in groups if g],
                     *[f"/apis/{r.group}/{r.version}" for r in self._resources.values() if r.group],
                     "/healthz", "/livez", "/readyz", "/version"]  # fmt: skip
            return _json_response({"paths": sorted(set(paths))})
        if path == "/api":
            address = f"127.0.0.1:{self._server.port}"
            cidrs = [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]
            return _json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": cidrs})
        if path == "/api/v1":
            return _json_response(self._resource_list("", "v1"))
        if path == "/apis":
            docs = [self._group_doc(g, rs) for g, rs in groups.items() if g]
            return _json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": docs})
        m = re.fullmatch(r"/apis/([^/]+)(?:/([^/]+))?", path)
        if m and m.group(1) in groups:
            group, version = m.group(1), m.group(2)
            if version is None:
                return _json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, groups[group])})
            if any(r.version == version for r in groups[group]):
                return _json_response(self._resource_list(group, version))
        raise _page_not_found()


def _partial(obj: Obj) -> Obj:
    """The ``PartialObjectMetadata`` view of an object (``Accept: ...;as=PartialObjectMetadata...``)."""
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def _metadata_view(accept: str, want: str) -> bool:
    """Whether ``Accept`` asks for ``want`` (PartialObjectMetadata[List]) before plain JSON; 406 if neither."""
    if not accept.strip():
        return False
    for media in accept.split(","):
        kind, *rest = (part.strip() for part in media.split(";"))
        params = dict(p.split("=", 1) for p in rest if "=" in p)
        if kind in ("application/json", "application/*", "*/*") and "as" not in params:
            return False
        if kind == "application/json" and (params.get("as"), params.get("g")) == (want, "meta.k8s.io"):
            return True
    raise _error(406, "only the following media types are accepted: application/json, application/yaml, "
                      "application/vnd.kubernetes.protobuf")  # fmt: skip


async def _partial_events(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for line in stream:
        event = json.loads(line)
        if event["type"] != "ERROR":
            event["object"] = _partial(event["object"])
        yield _line(event)


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None, *, warnings: Iterable[str] = ()
) -> Response:
    """Compact JSON plus one newline, like the apiserver; one ``Warning`` header per pruned field."""
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    response = Response(data, status, headers=dict(headers or {}), media_type="application/json")
    for path in warnings:
        response.raw_headers.append((b"warning", f'299 - "unknown field \\"{path}\\""'.encode()))
    return response
