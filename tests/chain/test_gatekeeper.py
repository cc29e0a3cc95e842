"""OPA Gatekeeper as a source, through whole cycles without Prefect: scan, the chain for what needs one,
the resolved records, the journal; against the Kubernetes stand-in serving a constraint CRD with its
status subresource. Audit is played as Gatekeeper plays it: a PUT to ``/status`` of the constraint as
it last read it (stale metadata included), with the list capped and sorted like ``pkg/audit``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from policyflow.chain.deps import Deps
from policyflow.chain.run import DirectSteps, run_chain
from policyflow.domain.ledger import resolved_record
from policyflow.domain.model import Source
from policyflow.domain.outcome import ChainOutcome
from policyflow.domain.ref import ViolationRef
from policyflow.domain.status import Outcome
from policyflow.scanning import Scan, scan_cluster
from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import CONSTRAINTS_API, audit_status, required_labels
from policyflow.standins.testkube import TestkubeStandin
from tasks.health import Closed, close_resolved
from tests.chain.conftest import Make
from tests.helpers import deploy, records
from tests.specs import REPORT_CRDS

GROUP, VERSION, PLURAL, KIND = "constraints.gatekeeper.sh", "v1beta1", "k8srequiredlabels", "K8sRequiredLabels"
NAME = "must-have-team"
MESSAGE = 'you must provide labels: {"team"}'

pytestmark = pytest.mark.gatekeeper


@pytest.fixture
def objects(kubeconfig: Path) -> Iterator[client.CustomObjectsApi]:
    """The official client, as Gatekeeper's audit talks to the apiserver."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        yield client.CustomObjectsApi(api)


@pytest.fixture
def constraint(kube: KubeStandin, objects: client.CustomObjectsApi) -> dict[str, Any]:
    """The constraint as a user applies it (no status yet)."""
    body = required_labels(NAME, ["team"], namespaces=["shop"])
    created: dict[str, Any] = objects.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    return created


def audit(objects: client.CustomObjectsApi, found: Sequence[dict[str, Any]], *, at: str, limit: int = 20,
          stale: dict[str, Any] | None = None) -> dict[str, Any]:
    """Audit's write: GET, then PUT ``/status`` (``stale``: a copy read before policyflow's records)."""
    current = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, NAME)
    body = dict(stale or current)
    body["metadata"] = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
    body["status"] = audit_status([(resource, MESSAGE) for resource in found], timestamp=at, limit=limit)
    written: dict[str, Any] = objects.replace_cluster_custom_object_status(GROUP, VERSION, PLURAL, NAME, body)
    return written


def cycle(deps: Deps) -> tuple[Scan, list[ChainOutcome], Closed]:
    """One poll cycle's work, as flows/poll.py does it, without Prefect."""
    scan = scan_cluster(deps.kube, deps.settings, deps.routing, now=deps.clock.now())
    outcomes = [asyncio.run(run_chain(ViolationRef.of(f.violation), deps, DirectSteps(deps)))
                for f in scan.findings if f.needs_chain]
    for report, record in scan.resolved:
        deps.records.write(report, resolved_record(record, now=deps.clock.stamp()))
    return scan, outcomes, asyncio.run(close_resolved(deps, scan))


def by_resource(kube: KubeStandin, constraint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["resource"]: r for r in records(kube, constraint)}


@pytest.fixture
def shop(kube: KubeStandin) -> list[dict[str, Any]]:
    """Three Deployments without a team label, in the order audit sorts them."""
    return [deploy(kube, name, "shop") for name in ("b-cart", "c-web", "d-search")]


def test_each_listed_resource_runs_one_test_once_and_a_status_rewrite_starts_nothing(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, objects: client.CustomObjectsApi,
    constraint: dict[str, Any], shop: list[dict[str, Any]],
) -> None:
    before_records = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, NAME)
    audit(objects, shop, at="2026-12-01T10:00:00Z")
    deps = make_deps()
    scan, outcomes, _ = cycle(deps)
    assert sorted(o.status for o in outcomes) == [Outcome.PASSED] * 3
    assert len(testkube.executions) == 3
    assert len({e["tags"]["policyflow-key"] for e in testkube.executions}) == 3
    recorded = by_resource(kube, constraint)
    assert sorted(recorded) == [f"shop/Deployment/{d['metadata']['name']}" for d in shop]
    assert {(r["policy"], r["rule"], r["status"]) for r in recorded.values()} == {(KIND, NAME, "passed")}

    # Audit rewrites the status each interval: same entries, a new timestamp, written from a copy
    # read before the records existed. The records stay, and the next cycle starts nothing.
    rewritten = audit(objects, shop, at="2026-12-01T10:01:00Z", stale=before_records)
    assert rewritten["status"]["auditTimestamp"] == "2026-12-01T10:01:00Z"
    assert by_resource(kube, constraint) == recorded
    scan, outcomes, closed = cycle(make_deps())
    assert outcomes == [] and len(testkube.executions) == 3
    assert scan.counters["handled"] == 3 and scan.counters["resolved"] == 0 and not closed.resolved


