"""Request validation against the agent's OpenAPI spec with openapi-core (requests only, not responses).

The spec is wrong in places (SOURCES.md section 3); validation follows what the agent accepts: a
non-JSON run body is validated as the ``{}`` the agent acts on, undeclared query parameters pass, and
a path parameter the path does not have is removed from the spec before use.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from policyflow.standins.testkube.body import is_json


def _drop_undeclared_path_params(spec: dict[str, Any]) -> None:
    """Remove path parameters whose ``{name}`` is not in the path template (a spec bug).

    ``GET /test-workflow-executions`` lists ``$ref: ID`` (``in: path, required``) although the path has
    no ``{id}``; openapi-core would reject every call. The real server has no such parameter.
    """
    shared = spec.get("components", {}).get("parameters", {})

    def resolve(param: dict[str, Any]) -> dict[str, Any]:
        ref = param.get("$ref", "")
        return dict(shared.get(ref.rsplit("/", 1)[-1], {})) if ref else param

    for template, item in spec.get("paths", {}).items():
        for operation in [item, *(v for v in item.values() if isinstance(v, dict))]:
            params = operation.get("parameters")
            if isinstance(params, list):
                operation["parameters"] = [
                    p
                    for p in params
                    if resolve(p).get("in") != "path" or "{" + str(resolve(p).get("name")) + "}" in template
                ]


@functools.lru_cache(maxsize=4)
def load_openapi(path: str) -> Any:
    """Parse the spec once per process (390 KB of YAML) and build an openapi-core ``OpenAPI``."""
    import yaml
    from openapi_core import Config, OpenAPI

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
    with open(path, encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
    _drop_undeclared_path_params(spec)
    # The upstream file is trusted; validating the spec itself would only cost seconds.
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


@dataclass
class _SpecRequest:
    """The request as openapi-core sees it; the path is relative to the agent base (no ``servers``)."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: Any

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


def _describe_errors(errors: Iterable[Exception]) -> str:
    messages = []
    for error in errors:
        # Schema errors hide in the cause; their own messages read better than the cause's repr.
        schema_errors = getattr(error.__cause__, "schema_errors", None) or ()
        if schema_errors:
            summary = str(error).partition(":")[0]
            messages.append(f"{summary}: " + "; ".join(getattr(e, "message", str(e)) for e in schema_errors))
        else:
            messages.append(str(error))
    return "; ".join(messages)


def validation_errors(openapi: Any, request: Request, relative: str, raw: bytes, has_body: bool) -> str | None:
    """What is wrong with ``request`` (at ``relative``, the path under the agent base) per the spec, or None."""
    from openapi_core.datatypes import RequestParameters

    content_type = request.headers.get("content-type", "")
    body: bytes | None = raw or None
    if has_body and not is_json(content_type):
        # The agent ignores a non-JSON body and runs as if {} was sent; validate what it acts on.
        body, content_type = b"{}", "application/json"
    spec_request = _SpecRequest(
        host_url=f"{request.url.scheme}://{request.url.netloc}",
        path=relative,
        method=request.method.lower(),
        body=body,
        content_type=content_type.lower(),
        parameters=RequestParameters(query=request.query_params, header=request.headers),
    )
    # Undeclared query params (page, pageSize, status, selector, textSearch) are not errors for
    # openapi-core, which matches the agent reading them anyway.
    errors = list(openapi.iter_request_errors(spec_request))
    return _describe_errors(errors) if errors else None
