"""Every deployment's stored parameters fit its flow's signature, for the deployments ``policyflow
serve`` serves and for both ``prefect.yaml`` files. (A mismatch makes Prefect refuse every run of the
deployment: retry-failed-triggers' stored batch_deployment once did, and nothing saw it.)"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.specs import ROOT

PREFECT_FILES = [ROOT / "prefect.yaml", ROOT / "deployments" / "work-pool" / "prefect.yaml"]
#: What the UI's Run form asks for where a deployment stores nothing (the chains' violations).
VIOLATION = {"report_name": "cpu-report", "report_namespace": "default", "policy": "require-resources",
             "rule": "require-resources-in-deployment"}
GIVEN_AT_RUN = {"violation": VIOLATION, "violations": [VIOLATION]}


def served() -> dict[str, tuple[str, dict[str, Any]]]:
    from flows.serving import deployments

    return {d.name: (str(d.entrypoint), dict(d.parameters)) for d in deployments(interval=60, retry_interval=600)}


def declared(path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {d["name"]: (str(ROOT / d["entrypoint"]), dict(d.get("parameters") or {})) for d in data["deployments"]}


def load(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)


@pytest.mark.parametrize("source", ["serve", *(str(p.relative_to(ROOT)) for p in PREFECT_FILES)])
def test_stored_parameters_fit_the_flow(source: str) -> None:
    deployments = served() if source == "serve" else declared(ROOT / source)
    assert set(deployments) == {"policy-watch", "handle-violation", "handle-violations", "retry-failed-triggers"}
    for name, (entrypoint, parameters) in deployments.items():
        flow = load(entrypoint)
        assert flow.name == name
        required = {n for n, p in inspect.signature(flow.fn).parameters.items() if p.default is p.empty}
        assert required <= set(parameters) | set(GIVEN_AT_RUN), (name, required)
        given = {n: GIVEN_AT_RUN[n] for n in required - set(parameters)}
        flow.validate_parameters({**given, **parameters})  # raises on an unknown or mistyped parameter


def test_the_served_and_declared_deployments_store_the_same_parameters() -> None:
    expected = {name: parameters for name, (_, parameters) in served().items()}
    for path in PREFECT_FILES:
        assert {name: parameters for name, (_, parameters) in declared(path).items()} == expected, path


def test_a_stored_parameter_the_flow_lacks_is_caught() -> None:
    """The check itself can fail: the parameter retry-failed-triggers once lacked."""
    from prefect.exceptions import SignatureMismatchError

    _, parameters = served()["retry-failed-triggers"]
    with pytest.raises(SignatureMismatchError):
        load(served()["retry-failed-triggers"][0]).validate_parameters({**parameters, "no_such_parameter": 1})


def test_a_stored_violation_is_checked_against_its_model() -> None:
    from prefect.exceptions import ParameterTypeError

    flow = load(served()["handle-violation"][0])
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"violation": {**VIOLATION, "report_kind": "NoSuchReport"}})
