"""Every PromQL expression shipped in deployments/observability, run by a real Prometheus that
scrapes a real ``policyflow serve`` (against the stand-ins and the session's Prefect API) which has
handled violations: a test passed, a test failed, a trigger failed. Each dashboard query must parse
and return data; each alert must load, evaluate without error, and select series that exist.

One serve and one Prometheus per module; everything waits on an API, never on a fixed sleep."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from policyflow.standins.kube import KubeStandin
from policyflow.standins.scenario import deployment, report_for
from policyflow.standins.testkube import TestkubeStandin
from tests.e2e.test_serve import poll_now, serve, stop
from tests.helpers import answers, standin_env, stop_process, wait_until
from tests.observability.shipped import (
    RULES,
    alerts,
    concrete,
    label_values,
    panel_expressions,
    tool,
    variable_queries,
)
from tests.specs import REPORT_CRDS, TESTKUBE_OPENAPI, example

pytestmark = [pytest.mark.e2e]

#: Metrics defined in policyflow/metrics.py that nothing sets yet: the history and health code
#: (issue 10, part 3) will. An expression that reads one must come back empty until then; once it
#: has data, this test fails and asks for the name to be taken off the list.
PENDING_WIRING: frozenset[str] = frozenset()
#: The served violations' labels, for the dashboard's variables set to one value each.
CHOSEN = {"cluster": "default", "policy": "require-resources", "namespace": "default", "workflow": "smoke-nova"}
SELECTOR = re.compile(r"\b(policyflow_\w+)(\{[^}]*\})?")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sample(url: str, name: str, **labels: str) -> bool:
    """Whether the metrics page at ``url`` has a sample ``name`` with (at least) ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return False
    return any(s.name == name and labels.items() <= s.labels.items()
               for family in text_string_to_metric_families(body) for s in family.samples)


def _violation(kube: KubeStandin, name: str, resource: dict[str, Any] | None = None,
               namespace: str = "default") -> dict[str, Any]:
    """A failing report for Deployment ``name`` (created unless given): Kyverno's, as it writes it."""
    resource = resource if resource is not None else kube.create(deployment(name, namespace))
    return kube.create(report_for(example("policyreport-fail.yaml"), resource))


@pytest.fixture(scope="module")
def target(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``policyflow serve`` that handled three violations: one whose test passed, that was fixed
    (Kyverno deleted its report) and came back with a failing test (resolved, reopened, a flip); one
    whose test failed; one whose trigger failed (its route names a workflow Testkube does not have):
    its /metrics address. Three polls."""
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "metrics").mkdir()
    with KubeStandin(REPORT_CRDS) as kube, \
            TestkubeStandin(openapi_spec=TESTKUBE_OPENAPI, workflows=["smoke-nova"]) as testkube:
        routes = tmp / "routes.yaml"
        routes.write_text("routes:\n  - match: {namespaces: [gone]}\n    workflow: smoke-gone\n")
        env = {**standin_env(kube.write_kubeconfig(tmp / "kubeconfig"), testkube.url),
               "POLICYFLOW_CONFIG": str(routes)}
        port = _free_port()
        log = tmp / "serve.log"
        process = serve(env, log, interval=3600, metrics_port=port, PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"))
        metrics = f"http://127.0.0.1:{port}/metrics"
        try:
            fixed = _violation(kube, "observed-passes")
            poll_now()
            wait_until("a passed outcome on /metrics", lambda: _sample(
                metrics, "policyflow_outcomes_total", status="passed", **CHOSEN), timeout=180, every=0.5)
            kube.delete(fixed["apiVersion"], fixed["kind"], fixed["metadata"]["name"], "default")
            poll_now()
            wait_until("a resolved violation on /metrics", lambda: _sample(
                metrics, "policyflow_violations_resolved_total", **CHOSEN), timeout=180, every=0.5)
            testkube.set_outcome("smoke-nova", "failed")
            resource = kube.get("apps/v1", "Deployment", "observed-passes", "default")
            assert resource is not None
            _violation(kube, "observed-passes", resource)
            _violation(kube, "observed-test-fails")
            kube.ensure_namespace("gone")
            _violation(kube, "observed-trigger-fails", namespace="gone")
            poll_now()
            wait_until("a reopened violation on /metrics", lambda: _sample(
                metrics, "policyflow_violations_reopened_total", **CHOSEN), timeout=180, every=0.5)
            wait_until("a failed outcome on /metrics", lambda: _sample(
                metrics, "policyflow_outcomes_total", status="failed", **CHOSEN), timeout=180, every=0.5)
            wait_until("a failed trigger on /metrics", lambda: _sample(
                metrics, "policyflow_triggers_failed_total"), timeout=180, every=0.5)
            yield f"127.0.0.1:{port}"
        finally:
            stop(process, log)


@pytest.fixture(scope="module")
def prometheus(target: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus on loopback scraping ``target`` every second with the shipped rules loaded: its
    URL, once it has scraped the target a few times."""
    binary = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "policyflow", "static_configs": [{"targets": [target]}]}],
    }))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ},
        )

    try:
        wait_until("Prometheus to be ready", answers(process, f"{url}/-/ready", tmp / "prometheus.log", "prometheus"),
                   timeout=60, every=0.2)
        wait_until("the target to be up", lambda: [t for t in _get(url, "targets")["activeTargets"]
                                                   if t["health"] == "up"], timeout=60, every=0.2)
        # rate() needs two samples in its window, increase() over a window more: a few scrapes.
        wait_until("five scrapes", lambda: _query(url, 'count_over_time(up{job="policyflow"}[1m]) >= 5'),
                   timeout=60, every=0.5)
        yield url
    finally:
        print((tmp / "prometheus.log").read_text()[-3000:])
        stop_process(process)


