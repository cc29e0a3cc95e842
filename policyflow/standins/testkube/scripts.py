"""What a workflow's executions did, step by step: the ``signature`` tree, ``result.steps`` and the
stored log, as the agent writes them (read in kubeshop/testkube @ 2b73b131):

* refs are ``"r" + 5 random characters + a base-36 counter`` (``NextRef`` in
  ``pkg/testworkflows/testworkflowprocessor/refcounter.go``; ``k8s.io/apimachinery/pkg/util/rand``'s alphabet);
* a signature node is ``{ref, name, category, children}`` with Go's ``omitempty``
  (``pkg/api/v1/testkube/model_test_workflow_signature.go``); a step without a name shows its category;
* a step result is ``{status, errorMessage, exitCode, queuedAt, startedAt, finishedAt}``; a plain non-zero
  exit leaves ``errorMessage`` empty (``notifier.Instruction`` only copies ``ExecutionResult.Details``,
  ``pkg/testworkflows/executionworker/controller/notifier.go``); a zero exit code is omitted;
* after a failed step the rest are ``skipped``; on an abort the running step is ``aborted`` with "The
  execution has been aborted. (Job has been aborted)" and the later ones ``skipped`` with "The execution
  was aborted before. …" (``HealAbortedOrCanceled``, ``pkg/api/v1/testkube/model_test_workflow_result_extended.go``);
  a group takes the status of the step that decided it;
* the log: each line ``<RFC 3339 time with 9 fraction digits>Z <text>`` (``constants.PreciseTimeFormat``),
  and where a step starts ``"\\n\\x01\\x05\\x06<ref>\\x03start\\x03\\n"`` (``SprintHint`` in
  ``cmd/testworkflow-init/instructions/emit.go``, written by ``pkg/runner/executionlogswriter.go``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from policyflow.standins.testkube.gotypes import go_time

_REF_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
_ABORT_DETAIL = "Job has been aborted"  # controller.DefaultErrorMessage
#: A line with a fake credential, for tests that check it never gets further than the log.
FAKE_CREDENTIAL_LINE = "Authorization: Bearer tkcapi_0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Script:
    """A workflow's steps (names, in order), which one fails when an execution fails, and what each prints.

    ``group``: the steps sit in a group of that name (a signature with children). ``log_lines``: per
    step name, what it prints when it passes; ``failing_lines``: what the failing step prints instead.
    """

    steps: tuple[str, ...]
    failing_step: str
    exit_code: int = 7
    error_message: str = ""
    group: str | None = None
    log_lines: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    failing_lines: tuple[str, ...] = ()
    init_lines: tuple[str, ...] = ("Initializing the execution...",)

    def __post_init__(self) -> None:
        if not self.steps or self.failing_step not in self.steps:
            raise ValueError(f"failing_step {self.failing_step!r} must be one of the steps {list(self.steps)}")


def smoke_script(*, leak_credential: bool = False) -> Script:
    """The default: wait for the app, curl it (exit 7 when it fails: "Failed to connect"), report."""
    failing = (
        "+ curl -fsS --max-time 5 http://nginx.default.svc:80/healthz",
        "curl: (7) Failed to connect to nginx.default.svc port 80 after 3 ms: Couldn't connect to server",
    )
    return Script(
        steps=("Wait for the app", "Run smoke test", "Save the report"),
        failing_step="Run smoke test",
        log_lines={
            "Wait for the app": ("Waiting for nginx.default.svc:80 ...", "nginx.default.svc:80 answers"),
            "Run smoke test": (failing[0], "ok"),
            "Save the report": ("report saved to /data/report.json",),
        },
        failing_lines=(failing[0], *((FAKE_CREDENTIAL_LINE,) if leak_credential else ()), failing[1]),
    )


def new_ref(counter: int) -> str:
    """A step ref like the processor's: ``r`` + 5 random characters + the counter in base 36."""
    digits = ""
    while True:
        counter, rest = divmod(counter, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if counter == 0:
            break
    return "r" + "".join(secrets.choice(_REF_ALPHABET) for _ in range(5)) + digits


@dataclass(frozen=True)
class Plan:
    """One execution's refs for a script (made when it is scheduled, like its signature)."""

    script: Script
    refs: tuple[str, ...]  # one per step
    group_ref: str | None

    @classmethod
    def of(cls, script: Script) -> Plan:
        refs = tuple(new_ref(i + 1) for i in range(len(script.steps)))
        return cls(script, refs, new_ref(len(refs) + 1) if script.group else None)

    def signature(self) -> list[dict[str, Any]]:
        pairs = zip(self.refs, self.script.steps, strict=True)
        leaves: list[dict[str, Any]] = [{"ref": ref, "name": name} for ref, name in pairs]
        if self.group_ref is None:
            return leaves
        return [{"ref": self.group_ref, "name": self.script.group, "children": leaves}]


def _go_precise(moment: datetime) -> str:
    """``constants.PreciseTimeFormat``: always 9 fraction digits, UTC."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond * 1000:09d}Z"


def never_ran(plan: Plan, outcome: str) -> dict[str, dict[str, Any]]:
    """``result.steps`` of an execution aborted or canceled before it started: every step skipped."""
    return {ref: _skipped(outcome) for ref in (*plan.refs, *((plan.group_ref,) if plan.group_ref else ()))}


def start_hint(ref: str) -> str:
    """``SprintHint(ref, "start")``: the line the runner writes where a step's log starts."""
    return f"\n\x01\x05\x06{ref}\x03start\x03\n"


def finish(plan: Plan, outcome: str, started: datetime, ended: datetime) -> tuple[dict[str, dict[str, Any]], str]:
    """``result.steps`` and the stored log of an execution of ``plan`` that ended with ``outcome``.

    ``passed``: every step passed. ``failed``: the failing step failed, the later ones were skipped.
    ``aborted``/``canceled``: the failing step was the running one and was interrupted.
    """
    script = plan.script
    failing = script.steps.index(script.failing_step) if outcome != "passed" else len(script.steps)
    span = (ended - started) / (len(script.steps) + 1)
    steps: dict[str, dict[str, Any]] = {}
    log = _lines(started, script.init_lines)
    for index, (ref, name) in enumerate(zip(plan.refs, script.steps, strict=True)):
        queued = started + span * index
        done = queued + span
        timing = {"queuedAt": go_time(queued), "startedAt": go_time(queued), "finishedAt": go_time(done)}
        if index < failing:
            steps[ref] = {"status": "passed", **timing}
            log += start_hint(ref) + _lines(queued, script.log_lines.get(name, ()))
        elif index == failing:
            steps[ref] = _interrupted(script, outcome) | timing
            log += start_hint(ref) + _lines(queued, script.failing_lines)
        else:
            steps[ref] = _skipped(outcome) | {"queuedAt": go_time(ended), "startedAt": go_time(ended),
                                              "finishedAt": go_time(ended)}
    if plan.group_ref is not None:
        status = "passed" if outcome == "passed" else _interrupted(script, outcome)["status"]
        steps[plan.group_ref] = {"status": status, "queuedAt": go_time(started), "startedAt": go_time(started),
                                 "finishedAt": go_time(ended)}
    return steps, log


def _interrupted(script: Script, outcome: str) -> dict[str, Any]:
    if outcome == "failed":
        result: dict[str, Any] = {"status": "failed", "exitCode": script.exit_code}
        if script.error_message:
            result["errorMessage"] = script.error_message
        return result
    return {"status": outcome, "errorMessage": f"The execution has been {outcome}. ({_ABORT_DETAIL})"}


def _skipped(outcome: str) -> dict[str, Any]:
    if outcome in ("aborted", "canceled"):
        return {"status": "skipped", "errorMessage": f"The execution was {outcome} before. ({_ABORT_DETAIL})"}
    return {"status": "skipped"}


def _lines(start: datetime, lines: Sequence[str]) -> str:
    """Lines as the log stores them: each after its timestamp, joined by newlines (none at the end)."""
    return "\n".join(f"{_go_precise(start + timedelta(milliseconds=7 * i))} {line}" for i, line in enumerate(lines))
