"""Reading Testkube's answers the way the real agent writes them (SOURCES.md section 3)."""

from __future__ import annotations

import pytest

from policyflow.clients.testkube import TestkubeProtocolError, parse_execution, selector
from policyflow.domain.errors import parse_retry_after


def test_year_one_times_mean_not_set_and_duration_only_when_finished() -> None:
    queued = parse_execution({
        "id": "6968c1e0a1b2c3d4e5f60718", "name": "smoke-nova-1", "workflow": {"name": "smoke-nova"},
        "scheduledAt": "2026-01-15T10:35:12.481Z",
        "result": {"status": "queued", "finishedAt": "0001-01-01T00:00:00Z", "durationMs": 0},
    })
    assert (queued.status, queued.finished, queued.finished_at, queued.duration_ms) == ("queued", False, None, None)
    done = parse_execution({
        "id": "x", "name": "n", "workflow": {"name": "w"},
        "result": {"status": "failed", "finishedAt": "2026-01-15T10:36:01.112Z", "durationMs": 47092},
        "tags": {"policyflow-key": "k"},
    })
    assert (done.finished, done.duration_ms, done.tags) == (True, 47092, {"policyflow-key": "k"})


def test_stopping_is_not_finished() -> None:
    assert not parse_execution({"id": "x", "result": {"status": "stopping"}}).finished


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "list where an execution object belongs"),
        ("oops", "str where an execution object belongs"),
        ({"name": "n"}, "without an id"),
        ({"id": "x", "result": {"status": "exploded"}}, "status 'exploded', which policyflow does not know"),
    ],
)
def test_answers_that_are_not_executions_say_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(TestkubeProtocolError, match=message):
        parse_execution(data)


def test_tag_selector_is_sorted_and_comma_joined() -> None:
    assert selector({"b": "2", "a": "1"}) == "a=1,b=2"


@pytest.mark.parametrize(("header", "seconds"), [(None, None), ("", None), ("3", 3.0), ("1.5", 1.5),
                                                 ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-1", None)])
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
