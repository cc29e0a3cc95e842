"""prune_patch: the merge-patch that writes one record and keeps a report's annotations under the cap."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyflow.domain.ledger import FINISHED, IN_FLIGHT, Record, Status, annotation_name, prune_patch

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LIMIT = 200 * 1024


def size(annotations: Mapping[str, str]) -> int:
    return sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in annotations.items())


def apply(annotations: Mapping[str, str], patch: Mapping[str, str | None]) -> dict[str, str]:
    """What the API server does with a JSON merge-patch of metadata.annotations."""
    result = dict(annotations)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def record(index: int, status: Status, *, age_s: float = 0.0, pad: int = 0, updated: str | None = None) -> tuple[
        str, str]:
    """An annotation (name, value) holding a record; ``pad`` bytes of error text make it bigger."""
    key = f"{index:016x}"
    rec = Record(key=key, policy="require-resources", rule="r", resource="default/Deployment/web",
                 status=status, episode=1, report_uid="uid",
                 updated=updated if updated is not None else (NOW - timedelta(seconds=age_s)).isoformat(),
                 error="x" * pad if pad else None)
    return annotation_name(key), rec.to_json()


def new_record() -> tuple[str, str]:
    return record(0xFFFF, Status.PENDING)


def test_under_the_limit_the_patch_writes_only_the_record() -> None:
    annotations = dict([record(1, Status.RESOLVED, age_s=9999), ("other.io/x", "y")])
    name, value = new_record()
    assert prune_patch(annotations, name, value) == {name: value}


def test_resolved_records_go_first_oldest_first_then_finished_ones() -> None:
    annotations = dict([
        record(1, Status.PASSED, age_s=9000, pad=1000),
        record(2, Status.RESOLVED, age_s=10, pad=1000),
        record(3, Status.RESOLVED, age_s=500, pad=1000),
        record(4, Status.FAILED, age_s=8000, pad=1000),
        record(5, Status.RUNNING, age_s=99999, pad=1000),
        ("other.io/big", "z" * 1000),
    ])
    name, value = new_record()
    total = size(annotations) + len(name) + len(value)
    # Room for all but about 2.5 records: the two resolved ones go, then the oldest finished one.
    patch = prune_patch(annotations, name, value, limit=total - 2500)
    removed = [k for k, v in patch.items() if v is None]
    assert removed == [record(3, Status.RESOLVED)[0], record(2, Status.RESOLVED)[0], record(1, Status.PASSED)[0]]
    assert patch[name] == value
    assert size(apply(annotations, patch)) < total - 2500


def test_exactly_at_the_limit_is_over_it() -> None:
    annotations = dict([record(1, Status.RESOLVED)])
    name, value = new_record()
    total = size(annotations) + len(name) + len(value)
    assert prune_patch(annotations, name, value, limit=total + 1) == {name: value}
    assert prune_patch(annotations, name, value, limit=total) == {name: value, record(1, Status.RESOLVED)[0]: None}


def test_sizes_are_utf8_bytes() -> None:
    name, value = new_record()
    annotations = {"other.io/note": "é" * 100, **dict([record(1, Status.PASSED)])}
    chars = sum(len(k) + len(v) for k, v in annotations.items()) + len(name) + len(value)
    # Under the limit in characters, over it in bytes (é is two bytes).
    patch = prune_patch(annotations, name, value, limit=chars + 50)
    assert patch[record(1, Status.PASSED)[0]] is None


def test_rewriting_a_record_counts_its_new_value_not_the_old_one() -> None:
    name, old = record(7, Status.RUNNING, pad=5000)
    _, new = record(7, Status.PASSED)
    annotations = {name: old, **dict([record(1, Status.RESOLVED)])}
    limit = size(annotations) - 1000  # over it now, under it once the big value is replaced
    assert prune_patch(annotations, name, new, limit=limit) == {name: new}


def test_the_record_being_written_is_never_deleted_even_if_it_is_the_oldest_resolved_one() -> None:
    name, old = record(7, Status.RESOLVED, age_s=1e6, pad=3000)
    annotations = {name: old, **dict([record(1, Status.PASSED, pad=100)])}
    patch = prune_patch(annotations, name, old, limit=100)
    assert patch[name] == old
    assert patch[record(1, Status.PASSED)[0]] is None


def test_when_pruning_cannot_get_under_the_limit_the_patch_still_comes_back() -> None:
    annotations = dict([
        record(1, Status.RESOLVED),
        record(2, Status.ERROR),
        record(3, Status.QUEUED),
        record(4, Status.PENDING),
        ("kubectl.kubernetes.io/last-applied-configuration", "{" + "x" * 5000 + "}"),
    ])
    name, value = new_record()
    patch = prune_patch(annotations, name, value, limit=1000)
    assert patch == {name: value, record(1, Status.RESOLVED)[0]: None, record(2, Status.ERROR)[0]: None}


def test_unreadable_and_hostile_policyflow_values_are_left_alone() -> None:
    annotations = {
        "policyflow.io/not-json": "x" * 3000,
        "policyflow.io/newer-format": '{"key": "k", "status": "paused-by-a-newer-policyflow"}',
        "policyflow.io/infinite-episode": '{"key": "k", "status": "passed", "episode": Infinity}',
        "policyflow.io/deep": "[" * 50_000,
        **dict([record(1, Status.PASSED)]),
    }
    name, value = new_record()
    patch = prune_patch(annotations, name, value, limit=1000)
    assert patch == {name: value, record(1, Status.PASSED)[0]: None}


def test_odd_updated_times_sort_as_oldest_and_time_zones_are_honoured() -> None:
    annotations = dict([
        record(1, Status.PASSED, updated="2026-01-01T09:00:00+00:00"),
        record(2, Status.PASSED, updated="2026-01-01T10:00:00+02:00"),  # 08:00 UTC: older than 1
        record(3, Status.PASSED, updated="yesterday"),  # unreadable: oldest of all
        record(4, Status.PASSED, updated="2026-01-01T08:30:00"),  # naive: taken as UTC
    ])
    name, value = new_record()
    patch = prune_patch(annotations, name, value, limit=1)
    removed = [k for k, v in patch.items() if v is None]
    assert removed == [record(i, Status.PASSED)[0] for i in (3, 2, 4, 1)]


def test_the_default_limit_is_200_kib() -> None:
    annotations = dict(record(i, Status.RESOLVED, age_s=i, pad=1000) for i in range(1, 250))
    name, value = new_record()
    assert size(annotations) > 200 * 1024
    patched = apply(annotations, prune_patch(annotations, name, value))
    assert 200 * 1024 - 1200 < size(patched) < 200 * 1024


# ---- property ---------------------------------------------------------------------------------------

STATUSES = list(Status)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, str], str, str, int]:
    annotations: dict[str, str] = {}
    for index in range(draw(st.integers(0, 25))):
        status = draw(st.sampled_from(STATUSES))
        name, value = record(index, status, age_s=draw(st.integers(0, 10**6)), pad=draw(st.integers(0, 3000)))
        annotations[name] = value
    others = draw(st.dictionaries(st.from_regex(r"\A[a-z]{1,8}\.io/[a-z-]{1,20}\Z"),
                                  st.text(max_size=2000), max_size=5))
    annotations.update(others)
    junk = draw(st.dictionaries(st.from_regex(r"\Apolicyflow\.io/junk-[a-z]{1,5}\Z"),
                                st.sampled_from(["", "not json", "[1]", '{"status": "passed"}', "[" * 2000]),
                                max_size=3))
    annotations.update(junk)
    rewrite = bool(annotations) and draw(st.booleans())  # rewrite an existing annotation, or add one
    name = draw(st.sampled_from(sorted(annotations))) if rewrite else annotation_name("f" * 16)
    value = record(0, draw(st.sampled_from(STATUSES)), pad=draw(st.integers(0, 2000)))[1]
    limit = draw(st.integers(1, size(annotations) + len(name) + len(value) + 100))
    return annotations, name, value, limit


def prunable(annotations: Mapping[str, str], name: str) -> dict[str, Status]:
    found = {}
    for key, text in annotations.items():
        if key == name or not key.startswith("policyflow.io/"):
            continue
        try:
            status = Record.from_json(text).status
        except (ValueError, OverflowError, RecursionError):
            continue
        if status not in IN_FLIGHT:
            found[key] = status
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_property_under_the_limit_whenever_possible_and_only_our_finished_records_go(
    case: tuple[dict[str, str], str, str, int],
) -> None:
    annotations, name, value, limit = case
    patch = prune_patch(annotations, name, value, limit=limit)
    after = apply(annotations, patch)
    removed = {k for k, v in patch.items() if v is None}
    candidates = prunable(annotations, name)

    assert after[name] == value
    assert removed <= set(candidates), "only our resolved/finished records, never name, never in-flight"
    for key, text in annotations.items():
        if not key.startswith("policyflow.io/"):
            assert after[key] == text or key == name, "another tool's annotation was touched"
    best = apply(annotations, {name: value, **dict.fromkeys(candidates)})
    if size(best) < limit:
        assert size(after) < limit
    else:
        assert removed == set(candidates)
    # No more than needed: without the last deletion the total was not under the limit.
    if removed and size(best) < limit:
        last = list(patch)[-1]
        assert size({**after, last: annotations[last]}) >= limit
    # Resolved ones go before any finished one.
    if any(candidates[k] in FINISHED for k in removed):
        assert all(k in removed for k, s in candidates.items() if s is Status.RESOLVED)


@pytest.mark.parametrize("status", sorted(IN_FLIGHT))
def test_in_flight_records_survive_even_a_hopeless_limit(status: Status) -> None:
    annotations = dict([record(1, status, age_s=1e7)])
    name, value = new_record()
    assert prune_patch(annotations, name, value, limit=1) == {name: value}
