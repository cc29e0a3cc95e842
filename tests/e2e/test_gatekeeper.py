"""End to end: ``policyflow run-once`` and ``scan`` with a Gatekeeper constraint beside a Kyverno report,
against the stand-ins and the session's real Prefect API."""

from __future__ import annotations

from typing import Any

import pytest

from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import CONSTRAINTS_API, audit_status, required_labels
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, deploy, load_report, records

pytestmark = [pytest.mark.e2e, pytest.mark.gatekeeper, pytest.mark.usefixtures("prefect_api")]

MESSAGE = 'you must provide labels: {"team"}'


def audited(kube: KubeStandin, found: list[dict[str, Any]], at: str, limit: int = 20) -> dict[str, Any]:
    """The constraint with the status audit wrote (the stand-in's controller-side write)."""
    constraint = kube.get(CONSTRAINTS_API, "K8sRequiredLabels", "must-have-team")
    if constraint is None:
        constraint = kube.create(required_labels("must-have-team", ["team"], namespaces=["shop"]))
    constraint["status"] = audit_status([(r, MESSAGE) for r in found], timestamp=at, limit=limit)
    return kube.replace(constraint)


def test_run_once_tests_each_constraint_entry_once_beside_the_kyverno_report_and_scan_says_when_a_list_is_cut(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin
) -> None:
    load_report(kube, resource=deploy(kube, "nginx-no-cpu"))  # the Kyverno violation beside them
    shop = [deploy(kube, name, "shop") for name in ("b-cart", "c-web")]
    constraint = audited(kube, shop, "2026-12-01T10:00:00Z")
    first = policyflow("run-once")
    assert first.code == 0, first.err
    assert len(testkube.executions) == 3
    for name in ("b-cart", "c-web"):
        assert f"K8sRequiredLabels/must-have-team shop/Deployment/{name}" in first.out
    assert "require-resources/require-resources-in-deployment default/Deployment/nginx-no-cpu" in first.out
    assert sorted(r["status"] for r in records(kube, constraint)) == ["passed", "passed"]

    audited(kube, shop, "2026-12-01T10:01:00Z")  # audit's next interval: nothing new
    assert policyflow("run-once").code == 0 and len(testkube.executions) == 3

    audited(kube, [deploy(kube, "a-new", "shop"), *shop], "2026-12-01T10:02:00Z", limit=2)
    scan = policyflow("scan")
    assert ("policyflow: K8sRequiredLabels must-have-team: audit listed 2 of 3 violations; missing entries are "
            "not resolved") in scan.err.splitlines()
    third = policyflow("run-once")
    assert third.code == 0, third.err
    assert len(testkube.executions) == 4 and "shop/Deployment/a-new" in third.out
    assert sorted(r["status"] for r in records(kube, constraint)) == ["passed", "passed", "passed"]
