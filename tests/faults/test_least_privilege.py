"""Least privilege: with RBAC enforced by the Kubernetes stand-in, every missing permission is named
(verb and resource) by ``policyflow check``, and the operations that need it say so too."""

from __future__ import annotations

import logging

import pytest

from policyflow.cli import main
from policyflow.domain.permissions import Permission, needed
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.specs import example


@pytest.mark.parametrize("permission", [
    # check asks about Gatekeeper's permissions only where Gatekeeper is installed
    pytest.param(p, marks=pytest.mark.gatekeeper) if p.group == "constraints.gatekeeper.sh" else p for p in needed()
], ids=str)
def test_check_names_each_missing_permission(
    env: None, kube: KubeStandin, permission: Permission, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.deny(verb=permission.verb, group=permission.group, resource=permission.resource)
    code = main(["check"])
    out = capsys.readouterr().out
    line = next((row for row in out.splitlines() if f"{permission.verb} {permission.resource}" in row), None)
    assert line is not None, out
    assert line.startswith("✗" if permission.required else "!"), line
    assert code == (1 if permission.required else 0)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("verb", "resource", "says", "code"),
    [
        ("list", "policyreports", "RBAC forbids list policyreports", 3),
        ("get", "policyreports", "RBAC forbids get policyreports", 3),
        ("patch", "policyreports", "RBAC forbids patch policyreports", 3),
        ("create", "events", "RBAC forbids create events", 0),
    ],
)
def test_each_operation_names_the_permission_it_lacks(
    env: None, kube: KubeStandin, testkube: TestkubeStandin, verb: str, resource: str, says: str, code: int,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    kube.create(report_for(example("policyreport-fail.yaml"), kube.create(deployment("nginx-no-cpu"))))
    group = "" if resource == "events" else "wgpolicyk8s.io"
    kube.deny(verb=verb, group=group, resource=resource)
    with caplog.at_level(logging.WARNING):
        assert main(["run-once"]) == code
    said = capsys.readouterr().err + caplog.text
    assert says in said, said
    if resource == "events":
        assert len(testkube.executions) == 1, "a missing Event permission does not stop the chain"
    elif verb in ("get", "patch"):
        assert testkube.executions == [], "no test starts unless its record can be read and written"
