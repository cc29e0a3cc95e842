"""The metric helpers the history and health code set: age buckets, whole-family replacement, and
gauges that keep the right value when served flow runs (separate, short-lived processes) set them
under PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector

from policyflow import metrics
from policyflow.metrics import OpenViolation, Scope
from tests.specs import ROOT


@pytest.mark.parametrize(("age", "bucket"), [(0, "lt1h"), (3599.9, "lt1h"), (3600, "lt1d"), (86399, "lt1d"),
                                             (86400, "lt7d"), (604799, "lt7d"), (604800, "gte7d"),
                                             (10**8, "gte7d")])
def test_each_age_falls_in_exactly_one_bucket(age: float, bucket: str) -> None:
    assert metrics.age_bucket(age) == bucket


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_in_one_process_a_scope_that_closed_drops_to_zero_and_buckets_add_up() -> None:
    stays = Scope("p-inproc", "r", "ns-a", "wf", "default")
    closes = Scope("p-inproc", "r", "ns-b", "wf", "staging")
    metrics.set_open_violations([OpenViolation(stays, 10), OpenViolation(stays, 7200), OpenViolation(stays, 7300),
                                 OpenViolation(closes, 700000)])
    assert _value("policyflow_violations_open", **stays.labels(), age="lt1d") == 2
    assert _value("policyflow_violations_open", **stays.labels(), age="gte7d") == 0, "every bucket is there"
    assert _value("policyflow_violation_open_max_age_seconds", **closes.labels()) == 700000
    metrics.set_open_violations([OpenViolation(stays, 20)])
    assert _value("policyflow_violations_open", **stays.labels(), age="lt1h") == 1
    assert _value("policyflow_violations_open", **stays.labels(), age="lt1d") == 0
    assert _value("policyflow_violations_open", **closes.labels(), age="gte7d") == 0
    assert _value("policyflow_violation_open_max_age_seconds", **stays.labels()) == 20
    assert _value("policyflow_violation_open_max_age_seconds", **closes.labels()) == 0

    metrics.set_flip_rates({stays: 0.5, closes: 1.0})
    metrics.set_flip_rates({stays: 0.25})
    assert _value("policyflow_violation_flip_rate", **stays.labels()) == 0.25
    assert _value("policyflow_violation_flip_rate", **closes.labels()) == 0


def test_counters_and_histograms_carry_the_scope() -> None:
    scope = Scope("p-count", "r", "ns", "wf", "staging")
    metrics.observe_resolved(scope, 90)
    metrics.count_reopened(scope)
    metrics.count_outcome(scope, "failed")
    metrics.observe_trigger_lag("wf-count", 3)
    assert _value("policyflow_violations_resolved_total", **scope.labels()) == 1
    assert _value("policyflow_violation_resolve_seconds_bucket", **scope.labels(), le="300.0") == 1
    assert _value("policyflow_violation_resolve_seconds_bucket", **scope.labels(), le="60.0") == 0
    assert _value("policyflow_violations_reopened_total", **scope.labels()) == 1
    assert _value("policyflow_outcomes_total", **scope.labels(), status="failed") == 1
    assert _value("policyflow_trigger_lag_seconds_count", workflow="wf-count") == 1


RUN = textwrap.dedent("""
    import json, sys
    from policyflow import metrics
    from policyflow.metrics import OpenViolation, Scope
    step = json.loads(sys.argv[1])
    metrics.set_open_violations([OpenViolation(Scope(*s), a) for s, a in step["open"]])
    metrics.set_flip_rates({Scope(*s): r for s, r in step["flips"]})
    metrics.mark_poll_succeeded(step["polled"])
""")


def _run_in_a_process_of_its_own(directory: Path, step: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", RUN, step], env=env, check=True, timeout=60, cwd=ROOT)


def test_across_processes_the_latest_run_wins_and_series_it_did_not_see_drop_to_zero(tmp_path: Path) -> None:
    """Two served runs, one after the other, both exited: what ``policyflow serve`` then exposes."""
    a, b = ["p", "r", "ns-a", "wf", "default"], ["p", "r", "ns-b", "wf", "default"]
    _run_in_a_process_of_its_own(tmp_path, f'{{"open": [[{a}, 30], [{a}, 7200], [{b}, 900000]], '
                                           f'"flips": [[{a}, 0.5], [{b}, 1.0]], "polled": 2000}}'.replace("'", '"'))
    _run_in_a_process_of_its_own(tmp_path, f'{{"open": [[{a}, 40]], "flips": [[{a}, 0.25]], '
                                           f'"polled": 1000}}'.replace("'", '"'))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in MultiProcessCollector(None, str(tmp_path)).collect()  # type: ignore[no-untyped-call]
               for s in family.samples}

    def value(name: str, scope: list[str], **extra: str) -> float:
        labels = dict(zip(("policy", "rule", "namespace", "workflow", "cluster"), scope, strict=True)) | extra
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("policyflow_violations_open", a, age="lt1h") == 1
    assert value("policyflow_violations_open", a, age="lt1d") == 0, "the second run's count, not the first's"
    assert value("policyflow_violations_open", b, age="gte7d") == 0, "closed: 0, though only the first run saw it"
    assert value("policyflow_violation_open_max_age_seconds", a) == 40
    assert value("policyflow_violation_open_max_age_seconds", b) == 0
    assert value("policyflow_violation_flip_rate", a) == 0.25
    assert value("policyflow_violation_flip_rate", b) == 0
    assert samples[("policyflow_last_successful_poll_timestamp_seconds", ())] == 2000, \
        "the latest success, even when it was written first"
    assert not any(dict(labels).get("pid") for _, labels in samples), "one series per scope, not per process"
