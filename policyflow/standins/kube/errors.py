"""Error answers as kube-apiserver gives them: ``Status`` bodies with its reasons and message formats.

The shapes follow the recordings in ``shared/specs/kube`` (README checklist): 500s carry no reason or
details, ``details.kind`` is the plural resource except for 422 Invalid (the Kind), and paths the
server cannot route are a plain-text ``404 page not found``, not a Status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from policyflow.standins.kube.objects import Obj

if TYPE_CHECKING:
    from policyflow.standins.kube.resources import Resource

REASONS = {
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
CONFLICT = "the object has been modified; please apply your changes to the latest version and try again"
NAMESPACE_MISMATCH = "the namespace of the provided object does not match the namespace sent on the request"
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results. Continuing with the provided token results in an inconsistent list - objects "
    "that were created, modified, or deleted between the time the first chunk was returned and now may show "
    "up in the list."
)


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


def error(code: int, message: str, details: Obj | None = None) -> KubeApiError:
    """A Status error with the reason that goes with ``code``."""
    return KubeApiError(code, status_body(code, message, REASONS.get(code, ("", ""))[0], details))


def internal(message: str) -> KubeApiError:
    """A 500 the way the apiserver reports storage errors: no reason, no details."""
    return KubeApiError(500, status_body(500, message))


def method_not_allowed() -> KubeApiError:
    return error(405, REASONS[405][1])


def page_not_found() -> KubeApiError:
    """What the apiserver's mux answers for paths no handler serves (not a Status)."""
    return KubeApiError(404, "404 page not found\n")


def details(res: Resource, name: str = "", *, kind: str = "") -> Obj:
    """``details`` as the apiserver fills it: name if any, group unless core, kind (plural by default)."""
    out: Obj = {}
    if name:
        out["name"] = name
    if res.group:
        out["group"] = res.group
    out["kind"] = kind or res.plural
    return out


def not_found(res: Resource, name: str) -> KubeApiError:
    return error(404, f'{res.qualified} "{name}" not found', details(res, name))


def already_exists(res: Resource, name: str) -> KubeApiError:
    message = f'{res.qualified} "{name}" already exists'
    return KubeApiError(409, status_body(409, message, "AlreadyExists", details(res, name)))


def conflict(res: Resource, name: str, why: str = CONFLICT) -> KubeApiError:
    return error(409, f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}', details(res, name))


def cause(reason: str, message: str, path: str) -> Obj:
    return {"reason": reason, "message": message, "field": path}


def invalid(qualified_kind: str, name: str, causes: list[Obj], extra: Obj) -> KubeApiError:
    """422 Invalid: ``Kind.group "name" is invalid: <one error>`` or ``... is invalid: [a, b]``."""
    errors = [f"{c['field']}: {c['message']}" for c in causes]
    joined = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    return error(422, f'{qualified_kind} "{name}" is invalid: {joined}', {**extra, "causes": causes})


def undecodable(res: Resource, why: str) -> KubeApiError:
    """400 for a body the typed decoder rejects (wrong JSON type, unparsable time, strict unknown field)."""
    return error(400, f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: {why}')
