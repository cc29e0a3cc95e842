"""Fault suite, HTTP part: the real CLI (``run-once``, in-process) against both stand-ins while they
answer errors, throttle, time out or drop connections.

Every scenario loads several failing reports, injects faults, runs ``run-once`` until it exits 0 (at
most three cycles) and then asserts the END STATE, never the calls: for every violation exactly one
Testkube execution (executions grouped by their ``policyflow-key`` tag), its outcome recorded on the
report (annotation ``policyflow.io/<key>``), and one more cycle starting nothing. Each test prints one
row ``scenario | injected | violations | executions started | outcomes recorded | duplicates | lost``
and appends it to ``test-output/faults.tsv``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from policyflow.cli import main
from policyflow.domain.model import POLICY_REPORT
from policyflow.domain.reports import parse_report
from policyflow.standins.kube import KubeStandin
from policyflow.standins.testkube import TestkubeStandin
from tests.helpers import Policyflow, Result, deploy, load_report, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]

ANNOTATION_PREFIX = "policyflow.io/"
OUTCOMES = frozenset({"passed", "failed", "aborted", "canceled", "timedout"})
TSV = Path(__file__).resolve().parents[2] / "test-output" / "faults.tsv"
COLUMNS = ("scenario", "injected", "violations", "executions started", "outcomes recorded", "duplicates", "lost")
MAX_CYCLES = 3

# Paths as policyflow calls them (regexes searched in the request path).
TK_POST = r"/test-workflows/smoke-nova/executions$"  # start a run
TK_LOOKUP = r"/test-workflow-executions$"  # GET ?tagSelector=: the episode's run, before starting one
TK_POLL = r"/test-workflow-executions/[^/]+$"  # GET one execution
KUBE_LIST = r"/apis/wgpolicyk8s\.io/v1alpha2/policyreports$"  # cluster-wide LIST of PolicyReports
KUBE_REPORT = r"/apis/wgpolicyk8s\.io/v1alpha2/namespaces/[^/]+/policyreports/[^/]+$"  # GET/PATCH one
KUBE_EVENTS = r"/api/v1/namespaces/[^/]+/events$"  # POST an Event


# --- running the CLI -------------------------------------------------------------------------------


def converge(policyflow: Policyflow, max_cycles: int = MAX_CYCLES) -> list[Result]:
    """``run-once`` until it exits 0, at most ``max_cycles`` times; every cycle's result."""
    results = []
    for _ in range(max_cycles):
        results.append(policyflow("run-once"))
        if results[-1].code == 0:
            break
    return results


# --- the cluster -----------------------------------------------------------------------------------


