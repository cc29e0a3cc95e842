"""Policy health figures (pure), computed from the lifecycle journal.

Definitions (the README's "Policy health" section says the same, for people):

* **open now**: violations whose latest episode has not resolved (whatever the window).
* **opened** / **resolved**: episodes that opened / resolved inside the window.
* **reopened**: episodes opened inside the window whose previous episode had resolved (the
  violation came back after it was fixed).
* **time to resolve**: resolved minus opened, over the episodes resolved inside the window; median
  and p90 by the nearest-rank method (the value at rank ceil(q * n)).
* **pass rate**: passed ÷ test outcomes, over the episodes whose test ended inside the window
  (``passed``, ``failed``, ``aborted``, ``canceled``, ``timedout``; an ``error`` is not a test).
* **flip rate** (flakiness): for each violation, take its last ``flip_window`` episodes with a test
  outcome inside the window; a *flip* is a pair of consecutive ones of which one passed and the other
  did not. Flip rate = flips ÷ pairs, summed over the group's violations (each contributes
  ``episodes - 1`` pairs). 0 means each violation's test always ends the same way; 1 means it
  alternates every time. None when no violation has two test outcomes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from policyflow.domain.journal import Identity, Lifecycle

FLIP_WINDOW = 10
TOP_RECURRING = 5


class GroupBy(StrEnum):
    """What one row of the health table stands for."""

    POLICY = "policy"
    RULE = "rule"
    NAMESPACE = "namespace"
    WORKFLOW = "workflow"

    def of(self, identity: Identity) -> tuple[str, ...]:
        if self is GroupBy.POLICY:
            return (identity.policy,)
        if self is GroupBy.RULE:
            return (identity.policy, identity.rule)
        if self is GroupBy.NAMESPACE:
            return (identity.namespace or "(cluster)",)
        return (identity.workflow or "(none)",)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("policy", "rule") if self is GroupBy.RULE else (self.value,)


def quantile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile: the value at rank ceil(q * n) of the sorted values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


@dataclass(slots=True)
class HealthRow:
    """The figures of one group (see the module docstring for each definition)."""

    group: tuple[str, ...]
    open_now: int = 0
    opened: int = 0
    resolved: int = 0
    reopened: int = 0
    resolve_seconds: list[float] = field(default_factory=list)
    tests: int = 0
    passed: int = 0
    flips: int = 0
    pairs: int = 0

    @property
    def resolve_p50(self) -> float | None:
        return quantile(self.resolve_seconds, 0.5)

    @property
    def resolve_p90(self) -> float | None:
        return quantile(self.resolve_seconds, 0.9)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.tests if self.tests else None

    @property
    def flip_rate(self) -> float | None:
        return self.flips / self.pairs if self.pairs else None

    def to_dict(self, by: GroupBy) -> dict[str, object]:
        return {
            **dict(zip(by.columns, self.group, strict=True)),
            "open_now": self.open_now, "opened": self.opened, "resolved": self.resolved,
            "reopened": self.reopened, "resolve_p50_seconds": self.resolve_p50,
            "resolve_p90_seconds": self.resolve_p90, "tests": self.tests, "passed": self.passed,
            "pass_rate": self.pass_rate, "flips": self.flips, "flip_pairs": self.pairs,
            "flip_rate": self.flip_rate,
        }


@dataclass(frozen=True, slots=True)
class Recurring:
    """A resource whose violation of one rule keeps coming back."""

    resource: str
    policy: str
    rule: str
    episodes: int
    reopened: int


@dataclass(slots=True)
class Health:
    """The health table: one row per group, and the top recurring resources."""

    by: GroupBy
    since: datetime
    now: datetime
    rows: list[HealthRow] = field(default_factory=list)
    recurring: list[Recurring] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "by": self.by.value, "since": self.since.isoformat(), "now": self.now.isoformat(),
            "rows": [row.to_dict(self.by) for row in self.rows],
            "top_recurring": [
                {"resource": r.resource, "policy": r.policy, "rule": r.rule, "episodes": r.episodes,
                 "reopened": r.reopened} for r in self.recurring
            ],
        }


def _inside(when: datetime | None, since: datetime, now: datetime) -> bool:
    return when is not None and since <= when <= now


def flips(outcomes: list[bool]) -> tuple[int, int]:
    """(flips, pairs) of a sequence of pass/not-pass outcomes, oldest first."""
    return sum(1 for a, b in itertools.pairwise(outcomes) if a != b), max(len(outcomes) - 1, 0)


def health(lifecycles: Iterable[Lifecycle], *, now: datetime, window: timedelta, by: GroupBy,
           flip_window: int = FLIP_WINDOW, top: int = TOP_RECURRING) -> Health:
    """The figures of every group over ``window`` up to ``now``, busiest groups first."""
    since = now - window
    rows: dict[tuple[str, ...], HealthRow] = {}
    recurring: list[Recurring] = []
    for lifecycle in lifecycles:
        row = rows.setdefault(by.of(lifecycle.identity), HealthRow(by.of(lifecycle.identity)))
        row.open_now += 1 if lifecycle.is_open else 0
        reopened = {e.tag for e in lifecycle.reopenings()}
        outcomes: list[bool] = []
        opened_here = reopened_here = 0
        for episode in lifecycle.episodes:
            if _inside(episode.opened, since, now):
                opened_here += 1
                reopened_here += episode.tag in reopened
            if _inside(episode.resolved, since, now):
                row.resolved += 1
                if (seconds := episode.resolve_seconds) is not None:
                    row.resolve_seconds.append(seconds)
            if _inside(episode.tested, since, now) and (passed := episode.test_passed) is not None:
                row.tests += 1
                row.passed += passed
                outcomes.append(passed)
        row.opened += opened_here
        row.reopened += reopened_here
        flipped, pairs = flips(outcomes[-flip_window:])
        row.flips += flipped
        row.pairs += pairs
        if opened_here >= 2 or reopened_here:
            identity = lifecycle.identity
            recurring.append(Recurring(identity.resource, identity.policy, identity.rule, opened_here, reopened_here))
    active = [r for r in rows.values() if r.open_now or r.opened or r.resolved or r.tests]
    active.sort(key=lambda r: (-r.open_now, -r.reopened, -r.opened, r.group))
    recurring.sort(key=lambda r: (-r.reopened, -r.episodes, r.resource, r.policy, r.rule))
    return Health(by, since, now, active, recurring[:top])