def test_a_truncated_list_resolves_nothing_and_an_entry_truly_gone_resolves(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, objects: client.CustomObjectsApi,
    constraint: dict[str, Any], shop: list[dict[str, Any]],
) -> None:
    audit(objects, shop, at="2026-12-01T10:00:00Z")
    cycle(make_deps())
    assert len(testkube.executions) == 3

    # A fourth Deployment sorts first; with a limit of 3, d-search is cut from the list (not fixed).
    first = deploy(kube, "a-new", "shop")
    audit(objects, [first, *shop], at="2026-12-01T10:01:00Z", limit=3)
    scan, outcomes, closed = cycle(make_deps())
    assert [o.violation for o in outcomes] == [f"{KIND}/{NAME} shop/Deployment/a-new"]
    assert f"{KIND} {NAME}: audit listed 3 of 4 violations; missing entries are not resolved" in scan.problems
    assert scan.resolved == [] and not closed.resolved
    cut = by_resource(kube, constraint)["shop/Deployment/d-search"]
    assert cut["status"] == "passed" and scan.unsure == {cut["key"]}
    assert make_deps().journal.read().lifecycles[cut["key"]].is_open

    # A chain asked for the cut entry (a race with audit, or a run typed by hand) leaves it as recorded.
    ref = ViolationRef(source=Source.GATEKEEPER, report_kind=KIND, report_name=NAME, policy=KIND, rule=NAME,
                       resource_kind="Deployment", resource_namespace="shop", resource_name="d-search")
    deps = make_deps()
    outcome = asyncio.run(run_chain(ref, deps, DirectSteps(deps)))
    assert "does not list this failure, but audit listed 3 of 4 violations" in outcome.detail
    assert outcome.status is Outcome.PASSED  # its record's status: nothing resolved
    assert by_resource(kube, constraint)["shop/Deployment/d-search"] == cut

    # d-search really is fixed: the total drops and the list is whole again. Now it resolves.
    audit(objects, [first, *shop[:2]], at="2026-12-01T10:02:00Z", limit=3)
    scan, outcomes, closed = cycle(make_deps())
    assert outcomes == [] and not scan.unsure
    assert [record.key for _, record in scan.resolved] == [cut["key"]]
    assert by_resource(kube, constraint)["shop/Deployment/d-search"]["status"] == "resolved"
    assert [lc.key for lc in closed.resolved] == [cut["key"]]
    assert len(testkube.executions) == 4


def test_sources_leave_out_what_they_do_not_name_and_say_when_a_named_one_is_missing(
    make_deps: Make, kube: KubeStandin, testkube: TestkubeStandin, objects: client.CustomObjectsApi,
    constraint: dict[str, Any], shop: list[dict[str, Any]], failing: dict[str, Any], tmp_path: Path,
) -> None:
    audit(objects, shop, at="2026-12-01T10:00:00Z")
    kyverno_only = make_deps(sources="kyverno")
    scan = scan_cluster(kyverno_only.kube, kyverno_only.settings, kyverno_only.routing, now=kyverno_only.clock.now())
    assert {f.violation.report.kind.source for f in scan.findings} == {Source.KYVERNO}
    both = make_deps()
    scan = scan_cluster(both.kube, both.settings, both.routing, now=both.clock.now())
    assert sorted(f.violation.report.kind.kind for f in scan.findings) == [KIND] * 3 + ["PolicyReport"]

    kube.deny(verb="list", group=GROUP, resource=PLURAL)
    scan = scan_cluster(both.kube, both.settings, both.routing, now=both.clock.now())
    assert scan.unread_policies == {KIND}
    assert [p for p in scan.problems if p.startswith(f"{KIND} constraints not read: RBAC forbids list")]

    with KubeStandin(REPORT_CRDS) as bare:
        deps = make_deps(kubeconfig=str(bare.write_kubeconfig(tmp_path / "bare")), sources="gatekeeper")
        scan = scan_cluster(deps.kube, deps.settings, deps.routing, now=deps.clock.now())
    assert scan.problems == [f"sources names gatekeeper, but the cluster serves no {GROUP}/{VERSION}: install OPA "
                             "Gatekeeper, or drop gatekeeper from sources"]


def test_a_gatekeeper_reference_round_trips_through_flow_parameters_and_old_ones_keep_their_meaning() -> None:
    ref = ViolationRef(source=Source.GATEKEEPER, report_kind=KIND, report_name=NAME, policy=KIND, rule=NAME,
                       resource_kind="Deployment", resource_namespace="shop", resource_name="b-web")
    again = ViolationRef.model_validate(ref.model_dump(mode="json"))
    assert again == ref and again.report.kind.api_version == CONSTRAINTS_API
    assert again.report.kind.plural == PLURAL and again.report.namespace is None
    assert ref.identity[-2:] == ("Deployment/shop/b-web", "default")
    old = ViolationRef.model_validate({"report_name": "r", "report_namespace": "default", "policy": "p", "rule": "x",
                                       "report_kind": "policyreports"})
    assert (old.source, old.report_kind, old.identity[-2:]) == (Source.KYVERNO, "PolicyReport", ("", "default"))
    with pytest.raises(ValueError, match="not a constraint kind"):
        ViolationRef(source=Source.GATEKEEPER, report_kind="k8s/../x", report_name=NAME, policy=KIND, rule=NAME)
