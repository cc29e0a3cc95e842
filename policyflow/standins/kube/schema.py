"""Structural-schema handling of custom resources: prune undeclared fields, collect 422 causes.

What apiextensions-apiserver does with a CRD's openAPIV3Schema, reduced to what the report CRDs use:
type, enum, required, properties/additionalProperties, items, nullable, int-or-string and
preserve-unknown-fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from policyflow.standins.kube.errors import cause
from policyflow.standins.kube.objects import Obj


def json_type(value: Any) -> str:
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
    actual = json_type(value)
    if expected == "number":
        return actual in ("integer", "number")
    if expected == "integer" and actual == "number":
        return float(value).is_integer()
    return actual == expected


def _go_quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool) or value is None else str(value)


def check_schema(value: Any, schema: Mapping[str, Any], path: str, unknown: list[str], causes: list[Obj]) -> Any:
    """Prune what the structural schema does not declare and collect type/enum/required violations."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok("integer", value)):
            actual = json_type(value)
            message = f'Invalid value: "{actual}": {path} in body must be of type integer,string: "{actual}"'
            causes.append(cause("FieldValueTypeInvalid", message, path))
        return value
    expected = schema.get("type")
    if expected and not _type_ok(expected, value):
        actual = json_type(value)
        message = f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'
        causes.append(cause("FieldValueTypeInvalid", message, path))
        return value
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_go_quote(v) for v in schema["enum"])
        message = f"Unsupported value: {_go_quote(value)}: supported values: {supported}"
        causes.append(cause("FieldValueNotSupported", message, path))
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
                out[key] = item if item is None else check_schema(item, sub, child, unknown, causes)
        for key in schema.get("required") or ():
            if key not in out:
                causes.append(cause("FieldValueRequired", "Required value", f"{path}.{key}" if path else key))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [check_schema(v, schema["items"], f"{path}[{i}]", unknown, causes) for i, v in enumerate(value)]
    return value
