"""The lifecycle journal's encoding and the health figures (pure): exact numbers for known histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyflow.domain.health import GroupBy, flips, health, quantile
from policyflow.domain.health_render import render
from policyflow.domain.journal import (
    SHARD_BUDGET,
    Identity,
    decode,
    episode_tag,
    opened_entries,
    outcome_entries,
    prune_entries,
    resolved_entries,
    shard_name,
    to_resolve,
)
from policyflow.domain.status import Status

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
KEY = "0123456789abcdef"
WHO = Identity("require-resources", "cpu", "default", "default/Deployment/nginx", "smoke-nova")


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def episode(data: dict[str, str | None], n: int, *, opened: float, outcome: Status | None = None,
            tested: float | None = None, resolved: float | None = None, key: str = KEY,
            who: Identity = WHO) -> None:
    """Apply one episode's transitions to ``data`` as the chain and the poll would write them."""
    ep = f"report-uid-{n}.1"  # each episode on a re-created report: episode 1 of a new report uid
    data.update(opened_entries(key, who, ep, at(opened)))
    if outcome is not None:
        data.update(outcome_entries(key, ep, outcome, at(tested if tested is not None else opened + 1)))
    if resolved is not None:
        data.update(resolved_entries(key, episode_tag(ep), at(resolved)))


def three_times_reopened() -> dict[str, str]:
    data: dict[str, str | None] = {}
    episode(data, 1, opened=0, outcome=Status.FAILED, resolved=10)
    episode(data, 2, opened=60, outcome=Status.PASSED, resolved=90)
    episode(data, 3, opened=120, outcome=Status.FAILED, resolved=125)
    episode(data, 4, opened=180, outcome=Status.PASSED)
    return {k: v for k, v in data.items() if v is not None}


def test_a_violation_resolved_and_reopened_three_times_gives_exact_figures() -> None:
    journal = decode([three_times_reopened()])
    figures = health(journal.lifecycles.values(), now=T0 + timedelta(hours=4), window=timedelta(days=30),
                     by=GroupBy.RULE)
    [row] = figures.rows
    assert row.group == ("require-resources", "cpu")
    assert (row.open_now, row.opened, row.resolved, row.reopened) == (1, 4, 3, 3)
    assert sorted(row.resolve_seconds) == [300.0, 600.0, 1800.0]
    assert (row.resolve_p50, row.resolve_p90) == (600.0, 1800.0)  # nearest rank: 2nd and 3rd of 3
    assert (row.tests, row.passed, row.pass_rate) == (4, 2, 0.5)
    assert (row.flips, row.pairs, row.flip_rate) == (3, 3, 1.0)  # failed, passed, failed, passed
    [recurring] = figures.recurring
    assert (recurring.resource, recurring.episodes, recurring.reopened) == ("default/Deployment/nginx", 4, 3)


def test_the_window_counts_only_what_happened_inside_it() -> None:
    journal = decode([three_times_reopened()])
    # From minute 100: episode 3 opened (a reopening), resolved; episode 4 opened (a reopening).
    figures = health(journal.lifecycles.values(), now=T0 + timedelta(minutes=200), window=timedelta(minutes=100),
                     by=GroupBy.POLICY)
    [row] = figures.rows
    assert (row.open_now, row.opened, row.resolved, row.reopened) == (1, 2, 1, 2)
    assert row.resolve_seconds == [300.0]
    assert (row.flips, row.pairs) == (1, 1)


def test_a_steady_outcome_has_flip_rate_zero_and_one_outcome_has_none() -> None:
    data: dict[str, str | None] = {}
    for n in range(5):
        episode(data, n, opened=n * 60, outcome=Status.FAILED, resolved=n * 60 + 30)
    other = Identity("disallow-latest", "tag", "shop", "shop/Pod/web", "smoke-shop")
    episode(data, 9, opened=0, outcome=Status.PASSED, key="fedcba9876543210", who=other)
    journal = decode([{k: v for k, v in data.items() if v is not None}])
    rows = {r.group: r for r in health(journal.lifecycles.values(), now=T0 + timedelta(hours=6),
                                       window=timedelta(days=1), by=GroupBy.NAMESPACE).rows}
    assert rows[("default",)].flip_rate == 0.0 and rows[("default",)].pairs == 4
    assert rows[("shop",)].flip_rate is None and rows[("shop",)].open_now == 1