def _get(url: str, what: str, **params: Any) -> Any:
    answer = httpx.get(f"{url}/api/v1/{what}", params=params, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    """The instant query's result; fails with Prometheus' own error when it does not parse."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}\n{answer.get('errorType')}: {answer.get('error')}"
    result = answer["data"]["result"]
    assert isinstance(result, list)
    return result


def _pending(expr: str) -> set[str]:
    """The metrics of PENDING_WIRING that ``expr`` reads."""
    return {name for name in PENDING_WIRING if name in expr}


@pytest.mark.parametrize("variables", [None, CHOSEN], ids=["all", "one-value"])
@pytest.mark.parametrize(("panel", "expr"), panel_expressions().items())
def test_every_dashboard_query_returns_data(prometheus: str, panel: str, expr: str,
                                            variables: dict[str, str] | None) -> None:
    sent = concrete(expr, variables)
    result = _query(prometheus, sent)
    pending = _pending(expr)
    if pending:
        assert result == [], f"{panel}: {sorted(pending)} now have data: take them off PENDING_WIRING"
    else:
        assert result, f"{panel}: no data for {sent}"


@pytest.mark.parametrize(("name", "query"), variable_queries().items())
def test_every_template_variable_finds_values(prometheus: str, name: str, query: str) -> None:
    selector, label = label_values(query)
    values = _get(prometheus, f"label/{label}/values", **{"match[]": concrete(selector)})
    assert CHOSEN[name] in values, f"{name}: {values}"


@pytest.mark.parametrize(("alert", "expr"), [(name, rule["expr"]) for name, rule in alerts().items()])
def test_every_alert_evaluates_over_series_that_exist(prometheus: str, alert: str, expr: str) -> None:
    """The alert's expression parses; every series it selects exists (a typo in a metric or label
    name would leave it quietly never firing) and has been written to. Not whether it fires:
    promtool's tests say that."""
    _query(prometheus, expr)
    for metric, matchers in SELECTOR.findall(expr):
        selector = metric + (matchers or "")
        found = _query(prometheus, f"count({selector} != 0)")  # written to, not just created at 0
        if _pending(metric):
            assert found == [], f"{alert}: {metric} now has data: take it off PENDING_WIRING"
        else:
            assert found, f"{alert}: nothing matches {selector}"


def test_prometheus_loads_and_evaluates_every_rule(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        loaded = [rule for group in _get(prometheus, "rules")["groups"] for rule in group["rules"]]
        return loaded if loaded and all(r["lastEvaluation"] > "2000" for r in loaded) else None

    loaded = wait_until("every rule to be evaluated", evaluated, timeout=30, every=0.5)
    assert {r["name"] for r in loaded} == set(alerts())
    assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []
