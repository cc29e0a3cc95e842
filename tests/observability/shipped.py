"""What deployments/observability ships, read for the tests: the alert rules, the promtool tests,
the dashboard's PromQL and template variable queries, and Grafana's variables made concrete."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import pytest
import yaml

from tests.specs import ROOT

HERE = ROOT / "deployments" / "observability"
RULES = HERE / "prometheus-rules.yaml"
RULE_TESTS = HERE / "prometheus-rules.test.yaml"
DASHBOARD = HERE / "grafana-dashboard.json"


def rules() -> list[dict[str, Any]]:
    """Every rule of every group."""
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panel_expressions() -> dict[str, str]:
    """Every target's PromQL, named ``panel title / refId``."""
    return {f"{panel['title']} / {target['refId']}": target["expr"]
            for panel in dashboard()["panels"] for target in panel.get("targets", [])}


def variable_queries() -> dict[str, str]:
    """The query of every template variable that asks the data source (``label_values(...)``)."""
    return {var["name"]: var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            for var in dashboard()["templating"]["list"] if var["type"] == "query"}


LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")


def label_values(query: str) -> tuple[str, str]:
    """``label_values(selector, label)``: the selector and the label."""
    found = LABEL_VALUES.match(query.strip())
    assert found, f"not a label_values(selector, label) query: {query}"
    return found["match"].strip(), found["label"]


#: What Grafana puts in place of its own variables: windows that hold several samples at the
#: tests' 1 s scrape interval; the template variables as "All" sends them (allValue ".*").
GRAFANA = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
ALL = ".*"


def concrete(expr: str, variables: dict[str, str] | None = None) -> str:
    """``expr`` as Grafana sends it: its built-in variables and template variables (``$x``,
    ``${x}``, ``[[x]]``) replaced, the template variables with ``variables`` or All. Fails on a
    variable it does not know, so no ``$`` reaches Prometheus."""
    for name, value in GRAFANA.items():
        expr = expr.replace(name, value)
    declared = {v["name"] for v in dashboard()["templating"]["list"]}

    def value(found: re.Match[str]) -> str:
        name = found["a"] or found["b"] or found["c"]
        assert name in declared, f"{name} is not a template variable of the dashboard"
        return _regex_escape(variables[name]) if variables and name in variables else ALL

    expr = re.sub(r"\$\{(?P<a>\w+)\}|\$(?P<b>\w+)|\[\[(?P<c>\w+)\]\]", value, expr)
    assert "$" not in expr, expr
    return expr


def _regex_escape(value: str) -> str:
    """``value`` as a literal inside a PromQL regex string, escaped as Grafana does it: regex
    metacharacters get a backslash, itself escaped in the string (Python's re.escape would also
    escape "-", which PromQL strings reject)."""
    return re.sub(r"[\\^$.|?*+()\[\]{}]", lambda m: "\\\\" + m[0], value)


def tool(name: str) -> str:
    """The path of ``name`` (promtool, prometheus): skipped on a workstation without it, a failure
    under CI, which installs Debian's prometheus package (.ci/run)."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{name} not found; CI must provide it (.ci/run installs Debian's prometheus package)")
    pytest.skip(f"{name} not found (apt-get install prometheus); CI runs this test")
