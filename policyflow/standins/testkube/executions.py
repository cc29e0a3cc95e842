"""Workflows and their executions: creation, the polled state machine, listing, aborting.

Executions advance ``queued -> running -> <outcome>`` on each GET of that execution (not on a
clock), so tests are deterministic and never sleep. Documents follow the agent's JSON: Go zero times
for unset times, Go duration strings, the execution named ``<workflow>-<number>``.
"""

from __future__ import annotations

import copy
import itertools
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from policyflow.standins.testkube.gotypes import ZERO_TIME, go_duration, go_time, now, object_id
from policyflow.standins.testkube.scripts import Plan, Script, finish, never_ran, smoke_script
from policyflow.standins.testkube.selectors import matches_label_selector, matches_tag_selector

TERMINAL_STATUSES = frozenset({"passed", "failed", "aborted", "canceled"})
OUTCOMES = frozenset(TERMINAL_STATUSES | {"never"})
"""Accepted values for ``outcome``/``set_outcome``; ``never`` keeps an execution running forever."""

NAMESPACE = "testkube"
DEFAULT_PAGE_SIZE = 100  # pkg/repository/testworkflow/interface.go: PageDefaultLimit
WORKFLOW_KEYS = ("name", "namespace", "labels")  # what an execution (summary) keeps of its workflow
_SUMMARY_RESULT_KEYS = (
    "status", "predictedStatus", "queuedAt", "startedAt", "finishedAt", "duration", "totalDuration",
    "durationMs", "totalDurationMs", "pausedMs",
)  # fmt: skip
_SUMMARY_TOP_KEYS = ("id", "groupId", "name", "number", "scheduledAt", "statusAt")
_SUMMARY_KEYS = ("tags", "runningContext", "configParams", "runtime", "silentMode")


def check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")


def status_after_polls(polls: int, *, queued_polls: int, running_polls: int, outcome: str) -> str:
    """Status an execution shows on its ``polls``-th GET (0 = the POST response).

    The first ``queued_polls`` GETs see ``queued``, the next ``running_polls`` see ``running``, every
    later one the terminal ``outcome`` (``never`` = running forever).
    """
    if polls <= queued_polls:
        return "queued"
    if outcome == "never" or polls <= queued_polls + running_polls:
        return "running"
    return outcome


@dataclass
class Execution:
    """An execution's JSON document plus what the state machine needs."""

    doc: dict[str, Any]
    workflow: str
    seq: int
    plan: Plan
    polls: int = 0
    started: datetime | None = None
    status_at: datetime = field(default_factory=now)
    #: The stored log, once the execution ran and finished (the runner saves it at the end).
    log: str | None = None

    @property
    def status(self) -> str:
        return str(self.doc["result"]["status"])

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class ListQuery:
    """The list filters the handler read from the query string."""

    workflow: str | None
    page: int
    page_size: int
    statuses: frozenset[str] | None
    tag_selector: str
    selector: str
    name_pattern: re.Pattern[str] | None


