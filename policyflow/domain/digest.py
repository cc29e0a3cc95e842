"""Why a test did not pass, in a few lines (pure): the failing step, its error and exit code, and the
end of its log, redacted and bounded, rendered for each place it is shown.

Which step failed follows the Testkube CLI: it walks the signature's leaves depth-first, in order
(``FlattenSignatures`` in kubeshop/testkube ``pkg/testworkflows/utils.go``, used by
``printRawLogLines`` in ``cmd/kubectl-testkube/commands/testworkflows/run.go``), and prints each one's
status and error. A group fails *because* a leaf failed, so the leaf says more: leaves come first, a
group only when none of its leaves says anything (e.g. it failed before any ran). The initialization
comes before every step (steps after a failed initialization are ``skipped``, see
``TestWorkflowResult.HealAbortedOrCanceled`` in ``pkg/api/v1/testkube/model_test_workflow_result_extended.go``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policyflow.domain.markdown import escape
from policyflow.domain.redact import LINE_LIMIT, bound_line, clean, redact
from policyflow.domain.testlog import INITIALIZATION_REF, split_log, tail
from policyflow.domain.testrun import ExecutionDetail, StepResult, StepSignature

#: Step statuses that make a step the failing one. ``canceled`` is here too: on a canceled run the
#: step that was running is marked ``canceled`` (``HealAbortedOrCanceled``), and it is the answer.
FAILING_STEP_STATUSES = frozenset({"failed", "timeout", "aborted", "canceled"})
INITIALIZATION_LABEL = "Initializing"  # what the CLI prints for the initialization
#: A Kubernetes Event's note is at most 1 KiB (events.k8s.io/v1).
EVENT_NOTE_LIMIT = 1024
#: Characters of log kept in an event payload, newest lines first.
PAYLOAD_LOG_BUDGET = 8000


@dataclass(frozen=True, slots=True)
class FailingStep:
    """The step a digest is about."""

    ref: str
    name: str
    status: str
    error_message: str
    exit_code: int | None


def _leaves(signature: Sequence[StepSignature]) -> Iterator[StepSignature]:
    for step in signature:
        if step.children:
            yield from _leaves(step.children)
        else:
            yield step


def _groups(signature: Sequence[StepSignature]) -> Iterator[StepSignature]:
    for step in signature:
        if step.children:
            yield step
            yield from _groups(step.children)


def failing_step(signature: Sequence[StepSignature], steps: Mapping[str, StepResult],
                 initialization: StepResult | None = None) -> FailingStep | None:
    """The first step that failed, timed out, was aborted or canceled (None when none did).

    Order: the initialization, the leaves depth-first, the groups depth-first, then results the
    signature does not name (Testkube keeps those when it cannot tell the order), by ref.
    """
    if initialization is not None and initialization.status in FAILING_STEP_STATUSES:
        return FailingStep(INITIALIZATION_REF, INITIALIZATION_LABEL, initialization.status,
                           initialization.error_message, initialization.exit_code)
    named = [*_leaves(signature), *_groups(signature)]
    known = {step.ref for step in named}
    candidates = [(step.ref, step.label or step.ref) for step in named]
    candidates += [(ref, ref) for ref in sorted(steps) if ref not in known]
    for ref, label in candidates:
        result = steps.get(ref)
        if result is not None and result.status in FAILING_STEP_STATUSES:
            return FailingStep(ref, label, result.status, result.error_message, result.exit_code)
    return None


def _shown(text: str) -> str:
    return bound_line(redact(clean(text)))


def _shown_lines(lines: Sequence[str], count: int) -> tuple[str, ...]:
    """The last ``count`` lines, redacted as one text (a key block spans lines), then bounded."""
    if not lines or count <= 0:
        return ()
    redacted = redact(clean("\n".join(lines))).split("\n")
    return tuple(bound_line(line) for line in tail(redacted, count))


@dataclass(frozen=True, slots=True)
class FailureDigest:
    """Why a test did not pass. Every text in it is already redacted and bounded."""

    execution_status: str | None
    step_name: str | None
    step_ref: str | None
    step_status: str | None
    error_message: str
    exit_code: int | None
    log_tail: tuple[str, ...]
    #: When and why the log could not be read or was cut; None when it was read whole.
    log_note: str | None = None

    def headline(self) -> str:
        """``step "Run smoke test" failed (exit 7)``, or what is known without a failing step."""
        if self.step_name is None:
            status = self.execution_status or "unknown"
            return f"no failed step reported; status {status}"
        exit_code = f" (exit {self.exit_code})" if self.exit_code is not None else ""
        return f'step "{self.step_name}" {self.step_status}{exit_code}'

    def reason(self) -> str:
        """The error message, else the last log line that says anything, else the log note."""
        if self.error_message:
            return self.error_message
        said = [line for line in self.log_tail if line.strip()]
        return said[-1].strip() if said else (self.log_note or "")

    def short(self, limit: int = LINE_LIMIT) -> str:
        """One line of at most ``limit`` characters, for the record's annotation."""
        reason = self.reason()
        return bound_line(f"{self.headline()}: {reason}" if reason else self.headline(), limit)

    def first_line(self) -> str:
        """The line a Kubernetes Event's note can hold."""
        return self.short(EVENT_NOTE_LIMIT)

    def markdown(self, execution_url: str | None) -> str:
        """A Prefect artifact: step, error, exit code, the log's tail in a fence it cannot close, the link."""
        lines = [f"### {escape(self.headline())}", ""]
        if self.step_ref is not None:
            lines.append(f"- Step ref: {escape(self.step_ref or 'initialization')}")
        if self.exit_code is not None:
            lines.append(f"- Exit code: {self.exit_code}")
        if self.error_message:
            lines.append(f"- Error: {escape(self.error_message)}")
        if self.log_note:
            lines.append(f"- Log: {escape(self.log_note)}")
        if self.log_tail:
            fence = _fence(self.log_tail)
            lines += ["", f"Last {len(self.log_tail)} log lines:", "", fence + "text", *self.log_tail, fence]
        if execution_url:
            lines += ["", f"[Execution in Testkube](<{execution_url.replace('>', '%3E')}>)"]
        return "\n".join(lines) + "\n"

    def payload(self) -> dict[str, Any]:
        """A JSON-able, bounded dict for a Prefect event payload."""
        kept: list[str] = []
        budget = PAYLOAD_LOG_BUDGET
        for line in reversed(self.log_tail):
            budget -= len(line) + 1
            if budget < 0:
                break
            kept.append(line)
        return {
            "executionStatus": self.execution_status,
            "step": self.step_name,
            "stepRef": self.step_ref,
            "stepStatus": self.step_status,
            "errorMessage": self.error_message,
            "exitCode": self.exit_code,
            "logTail": kept[::-1],
            "logNote": self.log_note,
            "summary": self.short(),
        }


