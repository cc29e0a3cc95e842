"""The Grafana dashboard: importable (inputs, data source variable, schema), every panel querying
through the chosen data source, and PromQL that follows the rules (rate over counters, quantiles
summed by le, template variables applied)."""

from __future__ import annotations

import re

import pytest

from tests.observability.shipped import (
    alerts,
    concrete,
    dashboard,
    label_values,
    panel_expressions,
    variable_queries,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_it_imports_with_a_prometheus_input_and_a_data_source_variable() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"] and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    for name in ("cluster", "policy", "namespace"):
        assert variables[name]["includeAll"] and variables[name]["multi"], name
        assert variables[name]["allValue"] == ".*", f"{name}: All as one regex, not a list of every value"


def test_every_panel_queries_the_chosen_data_source() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    for name, var in {v["name"]: v for v in dashboard()["templating"]["list"]}.items():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, name


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells


def test_the_asked_for_panels_are_there() -> None:
    metrics = " ".join(panel_expressions().values())
    for name in ("policyflow_violations_open", "policyflow_violation_resolve_seconds_bucket",
                 "policyflow_violations_reopened_total", "policyflow_violations_resolved_total",
                 "policyflow_outcomes_total", "policyflow_violation_flip_rate", "policyflow_trigger_lag_seconds_bucket",
                 "policyflow_poll_duration_seconds_bucket", "policyflow_triggers_failed_total",
                 "policyflow_last_successful_poll_timestamp_seconds", "policyflow_cluster_up"):
        assert name in metrics, name


def all_promql() -> dict[str, str]:
    return {**{f"panel {k}": v for k, v in panel_expressions().items()},
            **{f"alert {k}": v["expr"] for k, v in alerts().items()}}


@pytest.mark.parametrize(("where", "expr"), all_promql().items())
def test_rates_are_over_counters_and_quantiles_sum_by_le(where: str, expr: str) -> None:
    for inner in re.findall(r"\b(?:rate|increase|irate)\((\w+)", expr):
        assert inner.endswith(("_total", "_bucket", "_sum", "_count")), f"{where}: rate over a gauge {inner}"
    for quantile in re.findall(r"histogram_quantile\([^,]+,\s*(\w+ by \([^)]*\))", expr):
        assert "le" in re.findall(r"\w+", quantile.split("(", 1)[1]), f"{where}: {quantile}"
    assert expr.count("histogram_quantile") == len(re.findall(r"histogram_quantile\([^,]+,\s*sum by", expr)), where


@pytest.mark.parametrize(("where", "expr"), panel_expressions().items())
def test_per_violation_panels_follow_the_cluster_policy_and_namespace_variables(where: str, expr: str) -> None:
    scoped = ("policyflow_violations_open", "policyflow_violation_", "policyflow_outcomes_total",
              "policyflow_violations_re")
    for selector in re.findall(r"(policyflow_\w+)(\{[^}]*\})?", expr):
        if selector[0].startswith(scoped):
            assert all(f'{name}=~"${name}"' in selector[1] for name in ("cluster", "policy", "namespace")), \
                f"{where}: {selector[0]} ignores the dashboard's variables"


def test_variables_become_concrete_promql() -> None:
    expr = 'sum(rate(x_total{policy=~"$policy", namespace=~"${namespace}"}[$__rate_interval]))'
    assert concrete(expr) == 'sum(rate(x_total{policy=~".*", namespace=~".*"}[1m]))'
    assert concrete(expr, {"policy": "a.b-c"}) == 'sum(rate(x_total{policy=~"a\\\\.b-c", namespace=~".*"}[1m]))'
    with pytest.raises(AssertionError, match="not a template variable"):
        concrete("up{job=~'$nope'}")


def test_variable_queries_are_label_values_of_a_policyflow_metric() -> None:
    queries = variable_queries()
    assert {"cluster", "policy", "namespace"} <= set(queries)
    for name, query in queries.items():
        selector, label = label_values(query)
        assert selector.startswith("policyflow_"), name
        assert label == name, name