class Executions:
    """The agent's state: workflows, executions, per-workflow numbers; thread-safe."""

    def __init__(self, *, outcome: str, queued_polls: int, running_polls: int) -> None:
        self._lock = threading.Lock()
        self.outcome = outcome
        self._outcomes: dict[str, str] = {}
        self._scripts: dict[str, Script] = {}
        self._queued_polls = queued_polls
        self._running_polls = running_polls
        self._workflows: dict[str, dict[str, Any]] = {}
        self._numbers: dict[str, int] = {}
        self._executions: list[Execution] = []
        self._ids = itertools.count(secrets.randbelow(0xFFFFFF))

    # ---- workflows

    def add_workflow(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        workflow: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
        if labels:
            workflow["labels"] = dict(labels)
        workflow["created"] = go_time(now())
        workflow["spec"] = {}
        with self._lock:
            self._workflows[name] = workflow

    def workflow(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._workflows.get(name))

    def workflows(self, selector: str, search: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(w) for name, w in sorted(self._workflows.items())
                    if matches_label_selector(w.get("labels"), selector) and search in name]  # fmt: skip

    def set_outcome(self, workflow: str, status: str) -> None:
        with self._lock:
            self._outcomes[workflow] = status

    def set_script(self, workflow: str, script: Script) -> None:
        with self._lock:
            self._scripts[workflow] = script

    def log(self, key: str, workflow: str | None) -> tuple[bool, str | None]:
        """Whether the execution exists, and its stored log (None while there is none)."""
        with self._lock:
            execution = self._find(key, workflow)
            return (False, None) if execution is None else (True, execution.log)

    def documents(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(e.doc) for e in self._executions]

    # ---- running

    def run(self, workflow: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new execution of ``workflow`` (None when there is no such workflow)."""
        with self._lock:
            return self._create(workflow, body, group_id=None) if workflow in self._workflows else None

    def run_labelled(self, labels: Mapping[str, str], body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One execution per workflow whose labels include ``labels`` (none for no labels), one group."""
        with self._lock:
            names = sorted(name for name, w in self._workflows.items()
                           if labels and all(w.get("labels", {}).get(k) == v for k, v in labels.items()))  # fmt: skip
            group_id = object_id(self._ids) if len(names) > 1 else None
            return [self._create(name, body, group_id=group_id) for name in names]

    def _create(self, workflow_name: str, body: Mapping[str, Any], *, group_id: str | None) -> dict[str, Any]:
        """Create an execution (caller holds the lock) and return a copy of its JSON."""
        number = self._numbers.get(workflow_name, 0) + 1
        self._numbers[workflow_name] = number
        created = now()
        execution_id = object_id(self._ids)
        workflow = self._workflows[workflow_name]
        plan = Plan.of(self._scripts.get(workflow_name) or smoke_script())
        doc: dict[str, Any] = {
            "id": execution_id,
            "groupId": group_id or execution_id,  # a single run is its own group
            "name": f"{workflow_name}-{number}",  # body "name" is not passed on by the OSS agent
            "namespace": NAMESPACE,
            "number": number,
            "scheduledAt": go_time(created),
            "assignedAt": ZERO_TIME,  # not assigned to a runner while queued
            "statusAt": go_time(created),
            "signature": plan.signature(),
            "result": {
                "status": "queued",
                "predictedStatus": "passed",
                "queuedAt": go_time(created),
                "startedAt": ZERO_TIME,
                "finishedAt": ZERO_TIME,
                "durationMs": 0,
                "pausedMs": 0,
                "totalDurationMs": 0,
                "initialization": {"status": "queued"},
                "steps": {},
            },
            "workflow": {key: copy.deepcopy(workflow[key]) for key in WORKFLOW_KEYS if key in workflow} | {"spec": {}},
        }
        _copy_request_fields(doc, body)
        self._executions.append(Execution(doc=doc, workflow=workflow_name, seq=len(self._executions),
                                          plan=plan, status_at=created))  # fmt: skip
        return copy.deepcopy(doc)

    # ---- reading and the state machine

    def _find(self, key: str, workflow: str | None) -> Execution | None:
        """By id or name (Mongo matches either); with a workflow, that workflow's only (caller locks)."""
        for execution in self._executions:
            if key in (execution.doc["id"], execution.doc["name"]) and workflow in (None, execution.workflow):
                return execution
        return None

    def poll(self, key: str, workflow: str | None) -> dict[str, Any] | None:
        """One GET: the execution, moved one step along its state machine (None when not found)."""
        with self._lock:
            execution = self._find(key, workflow)
            if execution is None:
                return None
            self._advance(execution)
            return copy.deepcopy(execution.doc)

    def _advance(self, execution: Execution) -> None:
        execution.polls += 1
        if execution.finished:
            return
        outcome = self._outcomes.get(execution.workflow, self.outcome)
        status = status_after_polls(execution.polls, queued_polls=self._queued_polls,
                                    running_polls=self._running_polls, outcome=outcome)  # fmt: skip
        if status == execution.status:
            return
        moment = now()
        if execution.started is None:
            _mark_started(execution, moment)
        if status in TERMINAL_STATUSES:
            _finish(execution, status, moment)
        else:
            execution.doc["result"]["status"] = status
            _touch(execution, moment)

    # ---- aborting

    def abort(self, key: str, workflow: str | None) -> str:
        """``"aborted"``, ``"missing"`` or ``"finished"`` (already terminal: nothing changes)."""
        with self._lock:
            execution = self._find(key, workflow)
            if execution is None:
                return "missing"
            if execution.finished:
                return "finished"
            _finish(execution, "aborted", now())
            return "aborted"

    def abort_all(self, workflow: str) -> None:
        with self._lock:
            moment = now()
            for execution in self._executions:
                if execution.workflow == workflow and not execution.finished:
                    _finish(execution, "aborted", moment)

    # ---- listing

    def listing(self, query: ListQuery) -> dict[str, Any]:
        """``TestWorkflowExecutionsResult``: totals, filtered counts and one page of summaries."""
        with self._lock:
            mine = [e for e in self._executions if query.workflow in (None, e.workflow)]
            matching = [
                e
                for e in mine
                if (query.statuses is None or e.status in query.statuses)
                and matches_tag_selector(e.doc.get("tags"), query.tag_selector)
                and matches_label_selector(e.doc["workflow"].get("labels"), query.selector)
                and (query.name_pattern is None or query.name_pattern.search(e.doc["name"]))
            ]
            matching.sort(key=lambda e: e.seq, reverse=True)  # scheduledAt descending
            # `totals` reuses a default filter, whose page size (100) applies to the count as well.
            newest = sorted(mine, key=lambda e: (e.status_at, e.seq), reverse=True)[:DEFAULT_PAGE_SIZE]
            start = query.page * query.page_size
            return {
                "totals": _totals(newest),
                "filtered": _totals(matching),
                "results": [_summary(e.doc) for e in matching[start : start + query.page_size]],
            }


def _copy_request_fields(doc: dict[str, Any], body: Mapping[str, Any]) -> None:
    """Optional request fields land on the execution only when set (Go's omitempty)."""
    if body.get("testWorkflowExecutionName"):
        doc["testWorkflowExecutionName"] = body["testWorkflowExecutionName"]
    if body.get("disableWebhooks"):
        doc["disableWebhooks"] = True
    if body.get("silentMode"):
        doc["silentMode"] = copy.deepcopy(body["silentMode"])
    if body.get("tags"):
        doc["tags"] = dict(body["tags"])
    if body.get("runningContext"):
        doc["runningContext"] = copy.deepcopy(body["runningContext"])
    if body.get("config"):
        doc["configParams"] = {
            key: ({"value": value} if value != "" else {"emptyValue": True}) for key, value in body["config"].items()
        }
    if body.get("runtime"):
        doc["runtime"] = copy.deepcopy(body["runtime"])


def _mark_started(execution: Execution, moment: datetime) -> None:
    doc = execution.doc
    execution.started = moment
    doc["assignedAt"] = go_time(moment)
    doc["result"]["startedAt"] = go_time(moment)
    doc["result"]["initialization"] = {
        "status": "passed",
        "queuedAt": doc["result"]["queuedAt"],
        "startedAt": go_time(moment),
        "finishedAt": go_time(moment),
    }
    doc["result"]["steps"] = {ref: {"status": "queued"} for ref in execution.plan.refs}


def _finish(execution: Execution, status: str, moment: datetime) -> None:
    result = execution.doc["result"]
    elapsed = (moment - execution.started) if execution.started else timedelta(0)
    milliseconds = elapsed // timedelta(milliseconds=1)
    result["status"] = status
    result["predictedStatus"] = status
    result["finishedAt"] = go_time(moment)
    result["duration"] = result["totalDuration"] = go_duration(milliseconds * 1_000_000)
    result["durationMs"] = result["totalDurationMs"] = milliseconds
    if execution.started is None:  # aborted while still queued: initialization never ran, no log saved
        result["initialization"] = {"status": status, "queuedAt": result["queuedAt"]}
        result["steps"] = never_ran(execution.plan, status)
    else:
        result["steps"], execution.log = finish(execution.plan, status, execution.started, moment)
    _touch(execution, moment)


def _touch(execution: Execution, moment: datetime) -> None:
    execution.status_at = moment
    execution.doc["statusAt"] = go_time(moment)


def _totals(executions: Iterable[Execution]) -> dict[str, int]:
    """``ExecutionsTotals``: every status counts in ``results``; only four have their own counter."""
    totals = {"results": 0, "passed": 0, "failed": 0, "queued": 0, "running": 0}
    for execution in executions:
        totals["results"] += 1
        if execution.status in totals:
            totals[execution.status] += 1
    return totals


def _summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``TestWorkflowExecutionSummary`` of an execution (what list endpoints return)."""
    summary: dict[str, Any] = {key: doc[key] for key in _SUMMARY_TOP_KEYS}
    summary["result"] = {key: doc["result"][key] for key in _SUMMARY_RESULT_KEYS if key in doc["result"]}
    summary["workflow"] = {key: doc["workflow"][key] for key in WORKFLOW_KEYS if key in doc["workflow"]}
    summary.update({key: doc[key] for key in _SUMMARY_KEYS if key in doc})
    return copy.deepcopy(summary)
