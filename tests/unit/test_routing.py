"""Routes, matching and templating."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from policyflow.domain.model import POLICY_REPORT
from policyflow.domain.reports import parse_report
from policyflow.domain.routing import Route, RoutingTable, check_template, render
from policyflow.domain.testrun import RESERVED_TAGS, execution_request
from tests.specs import example


def violation():
    (v,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    return v


def test_templates_render_violation_fields_and_literal_braces() -> None:
    v = violation()
    assert render("{resource.namespace}/{resource.name} {{x}}", v) == "default/nginx-no-cpu {x}"
    assert render("{policy}:{rule}:{severity}", v) == "require-resources:require-resources-in-deployment:medium"


@pytest.mark.parametrize("bad", ["{resource.__class__}", "{nope}", "{", "a}b", "{resource.name"])
def test_bad_templates_are_refused_with_the_placeholder_named(bad: str) -> None:
    with pytest.raises(ValueError, match=r"placeholder|brace"):
        check_template(bad)


def test_first_matching_route_wins_then_the_default() -> None:
    table = RoutingTable(
        routes=(
            Route(match={"policies": ["other"]}, workflow="never"),
            Route(name="deployments", match={"kinds": ["Deployment"], "namespaces": ["def*"],
                                             "severities": ["medium"]},
                  workflow="smoke-{resource.name}", config={"target": "{resource.name}.{namespace}"},
                  tags={"team": "web"}),
        ),
        default_workflow="catch-all",
    )
    routed = table.route(violation())
    assert routed is not None
    assert (routed.route, routed.workflow) == ("deployments", "smoke-nginx-no-cpu")
    assert routed.config == {"target": "nginx-no-cpu.default"}
    only_default = RoutingTable(default_workflow="catch-all").route(violation())
    assert only_default is not None and only_default.workflow == "catch-all"
    assert RoutingTable().route(violation()) is None


def test_label_matching_needs_the_resource_labels() -> None:
    table = RoutingTable(routes=(Route(match={"labels": {"app": "nginx*"}}, workflow="w"),))
    assert table.needs_labels
    assert table.route(violation(), None) is None
    assert table.route(violation(), {"app": "nginx-web"}) is not None
    assert table.route(violation(), {"app": "db"}) is None


def test_unknown_route_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Route.model_validate({"workflow": "w", "matches": {}})


def test_execution_request_carries_the_tags_the_pipeline_sent_and_ours() -> None:
    v = violation()
    routed = RoutingTable(routes=(Route(workflow="smoke-nova", tags={"team": "a\nb", "policyflow-key": "forged"},
                                        config={"url": "{resource.name}"}),)).route(v)
    assert routed is not None
    body = execution_request(v, routed, "uid.1")
    assert body["tags"] == {
        "PolicyViolationName": "5b7d0f8e-3c1a-4e0b-9a6d-2f4c8e1b7a90",
        "policyflow-key": v.key,
        "policyflow-episode": "uid.1",
        "policy": "require-resources",
        "rule": "require-resources-in-deployment",
        "resource-kind": "Deployment",
        "resource-namespace": "default",
        "resource-name": "nginx-no-cpu",
        "policyflow-cluster": "default",
        "team": "a b",
    }
    assert body["config"] == {"url": "nginx-no-cpu"}
    assert set(body["tags"]) >= RESERVED_TAGS