def _fence(lines: Sequence[str]) -> str:
    """A backtick fence longer than any backtick run inside (CommonMark closes on one at least as long)."""
    longest = 0
    for line in lines:
        run = 0
        for char in line:
            run = run + 1 if char == "`" else 0
            longest = max(longest, run)
    return "`" * max(3, longest + 1)


#: The key ``split_log`` files a cut log's leading lines under: their step's start hint is gone.
_CUT_BEFORE_FIRST_HINT = "\x00cut"


def digest_of(detail: ExecutionDetail | None, log_text: str | None, *, tail_lines: int, log_cut: bool = False,
              log_note: str | None = None) -> FailureDigest:
    """The digest of an execution (None: its details could not be read) and its log (None: unread).

    The log's lines shown are the failing step's; without a failing step, the log's last step's.
    ``log_cut``: ``log_text`` is only the log's end, so its lines before the first start hint belong
    to a step whose hint the cut hid; when that is all there is, the running (failing) step's.
    """
    step = failing_step(detail.signature, detail.steps, detail.initialization) if detail else None
    lines: Sequence[str] = ()
    if log_text is not None:
        per_step = split_log(log_text, first_ref=_CUT_BEFORE_FIRST_HINT if log_cut else INITIALIZATION_REF)
        if step is not None and step.ref in per_step:
            lines = per_step[step.ref]
        elif per_step and (step is None or list(per_step) == [_CUT_BEFORE_FIRST_HINT]):
            lines = list(per_step.values())[-1]
    return FailureDigest(
        execution_status=detail.execution.status if detail else None,
        step_name=_shown(step.name) if step else None,
        step_ref=_shown(step.ref) if step else None,
        step_status=step.status if step else None,
        error_message=_shown(step.error_message) if step else "",
        exit_code=step.exit_code if step else None,
        log_tail=_shown_lines(lines, tail_lines),
        log_note=log_note,
    )
