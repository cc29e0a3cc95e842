"""Parsing reports of both groups into violations, and the filters."""

from __future__ import annotations

import copy
import random

import pytest

from policyflow.domain.model import (
    CLUSTER_POLICY_REPORT,
    OPENREPORTS_REPORT,
    POLICY_REPORT,
    ResourceRef,
    ResultKind,
    violation_key,
)
from policyflow.domain.reports import ViolationFilter, parse_report
from tests.specs import example


def test_policyreport_fail_example_gives_one_violation_about_the_deployment() -> None:
    parsed = parse_report(POLICY_REPORT, example("policyreport-fail.yaml"))
    assert parsed.problems == []
    (v,) = parsed.violations
    assert v.policy == "require-resources"
    assert v.rule == "require-resources-in-deployment"
    assert v.result is ResultKind.FAIL
    assert v.severity == "medium"
    assert v.resource == ResourceRef("apps/v1", "Deployment", "nginx-no-cpu", "default",
                                     "5b7d0f8e-3c1a-4e0b-9a6d-2f4c8e1b7a90")
    assert v.report.name == "5b7d0f8e-3c1a-4e0b-9a6d-2f4c8e1b7a90"
    assert v.report.namespace == "default"
    assert v.title == "require-resources/require-resources-in-deployment default/Deployment/nginx-no-cpu"


def test_pass_report_has_no_violation() -> None:
    assert parse_report(POLICY_REPORT, example("policyreport-pass.yaml")).violations == []


def test_cluster_report_without_severity_or_namespace() -> None:
    (v,) = parse_report(CLUSTER_POLICY_REPORT, example("clusterpolicyreport-fail.yaml")).violations
    assert v.report.namespace is None
    assert v.resource.kind == "Namespace"
    assert v.resource.namespace is None
    assert v.severity is None


def test_openreports_report_is_the_same_violation_as_the_policyreport() -> None:
    (a,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    (b,) = parse_report(OPENREPORTS_REPORT, example("openreports-report-fail.yaml")).violations
    assert a.key == b.key
    assert b.report.kind is OPENREPORTS_REPORT


def test_newer_openreports_field_names_description_and_subjects() -> None:
    report = example("openreports-report-fail.yaml")
    del report["scope"]
    result = report["results"][0]
    result["description"] = result.pop("message")
    result["subjects"] = [{"apiVersion": "v1", "kind": "Pod", "name": "p1", "namespace": "default", "uid": "u1"}]
    (v,) = parse_report(OPENREPORTS_REPORT, report).violations
    assert v.message.startswith("validation error")
    assert v.resource.name == "p1"


def test_key_ignores_timestamps_messages_and_result_order() -> None:
    report = example("policyreport-fail.yaml")
    second = copy.deepcopy(report["results"][0])
    second["rule"] = "another-rule"
    report["results"].append(second)
    before = {v.key for v in parse_report(POLICY_REPORT, report).violations}
    rescanned = copy.deepcopy(report)
    for result in rescanned["results"]:
        result["timestamp"]["seconds"] += 3600
        result["message"] += " (reworded)"
    random.Random(7).shuffle(rescanned["results"])
    after = {v.key for v in parse_report(POLICY_REPORT, rescanned).violations}
    assert before == after
    assert len(before) == 2


def test_key_changes_with_a_recreated_resource() -> None:
    a = ResourceRef("apps/v1", "Deployment", "web", "default", "uid-1")
    b = ResourceRef("apps/v1", "Deployment", "web", "default", "uid-2")
    assert violation_key(a, "p", "r") != violation_key(b, "p", "r")
    # A served-version change is not a new violation.
    c = ResourceRef("apps/v1beta1", "Deployment", "web", "default", "uid-1")
    assert violation_key(a, "p", "r") == violation_key(c, "p", "r")


@pytest.mark.parametrize(
    ("results", "problem"),
    [
        (None, None),
        ("oops", "results is str"),
        ([42], "results[0] is not an object"),
        ([{"policy": "p", "result": "bogus"}], "not one of pass|fail|warn|error|skip"),
        ([{"result": "fail"}], "results[0].policy is missing"),
    ],
)
def test_odd_results_are_skipped_with_a_problem_naming_the_field(results: object, problem: str | None) -> None:
    report = example("policyreport-fail.yaml")
    report["results"] = results
    parsed = parse_report(POLICY_REPORT, report)
    assert parsed.violations == []
    if problem is None:
        assert parsed.problems == []
    else:
        (line,) = parsed.problems
        assert problem in line
        assert "PolicyReport default/5b7d0f8e" in line


def test_missing_scope_falls_back_to_the_owner_reference() -> None:
    report = example("policyreport-fail.yaml")
    del report["scope"]
    (v,) = parse_report(POLICY_REPORT, report).violations
    assert v.resource.name == "nginx-no-cpu"
    assert v.resource.uid == "5b7d0f8e-3c1a-4e0b-9a6d-2f4c8e1b7a90"


def test_no_resource_at_all_is_a_problem() -> None:
    report = example("policyreport-fail.yaml")
    del report["scope"]
    del report["metadata"]["ownerReferences"]
    parsed = parse_report(POLICY_REPORT, report)
    assert parsed.violations == []
    assert "names no resource" in parsed.problems[0]


def test_filter_by_namespace_policy_result_and_severity() -> None:
    (v,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    assert ViolationFilter().wants(v)
    assert not ViolationFilter(namespaces=("prod-*",)).wants(v)
    assert not ViolationFilter(exclude_namespaces=("def*",)).wants(v)
    assert ViolationFilter(policies=("require-*",)).wants(v)
    assert not ViolationFilter(policies=("other",)).wants(v)
    assert not ViolationFilter(results=frozenset({ResultKind.WARN})).wants(v)
    assert ViolationFilter(severities=frozenset({"medium"})).wants(v)
    assert not ViolationFilter(severities=frozenset({"high"})).wants(v)
    assert not ViolationFilter(cluster_reports=False).wants_namespace(None)