def records_on(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    annotations = report["metadata"].get("annotations") or {}
    return {k.removeprefix(ANNOTATION_PREFIX): json.loads(v) for k, v in annotations.items()
            if k.startswith(ANNOTATION_PREFIX)}


def current(kube: KubeStandin, report: dict[str, Any]) -> dict[str, Any]:
    got = kube.get(report["apiVersion"], report["kind"], report["metadata"]["name"],
                   report["metadata"].get("namespace"))
    assert got is not None
    return got


@dataclass
class Violations:
    """The failing reports a scenario loaded, and the violation key each one carries."""

    reports: list[dict[str, Any]]
    keys: dict[str, str]  # violation key -> report name

    def __len__(self) -> int:
        return len(self.keys)


def load_violations(kube: KubeStandin, count: int) -> Violations:
    """Failing reports for ``count`` Deployments, as Kyverno writes them."""
    reports = [load_report(kube, resource=deploy(kube, f"app-{i}")) for i in range(count)]
    keys: dict[str, str] = {}
    for report in reports:
        for violation in parse_report(POLICY_REPORT, report).violations:
            keys[violation.key] = report["metadata"]["name"]
    assert len(keys) == count
    return Violations(reports, keys)


@pytest.fixture
def violations(kube: KubeStandin) -> Violations:
    """Three failing Deployments: enough for the chains to interleave around the faults."""
    return load_violations(kube, 3)


# --- faults ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected fault on one stand-in; how often it fired is read back from the request log."""

    target: str  # "testkube" | "kube"
    method: str
    path: str
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    after: bool = False  # testkube only: do the real operation, then answer the fault
    query: str | None = None  # kube only: regex on the raw query string
    body: dict[str, Any] | None = None

    def label(self) -> str:
        what = {0: "drop"}.get(self.status, str(self.status))
        extras = [f"Retry-After {v}" for k, v in self.headers.items() if k.lower() == "retry-after"]
        if self.delay:
            extras.append(f"delay {self.delay:g}s")
        if self.after:
            extras.append("after start")
        if self.query:
            extras.append(f"query~{self.query}")
        suffix = f" ({', '.join(extras)})" if extras else ""
        return f"{self.target} {self.method} {_short(self.path)} {what} x{self.times}{suffix}"


def _short(path: str) -> str:
    return {TK_POST: "run", TK_LOOKUP: "lookup", TK_POLL: "poll", KUBE_LIST: "list-reports",
            KUBE_REPORT: "report", KUBE_EVENTS: "events"}.get(path, path)


def inject(kube: KubeStandin, testkube: TestkubeStandin, *faults: Fault) -> list[Fault]:
    for fault in faults:
        if fault.target == "testkube":
            testkube.inject(method=fault.method, path=fault.path, status=fault.status, times=fault.times,
                            headers=fault.headers or None, delay=fault.delay, after=fault.after, body=fault.body)
        else:
            kube.inject(method=fault.method, path=fault.path, status=fault.status, times=fault.times,
                        headers=fault.headers or None, delay=fault.delay, query=fault.query, body=fault.body)
    return list(faults)


def _matching(fault: Fault, kube: KubeStandin, testkube: TestkubeStandin) -> int:
    if fault.target == "testkube":
        return sum(1 for r in testkube.requests
                   if fault.method in ("*", r.method) and re.search(fault.path, r.path))
    return sum(1 for r in list(kube.requests)
               if fault.method in ("*", r.method) and re.search(fault.path, r.path)
               and (fault.query is None or re.search(fault.query, r.query_string)))


def fired(faults: list[Fault], kube: KubeStandin, testkube: TestkubeStandin) -> list[int]:
    """How many requests each fault answered. Faults take matching requests first-in first-out, so
    of the requests matching a fault, the earlier faults on the same path took theirs first."""
    counts = []
    for i, fault in enumerate(faults):
        earlier = sum(f.times for f in faults[:i]
                      if (f.target, f.method, f.path, f.query) == (fault.target, fault.method, fault.path, fault.query))
        counts.append(min(max(_matching(fault, kube, testkube) - earlier, 0), fault.times))
    return counts


# --- the end state ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """The end state, counted from the stand-ins (never from what policyflow printed)."""

    violations: int
    started: int  # executions on Testkube
    recorded: int  # violations whose record holds an outcome of their one execution
    duplicates: int  # executions beyond the first per violation
    lost: int  # violations with no execution, or no outcome recorded
    per_key: dict[str, int]
    records: dict[str, dict[str, Any]]  # violation key -> its record now
    strays: int  # executions of no loaded violation


def tally(kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
          outcomes: frozenset[str] = OUTCOMES) -> Tally:
    executions = testkube.executions
    per_key = Counter(e.get("tags", {}).get("policyflow-key", "") for e in executions)
    by_key = {e["tags"]["policyflow-key"]: e for e in executions if e.get("tags", {}).get("policyflow-key")}
    records: dict[str, dict[str, Any]] = {}
    for report in violations.reports:
        records.update(records_on(current(kube, report)))
    recorded = sum(
        1 for key in violations.keys
        if key in records and records[key].get("status") in outcomes and key in by_key
        and records[key].get("execution") == by_key[key]["id"]
    )
    lost = sum(1 for key in violations.keys if per_key.get(key, 0) == 0
               or records.get(key, {}).get("status") not in outcomes)
    return Tally(
        violations=len(violations),
        started=len(executions),
        recorded=recorded,
        duplicates=sum(max(n - 1, 0) for key, n in per_key.items() if key in violations.keys),
        lost=lost,
        per_key=dict(per_key),
        records=records,
        strays=sum(n for key, n in per_key.items() if key not in violations.keys),
    )


def report_row(policyflow: Policyflow, scenario: str, injected: str, t: Tally) -> str:
    """Print the scenario's row and append it to test-output/faults.tsv."""
    values = (scenario, injected, t.violations, t.started, t.recorded, t.duplicates, t.lost)
    policyflow.show(" | ".join(str(v) for v in values))
    TSV.parent.mkdir(parents=True, exist_ok=True)
    new = not TSV.exists()
    with TSV.open("a", encoding="utf-8") as out:
        if new:
            out.write("\t".join(COLUMNS) + "\n")
        out.write("\t".join(str(v) for v in values) + "\n")
    return " | ".join(str(v) for v in values)


def injected_text(faults: list[Fault], kube: KubeStandin, testkube: TestkubeStandin) -> str:
    return "; ".join(f"{f.label()} fired {n}" for f, n in zip(faults, fired(faults, kube, testkube), strict=True))


def check_end_state(
    scenario: str,
    policyflow: Policyflow,
    kube: KubeStandin,
    testkube: TestkubeStandin,
    violations: Violations,
    faults: list[Fault],
    cycles: list[Result],
) -> Tally:
    """The promise, after the faults: one execution per violation, its outcome recorded, a further
    cycle starts nothing. Writes the scenario's row first, so a failing scenario still reports."""
    t = tally(kube, testkube, violations)
    codes = [c.code for c in cycles]
    run = f"{len(cycles)} cycle(s), exit {','.join(map(str, codes))}, {sum(c.seconds for c in cycles):.1f}s"
    row = report_row(policyflow, scenario, f"{injected_text(faults, kube, testkube)} [{run}]", t)
    assert codes[-1] == 0, f"{row}: did not converge in {MAX_CYCLES} cycles: exit {codes}\n{cycles[-1].err}"
    for fault, n in zip(faults, fired(faults, kube, testkube), strict=True):
        assert n == fault.times, f"{fault.label()} fired {n} of {fault.times} times: the scenario tested less"
    assert t.duplicates == 0 and t.strays == 0, f"{row}: executions per key {t.per_key}"
    assert t.lost == 0, f"{row}: records {json.dumps(t.records, indent=1)}"
    assert t.started == t.violations
    for key, record in t.records.items():
        assert record["status"] == "passed", (key, record)
        assert record["episode"] == 1, (key, record)
    # One more cycle: nothing new, nothing started.
    again = policyflow("run-once")
    assert again.code == 0, again.err
    assert "nothing new" in again.out, again.out
    assert len(testkube.executions) == t.started
    return t


# --- Testkube faults -------------------------------------------------------------------------------

def error_mix(target: str, method: str, path: str, times: int) -> list[Fault]:
    """503 and 429, each bare and with ``Retry-After: 1``, one after the other on the same path."""
    return [
        Fault(target, method, path, status, times=times, headers={"Retry-After": "1"} if retry_after else {})
        for status, retry_after in ((503, False), (429, False), (503, True), (429, True))
    ]


@pytest.mark.parametrize(("name", "method", "path", "times"), [
    pytest.param("run", "POST", TK_POST, 1, id="run"),
    pytest.param("lookup", "GET", TK_LOOKUP, 1, id="lookup"),
    pytest.param("poll", "GET", TK_POLL, 2, id="poll"),
])
def test_testkube_answers_503_and_429(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
    name: str, method: str, path: str, times: int,
) -> None:
    # Four faults in a row among three chains: one chain may take them all and still has a retry left.
    faults = inject(kube, testkube, *error_mix("testkube", method, path, times))
    cycles = converge(policyflow)
    check_end_state(f"testkube {name} 503/429 (+/- Retry-After)", policyflow, kube, testkube, violations, faults,
                    cycles)


def test_testkube_errors_beyond_the_retries_finish_in_a_later_cycle(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLICYFLOW_RETRIES", "1")
    # 2 attempts per trigger and 3 violations: 5 failures leave at least one chain unfinished.
    faults = inject(kube, testkube, Fault("testkube", "POST", TK_POST, 503, times=5))
    cycles = converge(policyflow)
    assert cycles[0].code == 3, "some chain could not finish in the first cycle"
    check_end_state("testkube run 503 beyond retries", policyflow, kube, testkube, violations, faults, cycles)


def test_testkube_answers_too_late_after_starting_the_run(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLICYFLOW_TESTKUBE_TIMEOUT", "1")
    faults = inject(kube, testkube, Fault("testkube", "POST", TK_POST, 200, times=2, delay=2.5, after=True))
    cycles = converge(policyflow)
    check_end_state("testkube run times out after start", policyflow, kube, testkube, violations, faults, cycles)


def test_testkube_drops_the_connection_after_starting_the_run(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
) -> None:
    # Every POST loses its answer after the run started: two dropped connections, then a 502 from,
    # say, a proxy in front of the agent.
    faults = inject(kube, testkube, Fault("testkube", "POST", TK_POST, 0, times=2, after=True),
                    Fault("testkube", "POST", TK_POST, 502, times=1, after=True))
    cycles = converge(policyflow)
    check_end_state("testkube answer lost after start", policyflow, kube, testkube, violations, faults, cycles)


# --- Kubernetes API faults -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "method", "path", "times"), [
    # detect-violations retries after a fixed 2 s (not POLICYFLOW_RETRY_DELAY): one of each
    pytest.param("list reports", "GET", KUBE_LIST, 1, id="list"),
    pytest.param("get report", "GET", KUBE_REPORT, 2, id="get"),
    pytest.param("patch report", "PATCH", KUBE_REPORT, 2, id="patch"),
    pytest.param("create event", "POST", KUBE_EVENTS, 2, id="event"),
])
def test_kubernetes_answers_500_and_429(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
    name: str, method: str, path: str, times: int,
) -> None:
    faults = inject(kube, testkube,
                    Fault("kube", method, path, 500, times=times),
                    Fault("kube", method, path, 429, times=times, headers={"Retry-After": "1"}))
    cycles = converge(policyflow)
    check_end_state(f"kube {name} 500/429", policyflow, kube, testkube, violations, faults, cycles)


def test_a_continue_token_expires_in_the_middle_of_the_list(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    violations = load_violations(kube, 4)
    monkeypatch.setenv("POLICYFLOW_PAGE_SIZE", "2")
    # The real 410 (reason Expired, the apiserver's "continue parameter is too old" message) on the
    # second page, as after an etcd compaction.
    faults = inject(kube, testkube, Fault("kube", "GET", KUBE_LIST, 410, times=1, query=r"continue="))
    cycles = converge(policyflow)
    check_end_state("kube list 410 on continue", policyflow, kube, testkube, violations, faults, cycles)


def test_the_annotation_patch_conflicts(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, violations: Violations,
) -> None:
    # The stand-in answers the real Conflict Status ("Operation cannot be fulfilled on ...").
    faults = inject(kube, testkube, Fault("kube", "PATCH", KUBE_REPORT, 409, times=4))
    cycles = converge(policyflow)
    check_end_state("kube patch 409 Conflict", policyflow, kube, testkube, violations, faults, cycles)


# --- a failure resolved while its test runs --------------------------------------------------------


class Background(threading.Thread):
    """``policyflow <args>`` in a thread (a cycle that is still running while the test acts)."""

    def __init__(self, *args: str) -> None:
        super().__init__(name="policyflow-background", daemon=True)
        self.args = list(args)
        self.code: int | None = None

    def run(self) -> None:
        self.code = main(self.args)


@pytest.fixture
def background(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Background]]:
    """Start ``policyflow`` in a thread; a test that fails midway leaves no chain waiting for long."""
    monkeypatch.setenv("POLICYFLOW_AWAIT_TIMEOUT", "30")
    threads: list[Background] = []

    def start(*args: str) -> Background:
        thread = Background(*args)
        thread.start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.join(timeout=60)


def test_a_failure_resolved_while_its_test_runs_keeps_its_outcome(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin,
    background: Callable[..., Background],
) -> None:
    violations = load_violations(kube, 3)
    testkube.set_outcome("smoke-nova", "never")
    cycle = background("run-once")
    wait_until("a test started for every violation", lambda: len(testkube.executions) == len(violations), timeout=60)
    flipped = copy.deepcopy(current(kube, violations.reports[0]))
    flipped["results"][0]["result"] = "pass"
    flipped["summary"].update({"fail": 0, "pass": 1})
    kube.replace(flipped)
    testkube.set_outcome("smoke-nova", "passed")
    cycle.join(timeout=60)
    assert not cycle.is_alive()
    gone_key = next(k for k, name in violations.keys.items() if name == flipped["metadata"]["name"])

    t = tally(kube, testkube, violations)
    row = report_row(policyflow, "resolved while running",
                     f"report result fail->pass while the test runs [1 cycle, exit {cycle.code}]", t)
    assert cycle.code == 0
    assert t.duplicates == 0 and t.lost == 0 and t.started == len(violations), row
    assert t.records[gone_key]["status"] == "passed", "the outcome of the test that ran is recorded"

    later = policyflow("run-once")
    assert later.code == 0, later.err
    after = tally(kube, testkube, violations, outcomes=OUTCOMES | {"resolved"})
    assert after.records[gone_key]["status"] == "resolved"
    assert after.records[gone_key]["execution"] == t.records[gone_key]["execution"]
    assert {k: r["status"] for k, r in after.records.items() if k != gone_key} == dict.fromkeys(
        (k for k in violations.keys if k != gone_key), "passed")
    assert after.started == len(violations) and after.duplicates == 0


def test_the_final_annotation_fails_beyond_the_retries_and_a_later_cycle_records_it(
    policyflow: Policyflow, kube: KubeStandin, testkube: TestkubeStandin, monkeypatch: pytest.MonkeyPatch,
    background: Callable[..., Background],
) -> None:
    """run-once exits 3 when annotate-report gives up; the README promises the next cycle resumes it."""
    monkeypatch.setenv("POLICYFLOW_RETRIES", "1")
    violations = load_violations(kube, 3)
    testkube.set_outcome("smoke-nova", "never")
    started = time.monotonic()
    cycle = background("run-once")

    def all_running() -> bool:
        records = tally(kube, testkube, violations).records
        return len(records) == len(violations) and all(
            r["status"] in ("queued", "running") and r.get("execution") for r in records.values())

    wait_until("every test to be running", all_running, timeout=60)
    # The chains now only poll; the next PATCHes are their final records: 2 attempts x 3 chains.
    faults = inject(kube, testkube, Fault("kube", "PATCH", KUBE_REPORT, 500, times=2 * len(violations)))
    testkube.set_outcome("smoke-nova", "passed")
    cycle.join(timeout=60)
    assert not cycle.is_alive()
    assert cycle.code is not None
    first = Result(cycle.code, *policyflow.take(), time.monotonic() - started)
    assert first.code == 3, "a chain whose outcome could not be recorded did not finish"
    cycles = [first, *converge(policyflow)]
    check_end_state("kube patch 500 beyond retries on the final record", policyflow, kube, testkube, violations,
                    faults, cycles)
