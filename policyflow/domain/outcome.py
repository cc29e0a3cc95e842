"""The outcome of one chain, and what a cycle's outcomes mean for the exit status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from policyflow.domain.status import NOT_PASSED, UNFINISHED, Outcome

EXIT_OK = 0
EXIT_TEST_NOT_PASSED = 1
EXIT_USAGE = 2
EXIT_UNFINISHED = 3


@dataclass(frozen=True, slots=True)
class ChainOutcome:
    """What one violation's chain did: the row of ``run-once``'s table."""

    key: str
    violation: str
    workflow: str | None
    execution: str | None
    status: Outcome
    duration_s: float | None = None
    detail: str = ""
    #: The cause is not this violation's (policyflow refused, a system down): the cycle stops early.
    halt: bool = False

    def line(self) -> str:
        """The chain's story in one line (a batch run's log: one line per violation, not per step)."""
        execution = f" (TestWorkflow {self.workflow} execution {self.execution})" if self.execution else ""
        took = f" after {self.duration_s:g} s" if self.duration_s is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.violation}: {self.status.value}{execution}{took}{detail}"


def exit_status(outcomes: Iterable[ChainOutcome]) -> int:
    """0: every chain finished and every test passed; 1: some test did not pass; 3: some chain did not finish."""
    statuses = [o.status for o in outcomes]
    if any(s in UNFINISHED for s in statuses):
        return EXIT_UNFINISHED
    if any(s in NOT_PASSED for s in statuses):
        return EXIT_TEST_NOT_PASSED
    return EXIT_OK


def count_statuses(outcomes: Iterable[ChainOutcome]) -> dict[str, int]:
    """How many chains ended in each status (for logs and artifacts)."""
    return dict(Counter(o.status.value for o in outcomes))
