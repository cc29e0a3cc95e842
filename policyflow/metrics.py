"""Prometheus metrics, served by ``policyflow serve`` (``--metrics-port``, default 9464).

Names follow the Prometheus conventions: counters end in ``_total``, durations are ``_seconds``.
Read them with ``curl -s localhost:9464/metrics | grep ^policyflow_``. Labels stay bounded: policy,
rule, namespace, workflow, cluster (and status, kind, age, reused); never a resource name or a violation key,
which would make one series per violation. deployments/observability/ holds the dashboard and the
alerts built on these names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

#: The labels that say where a violation belongs, on every per-violation metric.
#: ``cluster`` is there with one cluster too (``default``): the same resource in two clusters is
#: two violations, and a dashboard or alert must not add them up as one.
SCOPE_LABELS = ("policy", "rule", "namespace", "workflow", "cluster")

VIOLATIONS_DETECTED = Counter(
    "policyflow_violations_detected_total", "New violation episodes found by a detection cycle"
)
VIOLATIONS_ROUTED = Counter("policyflow_violations_routed_total", "New violations that a route sent to a workflow")
VIOLATIONS_UNROUTED = Counter("policyflow_violations_unrouted_total", "New violations that no route matched")
TRIGGERS_STARTED = Counter(
    "policyflow_triggers_started_total", "Testkube executions started (or found again) for an episode", ["reused"]
)
TRIGGERS_FAILED = Counter(
    "policyflow_triggers_failed_total", "Triggers that failed after their retries", ["kind"]
)
OUTCOMES = Counter("policyflow_outcomes_total", "Test outcomes recorded on reports", ["status", *SCOPE_LABELS])
DETECTION_TO_RESULT = Histogram(
    "policyflow_detection_to_result_seconds",
    "Time from detecting a violation to recording its test's outcome",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
POLL_DURATION = Histogram(
    "policyflow_poll_duration_seconds",
    "Duration of one detection cycle (listing and diffing every report)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Gauges under PROMETHEUS_MULTIPROC_DIR: served flow runs are short-lived subprocesses, so a gauge's
# value must outlive the process that set it ("live*" modes drop a dead process's samples, "all"
# adds a pid label, one series per run). "mostrecent" keeps, per series, the value written last by
# any process: the latest computation wins, whichever run made it.
VIOLATIONS_OPEN = Gauge(
    "policyflow_violations_open",
    "Violations open now, by how long they have been open (age: lt1h, lt1d, lt7d, gte7d; each violation "
    "in exactly one bucket, so sum without (age) is the number open)",
    [*SCOPE_LABELS, "age"], multiprocess_mode="mostrecent",
)
OPEN_MAX_AGE = Gauge(
    "policyflow_violation_open_max_age_seconds", "Age of the oldest open violation (0: none open)",
    list(SCOPE_LABELS), multiprocess_mode="mostrecent",
)
FLIP_RATE = Gauge(
    "policyflow_violation_flip_rate",
    "Flakiness from history: pass/fail transitions / (episodes - 1) over the last episodes (0: stable)",
    list(SCOPE_LABELS), multiprocess_mode="mostrecent",
)
# "max": a timestamp only moves forward, so the largest one written by any process is the latest
# success, even when two cycles finish out of order. Unlabelled, it is exported as 0 from the start
# (every process creates it); the alerts read 0 as "no cycle completed yet".
LAST_SUCCESSFUL_POLL = Gauge(
    "policyflow_last_successful_poll_timestamp_seconds",
    "Unix time at which the last detection cycle completed (0: none since the process started)",
    multiprocess_mode="max",
)
RESOLVE_SECONDS = Histogram(
    "policyflow_violation_resolve_seconds", "Time from detecting a violation to seeing it resolved",
    list(SCOPE_LABELS),
    buckets=(60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 3 * 86400,
             7 * 86400, 14 * 86400, 30 * 86400),
)
VIOLATIONS_RESOLVED = Counter(
    "policyflow_violations_resolved_total", "Violations seen resolved", list(SCOPE_LABELS)
)
VIOLATIONS_REOPENED = Counter(
    "policyflow_violations_reopened_total", "Resolved violations that failed again (a new episode)", list(SCOPE_LABELS)
)
TRIGGER_LAG = Histogram(
    "policyflow_trigger_lag_seconds", "Time from detecting a violation to starting its test", ["workflow"],
    buckets=(0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600),
)

#: Upper bounds (exclusive) of the ``age`` buckets of ``policyflow_violations_open``; older is ``gte7d``.
AGE_BUCKETS = (("lt1h", 3600.0), ("lt1d", 86400.0), ("lt7d", 7 * 86400.0))
OLDEST_AGE = "gte7d"


@dataclass(frozen=True)
class Scope:
    """Where a violation belongs: the label values of the per-violation metrics."""

    policy: str
    rule: str
    namespace: str
    workflow: str
    cluster: str

    def labels(self) -> dict[str, str]:
        return dict(zip(SCOPE_LABELS, _values(self), strict=True))


@dataclass(frozen=True)
class OpenViolation:
    """One violation open now, and for how long (seconds since it was detected)."""

    scope: Scope
    age_seconds: float


def age_bucket(age_seconds: float) -> str:
    """The ``age`` label of a violation open for ``age_seconds``."""
    for name, below in AGE_BUCKETS:
        if age_seconds < below:
            return name
    return OLDEST_AGE


def set_open_violations(rows: Iterable[OpenViolation]) -> None:
    """Replace ``policyflow_violations_open`` and ``policyflow_violation_open_max_age_seconds`` with
    what is open now. A scope seen before with nothing open now drops to 0 rather than disappearing:
    under PROMETHEUS_MULTIPROC_DIR a series cannot be removed (a dead run's file keeps it), and 0 is
    the true count, so sums and "open > 0" alerts stay right."""
    counts: dict[tuple[str, ...], int] = {}
    oldest: dict[tuple[str, ...], float] = {}
    for row in rows:
        scope = _values(row.scope)
        for name in (*(b for b, _ in AGE_BUCKETS), OLDEST_AGE):
            counts.setdefault((*scope, name), 0)
        counts[(*scope, age_bucket(row.age_seconds))] += 1
        oldest[scope] = max(oldest.get(scope, 0.0), row.age_seconds)
    _replace(VIOLATIONS_OPEN, (*SCOPE_LABELS, "age"), {key: float(n) for key, n in counts.items()})
    _replace(OPEN_MAX_AGE, SCOPE_LABELS, oldest)


def set_flip_rates(rates: Mapping[Scope, float]) -> None:
    """Replace ``policyflow_violation_flip_rate`` with ``rates``; a scope no longer in them reads 0
    (no transitions known), for the same reason as in :func:`set_open_violations`."""
    _replace(FLIP_RATE, SCOPE_LABELS, {_values(scope): rate for scope, rate in rates.items()})


def observe_resolved(scope: Scope, seconds_open: float) -> None:
    """A violation of ``scope`` resolved after ``seconds_open``."""
    VIOLATIONS_RESOLVED.labels(**scope.labels()).inc()
    RESOLVE_SECONDS.labels(**scope.labels()).observe(seconds_open)


def count_reopened(scope: Scope) -> None:
    """A resolved violation of ``scope`` failed again."""
    VIOLATIONS_REOPENED.labels(**scope.labels()).inc()


def count_outcome(scope: Scope, status: str) -> None:
    """A test outcome (``status``) recorded for a violation of ``scope``."""
    OUTCOMES.labels(status=status, **scope.labels()).inc()


def observe_trigger_lag(workflow: str, seconds: float) -> None:
    """A test of ``workflow`` started ``seconds`` after its violation was detected."""
    TRIGGER_LAG.labels(workflow=workflow).observe(seconds)


def mark_poll_succeeded(at: float | None = None) -> None:
    """A detection cycle completed (at unix time ``at``, default now)."""
    LAST_SUCCESSFUL_POLL.set(time.time() if at is None else at)


def _values(scope: Scope) -> tuple[str, ...]:
    return (scope.policy, scope.rule, scope.namespace, scope.workflow, scope.cluster)


def _replace(gauge: Gauge, labelnames: tuple[str, ...], values: Mapping[tuple[str, ...], float]) -> None:
    """Set ``gauge``'s series to ``values`` (label values in the order of ``labelnames``, the gauge's),
    and every other series it has, in this process or (under PROMETHEUS_MULTIPROC_DIR) any other, to 0."""
    for key in _known_series(gauge, labelnames) - values.keys():
        gauge.labels(*key).set(0)
    for key, value in values.items():
        gauge.labels(*key).set(value)


def _known_series(gauge: Gauge, labelnames: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The label values of every series of ``gauge``: this process's, and every process's files."""
    metrics = list(gauge.collect())
    (name,) = {m.name for m in metrics}
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        metrics += [m for m in MultiProcessCollector(None, directory).collect()  # type: ignore[no-untyped-call]
                    if m.name == name]
    return {tuple(s.labels[n] for n in labelnames) for m in metrics for s in m.samples
            if all(n in s.labels for n in labelnames)}


CLUSTER_UP = Gauge(
    "policyflow_cluster_up", "1 when the cluster's last detection cycle could read it, 0 when it was down",
    ["cluster"], multiprocess_mode="mostrecent",
)


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other pods
    """Expose ``/metrics`` on ``address:port`` from a background thread.

    Served flow runs execute in subprocesses of ``policyflow serve``; with ``PROMETHEUS_MULTIPROC_DIR``
    set (serve sets it before any metric exists) each process writes its samples there and this
    endpoint adds them up.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=address, registry=registry)
    else:
        start_http_server(port, addr=address)
