"""What was done about each violation, and the diff of a report against it.

The durable record lives in the cluster, on the report itself: one annotation per violation,
``policyflow.io/<key>``, whose value is a JSON :class:`Record`. It survives a lost Prefect database
and a restart of policyflow. Kyverno's aggregate controller rewrites a report with GET + set results +
UPDATE, which keeps the report's annotations; when a report has no results left it DELETES it, and
re-creates it (new ``metadata.uid``, no annotations) when results come back. So a record vanishing with
its report is exactly "the failure went away": the next failure there is a new episode.

An *episode* is one stretch of time during which a violation fails. Each episode gets exactly one
test run. Its id, ``<report uid>.<n>``, tags the Testkube execution so that a retried trigger finds
the run it already started instead of starting a second one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from policyflow.domain.model import KEY_LENGTH, Violation
from policyflow.domain.status import FINISHED as FINISHED
from policyflow.domain.status import IN_FLIGHT as IN_FLIGHT
from policyflow.domain.status import Status as Status  # a record's status; re-exported for its readers

ANNOTATION_PREFIX = "policyflow.io/"


def annotation_name(key: str) -> str:
    """The annotation that holds the record of the violation with this key."""
    return f"{ANNOTATION_PREFIX}{key[:KEY_LENGTH]}"


@dataclass(frozen=True, slots=True)
class Record:
    """The JSON value of a ``policyflow.io/<key>`` annotation."""

    key: str
    policy: str
    rule: str
    resource: str
    status: Status
    episode: int
    report_uid: str
    updated: str
    workflow: str | None = None
    execution: str | None = None
    execution_name: str | None = None
    generation: int | None = None
    detected: str | None = None
    finished: str | None = None
    error: str | None = None
    #: Which process wrote an in-flight record (host:pid:nonce): another one leaves it alone while
    #: ``updated`` is younger than the lease.
    owner: str | None = None
    #: A digest of what the route ran (workflow and config) when the record was claimed: a record
    #: of an ``error`` is tried again once its route runs something else.
    route: str | None = None
    #: Why a test that did not pass failed, in one bounded line (the failure digest's short form).
    failure: str | None = None

    @property
    def episode_id(self) -> str:
        """Tags the Testkube execution of this episode (see the module docstring)."""
        return episode_id(self.report_uid, self.episode)

    def to_json(self) -> str:
        """Compact JSON, without the fields that are unset."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Record:
        """Parse an annotation value; ValueError naming what is wrong when it is not a record."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg})") from None
        except RecursionError:
            raise ValueError("JSON nested too deep") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            status = Status(data["status"])
            episode = int(data.get("episode", 1))
            generation = data.get("generation")
            return cls(
                key=str(data["key"]),
                policy=str(data.get("policy", "")),
                rule=str(data.get("rule", "")),
                resource=str(data.get("resource", "")),
                status=status,
                episode=episode,
                report_uid=str(data.get("report_uid", "")),
                updated=str(data.get("updated", "")),
                workflow=_opt_str(data.get("workflow")),
                execution=_opt_str(data.get("execution")),
                execution_name=_opt_str(data.get("execution_name")),
                generation=int(generation) if generation is not None else None,
                detected=_opt_str(data.get("detected")),
                finished=_opt_str(data.get("finished")),
                error=_opt_str(data.get("error")),
                owner=_opt_str(data.get("owner")),
                route=_opt_str(data.get("route")),
                failure=_opt_str(data.get("failure")),
            )
        except KeyError as exc:
            raise ValueError(f"field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(str(exc)[:200]) from None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def episode_id(report_uid: str, episode: int) -> str:
    """``<report uid>.<n>``: unique per report object and episode, safe in a Testkube tag selector."""
    return f"{report_uid or 'no-uid'}.{episode}"


def read_records(annotations: Mapping[str, str]) -> tuple[dict[str, Record], list[str]]:
    """Our records among a report's annotations, keyed by violation key, and the unreadable ones."""
    records: dict[str, Record] = {}
    problems: list[str] = []
    for name, value in annotations.items():
        if not name.startswith(ANNOTATION_PREFIX):
            continue
        try:
            record = Record.from_json(value)
        except ValueError as exc:
            problems.append(f"annotation {name}: {exc}; treated as absent")
            continue
        records[record.key[:KEY_LENGTH]] = record
    return records, problems


