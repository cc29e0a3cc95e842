"""The cluster in a violation's identity: keys, references, tags, routes and the journal."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from policyflow.domain.journal import Identity
from policyflow.domain.model import POLICY_REPORT, Violation
from policyflow.domain.ref import ViolationRef
from policyflow.domain.reports import parse_report
from policyflow.domain.routing import Route, RoutingTable
from policyflow.domain.testrun import TAG_CLUSTER, execution_request, execution_tags
from tests.specs import example


def violation() -> Violation:
    (v,) = parse_report(POLICY_REPORT, example("policyreport-fail.yaml")).violations
    return v


def test_default_cluster_keys_are_the_single_cluster_keys_of_before() -> None:
    v = violation()
    r = v.resource
    # The key as the single-cluster version computed it: records written by it must still match.
    before = hashlib.sha256("\x1f".join(
        (r.group, r.kind, r.namespace or "", r.name, r.uid or "", v.policy, v.rule)).encode()).hexdigest()[:16]
    assert v.cluster == "default"
    assert v.key == before
    assert v.in_cluster("default") is v


def test_the_same_resource_in_two_clusters_is_two_violations() -> None:
    v = violation()
    prod, staging = v.in_cluster("prod"), v.in_cluster("staging")
    assert len({v.key, prod.key, staging.key}) == 3
    assert prod.in_cluster("prod").key == prod.key
    assert prod.title == f"{v.title} @prod"
    assert execution_tags(prod, "uid.1") == {"policyflow-key": prod.key, "policyflow-episode": "uid.1"}


def test_references_carry_the_cluster_and_old_parameters_stay_valid() -> None:
    v = violation().in_cluster("prod")
    ref = ViolationRef.of(v)
    assert ref.cluster == "prod"
    assert ref.title == v.title
    assert "cluster:prod" in ref.tags("smoke")
    again = ViolationRef.model_validate(ref.model_dump())
    assert again == ref
    old = ViolationRef.model_validate({k: val for k, val in ref.model_dump().items() if k != "cluster"})
    assert old.cluster == "default" and "@" not in old.title and "cluster:default" in old.tags()
    assert old.identity != ref.identity and old.identity[:6] == ref.identity[:6]
    with pytest.raises(ValidationError):
        ViolationRef.model_validate({**ref.model_dump(), "cluster": "Not A Label"})


def test_routes_match_clusters_by_glob_and_render_the_cluster() -> None:
    table = RoutingTable(routes=(
        Route(workflow="prod-{cluster}", match={"clusters": ["prod-*"]}, tags={"where": "{cluster}"}),
        Route(workflow="other"),
    ))
    eu = table.route(violation().in_cluster("prod-eu"))
    assert eu is not None and eu.workflow == "prod-prod-eu" and eu.tags == {"where": "prod-eu"}
    routed = table.route(violation().in_cluster("staging"))
    assert routed is not None and routed.workflow == "other"


def test_executions_are_tagged_with_their_cluster_which_a_route_cannot_override() -> None:
    v = violation().in_cluster("prod")
    routed = RoutingTable(routes=(Route(workflow="w", tags={TAG_CLUSTER: "forged"}),)).route(v)
    assert routed is not None
    assert execution_request(v, routed, "uid.1")["tags"][TAG_CLUSTER] == "prod"


def test_journal_identities_of_before_decode_as_the_default_cluster() -> None:
    old = '{"namespace":"a","policy":"p","resource":"Pod/x","rule":"r","workflow":"w"}'
    assert Identity.from_json(old).cluster == "default"
    assert Identity.from_json(old).to_json() == old
    prod = Identity("p", "r", "a", "Pod/x", "w", "prod")
    assert Identity.from_json(prod.to_json()) == prod


def test_drift_is_a_failure_in_some_clusters_and_not_the_others_both_ways() -> None:
    from dataclasses import replace

    from policyflow.domain.drift import drift

    v = violation()
    other = replace(v, resource=replace(v.resource, name="other", uid="u2"))
    rows = drift({"prod": [v.in_cluster("prod"), other.in_cluster("prod")],
                  "staging": [replace(v, resource=replace(v.resource, uid="staging-uid")).in_cluster("staging")],
                  "dev": [other.in_cluster("dev")]})
    assert [(d.name, d.failing, d.not_failing) for d in rows] == [
        ("nginx-no-cpu", ("prod", "staging"), ("dev",)),
        ("other", ("prod", "dev"), ("staging",)),
    ]
    assert rows[0].as_dict()["not_failing"] == ["dev"]
    assert drift({"prod": [v], "staging": [v]}) == []
