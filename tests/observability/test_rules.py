"""The alert rules: valid for Prometheus, and each alert proven by promtool unit tests that it
fires when it should and stays quiet when it should."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.observability.shipped import RULE_TESTS, RULES, alerts, rules, tool


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_promtool_unit_tests_pass() -> None:
    done = subprocess.run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """An alert added without promtool cases fails here, not silently in production."""
    cases = [case for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in group.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert set(alerts()) - fires == set(), "alerts without a case where they fire"
    assert set(alerts()) - quiet == set(), "alerts without a case where they stay quiet"
    assert (fires | quiet) - set(alerts()) == set(), "cases for alerts the rules do not have"


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for name, rule in alerts().items():
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert {"summary", "description"} <= set(annotations), name
        if not rule["expr"].startswith("absent("):  # absent() has no labels or value worth showing
            assert "{{" in annotations["summary"] + annotations["description"], f"{name}: no templated value"
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no 'for' duration"
