"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902, via ``jsonpatch``), server-side apply.

The content type picks the kind, as on the apiserver: custom resources refuse strategic merge
(415, listing what they accept); built-ins accept it and get it applied as a merge patch (their
lists have no merge keys here). A JSON-patch list sent as merge patch is a 400 decode error [04#5];
a failing JSON-patch ``test`` or a ``remove`` of a missing path is a generic 422 [04#7-8].
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch  # type: ignore[import-untyped, unused-ignore]  # recent releases ship stubs, older ones none
import yaml

from policyflow.standins.kube.admission import decode_object
from policyflow.standins.kube.codec import decode_json
from policyflow.standins.kube.errors import REASONS, cause, error, invalid
from policyflow.standins.kube.objects import Obj
from policyflow.standins.kube.resources import Resource
from policyflow.standins.kube.schema import json_type

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
_DECODE_PREFIX = "error decoding patch: "


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


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test) to a copy of ``doc``."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    for op in operations:
        if not isinstance(op, dict):
            raise PatchError(f"not an operation: {op!r}")
    try:
        return jsonpatch.apply_patch(doc, operations, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise PatchError(str(exc)) from None


@dataclass(frozen=True)
class PatchRequest:
    """A PATCH whose content type and options were accepted; the body is decoded when applied."""

    content_type: str
    raw: bytes
    validation: str
    applied: Obj | None = None  # server-side apply: the object to apply (may create)


def read_patch(res: Resource, content_type: str, raw: bytes, query: Mapping[str, str]) -> PatchRequest:
    """Check the content type (415) and, for server-side apply, ``fieldManager`` (422) and the YAML (400)."""
    accepted = [JSON_PATCH, MERGE_PATCH, *([STRATEGIC_PATCH] if res.builtin else []), APPLY_PATCH]
    if content_type not in accepted:
        raise error(415, "the body of the request was in an unknown format - accepted media types include: "
                         + ", ".join(accepted))  # fmt: skip
    validation = query.get("fieldValidation", "Strict" if content_type == APPLY_PATCH else "Warn")
    if content_type != APPLY_PATCH:
        return PatchRequest(content_type, raw, validation)
    if not query.get("fieldManager"):
        problem = cause("FieldValueRequired", "Required value: is required for apply patch", "fieldManager")
        raise invalid("PatchOptions.meta.k8s.io", "", [problem], {"group": "meta.k8s.io", "kind": "PatchOptions"})
    try:
        applied = yaml.safe_load(raw.decode() or "null")
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(400, f"error decoding YAML: {exc}") from None
    return PatchRequest(content_type, raw, validation, decode_object(res, applied, raw))


def patched(request: PatchRequest, current: Obj) -> Obj:
    """``current`` with the patch applied (400 for an undecodable body, 422 when it cannot apply)."""
    if request.content_type == JSON_PATCH:
        operations = decode_json(request.raw, _DECODE_PREFIX)
        if not isinstance(operations, list):
            raise error(400, f"{_DECODE_PREFIX}json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            proposed = json_patch(current, operations)
        except PatchError:
            raise error(422, REASONS[422][1], {}) from None
    else:
        patch = request.applied
        if patch is None:
            document = decode_json(request.raw, _DECODE_PREFIX)
            if not isinstance(document, dict | None):
                go_type = {"boolean": "bool", "integer": "number"}.get(json_type(document), json_type(document))
                raise error(400, f"{_DECODE_PREFIX}json: cannot unmarshal {go_type} into Go value of type "
                                 "map[string]interface {}")  # fmt: skip
            patch = document or {}
        proposed = merge_patch(current, patch)
    if not isinstance(proposed, dict):
        raise error(422, REASONS[422][1], {})
    return proposed