class Action(StrEnum):
    """What a detection cycle does about a violation."""

    NEW = "new"  # first seen (or back after going away, or its resource changed): start an episode
    RESUME = "resume"  # an episode whose chain did not finish: run the chain again, same episode
    HANDLED = "handled"  # its episode's test has finished; nothing to do
    BUSY = "busy"  # another chain is working on it right now (its record is fresh); leave it


@dataclass(frozen=True, slots=True)
class Planned:
    """One violation of a report and what to do about it."""

    violation: Violation
    action: Action
    episode: int
    record: Record | None = None
    reason: str = ""


@dataclass(slots=True)
class ReportPlan:
    """The diff of one report against the records on it."""

    planned: list[Planned] = field(default_factory=list)
    #: Records whose violation is no longer in the report: to be marked resolved.
    resolved: list[Record] = field(default_factory=list)


def plan_report(
    violations: Iterable[Violation],
    records: Mapping[str, Record],
    *,
    generations: Mapping[str, int] | None = None,
    now: datetime,
    lease_seconds: float,
    live_owners: frozenset[str] | None = None,
) -> ReportPlan:
    """Decide, for one report, which violations start an episode, which resume one, which are done.

    ``generations`` maps resource uid to its current ``metadata.generation``; when given, a handled
    violation whose resource has a newer generation than the one its record saw starts a new episode
    (the resource was changed and still fails). Without it, resource changes are not looked at.

    An in-flight record whose owner is alive belongs to a chain that is still running: it is left
    alone; one whose owner is gone was left behind by a chain that died: it is resumed at once.
    ``live_owners`` are the processes whose Lease is current (see ``domain.owners``); when they cannot
    be known (no permission to read Leases), an owner counts as alive while its record is younger than
    ``lease_seconds`` (such chains refresh their record while they wait).
    """
    plan = ReportPlan()
    seen: set[str] = set()
    for violation in violations:
        if violation.key in seen:
            continue  # the same rule reported twice for one resource: one violation
        seen.add(violation.key)
        record = records.get(violation.key)
        plan.planned.append(plan_violation(violation, record, generations=generations, now=now,
                                           lease_seconds=lease_seconds, live_owners=live_owners))
    for key, record in records.items():
        if key not in seen and record.status in FINISHED:
            plan.resolved.append(record)
    return plan


def plan_violation(
    violation: Violation,
    record: Record | None,
    *,
    generations: Mapping[str, int] | None,
    now: datetime,
    lease_seconds: float,
    live_owners: frozenset[str] | None = None,
) -> Planned:
    """What to do about one violation given its record (see :func:`plan_report`)."""
    if record is None:
        return Planned(violation, Action.NEW, 1, reason="first seen")
    if record.status is Status.RESOLVED:
        return Planned(violation, Action.NEW, record.episode + 1, record, "failing again after it resolved")
    if record.status in IN_FLIGHT:
        # A chain that gave up releases its record (owner cleared): resume it at once.
        if record.owner and owner_alive(record, now=now, lease_seconds=lease_seconds, live_owners=live_owners):
            return Planned(violation, Action.BUSY, record.episode, record, f"{record.status}, chain alive")
        return Planned(violation, Action.RESUME, record.episode, record, f"chain unfinished ({record.status})")
    current = generations.get(violation.resource.uid or "") if generations is not None else None
    if current is not None and record.generation is not None and current > record.generation:
        return Planned(
            violation,
            Action.NEW,
            record.episode + 1,
            record,
            f"resource changed (generation {record.generation} -> {current}) and still fails",
        )
    return Planned(violation, Action.HANDLED, record.episode, record, f"handled ({record.status})")


