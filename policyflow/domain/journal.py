"""The lifecycle journal (pure): every episode of every violation, kept after its report is gone.

The record on a report says what was done about the episode that is failing now; Kyverno deletes the
report (and the record with it) when its last failure goes away. Health figures need more: when each
episode opened, how its test ended, when it resolved, and whether the violation came back. The
journal keeps that, in ConfigMaps in policyflow's own namespace (:mod:`policyflow.journal` is the
adapter; the README says why there).

Encoding: one ConfigMap data entry per fact, so that each transition is one merge-patch that adds
keys and never needs to read first (no lost update between two writers, no read per write):

* ``<key>``: the violation's identity, compact JSON (policy, rule, namespace, resource, workflow);
* ``<key>.<episode>.o``: when the episode opened (detected);
* ``<key>.<episode>.t``: its test outcome and when it was recorded (``failed 2026-12-06T...``);
* ``<key>.<episode>.r``: when it resolved (the failure went away).

``<episode>`` is 8 hex characters of a hash of the record's episode id (``<report uid>.<n>``): unique
per episode even when a deleted report's successor numbers its episodes from 1 again. Episodes are
ordered by when they opened. The journal never decides anything: it is written after the record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from policyflow.domain.model import DEFAULT_CLUSTER, KEY_LENGTH
from policyflow.domain.status import TEST_DONE, Status

#: ConfigMaps the journal is spread over (by the key's first hex digit): 16 MiB in all at most.
SHARDS = 16
SHARD_PREFIX = "policyflow-journal-"
#: Kubernetes refuses a ConfigMap over 1 MiB (keys plus values); the journal prunes before that.
SHARD_LIMIT = 1024 * 1024
#: A shard over this many bytes drops its oldest closed episodes first, before retention would.
SHARD_BUDGET = 900 * 1024
OPENED, TESTED, RESOLVED = "o", "t", "r"


def shard_name(key: str) -> str:
    """The ConfigMap that holds ``key``'s entries."""
    return f"{SHARD_PREFIX}{key[:1].lower() or '0'}"


