"""Gatekeeper constraints (audit status) normalised into violations: policyflow.domain.gatekeeper."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policyflow.domain.gatekeeper import (
    CONSTRAINTS_GROUP,
    constraint_kind,
    constraint_kinds,
    parse_constraint,
)
from policyflow.domain.model import ReportRef, ResourceRef, ResultKind, violation_key

DATA = Path(__file__).resolve().parents[1] / "data" / "gatekeeper"
KIND = constraint_kind("K8sRequiredLabels")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DATA / name).read_text())
    assert isinstance(data, dict)
    return data


def with_entries(entries: Any, total: Any = None, **status: Any) -> dict[str, Any]:
    """The complete test constraint with its status.violations (and totalViolations) replaced."""
    constraint = load("constraint-complete.yaml")
    constraint["status"]["violations"] = entries
    constraint["status"]["totalViolations"] = len(entries) if total is None else total
    constraint["status"].update(status)
    return constraint


def entry(name: str, action: str = "deny", message: str = "m", **extra: Any) -> dict[str, Any]:
    return {"group": "", "version": "v1", "kind": "Pod", "namespace": "shop", "name": name, "message": message,
            "enforcementAction": action, **extra}  # fmt: skip


def test_the_constraint_kind_is_a_cluster_scoped_report_kind_in_the_constraints_group() -> None:
    assert (KIND.group, KIND.version, KIND.kind, KIND.plural, KIND.namespaced) == (
        CONSTRAINTS_GROUP, "v1beta1", "K8sRequiredLabels", "k8srequiredlabels", False)  # fmt: skip
    with pytest.raises(ValueError, match="needs a name"):
        constraint_kind("")


def test_discovery_finds_constraint_kinds_by_category_and_skips_subresources() -> None:
    crd = load("k8srequiredlabels-crd.yaml")
    names = crd["spec"]["names"]
    listing = {
        "groupVersion": "constraints.gatekeeper.sh/v1beta1",
        "resources": [
            {"name": names["plural"], "kind": names["kind"], "namespaced": False, "categories": names["categories"]},
            {"name": f"{names['plural']}/status", "kind": names["kind"], "namespaced": False},
            {"name": "odd", "kind": "Odd", "namespaced": False, "categories": ["all"]},
        ],
    }
    assert constraint_kinds(listing) == [KIND]
    assert constraint_kinds({**listing, "groupVersion": "wgpolicyk8s.io/v1alpha2"}) == []
    assert constraint_kinds({"resources": "junk"}) == []


def test_a_truncated_audit_gives_one_violation_per_entry_and_is_not_complete() -> None:
    constraint = load("constraint-truncated.yaml")
    parsed = parse_constraint(KIND, constraint)
    entries = constraint["status"]["violations"]
    assert parsed.problems == []
    assert (parsed.total_violations, len(entries), parsed.complete) == (27, 20, False)
    assert sorted(v.resource.name for v in parsed.violations) == sorted(e["name"] for e in entries)
    first = parsed.violations[0]
    assert first.report == ReportRef(KIND, "all-must-have-owner")
    assert first.report_uid == constraint["metadata"]["uid"]
    assert (first.policy, first.rule, first.result, first.source) == (
        "K8sRequiredLabels", "all-must-have-owner", ResultKind.FAIL, "gatekeeper")  # fmt: skip
    assert first.resource == ResourceRef("v1", "Namespace", first.resource.name)
    assert first.message.startswith("All namespaces must have an `owner` label")
    assert first.severity == "high"  # the policyflow.io/severity annotation
    assert parsed.audit_timestamp == "2026-08-20T14:03:11Z" and first.timestamp == 1787234591
    assert parsed.annotations == constraint["metadata"]["annotations"]


def test_a_complete_audit_merges_the_entries_of_one_resource() -> None:
    parsed = parse_constraint(KIND, load("constraint-complete.yaml"))
    assert parsed.complete and parsed.total_violations == 4 and parsed.problems == []
    by_name = {f"{v.resource.kind}/{v.resource.name}": v for v in parsed.violations}
    assert sorted(by_name) == ["Deployment/web", "Pod/cart-5c8b7d9f6-p7m3n", "Pod/web-7d9f8c6b5-k2x9q"]
    web = by_name["Pod/web-7d9f8c6b5-k2x9q"]
    assert web.message == ("Label <app: Web> does not satisfy allowed regex: ^[a-z][a-z0-9-]*$; "
                           "Label <team: A1> does not satisfy allowed regex: ^[a-z]+$")  # fmt: skip
    deployment = by_name["Deployment/web"].resource
    assert (deployment.api_version, deployment.namespace, deployment.uid) == ("apps/v1", "shop", None)
    assert all(v.result is ResultKind.FAIL and v.severity == "medium" for v in parsed.violations)  # dryrun counts


def test_the_key_is_one_per_constraint_and_resource_and_never_uses_a_uid() -> None:
    parsed = parse_constraint(KIND, load("constraint-complete.yaml"))
    resource = ResourceRef("v1", "Pod", "cart-5c8b7d9f6-p7m3n", "shop")
    assert violation_key(resource, "K8sRequiredLabels", "workloads-must-have-app-and-team") in {
        v.key for v in parsed.violations}  # fmt: skip
    other = copy.deepcopy(load("constraint-complete.yaml"))
    other["metadata"]["name"] = "another-constraint"
    assert not {v.key for v in parsed.violations} & {v.key for v in parse_constraint(KIND, other).violations}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_keys_and_violations_do_not_depend_on_entry_order_or_message_text(data: st.DataObject) -> None:
    entries = load("constraint-complete.yaml")["status"]["violations"]
    baseline = parse_constraint(KIND, with_entries(entries))
    shuffled = data.draw(st.permutations(entries))
    reworded = [{**e, "message": data.draw(st.text(max_size=40))} for e in shuffled]
    for variant in (shuffled, reworded):
        parsed = parse_constraint(KIND, with_entries(variant))
        assert [v.key for v in parsed.violations] == [v.key for v in baseline.violations]
        assert [(v.resource, v.result) for v in parsed.violations] == [
            (v.resource, v.result) for v in baseline.violations]  # fmt: skip
    assert [v.message for v in parse_constraint(KIND, with_entries(shuffled)).violations] == [
        v.message for v in baseline.violations]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "scoped", "expected"),
    [
        ("deny", None, ResultKind.FAIL),
        ("dryrun", None, ResultKind.FAIL),
        ("warn", None, ResultKind.WARN),
        ("scoped", ["warn"], ResultKind.WARN),
        ("scoped", ["warn", "deny"], ResultKind.FAIL),
    ],
)
def test_enforcement_actions_audit_reports(action: str, scoped: list[str] | None, expected: ResultKind) -> None:
    extra = {"enforcementActions": scoped} if scoped is not None else {}
    parsed = parse_constraint(KIND, with_entries([entry("p", action, **extra)]))
    assert [v.result for v in parsed.violations] == [expected] and parsed.complete


def test_the_strongest_action_wins_when_a_resource_is_listed_twice() -> None:
    parsed = parse_constraint(KIND, with_entries([entry("p", "warn", "a"), entry("p", "deny", "b")]))
    assert [(v.result, v.message) for v in parsed.violations] == [(ResultKind.FAIL, "a; b")]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (entry("p", "audit"), "enforcementAction 'audit'"),
        (entry("p", "scoped"), "name none of deny|dryrun|warn"),
        (entry("p", "scoped", enforcementActions=["notify"]), "name none of deny|dryrun|warn"),
        ({"kind": "Pod", "version": "v1", "enforcementAction": "deny"}, "lacks kind, name or version"),
        ("Pod/p", "is not an object"),
        (None, "is not an object"),
    ],
)
def test_an_unusable_entry_is_skipped_with_a_problem_and_makes_the_list_incomplete(bad: Any, problem: str) -> None:
    parsed = parse_constraint(KIND, with_entries([entry("ok"), bad]))
    assert [v.resource.name for v in parsed.violations] == ["ok"]
    assert len(parsed.problems) == 1 and problem in parsed.problems[0]
    assert "status.violations[1]" in parsed.problems[0] and "workloads-must-have-app-and-team" in parsed.problems[0]
    assert not parsed.complete  # the skipped entry's resource may still fail: nothing may be resolved


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ("broken", "status is str, not an object"),
        (
            {"auditTimestamp": "2026-08-20T14:03:11Z", "violations": {"a": 1}, "totalViolations": 1},
            "status.violations is dict, not a list",
        ),
        (
            {"auditTimestamp": "2026-08-20T14:03:11Z", "violations": [], "totalViolations": "many"},
            "status.totalViolations is 'many'",
        ),
        (
            {"auditTimestamp": "2026-08-20T14:03:11Z", "violations": [], "totalViolations": True},
            "status.totalViolations is True",
        ),
    ],
)
def test_a_malformed_status_is_a_problem_not_a_crash(status: Any, problem: str) -> None:
    constraint = load("constraint-complete.yaml")
    constraint["status"] = status
    parsed = parse_constraint(KIND, constraint)
    assert parsed.violations == [] and not parsed.complete
    assert len(parsed.problems) == 1 and problem in parsed.problems[0]


def test_an_audit_with_nothing_found_is_complete_and_a_constraint_never_audited_is_not() -> None:
    clean = parse_constraint(KIND, with_entries([], 0))
    assert clean.complete and clean.audited and clean.violations == []
    without_list = with_entries([], 0)
    del without_list["status"]["violations"]  # what audit writes when it found nothing
    assert parse_constraint(KIND, without_list).complete
    fresh = load("constraint-complete.yaml")
    del fresh["status"]
    never = parse_constraint(KIND, fresh)
    assert not never.complete and not never.audited and never.problems == []
    assert not parse_constraint(KIND, {**fresh, "status": {"byPod": []}}).complete


@pytest.mark.parametrize(
    ("metadata", "severity"),
    [
        ({"annotations": {"policyflow.io/severity": "Critical"}, "labels": {"severity": "low"}}, "critical"),
        ({"labels": {"policyflow.io/severity": "high", "severity": "low"}}, "high"),
        ({"labels": {"severity": "LOW"}}, "low"),
        ({}, None),
    ],
)
def test_severity_comes_from_the_constraint(metadata: dict[str, Any], severity: str | None) -> None:
    constraint = with_entries([entry("p")])
    constraint["metadata"] = {"name": "c", **metadata}
    assert [v.severity for v in parse_constraint(KIND, constraint).violations] == [severity]


def test_a_constraint_without_metadata_still_parses() -> None:
    parsed = parse_constraint(KIND, {"status": {"auditTimestamp": "x", "totalViolations": 1,
                                                "violations": [entry("p")]}})  # fmt: skip
    assert parsed.ref.name == "<unnamed>" and parsed.uid == "" and parsed.annotations == {}
    assert [v.timestamp for v in parsed.violations] == [None] and parsed.complete
