"""The record store: policyflow's records (``policyflow.io/<key>`` annotations) on the reports in the
cluster, and the Events that tell ``kubectl describe`` about them.

The protocol of a record, in one place: *claim* an episode with a merge-patch conditional on the
report's resourceVersion (the loser of a race sees the winner's claim and leaves it), *write* a record
(making room when the report's annotations are full), *release* an in-flight record so the next cycle
resumes it at once, *post* an Event. Blocking (the Kubernetes client is): async callers use a thread.
"""

from __future__ import annotations

import logging
from typing import Any

from policyflow.clients.kube import KubeClient
from policyflow.clock import Clock
from policyflow.domain.decisions import released_record
from policyflow.domain.errors import (
    AnnotationsFullError,
    ClaimLostError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PolicyflowError,
)
from policyflow.domain.events import event_for
from policyflow.domain.ledger import Record, annotation_name, prune_patch, read_records
from policyflow.domain.model import ReportRef, Violation
from policyflow.retry import RetryPolicy

log = logging.getLogger("policyflow.records")

#: Conflicts of a conditional write: read again and retry at once, a few times (client-go's
#: ``retry.DefaultRetry``: 5 steps of 10 ms). Longer waits are the step's retry policy's job.
ON_CONFLICT = RetryPolicy(retries=5, delay=0.01, jitter=0.1)


def annotations_of(report: dict[str, Any]) -> dict[str, str]:
    """A report's annotations (empty when it has none)."""
    return dict((report.get("metadata") or {}).get("annotations") or {})


class RecordStore:
    """Records on reports, written as ``owner`` (this process)."""

    def __init__(self, kube: KubeClient, *, owner: str, clock: Clock, retry: RetryPolicy) -> None:
        self.kube = kube
        self.owner = owner
        self.clock = clock
        self.retry = retry

    def read(self, report: ReportRef) -> dict[str, Any]:
        """The report now (NotFoundError when it is gone)."""
        return self.kube.get_report(report)

    def claim(self, violation: Violation, claim: Record, *, report_version: str, previous: Record | None) -> None:
        """Write ``claim`` only if nobody else wrote this violation's record since we read it.

        A 409 means the report changed: if the record is still what we read (Kyverno rewrote its
        results, say), try again on the new version; if another process wrote it, it owns the
        episode (:class:`ClaimLostError`).
        """
        name, value = annotation_name(violation.key), claim.to_json()
        version = report_version

        def attempt() -> None:
            nonlocal version
            try:
                self.kube.patch_report_annotations(violation.report, {name: value}, resource_version=version)
                return
            except AnnotationsFullError:
                self._make_room(violation.report, name, value)
            except ConflictError:
                pass
            report = self.kube.get_report(violation.report)
            now = read_records(annotations_of(report))[0].get(violation.key)
            ours = now is not None and now.owner == self.owner and now.episode == claim.episode
            if now != previous and not ours:
                raise ClaimLostError(f"{violation.title}: another policyflow process is handling it")
            version = str((report.get("metadata") or {}).get("resourceVersion") or "")
            raise ConflictError(f"{violation.report} kept changing while policyflow claimed {violation.title}",
                                status=409)

        ON_CONFLICT.run_sync(attempt, what=f"claim {violation.title}", log=log)

    def write(self, report: ReportRef, record: Record) -> bool:
        """Merge-patch ``record`` onto its report; False (logged) when the report is gone.

        When the report's annotations would pass 256 KiB, the oldest of our finished records make
        room (``prune_patch``) and the write is tried once more.
        """
        name, value = annotation_name(record.key), record.to_json()
        try:
            try:
                self.kube.patch_report_annotations(report, {name: value})
            except AnnotationsFullError:
                self._make_room(report, name, value)
                self.kube.patch_report_annotations(report, {name: value})
        except NotFoundError:
            log.warning("%s vanished; the record of %s/%s was not written", report, record.policy, record.rule)
            return False
        return True

    def release(self, report: ReportRef, record: Record) -> None:
        """Best effort: give an in-flight record back (owner cleared) so the next cycle resumes it at
        once; one that cannot be written waits out the lease instead."""
        released = released_record(record, now=self.clock.stamp())
        try:
            self.retry.run_sync(lambda: self.write(report, released), what=f"release {record.policy}/{record.rule}",
                                log=log)
        except PolicyflowError as exc:
            log.warning("could not release %s/%s (%s); it resumes after the lease", record.policy, record.rule, exc)

    def post_event(self, violation: Violation, record: Record) -> None:
        """The Event of ``record``'s state on the failing resource (a retried step re-posts the same
        Event: its name is derived from key, episode and status)."""
        event = event_for(violation, record, now=self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                          instance=self.owner)
        try:
            self.kube.create_event(event)
        except (ForbiddenError, NotFoundError) as exc:
            log.warning("no Event for %s: %s", violation.title, exc)

    def _make_room(self, report_ref: ReportRef, name: str, value: str) -> None:
        """Delete the oldest of our finished records so that ``name: value`` fits (see ``prune_patch``).
        Deleting finished records needs no precondition: no chain is working on them."""
        report = self.kube.get_report(report_ref)
        deletions = {k: v for k, v in prune_patch(annotations_of(report), name, value).items() if v is None}
        log.warning("%s: annotations at the 256 KiB limit; pruning %d old records", report_ref, len(deletions))
        if deletions:
            self.kube.patch_report_annotations(report_ref, deletions)
