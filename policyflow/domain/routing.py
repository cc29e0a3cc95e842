"""Routing: which TestWorkflow a violation runs, with which config values and tags.

Routes are tried in order; the first whose ``match`` fits the violation wins. ``default_workflow``
(``POLICYFLOW_DEFAULT_WORKFLOW``) is the catch-all after them. A violation no route fits is
*unrouted*: reported, never triggered.

Templates use ``{field}`` placeholders (``{resource.name}``, ``{policy}``...; ``{{``/``}}`` for a
literal brace). Only the fields in :data:`TEMPLATE_FIELDS` exist; an unknown one is a configuration
error found when the file is loaded, not when a violation first needs it. Substitution is plain text
replacement, never ``str.format``, so a value from a report cannot reach into Python objects.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from policyflow.domain.errors import one_line
from policyflow.domain.model import Violation

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

TEMPLATE_FIELDS: dict[str, Callable[[Violation], str]] = {
    "key": lambda v: v.key,
    "policy": lambda v: v.policy,
    "rule": lambda v: v.rule,
    "result": lambda v: v.result.value,
    "severity": lambda v: v.severity or "",
    "category": lambda v: v.category or "",
    "message": lambda v: v.message,
    "namespace": lambda v: v.resource.namespace or "",
    "resource.kind": lambda v: v.resource.kind,
    "resource.name": lambda v: v.resource.name,
    "resource.namespace": lambda v: v.resource.namespace or "",
    "resource.uid": lambda v: v.resource.uid or "",
    "resource.apiVersion": lambda v: v.resource.api_version,
    "source": lambda v: v.report.kind.source.value,
    "report.kind": lambda v: v.report.kind.kind,
    "report.name": lambda v: v.report.name,
    "report.namespace": lambda v: v.report.namespace or "",
    "cluster": lambda v: v.cluster,
}


def check_template(template: str) -> str:
    """``template`` unchanged if every placeholder is known; ValueError naming the bad one otherwise."""
    shown = one_line(repr(template), 80)
    for match in _PLACEHOLDER.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None:
            raise ValueError(f"unbalanced {token!r} in {shown}: write {token * 2} for a literal brace")
        if name not in TEMPLATE_FIELDS:
            known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {{{one_line(name, 60)}}} in {shown}; known: {known}")
    return template


def render(template: str, violation: Violation) -> str:
    """``template`` with each placeholder replaced by the violation's value (templates are pre-checked)."""

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return TEMPLATE_FIELDS[match.group(1)](violation)

    return _PLACEHOLDER.sub(substitute, template)


class Match(BaseModel):
    """Conditions a violation must meet; each list is "any of" (globs), each field must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    #: Where the violation comes from: ``kyverno`` (a policy report) or ``gatekeeper`` (a constraint).
    sources: tuple[str, ...] = ()
    #: Configured cluster names (globs): ``[prod-*]``.
    clusters: tuple[str, ...] = ()
    #: Labels of the failing resource (all must be present with these values; ``*`` globs allowed).
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def needs_labels(self) -> bool:
        return bool(self.labels)

    def fits(self, violation: Violation, labels: Mapping[str, str] | None) -> bool:
        """Whether ``violation`` (whose resource carries ``labels``) meets every condition."""
        checks = (
            (self.policies, violation.policy),
            (self.rules, violation.rule),
            (self.namespaces, violation.resource.namespace or ""),
            (self.kinds, violation.resource.kind),
            (self.severities, violation.severity or ""),
            (self.sources, violation.report.kind.source.value),
            (self.clusters, violation.cluster),
        )
        for patterns, value in checks:
            if patterns and not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
        if self.labels:
            if labels is None:
                return False
            for name, pattern in self.labels.items():
                if name not in labels or not fnmatch.fnmatchcase(labels[name], pattern):
                    return False
        return True


class Route(BaseModel):
    """A rule: violations that fit ``match`` run ``workflow`` with these config values and extra tags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    match: Match = Field(default_factory=Match)
    workflow: str = Field(min_length=1)
    config: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("workflow")
    @classmethod
    def _workflow_template(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("workflow is blank: name the TestWorkflow to run")
        return check_template(value)

    @field_validator("config", "tags")
    @classmethod
    def _value_templates(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            check_template(item)
        return value


class RoutingTable(BaseModel):
    """The routes of the configuration file, then the default workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: tuple[Route, ...] = ()
    default_workflow: str | None = None

    @property
    def needs_labels(self) -> bool:
        """Whether any route looks at resource labels (then the resource must be read to route)."""
        return any(route.match.needs_labels for route in self.routes)

    @property
    def is_empty(self) -> bool:
        return not self.routes and not self.default_workflow

    def route(self, violation: Violation, labels: Mapping[str, str] | None = None) -> RoutedTest | None:
        """The test this violation runs, or None when it is unrouted."""
        for index, route in enumerate(self.routes):
            if route.match.fits(violation, labels):
                return RoutedTest(
                    route=route.name or f"routes[{index}]",
                    workflow=render(route.workflow, violation),
                    config={k: render(v, violation) for k, v in route.config.items()},
                    tags={k: render(v, violation) for k, v in route.tags.items()},
                )
        if self.default_workflow:
            return RoutedTest(route="default", workflow=self.default_workflow, config={}, tags={})
        return None


@dataclass(frozen=True, slots=True)
class RoutedTest:
    """What to run for one violation, rendered."""

    route: str
    workflow: str
    config: dict[str, str]
    tags: dict[str, str]
