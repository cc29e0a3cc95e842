"""The outcome of one chain, and what a cycle's outcomes mean for the exit status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from policyflow.domain.ledger import Status

EXIT_OK = 0
EXIT_TEST_NOT_PASSED = 1
EXIT_USAGE = 2
EXIT_UNFINISHED = 3

#: Chain outcomes that are not a ledger status: nothing was (or could be) run.
UNROUTED = "unrouted"
UNFINISHED = "unfinished"  # a transient error outlasted the retries; the next cycle resumes it
BUSY = "busy"  # another policyflow process is running this violation's chain right now
SUBMITTED = "submitted"  # scheduled as a deployment run for a served process or worker to run


@dataclass(frozen=True, slots=True)
class ChainOutcome:
    """What one violation's chain did: the row of ``run-once``'s table."""

    key: str
    violation: str
    workflow: str | None
    execution: str | None
    status: str
    duration_s: float | None = None
    detail: str = ""


def exit_status(outcomes: Iterable[ChainOutcome]) -> int:
    """0: every chain finished and every test passed; 1: some test did not pass; 3: some chain did not finish."""
    statuses = [o.status for o in outcomes]
    if any(s in (UNFINISHED, Status.ERROR.value, Status.PENDING.value, Status.QUEUED.value,
                 Status.RUNNING.value) for s in statuses):
        return EXIT_UNFINISHED
    not_passed = {Status.FAILED, Status.ABORTED, Status.CANCELED, Status.TIMEDOUT}
    if any(s in not_passed for s in statuses):
        return EXIT_TEST_NOT_PASSED
    return EXIT_OK


def count_statuses(outcomes: Iterable[ChainOutcome]) -> dict[str, int]:
    """How many chains ended in each status (for logs and artifacts)."""
    return dict(Counter(o.status for o in outcomes))