def owner_alive(record: Record, *, now: datetime, lease_seconds: float, live_owners: frozenset[str] | None) -> bool:
    """Whether the process that owns ``record``'s chain is alive: its Lease is current, or (Leases
    unknown) its record is younger than ``lease_seconds``."""
    if live_owners is not None:
        return record.owner in live_owners
    age = record_age(record, now)
    return age is not None and age < lease_seconds


def record_age(record: Record, now: datetime) -> float | None:
    """Seconds since the record was written; None when its timestamp is unreadable."""
    try:
        updated = datetime.fromisoformat(record.updated)
    except ValueError:
        return None
    if updated.tzinfo is None:
        return None
    return (now - updated).total_seconds()


def resolved_record(record: Record, *, now: str) -> Record:
    """``record`` marked resolved: its violation is gone from the report."""
    return replace(record, status=Status.RESOLVED, updated=now)


def prune_patch(
    annotations: Mapping[str, str], name: str, value: str, *, limit: int = 200 * 1024
) -> dict[str, str | None]:
    """The merge-patch ``metadata.annotations`` that writes ``name: value`` and keeps the report's
    annotations under ``limit`` bytes.

    Kubernetes refuses (422) an object whose annotations total 256 KiB or more (the sum over every
    annotation of the UTF-8 length of its name plus its value). A report that piles up records of
    violations long gone would one day refuse every write, the new record included. So when writing
    ``name: value`` would bring the total (after the patch) to ``limit`` or more, the patch also
    deletes (``None``) the oldest of our own records, as many as needed: ``resolved`` ones first,
    then finished ones (``passed``, ``failed``, ``aborted``, ``canceled``, ``timedout``, ``error``),
    each group oldest ``updated`` first (an unreadable timestamp counts as oldest).

    Never deleted: another tool's annotations; in-flight records (``pending``/``queued``/``running``:
    a live chain owns them); ``name`` itself; and ``policyflow.io/*`` values that are not records
    this version can read (they may belong to a newer policyflow, and their status is unknown).

    The cost of a deletion: the violation of a pruned record, failing still (finished) or again
    (resolved), looks new and starts over at episode 1. Its episode id, ``<report uid>.1``, is that
    of its first episode on the same report, so the trigger finds (by tag, or in the task cache) the
    execution of that first episode and reuses it instead of running a new test.

    When deleting every record it may delete still leaves the total at ``limit`` or more, the patch
    is returned anyway, with all those deletions: it may still fit under Kubernetes' own limit, and
    if not the API server answers 422 and that error surfaces.

    A record is a few hundred bytes; one over 16 KiB means a field was not bounded upstream (an
    unbounded ``error`` message, say), and that is the bug to fix there, not here: this function
    does not look at the size of ``value``.
    """
    patch: dict[str, str | None] = {name: value}

    def size(key: str, text: str) -> int:
        return len(key.encode("utf-8")) + len(text.encode("utf-8"))

    def age_order(updated: str) -> float:  # seconds since the epoch (naive: UTC); unreadable: oldest
        try:
            when = datetime.fromisoformat(updated)
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            return float("-inf")

    total = size(name, value) + sum(size(k, v) for k, v in annotations.items() if k != name)
    if total < limit:
        return patch
    candidates: list[tuple[int, float, str, int]] = []
    for key, text in annotations.items():
        if key == name or not key.startswith(ANNOTATION_PREFIX):
            continue
        try:
            record = Record.from_json(text)
        except (ValueError, OverflowError, RecursionError):  # hostile values break from_json (see tests)
            continue
        if record.status is Status.RESOLVED:
            group = 0
        elif record.status in FINISHED:
            group = 1
        else:
            continue
        candidates.append((group, age_order(record.updated), key, size(key, text)))
    for _group, _updated, key, freed in sorted(candidates):
        if total < limit:
            break
        patch[key] = None
        total -= freed
    return patch