def episode_tag(episode_id: str) -> str:
    """The 8 hex characters that name an episode in the journal (see the module docstring)."""
    return hashlib.sha256(episode_id.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Identity:
    """What a violation is about, as health figures group it (never part of a metric label but
    ``resource``, which only tables show)."""

    policy: str
    rule: str
    namespace: str
    resource: str
    workflow: str = ""
    #: The configured cluster (an entry written before there were clusters has none: ``default``).
    cluster: str = DEFAULT_CLUSTER

    def to_json(self) -> str:
        data = {"policy": self.policy, "rule": self.rule, "namespace": self.namespace,
                "resource": self.resource, "workflow": self.workflow}
        if self.cluster != DEFAULT_CLUSTER:
            data["cluster"] = self.cluster
        return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Identity:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls(**{k: str(data.get(k) or "") for k in ("policy", "rule", "namespace", "resource", "workflow")},
                   cluster=str(data.get("cluster") or DEFAULT_CLUSTER))


@dataclass(frozen=True, slots=True)
class Episode:
    """One stretch of time during which a violation failed, as the journal knows it."""

    tag: str
    opened: datetime | None = None
    outcome: Status | None = None
    tested: datetime | None = None
    resolved: datetime | None = None

    @property
    def start(self) -> datetime | None:
        """When it began, as well as the journal knows (a lost ``opened`` write: its outcome's time)."""
        return self.opened or self.tested or self.resolved

    @property
    def resolve_seconds(self) -> float | None:
        """Time from detection to resolution (None while open or when either end is unknown)."""
        if self.opened is None or self.resolved is None:
            return None
        return max((self.resolved - self.opened).total_seconds(), 0.0)

    @property
    def test_passed(self) -> bool | None:
        """Whether its test passed; None when it has no test outcome (none yet, or ``error``)."""
        if self.outcome is None or self.outcome not in TEST_DONE:
            return None
        return self.outcome is Status.PASSED


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """Every episode of one violation, oldest first."""

    key: str
    identity: Identity
    episodes: tuple[Episode, ...] = ()

    @property
    def latest(self) -> Episode | None:
        return self.episodes[-1] if self.episodes else None

    @property
    def is_open(self) -> bool:
        """Failing now, as far as the journal knows: its latest episode has not resolved."""
        latest = self.latest
        return latest is not None and latest.resolved is None

    def reopenings(self) -> list[Episode]:
        """The episodes that came back after the one before them resolved (recurrences)."""
        return [after for before, after in itertools.pairwise(self.episodes)
                if before.resolved is not None]


@dataclass(slots=True)
class Journal:
    """The decoded journal: lifecycles by key, and what could not be read."""

    lifecycles: dict[str, Lifecycle] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _time(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def decode(shards: Iterable[Mapping[str, str]]) -> Journal:
    """The journal from its ConfigMaps' ``data``; an unreadable entry is noted and skipped."""
    journal = Journal()
    identities: dict[str, Identity] = {}
    facts: dict[str, dict[str, dict[str, str]]] = {}
    for data in shards:
        for name, value in data.items():
            parts = name.split(".")
            if len(parts) == 1 and len(name) == KEY_LENGTH:
                try:
                    identities[name] = Identity.from_json(value)
                except (ValueError, TypeError, RecursionError) as exc:
                    journal.problems.append(f"journal entry {name}: {exc}; skipped")
            elif len(parts) == 3 and parts[2] in (OPENED, TESTED, RESOLVED):
                facts.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = value
    for key, identity in identities.items():
        episodes = [_episode(tag, entry) for tag, entry in facts.get(key, {}).items()]
        ordered = sorted((e for e in episodes if e.start is not None), key=lambda e: (e.start, e.tag))
        journal.lifecycles[key] = Lifecycle(key, identity, tuple(ordered))
    return journal


def _episode(tag: str, entry: Mapping[str, str]) -> Episode:
    outcome, tested = None, None
    if TESTED in entry:
        status, _, when = entry[TESTED].partition(" ")
        try:
            outcome = Status(status)
        except ValueError:
            outcome = None
        tested = _time(when)
    return Episode(tag, _time(entry.get(OPENED, "")), outcome, tested, _time(entry.get(RESOLVED, "")))


# --- transitions: the merge-patch ``data`` of one write each -----------------------------------


def opened_entries(key: str, identity: Identity, episode_id: str, when: str) -> dict[str, str | None]:
    """An episode opened: the identity (refreshed: its workflow may have changed) and the time."""
    return {key: identity.to_json(), f"{key}.{episode_tag(episode_id)}.{OPENED}": when}


def outcome_entries(key: str, episode_id: str, status: Status, when: str) -> dict[str, str | None]:
    """The episode's test ended (or its own error stopped it) with ``status``."""
    return {f"{key}.{episode_tag(episode_id)}.{TESTED}": f"{status.value} {when}"}


def resolved_entries(key: str, tag: str, when: str) -> dict[str, str | None]:
    """The episode ``tag`` resolved: the failure is gone."""
    return {f"{key}.{tag}.{RESOLVED}": when}


def to_resolve(journal: Journal, failing: set[str], *, in_scope: Mapping[str, bool] | None = None) -> list[Lifecycle]:
    """The lifecycles open in the journal whose violation no cycle sees failing any more.

    ``failing`` holds the keys failing now in every report the cycle read; ``in_scope`` (key ->
    whether this cycle looked where that violation lives) keeps a narrower cycle (a namespace
    filter) from resolving what it did not look at.
    """
    return [lc for key, lc in sorted(journal.lifecycles.items())
            if lc.is_open and key not in failing and (in_scope is None or in_scope.get(key, True))]


def entry_size(name: str, value: str) -> int:
    return len(name.encode("utf-8")) + len(value.encode("utf-8"))


def prune_entries(data: Mapping[str, str], *, now: datetime, retention: timedelta,
                  budget: int = SHARD_BUDGET) -> dict[str, str | None]:
    """The merge-patch ``data`` that drops what one shard no longer keeps (empty: nothing to drop).

    An episode goes when its last fact is older than ``retention``; then, while the shard is over
    ``budget`` bytes, the oldest closed (resolved) episodes. A violation's identity goes with its
    last episode. Open episodes are never dropped for size: they are what "open now" counts.
    """
    journal = decode([data])
    drop: dict[str, str | None] = {}
    sizes = {name: entry_size(name, value) for name, value in data.items()}
    total = sum(sizes.values())
    closed: list[tuple[datetime, str, Episode]] = []
    for key, lifecycle in journal.lifecycles.items():
        kept = 0
        for episode in lifecycle.episodes:
            last = max(t for t in (episode.opened, episode.tested, episode.resolved) if t is not None)
            if now - last > retention:
                total -= _drop(drop, sizes, key, episode.tag)
                continue
            kept += 1
            if episode.resolved is not None:
                closed.append((last, key, episode))
        if kept == 0:
            drop[key] = None
            total -= sizes.get(key, 0)
    kept_per_key = {key: sum(1 for e in lc.episodes if f"{key}.{e.tag}.{OPENED}" not in drop
                             and f"{key}.{e.tag}.{TESTED}" not in drop and f"{key}.{e.tag}.{RESOLVED}" not in drop)
                    for key, lc in journal.lifecycles.items()}
    for _last, key, episode in sorted(closed, key=lambda c: (c[0], c[1], c[2].tag)):
        if total <= budget:
            break
        total -= _drop(drop, sizes, key, episode.tag)
        kept_per_key[key] -= 1
        if kept_per_key[key] == 0 and key not in drop:
            drop[key] = None
            total -= sizes.get(key, 0)
    return drop


def _drop(drop: dict[str, str | None], sizes: Mapping[str, int], key: str, tag: str) -> int:
    freed = 0
    for fact in (OPENED, TESTED, RESOLVED):
        name = f"{key}.{tag}.{fact}"
        if name in sizes:
            drop[name] = None
            freed += sizes[name]
    return freed
