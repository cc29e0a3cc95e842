"""Bytes on the wire: JSON decoding with Go's error wording, responses framed like the apiserver's.

JSON answers are compact JSON plus one newline with ``Content-Type: application/json``; watch events
are one JSON object per line; a client may ask for the ``PartialObjectMetadata`` view via ``Accept``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from starlette.responses import Response

from policyflow.standins.kube.errors import KubeApiError, error
from policyflow.standins.kube.objects import Obj, partial

METADATA_LIST_TYPE = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_TYPE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
CREATE_PREFIX = "couldn't get version/kind; json parse error: "


def go_json_error(exc: json.JSONDecodeError) -> str:
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


def decode_json(raw: bytes, prefix: str) -> Any:
    """The body as JSON (empty is ``null``); a syntax error is 400 ``<prefix><Go's message>``."""
    try:
        return json.loads(raw or b"null")
    except json.JSONDecodeError as exc:
        raise error(400, f"{prefix}{go_json_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise error(400, f"{prefix}{exc}") from None


def truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool true values (how the apiserver reads ``watch=``, ``allowWatchBookmarks=``)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def line(event: Obj) -> bytes:
    """One watch event on the stream."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None, *, warnings: Iterable[str] = ()
) -> Response:
    """Compact JSON plus one newline, like the apiserver; one ``Warning`` header per pruned field."""
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    response = Response(data, status, headers=dict(headers or {}), media_type="application/json")
    for path in warnings:
        response.raw_headers.append((b"warning", f'299 - "unknown field \\"{path}\\""'.encode()))
    return response


def error_response(exc: KubeApiError) -> Response:
    """A Status as JSON, or the mux's plain-text 404."""
    if isinstance(exc.body, str):
        response = Response(exc.body.encode(), exc.code, media_type="text/plain; charset=utf-8")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
    return json_response(exc.body, exc.code, exc.headers)


def metadata_view(accept: str, want: str) -> bool:
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
    raise error(406, "only the following media types are accepted: application/json, application/yaml, "
                     "application/vnd.kubernetes.protobuf")  # fmt: skip


async def partial_events(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A watch stream with each object reduced to its PartialObjectMetadata."""
    async for chunk in stream:
        event = json.loads(chunk)
        if event["type"] != "ERROR":
            event["object"] = partial(event["object"])
        yield line(event)
