"""The execution list filters as the agent's Mongo repository applies them (``mongo.go`` composeQueryAndOpts).

They are lenient where the spec suggests otherwise: malformed items are skipped, not refused, and one
unknown status drops the whole status filter instead of answering 400.
"""

from __future__ import annotations

from collections.abc import Mapping

ALL_STATUSES = (
    "queued", "assigned", "starting", "scheduling", "running", "pausing", "paused",
    "resuming", "passed", "failed", "stopping", "aborted", "canceled",
)  # fmt: skip

TagSelector = dict[str, frozenset[str] | None]
"""Parsed tagSelector: tag key -> accepted values, or ``None`` for "the tag exists"."""


def parse_tag_selector(selector: str) -> TagSelector:
    """Parse ``k1=v1,k1=v2,k2`` the way the Mongo repository does (``mongo.go`` composeQueryAndOpts).

    The same key repeated ORs its values; a bare key means "tag exists" and wins over values for that
    key; items with more than one ``=`` are silently ignored. Empty items (a trailing comma) are skipped.
    """
    values: dict[str, set[str]] = {}
    exists: set[str] = set()
    for item in selector.split(","):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) == 2:
            values.setdefault(parts[0], set()).add(parts[1])
        elif len(parts) == 1:
            exists.add(parts[0])
    parsed: TagSelector = {key: frozenset(vals) for key, vals in values.items()}
    parsed.update(dict.fromkeys(exists))
    return parsed


def matches_tag_selector(tags: Mapping[str, str] | None, selector: str) -> bool:
    """True when ``tags`` satisfies the tagSelector: different keys ANDed, one key's values ORed."""
    tags = tags or {}
    for key, accepted in parse_tag_selector(selector).items():
        if key not in tags:
            return False
        if accepted is not None and tags[key] not in accepted:
            return False
    return True


def matches_label_selector(labels: Mapping[str, str] | None, selector: str) -> bool:
    """The executions list ``selector`` on workflow labels: ``k=v`` equals, bare ``k`` exists.

    As in ``mongo.go`` a later item for the same key replaces an earlier one, and items with more than
    one ``=`` are ignored.
    """
    labels = labels or {}
    wanted: dict[str, str | None] = {}
    for item in selector.split(","):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) == 2:
            wanted[parts[0]] = parts[1]
        elif len(parts) == 1:
            wanted[parts[0]] = None
    return all(key in labels and (value is None or labels[key] == value) for key, value in wanted.items())


def parse_status_filter(value: str) -> frozenset[str] | None:
    """The ``status`` list filter, or ``None`` for "no filter".

    Faithful to ``ParseTestWorkflowStatusList`` + ``Filter.WithStatus``: one unknown value makes the
    parse fail, and the handler then drops the whole filter instead of answering 400.
    """
    if not value:
        return None
    statuses = value.split(",")
    if any(status not in ALL_STATUSES for status in statuses):
        return None
    return frozenset(statuses)