def test_an_error_is_not_a_test_outcome() -> None:
    data: dict[str, str | None] = {}
    episode(data, 1, opened=0, outcome=Status.ERROR)
    [row] = health(decode([{k: v for k, v in data.items() if v}]).lifecycles.values(),
                   now=T0 + timedelta(hours=1), window=timedelta(days=1), by=GroupBy.WORKFLOW).rows
    assert (row.tests, row.pass_rate, row.open_now) == (0, None, 1)


@given(st.lists(st.booleans(), max_size=30))
def test_flips_never_exceed_pairs(outcomes: list[bool]) -> None:
    flipped, pairs = flips(outcomes)
    assert 0 <= flipped <= pairs == max(len(outcomes) - 1, 0)


def test_quantile_is_nearest_rank() -> None:
    assert quantile([], 0.5) is None
    assert quantile([5.0], 0.9) == 5.0
    assert quantile([float(v) for v in range(1, 11)], 0.9) == 9.0
    assert quantile([float(v) for v in range(1, 11)], 0.5) == 5.0


def test_to_resolve_leaves_what_the_cycle_did_not_look_at() -> None:
    journal = decode([three_times_reopened()])
    assert [lc.key for lc in to_resolve(journal, failing=set())] == [KEY]
    assert to_resolve(journal, failing={KEY}) == []
    assert to_resolve(journal, failing=set(), in_scope={KEY: False}) == []


def test_episodes_of_a_deleted_and_recreated_report_stay_apart() -> None:
    # Both reports number their first episode 1; their report uids tell them apart.
    first, second = opened_entries(KEY, WHO, "uid-a.1", at(0)), opened_entries(KEY, WHO, "uid-b.1", at(5))
    lifecycle = decode([{**first, **second}]).lifecycles[KEY]  # type: ignore[dict-item]
    assert len(lifecycle.episodes) == 2


def test_unreadable_entries_are_noted_not_fatal() -> None:
    data = {**three_times_reopened(), "fedcba9876543210": "{not json", f"{KEY}.zzzz.t": "bogus 2026"}
    journal = decode([data])
    assert len(journal.problems) == 1 and "fedcba9876543210" in journal.problems[0]
    assert len(journal.lifecycles[KEY].episodes) == 4


def test_retention_drops_old_episodes_and_then_the_identity() -> None:
    data = three_times_reopened()
    now = T0 + timedelta(days=90, minutes=100)  # episodes 1 and 2 last changed over 90 days ago
    patch = prune_entries(data, now=now, retention=timedelta(days=90))
    assert all(v is None for v in patch.values())
    kept = decode([{k: v for k, v in data.items() if k not in patch}]).lifecycles[KEY]
    assert len(kept.episodes) == 2
    everything = prune_entries(data, now=T0 + timedelta(days=200), retention=timedelta(days=90))
    assert set(everything) == set(data)


def test_a_shard_over_budget_drops_its_oldest_resolved_episodes_first() -> None:
    data: dict[str, str | None] = {}
    for n in range(40):
        episode(data, n, opened=n, outcome=Status.PASSED, resolved=n + 0.5)
    episode(data, 99, opened=100)  # open: never dropped for size
    clean = {k: v for k, v in data.items() if v is not None}
    size = sum(len(k) + len(v) for k, v in clean.items())
    patch = prune_entries(clean, now=T0 + timedelta(days=1), retention=timedelta(days=90), budget=size // 2)
    left = decode([{k: v for k, v in clean.items() if k not in patch}]).lifecycles[KEY]
    assert left.is_open and 15 <= len(left.episodes) <= 25
    assert min(e.opened for e in left.episodes if e.opened) > T0 + timedelta(minutes=10)
    assert SHARD_BUDGET < 1024 * 1024


def test_keys_spread_over_sixteen_shards() -> None:
    assert {shard_name(f"{d:x}" + "0" * 15) for d in range(16)} == {f"policyflow-journal-{d:x}" for d in range(16)}


@pytest.mark.parametrize("output", ["table", "markdown", "json"])
def test_every_output_renders(output: str) -> None:
    figures = health(decode([three_times_reopened()]).lifecycles.values(), now=T0 + timedelta(hours=4),
                     window=timedelta(days=30), by=GroupBy.RULE)
    text = render(figures, output)
    assert "require-resources" in text
    if output != "json":
        assert "50% (4)" in text and "100% (3)" in text and "10m00s" in text
