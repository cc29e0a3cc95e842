"""The status vocabulary, defined once: what a record on a report says, what a chain's outcome says,
their named groups, and how Testkube's execution statuses map onto them.

:class:`Status` is what the ledger records on a report. :class:`Outcome` is what a chain reports to a
cycle: every :class:`Status`, plus the ends that write nothing (no route, not finished, another
process's, handed to a served process). Testkube's statuses become ledger statuses through an
explicit table (:func:`status_of_execution`), not because they happen to be spelled alike.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A violation's state as recorded on its report."""

    PENDING = "pending"  # claimed, no test run confirmed yet
    QUEUED = "queued"  # the test run exists on Testkube, not started
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"
    CANCELED = "canceled"
    TIMEDOUT = "timedout"  # policyflow stopped waiting; the run itself may still finish later
    RESOLVED = "resolved"  # the failure went away; no test (or no more test) for this episode
    ERROR = "error"  # the violation's own permanent error (its routed workflow does not exist, ...)


class Outcome(StrEnum):
    """How one chain ended, from a cycle's point of view: a :class:`Status`, or one of the ends
    that record nothing."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"
    CANCELED = "canceled"
    TIMEDOUT = "timedout"
    RESOLVED = "resolved"
    ERROR = "error"
    #: No route fits: nothing is run (add a route, or set default_workflow).
    UNROUTED = "unrouted"
    #: A transient error outlasted the retries, or the cycle stopped first: the next cycle resumes it.
    UNFINISHED = "unfinished"
    #: policyflow itself was refused (token, RBAC): nothing recorded; the next cycle tests it.
    REFUSED = "refused"
    #: Another policyflow process is running this violation's chain right now.
    BUSY = "busy"
    #: Scheduled as a deployment run for a served process or worker to run.
    SUBMITTED = "submitted"

    @classmethod
    def of(cls, status: Status) -> Outcome:
        """The outcome of a chain that left ``status`` on the record."""
        return cls(status.value)


#: Records whose chain has not finished: the next cycle resumes it (unless its owner is alive).
IN_FLIGHT = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING})
#: Records whose episode's test has finished: the violation is handled until it changes or goes away.
TEST_DONE = frozenset({Status.PASSED, Status.FAILED, Status.ABORTED, Status.CANCELED, Status.TIMEDOUT})
#: Records that end an episode (its test finished, or its own error stopped it).
FINISHED = TEST_DONE | {Status.ERROR}
#: Test results that are not a pass (exit status 1 of a cycle).
NOT_PASSED = frozenset({Outcome.FAILED, Outcome.ABORTED, Outcome.CANCELED, Outcome.TIMEDOUT})
#: Chain ends that leave work for a later cycle, a retry or another live process (exit status 3).
UNFINISHED = frozenset({Outcome.UNFINISHED, Outcome.REFUSED, Outcome.ERROR, Outcome.PENDING,
                        Outcome.QUEUED, Outcome.RUNNING, Outcome.BUSY})

#: Testkube's execution statuses (SOURCES 3.6: ``model_test_workflow_status.go``) as ledger statuses.
#: ``stopping`` is not terminal: the run is still going.
_EXECUTION_STATUS: dict[str, Status] = {
    "queued": Status.QUEUED,
    "assigned": Status.QUEUED,
    "scheduling": Status.QUEUED,
    "starting": Status.RUNNING,
    "running": Status.RUNNING,
    "pausing": Status.RUNNING,
    "paused": Status.RUNNING,
    "resuming": Status.RUNNING,
    "stopping": Status.RUNNING,
    "passed": Status.PASSED,
    "failed": Status.FAILED,
    "aborted": Status.ABORTED,
    "canceled": Status.CANCELED,
}
#: Every status the Testkube agent can report.
EXECUTION_STATUSES = frozenset(_EXECUTION_STATUS)
#: Testkube's terminal statuses (``Finished()``: passed, failed, aborted, canceled).
EXECUTION_TERMINAL = frozenset(s for s, status in _EXECUTION_STATUS.items() if status in TEST_DONE)


def status_of_execution(execution_status: str) -> Status:
    """The ledger status for a Testkube execution status (KeyError for one Testkube does not have;
    the client refuses those when it parses an execution)."""
    return _EXECUTION_STATUS[execution_status]
