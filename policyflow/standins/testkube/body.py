"""The run request body as the agent reads it: fiber's ``BodyParser``, then Go's ``json.Unmarshal``.

A body is only parsed when ``Content-Type`` is JSON (otherwise the run behaves as if ``{}`` was sent);
a JSON body Go could not unmarshal into ``TestWorkflowExecutionRequest`` is a 400 with Go's message.
"""

from __future__ import annotations

import json
from typing import Any

_STRING_MAP_FIELDS = ("config", "tags")
_OBJECT_FIELDS = ("runningContext", "silentMode", "target", "runtime")
_STRING_FIELDS = ("name", "testWorkflowExecutionName")
_PREFIX = "failed to execute test workflow: invalid body: "


def is_json(content_type: str) -> bool:
    # fiber lower-cases the header and checks the prefix, so parameters like charset are fine.
    return content_type.lower().startswith("application/json")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _unmarshal_error(value: Any, where: str, go_type: str) -> str:
    return f"json: cannot unmarshal {_json_kind(value)} into Go {where} of type {go_type}"


def check_run_request(body: Any) -> str | None:
    """Return Go's unmarshal error for a body the agent would answer 400 to, else ``None``."""
    struct = "TestWorkflowExecutionRequest"
    if body is None:
        return None  # JSON null leaves the struct empty
    if not isinstance(body, dict):
        return _unmarshal_error(body, "value", f"testkube.{struct}")
    for key in _STRING_FIELDS:
        if body.get(key) is not None and not isinstance(body[key], str):
            return _unmarshal_error(body[key], f"struct field {struct}.{key}", "string")
    if body.get("disableWebhooks") is not None and not isinstance(body["disableWebhooks"], bool):
        return _unmarshal_error(body["disableWebhooks"], f"struct field {struct}.disableWebhooks", "bool")
    for key in _STRING_MAP_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return _unmarshal_error(value, f"struct field {struct}.{key}", "map[string]string")
        for item in value.values():
            if not isinstance(item, str):
                return _unmarshal_error(item, f"struct field {struct}.{key}", "string")
    for key in _OBJECT_FIELDS:
        if body.get(key) is not None and not isinstance(body[key], dict):
            return _unmarshal_error(body[key], f"struct field {struct}.{key}", "object")
    return None


def read_run_body(content_type: str, raw: bytes) -> tuple[dict[str, Any], str | None]:
    """The run request as the agent acts on it, or the 400 detail for a body Go could not unmarshal."""
    if not is_json(content_type):
        return {}, None  # fiber's BodyParser: ErrUnprocessableEntity, which the handler tolerates
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return {}, _PREFIX + ("unexpected end of JSON input" if not raw else str(exc))
    invalid = check_run_request(body)
    if invalid is not None:
        return {}, _PREFIX + invalid
    return body or {}, None
