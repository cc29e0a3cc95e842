"""Lists: consistent snapshots, ``limit``/``continue`` pagination, selectors, delete-collection.

Pages after the first are read from the first page's resourceVersion (the store's history), so a
paginated list is one snapshot however the store changes meanwhile; a token older than the last
compaction is 410 Expired with a fresh ``rv: -1`` token for an inconsistent resume, as etcd does.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping

from starlette.responses import Response

from policyflow.standins.kube.codec import METADATA_LIST_TYPE, json_response
from policyflow.standins.kube.errors import CONTINUE_EXPIRED, KubeApiError, error, internal, status_body
from policyflow.standins.kube.objects import Key, Obj, partial, present, sorted_keys
from policyflow.standins.kube.resources import Resource
from policyflow.standins.kube.selectors import SelectorError, matcher
from policyflow.standins.kube.store import Store


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



def parse_rv(value: str) -> int:
    """A resourceVersion parameter; anything but digits is the apiserver's 500 (no reason)."""
    if not re.fullmatch(r"\d+", value):
        message = f'resourceVersion: Invalid value: "{value}": strconv.ParseUint: parsing "{value}": invalid syntax'
        raise internal(message)
    return int(value)


def list_body(res: Resource, items: list[Obj], meta: Obj) -> Obj:
    """A typed list (items without kind, omitempty metadata) or an unstructured one (sorted keys)."""
    if res.builtin:
        meta = {k: v for k, v in meta.items() if v or k == "resourceVersion"}  # omitempty
        plain = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
        return {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta, "items": plain}
    return {"apiVersion": res.api_version, "items": items, "kind": res.list_kind, "metadata": sorted_keys(meta)}


def _snapshot(
    store: Store, res: Resource, query: Mapping[str, str], limit: int
) -> tuple[int, dict[Key, Obj], str, int]:
    """(list resourceVersion, objects at it, start key, limit) for the query's RV/continue (caller locks)."""
    rv_param, token = query.get("resourceVersion", ""), query.get("continue", "")
    if token:
        if rv_param:
            raise error(400, "specifying resource version is not allowed when using continue")
        try:
            token_rv, start = decode_continue(token)
        except SelectorError as exc:
            raise error(400, str(exc)) from None
        if token_rv == -1:  # an explicitly inconsistent continuation: read the latest state
            return store.rv, dict(store.bucket(res)), start, limit
        if token_rv < store.oldest_rv:
            body = status_body(410, CONTINUE_EXPIRED, "Expired")
            body["metadata"] = {"continue": encode_continue(-1, start)}
            raise KubeApiError(410, body)
        return token_rv, store.state_at(res, token_rv), start, limit
    list_rv = parse_rv(rv_param) if rv_param else store.rv
    if list_rv > store.rv:
        raise error(504, f"Too large resource version: {list_rv}, current: {store.rv}",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})  # fmt: skip
    if rv_param == "0":
        limit = 0  # served from the watch cache, which ignores limit
    if query.get("resourceVersionMatch") == "Exact":
        if list_rv < store.oldest_rv:
            raise error(410, "The resourceVersion for the provided list is too old.")
        return list_rv, store.state_at(res, list_rv), "", limit
    return store.rv, dict(store.bucket(res)), "", limit


def list_objects(
    store: Store, res: Resource, namespace: str, query: Mapping[str, str], *, metadata_only: bool = False
) -> Response:
    """GET of a collection (not a watch)."""
    matches, selective = matcher(res, namespace, query)
    limit_text = query.get("limit") or "0"
    if not re.fullmatch(r"-?\d+", limit_text):
        raise error(400, f'limit: Invalid value: "{limit_text}": must be an integer')
    with store.lock:
        list_rv, state, start, limit = _snapshot(store, res, query, max(int(limit_text), 0))
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
    items = [present(res, obj) for _, obj in page]
    if not metadata_only:
        return json_response(list_body(res, items, meta))
    meta = {k: v for k, v in meta.items() if v or k == "resourceVersion"}  # ListMeta: omitempty
    body = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "items": [partial(item) for item in items]}  # fmt: skip
    response = json_response(body)
    response.headers["Content-Type"] = METADATA_LIST_TYPE
    return response


def delete_collection(store: Store, res: Resource, namespace: str, query: Mapping[str, str]) -> Response:
    """DELETE of a collection: every matching object, answered with the list of what was deleted."""
    matches, _ = matcher(res, namespace, query)
    with store.lock:
        bucket = store.bucket(res)
        doomed = [key for key in sorted(bucket) if matches(bucket[key])]
        gone = [present(res, store.delete(res, key, None)) for key in doomed]
        return json_response(list_body(res, gone, {"continue": "", "resourceVersion": str(store.rv)}))
