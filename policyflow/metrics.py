"""Prometheus metrics, served by ``policyflow serve`` (``--metrics-port``, default 9464).

Names follow the Prometheus conventions: counters end in ``_total``, durations are ``_seconds``.
Read them with ``curl -s localhost:9464/metrics | grep ^policyflow_``.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

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
OUTCOMES = Counter("policyflow_outcomes_total", "Test outcomes recorded on reports", ["status"])
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
