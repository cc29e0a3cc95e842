"""What happens to a written object before it is stored: decoding checks, pruning, defaults, validation.

Order and messages follow the apiserver: apiVersion/kind must match the URL (400), unknown fields are
pruned with a warning (400 under ``fieldValidation=Strict``), schema violations are collected as 422
causes, and the typed kinds get their defaults (Event, Namespace) or their own decoder (Lease).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from policyflow.standins.kube.errors import cause, details, error, invalid, undecodable
from policyflow.standins.kube.lease import decode_lease, is_lease, validate_lease
from policyflow.standins.kube.objects import META_FIELDS, Obj
from policyflow.standins.kube.resources import Resource
from policyflow.standins.kube.schema import check_schema

_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_CONFIG_MAP_LIMIT = 1048576  # core.MaxSecretSize: data plus binaryData, keys and values
_ANNOTATIONS_LIMIT = 262144  # apimachinery ValidateAnnotationsSize: keys plus values, 256 KiB in all


def admit(res: Resource, obj: Obj, validation: str) -> tuple[Obj, list[str], list[Obj]]:
    """Prune unknown fields (400 under Strict) and collect violations for later (422).

    Returns the pruned object, the warnings to send (none under ``Ignore``) and the 422 causes.
    """
    unknown: list[str] = []
    causes: list[Obj] = []
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise undecodable(res, "metadata must be an object")
    if isinstance(meta, dict):
        unknown += [f"metadata.{k}" for k in meta if k not in META_FIELDS]
        obj["metadata"] = {k: v for k, v in meta.items() if k in META_FIELDS}
        annotations = obj["metadata"].get("annotations")
        if isinstance(annotations, dict):
            total = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
            if total > _ANNOTATIONS_LIMIT:
                causes.append(cause("FieldValueTooLong", "Too long: must have at most 262144 bytes",
                                    "metadata.annotations"))  # fmt: skip
    if res.schema is not None:
        obj = check_schema(obj, res.schema, "", unknown, causes)
    if is_lease(res):
        obj = decode_lease(res, obj, unknown)
        causes += validate_lease(obj)
    unknown.sort()
    if unknown and validation == "Strict":
        fields = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise undecodable(res, f"strict decoding error: {fields}")
    return obj, ([] if validation == "Ignore" else unknown), causes


def decode_object(res: Resource, body: Any, raw: bytes) -> Obj:
    """Check apiVersion/kind against the URL (built-ins default them) and return the body as a dict."""
    text = raw.decode(errors="replace").strip()
    if not isinstance(body, dict):
        raise error(400, f"Object 'Kind' is missing in '{text}'")
    obj: Obj = body
    if res.builtin:
        obj.setdefault("kind", res.kind)
        obj.setdefault("apiVersion", res.api_version)
    if not obj.get("kind"):
        raise error(400, f"Object 'Kind' is missing in '{text}'")
    if not obj.get("apiVersion"):
        raise error(400, f"Object 'apiVersion' is missing in '{text}'")
    if obj["apiVersion"] != res.api_version:
        raise error(400, f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                         f"API version ({res.api_version})")  # fmt: skip
    if obj["kind"] != res.kind:
        raise error(400, f"the kind in the data ({obj['kind']}) does not match the expected kind ({res.kind})")
    return obj


def normalize_time(value: Any, kind: str) -> Any:
    """RFC 3339 with ``+00:00`` or fractions comes back as whole seconds with ``Z`` (metav1.Time)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise error(400, f'{kind} in version "v1" cannot be handled as a {kind}: parsing time "{value}"') from None
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def typed_defaults(res: Resource, obj: Obj, name: str) -> None:
    """Defaults and validation of the typed kinds: Event fields and involvedObject namespace, Namespace status."""
    meta = obj["metadata"]
    if res.plural == "events":
        involved = obj.setdefault("involvedObject", {})
        other = involved.get("namespace")
        if other and other != meta.get("namespace"):
            message = f'Invalid value: "{other}": does not match event.namespace'
            problem = cause("FieldValueInvalid", message, "involvedObject.namespace")
            raise invalid(res.kind, name, [problem], details(res, name, kind=res.kind))
        obj.setdefault("source", {})
        for key in ("firstTimestamp", "lastTimestamp", "eventTime"):
            obj[key] = normalize_time(obj.get(key), res.kind) if key != "eventTime" else obj.get(key)
        obj.setdefault("reportingComponent", "")
        obj.setdefault("reportingInstance", "")
    elif res.plural == "configmaps":
        validate_config_map(res, obj, name)
    elif res.plural == "namespaces":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")



def validate_config_map(res: Resource, obj: Obj, name: str) -> None:
    """ValidateConfigMap: each key a valid config key, strings only, 1 MiB in all (422 otherwise)."""
    problems: list[Obj] = []
    total = 0
    for part in ("data", "binaryData"):
        values = obj.get(part) or {}
        if not isinstance(values, dict):
            raise undecodable(res, f"json: cannot unmarshal into Go struct field ConfigMap.{part}")
        for key, value in values.items():
            if not isinstance(value, str):
                raise undecodable(res, f"json: cannot unmarshal into Go struct field ConfigMap.{part} of type string")
            if len(key) > 253 or not _CONFIG_KEY.fullmatch(key) or key in (".", ".."):
                problems.append(cause("FieldValueInvalid", f'Invalid value: "{key}": a valid config key must '
                                      "consist of alphanumeric characters, '-', '_' or '.'", f"{part}[{key}]"))
            total += len(key.encode()) + len(value.encode())
    if total > _CONFIG_MAP_LIMIT:
        problems.append(cause("FieldValueTooLong", f"Too long: must have at most {_CONFIG_MAP_LIMIT} bytes", "[]"))
    if problems:
        raise invalid(res.kind, name, problems, details(res, name, kind=res.kind))
